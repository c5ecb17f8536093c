//! `agent-guard audit`: checking the audit log's hash chain.
use std::path::PathBuf;

use clap::Subcommand;

use super::{report_error, EXIT_USAGE};
use crate::audit::verify::{verify, Report};

/// Exit status when the chain is broken.
const EXIT_BROKEN: i32 = 1;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that audit log files form one unbroken hash chain: exits 0 when intact, 1
    /// naming the first line that was edited, removed, moved or inserted, 2 when a file
    /// cannot be read.
    Verify {
        /// Log files, oldest first: events.jsonl.2 events.jsonl.1 events.jsonl
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

pub fn audit(command: AuditCommand) -> i32 {
    match command {
        AuditCommand::Verify { files } => match verify(&files) {
            Ok(report) => {
                println!("{report}");
                match report {
                    Report::Intact(_) => 0,
                    Report::Broken(_) => EXIT_BROKEN,
                }
            }
            Err(e) => {
                report_error("cannot verify", &e);
                EXIT_USAGE
            }
        },
    }
}
