//! Where the daemon may keep what a session must not touch: its record of what sessions
//! did (event log, journal, spools, file sinks, session records) and its pinned programs.
//!
//! Built-in self-protection denies every session the modification of a fixed set of
//! directories (see [`crate::policy::self_protection`]); it does not follow config.toml. A
//! log moved elsewhere would be as writable as the session's policy makes its directory,
//! and a session could edit or erase the record of what it did. So config.toml may move
//! these paths only within the protected directories, and saying otherwise is an error.
use std::path::{Component, Path};

use crate::paths;

/// Directories for the record: each is self-protected.
pub const RECORD_DIRS: &[&str] = &[paths::LOG_DIR, paths::STATE_DIR, paths::RUN_DIR];

/// Directories for pins: unpinning a link detaches a program.
pub const PIN_DIRS: &[&str] = &["/sys/fs/bpf"];

/// What a kept path holds, which says where it may lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Record,
    Pins,
}

impl Kept {
    fn dirs(self) -> &'static [&'static str] {
        match self {
            Self::Record => RECORD_DIRS,
            Self::Pins => PIN_DIRS,
        }
    }

    fn harm(self) -> &'static str {
        match self {
            Self::Record => "edit or erase the record of what it did",
            Self::Pins => "unpin the programs that guard it",
        }
    }
}

/// When `path` lies outside the directories for `kept`: what is wrong and how to fix it.
/// `what` names the setting, `example` is a good value for it.
pub fn misplaced(what: &str, path: &Path, kept: Kept, example: &str) -> Option<(String, String)> {
    if inside(path, kept.dirs()) {
        return None;
    }
    Some((
        format!(
            "{what} is `{}`, outside the directories no session may modify ({}): a session whose policy lets it write there could {}",
            path.display(),
            kept.dirs().join(", "),
            kept.harm()
        ),
        format!(
            "keep it under {}, without `..`, like `{example}`",
            kept.dirs().join(" or ")
        ),
    ))
}

/// Whether `path`, as written, lies at or below one of `dirs`. A `..` anywhere is refused:
/// it could lead back out.
pub fn inside(path: &Path, dirs: &[&str]) -> bool {
    path.is_absolute()
        && !path.components().any(|c| c == Component::ParentDir)
        && dirs.iter().any(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        self_protection::{SelfProtected, SELF_PROTECTED},
        Access,
    };

    #[test]
    fn every_kept_directory_is_self_protected() {
        for dir in RECORD_DIRS.iter().chain(PIN_DIRS) {
            assert!(
                SELF_PROTECTED
                    .iter()
                    .any(|SelfProtected { path, access, .. }| path == dir
                        && *access == Access::Modify),
                "{dir} is not denied to sessions"
            );
        }
    }

    #[test]
    fn inside_reads_components_not_text() {
        assert!(inside(
            Path::new("/var/log/agent-guard/events.jsonl"),
            RECORD_DIRS
        ));
        assert!(inside(Path::new("/run/agent-guard"), RECORD_DIRS));
        assert!(inside(Path::new("/var/log/agent-guard/./a/b"), RECORD_DIRS));
        for outside in [
            "/var/log/agent-guard-old/events.jsonl",
            "/var/log/agent-guard/../syslog",
            "/tmp/events.jsonl",
            "var/log/agent-guard/events.jsonl",
            "/var/log",
        ] {
            assert!(!inside(Path::new(outside), RECORD_DIRS), "{outside}");
        }
    }
}
