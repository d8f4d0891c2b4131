//! The edge: route; answer task routes inline or forward them to a region; proxy origin
//! routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::access;
use super::cached::{self, Phase};
use super::origin::ToOrigin;
use super::refresh::{self, Source};
use super::retry;
use super::task::{self, Inline, Served};
use super::{
    RequestIds, Sender, forwarded_for, forwarded_for_filed, normalize_request, refuse_bad_framing,
    respond, strip_poplar_headers,
};
use crate::access_log::AccessLog;
use crate::cache::{Cache, CacheCtx, Fwd, Replay};
use crate::config::{ForwardingKey, Mode, Target};
use crate::errors::ErrorKind;
use crate::metrics::{Answered, Counters, InFlight, InFlightGuard, Latencies, RouteCounts, Site};
use crate::origins::Origins;
use crate::placement::{Placement, Placer, Reason};
use crate::regions::health::HEALTH_PATH;
use crate::regions::{Attempts, Regions, signing};
use crate::registry::DIGEST_HEADER;
use crate::routing::{Route, Router};
use crate::upstream;

/// The edge proxy.
/// Cheap to clone (one per proxy service): its parts are shared.
#[derive(Clone)]
pub struct Edge {
    pub(super) parts: Parts,
    ids: Arc<RequestIds>,
}

/// What an edge is made of.
#[derive(Clone)]
pub struct Parts {
    /// The config in force: a reload stores a new one; each request takes the one in force
    /// when it arrives and keeps it to its end.
    pub live: Arc<ArcSwap<Live>>,
    pub counters: Arc<Counters>,
    pub latencies: Arc<Latencies>,
    pub cache: Arc<Cache>,
    /// The edge's own requests' client (refreshes; the health probes share it).
    pub client: Arc<upstream::Client>,
    /// Requests being served, for a graceful stop and `/metrics`.
    pub in_flight: InFlight,
    pub access_log: Option<Arc<AccessLog>>,
    /// Plain listeners that send every request to HTTPS, with the port they send it to.
    pub redirects: Arc<[(SocketAddr, u16)]>,
}

/// What a reload replaces, whole ([`Parts::live`]).
pub struct Live {
    pub router: Router,
    pub placer: Arc<Placer>,
    pub regions: Arc<Regions>,
    pub key: Option<ForwardingKey>,
    /// Each task's wasm digest (its cache keys carry it).
    pub versions: HashMap<String, String>,
    /// Peers whose `X-Forwarded-For` is kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A header that carries request ids from a proxy in front (`request_id_header`).
    pub request_id_header: Option<http::HeaderName>,
    /// The origin pools routes name.
    pub origins: Arc<Origins>,
    /// Requests answered by route and status class.
    pub route_counts: RouteCounts,
}

/// Per-request state.
pub struct Ctx {
    /// The config this request is served by, from its arrival to its end.
    live: Arc<Live>,
    /// When the request arrived, and where it was answered: its response time, counted in
    /// the logging phase.
    started: Option<Instant>,
    answered: Option<Answered>,
    origin: Option<ToOrigin>,
    forward: Option<Forward>,
    /// On a cacheable route: what the cache phase found, and the recording of the answer.
    pub(super) cache: Option<Box<CacheCtx>>,
    /// A body read before placement (a pure route's cache key needs it).
    pub(super) body: Option<Bytes>,
    /// The host the request is for, normalised ([`crate::normalize`]).
    host: Option<String>,
    /// The route matched: its position in the config's `routes`.
    route: Option<usize>,
    /// The client's address, as this edge's peer.
    peer: Option<std::net::IpAddr>,
    /// Whether the client came over TLS.
    pub(super) tls: bool,
    /// This request's id in logs, the guest's included, and sent to a region with it: from
    /// `request_id_header` when the request has a usable one, else made here.
    request_id: Arc<str>,
    /// A health probe's request (`GET /_poplar/health`): neither logged nor counted.
    health: bool,
    /// Counts the request in flight until the context is dropped, after its logging.
    _in_flight: Option<InFlightGuard>,
}

/// A task request on its way to a region.
struct Forward {
    task: String,
    /// The body's digest for the signature, or `signing::STREAMED`.
    body: String,
    reason: Reason,
    attempts: Attempts,
}

impl Edge {
    pub fn new(parts: Parts) -> Edge {
        Edge {
            parts,
            ids: Arc::new(RequestIds::new()),
        }
    }

    /// The HTTPS port to send this plain request to, when its listener redirects.
    fn redirect_port(&self, session: &Session) -> Option<u16> {
        if self.parts.redirects.is_empty() {
            return None;
        }
        let local = session.server_addr()?.as_inet()?;
        let listener = self.parts.redirects.iter().find(|(addr, _)| {
            addr.port() == local.port() && (addr.ip().is_unspecified() || addr.ip() == local.ip())
        });
        listener.map(|(_, port)| *port)
    }

    /// Places a task request: answers it inline (`Ok(true)`), or sets up its forward.
    async fn task_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Live,
        name: &str,
        mode: Mode,
        home: Option<&str>,
    ) -> Result<bool> {
        // Only task requests carry an id (to the guest's log lines and to a region).
        ctx.request_id = self.request_id(live, session.req_header());
        let mode = if live.regions.is_empty() {
            Mode::Edge
        } else {
            mode
        };
        let body_len = crate::body::declared_body_len(session.req_header());
        let reason = match live.placer.place(name, mode, body_len) {
            Placement::Forward(reason) => reason,
            Placement::Unknown => {
                let detail = format!("task {name} has no code at this edge");
                respond::error(session, ErrorKind::Internal, &detail).await?;
                return Ok(true);
            }
            Placement::Inline { task, slot, reason } => {
                let run = Inline {
                    runtime: live.placer.runtime(),
                    task: &task,
                    slot,
                    request_id: ctx.request_id.clone(),
                    placement: Some(format!("edge; reason={}", reason.as_str())),
                    may_fall_back: reason == Reason::Hot,
                    body: ctx.body.clone(),
                    cache: ctx.cache.as_deref_mut().map(|c| (&*self.parts.cache, c)),
                    https: ctx.tls,
                    sender: Some(Sender {
                        peer: ctx.peer,
                        trusted: &live.trusted_proxies,
                    }),
                };
                match task::serve(session, run).await? {
                    Served::Answered => {
                        self.parts.counters.count(name, Site::Edge, reason);
                        ctx.answered = Some(Answered::Edge);
                        return Ok(true);
                    }
                    Served::FallBack => {
                        live.placer.outgrew(name);
                        Reason::Fallback
                    }
                }
            }
        };
        self.parts.counters.count(name, Site::Region, reason);
        ctx.answered = Some(Answered::Region);
        let body = match forwarded_body(session, ctx).await? {
            Some(body) => signing::body_digest(&body),
            None => signing::STREAMED.to_string(),
        };
        ctx.forward = Some(Forward {
            task: name.to_string(),
            body,
            reason,
            attempts: Attempts::new(home.and_then(|h| live.regions.index_of(h))),
        });
        Ok(false)
    }

    /// The id a proxy in front gave the request, if configured and usable (1 to 128 of
    /// `A-Z a-z 0-9 - _ . :`), else a new one.
    fn request_id(&self, live: &Live, req: &RequestHeader) -> Arc<str> {
        let given = live
            .request_id_header
            .as_ref()
            .and_then(|name| req.headers.get(name))
            .map(|v| v.as_bytes())
            .filter(|id| {
                (1..=128).contains(&id.len())
                    && id
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
            });
        match given.and_then(|id| std::str::from_utf8(id).ok()) {
            Some(id) => id.into(),
            None => self.ids.next(),
        }
    }

    fn region_peer(regions: &Regions, fwd: &mut Forward) -> Result<Box<HttpPeer>> {
        let Some((_, peer)) = fwd.attempts.next_peer(regions) else {
            return Err(ErrorKind::NoRegion.to_pingora("no healthy region"));
        };
        Ok(Box::new(peer))
    }

    /// Signs the forward, with the request's id so the region's log lines join the edge's.
    fn sign(ctx: &Ctx, fwd: &Forward, upstream: &mut RequestHeader) -> Result<()> {
        let Some(key) = &ctx.live.key else {
            return Err(ErrorKind::Internal.to_pingora("no forwarding key"));
        };
        let forwarding = signing::Forwarding {
            task: &fwd.task,
            request_id: &ctx.request_id,
            body: &fwd.body,
        };
        signing::sign_request(&key.0, upstream, &forwarding)
    }
}

/// The body of a request about to be forwarded, when the edge can hold it whole first (at
/// most [`KEYED_BODY`]), for its digest in the signature: already read (a pure route's
/// key, an inline try's replay buffer) or read now. Pingora replays it upstream.
async fn forwarded_body(session: &mut Session, ctx: &mut Ctx) -> Result<Option<Bytes>> {
    if let Some(body) = &ctx.body {
        return Ok(Some(body.clone()));
    }
    if let Some(body) = session.get_retry_buffer() {
        return Ok(Some(body));
    }
    match crate::body::declared_body_len(session.req_header()) {
        Some(0) => Ok(Some(Bytes::new())),
        Some(len) if len <= KEYED_BODY && !session.is_body_done() => {
            let body = read_replayable(session).await?;
            ctx.body = Some(body.clone());
            Ok(Some(body))
        }
        _ => Ok(None),
    }
}

/// Reads the whole (small) body, kept for Pingora to replay upstream if the request is
/// forwarded after all.
async fn read_replayable(session: &mut Session) -> Result<Bytes> {
    session.enable_retry_buffering();
    let mut chunks = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        chunks.push(chunk);
    }
    Ok(crate::body::concat(chunks))
}

/// The most body read before placement to key a pure route (Pingora can replay that much).
const KEYED_BODY: u64 = 64 << 10;

impl Edge {
    /// The cache phase of a cacheable route: `Ok(true)` when answered from the cache.
    pub(super) async fn cache_phase(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Live,
        route: &Route,
    ) -> Result<bool> {
        let Some(rc) = route.cache else {
            return Ok(false);
        };
        let req = session.req_header();
        let is_read = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let (mut fwd, mut storable) = (Fwd::UriMiss, req.method == http::Method::GET);
        if req.headers.contains_key(http::header::RANGE) {
            // Served from a stored whole response; forwarded as it is on a miss (a part is
            // never stored).
            storable = false;
        } else if !is_read && rc.pure {
            match crate::body::declared_body_len(req) {
                Some(len) if len <= KEYED_BODY => {
                    ctx.body = Some(read_replayable(session).await?);
                    storable = true;
                }
                _ => (fwd, storable) = (Fwd::Bypass, false),
            }
        } else if !is_read {
            (fwd, storable) = (Fwd::Method, false);
        }
        let filing = cached::filing(
            session,
            ctx.host.as_deref(),
            ctx.body.as_deref(),
            live,
            route,
        );
        let mut cache_ctx = CacheCtx::new(filing, rc.ttl, fwd, storable);
        cache_ctx.replay = Replay {
            method: session.req_header().method.clone(),
            body: ctx.body.clone().unwrap_or_default(),
        };
        match cached::lookup(session, &self.parts.cache, cache_ctx).await? {
            Phase::Answered => Ok(true),
            Phase::Refresh(mut cache_ctx) => {
                let (headers, trusted) =
                    (&mut cache_ctx.filing.request.headers, &live.trusted_proxies);
                forwarded_for_filed(headers, ctx.peer, ctx.tls, trusted);
                self.refresh(live, route, cache_ctx);
                Ok(true)
            }
            Phase::Forward(cache_ctx) => {
                ctx.cache = Some(cache_ctx);
                Ok(false)
            }
        }
    }

    /// Fetches a stale entry's answer again in the background.
    fn refresh(&self, live: &Live, route: &Route, cache_ctx: Box<CacheCtx>) {
        let Some(source) = Source::for_route(live, route, || self.ids.next()) else {
            return;
        };
        let (cache, client) = (self.parts.cache.clone(), self.parts.client.clone());
        refresh::spawn(cache, client, cache_ctx, source);
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            live: self.parts.live.load_full(),
            started: None,
            answered: None,
            origin: None,
            forward: None,
            cache: None,
            body: None,
            host: None,
            route: None,
            peer: None,
            tls: false,
            request_id: Arc::default(),
            health: false,
            _in_flight: Some(self.parts.in_flight.enter()),
        }
    }

    /// No downstream modules: Pingora's default adds a response-compression module that is
    /// switched off yet still runs per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        if refuse_bad_framing(session).await? {
            return Ok(true);
        }
        // Every Poplar server answers its health path, before any route: what a load
        // balancer, Kubernetes or the image's health check asks.
        if session.req_header().uri.path() == HEALTH_PATH {
            ctx.health = true;
            let head = ResponseHeader::build(200, Some(4))?;
            let body = Bytes::from_static(b"ok\n");
            respond::ok(session, head, "text/plain", body).await?;
            return Ok(true);
        }
        strip_poplar_headers(session.req_header_mut());
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match normalize_request(session.req_header_mut()) {
            Ok(host) => ctx.host = host,
            Err(e) => {
                session.set_keepalive(None);
                respond::error(session, ErrorKind::BadRequest, &e).await?;
                return Ok(true);
            }
        }
        if !ctx.tls
            && let Some(port) = self.redirect_port(session)
        {
            let Some(host) = ctx.host.as_deref() else {
                let detail = "a redirect to HTTPS needs a Host";
                respond::error(session, ErrorKind::BadRequest, detail).await?;
                return Ok(true);
            };
            respond::to_https(session, host, port).await?;
            return Ok(true);
        }
        let (req, live) = (session.req_header(), ctx.live.clone());
        let Some(route) =
            live.router
                .route(ctx.host.as_deref(), req.uri.path(), req.method.as_str())
        else {
            respond::error(session, ErrorKind::NoRoute, "").await?;
            return Ok(true);
        };
        ctx.route = Some(route.index);
        if route.cache.is_some() && self.cache_phase(session, ctx, &live, route).await? {
            ctx.answered = Some(Answered::Cache);
            return Ok(true);
        }
        // The request goes on: to an origin, a region or a task. It gets `X-Forwarded-For`
        // where it leaves: for an origin here, in the session's header (parsed with room for
        // it); forwarded, in `upstream_request_filter`; inline, in the guest's copy.
        match &route.target {
            Target::Origin(name) => {
                let trusted = &live.trusted_proxies;
                forwarded_for(session.req_header_mut(), ctx.peer, ctx.tls, trusted)?;
                let Some(pool) = live.origins.get(name) else {
                    let detail = format!("no origin pool {name}");
                    respond::error(session, ErrorKind::Internal, &detail).await?;
                    return Ok(true);
                };
                ctx.answered = Some(Answered::Origin);
                ctx.origin = Some(ToOrigin::new(pool.clone()));
                Ok(false)
            }
            Target::Task(name) => {
                let (mode, home) = (route.placement, route.region.clone());
                self.task_request(session, ctx, &live, name, mode, home.as_deref())
                    .await
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let Some(fwd) = &mut ctx.forward {
            return Self::region_peer(&ctx.live.regions, fwd);
        }
        let Some(to) = &mut ctx.origin else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen for this request",
            ));
        };
        to.next_peer(session.req_header().uri.path())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(to) = &mut ctx.origin {
            to.connected();
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.health {
            return;
        }
        // The cache answering instead of the origin or region is no failure of theirs.
        let e = e.filter(|e| !cached::is_answered_from_store(e));
        if e.is_none()
            && let (Some(started), Some(answered)) = (ctx.started, ctx.answered)
        {
            self.parts.latencies.record(answered, started.elapsed());
        }
        if let Some(status) = session.response_written().map(|r| r.status.as_u16()) {
            ctx.live.route_counts.count(ctx.route, status);
        }
        if let (Some(fwd), Some(_)) = (&mut ctx.forward, e) {
            fwd.attempts.broken(&ctx.live.regions);
        }
        if let Some(to) = &ctx.origin {
            to.ended(e.is_some());
        }
        if let Some(log) = &self.parts.access_log {
            let route = ctx.route.and_then(|i| ctx.live.router.by_index(i));
            let task = route.and_then(|r| match &r.target {
                Target::Task(name) => Some(name.as_str()),
                Target::Origin(_) => None,
            });
            let known = access::Known {
                started: ctx.started,
                id: &ctx.request_id,
                host: ctx.host.as_deref(),
                route: ctx.route,
                task,
                upstream: ctx
                    .origin
                    .as_ref()
                    .and_then(|o| o.addr())
                    .map(|a| a.to_string()),
            };
            access::log(log, session, known);
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(fwd) = &mut ctx.forward {
            if !fwd.attempts.refused(&ctx.live.regions) {
                return ErrorKind::NoRegion.to_pingora(format!("every region refused: {e}"));
            }
            // Nothing was sent: trying the next region is always safe.
            e.set_retry(true);
        }
        if let Some(to) = &ctx.origin {
            to.refused(&mut e);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if cached::is_answered_from_store(&e) {
            let mut e = e;
            e.set_retry(false);
            return e;
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        let forward = ctx.forward.as_mut().map(|fwd| retry::Forwarding {
            attempts: &mut fwd.attempts,
            regions: &ctx.live.regions,
            replayable: fwd.body != signing::STREAMED,
        });
        retry::decide(session, &mut e, forward, client_reused);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(fwd) = &ctx.forward {
            let trusted = &ctx.live.trusted_proxies;
            forwarded_for(upstream, ctx.peer, ctx.tls, trusted)?;
            Self::sign(ctx, fwd, upstream)?;
        }
        if let Some(host) = ctx.origin.as_ref().and_then(|o| o.host()) {
            upstream.insert_header(http::header::HOST, host)?;
        }
        if let Some(cache) = &mut ctx.cache {
            cached::add_validators(cache, upstream)?;
            if ctx.origin.is_some() {
                let capability = crate::cache::policy::SURROGATE_CAPABILITY;
                upstream.append_header("surrogate-capability", capability)?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(fwd) = &mut ctx.forward
            && let Some(region) = fwd.attempts.answered(&ctx.live.regions)
        {
            let name = &region.name;
            let placement = format!("region; name={name}; reason={}", fwd.reason.as_str());
            response.insert_header("x-poplar-placement", placement)?;
        }
        // A region names the version that ran: news of a deploy, for a task from regions.
        if let (Some(fwd), Some(digest)) = (&ctx.forward, response.headers.get(DIGEST_HEADER))
            && let Ok(digest) = digest.to_str()
        {
            ctx.live.placer.observed(&fwd.task, digest);
        }
        if let Some(cache) = &mut ctx.cache {
            if cache.answer_from_store(&self.parts.cache, &response.as_owned_parts()) {
                return Err(cached::answered_from_store());
            }
            let length = crate::body::content_length(&response.headers)
                .and_then(|n| usize::try_from(n).ok());
            let status = cache.on_head(&self.parts.cache, &response.as_owned_parts(), length);
            response.insert_header("cache-status", status)?;
            let bodiless = matches!(response.status.as_u16(), 204 | 304);
            if length == Some(0) || bodiless || session.req_header().method == http::Method::HEAD {
                // No body will pass the body filter: the answer is complete now.
                cache.on_end(&self.parts.cache);
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(cache) = &mut ctx.cache {
            if let Some(chunk) = body {
                cache.on_body(&self.parts.cache, chunk);
            }
            if end_of_stream {
                cache.on_end(&self.parts.cache);
            }
        }
        Ok(None)
    }

    /// `fail_to_proxy` logs every error it answers, once, at its kind's level.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _e: &Error) -> bool {
        true
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // Pingora closes the client's connection after a failed proxy attempt (it passes on
        // the attempt's own verdict, not `can_reuse_downstream`): the answer says so with
        // `Connection: close`, or a client that reuses connections sends its next request
        // into one being closed and sees it hang up (as the cache test suite's client did).
        session.set_keepalive(None);
        if cached::is_answered_from_store(e)
            && let Some(cache) = &mut ctx.cache
        {
            ctx.answered = Some(Answered::Cache);
            let status = cached::serve_answer(session, &self.parts.cache, cache).await;
            return FailToProxy {
                error_code: status.unwrap_or(0),
                can_reuse_downstream: false,
            };
        }
        let kind = respond::classify_proxy_error(e, ctx.forward.is_some());
        let Some(kind) = kind else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(cache) = &ctx.cache
            && let Some(status) =
                cached::serve_stale_on_error(session, &self.parts.cache, cache).await
        {
            log::warn!("served a stale response: {e}");
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let status = (ctx.cache.as_ref()).map(|c| ("cache-status", c.error_status()));
        let headers = status.as_slice();
        if let Err(write) = respond::error_with(session, kind, &e.to_string(), None, headers).await
        {
            log::debug!("cannot write the error response: {write}");
        }
        FailToProxy {
            error_code: kind.status(),
            can_reuse_downstream: false,
        }
    }
}
