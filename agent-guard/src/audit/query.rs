//! Reading events back with filters: `events --file`/`--log` over the audit log, and the
//! same filters over the daemon's live events. Matching lines are passed on unchanged.
use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::fields::field;

/// The `event.action` of the reports about the reporting, besides the operations.
const REPORT_ACTIONS: &[&str] = &[
    "session-start",
    "session-end",
    "lost-events",
    "policy-reload",
    "sink-overflow",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error(
        "`{0}` is not a time: give RFC 3339 in UTC (2026-11-30T12:00:00Z) or an age \
         (a number with s, m, h or d: 30s, 10m, 2h, 1d)"
    )]
    Since(String),
    #[error("`{0}` is not a decision: give `deny` or `audit`")]
    Decision(String),
    #[error("`{value}` is not an event action; the actions are: {known}")]
    Op { value: String, known: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Deny,
    Audit,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Deny => "deny",
            Decision::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, FilterError> {
        match text {
            "deny" => Ok(Decision::Deny),
            "audit" => Ok(Decision::Audit),
            _ => Err(FilterError::Decision(text.to_owned())),
        }
    }
}

/// Which events to keep; an empty filter keeps all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `agent_guard.session.id`.
    pub session: Option<String>,
    /// `@timestamp` at or after this.
    pub since: Option<SystemTime>,
    /// `event.action` is one of these (any, when empty).
    pub ops: Vec<String>,
    /// `agent_guard.decision`.
    pub decision: Option<Decision>,
}

impl Filter {
    /// Whether the event on `line` passes. A line that is not JSON passes only an empty
    /// filter: there is nothing to match it on.
    pub fn matches_line(&self, line: &str) -> bool {
        if *self == Filter::default() {
            return true;
        }
        serde_json::from_str(line).is_ok_and(|event| self.matches(&event))
    }

    pub fn matches(&self, event: &Value) -> bool {
        let text = |path| field(event, path).and_then(Value::as_str);
        if let Some(session) = &self.session {
            if text("agent_guard.session.id") != Some(session.as_str()) {
                return false;
            }
        }
        if let Some(since) = self.since {
            let at = text("@timestamp").and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            if at.is_none_or(|at| at < since) {
                return false;
            }
        }
        if !self.ops.is_empty()
            && !text("event.action").is_some_and(|a| self.ops.iter().any(|o| o == a))
        {
            return false;
        }
        if let Some(decision) = self.decision {
            if text("agent_guard.decision") != Some(decision.as_str()) {
                return false;
            }
        }
        true
    }
}

/// `--since`: an RFC 3339 UTC time, or an age before `now` (`30s`, `10m`, `2h`, `1d`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, FilterError> {
    let bad = || FilterError::Since(text.to_owned());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && text.len() == digits + 1 {
        let seconds = match &text[digits..] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        let count: u64 = text[..digits].parse().map_err(|_| bad())?;
        let age = count
            .checked_mul(seconds)
            .map(Duration::from_secs)
            .ok_or_else(bad)?;
        return now.checked_sub(age).ok_or_else(bad);
    }
    humantime::parse_rfc3339(text).map_err(|_| bad())
}

/// `--op`: one of the schema's `event.action` values.
pub fn parse_op(text: &str) -> Result<String, FilterError> {
    let known = known_actions();
    if known.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(FilterError::Op {
            value: text.to_owned(),
            known: known.join(", "),
        })
    }
}

fn known_actions() -> Vec<&'static str> {
    // Operation codes are small numbers; the decoder names each one it knows.
    (0..=u8::MAX)
        .filter_map(|op| crate::events::op_name(op.into()).ok())
        .chain(REPORT_ACTIONS.iter().copied())
        .collect()
}

/// The audit log at `current` and the rotated files beside it, oldest first: `PATH.N`
/// down to `PATH.1`, then `PATH`, as far as they exist.
pub fn log_files(current: &Path) -> Vec<PathBuf> {
    let rotated = |n: u32| {
        let mut name = current.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    let mut files: Vec<PathBuf> = (1..).map(rotated).take_while(|p| p.exists()).collect();
    files.reverse();
    files.push(current.to_owned());
    files
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot read {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the events")]
    Write(#[source] io::Error),
}

/// Copies the lines of `files` that pass `filter` to `out`, streaming; returns how many.
pub fn copy_matching(
    files: &[PathBuf],
    filter: &Filter,
    out: &mut dyn Write,
) -> Result<u64, QueryError> {
    let mut copied = 0;
    let mut line = String::new();
    for path in files {
        let read_error = |source| QueryError::Read {
            file: path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(read_error)?);
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(read_error)? == 0 {
                break;
            }
            let text = line.trim_end_matches('\n');
            if filter.matches_line(text) {
                writeln!(out, "{text}").map_err(QueryError::Write)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests;
