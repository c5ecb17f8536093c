//! Project automation: `cargo xtask <setup|test|demo|bench|bench-daemon>`.
//!
//! Everything a fresh machine needs is installed by `setup`, which the other commands run
//! first. Kernel tiers boot Debian's 6.1 and 6.12 kernels under qemu (software emulation)
//! with virtme-ng, sharing the host's filesystem, because BPF LSM enforcement cannot be
//! tested on a host whose kernel refuses BPF trampolines.
mod bench;
mod bench_daemon;
mod bench_pipeline;
mod build;
mod demo;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain, qemu, the test kernels and virtme-ng (idempotent).
    Setup,
    /// Run every test tier: host unit and integration tests, then the kernel suite in VMs
    /// on Debian 6.1 and 6.12, then the refusal check on a kernel without BPF LSM.
    Test,
    /// A scripted rogue agent in a guarded session: its workspace edits succeed, its
    /// attacks on a production tree are refused, and the events are shown.
    Demo,
    /// Measure the guard's overhead in the VM, as ratios against no guard in the same run.
    Bench {
        /// Iterations per measured loop.
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
        /// Repetitions of each measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        repetitions: u32,
    },
    /// Measure the daemon in the VM: start to enforcing, idle memory, and the VM's slowdown
    /// against this host.
    BenchDaemon {
        /// Daemon starts measured (the median is reported).
        #[arg(long, default_value_t = 5)]
        repetitions: u32,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup => setup::setup(setup::Verbosity::Report).map(drop),
        Command::Test => test::test(),
        Command::Demo => demo::demo(),
        Command::Bench {
            iterations,
            repetitions,
        } => bench::bench(iterations, repetitions),
        Command::BenchDaemon { repetitions } => bench_daemon::bench_daemon(repetitions),
    }
}
