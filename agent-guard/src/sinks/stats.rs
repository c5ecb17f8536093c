//! The counters one sink's threads share with [`super::SinkSet`]: what it delivered, what
//! it dropped and which sequence numbers, what it holds, its latest failure.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

/// A run of lines dropped since the overflow was last taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub dropped: u64,
    pub first: u64,
    pub last: u64,
}

/// Runs of dropped lines kept apart between two reports; past this, a new run is merged
/// into the last, whose range then holds delivered lines too (its count stays exact). A
/// sink that drops every other line must not turn each into a report of its own.
const MAX_RUNS: usize = 16;

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
    overflow: Mutex<Vec<Dropped>>,
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
        let mut runs = lock(&self.overflow);
        let whole = count == last - first + 1;
        let full = runs_full(runs.len());
        match runs.last_mut() {
            // The next numbers after the last run, every one dropped: the run goes on.
            Some(run)
                if whole && run.dropped == run.last - run.first + 1 && run.last + 1 == first =>
            {
                run.dropped += count;
                run.last = last;
            }
            Some(run) if full => {
                run.dropped += count;
                run.first = run.first.min(first);
                run.last = run.last.max(last);
            }
            _ => runs.push(Dropped {
                dropped: count,
                first,
                last,
            }),
        }
    }

    /// The runs of lines dropped since the last call, oldest first.
    pub fn take_overflow(&self) -> Vec<Dropped> {
        std::mem::take(&mut *lock(&self.overflow))
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
fn runs_full(runs: usize) -> bool {
    runs >= MAX_RUNS
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_drops_make_one_run_and_a_gap_starts_another() {
        let stats = Stats::default();
        for n in [3, 4, 5, 9, 10] {
            stats.add_dropped(1, n, n);
        }
        stats.add_dropped(10, 11, 20);
        assert_eq!(
            stats.take_overflow(),
            [
                Dropped {
                    dropped: 3,
                    first: 3,
                    last: 5
                },
                Dropped {
                    dropped: 12,
                    first: 9,
                    last: 20
                },
            ]
        );
        assert!(stats.take_overflow().is_empty());
        assert_eq!(stats.dropped(), 15);
    }

    #[test]
    fn past_the_run_limit_the_last_run_widens_and_keeps_its_count() {
        let stats = Stats::default();
        for n in 0..40 {
            stats.add_dropped(1, 2 * n + 1, 2 * n + 1);
        }
        let runs = stats.take_overflow();
        assert_eq!(runs.len(), MAX_RUNS);
        assert_eq!(runs.iter().map(|r| r.dropped).sum::<u64>(), 40);
        assert_eq!(runs.last().unwrap().last, 79);
    }
}
