//! Regions as an edge sees them: health (active probes and passive ejection), smoothed
//! latency, the choice of a region per forward, and the signature on forwarded requests.

pub mod code;
pub mod health;
pub mod select;
pub mod signing;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{HealthSpec, RegionSpec};
use crate::resolve::Resolved;
use select::RegionView;

pub use health::HealthChecker;

/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;

/// A region's longest task deadline until its health answer says it.
const UNKNOWN_DEADLINE: Duration = Duration::from_secs(30);
/// What a forward may take beyond the region's deadline: the round trip, and the region's
/// own answer of a deadline error.
const ROUND_TRIP: Duration = Duration::from_secs(1);

/// The regions of an edge and what it has learned of them.
pub struct Regions {
    specs: Vec<RegionSpec>,
    /// Each region's addresses (a name's resolved in the background by [`HealthChecker`]).
    addresses: Vec<Resolved>,
    states: Vec<Mutex<RegionState>>,
    health: HealthSpec,
}

#[derive(Debug, Clone, Copy)]
struct RegionState {
    healthy: bool,
    failed_probes: u32,
    latency_ms: Option<f64>,
    /// Forwards that failed: refused connections, and requests that broke after sending.
    forward_failures: u64,
    /// The longest task deadline the region said it has (its health answer).
    deadline: Option<Duration>,
}

/// One region's state, for the admin endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub address: String,
    /// What the address resolves to now (a name's last good addresses).
    pub resolved: Vec<String>,
    /// Why a named region has no address (or stopped resolving), while that holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
    pub healthy: bool,
    pub latency_ms: Option<f64>,
    pub forward_failures: u64,
    /// How long a forward waits for its answer: the region's longest task deadline (from its
    /// health answer) plus the round trip.
    pub forward_timeout_ms: u64,
}

impl Regions {
    pub fn new(specs: Vec<RegionSpec>, health: HealthSpec) -> Regions {
        Regions::with_addresses(specs, health, None)
    }

    /// The regions of `specs`; with `old`, those of the config this one replaces: a region
    /// kept (same name and address) keeps its addresses, health and latency. Other names are
    /// resolved now (config loads only); regions start healthy, and the first probes follow
    /// at once and correct that.
    fn with_addresses(
        specs: Vec<RegionSpec>,
        health: HealthSpec,
        old: Option<&Regions>,
    ) -> Regions {
        let mut addresses = Vec::with_capacity(specs.len());
        let mut states = Vec::with_capacity(specs.len());
        for spec in &specs {
            let kept = old.and_then(|o| Some((o, o.specs.iter().position(|s| s == spec)?)));
            let what = format!("region {}", spec.name);
            let before = kept.and_then(|(o, k)| o.addresses.get(k));
            addresses.push(Resolved::new(
                what,
                &spec.address.host,
                spec.address.port,
                before,
            ));
            let state = kept.and_then(|(o, k)| o.state(k)).unwrap_or(RegionState {
                healthy: true,
                failed_probes: 0,
                latency_ms: None,
                forward_failures: 0,
                deadline: None,
            });
            states.push(Mutex::new(state));
        }
        Regions {
            specs,
            addresses,
            states,
            health,
        }
    }

    /// The regions of a reloaded config (see [`Self::with_addresses`]).
    pub fn carried(specs: Vec<RegionSpec>, health: HealthSpec, old: &Regions) -> Regions {
        Regions::with_addresses(specs, health, Some(old))
    }

    /// Whether these are the regions and checks a config asks for.
    pub fn is(&self, specs: &[RegionSpec], health: &HealthSpec) -> bool {
        self.specs == specs && self.health == *health
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn spec(&self, i: usize) -> Option<&RegionSpec> {
        self.specs.get(i)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|r| r.name == name)
    }

    /// The address to reach region `i` at now (round robin over a name's addresses).
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        self.addresses.get(i)?.next()
    }

    /// Resolves the regions named by DNS again.
    pub async fn resolve_names(&self) {
        let names = self.addresses.iter().filter(|a| a.is_name());
        futures_util::future::join_all(names.map(Resolved::refresh)).await;
    }

    /// Whether any region is named by DNS.
    pub fn has_names(&self) -> bool {
        self.addresses.iter().any(Resolved::is_name)
    }

    fn state(&self, i: usize) -> Option<RegionState> {
        let state = self.states.get(i)?;
        Some(*state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut RegionState)) {
        if let Some(state) = self.states.get(i) {
            f(&mut state.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// The region for the next attempt of a forward (see [`select::choose`]).
    fn choose(&self, home: Option<usize>, tried: &[usize]) -> Option<usize> {
        let views: Vec<RegionView> = (0..self.specs.len())
            .filter_map(|i| Some((self.state(i)?, self.addresses.get(i)?)))
            .map(|(s, addresses)| RegionView {
                // A name that never resolved has nowhere to send to.
                healthy: s.healthy && addresses.has_addrs(),
                latency_ms: s.latency_ms,
            })
            .collect();
        select::choose(&views, home, tried)
    }

    /// The healthy regions in the order a forward would try them (`home` first).
    pub fn in_order(&self, home: Option<usize>) -> Vec<usize> {
        let mut order = Vec::new();
        while let Some(i) = self.choose(home, &order) {
            order.push(i);
        }
        order
    }

    /// How long a forward to region `i` may wait for an answer: its longest task deadline
    /// plus the round trip. Silent for longer, the region is hung.
    fn forward_timeout(&self, i: usize) -> Duration {
        let deadline = self.state(i).and_then(|s| s.deadline);
        deadline.unwrap_or(UNKNOWN_DEADLINE) + ROUND_TRIP
    }

    /// A response came back from region `i` after `elapsed`.
    fn record_response(&self, i: usize, elapsed: Duration) {
        self.update(i, |s| s.latency_ms = Some(smooth(s.latency_ms, elapsed)));
    }

    /// Region `i` refused or dropped a connection: out until a probe succeeds.
    fn record_failure(&self, i: usize) {
        self.update(i, |s| {
            s.forward_failures += 1;
            if s.healthy {
                log::warn!(
                    "region {}: refused or did not answer in time, taking it out",
                    self.specs[i].name
                );
            }
            s.healthy = false;
        });
    }

    /// The outcome of an active probe of region `i`.
    pub fn record_probe(&self, i: usize, outcome: Result<health::Probed, String>) {
        let unhealthy_after = self.health.unhealthy_after;
        self.update(i, |s| match outcome {
            Ok(health::Probed { elapsed, deadline }) => {
                if !s.healthy {
                    log::info!("region {}: healthy again", self.specs[i].name);
                }
                s.healthy = true;
                s.deadline = deadline.or(s.deadline);
                s.failed_probes = 0;
                s.latency_ms = Some(smooth(s.latency_ms, elapsed));
            }
            Err(e) => {
                s.failed_probes = s.failed_probes.saturating_add(1);
                if s.healthy && s.failed_probes >= unhealthy_after {
                    log::warn!(
                        "region {}: {} failed probes ({e}), taking it out",
                        self.specs[i].name,
                        s.failed_probes
                    );
                    s.healthy = false;
                }
            }
        });
    }

    pub fn status(&self) -> Vec<RegionStatus> {
        self.specs
            .iter()
            .enumerate()
            .filter_map(|(i, spec)| {
                let s = self.state(i)?;
                let addresses = self.addresses.get(i)?;
                Some(RegionStatus {
                    name: spec.name.clone(),
                    address: spec.address.to_string(),
                    resolved: addresses.addrs().iter().map(ToString::to_string).collect(),
                    unresolved: addresses.unresolved(),
                    healthy: s.healthy,
                    forward_timeout_ms: self.forward_timeout(i).as_millis() as u64,
                    latency_ms: s.latency_ms,
                    forward_failures: s.forward_failures,
                })
            })
            .collect()
    }
}

/// One request's way through the regions, for a client request's forward and a background
/// refresh alike: the home region first if healthy, else the fastest; a region that
/// refuses the connection is taken out and the next one tried; the one that answers has
/// its latency recorded.
#[derive(Debug)]
pub struct Attempts {
    home: Option<usize>,
    tried: Vec<usize>,
    /// The region being tried, and since when.
    current: Option<(usize, Instant)>,
}

impl Attempts {
    pub fn new(home: Option<usize>) -> Attempts {
        Attempts {
            home,
            tried: Vec::new(),
            current: None,
        }
    }

    /// The region to send to now, timed from now; `None` when no healthy one is left.
    pub fn next<'r>(&mut self, regions: &'r Regions) -> Option<&'r RegionSpec> {
        let i = regions.choose(self.home, &self.tried)?;
        let spec = regions.spec(i)?;
        self.current = Some((i, Instant::now()));
        Some(spec)
    }

    /// [`Self::next`], with the peer to send to: the region's address, and its deadline
    /// plus the round trip to answer in.
    pub fn next_peer<'r>(
        &mut self,
        regions: &'r Regions,
    ) -> Option<(&'r RegionSpec, pingora_core::upstreams::peer::HttpPeer)> {
        let spec = self.next(regions)?;
        let i = self.current.map(|(i, _)| i)?;
        let addr = regions.addr(i)?;
        let peer = crate::upstream::region_peer(addr, regions.forward_timeout(i));
        Some((spec, peer))
    }

    /// The current region refused the connection (nothing was sent), or did not answer
    /// within its deadline: it is taken out until a probe brings it back. Whether another
    /// region can still take the request.
    pub fn refused(&mut self, regions: &Regions) -> bool {
        if let Some((i, _)) = self.current.take() {
            regions.record_failure(i);
            self.tried.push(i);
        }
        regions.choose(None, &self.tried).is_some()
    }

    /// The request to the current region broke after it was sent (no answer came): counted
    /// against the region; it stays in (its next probe judges it).
    pub fn broken(&mut self, regions: &Regions) {
        if let Some((i, _)) = self.current.take() {
            regions.update(i, |s| s.forward_failures += 1);
        }
    }

    /// The current region answered: its latency is recorded. The region, for the response.
    pub fn answered<'r>(&mut self, regions: &'r Regions) -> Option<&'r RegionSpec> {
        let (i, sent) = self.current.take()?;
        regions.record_response(i, sent.elapsed());
        regions.spec(i)
    }
}

fn smooth(previous: Option<f64>, sample: Duration) -> f64 {
    let ms = sample.as_secs_f64() * 1000.0;
    match previous {
        Some(avg) => avg + EWMA_ALPHA * (ms - avg),
        None => ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Regions {
        let spec = |name: &str, port| RegionSpec {
            name: name.into(),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
        };
        Regions::new(
            vec![spec("a", 1), spec("b", 2)],
            HealthSpec {
                unhealthy_after: 2,
                ..HealthSpec::default()
            },
        )
    }

    #[test]
    fn latency_moves_traffic() {
        let r = regions();
        r.record_response(0, Duration::from_millis(10));
        r.record_response(1, Duration::from_millis(20));
        assert_eq!(r.choose(None, &[]), Some(0));
        for _ in 0..5 {
            r.record_response(0, Duration::from_millis(100));
        }
        assert_eq!(r.choose(None, &[]), Some(1));
    }

    #[test]
    fn probes_eject_after_consecutive_failures_and_restore() {
        let r = regions();
        r.record_probe(0, Err("refused".into()));
        assert_eq!(r.choose(Some(0), &[]), Some(0), "one failure is not enough");
        r.record_probe(0, Err("refused".into()));
        assert_eq!(r.choose(Some(0), &[]), Some(1));
        assert_eq!(
            r.forward_timeout(0),
            Duration::from_secs(31),
            "deadline unknown"
        );
        let probed = health::Probed {
            elapsed: Duration::from_millis(1),
            deadline: Some(Duration::from_secs(5)),
        };
        r.record_probe(0, Ok(probed));
        assert_eq!(r.choose(Some(0), &[]), Some(0));
        assert_eq!(
            r.forward_timeout(0),
            Duration::from_secs(6),
            "its deadline + 1 s"
        );
    }

    #[test]
    fn a_refused_attempt_ejects_at_once_and_fails_over() {
        let r = regions();
        let mut attempts = Attempts::new(Some(1));
        assert_eq!(attempts.next(&r).map(|s| s.name.as_str()), Some("b"));
        assert!(attempts.refused(&r), "a is left");
        assert_eq!(r.choose(Some(1), &[]), Some(0), "b is out for everyone");
        assert_eq!(attempts.next(&r).map(|s| s.name.as_str()), Some("a"));
        assert!(!attempts.refused(&r), "nothing is left");
        assert!(attempts.next(&r).is_none());
    }

    #[test]
    fn an_answer_records_the_latency_of_the_region_that_gave_it() {
        let r = regions();
        let mut attempts = Attempts::new(None);
        let first = attempts.next(&r).map(|s| s.name.clone());
        assert_eq!(attempts.answered(&r).map(|s| &s.name), first.as_ref());
        assert!(attempts.answered(&r).is_none(), "recorded once");
        let status = r.status();
        let answered = status.iter().find(|s| Some(&s.name) == first.as_ref());
        assert!(answered.and_then(|s| s.latency_ms).is_some(), "{status:?}");
    }
}
