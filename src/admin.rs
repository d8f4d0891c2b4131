//! The admin endpoint, on its own listener (`admin.listen`): `GET /stats` answers JSON with
//! where each task's requests ran and why, response times by where requests were answered,
//! each task's heat and residency, each region's health and latency, and the cache's
//! counters; `GET /metrics` the same for Prometheus ([`crate::exposition`]); `POST /purge`
//! drops cache entries. With a token (`admin.token_file` or `POPLAR_ADMIN_TOKEN`), every
//! request but a `GET` needs it as `Authorization: Bearer` (401 without, 403 with another),
//! and with `guard_reads` the `GET`s too.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use sha2::{Digest, Sha256};

use crate::cache::{CacheStats, Purge};
use crate::config::{AdminSpec, ConfigErrors};
use crate::exposition;
use crate::metrics::LatencySnapshot;
use crate::placement::TaskStatus;
use crate::regions::RegionStatus;

pub use crate::exposition::Sources;

/// What `POST /reload` calls: reads, checks and swaps in the config file again.
pub trait Reload: Send + Sync {
    /// What changed; or every problem found, and the config in force goes on.
    fn reload(&self) -> Result<serde_json::Value, ConfigErrors>;
}

pub struct Admin {
    sources: Sources,
    reload: Option<Arc<dyn Reload>>,
    registry: prometheus_client::registry::Registry,
    /// The bearer token changes need (and reads, with `guard_reads`).
    token: Option<BearerToken>,
    guard_reads: bool,
    /// A region's task registry: the deploy API under `/tasks`, guarded by its own token.
    tasks: Option<Arc<crate::registry::Registry>>,
}

/// Whether a request may do what it asks.
pub(crate) enum Access {
    Allowed,
    /// No `Authorization: Bearer`: 401.
    Unauthenticated,
    /// A token, not this endpoint's: 403.
    Forbidden,
}

/// A bearer token, kept as its SHA-256: requests are checked by comparing digests, so the
/// time a comparison takes says nothing about the token.
pub(crate) struct BearerToken([u8; 32]);

impl BearerToken {
    pub(crate) fn new(token: &[u8]) -> BearerToken {
        BearerToken(Sha256::digest(token).into())
    }

    /// Whether `req` carries this token as `Authorization: Bearer`.
    pub(crate) fn check(&self, req: &pingora_http::RequestHeader) -> Access {
        let given = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credentials)| credentials.trim());
        match given {
            None => Access::Unauthenticated,
            Some(given) if Sha256::digest(given.as_bytes()).as_slice() == self.0 => Access::Allowed,
            Some(_) => Access::Forbidden,
        }
    }
}

#[derive(serde::Serialize)]
struct Stats {
    placements: BTreeMap<String, BTreeMap<String, u64>>,
    /// Response times by where requests were answered (edge, region, cache, origin).
    latency: BTreeMap<&'static str, LatencySnapshot>,
    tasks: BTreeMap<String, TaskStatus>,
    regions: Vec<RegionStatus>,
    /// Every origin server, and whether it takes requests.
    origins: Vec<crate::origins::ServerStatus>,
    cache: Option<CacheStats>,
    /// Task code made ready since start: compiled, or loaded compiled from `code_cache`.
    code: Option<crate::wasm::CodeCounts>,
    /// A region's registry: each deployed task's versions and current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<BTreeMap<String, crate::registry::Entry>>,
    /// TLS handshakes clients failed (or did not finish within 60 s), since start.
    tls_handshake_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    replays_refused: Option<u64>,
}

impl Admin {
    pub fn new(sources: Sources, spec: &AdminSpec, reload: Option<Arc<dyn Reload>>) -> Admin {
        let registry = exposition::registry(sources.clone());
        Admin {
            sources,
            reload,
            registry,
            token: spec.token.as_ref().map(|t| BearerToken::new(&t.0)),
            guard_reads: spec.guard_reads,
            tasks: None,
        }
    }

    /// Serves `registry`'s deploy API under `/tasks`.
    pub fn with_registry(mut self, registry: Arc<crate::registry::Registry>) -> Admin {
        self.tasks = Some(registry);
        self
    }

    fn access(&self, req: &pingora_http::RequestHeader) -> Access {
        match &self.token {
            Some(token) => token.check(req),
            None => Access::Allowed,
        }
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
                .live
                .as_ref()
                .map(|l| l.load().placer.status().into_iter().collect())
                .unwrap_or_default(),
            regions: s
                .live
                .as_ref()
                .map(|l| l.load().regions.status())
                .unwrap_or_default(),
            origins: s
                .live
                .as_ref()
                .map(|l| l.load().origins.status())
                .unwrap_or_default(),
            cache: s.cache.as_ref().map(|c| c.stats()),
            code: s.runtime.as_ref().map(|r| r.code.snapshot()),
            registry: s.registry.as_ref().map(|r| r.entries()),
            tls_handshake_failures:
                pingora_core::services::listening::downstream_handshake_failures(),
            replays_refused: s
                .replays_refused
                .as_ref()
                .map(|n| n.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// `POST /reload`: 200 and what changed, or 422 and every problem in the file.
    async fn reload(&self) -> http::Response<Vec<u8>> {
        let Some(reload) = self.reload.clone() else {
            return respond(404, "text/plain", b"no reload here\n".to_vec());
        };
        match tokio::task::spawn_blocking(move || reload.reload()).await {
            Ok(Ok(reloaded)) => {
                let mut json = serde_json::to_vec_pretty(&reloaded).unwrap_or_default();
                json.push(b'\n');
                respond(200, "application/json", json)
            }
            Ok(Err(errors)) => {
                log::error!("reload refused, the config in force goes on: {errors}");
                respond(422, "text/plain", errors.to_string().into_bytes())
            }
            Err(e) => respond(
                500,
                "text/plain",
                format!("the reload failed: {e}\n").into_bytes(),
            ),
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

pub(crate) fn respond(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let response = http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body);
    response.unwrap_or_else(|_| http::Response::new(Vec::new()))
}

/// The answer to a request `access` refuses (`None` when it allows it): 401 with a
/// challenge, or 403, naming the token needed (`what`: `admin` or `deploy`).
pub(crate) fn refuse(access: Access, what: &str) -> Option<http::Response<Vec<u8>>> {
    let status = match access {
        Access::Allowed => return None,
        Access::Unauthenticated => 401,
        Access::Forbidden => 403,
    };
    let body = format!("this needs the {what} token: Authorization: Bearer TOKEN\n");
    let mut response = respond(status, "text/plain", body.into_bytes());
    if status == 401
        && let Ok(challenge) =
            http::HeaderValue::from_str(&format!("Bearer realm=\"poplar {what}\""))
    {
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, challenge);
    }
    Some(response)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let query = req.uri.query().unwrap_or_default().to_string();
        let changes = req.method != http::Method::GET && req.method != http::Method::HEAD;
        if let Some(registry) = &self.tasks {
            if changes && req.uri.path().starts_with("/tasks") && from_a_browser_elsewhere(req) {
                let message = b"cross-origin requests may not change state here\n".to_vec();
                return respond(403, "text/plain", message);
            }
            if let Some(answer) = crate::registry::api::handle(registry, session).await {
                return answer;
            }
        }
        let req = session.req_header();
        if (changes || self.guard_reads)
            && let Some(refused) = refuse(self.access(req), "admin")
        {
            return refused;
        }
        match (req.method.as_str(), req.uri.path()) {
            ("GET", "/stats") => match serde_json::to_vec_pretty(&self.stats()) {
                Ok(json) => respond(200, "application/json", json),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            ("GET", "/metrics") => match exposition::render(&self.registry) {
                Ok(text) => respond(200, exposition::CONTENT_TYPE, text.into_bytes()),
                Err(e) => respond(500, "text/plain", format!("{e}\n").into_bytes()),
            },
            ("POST", "/purge" | "/reload") if from_a_browser_elsewhere(req) => respond(
                403,
                "text/plain",
                b"cross-origin requests may not change state here\n".to_vec(),
            ),
            ("POST", "/purge") => self.purge(&query),
            ("POST", "/reload") => self.reload().await,
            _ => respond(
                404,
                "text/plain",
                b"try GET /stats, GET /metrics, POST /purge or POST /reload\n".to_vec(),
            ),
        }
    }
}
