//! Reporting upstream: the sealed event lines every consumer receives, and the files they
//! are kept in.
pub mod ancestry;
pub mod ecs;
pub mod json;
pub mod reporter;
pub mod rotating_file;

use std::sync::Arc;

/// One event as every consumer receives it: the audit log, each sink, `events --follow`.
/// The text is the whole JSON object of the schema (docs/events.md), hash chain included,
/// without the newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `event.sequence`: per host, one more than the line before.
    pub sequence: u64,
    pub text: Arc<str>,
}
