//! Prometheus metrics of the daemon, served when the configuration names a listen address.
//!
//! The daemon's event loop updates a [`Metrics`] registry (counters and gauges behind atomics,
//! labelled families behind a mutex held only for a map update); [`serve`] answers scrapes on
//! its own thread by rendering the registry in the text exposition format 0.0.4. The ring
//! buffer's fill is read at scrape time from the kernel's own positions ([`RingFill`]).
mod ring_fill;
mod server;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, OnceLock,
    },
};

pub use ring_fill::RingFill;
pub use server::{serve, ServerHandle};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the daemon knows about one sink at the moment it looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// Lines waiting to be delivered.
    pub backlog: u64,
    /// Lines delivered since the daemon started.
    pub delivered: u64,
    /// Lines given up on since the daemon started.
    pub dropped: u64,
}

/// The daemon's metrics. Updates are cheap enough for the event loop: an atomic store, or a
/// map update under a lock that a scrape holds only long enough to copy the maps.
#[derive(Debug, Default)]
pub struct Metrics {
    lost_events: AtomicU64,
    sessions: AtomicU64,
    event_sequence: AtomicU64,
    labelled: Mutex<Labelled>,
    ring: OnceLock<RingFill>,
}

/// The families with labels. Nested maps so that an update looks up by `&str` and allocates
/// only the first time a label value is seen.
#[derive(Debug, Default, Clone)]
struct Labelled {
    /// Operation, then decision.
    decisions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Event kind.
    reports: BTreeMap<String, u64>,
    sinks: BTreeMap<String, SinkSnapshot>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one decision (`op` as in the event's `op`, `decision` as in its `decision`).
    pub fn record_decision(&self, op: &str, decision: &str) {
        let mut l = self.labelled();
        let by_decision = match l.decisions.get_mut(op) {
            Some(m) => m,
            None => l.decisions.entry(op.to_owned()).or_default(),
        };
        increment(by_decision, decision);
    }

    /// Counts one event of another kind than a decision (`session-start`, `lost-events`, ...).
    pub fn record_report(&self, kind: &str) {
        increment(&mut self.labelled().reports, kind);
    }

    /// Sets the number of events the kernel could not put in the ring buffer, as the kernel
    /// counts them (a running total).
    pub fn set_lost_events(&self, total: u64) {
        self.lost_events.store(total, Ordering::Relaxed);
    }

    /// Sets the number of sessions running.
    pub fn set_sessions(&self, sessions: u64) {
        self.sessions.store(sessions, Ordering::Relaxed);
    }

    /// Sets the sequence number of the last event written.
    pub fn set_event_sequence(&self, sequence: u64) {
        self.event_sequence.store(sequence, Ordering::Relaxed);
    }

    /// Records what a sink looks like now.
    pub fn set_sink(&self, name: &str, snapshot: SinkSnapshot) {
        let mut l = self.labelled();
        match l.sinks.get_mut(name) {
            Some(s) => *s = snapshot,
            None => {
                l.sinks.insert(name.to_owned(), snapshot);
            }
        }
    }

    /// Forgets a sink that is no longer configured.
    pub fn remove_sink(&self, name: &str) {
        self.labelled().sinks.remove(name);
    }

    /// Reports the fill of this ring buffer from now on. Only the first ring given is kept,
    /// and `false` says a ring was already there.
    pub fn watch_ring(&self, ring: RingFill) -> bool {
        self.ring.set(ring).is_ok()
    }

    /// The metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        // Copy the labelled families out so the event loop never waits on the formatting.
        let l = self.labelled().clone();
        let mut out = String::with_capacity(4096);

        family(
            &mut out,
            "agent_guard_events_total",
            COUNTER,
            "Decisions reported by the kernel, by operation and decision.",
        );
        for (op, by_decision) in &l.decisions {
            for (decision, n) in by_decision {
                sample(
                    &mut out,
                    "agent_guard_events_total",
                    &[("op", op), ("decision", decision)],
                    *n,
                );
            }
        }

        family(
            &mut out,
            "agent_guard_reports_total",
            COUNTER,
            "Events other than decisions, by kind.",
        );
        for (kind, n) in &l.reports {
            sample(&mut out, "agent_guard_reports_total", &[("kind", kind)], *n);
        }

        family(
            &mut out,
            "agent_guard_lost_events_total",
            COUNTER,
            "Events the kernel dropped because the ring buffer was full.",
        );
        sample(
            &mut out,
            "agent_guard_lost_events_total",
            &[],
            self.lost_events.load(Ordering::Relaxed),
        );

        if let Some(ring) = self.ring.get() {
            family(
                &mut out,
                "agent_guard_ring_buffer_used_bytes",
                GAUGE,
                "Bytes of the event ring buffer written by the kernel and not yet read.",
            );
            sample(
                &mut out,
                "agent_guard_ring_buffer_used_bytes",
                &[],
                ring.used(),
            );
            family(
                &mut out,
                "agent_guard_ring_buffer_size_bytes",
                GAUGE,
                "Capacity of the event ring buffer in bytes.",
            );
            sample(
                &mut out,
                "agent_guard_ring_buffer_size_bytes",
                &[],
                ring.size().into(),
            );
        }

        family(
            &mut out,
            "agent_guard_sink_backlog",
            GAUGE,
            "Events waiting to be delivered to a sink.",
        );
        for (sink, s) in &l.sinks {
            sample(
                &mut out,
                "agent_guard_sink_backlog",
                &[("sink", sink)],
                s.backlog,
            );
        }
        family(
            &mut out,
            "agent_guard_sink_delivered_total",
            COUNTER,
            "Events delivered to a sink.",
        );
        for (sink, s) in &l.sinks {
            sample(
                &mut out,
                "agent_guard_sink_delivered_total",
                &[("sink", sink)],
                s.delivered,
            );
        }
        family(
            &mut out,
            "agent_guard_sink_dropped_total",
            COUNTER,
            "Events a sink gave up on.",
        );
        for (sink, s) in &l.sinks {
            sample(
                &mut out,
                "agent_guard_sink_dropped_total",
                &[("sink", sink)],
                s.dropped,
            );
        }

        family(&mut out, "agent_guard_sessions", GAUGE, "Sessions running.");
        sample(
            &mut out,
            "agent_guard_sessions",
            &[],
            self.sessions.load(Ordering::Relaxed),
        );

        family(
            &mut out,
            "agent_guard_event_sequence",
            GAUGE,
            "Sequence number of the last event written.",
        );
        sample(
            &mut out,
            "agent_guard_event_sequence",
            &[],
            self.event_sequence.load(Ordering::Relaxed),
        );

        out
    }

    fn labelled(&self) -> MutexGuard<'_, Labelled> {
        // A panic while the lock was held left at worst a count short; keep counting.
        self.labelled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

fn increment(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Help texts are constants here; none holds a backslash or a newline to escape.
    debug_assert!(!help.contains(['\\', '\n']));
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
