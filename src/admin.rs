//! The admin endpoint, on its own listener (`admin.listen`): `GET /stats` answers JSON with
//! where each task's requests ran and why, each task's heat and residency, and each
//! region's health and latency.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Counters;
use crate::placement::{Placer, TaskStatus};
use crate::regions::{RegionStatus, Regions};

pub struct Admin {
    counters: Arc<Counters>,
    placer: Option<Arc<Placer>>,
    regions: Option<Arc<Regions>>,
}

#[derive(serde::Serialize)]
struct Stats {
    placements: BTreeMap<String, BTreeMap<String, u64>>,
    tasks: BTreeMap<String, TaskStatus>,
    regions: Vec<RegionStatus>,
}

impl Admin {
    pub fn new(
        counters: Arc<Counters>,
        placer: Option<Arc<Placer>>,
        regions: Option<Arc<Regions>>,
    ) -> Admin {
        Admin {
            counters,
            placer,
            regions,
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            placements: self.counters.snapshot(),
            tasks: self
                .placer
                .as_ref()
                .map(|p| p.status().into_iter().collect())
                .unwrap_or_default(),
            regions: self
                .regions
                .as_ref()
                .map(|r| r.status())
                .unwrap_or_default(),
        }
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let response = http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body);
    response.unwrap_or_else(|_| http::Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/stats" => match serde_json::to_vec_pretty(&self.stats()) {
                Ok(json) => respond(200, "application/json", json),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            _ => respond(404, "text/plain", b"try /stats\n".to_vec()),
        }
    }
}
