//! Active health checks: every interval, `GET /_poplar/health` on each region, timed.
//! A success restores a region and feeds its latency average; failures take it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Regions;

/// The path every Poplar server answers `200 ok` on.
pub const HEALTH_PATH: &str = "/_poplar/health";

/// Probes every region of an edge until shutdown.
pub struct HealthChecker {
    regions: Arc<Regions>,
}

impl HealthChecker {
    pub fn new(regions: Arc<Regions>) -> HealthChecker {
        HealthChecker { regions }
    }

    async fn probe_all(&self) {
        let probes = self
            .regions
            .specs
            .iter()
            .enumerate()
            .map(|(i, spec)| async move {
                let outcome = probe(spec.address, self.regions.health.timeout).await;
                self.regions.record_probe(i, outcome);
            });
        futures_util::future::join_all(probes).await;
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.probe_all().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(self.regions.health.interval) => {}
            }
        }
    }
}

/// One probe: connect, ask for the health path, expect a 200 status line.
async fn probe(address: std::net::SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let attempt = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {HEALTH_PATH} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| e.to_string())?;
        match &head {
            b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(started.elapsed()),
            other => Err(format!("answered {:?}", String::from_utf8_lossy(other))),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {timeout:?}")))
}
