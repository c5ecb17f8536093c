//! `agent-guard policy`: checking policy files without running anything.
use std::path::PathBuf;

use clap::Subcommand;

use super::EXIT_USAGE;
use crate::policy::{Policy, SessionContext};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: exits 0 when all are valid, otherwise prints every problem with
    /// its file, line and column.
    Check {
        /// Policy files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn policy(command: PolicyCommand) -> i32 {
    match command {
        PolicyCommand::Check { files } => check(&files),
    }
}

fn check(files: &[PathBuf]) -> i32 {
    let ctx = SessionContext::current().ok();
    let mut failed = 0;
    for file in files {
        let result = Policy::load(file)
            .map_err(|e| e.to_string())
            .and_then(|policy| {
                // Paths that do not exist here are reported too: `run` would refuse them.
                match &ctx {
                    Some(ctx) => policy
                        .resolve(ctx)
                        .map(|_| policy)
                        .map_err(|e| e.to_string()),
                    None => Ok(policy),
                }
            });
        match result {
            Ok(policy) => println!(
                "{}: ok ({} mode, {} writable scopes)",
                file.display(),
                policy.mode.as_str(),
                policy.writable.len()
            ),
            Err(message) => {
                eprintln!("{message}");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        0
    } else {
        EXIT_USAGE
    }
}
