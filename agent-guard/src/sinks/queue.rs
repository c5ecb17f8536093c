//! A sink's bounded in-memory queue: the submitting side never waits, the sink's thread
//! does.
use std::{
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    time::Duration,
};

use super::stats::Stats;
use crate::report::Line;

pub fn bounded(capacity: usize, stats: Arc<Stats>) -> (Feeder, Inbox) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    (
        Feeder {
            tx,
            stats: stats.clone(),
        },
        Inbox { rx, stats },
    )
}

/// The submitting end.
pub struct Feeder {
    tx: SyncSender<Line>,
    stats: Arc<Stats>,
}

impl Feeder {
    /// Enqueues `line`, or counts it dropped when the queue is full (or its sink is gone).
    pub fn offer(&self, line: &Line) {
        // Counted before sending: the sink's thread may take it out at once.
        self.stats.queued_in();
        match self.tx.try_send(line.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(line) | TrySendError::Disconnected(line)) => {
                self.stats.queued_out(1);
                self.stats.add_dropped(1, line.sequence, line.sequence);
            }
        }
    }
}

/// The sink's end.
pub struct Inbox {
    rx: Receiver<Line>,
    stats: Arc<Stats>,
}

/// What waiting on the inbox gave.
pub enum Next {
    Line(Line),
    /// Nothing arrived in time.
    Idle,
    /// The set stopped taking lines and the queue is empty.
    Closed,
}

impl Inbox {
    /// The next line; `None` once the queue is closed and empty.
    pub fn recv(&self) -> Option<Line> {
        let line = self.rx.recv().ok()?;
        self.stats.queued_out(1);
        Some(line)
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Next {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.stats.queued_out(1);
                Next::Line(line)
            }
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// A line that is already waiting, if any.
    pub fn try_recv(&self) -> Option<Line> {
        let line = self.rx.try_recv().ok()?;
        self.stats.queued_out(1);
        Some(line)
    }
}
