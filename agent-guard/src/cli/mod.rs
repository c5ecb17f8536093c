//! The command line: one module per subcommand.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod audit;
mod control;
mod daemon;
mod policy;
mod run;
mod run_client;

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
    /// Run the service that guards sessions for its clients (root; see docs/deploy.md).
    Daemon(daemon::DaemonArgs),
    /// Guard a running process tree, cgroup or systemd unit (root, through the daemon).
    Attach(control::AttachArgs),
    /// List the daemon's sessions.
    Sessions(control::ListArgs),
    /// Show the daemon's health: kernel support, programs, sessions, lost events, sinks.
    Status(control::ListArgs),
    /// Print the daemon's recent events, and with --follow the ones that come; or read
    /// the audit log with --file or --log.
    Events(control::EventsArgs),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Internal: the start-up self-check's canary process.
    #[command(name = "__canary", hide = true)]
    Canary { path: PathBuf },
}

/// Runs the parsed command line and returns the process exit status.
pub fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Policy(command) => policy::policy(command),
        Command::Daemon(args) => daemon::daemon(args),
        Command::Attach(args) => control::attach(args),
        Command::Sessions(args) => control::sessions(args),
        Command::Status(args) => control::status(args),
        Command::Events(args) => control::events(args),
        Command::Audit(command) => audit::audit(command),
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
