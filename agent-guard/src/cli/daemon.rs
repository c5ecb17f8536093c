//! `agent-guard daemon`: the service (see `crate::daemon`).
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file; when it does not exist, every default applies.
    #[arg(long, value_name = "FILE", default_value = crate::paths::CONFIG_FILE)]
    pub config: PathBuf,
}

pub fn daemon(args: DaemonArgs) -> i32 {
    crate::daemon::main(&args.config)
}
