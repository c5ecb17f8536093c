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
    /// Print a policy as a session started here would use it: variables expanded and every
    /// path resolved to the device and inode the kernel decides on.
    Show {
        /// Policy file; without it, the built-in policy.
        file: Option<PathBuf>,
    },
}

pub fn policy(command: PolicyCommand) -> i32 {
    match command {
        PolicyCommand::Check { files } => check(&files),
        PolicyCommand::Show { file } => show(file.as_deref()),
    }
}

fn show(file: Option<&std::path::Path>) -> i32 {
    let policy = match file {
        Some(path) => Policy::load(path),
        None => Ok(Policy::builtin()),
    };
    let resolved = match policy.map_err(|e| e.to_string()).and_then(|policy| {
        let ctx = SessionContext::current()
            .map_err(|e| format!("cannot read the current directory: {e}"))?;
        let resolved = policy.resolve(&ctx).map_err(|e| e.to_string())?;
        Ok((policy, resolved))
    }) {
        Ok(resolved) => resolved,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_USAGE;
        }
    };
    let (policy, resolved) = resolved;
    let dev = |d: u32| format!("{}:{}", d >> 20, d & 0xfffff);
    println!("policy: {}", policy.source);
    println!("mode: {}", policy.mode.as_str());
    println!("writable scopes:");
    for (entry, scope) in policy.writable.iter().zip(&resolved.scopes) {
        println!(
            "  {} -> {} (device {}, inode {})",
            entry.text,
            scope.path.display(),
            dev(scope.dev),
            scope.ino
        );
    }
    println!("protected (even inside the scopes):");
    for (entry, path) in policy.protected.iter().zip(&resolved.protected) {
        println!(
            "  {} -> {} (device {}, inode {})",
            entry.text,
            path.path.display(),
            dev(path.dev),
            path.ino
        );
    }
    println!("writable character devices:");
    for entry in &policy.writable_devices {
        println!("  {}", entry.text);
    }
    println!(
        "terminals writable: {}",
        if policy.terminals { "yes" } else { "no" }
    );
    0
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
