//! The region: runs any task it is configured with, for requests signed by an edge, and
//! answers its health check. It never proxies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use super::access;
use super::task::{self, Inline};
use super::{refuse_bad_framing, respond, strip_poplar_headers};
use crate::access_log::AccessLog;
use crate::config::ForwardingKey;
use crate::errors::ErrorKind;
use crate::metrics::{InFlight, InFlightGuard};
use crate::regions::health::{DEADLINE_HEADER, HEALTH_PATH};
use crate::regions::signing::{self, Rejection, Seen, Verified};
use crate::registry::{CODE_PATH, REGISTRY_TASK, Registry, TASKS_PATH};
use crate::wasm::{Runtime, Task};

/// Cheap to clone: what a request changes is shared.
#[derive(Clone)]
pub struct RegionServer {
    runtime: Arc<Runtime>,
    /// The tasks and key in force: a reload stores new ones.
    pub live: Arc<ArcSwap<RegionLive>>,
    /// Signatures accepted within the skew window: each is accepted once.
    seen: Arc<Seen>,
    /// Replayed signatures refused.
    pub replays: Arc<AtomicU64>,
    /// Requests being served, for a graceful stop and `/metrics`.
    pub in_flight: InFlight,
    pub access_log: Option<Arc<AccessLog>>,
    /// Tasks deployed with `poplar deploy`, beside the config's (which a reload replaces).
    pub registry: Option<Arc<Registry>>,
}

/// What a region's reload replaces, whole.
pub struct RegionLive {
    pub tasks: HashMap<String, Arc<Task>>,
    pub key: ForwardingKey,
}

/// Per-request state.
pub struct Ctx {
    /// Counts the request in flight until the context is dropped, after its logging.
    _in_flight: InFlightGuard,
    started: Instant,
    /// The signed task and request id, once the signature held.
    verified: Option<(String, String)>,
    /// A health probe: not logged.
    health: bool,
}

impl RegionServer {
    pub fn new(runtime: Arc<Runtime>, tasks: Vec<Arc<Task>>, key: ForwardingKey) -> RegionServer {
        let tasks = tasks.into_iter().map(|t| (t.name.clone(), t)).collect();
        RegionServer {
            runtime,
            live: Arc::new(ArcSwap::from_pointee(RegionLive { tasks, key })),
            seen: Arc::new(Seen::new()),
            replays: Arc::new(AtomicU64::new(0)),
            in_flight: InFlight::default(),
            access_log: None,
            registry: None,
        }
    }

    /// The task `name`: the config file's, else the registry's current version.
    fn task(&self, live: &RegionLive, name: &str) -> Option<Arc<Task>> {
        live.tasks
            .get(name)
            .cloned()
            .or_else(|| self.registry.as_ref()?.task(name))
    }

    /// What an edge asks of the registry (signed): the current versions, or a version's
    /// code. Answered here; `false` for any other request.
    async fn registry_request(&self, session: &mut Session, verified: &Verified) -> Result<bool> {
        // Named so (no task name starts with '_'): a client's request for these paths,
        // forwarded by an edge for a task, runs the task.
        if verified.task != REGISTRY_TASK {
            return Ok(false);
        }
        let registry = self.registry.as_deref();
        let path = session.req_header().uri.path();
        let answer = match path.strip_prefix(CODE_PATH) {
            Some(digest) => (registry.and_then(|r| r.code(digest)))
                .map(|code| ("application/wasm", Bytes::from(code)))
                .ok_or_else(|| format!("no code {digest:?} here")),
            None if path == TASKS_PATH => {
                let current = registry.map(Registry::current_versions).unwrap_or_default();
                let body = serde_json::json!({ "tasks": current });
                Ok(("application/json", Bytes::from(body.to_string())))
            }
            None => Err(format!("try {TASKS_PATH} or {CODE_PATH}DIGEST")),
        };
        match answer {
            Ok((content_type, body)) => {
                let head = ResponseHeader::build(200, Some(4))?;
                respond::ok(session, head, content_type, body).await?;
            }
            Err(detail) => respond::error(session, ErrorKind::UnknownTask, &detail).await?,
        }
        Ok(true)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The forwarded request's signature, if it holds and was not used before.
    fn authorize(&self, live: &RegionLive, req: &RequestHeader) -> Result<Verified, Rejection> {
        let now = signing::unix_now();
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let verified = signing::check(
            &live.key.0,
            req.method.as_str(),
            path_and_query,
            &req.headers,
            now,
        )?;
        if !self.seen.first_use(verified.tag, verified.timestamp, now) {
            self.replays.fetch_add(1, Ordering::Relaxed);
            return Err(Rejection::Replayed);
        }
        Ok(verified)
    }

    /// The signed body, read and checked against its digest; `None` when it is streamed
    /// (the task reads it). `Err` once answered.
    async fn signed_body(
        &self,
        session: &mut Session,
        task: &Task,
        verified: &Verified,
    ) -> Result<Option<Bytes>, ()> {
        if verified.body == signing::STREAMED {
            return Ok(None);
        }
        let answer = match task::read_body(session, task.limits.max_body).await {
            Ok(body) if signing::body_digest(&body) == verified.body => return Ok(Some(body)),
            Ok(_) => (ErrorKind::BadSignature, Rejection::Body.to_string()),
            Err(kind) => (kind, "cannot read the request body".to_string()),
        };
        session.set_keepalive(None);
        let _ = respond::error(session, answer.0, &answer.1).await;
        Err(())
    }
}

/// `200 ok`, with the longest deadline of the region's tasks (edges wait that long, plus
/// the round trip, for a forward's answer).
async fn health(
    session: &mut Session,
    live: &RegionLive,
    registry: Option<&Registry>,
) -> Result<()> {
    let body = Bytes::from_static(b"ok\n");
    let mut head = ResponseHeader::build(200, Some(4))?;
    let deployed = registry.map(|r| r.tasks()).unwrap_or_default();
    let longest = (live.tasks.values().chain(deployed.values()))
        .map(|t| t.limits.timeout)
        .max();
    if let Some(longest) = longest {
        head.insert_header(DEADLINE_HEADER, longest.as_millis().to_string())?;
    }
    respond::ok(session, head, "text/plain", body).await
}

#[async_trait]
impl ProxyHttp for RegionServer {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: self.in_flight.enter(),
            started: Instant::now(),
            verified: None,
            health: false,
        }
    }

    /// No downstream modules: Pingora's default adds a response-compression module that is
    /// switched off yet still runs per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if refuse_bad_framing(session).await? {
            return Ok(true);
        }
        if session.req_header().uri.path() == HEALTH_PATH {
            ctx.health = true;
            health(session, &self.live.load(), self.registry.as_deref()).await?;
            return Ok(true);
        }
        let live = self.live.load_full();
        let verified = match self.authorize(&live, session.req_header()) {
            Ok(verified) => verified,
            Err(rejection) => {
                let kind = match rejection {
                    Rejection::Missing => ErrorKind::Unsigned,
                    _ => ErrorKind::BadSignature,
                };
                session.set_keepalive(None);
                respond::error(session, kind, &rejection.to_string()).await?;
                return Ok(true);
            }
        };
        ctx.verified = Some((verified.task.clone(), verified.request_id.clone()));
        if self.registry_request(session, &verified).await? {
            return Ok(true);
        }
        let Some(task) = self.task(&live, &verified.task) else {
            let detail = format!("no task {:?}", verified.task);
            respond::error(session, ErrorKind::UnknownTask, &detail).await?;
            return Ok(true);
        };
        let Ok(body) = self.signed_body(session, &task, &verified).await else {
            return Ok(true);
        };
        strip_poplar_headers(session.req_header_mut());
        // The edge that signed the request says how its client came.
        let proto = session.req_header().headers.get("x-forwarded-proto");
        let https = proto.is_some_and(|p| p.as_bytes() == b"https");
        let run = Inline {
            runtime: &self.runtime,
            task: &task,
            slot: None,
            request_id: verified.request_id.as_str().into(),
            placement: None,
            may_fall_back: false,
            body,
            cache: None,
            https,
            // The edge said who sent it.
            sender: None,
        };
        task::serve(session, run).await?;
        Ok(true)
    }

    /// One access log line per forwarded request (health probes are not logged).
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(log) = self.access_log.as_ref().filter(|_| !ctx.health) {
            let (task, id) = ctx
                .verified
                .as_ref()
                .map_or((None, ""), |(t, id)| (Some(t.as_str()), id.as_str()));
            let host = session.req_header().headers.get(http::header::HOST);
            let known = access::Known {
                started: Some(ctx.started),
                id,
                host: host.and_then(|h| h.to_str().ok()),
                route: None,
                task,
                upstream: None,
            };
            access::log(log, session, known);
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "a region does not proxy",
        ))
    }
}
