//! How hot a task is at this edge: an exponentially decayed request rate, promoted at the
//! hot threshold and demoted only after staying below a lower threshold for a cool-down
//! (hysteresis, so a task near the threshold does not flap). Time is passed in.

use std::time::{Duration, Instant};

/// The decay constant: a request counts fully now and about a third a second later.
const TAU: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Requests per second that make a task hot.
    pub hot: f64,
    /// Below this rate for `cooldown`, a hot task turns cold.
    pub cool: f64,
    pub cooldown: Duration,
}

/// A change of state caused by an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Promoted,
    Demoted,
}

#[derive(Debug, Clone, Default)]
pub struct Hotness {
    /// Decayed count of requests as of `last`.
    level: f64,
    last: Option<Instant>,
    hot: bool,
    below_since: Option<Instant>,
}

impl Hotness {
    pub fn is_hot(&self) -> bool {
        self.hot
    }

    /// The request rate, per second, as of `now`.
    pub fn rate(&self, now: Instant) -> f64 {
        match self.last {
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                self.level * (-dt / TAU.as_secs_f64()).exp() / TAU.as_secs_f64()
            }
            None => 0.0,
        }
    }

    /// Counts one request at `now` and updates the state.
    pub fn observe(&mut self, now: Instant, t: &Thresholds) -> Change {
        // Demotion looks at the traffic before this request: a task asked for once in a
        // while has a rate near zero between requests, and should cool.
        if self.hot && self.cool_down(now, t) == Change::Demoted {
            self.count(now);
            return Change::Demoted;
        }
        self.count(now);
        if !self.hot && self.rate(now) >= t.hot {
            self.hot = true;
            self.below_since = None;
            return Change::Promoted;
        }
        Change::None
    }

    /// Updates the state at `now` without counting a request (for sweeps).
    pub fn evaluate(&mut self, now: Instant, t: &Thresholds) -> Change {
        if !self.hot {
            return Change::None;
        }
        self.cool_down(now, t)
    }

    fn count(&mut self, now: Instant) {
        self.level = self.rate(now) * TAU.as_secs_f64() + 1.0;
        self.last = Some(now);
    }

    fn cool_down(&mut self, now: Instant, t: &Thresholds) -> Change {
        if self.rate(now) >= t.cool {
            self.below_since = None;
            return Change::None;
        }
        let since = match self.below_since {
            Some(since) => since,
            None => *self.below_since.insert(self.crossed(t.cool).min(now)),
        };
        if now.saturating_duration_since(since) >= t.cooldown {
            self.hot = false;
            self.below_since = None;
            return Change::Demoted;
        }
        Change::None
    }

    /// When the rate fell below `cool`, with no request since `last`: the decay is known,
    /// so a quiet spell counts from its true start, however rarely it is looked at.
    fn crossed(&self, cool: f64) -> Instant {
        let Some(last) = self.last else {
            return Instant::now();
        };
        let ratio = self.level / (cool * TAU.as_secs_f64());
        if ratio <= 1.0 || !ratio.is_finite() {
            return last;
        }
        last + TAU.mul_f64(ratio.ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        hot: 5.0,
        cool: 2.0,
        cooldown: Duration::from_secs(3),
    };

    /// Requests every `gap` from `start` for `n` requests; returns the changes seen.
    fn feed(h: &mut Hotness, start: Instant, gap: Duration, n: u32) -> (Vec<Change>, Instant) {
        let mut now = start;
        let mut changes = Vec::new();
        for _ in 0..n {
            let c = h.observe(now, &T);
            if c != Change::None {
                changes.push(c);
            }
            now += gap;
        }
        (changes, now)
    }

    #[test]
    fn a_burst_promotes() {
        let mut h = Hotness::default();
        let t0 = Instant::now();
        // Five requests within 40 ms weigh a little under 5 (the first ones have decayed).
        let (changes, _) = feed(&mut h, t0, Duration::from_millis(10), 5);
        assert!(changes.is_empty() && !h.is_hot());
        assert_eq!(
            h.observe(t0 + Duration::from_millis(50), &T),
            Change::Promoted
        );
        assert!(h.is_hot());
    }

    #[test]
    fn a_steady_rate_converges() {
        let mut h = Hotness::default();
        let t0 = Instant::now();
        let (_, end) = feed(&mut h, t0, Duration::from_millis(100), 100);
        let rate = h.rate(end - Duration::from_millis(100));
        assert!(
            (9.0..12.0).contains(&rate),
            "10 requests a second measured as {rate}"
        );
    }

    #[test]
    fn slow_traffic_never_promotes() {
        let mut h = Hotness::default();
        let (changes, _) = feed(&mut h, Instant::now(), Duration::from_millis(500), 100);
        assert!(changes.is_empty());
    }

    #[test]
    fn demotion_needs_the_whole_cooldown_below_the_lower_threshold() {
        let mut h = Hotness::default();
        let t0 = Instant::now();
        let (_, now) = feed(&mut h, t0, Duration::from_millis(50), 40);
        assert!(h.is_hot());
        // 3 a second: under the hot threshold but over the cool one: stays hot (hysteresis).
        let (changes, now) = feed(&mut h, now, Duration::from_millis(333), 30);
        assert!(changes.is_empty() && h.is_hot());
        // 1 a second: below the cool threshold; demoted once that has lasted 3 s (it
        // started about 0.6 s after the last of the faster requests), not before.
        let (changes, now) = feed(&mut h, now, Duration::from_secs(1), 4);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(h.is_hot());
        assert_eq!(h.observe(now, &T), Change::Demoted);
        assert!(!h.is_hot());
    }

    #[test]
    fn a_pause_is_seen_by_a_sweep() {
        let mut h = Hotness::default();
        let t0 = Instant::now();
        let (_, now) = feed(&mut h, t0, Duration::from_millis(20), 20);
        assert!(h.is_hot());
        // About 2.1 s after the last request the rate falls under 2; 3 s later it is cold,
        // even if nobody looked in between.
        assert_eq!(h.evaluate(now + Duration::from_secs(2), &T), Change::None);
        assert_eq!(h.evaluate(now + Duration::from_secs(5), &T), Change::None);
        assert_eq!(
            h.evaluate(now + Duration::from_millis(5200), &T),
            Change::Demoted
        );
    }

    #[test]
    fn a_brief_dip_resets_the_cooldown() {
        let mut h = Hotness::default();
        let t0 = Instant::now();
        let (_, now) = feed(&mut h, t0, Duration::from_millis(50), 40);
        let (_, now) = feed(&mut h, now, Duration::from_secs(1), 2); // below cool for 1-2 s
        let (_, now) = feed(&mut h, now, Duration::from_millis(50), 40); // back up
        let (changes, _) = feed(&mut h, now, Duration::from_secs(1), 3);
        assert!(
            changes.is_empty() && h.is_hot(),
            "the cooldown restarted: {changes:?}"
        );
    }
}
