//! Counters of where each task's requests ran and why, for the admin endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::placement::Reason;
use crate::shards::Sharded;

/// Where a request ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Edge,
    Region,
}

const SITES: [Site; 2] = [Site::Edge, Site::Region];
const SLOTS: usize = SITES.len() * Reason::ALL.len();

fn slot(site: Site, reason: Reason) -> usize {
    let s = SITES.iter().position(|&x| x == site).unwrap_or(0);
    let r = Reason::ALL.iter().position(|&x| x == reason).unwrap_or(0);
    s * Reason::ALL.len() + r
}

/// Per task, a count for each site and reason. A reload adds the tasks it brings
/// ([`Counters::add`]); a task's counts go on across reloads (Prometheus counters do not
/// reset), and those of a task a reload removed stay as they were.
pub struct Counters {
    tasks: arc_swap::ArcSwap<HashMap<String, Arc<Sharded<[AtomicU64; SLOTS]>>>>,
}

impl Counters {
    pub fn new<'a>(tasks: impl IntoIterator<Item = &'a str>) -> Counters {
        let counters = Counters {
            tasks: arc_swap::ArcSwap::default(),
        };
        counters.add(tasks);
        counters
    }

    /// Counts for these tasks too, from zero (those it has keep theirs).
    pub fn add<'a>(&self, tasks: impl IntoIterator<Item = &'a str>) {
        let mut all = HashMap::clone(&self.tasks.load());
        for task in tasks {
            all.entry(task.to_string()).or_insert_with(|| {
                Arc::new(Sharded::new_with(|| {
                    std::array::from_fn(|_| AtomicU64::new(0))
                }))
            });
        }
        self.tasks.store(Arc::new(all));
    }

    pub fn count(&self, task: &str, site: Site, reason: Reason) {
        if let Some(counts) = self.tasks.load().get(task) {
            counts.local()[slot(site, reason)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{task: {"edge/hot": n, "region/cold": n, ...}}`, non-zero counts only.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.tasks
            .load()
            .iter()
            .map(|(task, counts)| {
                let mut by_key = BTreeMap::new();
                for site in SITES {
                    for reason in Reason::ALL {
                        let i = slot(site, reason);
                        let n: u64 = counts.all().map(|c| c[i].load(Ordering::Relaxed)).sum();
                        if n > 0 {
                            let site = if site == Site::Edge { "edge" } else { "region" };
                            by_key.insert(format!("{site}/{}", reason.as_str()), n);
                        }
                    }
                }
                (task.clone(), by_key)
            })
            .collect()
    }
}

/// Requests answered, by route (its place in `routes`; `None`: no route matched) and status
/// class, under the config in force. A reload carries the counts of each route that kept its
/// place, its match and its target.
pub struct RouteCounts {
    /// Per thread: one row per route, then the unrouted row, then [`ROW_PAD`] rows no one
    /// writes, so that two threads' rows never share a cache line.
    rows: Sharded<Vec<[AtomicU64; 5]>>,
    routes: usize,
}

/// Untouched rows after each thread's, at least two cache lines.
const ROW_PAD: usize = 4;

/// The status classes counted, by their first digit.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RouteCounts {
    pub fn new(routes: usize) -> RouteCounts {
        RouteCounts {
            rows: Sharded::new_with(|| {
                (0..routes + 1 + ROW_PAD)
                    .map(|_| Default::default())
                    .collect()
            }),
            routes,
        }
    }

    /// Counts for `routes` routes, with `old`'s counts for each route `kept` says is the
    /// same one.
    pub fn carried(routes: usize, old: &RouteCounts, kept: impl Fn(usize) -> bool) -> RouteCounts {
        let new = RouteCounts::new(routes);
        let copy = |to: &[AtomicU64; 5], from: &[AtomicU64; 5]| {
            for (t, f) in to.iter().zip(from) {
                t.store(f.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        };
        for (to, from) in new.rows.all().zip(old.rows.all()) {
            for i in (0..routes.min(old.routes)).filter(|&i| kept(i)) {
                copy(&to[i], &from[i]);
            }
            copy(&to[routes], &from[old.routes]); // the unrouted rows
        }
        new
    }

    pub fn count(&self, route: Option<usize>, status: u16) {
        let Some(class) = (status / 100).checked_sub(1).map(usize::from) else {
            return;
        };
        let row = match route {
            Some(i) if i < self.routes => i,
            Some(_) => return,
            None => self.routes,
        };
        if let Some(n) = self.rows.local()[row].get(class) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every non-zero count: route (`None`: unrouted), status class, count.
    pub fn snapshot(&self) -> Vec<(Option<usize>, &'static str, u64)> {
        let mut out = Vec::new();
        for row in 0..=self.routes {
            let route = (row < self.routes).then_some(row);
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                let n: u64 = self
                    .rows
                    .all()
                    .map(|rows| rows[row][c].load(Ordering::Relaxed))
                    .sum();
                if n > 0 {
                    out.push((route, *class, n));
                }
            }
        }
        out
    }
}

/// Requests being served now, at the edge or region proxy: each holds an [`InFlightGuard`]
/// from the making of its context to the end of its logging phase.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Sharded<AtomicU64>>);

/// One request in flight; dropping it counts the request done.
pub struct InFlightGuard(Arc<Sharded<AtomicU64>>);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard {
        self.0.add(1);
        InFlightGuard(self.0.clone())
    }

    pub fn now(&self) -> u64 {
        self.0.sum()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}

/// Where a request was answered, for the response-time histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// A task run inline.
    Edge,
    /// A task forwarded to a region.
    Region,
    /// From the result cache.
    Cache,
    /// An origin route.
    Origin,
}

impl Answered {
    const ALL: [Answered; 4] = [
        Answered::Edge,
        Answered::Region,
        Answered::Cache,
        Answered::Origin,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Answered::Edge => "edge",
            Answered::Region => "region",
            Answered::Cache => "cache",
            Answered::Origin => "origin",
        }
    }
}

/// Buckets a quarter of a power of two wide: 1 µs up to about 2 minutes, each bound within
/// 19% of the one before.
const BUCKETS: usize = 4 * 27 + 1;

/// Bucket `i` holds times up to `2^(i/4)` µs, rounded; computed once.
static BOUNDS: std::sync::LazyLock<[u64; BUCKETS]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|i| 2f64.powf(i as f64 / 4.0).round() as u64));

/// The first bucket whose bound holds `micros` (the last holds the rest).
fn bucket(micros: u64) -> usize {
    BOUNDS
        .partition_point(|&bound| bound < micros)
        .min(BUCKETS - 1)
}

fn upper_bound_micros(i: usize) -> u64 {
    BOUNDS[i]
}

/// Response times, from a request's arrival to the end of its response, by where it was
/// answered. Errors are not counted.
pub struct Latencies {
    /// Per thread, one histogram per place answered.
    by: Sharded<[Histogram; Answered::ALL.len()]>,
}

struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

/// One histogram as `GET /stats` shows it: `buckets` are `[upper bound in µs, count]` pairs,
/// non-empty buckets only, so two snapshots can be subtracted for a window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencySnapshot {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub buckets: Vec<(u64, u64)>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            by: Sharded::new_with(|| {
                std::array::from_fn(|_| Histogram {
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    sum_micros: AtomicU64::new(0),
                })
            }),
        }
    }
}

/// One histogram for Prometheus: per-bucket counts (not cumulative) with upper bounds in
/// seconds, the last `f64::MAX` for `+Inf`.
pub struct Exposed {
    pub answered: &'static str,
    pub sum_seconds: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

/// Exposed buckets are every fourth: powers of two from 1 µs to 2^26 µs (67 s), then the
/// rest. Each is a bound of the quarter-octave buckets, so the counts are exact.
const EXPOSED_EVERY: usize = 4;

impl Latencies {
    /// Every place that answered at least one request, with coarser buckets than
    /// [`Latencies::snapshot`]'s (28 bounds).
    pub fn histograms(&self) -> Vec<Exposed> {
        Answered::ALL
            .iter()
            .filter_map(|&a| {
                let (counts, sum_micros) = self.summed(a);
                let mut buckets: Vec<(f64, u64)> = Vec::new();
                let mut pending = 0;
                for (i, n) in counts.iter().enumerate() {
                    pending += n;
                    if i % EXPOSED_EVERY == 0 && i < BUCKETS - 1 {
                        buckets.push((upper_bound_micros(i) as f64 / 1e6, pending));
                        pending = 0;
                    }
                }
                buckets.push((f64::MAX, pending));
                let count = buckets.iter().map(|b| b.1).sum();
                (count > 0).then(|| Exposed {
                    answered: a.as_str(),
                    sum_seconds: sum_micros as f64 / 1e6,
                    count,
                    buckets,
                })
            })
            .collect()
    }

    /// Every thread's counts for `answered` added up: per bucket, and the sum in µs.
    fn summed(&self, answered: Answered) -> ([u64; BUCKETS], u64) {
        let mut counts = [0u64; BUCKETS];
        let mut sum = 0u64;
        for shard in self.by.all() {
            let h = &shard[answered as usize];
            for (c, b) in counts.iter_mut().zip(&h.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(h.sum_micros.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    pub fn record(&self, answered: Answered, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let h = &self.by.local()[answered as usize];
        h.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Every place that answered at least one request.
    pub fn snapshot(&self) -> BTreeMap<&'static str, LatencySnapshot> {
        Answered::ALL
            .iter()
            .filter_map(|&a| {
                let (counts, sum) = self.summed(a);
                let count: u64 = counts.iter().sum();
                if count == 0 {
                    return None;
                }
                // The upper bound of the bucket holding the q-th time.
                let quantile = |q: f64| {
                    let rank = ((count as f64) * q).ceil().max(1.0) as u64;
                    let mut seen = 0;
                    let i = counts
                        .iter()
                        .position(|&c| {
                            seen += c;
                            seen >= rank
                        })
                        .unwrap_or(BUCKETS - 1);
                    upper_bound_micros(i) as f64 / 1000.0
                };
                Some((
                    a.as_str(),
                    LatencySnapshot {
                        count,
                        mean_ms: sum as f64 / count as f64 / 1000.0,
                        p50_ms: quantile(0.5),
                        p99_ms: quantile(0.99),
                        buckets: counts
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| **c > 0)
                            .map(|(i, c)| (upper_bound_micros(i), *c))
                            .collect(),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn route_counts_add_up_every_thread_and_a_reload_carries_the_kept_routes() {
        let counts = std::sync::Arc::new(RouteCounts::new(3));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    counts.count(Some(0), 200);
                    counts.count(Some(2), 503);
                    counts.count(None, 404);
                    counts.count(Some(7), 200); // no such route: not counted
                    counts.count(Some(1), 99); // no such class
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let expected = vec![(Some(0), "2xx", 4), (Some(2), "5xx", 4), (None, "4xx", 4)];
        assert_eq!(counts.snapshot(), expected);
        // A new config of two routes, of which only the first is the same route as before.
        let carried = RouteCounts::carried(2, &counts, |i| i == 0);
        assert_eq!(
            carried.snapshot(),
            vec![(Some(0), "2xx", 4), (None, "4xx", 4)]
        );
    }

    #[test]
    fn buckets_bound_what_they_hold() {
        for micros in (0..2_000).chain([23_170, 999_999, 60_000_000]) {
            let i = bucket(micros);
            assert!(micros <= upper_bound_micros(i), "{micros} above bucket {i}");
            if i > 0 {
                assert!(
                    micros > upper_bound_micros(i - 1),
                    "{micros} fits bucket {}",
                    i - 1
                );
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn exposed_buckets_are_exact_at_powers_of_two() {
        let l = Latencies::default();
        l.record(Answered::Cache, Duration::from_micros(1024));
        l.record(Answered::Cache, Duration::from_micros(1025));
        l.record(Answered::Cache, Duration::from_secs(600));
        let [h] = &l.histograms()[..] else {
            panic!("one place answered")
        };
        assert_eq!((h.answered, h.count), ("cache", 3));
        let at = |le: f64| h.buckets.iter().find(|b| b.0 == le).map(|b| b.1);
        assert_eq!(at(0.001024), Some(1), "1024 µs is at its bound");
        assert_eq!(at(0.002048), Some(1));
        assert_eq!(at(f64::MAX), Some(1), "10 minutes is past the last bound");
        assert_eq!(h.buckets.len(), 28);
        assert!((h.sum_seconds - 600.002049).abs() < 1e-9);
    }

    #[test]
    fn quantiles_by_where_answered() {
        let l = Latencies::default();
        for _ in 0..98 {
            l.record(Answered::Edge, Duration::from_micros(400));
        }
        l.record(Answered::Edge, Duration::from_millis(3));
        l.record(Answered::Edge, Duration::from_millis(50));
        l.record(Answered::Region, Duration::from_millis(21));
        let s = l.snapshot();
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), ["edge", "region"]);
        let edge = &s["edge"];
        assert_eq!(edge.count, 100);
        // Within a bucket's width (19%) above the true value.
        assert!((0.4..0.48).contains(&edge.p50_ms), "{edge:?}");
        assert!((3.0..3.6).contains(&edge.p99_ms), "{edge:?}");
        assert!((0.92..0.93).contains(&edge.mean_ms), "{edge:?}");
        assert_eq!(edge.buckets.iter().map(|b| b.1).sum::<u64>(), 100);
        assert!((21.0..25.0).contains(&s["region"].p99_ms));
    }
}
