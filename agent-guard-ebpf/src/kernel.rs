//! Reading the kernel's structures.
//!
//! Field offsets are not compiled in: user space reads them from the running kernel's BTF and
//! sets `AG_OFFSETS` before load, so one object serves kernels whose layouts differ.
use agent_guard_common::KernelOffsets;
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel,
        generated::{bpf_get_func_arg, bpf_get_func_arg_cnt},
    },
    programs::LsmContext,
    EbpfContext as _,
};

#[unsafe(no_mangle)]
pub(crate) static AG_OFFSETS: KernelOffsets = KernelOffsets {
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    dentry_d_sb: 0,
    qstr_name: 0,
    inode_i_mode: 0,
    inode_i_ino: 0,
    inode_i_nlink: 0,
    inode_i_rdev: 0,
    super_block_s_dev: 0,
    file_f_path: 0,
    file_f_mode: 0,
    path_mnt: 0,
    path_dentry: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_mm: 0,
    mm_exe_file: 0,
    super_block_s_magic: 0,
    proc_inode_pid: 0,
    proc_inode_vfs_inode: 0,
    pid_tasks: 0,
    task_pid_links: 0,
    task_cred: 0,
    task_real_cred: 0,
    iattr_ia_valid: 0,
    vma_vm_flags: 0,
    vma_vm_file: 0,
    backing_file_user_path: 0,
    socket_sk: 0,
    socket_type: 0,
    sock_sk_protocol: 0,
    sock_skc_family: 0,
    sock_skc_rcv_saddr: 0,
    sock_skc_v6_rcv_saddr: 0,
    sock_skc_num: 0,
    unix_sock_addr: 0,
    unix_sock_path: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    msghdr_msg_name: 0,
    msghdr_msg_namelen: 0,
    sock_sk_type: 0,
    task_pid: 0,
};

/// The offset of one kernel field, as user space set it.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: a read of a read-only global; volatile so the compiler does not fold the
        // zero it was declared with.
        unsafe { core::ptr::read_volatile(&crate::kernel::AG_OFFSETS.$field) } as u64
    };
}
pub(crate) use off;

/// A kernel read failed: the object is gone or the pointer was bad. Callers treat the
/// target as unresolved and deny.
pub struct Unreadable;

#[inline(always)]
pub fn read_u64(base: u64, offset: u64) -> Result<u64, Unreadable> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + offset) as *const u64) }.map_err(|_| Unreadable)
}

#[inline(always)]
pub fn read_u32(base: u64, offset: u64) -> Result<u32, Unreadable> {
    // SAFETY: as in read_u64.
    unsafe { bpf_probe_read_kernel((base + offset) as *const u32) }.map_err(|_| Unreadable)
}

#[inline(always)]
pub fn read_u16(base: u64, offset: u64) -> Result<u16, Unreadable> {
    // SAFETY: as in read_u64.
    unsafe { bpf_probe_read_kernel((base + offset) as *const u16) }.map_err(|_| Unreadable)
}

/// Address of the current `task_struct`.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_current_task() }
}

/// Whether the current task runs with credentials the kernel put in place of its own for a
/// while (`override_creds`): overlayfs does so when it repeats an operation, already decided
/// on the overlay's own object, on the layer below. A process cannot leave its credentials
/// overridden (setuid and friends replace both at once); io_uring overrides them for a
/// request sent with a registered personality, which callers must weigh.
#[inline(always)]
pub fn creds_overridden() -> Result<bool, Unreadable> {
    let task = current_task();
    Ok(read_u64(task, off!(task_cred))? != read_u64(task, off!(task_real_cred))?)
}

/// The hook's argument `n` counted from the last one: `from_end == 1` is the last. For
/// hooks whose leading arguments differ between kernels (6.1's `inode_setattr` has no
/// `mnt_idmap`), where a constant context index would name another argument on the other
/// kernel. The trampoline knows how many arguments the hook has; `None` when it has fewer.
#[inline(always)]
pub fn arg_from_end(ctx: &LsmContext, from_end: u32) -> Option<u64> {
    // SAFETY: the helpers read the trampoline's saved arguments and check `n` against
    // their count.
    unsafe {
        let count = bpf_get_func_arg_cnt(ctx.as_ptr()) as u32;
        let n = count.checked_sub(from_end)?;
        let mut value = 0u64;
        (bpf_get_func_arg(ctx.as_ptr(), n, &mut value) == 0).then_some(value)
    }
}

/// The `(vfsmount, dentry)` pair of a `struct path`.
#[inline(always)]
pub fn path_parts(path: u64) -> Result<(u64, u64), Unreadable> {
    Ok((
        read_u64(path, off!(path_mnt))?,
        read_u64(path, off!(path_dentry))?,
    ))
}

/// The `struct path` embedded in a `struct file`.
#[inline(always)]
pub fn file_path(file: u64) -> u64 {
    file + off!(file_f_path)
}

/// Identity of a dentry's inode: `(s_dev, i_ino)`, or `None` for a negative dentry.
#[inline(always)]
pub fn inode_identity(dentry: u64) -> Result<Option<(u32, u64)>, Unreadable> {
    let inode = read_u64(dentry, off!(dentry_d_inode))?;
    if inode == 0 {
        return Ok(None);
    }
    let sb = read_u64(dentry, off!(dentry_d_sb))?;
    let dev = read_u32(sb, off!(super_block_s_dev))?;
    let ino = read_u64(inode, off!(inode_i_ino))?;
    Ok(Some((dev, ino)))
}

/// The `struct mount` around a `struct vfsmount`, and what it is mounted on.
pub struct MountPoint {
    /// The parent mount's `vfsmount`.
    pub parent_mnt: u64,
    /// The dentry in the parent mount this mount covers.
    pub mountpoint: u64,
}

/// Where `mnt` is attached, or `None` when it is the root of its tree (or detached).
#[inline(always)]
pub fn mounted_on(mnt: u64) -> Result<Option<MountPoint>, Unreadable> {
    let mount = mnt - off!(mount_mnt);
    let parent = read_u64(mount, off!(mount_mnt_parent))?;
    if parent == mount || parent == 0 {
        return Ok(None);
    }
    Ok(Some(MountPoint {
        parent_mnt: parent + off!(mount_mnt),
        mountpoint: read_u64(mount, off!(mount_mnt_mountpoint))?,
    }))
}

/// `PROC_SUPER_MAGIC`: the superblock magic of procfs.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// `PIDFS_MAGIC`: the superblock magic of pidfs, where Linux 6.9 and later keep the inodes
/// of pidfds (regular files that no path reaches).
const PIDFS_MAGIC: u64 = 0x5049_4446;

/// Whether `dentry` is a pidfd's: opening one for writing (pidfd_open(2) does) modifies
/// nothing by itself, and what it is used for (signals, pidfd_getfd) has its own hooks.
#[inline(always)]
pub fn is_pidfd(dentry: u64) -> Result<bool, Unreadable> {
    let sb = read_u64(dentry, off!(dentry_d_sb))?;
    Ok(read_u64(sb, off!(super_block_s_magic))? == PIDFS_MAGIC)
}

/// The task a procfs inode describes (`/proc/PID/...`, `/proc/PID/task/TID/...`), or `None`
/// for any other inode, including procfs files that belong to no process (`/proc/sys`,
/// `/proc/sysrq-trigger`).
#[inline(always)]
pub fn proc_inode_task(dentry: u64) -> Result<Option<u64>, Unreadable> {
    let sb = read_u64(dentry, off!(dentry_d_sb))?;
    if read_u64(sb, off!(super_block_s_magic))? != PROC_SUPER_MAGIC {
        return Ok(None);
    }
    let inode = read_u64(dentry, off!(dentry_d_inode))?;
    if inode == 0 {
        return Ok(None);
    }
    // container_of(inode, struct proc_inode, vfs_inode)->pid
    let pid = read_u64(inode - off!(proc_inode_vfs_inode), off!(proc_inode_pid))?;
    if pid == 0 {
        return Ok(None);
    }
    // pid->tasks[PIDTYPE_PID].first is the task's pid_links[PIDTYPE_PID].
    let first = read_u64(pid, off!(pid_tasks))?;
    if first == 0 {
        return Ok(None);
    }
    Ok(Some(first - off!(task_pid_links)))
}
