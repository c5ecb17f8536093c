//! Kernel tier: agent-guard's guarded sessions against real BPF LSM enforcement.
//!
//! These tests need root and a kernel with BPF LSM active, so they are `#[ignore]`d on the
//! host; `cargo xtask test` runs them inside VMs on Debian's 6.1 and 6.12 kernels with
//! `--ignored --test-threads=1`. On a machine that cannot enforce they fail, never skip.
//!
//! Each test starts `agent-guard run` on a shell script of `ag-probe` calls (one syscall
//! each) and proves, for the operation it covers:
//! - inside the workspace the operation succeeds;
//! - outside it fails with EPERM and the target is unchanged;
//! - the denial is reported with every field right (`session::Session` checks the summary,
//!   counts, times and policy of every run; `expect::Expect` the rest);
//! - the test process itself, a bystander in no session, can still do it while the session
//!   is alive (the script pauses for that).
//!
//! The filesystem rows of THREATS.md: path aliases in `aliases`; destruction without unlink
//! in `operations` (rename over and away, RENAME_EXCHANGE, O_TRUNC, truncate, ftruncate of
//! an inherited descriptor, mount over) and `destruction` (mode, owner, xattrs, holes);
//! leaving the tree in `escape`; io_uring in `io_uring`; flooding the event buffer in `flood`.
//! Attacking the guard (signals, ptrace, bpf(2), modules and kexec) in `selfprotect`.
//! Attaching a tree that is already running, through the library, in `attach`.
//! Writes through descriptors the session inherited, shared writable mappings, times,
//! unmounting, pivot_root and the remaining io_uring operations in `coverage`.
//!
//! Attacking the guard through its own files (configuration, runtime, state and log
//! directories, pinned BPF objects, cgroup control files, the daemon's socket) in
//! `selfprotect_paths`; the mandatory base policy in /etc/agent-guard in `base_policy`.
//!
//! The network row in `network`, against real servers (loopback, this host's end of a veth
//! pair, a network namespace at the other end) and a real dnsmasq, with the fixtures in
//! `netfix`.
//!
//! Fixtures live under /tmp (an overlayfs in the virtme-ng guest).
//!
//! The modules sit in `tests/kernel/` and are named with `#[path]`: files next to this one
//! would each become a test target of their own.

#[path = "kernel/daemonfix.rs"]
mod daemonfix;
#[path = "kernel/events.rs"]
mod events;
#[path = "kernel/expect.rs"]
mod expect;
#[path = "kernel/fixture.rs"]
mod fixture;
#[path = "kernel/netfix.rs"]
mod netfix;
#[path = "kernel/receivers.rs"]
mod receivers;
#[path = "kernel/script.rs"]
mod script;
#[path = "kernel/session.rs"]
mod session;

#[path = "kernel/aliases.rs"]
mod aliases;
#[path = "kernel/attach.rs"]
mod attach;
#[path = "kernel/base_policy.rs"]
mod base_policy;
#[path = "kernel/coverage.rs"]
mod coverage;
#[path = "kernel/daemon.rs"]
mod daemon;
#[path = "kernel/destruction.rs"]
mod destruction;
#[path = "kernel/escape.rs"]
mod escape;
#[path = "kernel/flood.rs"]
mod flood;
#[path = "kernel/io_uring.rs"]
mod io_uring;
#[path = "kernel/language.rs"]
mod language;
#[path = "kernel/lifecycle.rs"]
mod lifecycle;
#[path = "kernel/network.rs"]
mod network;
#[path = "kernel/operations.rs"]
mod operations;
#[path = "kernel/preemption.rs"]
mod preemption;
#[path = "kernel/protected.rs"]
mod protected;
#[path = "kernel/reporting.rs"]
mod reporting;
#[path = "kernel/selfprotect.rs"]
mod selfprotect;
#[path = "kernel/selfprotect_paths.rs"]
mod selfprotect_paths;
#[path = "kernel/shipped.rs"]
mod shipped;

/// Rules as events name them.
mod rule {
    pub const OUTSIDE: &str = "outside-writable-scope";
    pub const SCOPE_ROOT: &str = "scope-root";
    pub const MULTI_LINK: &str = "multi-link-file";
    pub const NO_MOUNT: &str = "no-mount";
    pub const TOO_DEEP: &str = "path-too-deep";
    pub const PROTECTED: &str = "protected";
    // Network (issue #4).
    pub const EGRESS_DEFAULT: &str = "egress-default";
    pub const LOCAL_DESTINATION: &str = "local-destination";
    pub const LISTEN_NOT_ALLOWED: &str = "listen-not-allowed";
    pub const RAW_SOCKET: &str = "raw-socket";
    pub const ABSTRACT_UNIX: &str = "abstract-unix-socket";
    pub const UNCHECKED_PROTOCOL: &str = "unchecked-protocol";
}
