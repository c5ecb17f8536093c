//! agent-guard's BPF LSM programs.
//!
//! A task belongs to a guarded session when its `task_struct` is in the `TASKS` map. It gets
//! there at the exec of a session's first command (`session` module) or by being forked from
//! a member, so membership follows every descendant whatever it does: double forks, setsid,
//! re-parenting to init, setuid binaries, io_uring workers (which are forked threads).
//!
//! The filesystem hooks (`files` module) decide on dentries and inodes, never on the string
//! the process passed, and report every decision through the `EVENTS` ring buffer
//! (`report` module). Enforcement never waits for user space.
//!
//! The socket hooks (`network` module) decide on the address the kernel copied in (never
//! the caller's memory) and, for unix sockets, on the peer socket the kernel found.
//!
//! Built for the host (as in `cargo test --workspace`), the crate is an empty program: the
//! programs only exist for the BPF target.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod identify;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod network;
#[cfg(target_arch = "bpf")]
mod report;
#[cfg(target_arch = "bpf")]
mod scope;
#[cfg(target_arch = "bpf")]
mod session;
#[cfg(target_arch = "bpf")]
mod tally;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this, so it never runs.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
