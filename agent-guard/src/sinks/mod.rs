//! Sinks: where the daemon sends each event line besides its audit log — stdout, another
//! rotated file, syslog (RFC 5424), a webhook (HTTP POST of JSON Lines).
//!
//! The daemon's event loop must never wait for a sink, and one slow or dead sink must not
//! hold up another. So each sink runs on its own thread(s), fed by its own bounded queue;
//! [`SinkSet::submit`] only tries to enqueue. When a sink's queue is full the line is
//! dropped for that sink alone, counted, and its sequence range kept for
//! [`SinkSet::take_overflows`], which the daemon reports as `sink-overflow` events.
//!
//! The webhook writes every line to a disk spool first and delivers from there, at least
//! once, across daemon restarts (see [`webhook`]).
mod backoff;
pub mod config;
mod file;
mod queue;
mod stats;
mod stdout;
pub mod syslog;
pub mod webhook;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use config::{parse_sinks, SinkConfig, SinkConfigError, SinkKind, SyslogAddress};
use serde::Serialize;

use crate::report::Line;
use queue::Feeder;
use stats::Stats;

/// Lines one sink dropped since the previous [`SinkSet::take_overflows`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overflow {
    pub sink: String,
    pub dropped: u64,
    /// The run of sequence numbers dropped: every one of them when `dropped` equals the
    /// span (always, unless the sink dropped lines in more than 16 separate runs between
    /// two reports, or a spool segment went while part of it was being sent).
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// One sink's state, for `status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkHealth {
    pub name: String,
    /// Its `type`.
    pub kind: &'static str,
    /// Lines delivered (written, sent, acknowledged) since it started.
    pub delivered: u64,
    /// Lines it dropped since it started.
    pub dropped: u64,
    /// Lines queued in memory plus lines spooled and not yet acknowledged.
    pub backlog: u64,
    /// The part of the backlog still in memory, not yet on its way or in the spool.
    pub queued: u64,
    /// Size of the webhook's spool on disk.
    pub spool_bytes: u64,
    /// The most recent failure; cleared by the next successful delivery.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink:?}: cannot open its spool {}", path.display())]
    Spool {
        sink: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink:?}: cannot start its thread")]
    Thread {
        sink: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a sink's threads are told besides their input.
#[derive(Clone)]
pub(crate) struct Control {
    pub stats: Arc<Stats>,
    /// Set when the set shuts down past its deadline (or is dropped): stop waiting on
    /// anything remote, finish local work and return.
    pub abandon: Arc<AtomicBool>,
}

struct RunningSink {
    name: String,
    kind: &'static str,
    feeder: Option<Feeder>,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

/// The running sinks.
pub struct SinkSet {
    sinks: Vec<RunningSink>,
    abandon: Arc<AtomicBool>,
}

impl SinkSet {
    /// Starts every sink. Webhooks keep their spool in `spool_root/<name>/` and resume
    /// from what an earlier set left there.
    pub fn start(configs: &[SinkConfig], spool_root: &Path) -> Result<Self, SinkError> {
        let abandon = Arc::new(AtomicBool::new(false));
        let mut set = Self {
            sinks: Vec::with_capacity(configs.len()),
            abandon: abandon.clone(),
        };
        for config in configs {
            let stats = Arc::new(Stats::default());
            let control = Control {
                stats: stats.clone(),
                abandon: abandon.clone(),
            };
            let (feeder, inbox) = queue::bounded(config.queue_max, stats.clone());
            let thread_error = |source| SinkError::Thread {
                sink: config.name.clone(),
                source,
            };
            let threads = match &config.kind {
                SinkKind::Stdout => vec![spawn(&config.name, move || stdout::run(inbox, control))
                    .map_err(thread_error)?],
                SinkKind::File { path, rotation } => {
                    let (path, rotation) = (path.clone(), *rotation);
                    vec![spawn(&config.name, move || {
                        file::run(&path, rotation, inbox, control)
                    })
                    .map_err(thread_error)?]
                }
                SinkKind::Syslog { address, facility } => {
                    let sender = syslog::Sender::new(address.clone(), *facility);
                    vec![spawn(&config.name, move || sender.run(inbox, control))
                        .map_err(thread_error)?]
                }
                SinkKind::Webhook(hook) => webhook::start(
                    &config.name,
                    hook,
                    &spool_root.join(&config.name),
                    inbox,
                    control,
                )?,
            };
            set.sinks.push(RunningSink {
                name: config.name.clone(),
                kind: config.kind.type_name(),
                feeder: Some(feeder),
                stats,
                threads,
            });
        }
        Ok(set)
    }

    /// Hands `line` to every sink without waiting: a sink whose queue is full drops it.
    pub fn submit(&self, line: &Line) {
        for sink in &self.sinks {
            if let Some(feeder) = &sink.feeder {
                feeder.offer(line);
            }
        }
    }

    /// Lines dropped since the previous call, one entry per sink that dropped any.
    pub fn take_overflows(&self) -> Vec<Overflow> {
        self.sinks
            .iter()
            .flat_map(|sink| {
                sink.stats.take_overflow().into_iter().map(|run| Overflow {
                    sink: sink.name.clone(),
                    dropped: run.dropped,
                    first_sequence: run.first,
                    last_sequence: run.last,
                })
            })
            .collect()
    }

    pub fn health(&self) -> Vec<SinkHealth> {
        self.sinks
            .iter()
            .map(|sink| SinkHealth {
                name: sink.name.clone(),
                kind: sink.kind,
                delivered: sink.stats.delivered(),
                dropped: sink.stats.dropped(),
                backlog: sink.stats.backlog(),
                queued: sink.stats.queued(),
                spool_bytes: sink.stats.spool_bytes(),
                last_error: sink.stats.last_error(),
            })
            .collect()
    }

    /// Stops taking lines and lets every sink deliver what it holds until `deadline` has
    /// passed; then the rest is abandoned (a webhook's spool stays on disk for the next
    /// start). Returns once every thread has ended.
    pub fn shutdown(mut self, deadline: Duration) {
        self.stop(deadline);
    }

    fn stop(&mut self, deadline: Duration) {
        let until = Instant::now() + deadline;
        for sink in &mut self.sinks {
            sink.feeder = None;
        }
        let all_done = |sinks: &[RunningSink]| {
            sinks
                .iter()
                .flat_map(|s| &s.threads)
                .all(JoinHandle::is_finished)
        };
        while Instant::now() < until && !all_done(&self.sinks) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.abandon.store(true, Ordering::Relaxed);
        for sink in &mut self.sinks {
            for thread in sink.threads.drain(..) {
                // A sink thread that panicked has nothing left to flush.
                let _ = thread.join();
            }
        }
    }
}

impl Drop for SinkSet {
    /// A set dropped without [`SinkSet::shutdown`] stops at once, but still joins its
    /// threads, so a new set may take over the same spool directories.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(work)
}
