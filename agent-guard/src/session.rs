//! Starting a command inside a session, and waiting for the whole session to end.
//!
//! The command's process is forked, waits until user space has listed its pid in `ENROLL`,
//! then execs; the kernel moves it into the session at that exec, before the command runs.
//! A second close-on-exec pipe tells the parent whether the exec happened, and the parent
//! then checks that the kernel really enrolled it. If not, the process is killed: a command
//! never runs unguarded.
use std::{
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
};

use nix::{
    errno::Errno,
    sys::{
        signal::{kill, Signal},
        wait::{waitpid, WaitStatus},
    },
    unistd::{fork, pipe2, ForkResult, Pid},
};

use crate::bpf::{Guard, SessionMapError};

/// Exit status of `run` when CMD cannot be found (as in POSIX shells).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status of `run` when CMD was found but could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the command is empty")]
    Empty,
    #[error("the command contains a NUL byte")]
    Nul,
    #[error("creating a pipe")]
    Pipe(#[source] Errno),
    #[error("forking")]
    Fork(#[source] Errno),
    #[error("enrolling process {pid} in the session")]
    Enroll {
        pid: i32,
        #[source]
        source: SessionMapError,
    },
    #[error("cannot execute `{command}`")]
    Exec {
        command: String,
        exit_status: i32,
        #[source]
        source: Errno,
    },
    #[error("the kernel did not enroll process {pid} at its exec; it was killed before it could act unguarded")]
    NotEnrolled { pid: i32 },
}

fn write_all(fd: i32, bytes: &[u8]) {
    // SAFETY: plain write(2) of a valid buffer; async-signal-safe, used after fork.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// A forked command waiting, before its exec, for [`Waiting::go`]. Dropping it without
/// `go` makes the child exit without ever running the command.
pub struct Waiting {
    pub pid: Pid,
    command: String,
    go_write: OwnedFd,
    status_read: OwnedFd,
}

impl Waiting {
    /// Lets the child exec and waits until it did (or failed to). The caller then checks
    /// that the kernel enrolled it, and kills it otherwise.
    pub fn go(self) -> Result<Pid, SpawnError> {
        write_all(self.go_write.as_raw_fd(), &[1]);
        drop(self.go_write);
        let mut status = [0u8; 4];
        let n = loop {
            // SAFETY: read(2) into a valid buffer.
            let n =
                unsafe { libc::read(self.status_read.as_raw_fd(), status.as_mut_ptr().cast(), 4) };
            if n >= 0 || Errno::last() != Errno::EINTR {
                break n;
            }
        };
        if n == 4 {
            let errno = Errno::from_raw(i32::from_ne_bytes(status));
            let _ = waitpid(self.pid, None);
            return Err(SpawnError::Exec {
                command: self.command,
                exit_status: if errno == Errno::ENOENT {
                    EXIT_NOT_FOUND
                } else {
                    EXIT_CANNOT_EXEC
                },
                source: errno,
            });
        }
        Ok(self.pid)
    }

    /// Kills the waiting child and reaps it.
    pub fn abort(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Forks a child that will exec `argv` once told to ([`Waiting::go`]). Call only while
/// the process has a single thread (before the tokio runtime starts any), as after any
/// fork.
pub fn spawn_waiting(argv: &[OsString]) -> Result<Waiting, SpawnError> {
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| SpawnError::Nul))
        .collect::<Result<_, _>>()?;
    let program = args.first().ok_or(SpawnError::Empty)?.clone();
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());

    let (go_read, go_write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let (status_read, status_write) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;

    // SAFETY: the child only calls async-signal-safe functions (close, read, write, execvp,
    // _exit) on data prepared before the fork.
    match unsafe { fork() }.map_err(SpawnError::Fork)? {
        ForkResult::Child => {
            drop(go_write);
            drop(status_read);
            let mut go = [0u8; 1];
            // SAFETY: read(2) into a valid one-byte buffer.
            let n = unsafe { libc::read(go_read.as_raw_fd(), go.as_mut_ptr().cast(), 1) };
            if n != 1 {
                // The parent went away or refused: never exec unguarded.
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(EXIT_CANNOT_EXEC) };
            }
            // SAFETY: NUL-terminated argument vector of valid C strings.
            unsafe { libc::execvp(program.as_ptr(), arg_ptrs.as_ptr()) };
            let errno = Errno::last() as i32;
            write_all(status_write.as_raw_fd(), &errno.to_ne_bytes());
            // SAFETY: _exit is async-signal-safe.
            unsafe {
                libc::_exit(if errno == libc::ENOENT {
                    EXIT_NOT_FOUND
                } else {
                    EXIT_CANNOT_EXEC
                })
            };
        }
        ForkResult::Parent { child } => Ok(Waiting {
            pid: child,
            command: argv[0].to_string_lossy().into_owned(),
            go_write,
            status_read,
        }),
    }
}

/// Forks and execs `argv` as the first process of `session`. Call only while the process
/// has a single thread (before the tokio runtime starts any), as after any fork.
pub fn spawn_enrolled(
    guard: &mut Guard,
    session: u32,
    argv: &[OsString],
) -> Result<Pid, SpawnError> {
    let waiting = spawn_waiting(argv)?;
    let pid = waiting.pid;
    if let Err(source) = guard.enroll(pid.as_raw() as u32, session) {
        waiting.abort();
        return Err(SpawnError::Enroll {
            pid: pid.as_raw(),
            source,
        });
    }
    if let Err(e) = waiting.go() {
        guard.cancel_enrolment(pid.as_raw() as u32);
        return Err(e);
    }
    if guard.enrolment_pending(pid.as_raw() as u32) {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        guard.cancel_enrolment(pid.as_raw() as u32);
        return Err(SpawnError::NotEnrolled { pid: pid.as_raw() });
    }
    Ok(pid)
}

/// A session id nobody else uses: random, so that ids from a restarted daemon or another
/// `run` never collide with live ones in practice (the maps are checked too).
pub fn random_session_id() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom into a valid 4-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 4, 0) };
    if n == 4 {
        u32::from_ne_bytes(bytes) & 0x7fff_ffff
    } else {
        std::process::id().rotate_left(16) ^ 0x5a5a_5a5a
    }
}

/// Makes this process the reaper of its orphaned descendants, so that double-forked and
/// daemonized session members stay visible to `wait_all`.
pub fn become_subreaper() -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// The exit status a shell would report for `status`: the code, or 128+N for signal N.
pub fn shell_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Reaps children until none is left and returns the shell status of `command`. With
/// [`become_subreaper`] this waits for every descendant, orphans included.
pub fn wait_all(command: Pid) -> i32 {
    let mut command_status = None;
    loop {
        match waitpid(None, None) {
            Ok(status) => {
                if status.pid() == Some(command) {
                    command_status = shell_status(status).or(command_status);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    command_status.unwrap_or(EXIT_CANNOT_EXEC)
}

/// Processes whose parent is `parent` (the session's members that are our children,
/// including orphans re-parented to us).
pub fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent.as_raw() as u32))
        .map(|pid| Pid::from_raw(pid as i32))
        .collect()
}

/// The parent pid of `pid` from /proc/PID/stat (the field after the command, which is in
/// parentheses and may itself contain spaces and parentheses).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}
