//! The counters one sink's threads share with [`super::SinkSet`]: what it delivered, what
//! it dropped and in which sequence range, what it holds, its latest failure.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

/// Lines dropped since the overflow was last taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub dropped: u64,
    pub first: u64,
    pub last: u64,
}

#[derive(Default)]
pub struct Stats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    /// Lines in the sink's in-memory queue.
    queued: AtomicU64,
    /// Lines in the spool not yet acknowledged.
    spooled: AtomicU64,
    /// Lines a sink's thread took off the queue and is still trying to deliver.
    in_hand: AtomicU64,
    spool_bytes: AtomicU64,
    overflow: Mutex<Option<Dropped>>,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn backlog(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
            + self.spooled.load(Ordering::Relaxed)
            + self.in_hand.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn spool_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// `count` lines reached their destination: the latest failure is over.
    pub fn add_delivered(&self, count: u64) {
        self.delivered.fetch_add(count, Ordering::Relaxed);
        let mut error = lock(&self.last_error);
        if error.is_some() {
            *error = None;
        }
    }

    /// `count` lines whose sequences lie in `first..=last` are lost to this sink.
    pub fn add_dropped(&self, count: u64, first: u64, last: u64) {
        if count == 0 {
            return;
        }
        self.dropped.fetch_add(count, Ordering::Relaxed);
        let mut overflow = lock(&self.overflow);
        *overflow = Some(match *overflow {
            None => Dropped {
                dropped: count,
                first,
                last,
            },
            Some(o) => Dropped {
                dropped: o.dropped + count,
                first: o.first.min(first),
                last: o.last.max(last),
            },
        });
    }

    pub fn take_overflow(&self) -> Option<Dropped> {
        lock(&self.overflow).take()
    }

    pub fn set_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub fn queued_in(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queued_out(&self, count: u64) {
        self.queued.fetch_sub(count, Ordering::Relaxed);
    }

    pub fn set_in_hand(&self, lines: u64) {
        self.in_hand.store(lines, Ordering::Relaxed);
    }

    pub fn set_spool(&self, lines: u64, bytes: u64) {
        self.spooled.store(lines, Ordering::Relaxed);
        self.spool_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// A counter's lock cannot be poisoned in a way that matters: every update is one
/// assignment.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
