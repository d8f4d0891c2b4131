//! A task whose runs keep failing is paused: for a while its requests are refused (or, at
//! an edge under `auto`, forwarded) instead of run. A guest that traps, hits its memory cap
//! or runs to its deadline on every request costs the CPU of every such run (a memory hog
//! faults in and gives back its whole cap each time), taken from everyone else's requests
//! on the same cores; a paused one costs a refusal. As an outlier ejection, for code.
//!
//! The state is a few atomics per loaded task version: a new version starts unpaused.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a task is paused, and for how long (`placement.failing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPolicy {
    /// Failed runs in a row that pause the task; 0: never paused.
    pub after: u32,
    /// The first pause; each failure after one doubles it.
    pub pause: Duration,
    pub max_pause: Duration,
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy {
            after: 20,
            pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(30),
        }
    }
}

/// One task version's failures in a row and its pause.
#[derive(Debug)]
pub struct Failures {
    policy: FailPolicy,
    /// What `paused_until` counts from.
    epoch: Instant,
    in_a_row: AtomicU32,
    /// Pauses since the last success: the next one is `pause * 2^trips`.
    trips: AtomicU32,
    /// Microseconds after `epoch` the pause ends; 0: never paused.
    paused_until: AtomicU64,
    /// Pauses since load.
    pauses: AtomicU64,
}

impl Failures {
    pub fn new(policy: FailPolicy) -> Failures {
        Failures {
            policy,
            epoch: Instant::now(),
            in_a_row: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            paused_until: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// How much longer the task is paused at `now`, if it is.
    pub fn paused(&self, now: Instant) -> Option<Duration> {
        let until = self.paused_until.load(Ordering::Relaxed);
        let now = self.micros(now);
        (until > now).then(|| Duration::from_micros(until - now))
    }

    /// A run answered whole: the count starts again. Reads before writing, so the common
    /// case (nothing failed) writes no shared cache line.
    pub fn succeeded(&self) {
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
        if self.trips.load(Ordering::Relaxed) != 0 {
            self.trips.store(0, Ordering::Relaxed);
        }
    }

    /// A run failed at `now`; the pause it starts, if it starts one. Once paused, the next
    /// run after the pause is a probe: failing, it pauses the task again for twice as long.
    pub fn failed(&self, now: Instant) -> Option<Duration> {
        let after = self.policy.after;
        let in_a_row = self
            .in_a_row
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if after == 0 || in_a_row < after || self.paused(now).is_some() {
            return None;
        }
        let trips = self.trips.fetch_add(1, Ordering::Relaxed).min(16);
        let pause = (self.policy.pause * (1 << trips)).min(self.policy.max_pause);
        let until = self.micros(now + pause);
        // Runs that were in flight may fail at once: only the first of them pauses.
        let before = self.paused_until.fetch_max(until, Ordering::Relaxed);
        if before > self.micros(now) {
            return None;
        }
        self.pauses.fetch_add(1, Ordering::Relaxed);
        Some(pause)
    }

    /// Pauses since the task was loaded.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: FailPolicy = FailPolicy {
        after: 3,
        pause: Duration::from_secs(1),
        max_pause: Duration::from_secs(5),
    };

    #[test]
    fn failures_in_a_row_pause_and_each_probe_that_fails_doubles_the_pause() {
        let f = Failures::new(POLICY);
        let t = f.epoch + Duration::from_secs(10);
        assert_eq!(f.failed(t), None);
        assert_eq!(f.failed(t), None);
        assert_eq!(f.paused(t), None);
        assert_eq!(f.failed(t), Some(Duration::from_secs(1)));
        assert_eq!(f.paused(t), Some(Duration::from_secs(1)));
        // A run that was in flight fails meanwhile: the pause is not extended.
        assert_eq!(f.failed(t + Duration::from_millis(500)), None);
        assert_eq!(
            f.paused(t + Duration::from_millis(500)),
            Some(Duration::from_millis(500))
        );
        let t = t + Duration::from_secs(1);
        assert_eq!(f.paused(t), None, "the pause is over");
        assert_eq!(
            f.failed(t),
            Some(Duration::from_secs(2)),
            "the probe failed"
        );
        let t = t + Duration::from_secs(2);
        assert_eq!(f.failed(t), Some(Duration::from_secs(4)));
        let t = t + Duration::from_secs(4);
        assert_eq!(
            f.failed(t),
            Some(Duration::from_secs(5)),
            "at most max_pause"
        );
        assert_eq!(f.pauses(), 4);
    }

    #[test]
    fn a_success_starts_the_count_and_the_doubling_again() {
        let f = Failures::new(POLICY);
        let t = f.epoch + Duration::from_secs(10);
        for _ in 0..3 {
            f.failed(t);
        }
        assert!(f.paused(t).is_some());
        let t = t + Duration::from_secs(1);
        f.succeeded();
        assert_eq!(f.failed(t), None);
        assert_eq!(f.failed(t), None);
        assert_eq!(f.failed(t), Some(Duration::from_secs(1)), "not 2 s");
        // Failures between successes never pause.
        let f = Failures::new(POLICY);
        for _ in 0..100 {
            assert_eq!(f.failed(t), None);
            assert_eq!(f.failed(t), None);
            f.succeeded();
        }
    }

    #[test]
    fn zero_never_pauses() {
        let f = Failures::new(FailPolicy { after: 0, ..POLICY });
        let t = f.epoch + Duration::from_secs(1);
        for _ in 0..1000 {
            assert_eq!(f.failed(t), None);
        }
        assert_eq!(f.paused(t), None);
    }
}
