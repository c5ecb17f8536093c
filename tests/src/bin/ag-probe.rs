//! `ag-probe`: performs exactly one filesystem or network operation with raw system calls
//! and says how the kernel answered. The kernel-tier tests run it inside guarded sessions
//! (and outside them, as the bystander that must not be affected).
//!
//! ```text
//! ag-probe OP ARGS...
//! ```
//!
//! It prints one line, `RESULT pid=PID ppid=PPID`, where RESULT is `ok` or the errno name
//! (`EPERM`, `ENOENT`, ...), and exits 0 for `ok`, 1 for EPERM, 2 for any other errno and
//! 64 for a usage error. The pid and ppid let a test find the event the kernel reported
//! for this very process. An operation of several steps names the step that failed when it
//! is not the one under test (`listen` refused at its bind: `bind:EPERM`), and a few add
//! `key=value` words after the ppid (`resolve`: `addresses=A,B`).
//!
//! Raw system calls rather than `std::fs`, so that each operation is one syscall the test
//! names (std may retry, fall back or add flags).
use std::{
    ffi::{CString, OsStr, OsString},
    io::Write as _,
    os::unix::ffi::OsStrExt as _,
    time::Duration,
};

use io_uring::{opcode, types, IoUring};

const USAGE: &str = "\
usage: ag-probe OP ARGS...
  unlink PATH                 unlink(2)
  read PATH                   open(2) O_RDONLY (a directory too) and read(2) from it
  rmdir PATH                  rmdir(2)
  rename FROM TO              rename(2)
  exchange A B                renameat2(2) with RENAME_EXCHANGE
  truncate PATH               truncate(2) to 0 bytes
  ftruncate PATH              open(2) O_WRONLY, then ftruncate(2) to 0 bytes
  ftruncate-fd FD             ftruncate(2) to 0 bytes on an inherited descriptor
  open-trunc PATH rdonly|wronly   open(2) with O_TRUNC
  open-write PATH [TEXT]      open(2) an existing file O_WRONLY, write TEXT (default: a line)
  create PATH                 open(2) O_CREAT|O_EXCL|O_WRONLY, write a line
  link EXISTING NEW           link(2)
  mkdir PATH                  mkdir(2)
  mkfifo PATH                 mknod(2) S_IFIFO
  symlink TARGET LINK         symlink(2)
  chmod PATH MODE             chmod(2), MODE in octal
  chown PATH UID GID          chown(2)
  setxattr PATH NAME VALUE    setxattr(2)
  punch-hole PATH             open(2) O_WRONLY, then fallocate(2) PUNCH_HOLE over the file
  punch-hole-fd FD            fallocate(2) PUNCH_HOLE on an inherited descriptor
  mmap-write PATH             open(2) O_RDWR, mmap(2) it shared and writable, write a line
  copy-into SRC DST           copy_file_range(2) from SRC into DST opened O_WRONLY
  utimensat PATH              utimensat(2) to a fixed time (2001-09-09)
  utimes PATH                 utimes(2) to the same fixed time
  touch PATH                  utimensat(2) to the current time (no times given)
  mount-bind SRC DST          mount(2) MS_BIND
  mount-tmpfs DST             mount(2) a tmpfs
  move-mount SRC DST          open_tree(2) OPEN_TREE_CLONE, then move_mount(2)
  umount PATH                 umount2(2)
  pivot-root NEW PUT_OLD      pivot_root(2)
Through a descriptor FD inherited open for writing (O_RDWR for the mappings):
  write-fd FD                 write(2) a line
  pwrite-fd FD                pwrite(2) a line at offset 0
  fallocate-fd FD             fallocate(2) mode 0, the first megabyte (grows the file)
  copy-into-fd SRC FD         copy_file_range(2) from SRC
  splice-into-fd FD           splice(2) a line from a pipe
  sendfile-into-fd SRC FD     sendfile(2) from SRC
  mmap-write-fd FD            mmap(2) shared and writable, write a line
  mprotect-write-fd FD        mmap(2) shared read-only, mprotect(2) writable, write a line
  futimens-fd FD              futimens(2) to the fixed time
  uring-write-fd FD           IORING_OP_WRITE of a line
  uring-fallocate-fd FD       IORING_OP_FALLOCATE, mode 0, the first megabyte
  uring-splice-fd FD          IORING_OP_SPLICE of a line from a pipe
  memfd                       memfd_create(2), reopen /proc/self/fd/N O_WRONLY, write, ftruncate
  unlink-many PATH COUNT      unlink(2) COUNT times; the result of the first call that
                              answers differently from the first, or the common answer
  rename-many A B COUNT       rename(2) A to B and back COUNT times; ok, or the first
                              failure after all COUNT rounds
  uring-unlink PATH           IORING_OP_UNLINKAT
  uring-rename FROM TO        IORING_OP_RENAMEAT
  uring-open-trunc PATH       IORING_OP_OPENAT with O_WRONLY|O_TRUNC
  uring-create PATH           IORING_OP_OPENAT with O_CREAT|O_EXCL|O_WRONLY
  uring-mkdir PATH            IORING_OP_MKDIRAT
  uring-link EXISTING NEW     IORING_OP_LINKAT
  uring-symlink TARGET LINK   IORING_OP_SYMLINKAT
  uring-exchange A B          IORING_OP_RENAMEAT with RENAME_EXCHANGE
  uring-setxattr PATH NAME VALUE   IORING_OP_SETXATTR
  uring-fsetxattr PATH NAME VALUE  open(2) PATH O_RDONLY, then IORING_OP_FSETXATTR
Network (ADDR: an IPv4 literal, on an AF_INET socket, or an IPv6 one, ::ffff:a.b.c.d
included, on an AF_INET6 socket; TARGET: a unix socket PATH, or @NAME for an abstract one;
TEXT: sent once connected, so that the server can tell who reached it):
  connect tcp|udp ADDR PORT [TEXT]
                              connect(2) (TCP: at most 10 s for the handshake, ETIMEDOUT
                              after), then send(2) TEXT (failure: send:ERRNO)
  uring-connect tcp|udp ADDR PORT [TEXT]   IORING_OP_CONNECT, then as connect
  sendto udp ADDR PORT TEXT   sendto(2) on an unconnected UDP socket
  sendmsg udp ADDR PORT TEXT  sendmsg(2) with the address in msg_name
  uring-sendmsg udp ADDR PORT TEXT   IORING_OP_SENDMSG with the address
  connected-sendto udp ADDR PORT TO_ADDR TO_PORT TEXT
                              connect(2) to ADDR (failure: connect:ERRNO), then sendto(2)
                              TO_ADDR, which overrides the connected peer
  bind tcp|udp ADDR PORT      bind(2)
  listen ADDR PORT            bind(2) (failure: bind:ERRNO), then listen(2) on TCP
  listen-unbound [4|6]        listen(2) on a TCP socket never bound (AF_INET by default)
  unix-connect TARGET [TEXT]  connect(2) a stream socket, then send(2) TEXT
  unix-seqpacket-connect TARGET [TEXT]   the same with a seqpacket socket
  unix-sendto TARGET TEXT     sendto(2) on an unbound datagram socket
  unix-dgram-connect TARGET TEXT   connect(2) a datagram socket (failure: connect:ERRNO),
                              then send(2) TEXT
  socketpair                  socketpair(2) stream, dgram and seqpacket, a byte through each
                              (failure: TYPE:ERRNO)
  socket KIND                 socket(2) only; KIND: raw4 (AF_INET SOCK_RAW IPPROTO_ICMP),
                              raw6 (AF_INET6 SOCK_RAW IPPROTO_ICMPV6), packet (AF_PACKET
                              SOCK_RAW ETH_P_ALL), packet-dgram, netlink (NETLINK_ROUTE), ping
                              (AF_INET SOCK_DGRAM IPPROTO_ICMP), ping6, sctp4 (AF_INET
                              SOCK_STREAM IPPROTO_SCTP), sctp6 (AF_INET6 SOCK_SEQPACKET
                              IPPROTO_SCTP), tcp4, tcp6, udp4, udp6, unix
  uring-socket KIND           IORING_OP_SOCKET
  resolve NAME                getaddrinfo(3), any family; prints addresses=A,B,... (failure:
                              the EAI_ name)
  connect-name tcp|udp NAME PORT [TEXT]
                              getaddrinfo(3) (failure: resolve:EAI_...), then connect to
                              the first address as connect does; prints address=A
Processes and the kernel (self-protection):
  kill PID SIG                kill(2)
  ptrace-attach PID           ptrace(2) PTRACE_ATTACH (then waits for the stop and detaches)
  ptrace-seize PID            ptrace(2) PTRACE_SEIZE (then PTRACE_INTERRUPT, wait, detach)
  ptrace-child                fork(2) a child that sleeps, PTRACE_ATTACH it, kill it
  vm-write PID                process_vm_writev(2) of one byte to address 0 of PID (EFAULT
                              when allowed)
  pidfd-getfd PID FD          pidfd_open(2) (failure: pidfd_open:ERRNO), then
                              pidfd_getfd(2) of PID's descriptor FD
  bpf prog-get-next-id|map-create
                              bpf(2) BPF_PROG_GET_NEXT_ID from 0, or BPF_MAP_CREATE with an
                              all-zero attribute (EINVAL when allowed)
  init-module                 init_module(2) of 64 zero bytes (ENOEXEC when allowed)
  finit-module PATH           open(2) O_RDONLY (failure: open:ERRNO), then finit_module(2)
                              (a file of zero bytes, not empty: ENOEXEC when allowed)
  kexec-load                  kexec_load(2) with 17 segments, one more than the kernel takes
                              (EINVAL when allowed)
  kexec-file-load PATH        open(2) O_RDONLY (failure: open:ERRNO), then kexec_file_load(2)
                              without initramfs (zero bytes: ENOEXEC when allowed)
  daemon RESULT DELAY_MS OP ARGS...
                              double fork + setsid, detach from stdio, wait DELAY_MS, run OP
                              and write its result line to the new file RESULT";

/// What `open-write` and `create` write, so a test can tell a modified file from an intact one.
const WRITTEN: &[u8] = b"written by ag-probe\n";

/// The time `utimensat`, `utimes` and `futimens-fd` set: 2001-09-09T01:46:40Z, so that a
/// test can tell a changed time from an intact one.
const FIXED_TIME: libc::time_t = 1_000_000_000;

/// `OPEN_TREE_CLONE` and `MOVE_MOUNT_F_EMPTY_PATH` from <linux/mount.h>.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// An errno, as returned by a failed system call; negative for a getaddrinfo(3) error
/// (`EAI_*`, which glibc numbers below zero).
type Errno = i32;

/// What one operation reports.
struct Report {
    outcome: Result<(), Errno>,
    /// The step that failed, when it is not the system call under test.
    step: Option<&'static str>,
    /// `key=value` words printed after the pid fields.
    detail: String,
}

impl From<Result<(), Errno>> for Report {
    fn from(outcome: Result<(), Errno>) -> Self {
        Self {
            outcome,
            step: None,
            detail: String::new(),
        }
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let report = match perform(&args) {
        Some(report) => report,
        None => {
            eprintln!("{USAGE}");
            std::process::exit(64);
        }
    };
    println!("{}", result_line(&report));
    std::process::exit(exit_code(report.outcome));
}

/// Runs the operation named by `args`; `None` for a usage error.
fn perform(args: &[OsString]) -> Option<Report> {
    let (op, rest) = args.split_first()?;
    let op = op.to_str()?;
    if net::OPS.contains(&op) {
        return net::perform(op, rest);
    }
    if procs::OPS.contains(&op) {
        return procs::perform(op, rest);
    }
    if op == "daemon" {
        let (result, rest) = rest.split_first()?;
        let (delay, op) = rest.split_first()?;
        let delay = Duration::from_millis(delay.to_str()?.parse().ok()?);
        // Refuse what cannot work before forking, so the caller sees the usage error.
        if op.is_empty() || op[0] == "daemon" {
            return None;
        }
        return Some(daemon(&cstr(result), delay, op).into());
    }
    let arity = match op {
        "memfd" => 0,
        "open-write" if rest.len() == 2 => 2,
        "read" | "mkdir" | "mkfifo" | "unlink" | "rmdir" | "truncate" | "ftruncate"
        | "ftruncate-fd" | "open-write" | "create" | "mount-tmpfs" | "uring-unlink"
        | "uring-open-trunc" | "uring-create" | "uring-mkdir" | "punch-hole" | "punch-hole-fd"
        | "mmap-write" | "utimensat" | "utimes" | "touch" | "umount" | "write-fd" | "pwrite-fd"
        | "fallocate-fd" | "splice-into-fd" | "mmap-write-fd" | "mprotect-write-fd"
        | "futimens-fd" | "uring-write-fd" | "uring-fallocate-fd" | "uring-splice-fd" => 1,
        "symlink" | "rename" | "exchange" | "open-trunc" | "link" | "mount-bind" | "move-mount"
        | "uring-rename" | "chmod" | "copy-into" | "unlink-many" | "pivot-root"
        | "copy-into-fd" | "sendfile-into-fd" | "uring-link" | "uring-symlink"
        | "uring-exchange" => 2,
        "chown" | "setxattr" | "uring-setxattr" | "uring-fsetxattr" | "rename-many" => 3,
        _ => return None,
    };
    if rest.len() != arity {
        return None;
    }
    let a: Vec<CString> = rest.iter().map(|arg| cstr(arg)).collect();
    // The descriptor argument of the `*-fd` operations: the last one.
    let fd = || -> Option<libc::c_int> { rest.last()?.to_str()?.parse().ok() };
    let outcome = match op {
        "unlink" => unlink(&a[0]),
        "rmdir" => rmdir(&a[0]),
        "rename" => rename(&a[0], &a[1], 0),
        "exchange" => rename(&a[0], &a[1], libc::RENAME_EXCHANGE),
        "truncate" => truncate(&a[0]),
        "ftruncate" => ftruncate_path(&a[0]),
        "ftruncate-fd" => ftruncate_fd(rest[0].to_str()?.parse().ok()?),
        "open-trunc" => {
            let access = match rest[1].to_str()? {
                "rdonly" => libc::O_RDONLY,
                "wronly" => libc::O_WRONLY,
                _ => return None,
            };
            open_close(&a[0], access | libc::O_TRUNC)
        }
        "open-write" => {
            let text = rest.get(1).map_or(WRITTEN, |t| t.as_bytes());
            open_write(&a[0], 0, text)
        }
        "create" => open_write(&a[0], libc::O_CREAT | libc::O_EXCL, WRITTEN),
        "link" => link(&a[0], &a[1]),
        // SAFETY (these three): valid NUL-terminated paths.
        "mkdir" => check(unsafe { libc::mkdir(a[0].as_ptr(), 0o755) }.into()).map(drop),
        "mkfifo" => {
            check(unsafe { libc::mknod(a[0].as_ptr(), libc::S_IFIFO | 0o644, 0) }.into()).map(drop)
        }
        "symlink" => check(unsafe { libc::symlink(a[0].as_ptr(), a[1].as_ptr()) }.into()).map(drop),
        "chmod" => chmod(&a[0], u32::from_str_radix(rest[1].to_str()?, 8).ok()?),
        "chown" => chown(
            &a[0],
            rest[1].to_str()?.parse().ok()?,
            rest[2].to_str()?.parse().ok()?,
        ),
        "setxattr" => setxattr(&a[0], &a[1], rest[2].as_bytes()),
        "punch-hole" => with_open(&a[0], libc::O_WRONLY, punch_hole),
        "punch-hole-fd" => punch_hole(fd()?),
        "mmap-write" => with_open(&a[0], libc::O_RDWR, |fd| mmap_write(fd, false)),
        // The source is opened first: a refused read fails before the destination matters.
        "copy-into" => with_open(&a[0], libc::O_RDONLY, |from| {
            with_open(&a[1], libc::O_WRONLY, |to| copy_between(from, to))
        }),
        "utimensat" => utimensat(&a[0], true),
        "touch" => utimensat(&a[0], false),
        "utimes" => utimes(&a[0]),
        "mount-bind" => mount_bind(&a[0], &a[1]),
        "mount-tmpfs" => mount_tmpfs(&a[0]),
        "move-mount" => move_mount(&a[0], &a[1]),
        // SAFETY (these two): valid NUL-terminated paths.
        "umount" => check(unsafe { libc::umount2(a[0].as_ptr(), 0) }.into()).map(drop),
        "pivot-root" => {
            check(unsafe { libc::syscall(libc::SYS_pivot_root, a[0].as_ptr(), a[1].as_ptr()) })
                .map(drop)
        }
        "write-fd" => write_all(fd()?, WRITTEN),
        "pwrite-fd" => pwrite(fd()?),
        "fallocate-fd" => fallocate(fd()?),
        "copy-into-fd" => copy_into(&a[0], fd()?),
        "splice-into-fd" => splice_into(fd()?),
        "sendfile-into-fd" => sendfile_into(&a[0], fd()?),
        "mmap-write-fd" => mmap_write(fd()?, false),
        "mprotect-write-fd" => mmap_write(fd()?, true),
        "futimens-fd" => futimens(fd()?),
        "uring-write-fd" => uring_write(fd()?),
        "uring-fallocate-fd" => uring_fallocate(fd()?),
        "uring-splice-fd" => uring_splice(fd()?),
        "memfd" => memfd(),
        "read" => read(&a[0]),
        "unlink-many" => unlink_many(&a[0], rest[1].to_str()?.parse().ok()?),
        "rename-many" => rename_many(&a[0], &a[1], rest[2].to_str()?.parse().ok()?),
        "uring-unlink" => uring_unlink(&a[0]),
        "uring-rename" => uring_rename(&a[0], &a[1]),
        "uring-open-trunc" => uring_open_trunc(&a[0]),
        "uring-create" => uring_create(&a[0]),
        "uring-mkdir" => uring_mkdir(&a[0]),
        "uring-link" => uring_link(&a[0], &a[1]),
        "uring-symlink" => uring_symlink(&a[0], &a[1]),
        "uring-exchange" => uring_exchange(&a[0], &a[1]),
        "uring-setxattr" => uring_setxattr(&a[0], &a[1], &a[2]),
        "uring-fsetxattr" => with_open(&a[0], libc::O_RDONLY, |fd| {
            uring_fsetxattr(fd, &a[1], &a[2])
        }),
        _ => return None,
    };
    Some(outcome.into())
}

fn cstr(s: &OsStr) -> CString {
    CString::new(s.as_bytes()).expect("arguments cannot contain NUL bytes")
}

fn result_line(report: &Report) -> String {
    // SAFETY: getpid and getppid cannot fail.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    let result = match (report.outcome, report.step) {
        (Ok(()), _) => "ok".to_owned(),
        (Err(errno), None) => errno_name(errno),
        (Err(errno), Some(step)) => format!("{step}:{}", errno_name(errno)),
    };
    let mut line = format!("{result} pid={pid} ppid={ppid}");
    if !report.detail.is_empty() {
        line.push(' ');
        line.push_str(&report.detail);
    }
    line
}

fn exit_code(outcome: Result<(), Errno>) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(libc::EPERM) => 1,
        Err(_) => 2,
    }
}

fn errno_name(errno: Errno) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENOSYS => "ENOSYS",
        libc::ESRCH => "ESRCH",
        libc::ENOEXEC => "ENOEXEC",
        libc::EFAULT => "EFAULT",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENXIO => "ENXIO",
        libc::EPROTO => "EPROTO",
        libc::EIO => "EIO",
        libc::EPIPE => "EPIPE",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EAI_BADFLAGS => "EAI_BADFLAGS",
        libc::EAI_NONAME => "EAI_NONAME",
        libc::EAI_AGAIN => "EAI_AGAIN",
        libc::EAI_FAIL => "EAI_FAIL",
        libc::EAI_NODATA => "EAI_NODATA",
        libc::EAI_FAMILY => "EAI_FAMILY",
        libc::EAI_SOCKTYPE => "EAI_SOCKTYPE",
        libc::EAI_SERVICE => "EAI_SERVICE",
        libc::EAI_MEMORY => "EAI_MEMORY",
        libc::EAI_OVERFLOW => "EAI_OVERFLOW",
        other if other < 0 => return format!("EAI-{}", -other),
        other => return format!("errno-{other}"),
    };
    name.to_owned()
}

/// `Ok` for a non-negative return value, the errno otherwise.
fn check(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

fn unlink(path: &CString) -> Result<(), Errno> {
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::unlink(path.as_ptr()) }.into()).map(drop)
}

/// Floods the guard with the same operation: every call must get the same answer.
fn unlink_many(path: &CString, count: u32) -> Result<(), Errno> {
    let first = unlink(path);
    for _ in 1..count {
        let next = unlink(path);
        if next != first {
            return next.and(Err(libc::EPROTO));
        }
    }
    first
}

fn rename_many(a: &CString, b: &CString, count: u32) -> Result<(), Errno> {
    let mut first = Ok(());
    for _ in 0..count {
        let round = rename(a, b, 0).and_then(|()| rename(b, a, 0));
        if first.is_ok() {
            first = round;
        }
    }
    first
}

fn rmdir(path: &CString) -> Result<(), Errno> {
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::rmdir(path.as_ptr()) }.into()).map(drop)
}

fn rename(from: &CString, to: &CString, flags: libc::c_uint) -> Result<(), Errno> {
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    check(rc.into()).map(drop)
}

fn truncate(path: &CString) -> Result<(), Errno> {
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::truncate(path.as_ptr(), 0) }.into()).map(drop)
}

fn open(path: &CString, flags: libc::c_int) -> Result<libc::c_int, Errno> {
    // SAFETY: a valid NUL-terminated path; the mode is only read with O_CREAT.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    check(fd.into()).map(|fd| fd as libc::c_int)
}

fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor this process opened.
    unsafe { libc::close(fd) };
}

fn ftruncate_fd(fd: libc::c_int) -> Result<(), Errno> {
    // SAFETY: ftruncate on a descriptor number; a bad one is EBADF.
    check(unsafe { libc::ftruncate(fd, 0) }.into()).map(drop)
}

fn ftruncate_path(path: &CString) -> Result<(), Errno> {
    let fd = open(path, libc::O_WRONLY)?;
    let result = ftruncate_fd(fd);
    close(fd);
    result
}

fn open_close(path: &CString, flags: libc::c_int) -> Result<(), Errno> {
    close(open(path, flags)?);
    Ok(())
}

/// Opens `path` for reading and reads from it: a directory is opened but not read.
fn read(path: &CString) -> Result<(), Errno> {
    let fd = open(path, libc::O_RDONLY)?;
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is valid for its length; a directory's read fails with EISDIR, which
    // is not the question here.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    close(fd);
    Ok(())
}

fn write_all(fd: libc::c_int, bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: writing from a valid buffer.
    let n = check(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) } as libc::c_long)?;
    if n as usize == bytes.len() {
        Ok(())
    } else {
        Err(libc::EIO)
    }
}

fn open_write(path: &CString, extra: libc::c_int, text: &[u8]) -> Result<(), Errno> {
    let fd = open(path, libc::O_WRONLY | extra)?;
    let result = write_all(fd, text);
    close(fd);
    result
}

fn link(existing: &CString, new: &CString) -> Result<(), Errno> {
    // SAFETY: valid NUL-terminated paths.
    check(unsafe { libc::link(existing.as_ptr(), new.as_ptr()) }.into()).map(drop)
}

fn chmod(path: &CString, mode: u32) -> Result<(), Errno> {
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }.into()).map(drop)
}

fn chown(path: &CString, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::chown(path.as_ptr(), uid, gid) }.into()).map(drop)
}

fn setxattr(path: &CString, name: &CString, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(rc.into()).map(drop)
}

/// Deallocates the first megabyte: the data is gone, the size stays.
fn punch_hole(fd: libc::c_int) -> Result<(), Errno> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor number; a bad one is EBADF.
    check(unsafe { libc::fallocate(fd, mode, 0, 1 << 20) }.into()).map(drop)
}

/// Runs `op` on `path` opened with `flags`, and closes it.
fn with_open(
    path: &CString,
    flags: libc::c_int,
    op: impl FnOnce(libc::c_int) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let fd = open(path, flags)?;
    let result = op(fd);
    close(fd);
    result
}

/// Writes a line into `fd` through a shared mapping: made writable at once, or (`mprotect`)
/// mapped read-only first and made writable by mprotect(2).
fn mmap_write(fd: libc::c_int, mprotect: bool) -> Result<(), Errno> {
    let last_error = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: a shared mapping of the file's first bytes, written within its length (capped
    // by the file's size) and unmapped before returning.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let len = if libc::fstat(fd, &mut st) == 0 {
            (st.st_size as usize).min(WRITTEN.len())
        } else {
            0
        };
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let prot = if mprotect { libc::PROT_READ } else { rw };
        let map = libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
        if map == libc::MAP_FAILED {
            return Err(last_error());
        }
        let result = if mprotect && libc::mprotect(map, len, rw) != 0 {
            Err(last_error())
        } else {
            std::ptr::copy_nonoverlapping(WRITTEN.as_ptr(), map.cast::<u8>(), len);
            libc::msync(map, len, libc::MS_SYNC);
            Ok(())
        };
        libc::munmap(map, len);
        result
    }
}

/// copy_file_range(2) of up to a megabyte from `src` into `to`, at the current offsets.
fn copy_into(src: &CString, to: libc::c_int) -> Result<(), Errno> {
    with_open(src, libc::O_RDONLY, |from| copy_between(from, to))
}

/// copy_file_range(2) from `from` into `to`, at their current offsets.
fn copy_between(from: libc::c_int, to: libc::c_int) -> Result<(), Errno> {
    // SAFETY: copy_file_range between two descriptors, current offsets.
    check(unsafe {
        libc::copy_file_range(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            1 << 20,
            0,
        )
    } as libc::c_long)
    .map(drop)
}

/// `Ok` when a transfer call moved all of `WRITTEN`.
fn whole(moved: libc::c_long) -> Result<(), Errno> {
    if moved as usize == WRITTEN.len() {
        Ok(())
    } else {
        Err(libc::EIO)
    }
}

fn pwrite(fd: libc::c_int) -> Result<(), Errno> {
    // SAFETY: writing from a valid buffer.
    whole(check(
        unsafe { libc::pwrite(fd, WRITTEN.as_ptr().cast(), WRITTEN.len(), 0) } as libc::c_long,
    )?)
}

/// Allocates the first megabyte (mode 0): the file grows to that size.
fn fallocate(fd: libc::c_int) -> Result<(), Errno> {
    // SAFETY: fallocate on a descriptor number; a bad one is EBADF.
    check(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }.into()).map(drop)
}

/// A pipe holding `WRITTEN`, for the splice operations: `(read end, write end)`.
fn filled_pipe() -> Result<(libc::c_int, libc::c_int), Errno> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two descriptors.
    check(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    let filled = write_all(ends[1], WRITTEN);
    if let Err(errno) = filled {
        close(ends[0]);
        close(ends[1]);
        return Err(errno);
    }
    Ok((ends[0], ends[1]))
}

/// Runs `op` with a pipe holding `WRITTEN` (its read end), then closes the pipe.
fn with_pipe(op: impl FnOnce(libc::c_int) -> Result<(), Errno>) -> Result<(), Errno> {
    let (read, write) = filled_pipe()?;
    let result = op(read);
    close(read);
    close(write);
    result
}

fn splice_into(fd: libc::c_int) -> Result<(), Errno> {
    with_pipe(|pipe| {
        // SAFETY: splice from a pipe into a descriptor at its current offset.
        whole(check(unsafe {
            libc::splice(
                pipe,
                std::ptr::null_mut(),
                fd,
                std::ptr::null_mut(),
                WRITTEN.len(),
                0,
            )
        } as libc::c_long)?)
    })
}

fn sendfile_into(src: &CString, to: libc::c_int) -> Result<(), Errno> {
    with_open(src, libc::O_RDONLY, |from| {
        // SAFETY: sendfile between two descriptors, from the source's current offset.
        check(unsafe { libc::sendfile(to, from, std::ptr::null_mut(), 1 << 20) } as libc::c_long)
            .map(drop)
    })
}

/// Both times of [`FIXED_TIME`].
fn fixed_times() -> [libc::timespec; 2] {
    [libc::timespec {
        tv_sec: FIXED_TIME,
        tv_nsec: 0,
    }; 2]
}

/// utimensat(2) to [`FIXED_TIME`] (`fixed`) or to now (no times, as `touch` does).
fn utimensat(path: &CString, fixed: bool) -> Result<(), Errno> {
    let times = fixed_times();
    let times = if fixed {
        times.as_ptr()
    } else {
        std::ptr::null()
    };
    // SAFETY: a valid NUL-terminated path; `times` is null or points at two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times, 0) }.into()).map(drop)
}

/// The utimes(2) system call itself, not the C library's emulation over utimensat.
fn utimes(path: &CString) -> Result<(), Errno> {
    let times = [libc::timeval {
        tv_sec: FIXED_TIME,
        tv_usec: 0,
    }; 2];
    // SAFETY: a valid NUL-terminated path and two timevals.
    check(unsafe { libc::syscall(libc::SYS_utimes, path.as_ptr(), times.as_ptr()) }).map(drop)
}

fn futimens(fd: libc::c_int) -> Result<(), Errno> {
    let times = fixed_times();
    // SAFETY: futimens on a descriptor number with two timespecs.
    check(unsafe { libc::futimens(fd, times.as_ptr()) }.into()).map(drop)
}

fn mount_bind(src: &CString, dst: &CString) -> Result<(), Errno> {
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    check(rc.into()).map(drop)
}

fn mount_tmpfs(dst: &CString) -> Result<(), Errno> {
    let tmpfs = c"tmpfs";
    let options = c"size=1m";
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            dst.as_ptr(),
            tmpfs.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    check(rc.into()).map(drop)
}

fn move_mount(src: &CString, dst: &CString) -> Result<(), Errno> {
    // SAFETY: open_tree(2) with a valid path; it returns a new descriptor.
    let tree = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })? as libc::c_int;
    let empty = c"";
    // SAFETY: move_mount(2) of the detached tree onto a valid path.
    let result = check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop);
    close(tree);
    result
}

/// A file with no name (nlink 0): writing it destroys nothing, so a session may.
fn memfd() -> Result<(), Errno> {
    let name = c"ag-probe";
    // SAFETY: a valid name; returns a new descriptor.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) }.into())?
        as libc::c_int;
    // Reopening through /proc goes through the open hook, as any open by path would.
    let again = open(
        &cstr(OsStr::new(&format!("/proc/self/fd/{fd}"))),
        libc::O_WRONLY,
    );
    let result = again.and_then(|again| {
        let written = write_all(again, WRITTEN).and_then(|()| ftruncate_fd(again));
        close(again);
        written
    });
    close(fd);
    result
}

/// Submits one io_uring operation and returns its result (`res` of the completion).
fn uring(entry: io_uring::squeue::Entry) -> Result<i32, Errno> {
    let mut ring = IoUring::new(4).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    // SAFETY: the buffers the entry points to (paths) outlive the wait below.
    unsafe { ring.submission().push(&entry) }.map_err(|_| libc::EBUSY)?;
    ring.submit_and_wait(1)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let cqe = ring.completion().next().ok_or(libc::EIO)?;
    match cqe.result() {
        res if res < 0 => Err(-res),
        res => Ok(res),
    }
}

fn uring_unlink(path: &CString) -> Result<(), Errno> {
    uring(opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build()).map(drop)
}

fn uring_rename(from: &CString, to: &CString) -> Result<(), Errno> {
    let entry = opcode::RenameAt::new(
        types::Fd(libc::AT_FDCWD),
        from.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        to.as_ptr(),
    )
    .build();
    uring(entry).map(drop)
}

fn uring_open_trunc(path: &CString) -> Result<(), Errno> {
    let entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC)
        .build();
    uring(entry).map(close)
}

fn uring_create(path: &CString) -> Result<(), Errno> {
    let entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC)
        .mode(0o644)
        .build();
    uring(entry).map(close)
}

fn uring_mkdir(path: &CString) -> Result<(), Errno> {
    uring(
        opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .mode(0o755)
            .build(),
    )
    .map(drop)
}

fn uring_write(fd: libc::c_int) -> Result<(), Errno> {
    let entry = opcode::Write::new(types::Fd(fd), WRITTEN.as_ptr(), WRITTEN.len() as u32).build();
    whole(uring(entry)?.into())
}

fn uring_fallocate(fd: libc::c_int) -> Result<(), Errno> {
    uring(opcode::Fallocate::new(types::Fd(fd), 1 << 20).build()).map(drop)
}

fn uring_splice(fd: libc::c_int) -> Result<(), Errno> {
    with_pipe(|pipe| {
        // -1: the current offset, as for a pipe (which has none) and splice(2)'s NULL.
        let entry =
            opcode::Splice::new(types::Fd(pipe), -1, types::Fd(fd), -1, WRITTEN.len() as u32)
                .build();
        whole(uring(entry)?.into())
    })
}

fn uring_link(existing: &CString, new: &CString) -> Result<(), Errno> {
    let entry = opcode::LinkAt::new(
        types::Fd(libc::AT_FDCWD),
        existing.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        new.as_ptr(),
    )
    .build();
    uring(entry).map(drop)
}

fn uring_symlink(target: &CString, link: &CString) -> Result<(), Errno> {
    let entry =
        opcode::SymlinkAt::new(types::Fd(libc::AT_FDCWD), target.as_ptr(), link.as_ptr()).build();
    uring(entry).map(drop)
}

fn uring_exchange(a: &CString, b: &CString) -> Result<(), Errno> {
    let entry = opcode::RenameAt::new(
        types::Fd(libc::AT_FDCWD),
        a.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        b.as_ptr(),
    )
    .flags(libc::RENAME_EXCHANGE)
    .build();
    uring(entry).map(drop)
}

fn uring_setxattr(path: &CString, name: &CString, value: &CString) -> Result<(), Errno> {
    let value = value.as_bytes();
    let entry = opcode::SetXattr::new(
        name.as_ptr(),
        value.as_ptr().cast(),
        path.as_ptr(),
        value.len() as u32,
    )
    .build();
    uring(entry).map(drop)
}

fn uring_fsetxattr(fd: libc::c_int, name: &CString, value: &CString) -> Result<(), Errno> {
    let value = value.as_bytes();
    let entry = opcode::FSetXattr::new(
        types::Fd(fd),
        name.as_ptr(),
        value.as_ptr().cast(),
        value.len() as u32,
    )
    .build();
    uring(entry).map(drop)
}

/// The classic daemon dance: the command's process exits at once, and the operation happens
/// later in a grandchild that has left the session and process group, has no terminal and
/// no stdio, and has been re-parented. Its result line goes to `result` (a new file).
fn daemon(result: &CString, delay: Duration, op: &[OsString]) -> Result<(), Errno> {
    // SAFETY: this program is single-threaded, so the child may run arbitrary code.
    match check(unsafe { libc::fork() }.into())? {
        0 => {}
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child as libc::pid_t, &mut status, 0) };
            return Ok(());
        }
    }
    // SAFETY: as above; the intermediate child only forks again and exits.
    unsafe {
        libc::setsid();
        if libc::fork() != 0 {
            libc::_exit(0);
        }
    }
    let devnull = open(&cstr(OsStr::new("/dev/null")), libc::O_RDWR);
    if let Ok(null) = devnull {
        for fd in 0..3 {
            // SAFETY: duplicating a valid descriptor onto stdio.
            unsafe { libc::dup2(null, fd) };
        }
    }
    std::thread::sleep(delay);
    let report = perform(op).unwrap_or_else(|| Err(libc::EINVAL).into());
    let outcome = report.outcome;
    let line = format!("{}\n", result_line(&report));
    if let Ok(fd) = open(result, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) {
        let _ = write_all(fd, line.as_bytes());
        close(fd);
    }
    let _ = std::io::stdout().flush();
    // SAFETY: leaving the grandchild without running the parent's exit path twice.
    unsafe { libc::_exit(exit_code(outcome)) }
}

/// Operations on other processes and on the kernel itself: what a session may not do to
/// the guard or to anything outside it.
mod procs {
    use std::ffi::{CString, OsString};

    use super::{check, close, open, Errno, Report};

    pub const OPS: &[&str] = &[
        "kill",
        "ptrace-attach",
        "ptrace-seize",
        "ptrace-child",
        "vm-write",
        "pidfd-getfd",
        "bpf",
        "init-module",
        "finit-module",
        "kexec-load",
        "kexec-file-load",
    ];

    /// `BPF_MAP_CREATE` and `BPF_PROG_GET_NEXT_ID` from <linux/bpf.h>.
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    /// `KEXEC_SEGMENT_MAX` + 1 and `KEXEC_FILE_NO_INITRAMFS` from <linux/kexec.h>.
    const KEXEC_TOO_MANY_SEGMENTS: libc::c_long = 17;
    const KEXEC_FILE_NO_INITRAMFS: libc::c_long = 4;

    pub fn perform(op: &str, rest: &[OsString]) -> Option<Report> {
        let text = |i: usize| rest.get(i).and_then(|a| a.to_str());
        let number = |i: usize| -> Option<libc::c_int> { text(i)?.parse().ok() };
        let arity = match op {
            "ptrace-child" | "init-module" | "kexec-load" => 0,
            "ptrace-attach" | "ptrace-seize" | "vm-write" | "bpf" | "finit-module"
            | "kexec-file-load" => 1,
            "kill" | "pidfd-getfd" => 2,
            _ => return None,
        };
        if rest.len() != arity {
            return None;
        }
        let report = match op {
            "kill" => kill(number(0)?, number(1)?).into(),
            "ptrace-attach" => ptrace_attach(number(0)?).into(),
            "ptrace-seize" => ptrace_seize(number(0)?).into(),
            "ptrace-child" => ptrace_child().into(),
            "vm-write" => vm_write(number(0)?).into(),
            "pidfd-getfd" => pidfd_getfd(number(0)?, number(1)?),
            "bpf" => bpf(match text(0)? {
                "prog-get-next-id" => BPF_PROG_GET_NEXT_ID,
                "map-create" => BPF_MAP_CREATE,
                _ => return None,
            })
            .into(),
            "init-module" => init_module().into(),
            "finit-module" => with_file(text(0)?, |fd| {
                // SAFETY: a descriptor, an empty NUL-terminated parameter string, no flags.
                unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0) }
            }),
            "kexec-load" => {
                // SAFETY: the kernel refuses the segment count before reading the (null)
                // segment array.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_kexec_load,
                        0 as libc::c_ulong,
                        KEXEC_TOO_MANY_SEGMENTS,
                        std::ptr::null::<u8>(),
                        0 as libc::c_ulong,
                    )
                };
                check(rc).map(drop).into()
            }
            "kexec-file-load" => with_file(text(0)?, |fd| {
                // SAFETY: a kernel descriptor, no initramfs, no command line.
                unsafe {
                    libc::syscall(
                        libc::SYS_kexec_file_load,
                        fd,
                        -1 as libc::c_int,
                        0 as libc::c_ulong,
                        std::ptr::null::<u8>(),
                        KEXEC_FILE_NO_INITRAMFS,
                    )
                }
            }),
            _ => return None,
        };
        Some(report)
    }

    fn kill(pid: libc::c_int, signal: libc::c_int) -> Result<(), Errno> {
        // SAFETY: kill(2) has no memory arguments.
        check(unsafe { libc::kill(pid, signal) }.into()).map(drop)
    }

    fn ptrace(request: libc::c_uint, pid: libc::c_int, data: libc::c_long) -> Result<(), Errno> {
        // SAFETY: requests without memory arguments (addr is unused, data is a number).
        check(unsafe { libc::ptrace(request, pid, 0 as libc::c_long, data) }).map(drop)
    }

    /// Waits for `pid` to stop and lets it go again.
    fn wait_and_detach(pid: libc::c_int) {
        let mut status = 0;
        // SAFETY: waitpid on a tracee, with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        let _ = ptrace(libc::PTRACE_DETACH, pid, 0);
    }

    fn ptrace_attach(pid: libc::c_int) -> Result<(), Errno> {
        ptrace(libc::PTRACE_ATTACH, pid, 0)?;
        wait_and_detach(pid);
        Ok(())
    }

    fn ptrace_seize(pid: libc::c_int) -> Result<(), Errno> {
        ptrace(libc::PTRACE_SEIZE, pid, 0)?;
        let _ = ptrace(libc::PTRACE_INTERRUPT, pid, 0);
        wait_and_detach(pid);
        Ok(())
    }

    fn ptrace_child() -> Result<(), Errno> {
        // SAFETY: the child only sleeps and exits, both async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above.
            unsafe {
                libc::sleep(30);
                libc::_exit(0)
            }
        }
        check(child.into())?;
        let result = ptrace(libc::PTRACE_ATTACH, child, 0);
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), libc::__WALL);
        }
        result
    }

    fn vm_write(pid: libc::c_int) -> Result<(), Errno> {
        let byte = [0u8; 1];
        let local = libc::iovec {
            iov_base: byte.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let remote = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 1,
        };
        // SAFETY: one valid local buffer; the remote address is checked by the kernel.
        let rc = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        check(rc as libc::c_long).map(drop)
    }

    fn pidfd_getfd(pid: libc::c_int, fd: libc::c_int) -> Report {
        // SAFETY: pidfd_open(2) has no memory arguments.
        let pidfd = match check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }) {
            Ok(pidfd) => pidfd as libc::c_int,
            Err(errno) => {
                return Report {
                    outcome: Err(errno),
                    step: Some("pidfd_open"),
                    detail: String::new(),
                }
            }
        };
        // SAFETY: as above.
        let outcome = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) })
            .map(|got| close(got as libc::c_int));
        close(pidfd);
        outcome.into()
    }

    fn bpf(cmd: libc::c_long) -> Result<(), Errno> {
        // Large enough for either command's attribute; all zero: start_id 0, map type 0.
        let attr = [0u64; 16];
        // SAFETY: a readable attribute of the size given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_ptr(),
                size_of_val(&attr) as libc::c_ulong,
            )
        };
        check(rc).map(drop)
    }

    fn init_module() -> Result<(), Errno> {
        // The size of an ELF header: anything shorter is refused before the LSM hook.
        let image = [0u8; 64];
        // SAFETY: a readable image of the size given and an empty parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_init_module,
                image.as_ptr(),
                image.len() as libc::c_ulong,
                c"".as_ptr(),
            )
        };
        check(rc).map(drop)
    }

    /// Opens `path` read-only and runs the system call under test on it.
    fn with_file(path: &str, call: impl FnOnce(libc::c_int) -> libc::c_long) -> Report {
        let fd = match CString::new(path)
            .map_err(|_| libc::EINVAL)
            .and_then(|p| open(&p, 0))
        {
            Ok(fd) => fd,
            Err(errno) => {
                return Report {
                    outcome: Err(errno),
                    step: Some("open"),
                    detail: String::new(),
                }
            }
        };
        let outcome = check(call(fd)).map(drop);
        close(fd);
        outcome.into()
    }
}

/// The network operations: each decides one connect, send, bind, listen or socket creation,
/// on sockets made for it.
mod net {
    use std::{
        ffi::{CString, OsString},
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        time::Duration,
    };

    use io_uring::{opcode, types};

    use super::{check, uring, Errno, Report};

    /// The operations this module performs.
    pub const OPS: &[&str] = &[
        "connect",
        "uring-connect",
        "sendto",
        "sendmsg",
        "uring-sendmsg",
        "connected-sendto",
        "bind",
        "listen",
        "listen-unbound",
        "unix-connect",
        "unix-seqpacket-connect",
        "unix-sendto",
        "unix-dgram-connect",
        "socketpair",
        "socket",
        "uring-socket",
        "resolve",
        "connect-name",
    ];

    /// How long a TCP handshake may take before the probe gives up (ETIMEDOUT).
    const HANDSHAKE: Duration = Duration::from_secs(10);

    /// A failed step: its name (`None`: the system call under test) and errno.
    type Failed = (Option<&'static str>, Errno);
    type Step<T> = Result<T, Failed>;

    /// The system call under test.
    fn own<T>(result: Result<T, Errno>) -> Step<T> {
        result.map_err(|errno| (None, errno))
    }

    /// A step on the way to the system call under test.
    fn step<T>(name: &'static str, result: Result<T, Errno>) -> Step<T> {
        result.map_err(|errno| (Some(name), errno))
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Proto {
        Tcp,
        Udp,
    }

    impl Proto {
        fn parse(text: &str) -> Option<Self> {
            match text {
                "tcp" => Some(Self::Tcp),
                "udp" => Some(Self::Udp),
                _ => None,
            }
        }

        fn socket_type(self) -> libc::c_int {
            match self {
                Self::Tcp => libc::SOCK_STREAM,
                Self::Udp => libc::SOCK_DGRAM,
            }
        }

        fn number(self) -> libc::c_int {
            match self {
                Self::Tcp => libc::IPPROTO_TCP,
                Self::Udp => libc::IPPROTO_UDP,
            }
        }
    }

    /// A socket address as the kernel takes it.
    struct Addr {
        storage: libc::sockaddr_storage,
        len: libc::socklen_t,
    }

    impl Addr {
        fn zeroed() -> Self {
            Self {
                // SAFETY: all-zero bytes are a valid sockaddr_storage.
                storage: unsafe { std::mem::zeroed() },
                len: 0,
            }
        }

        /// An IPv4 literal on AF_INET, any IPv6 literal (mapped ones too) on AF_INET6.
        fn ip(addr: &str, port: &str) -> Option<Self> {
            let ip: IpAddr = addr.parse().ok()?;
            let port: u16 = port.parse().ok()?;
            let mut a = Self::zeroed();
            let base = (&mut a.storage as *mut libc::sockaddr_storage).cast::<u8>();
            match ip {
                IpAddr::V4(v4) => {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: port.to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from(v4).to_be(),
                        },
                        sin_zero: [0; 8],
                    };
                    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                    unsafe { base.cast::<libc::sockaddr_in>().write(sin) };
                    a.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                }
                IpAddr::V6(v6) => {
                    let sin6 = libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: port.to_be(),
                        sin6_flowinfo: 0,
                        sin6_addr: libc::in6_addr {
                            s6_addr: v6.octets(),
                        },
                        sin6_scope_id: 0,
                    };
                    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                    unsafe { base.cast::<libc::sockaddr_in6>().write(sin6) };
                    a.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                }
            }
            Some(a)
        }

        /// `PATH`, or `@NAME` for an abstract name (no trailing NUL, as std writes it).
        fn unix(target: &str) -> Option<Self> {
            let mut a = Self::zeroed();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
            let sun = unsafe {
                &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>()
            };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let (bytes, abstract_name) = match target.strip_prefix('@') {
                Some(name) => (name.as_bytes(), true),
                None => (target.as_bytes(), false),
            };
            let offset = usize::from(abstract_name);
            // Room for the leading NUL of an abstract name or the trailing one of a path.
            if bytes.is_empty() || bytes.len() + 1 > sun.sun_path.len() || bytes.contains(&0) {
                return None;
            }
            for (i, b) in bytes.iter().enumerate() {
                sun.sun_path[offset + i] = *b as libc::c_char;
            }
            let path_offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
            a.len = (path_offset + bytes.len() + 1) as libc::socklen_t;
            Some(a)
        }

        fn family(&self) -> libc::c_int {
            libc::c_int::from(self.storage.ss_family)
        }

        fn ptr(&self) -> *const libc::sockaddr {
            (&self.storage as *const libc::sockaddr_storage).cast()
        }

        fn ptr_mut(&mut self) -> *mut libc::sockaddr {
            (&mut self.storage as *mut libc::sockaddr_storage).cast()
        }
    }

    /// The address of an AF_INET or AF_INET6 `sockaddr`, as Rust displays it.
    ///
    /// # Safety
    /// `sa` points at a sockaddr of its family's size.
    unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
        // SAFETY: the caller guarantees the size that goes with the family read first.
        unsafe {
            match libc::c_int::from((*sa).sa_family) {
                libc::AF_INET => {
                    let sin = &*sa.cast::<libc::sockaddr_in>();
                    Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
                }
                libc::AF_INET6 => {
                    let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                    Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
                }
                _ => None,
            }
        }
    }

    fn socket(
        domain: libc::c_int,
        ty: libc::c_int,
        protocol: libc::c_int,
    ) -> Result<OwnedFd, Errno> {
        // SAFETY: socket(2) returns a new descriptor, which OwnedFd then owns.
        let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) }.into())?;
        // SAFETY: a descriptor just returned by socket(2), owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn set_nonblocking(fd: RawFd, on: bool) -> Result<(), Errno> {
        // SAFETY: fcntl(2) on a descriptor this process owns.
        let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) }.into())? as libc::c_int;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }.into()).map(drop)
    }

    /// connect(2); for TCP without blocking, then waiting at most [`HANDSHAKE`] for the
    /// handshake, so that a silent destination cannot hang the probe.
    fn connect_fd(fd: RawFd, addr: &Addr, wait: bool) -> Result<(), Errno> {
        if !wait {
            // SAFETY: a valid address of the given length.
            return check(unsafe { libc::connect(fd, addr.ptr(), addr.len) }.into()).map(drop);
        }
        set_nonblocking(fd, true)?;
        // SAFETY: a valid address of the given length.
        match check(unsafe { libc::connect(fd, addr.ptr(), addr.len) }.into()) {
            Ok(_) => {}
            Err(libc::EINPROGRESS) => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready =
                    check(unsafe { libc::poll(&mut pfd, 1, HANDSHAKE.as_millis() as i32) }.into())?;
                if ready == 0 {
                    return Err(libc::ETIMEDOUT);
                }
                let mut error: libc::c_int = 0;
                let mut len = size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: SO_ERROR into an int of the given length.
                check(
                    unsafe {
                        libc::getsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            (&mut error as *mut libc::c_int).cast(),
                            &mut len,
                        )
                    }
                    .into(),
                )?;
                if error != 0 {
                    return Err(error);
                }
            }
            Err(errno) => return Err(errno),
        }
        set_nonblocking(fd, false)
    }

    /// Sends `text` on a connected socket; a stream is then shut for writing, so that the
    /// server reads the text to its end.
    fn send_text(fd: RawFd, text: &str, stream: bool) -> Result<(), Errno> {
        // SAFETY: sending from a valid buffer.
        let sent =
            check(
                unsafe { libc::send(fd, text.as_ptr().cast(), text.len(), libc::MSG_NOSIGNAL) }
                    as libc::c_long,
            )?;
        if sent as usize != text.len() {
            return Err(libc::EIO);
        }
        if stream {
            // SAFETY: shutdown(2) of a connected socket.
            check(unsafe { libc::shutdown(fd, libc::SHUT_WR) }.into())?;
        }
        Ok(())
    }

    fn sendto_fd(fd: RawFd, text: &str, to: &Addr) -> Result<(), Errno> {
        // SAFETY: a valid buffer and a valid address of the given length.
        let sent = check(unsafe {
            libc::sendto(
                fd,
                text.as_ptr().cast(),
                text.len(),
                libc::MSG_NOSIGNAL,
                to.ptr(),
                to.len,
            )
        } as libc::c_long)?;
        if sent as usize == text.len() {
            Ok(())
        } else {
            Err(libc::EIO)
        }
    }

    /// A msghdr carrying `text` to `to`; both must outlive its use.
    fn msghdr(text: &str, to: &Addr, iov: &mut libc::iovec) -> libc::msghdr {
        *iov = libc::iovec {
            iov_base: text.as_ptr().cast_mut().cast(),
            iov_len: text.len(),
        };
        // SAFETY: all-zero bytes are a valid msghdr (no name, no data, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = to.ptr().cast_mut().cast();
        msg.msg_namelen = to.len;
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        msg
    }

    /// The connect operations: `connect`, `uring-connect`, and `connect-name` after its
    /// lookup.
    fn connect(proto: Proto, addr: &Addr, text: Option<&str>, via_uring: bool) -> Step<()> {
        let sock = step(
            "socket",
            socket(addr.family(), proto.socket_type(), proto.number()),
        )?;
        let fd = sock.as_raw_fd();
        if via_uring {
            let entry = opcode::Connect::new(types::Fd(fd), addr.ptr(), addr.len).build();
            own(uring(entry).map(drop))?;
        } else {
            own(connect_fd(fd, addr, proto == Proto::Tcp))?;
        }
        if let Some(text) = text {
            step("send", send_text(fd, text, proto == Proto::Tcp))?;
        }
        Ok(())
    }

    fn udp_socket(to: &Addr) -> Step<OwnedFd> {
        step(
            "socket",
            socket(to.family(), libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        )
    }

    fn sendto(to: &Addr, text: &str) -> Step<()> {
        let sock = udp_socket(to)?;
        own(sendto_fd(sock.as_raw_fd(), text, to))
    }

    fn sendmsg(to: &Addr, text: &str, via_uring: bool) -> Step<()> {
        let sock = udp_socket(to)?;
        let fd = sock.as_raw_fd();
        let mut iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let msg = msghdr(text, to, &mut iov);
        let sent = if via_uring {
            own(uring(opcode::SendMsg::new(types::Fd(fd), &msg).build()).map(i64::from))?
        } else {
            // SAFETY: a msghdr whose name and data outlive the call.
            own(check(
                unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) } as libc::c_long,
            ))?
        };
        if sent as usize == text.len() {
            Ok(())
        } else {
            own(Err(libc::EIO))
        }
    }

    fn connected_sendto(peer: &Addr, to: &Addr, text: &str) -> Step<()> {
        let sock = udp_socket(peer)?;
        let fd = sock.as_raw_fd();
        step("connect", connect_fd(fd, peer, false))?;
        own(sendto_fd(fd, text, to))
    }

    fn bind_fd(fd: RawFd, addr: &Addr) -> Result<(), Errno> {
        // SAFETY: a valid address of the given length.
        check(unsafe { libc::bind(fd, addr.ptr(), addr.len) }.into()).map(drop)
    }

    fn listen_fd(fd: RawFd) -> Result<(), Errno> {
        // SAFETY: listen(2) on a descriptor this process owns.
        check(unsafe { libc::listen(fd, 16) }.into()).map(drop)
    }

    fn bind(proto: Proto, addr: &Addr) -> Step<()> {
        let sock = step(
            "socket",
            socket(addr.family(), proto.socket_type(), proto.number()),
        )?;
        own(bind_fd(sock.as_raw_fd(), addr))
    }

    fn listen(addr: &Addr) -> Step<()> {
        let sock = step("socket", socket(addr.family(), libc::SOCK_STREAM, 0))?;
        step("bind", bind_fd(sock.as_raw_fd(), addr))?;
        own(listen_fd(sock.as_raw_fd()))
    }

    fn listen_unbound(domain: libc::c_int) -> Step<()> {
        let sock = step("socket", socket(domain, libc::SOCK_STREAM, 0))?;
        own(listen_fd(sock.as_raw_fd()))
    }

    /// A stream or seqpacket connect to a unix socket, then `text`.
    fn unix_connect(ty: libc::c_int, to: &Addr, text: Option<&str>) -> Step<()> {
        let sock = step("socket", socket(libc::AF_UNIX, ty, 0))?;
        let fd = sock.as_raw_fd();
        own(connect_fd(fd, to, false))?;
        if let Some(text) = text {
            step("send", send_text(fd, text, ty == libc::SOCK_STREAM))?;
        }
        Ok(())
    }

    fn unix_sendto(to: &Addr, text: &str) -> Step<()> {
        let sock = step("socket", socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0))?;
        own(sendto_fd(sock.as_raw_fd(), text, to))
    }

    fn unix_dgram_connect(to: &Addr, text: &str) -> Step<()> {
        let sock = step("socket", socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0))?;
        let fd = sock.as_raw_fd();
        step("connect", connect_fd(fd, to, false))?;
        own(send_text(fd, text, false))
    }

    /// Unnamed peers: a byte each way through a stream, a datagram and a seqpacket pair.
    fn socketpair() -> Step<()> {
        let types: [(&'static str, libc::c_int); 3] = [
            ("stream", libc::SOCK_STREAM),
            ("dgram", libc::SOCK_DGRAM),
            ("seqpacket", libc::SOCK_SEQPACKET),
        ];
        for (name, ty) in types {
            let mut fds = [0; 2];
            // SAFETY: socketpair(2) fills the two descriptors, which OwnedFd then owns.
            step(
                name,
                check(
                    unsafe {
                        libc::socketpair(
                            libc::AF_UNIX,
                            ty | libc::SOCK_CLOEXEC,
                            0,
                            fds.as_mut_ptr(),
                        )
                    }
                    .into(),
                ),
            )?;
            // SAFETY: descriptors just returned by socketpair(2).
            let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            step(name, send_text(a.as_raw_fd(), "x", false))?;
            let mut byte = [0u8; 1];
            // SAFETY: reading into a valid one-byte buffer.
            let got = step(
                name,
                check(
                    unsafe { libc::recv(b.as_raw_fd(), byte.as_mut_ptr().cast(), 1, 0) }
                        as libc::c_long,
                ),
            )?;
            if got != 1 || byte[0] != b'x' {
                return step(name, Err(libc::EIO));
            }
        }
        Ok(())
    }

    /// `(domain, type, protocol)` of a `socket KIND`.
    fn socket_kind(kind: &str) -> Option<(libc::c_int, libc::c_int, libc::c_int)> {
        let eth_p_all = libc::c_int::from((libc::ETH_P_ALL as u16).to_be());
        Some(match kind {
            "raw4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
            "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
            "packet" => (libc::AF_PACKET, libc::SOCK_RAW, eth_p_all),
            "packet-dgram" => (libc::AF_PACKET, libc::SOCK_DGRAM, eth_p_all),
            "netlink" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
            "ping" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            "ping6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
            "sctp4" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
            "sctp6" => (libc::AF_INET6, libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP),
            "tcp4" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP),
            "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_TCP),
            "udp4" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP),
            "udp6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDP),
            "unix" => (libc::AF_UNIX, libc::SOCK_STREAM, 0),
            _ => return None,
        })
    }

    fn create(kind: (libc::c_int, libc::c_int, libc::c_int), via_uring: bool) -> Step<()> {
        let (domain, ty, protocol) = kind;
        if via_uring {
            let entry = opcode::Socket::new(domain, ty | libc::SOCK_CLOEXEC, protocol).build();
            let fd = own(uring(entry))?;
            // SAFETY: a descriptor just created by IORING_OP_SOCKET.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(())
        } else {
            own(socket(domain, ty, protocol).map(drop))
        }
    }

    /// getaddrinfo(3) of `name` (and `port`, when given) for `socktype`: the addresses in
    /// the order it gives them, each once.
    fn lookup(name: &str, port: Option<&str>, socktype: libc::c_int) -> Result<Vec<Addr>, Errno> {
        let node = CString::new(name).map_err(|_| libc::EINVAL)?;
        let service = port
            .map(|p| CString::new(p).map_err(|_| libc::EINVAL))
            .transpose()?;
        // SAFETY: all-zero bytes are valid hints (no flags, any family and protocol).
        let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
        hints.ai_family = libc::AF_UNSPEC;
        hints.ai_socktype = socktype;
        hints.ai_flags = if port.is_some() {
            libc::AI_NUMERICSERV
        } else {
            0
        };
        let mut list: *mut libc::addrinfo = std::ptr::null_mut();
        // SAFETY: valid strings (or null) and hints; the list is freed below.
        let rc = unsafe {
            libc::getaddrinfo(
                node.as_ptr(),
                service.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                &hints,
                &mut list,
            )
        };
        if rc == libc::EAI_SYSTEM {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        if rc != 0 {
            return Err(rc);
        }
        let mut found: Vec<Addr> = Vec::new();
        let mut seen: Vec<IpAddr> = Vec::new();
        let mut entry = list;
        while !entry.is_null() {
            // SAFETY: a node of the list getaddrinfo returned; its address has ai_addrlen
            // bytes, at most a sockaddr_storage.
            unsafe {
                let ai = &*entry;
                let len = ai.ai_addrlen as usize;
                if let Some(ip) = ip_of(ai.ai_addr) {
                    if !seen.contains(&ip) && len <= size_of::<libc::sockaddr_storage>() {
                        seen.push(ip);
                        let mut addr = Addr::zeroed();
                        std::ptr::copy_nonoverlapping(
                            ai.ai_addr.cast::<u8>(),
                            addr.ptr_mut().cast::<u8>(),
                            len,
                        );
                        addr.len = ai.ai_addrlen;
                        found.push(addr);
                    }
                }
                entry = ai.ai_next;
            }
        }
        // SAFETY: the list getaddrinfo returned, freed once.
        unsafe { libc::freeaddrinfo(list) };
        Ok(found)
    }

    fn display(addr: &Addr) -> String {
        // SAFETY: an address getaddrinfo filled in, of its family's size.
        unsafe { ip_of(addr.ptr()) }.map_or_else(|| "?".to_owned(), |ip| ip.to_string())
    }

    fn resolve(name: &str) -> Step<String> {
        let found = own(lookup(name, None, libc::SOCK_STREAM))?;
        let list: Vec<String> = found.iter().map(display).collect();
        Ok(format!("addresses={}", list.join(",")))
    }

    fn connect_name(proto: Proto, name: &str, port: &str, text: Option<&str>) -> Step<String> {
        let found = step("resolve", lookup(name, Some(port), proto.socket_type()))?;
        let first = found.first().ok_or((Some("resolve"), libc::EAI_NODATA))?;
        connect(proto, first, text, false)?;
        Ok(format!("address={}", display(first)))
    }

    pub fn perform(op: &str, rest: &[OsString]) -> Option<Report> {
        let args: Vec<&str> = rest.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
        let ip = |addr: &str, port: &str| Addr::ip(addr, port);
        let done = |r: Step<()>| r.map(|()| String::new());
        let result: Step<String> = match (op, args.as_slice()) {
            ("connect" | "uring-connect", [proto, addr, port, text @ ..]) if text.len() <= 1 => {
                done(connect(
                    Proto::parse(proto)?,
                    &ip(addr, port)?,
                    text.first().copied(),
                    op == "uring-connect",
                ))
            }
            ("sendto", ["udp", addr, port, text]) => done(sendto(&ip(addr, port)?, text)),
            ("sendmsg" | "uring-sendmsg", ["udp", addr, port, text]) => {
                done(sendmsg(&ip(addr, port)?, text, op == "uring-sendmsg"))
            }
            ("connected-sendto", ["udp", addr, port, to_addr, to_port, text]) => done(
                connected_sendto(&ip(addr, port)?, &ip(to_addr, to_port)?, text),
            ),
            ("bind", [proto, addr, port]) => done(bind(Proto::parse(proto)?, &ip(addr, port)?)),
            ("listen", [addr, port]) => done(listen(&ip(addr, port)?)),
            ("listen-unbound", []) | ("listen-unbound", ["4"]) => {
                done(listen_unbound(libc::AF_INET))
            }
            ("listen-unbound", ["6"]) => done(listen_unbound(libc::AF_INET6)),
            ("unix-connect", [target, text @ ..]) if text.len() <= 1 => done(unix_connect(
                libc::SOCK_STREAM,
                &Addr::unix(target)?,
                text.first().copied(),
            )),
            ("unix-seqpacket-connect", [target, text @ ..]) if text.len() <= 1 => {
                done(unix_connect(
                    libc::SOCK_SEQPACKET,
                    &Addr::unix(target)?,
                    text.first().copied(),
                ))
            }
            ("unix-sendto", [target, text]) => done(unix_sendto(&Addr::unix(target)?, text)),
            ("unix-dgram-connect", [target, text]) => {
                done(unix_dgram_connect(&Addr::unix(target)?, text))
            }
            ("socketpair", []) => done(socketpair()),
            ("socket" | "uring-socket", [kind]) => {
                done(create(socket_kind(kind)?, op == "uring-socket"))
            }
            ("resolve", [name]) => resolve(name),
            ("connect-name", [proto, name, port, text @ ..]) if text.len() <= 1 => {
                connect_name(Proto::parse(proto)?, name, port, text.first().copied())
            }
            _ => return None,
        };
        Some(match result {
            Ok(detail) => Report {
                outcome: Ok(()),
                step: None,
                detail,
            },
            Err((step, errno)) => Report {
                outcome: Err(errno),
                step,
                detail: String::new(),
            },
        })
    }
}
