//! Types and constants shared by the BPF programs (`agent-guard-ebpf`) and user space.
//!
//! Everything that crosses the kernel/user boundary is defined here once, as `#[repr(C)]`
//! plain data with explicit padding and a compile-time size check, so the two sides cannot
//! drift apart. Enumerations travel as `u32` constants; user space converts them with
//! `TryFrom<u32>` and treats an unknown value as an error, never as a default.
#![no_std]

use core::mem::size_of;

mod decision;
mod network;
pub use decision::*;
pub use network::*;

/// Longest path the kernel side renders into an event.
pub const PATH_BUF_LEN: usize = 4096;
/// Longest single path component read from a dentry (NAME_MAX plus the NUL).
pub const NAME_BUF_LEN: usize = 256;
/// Deepest ancestry the kernel side walks when deciding whether a target lies in a scope.
/// Anything deeper is denied with [`RULE_PATH_TOO_DEEP`]: fail closed.
pub const MAX_PATH_DEPTH: u32 = 64;
/// Live tasks the session table can hold across all sessions. A fork that would overflow it
/// is refused with [`RULE_SESSION_TABLE_FULL`].
pub const MAX_SESSION_TASKS: u32 = 65_536;
/// Sessions one loaded program set can serve at once.
pub const MAX_SESSIONS: u32 = 256;
/// Objects with policy rules attached, across all sessions (the `RULES` table).
pub const MAX_RULE_ENTRIES: u32 = 65_536;
/// Path entries one policy may resolve to: a quarter of the table, so that several large
/// sessions fit at once.
pub const MAX_POLICY_PATHS: usize = 16_384;
/// Named rules one policy may hold; events carry the index in a `u16`.
pub const MAX_POLICY_RULES: usize = 256;
/// Character-device entries across all sessions.
pub const MAX_DEVICE_ENTRIES: u32 = 4096;
/// Processes waiting to be enrolled into a session at their next exec.
pub const MAX_PENDING_ENROLMENTS: u32 = 256;
/// Processes (tgids) attached to sessions while already running, across all sessions.
pub const MAX_ATTACHED_PROCESSES: u32 = 16_384;
/// Cgroups attached to sessions, across all sessions.
pub const MAX_ATTACHED_CGROUPS: u32 = 1024;
/// Open files whose refused writes a session in audit mode has reported, remembered so that
/// each is reported once rather than at every write. Least recently used ones are
/// forgotten first; a forgotten one is reported again at its next write.
pub const MAX_AUDITED_FILES: u32 = 4096;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENT_RING_BYTES: u32 = 8 << 20;

/// Bytes for the paths of one event. The paths follow one another; only the bytes used
/// travel through the ring buffer, so a typical event is a few hundred bytes.
pub const EVENT_DATA_LEN: usize = 16_384;
const _: () =
    assert!(EVENT_DATA_LEN.is_power_of_two() && EVENT_DATA_LEN >= EVENT_PATHS * PATH_BUF_LEN);

/// Number of paths in an [`Event`].
pub const EVENT_PATHS: usize = 3;
/// Slot of the primary target (the victim of unlink, the source of rename or link).
pub const PATH_TARGET: usize = 0;
/// Slot of the second target (rename destination, new link name).
pub const PATH_TARGET2: usize = 1;
/// Slot of the executable of the acting process.
pub const PATH_EXE: usize = 2;

// Operations (Event::op).
pub const OP_UNLINK: u32 = 1;
pub const OP_RMDIR: u32 = 2;
pub const OP_RENAME: u32 = 3;
pub const OP_TRUNCATE: u32 = 4;
pub const OP_OPEN_WRITE: u32 = 5;
pub const OP_LINK: u32 = 6;
pub const OP_FORK: u32 = 7;
pub const OP_EXEC: u32 = 8;
pub const OP_MOUNT: u32 = 9;
pub const OP_SIGNAL: u32 = 10;
pub const OP_PTRACE: u32 = 11;
pub const OP_BPF: u32 = 12;
pub const OP_CHMOD: u32 = 13;
pub const OP_CHOWN: u32 = 14;
pub const OP_SETXATTR: u32 = 15;
pub const OP_REMOVEXATTR: u32 = 16;
pub const OP_CREATE: u32 = 17;
pub const OP_MKDIR: u32 = 18;
pub const OP_SYMLINK: u32 = 19;
/// Writing a file's data through a descriptor already open: write, pwrite, fallocate,
/// copy_file_range, splice, sendfile, io_uring.
pub const OP_WRITE: u32 = 20;
/// A shared writable mapping of a file (mmap, or mprotect adding write).
pub const OP_MMAP: u32 = 21;
/// Setting a file's access or modification time.
pub const OP_UTIMES: u32 = 22;
pub const OP_UMOUNT: u32 = 23;
pub const OP_PIVOT_ROOT: u32 = 24;
/// Opening a read-denied object for reading (or executing it, or listing it).
pub const OP_READ: u32 = 25;
/// connect(2) to an IP address or a unix socket (stream, seqpacket, or datagram).
pub const OP_CONNECT: u32 = 26;
/// sendto(2)/sendmsg(2) with a destination address, or a unix datagram send.
pub const OP_SEND: u32 = 27;
pub const OP_BIND: u32 = 28;
pub const OP_LISTEN: u32 = 29;
/// Creating a raw or packet socket.
pub const OP_SOCKET: u32 = 30;
/// Handing the kernel code or policy to load: a module (init_module, finit_module), a
/// kexec image or initramfs, an IMA policy. `Event::detail` is the kernel's
/// `kernel_read_file_id` (the same numbers as `kernel_load_data_id`).
pub const OP_KERNEL_LOAD: u32 = 31;

// What the kernel is asked to load (`enum kernel_read_file_id` and `enum
// kernel_load_data_id`, the same numbers in both and unchanged from Linux 5.10 to 6.18).
/// Firmware a driver requests; loaded on behalf of a device, allowed.
pub const LOAD_FIRMWARE: u32 = 1;
pub const LOAD_MODULE: u32 = 2;
pub const LOAD_KEXEC_IMAGE: u32 = 3;
pub const LOAD_KEXEC_INITRAMFS: u32 = 4;
/// An IMA policy written to securityfs.
pub const LOAD_POLICY: u32 = 5;
/// A certificate the kernel reads for its keyrings; allowed.
pub const LOAD_X509_CERTIFICATE: u32 = 6;

// Decisions (Event::decision).
/// The operation was refused with `Event::errno`.
pub const DECISION_DENY: u32 = 1;
/// Audit mode: the operation was allowed but enforce mode would have refused it.
pub const DECISION_AUDIT: u32 = 2;

// Deciding rules (Event::rule).
/// The target lies outside every writable scope of the session.
pub const RULE_OUTSIDE_SCOPE: u32 = 1;
/// The target's ancestry is deeper than [`MAX_PATH_DEPTH`]; its location is unknown.
pub const RULE_PATH_TOO_DEEP: u32 = 2;
/// The target's location could not be read from the kernel's objects.
pub const RULE_UNRESOLVED: u32 = 3;
/// The target is a regular file with more than one name: another name may lie outside
/// the scope, so writing it through this one is refused.
pub const RULE_MULTI_LINK: u32 = 4;
/// The session's task table is full; the fork is refused rather than leaving a child
/// unguarded.
pub const RULE_SESSION_TABLE_FULL: u32 = 5;
/// The target is the root of a writable scope: the scope itself cannot be removed or moved.
pub const RULE_SCOPE_ROOT: u32 = 6;
/// Sessions mount nothing: a mount could show a filesystem from outside the scopes inside
/// one.
pub const RULE_MOUNT: u32 = 7;
/// The target process is not part of the acting process's session: a session may signal
/// and trace only its own processes, never the guard or anything else on the host.
pub const RULE_OUTSIDE_SESSION: u32 = 8;
/// Sessions may not use bpf(2): it could detach or rewrite the guard's programs.
pub const RULE_NO_BPF: u32 = 9;
/// No network rule names the destination and the policy's `egress` default is deny.
pub const RULE_EGRESS_DEFAULT: u32 = 10;
/// The destination is loopback, the unspecified address or an address of this host, and no
/// rule names it: local services are reachable only where the policy says so.
pub const RULE_LOCAL_DESTINATION: u32 = 11;
/// Binding or listening on an address other than loopback without a listen rule.
pub const RULE_LISTEN: u32 = 12;
/// Raw IP and packet sockets can forge or sniff any traffic; sessions get none.
pub const RULE_RAW_SOCKET: u32 = 13;
/// An abstract unix socket no rule names.
pub const RULE_ABSTRACT_UNIX: u32 = 14;
/// An IP socket of a protocol that can reach a destination without passing the connect and
/// send hooks (SCTP connects through setsockopt).
pub const RULE_UNCHECKED_PROTOCOL: u32 = 15;
/// Sessions may not load kernel modules, kexec images or security policies into the
/// kernel: kernel code runs beyond every hook.
pub const RULE_NO_KERNEL_LOAD: u32 = 16;
/// Rule codes from here up name a rule of the session's policy: `rule - RULE_POLICY_BASE`
/// is its index in the policy's rule list. Codes below are the built-in reasons above.
pub const RULE_POLICY_BASE: u32 = 0x100;

// Event kinds (Event::kind).
/// A decision taken by an LSM hook.
pub const EVENT_DECISION: u32 = 1;

// Session modes (SessionConfig::mode).
pub const MODE_ENFORCE: u32 = 1;
pub const MODE_AUDIT: u32 = 2;

// Event flags.
/// A path slot was cut short at [`PATH_BUF_LEN`] or [`MAX_PATH_DEPTH`]; the bit is
/// `1 << slot`.
pub const FLAG_PATH_TRUNCATED: u32 = 1;
/// Path slot [`PATH_TARGET`] holds an abstract unix socket name as raw bytes, not path
/// components.
pub const FLAG_ABSTRACT_NAME: u32 = 1 << 4;
/// The event's network fields (`EventHeader::family` and on) are filled.
pub const FLAG_NETWORK: u32 = 1 << 5;

/// Named errno values returned by the hooks (as negative values).
pub const EPERM: i32 = 1;
/// A fork refused because the session table is full: the caller may retry.
pub const EAGAIN: i32 = 11;
/// An exec refused because its enrolment could not be recorded.
pub const ENOMEM: i32 = 12;
/// Reading a read-denied object.
pub const EACCES: i32 = 13;

/// Fixed part of an event. Paths follow in [`Event::data`].
///
/// Path `i` takes `path_len[i]` bytes of `data`, right after path `i - 1`. It holds the
/// components of the path leaf first, each NUL-terminated, exactly as the kernel side met
/// them walking towards the root; user space reverses them. A path of length 0 is absent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub op: u32,
    pub session: u32,
    pub decision: u32,
    pub rule: u32,
    /// Positive errno the operation failed with (0 in audit mode).
    pub errno: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    /// Process (tgid) an operation on another process was aimed at; 0 otherwise.
    pub target_pid: u32,
    /// Signal number of a refused signal, ptrace mode of a refused trace, bpf command of a
    /// refused bpf(2); 0 otherwise.
    pub detail: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    pub comm: [u8; 16],
    pub path_len: [u16; EVENT_PATHS],
    /// Network operations: `AF_*` of the socket (0 otherwise).
    pub family: u16,
    /// `IPPROTO_*` of an IP socket.
    pub protocol: u16,
    /// `SOCK_*` of the socket.
    pub socket_type: u16,
    /// Destination or bound port, host byte order.
    pub port: u16,
    pub _pad: u16,
    /// Destination or bound address, IPv6 form (IPv4 addresses IPv4-mapped).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<EventHeader>() == 112);

/// One decision as it is assembled; the ring buffer carries the header and the used part
/// of `data` only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub header: EventHeader,
    pub data: [u8; EVENT_DATA_LEN],
}
const _: () = assert!(size_of::<Event>() == 112 + EVENT_DATA_LEN);

/// Key of the rule table: a file or directory of one session's policy, identified by the
/// kernel's own identity of the inode, never by its name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    pub session: u32,
    /// `super_block::s_dev` in the kernel's internal encoding (major << 20 | minor).
    pub dev: u32,
    pub ino: u64,
}
const _: () = assert!(size_of::<ScopeKey>() == 16);

/// Per-session settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub mode: u32,
    /// Name patterns the session has (they sit at indices `0..patterns` of `PATTERNS`).
    pub patterns: u32,
    /// Non-zero when some rule speaks for reading; otherwise reads are not looked at.
    pub reads: u32,
    /// Non-zero when destinations no network rule names are allowed (`egress = "allow"`);
    /// zero, as in a session without settings, refuses them.
    pub egress_allow: u32,
}
const _: () = assert!(size_of::<SessionConfig>() == 16);

/// Byte offsets of the kernel structure fields the programs read. User space fills this
/// from the running kernel's BTF before load, so one object works on every kernel whose
/// layout differs (6.1 and 6.12 do).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    pub qstr_name: u32,
    pub inode_i_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_nlink: u32,
    pub inode_i_rdev: u32,
    pub super_block_s_dev: u32,
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub super_block_s_magic: u32,
    pub proc_inode_pid: u32,
    pub proc_inode_vfs_inode: u32,
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    pub task_cred: u32,
    pub task_real_cred: u32,
    pub iattr_ia_valid: u32,
    pub vma_vm_flags: u32,
    pub vma_vm_file: u32,
    /// Offset of `user_path` from the `file` inside `struct backing_file` (Linux 6.8 and
    /// later, where a backing file's `f_path` is the real one); 0 on kernels without it.
    pub backing_file_user_path: u32,
    pub socket_sk: u32,
    pub socket_type: u32,
    pub sock_sk_protocol: u32,
    pub sock_skc_family: u32,
    pub sock_skc_rcv_saddr: u32,
    pub sock_skc_v6_rcv_saddr: u32,
    pub sock_skc_num: u32,
    pub unix_sock_addr: u32,
    pub unix_sock_path: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    pub msghdr_msg_name: u32,
    pub msghdr_msg_namelen: u32,
    pub sock_sk_type: u32,
    pub task_pid: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 48 * 4);

/// ioctl(2) request with which user space asks the kernel side for the identity (device,
/// inode) the hooks will see for an open file. `stat` can disagree: on overlayfs a regular
/// file reports its layer's device. The request is otherwise unknown, so the ioctl itself
/// fails after the hook has answered.
pub const IDENTIFY_IOCTL: u32 = 0x4147_4944;

/// Extended attribute whose lookup (lgetxattr(2)) asks the same question about a file that
/// cannot be opened, such as a unix socket. It is in the `trusted.` namespace, the one the
/// kernel passes to the LSM hook for any file type when the caller has CAP_SYS_ADMIN; no
/// file has it, so the lookup fails with ENODATA after the hook has answered.
pub const IDENTIFY_XATTR: &[u8; 29] = b"trusted.agent-guard.identify\0";

/// Statistics slots in the per-CPU `STATS` array.
pub const STAT_LOST_EVENTS: u32 = 0;
pub const STAT_DENIED: u32 = 1;
pub const STAT_AUDITED: u32 = 2;
pub const STAT_SLOTS: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `repr(C)`, `Copy`, made only of integers and integer
    // arrays, and has no implicit padding (checked by the size assertions above).
    unsafe impl aya::Pod for super::ScopeKey {}
    unsafe impl aya::Pod for super::SessionConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::RuleEntry {}
    unsafe impl aya::Pod for super::PatternSet {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetRules {}
    unsafe impl aya::Pod for super::AbstractKey {}
    unsafe impl aya::Pod for super::NetVerdict {}
}

/// `MEMBERSHIP` values: the question is open; the target is in no session; the target is
/// in the session in the low 32 bits.
pub const MEMBERSHIP_ASKING: u64 = 0;
pub const MEMBERSHIP_NONE: u64 = 1 << 32;
pub const MEMBERSHIP_IN: u64 = 2 << 32;
