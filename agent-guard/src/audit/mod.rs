//! The audit log: every event line is sealed into a hash chain as it is written, so that
//! an edit, a deletion, a reordering or a forged insertion shows when the log is checked
//! (docs/events.md, "The audit chain").
//!
//! - [`chain`]: sealing one line and reading a seal back.
//! - [`journal`]: the per-host sequence, the chain head and the log file, resumed across
//!   restarts and rotations.
//! - [`verify`]: checking one or more log files, streaming, and naming the first bad link.
//! - [`query`]: reading the log back with filters (`events --file`).
pub mod chain;
pub mod fields;
pub mod journal;
pub mod query;
pub mod verify;
