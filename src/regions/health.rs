//! Active health checks: every interval, `GET /_poplar/health` on each region, timed.
//! A success restores a region and feeds its latency average; failures take it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;

use super::Regions;
use crate::upstream::{self, Client};

/// The path every Poplar server answers `200 ok` on.
pub const HEALTH_PATH: &str = "/_poplar/health";
/// The header of a region's health answer giving its longest task deadline, in ms.
pub const DEADLINE_HEADER: &str = "x-poplar-max-timeout-ms";

/// A probe's success: how long it took, and the longest task deadline the region gave.
#[derive(Debug, Clone, Copy)]
pub struct Probed {
    pub elapsed: Duration,
    pub deadline: Option<Duration>,
}

/// Probes every region of an edge until shutdown.
pub struct HealthChecker {
    /// The regions of the config in force: a reload stores its own here.
    regions: Arc<ArcSwap<Regions>>,
    client: Arc<Client>,
}

impl HealthChecker {
    /// Probes over `client`, the edge's pooled client: a probe takes the connections the
    /// edge's own requests to the region use.
    pub fn new(regions: Arc<ArcSwap<Regions>>, client: Arc<Client>) -> HealthChecker {
        HealthChecker { regions, client }
    }

    async fn probe_all(&self, regions: &Regions) {
        let probes = regions
            .specs
            .iter()
            .enumerate()
            .map(|(i, spec)| async move {
                let Some(addr) = regions.addr(i) else {
                    let why = "the name has no address";
                    return regions.record_probe(i, Err(why.into()));
                };
                let host = spec.address.to_string();
                let outcome = probe(&self.client, &host, addr, regions.health.timeout).await;
                regions.record_probe(i, outcome);
            });
        futures_util::future::join_all(probes).await;
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Names were resolved at load; again each `resolve_every`, before that round's probes.
        let mut resolved = Instant::now();
        loop {
            let regions = self.regions.load_full();
            if regions.has_names() && resolved.elapsed() >= regions.health.resolve_every {
                resolved = Instant::now();
                regions.resolve_names().await;
            }
            self.probe_all(&regions).await;
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(regions.health.interval) => {}
            }
        }
    }
}

/// One probe: `GET` the health path, expect a 200 within `timeout`.
async fn probe(
    client: &Client,
    host: &str,
    address: std::net::SocketAddr,
    timeout: Duration,
) -> Result<Probed, String> {
    let started = Instant::now();
    let attempt = async {
        let mut head =
            RequestHeader::build("GET", HEALTH_PATH.as_bytes(), None).map_err(|e| e.to_string())?;
        head.insert_header(http::header::HOST, host)
            .map_err(|e| e.to_string())?;
        let peer = upstream::region_peer(address, timeout);
        let answer = client
            .exchange(&peer, head, bytes::Bytes::new(), PROBE_BODY_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        match answer.head.status {
            http::StatusCode::OK => Ok(Probed {
                elapsed: started.elapsed(),
                deadline: answer
                    .head
                    .headers
                    .get(DEADLINE_HEADER)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map(Duration::from_millis),
            }),
            status => Err(format!("answered {status}")),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {timeout:?}")))
}

/// A health answer is `ok`: anything longer is not a Poplar server's.
const PROBE_BODY_LIMIT: usize = 4096;
