//! The admin endpoint, on its own listener (`admin.listen`): `GET /stats` answers JSON with
//! where each task's requests ran and why, response times by where requests were answered,
//! each task's heat and residency, each region's health and latency, and the cache's
//! counters; `GET /metrics` the same for Prometheus ([`crate::exposition`]); `POST /purge`
//! drops cache entries.

use std::collections::BTreeMap;

use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::cache::{CacheStats, Purge};
use crate::exposition;
use crate::metrics::LatencySnapshot;
use crate::placement::TaskStatus;
use crate::regions::RegionStatus;

pub use crate::exposition::Sources;

pub struct Admin {
    sources: Sources,
    registry: prometheus_client::registry::Registry,
}

#[derive(serde::Serialize)]
struct Stats {
    placements: BTreeMap<String, BTreeMap<String, u64>>,
    /// Response times by where requests were answered (edge, region, cache, origin).
    latency: BTreeMap<&'static str, LatencySnapshot>,
    tasks: BTreeMap<String, TaskStatus>,
    regions: Vec<RegionStatus>,
    cache: Option<CacheStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replays_refused: Option<u64>,
}

impl Admin {
    pub fn new(sources: Sources) -> Admin {
        let registry = exposition::registry(sources.clone());
        Admin { sources, registry }
    }

    fn stats(&self) -> Stats {
        let s = &self.sources;
        Stats {
            placements: s.counters.snapshot(),
            latency: s
                .latencies
                .as_ref()
                .map(|l| l.snapshot())
                .unwrap_or_default(),
            tasks: s
                .placer
                .as_ref()
                .map(|p| p.status().into_iter().collect())
                .unwrap_or_default(),
            regions: s.regions.as_ref().map(|r| r.status()).unwrap_or_default(),
            cache: s.cache.as_ref().map(|c| c.stats()),
            replays_refused: s
                .replays_refused
                .as_ref()
                .map(|n| n.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// `POST /purge?route=N`, `?task=NAME` or `?prefix=/PATH`.
    fn purge(&self, query: &str) -> http::Response<Vec<u8>> {
        let Some(cache) = &self.sources.cache else {
            return respond(404, "text/plain", b"no cache here\n".to_vec());
        };
        let (name, value) = query.split_once('=').unwrap_or((query, ""));
        let what = match name {
            "route" => value.parse().ok().map(Purge::Route),
            "task" if !value.is_empty() => Some(Purge::Task(value.to_string())),
            "prefix" if value.starts_with('/') => Some(Purge::PathPrefix(value.to_string())),
            _ => None,
        };
        let Some(what) = what else {
            let usage = b"purge one of: ?route=N, ?task=NAME, ?prefix=/PATH\n".to_vec();
            return respond(400, "text/plain", usage);
        };
        let purged = cache.purge(&what);
        log::info!("purged {purged} cache entries ({what:?})");
        respond(
            200,
            "application/json",
            format!("{{\"purged\": {purged}}}\n").into_bytes(),
        )
    }
}

/// A request a browser sent on behalf of another site (a form posted from a page anywhere):
/// `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not this
/// endpoint's own. Command-line clients send neither and pass.
fn from_a_browser_elsewhere(req: &pingora_http::RequestHeader) -> bool {
    let text = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
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
        let req = session.req_header();
        let query = req.uri.query().unwrap_or_default().to_string();
        match (req.method.as_str(), req.uri.path()) {
            ("GET", "/stats") => match serde_json::to_vec_pretty(&self.stats()) {
                Ok(json) => respond(200, "application/json", json),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            ("GET", "/metrics") => match exposition::render(&self.registry) {
                Ok(text) => respond(200, exposition::CONTENT_TYPE, text.into_bytes()),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            ("POST", "/purge") if from_a_browser_elsewhere(req) => respond(
                403,
                "text/plain",
                b"cross-origin requests may not change state here\n".to_vec(),
            ),
            ("POST", "/purge") => self.purge(&query),
            _ => respond(
                404,
                "text/plain",
                b"try GET /stats, GET /metrics or POST /purge\n".to_vec(),
            ),
        }
    }
}
