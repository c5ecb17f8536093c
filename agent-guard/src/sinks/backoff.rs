//! Exponential backoff with jitter between attempts to reach a sink's destination, so a
//! receiver coming back is not hit by every sender at the same instant.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(30);

pub struct Backoff {
    next: Duration,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            next: FIRST,
            seed: u64::from(now.subsec_nanos()) ^ (u64::from(std::process::id()) << 32) | 1,
        }
    }
}

impl Backoff {
    /// The pause before the next attempt: half the current step plus a random part of the
    /// other half. The step doubles up to [`MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX);
        let half = step / 2;
        let jitter = (self.random() % 1000) as u32;
        half + half * jitter / 1000
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// Sleeps for [`Self::next_delay`], waking early when `abandon` is set.
    /// Returns false when abandoned.
    pub fn wait(&mut self, abandon: &AtomicBool) -> bool {
        let until = Instant::now() + self.next_delay();
        sleep_until(until, abandon)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: plenty for spreading retries.
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }
}

/// Sleeps until `until` in short steps; false as soon as `abandon` is set.
pub fn sleep_until(until: Instant, abandon: &AtomicBool) -> bool {
    loop {
        if abandon.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_maximum() {
        let mut backoff = Backoff::default();
        let mut step = FIRST;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(MAX);
        }
        assert_eq!(step, MAX);
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST);
    }
}
