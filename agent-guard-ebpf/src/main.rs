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
#![no_std]
#![no_main]

mod files;
mod kernel;
mod maps;
mod report;
mod scope;
mod session;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this, so it never runs.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
