//! The command line: one module per subcommand.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod policy;
mod run;

/// Exit status for bad input (command line or policy).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when agent-guard itself cannot guard (no BPF LSM, no privileges, load
/// failure). The command is never started in that case.
pub const EXIT_GUARD_UNAVAILABLE: i32 = 125;

/// Kernel-enforced guard rails for AI agents: run a command as a guarded session whose
/// destructive filesystem operations outside its writable scope are refused by BPF LSM
/// programs and reported as JSON events.
#[derive(Debug, Parser)]
#[command(name = "agent-guard", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command as a guarded session.
    Run(run::RunArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Internal: the start-up self-check's canary process.
    #[command(name = "__canary", hide = true)]
    Canary { path: PathBuf },
}

/// Runs the parsed command line and returns the process exit status.
pub fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Policy(command) => policy::policy(command),
        Command::Canary { path } => crate::selfcheck::canary_process(&path),
    }
}

/// Prints an error with its chain of causes, one per line.
pub fn report_error(context: &str, error: &dyn std::error::Error) {
    eprintln!("agent-guard: {context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}
