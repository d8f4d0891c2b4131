//! The edge's cache phase: look up before placement, answer hits (fresh, or stale within
//! `stale-while-revalidate`), coalesce concurrent misses, and record what comes back,
//! inline or proxied, to store it.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::edge::{Ctx, Edge};
use super::refresh::{self, Source};
use super::task;
use crate::cache::{
    Cache, Entry, Filing, KeyParts, Leader, Lookup, Status, Tags, Turn, Verdict, lock, policy,
    primary_key,
};
use crate::config::Target;
use crate::regions::signing;
use crate::routing::Route;

/// RFC 9211 `fwd=` values.
const FWD_MISS: &str = "uri-miss";
const FWD_BYPASS: &str = "bypass";
const FWD_METHOD: &str = "method";

/// Headers never copied from a stored response: hop-by-hop, framing, and our own.
const NOT_REPLAYED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "age",
    "cache-status",
    "x-poplar-placement",
];

/// A cacheable route's per-request cache state.
pub struct CacheCtx {
    pub filing: Filing,
    pub ttl: Option<std::time::Duration>,
    /// Why the request goes forward (RFC 9211 `fwd=`).
    pub fwd: &'static str,
    /// Whether the answer may be stored (GET, or any method on a pure route; not HEAD).
    pub storable: bool,
    /// A stale entry, for `stale-if-error`.
    pub stale: Option<Arc<Entry>>,
    /// Held while this request fills the key, so others wait for it.
    pub leader: Option<Leader>,
    /// The request as it came, for a background refresh to replay: its method (a pure
    /// route's is judged as a GET in `filing`) and, on a pure route, its body.
    pub replay: Replay,
    recording: Option<Recording>,
    /// Set once the response head was judged.
    status: Option<Status>,
}

struct Recording {
    verdict: Verdict,
    head: http::response::Parts,
    body: BytesMut,
}

/// What a refresh sends again.
#[derive(Default)]
pub struct Replay {
    pub method: http::Method,
    pub body: bytes::Bytes,
}

/// What the cache phase did with a request.
pub enum Phase {
    /// Answered from the cache.
    Answered,
    /// Go on: run or forward it, then record the answer.
    Forward(Box<CacheCtx>),
    /// Answered with a stale entry; this request leads its refresh, in the background.
    Refresh(Box<CacheCtx>),
}

impl CacheCtx {
    pub fn new(
        filing: Filing,
        ttl: Option<std::time::Duration>,
        fwd: &'static str,
        storable: bool,
    ) -> CacheCtx {
        CacheCtx {
            filing,
            ttl,
            fwd,
            storable,
            stale: None,
            leader: None,
            replay: Replay::default(),
            recording: None,
            status: None,
        }
    }

    /// Judges the response head; returns the `Cache-Status` to send with it.
    pub fn on_head(&mut self, cache: &Cache, head: &http::response::Parts) -> String {
        let mut detail = None;
        if self.fwd == FWD_METHOD && (head.status.is_success() || head.status.is_redirection()) {
            cache.invalidate(&self.filing.key);
        }
        if self.storable {
            match policy::judge(&self.filing.request, head, self.ttl, SystemTime::now()) {
                Ok(verdict) => {
                    let declared = head
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    if declared.is_none_or(|len: usize| cache.fits(len)) {
                        self.recording = Some(Recording {
                            verdict,
                            head: head.clone(),
                            body: BytesMut::new(),
                        });
                    } else {
                        detail = Some("too-large");
                    }
                }
                Err(why) => detail = Some(why.as_str()),
            }
        }
        let status = Status::Forward {
            fwd: self.fwd,
            stored: self.recording.is_some(),
            detail,
        };
        let header = status.header();
        self.status = Some(status);
        header
    }

    /// A piece of the body on its way to the client.
    pub fn on_body(&mut self, cache: &Cache, chunk: &[u8]) {
        if let Some(r) = &mut self.recording {
            if cache.fits(r.body.len() + chunk.len()) {
                r.body.extend_from_slice(chunk);
            } else {
                self.recording = None;
            }
        }
    }

    /// The body is complete: store it.
    pub fn on_end(&mut self, cache: &Cache) {
        log::debug!(
            "cache: end of {:?}, recording: {}",
            self.filing.tags.path,
            self.recording.is_some()
        );
        if let Some(r) = self.recording.take() {
            cache.store(
                &self.filing,
                r.verdict,
                &r.head,
                r.body.freeze(),
                SystemTime::now(),
            );
        }
        self.leader = None;
    }

    /// The `Cache-Status` for an error answered by Poplar on this route.
    pub fn error_status(&self) -> String {
        Status::Forward {
            fwd: self.fwd,
            stored: false,
            detail: Some("error"),
        }
        .header()
    }
}

/// Looks the request up. `filing` is where its answer would be stored.
pub async fn lookup(session: &mut Session, cache: &Cache, mut ctx: CacheCtx) -> Result<Phase> {
    if ctx.fwd == FWD_METHOD || ctx.fwd == FWD_BYPASS {
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    if policy::request_bypasses(&ctx.filing.request) {
        ctx.fwd = "request";
        cache.count_miss();
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    let now = SystemTime::now();
    match cache.lookup(&ctx.filing.key, &ctx.filing.request, now) {
        Lookup::Fresh(entry) => {
            cache.count_hit();
            let status = Status::Hit {
                ttl: entry.ttl(now),
                detail: None,
                collapsed: false,
            };
            write(session, &entry, &status, now).await?;
            return Ok(Phase::Answered);
        }
        Lookup::Stale(entry) if entry.may_revalidate_in_background(now) => {
            cache.count_stale_served();
            let status = Status::Hit {
                ttl: entry.ttl(now),
                detail: Some("stale-while-revalidate"),
                collapsed: false,
            };
            write(session, &entry, &status, now).await?;
            ctx.fwd = "stale";
            if let Turn::Lead(leader) = cache.locks.acquire(&ctx.filing.key) {
                // A refresh may have finished between the lookup and the lock.
                let refreshed =
                    cache.lookup(&ctx.filing.key, &ctx.filing.request, SystemTime::now());
                if !matches!(refreshed, Lookup::Fresh(_)) {
                    ctx.leader = Some(leader);
                    return Ok(Phase::Refresh(Box::new(ctx)));
                }
            }
            return Ok(Phase::Answered);
        }
        Lookup::Stale(entry) => {
            ctx.fwd = "stale";
            ctx.stale = Some(entry);
        }
        Lookup::VaryMiss => ctx.fwd = "vary-miss",
        Lookup::Miss => ctx.fwd = "uri-miss",
    }
    cache.count_miss();
    match cache.locks.acquire(&ctx.filing.key) {
        Turn::Lead(leader) => ctx.leader = Some(leader),
        Turn::Wait(rx) => {
            cache.count_coalesced();
            if lock::wait(rx, cache.spec().lock_timeout).await
                && let Lookup::Fresh(entry) =
                    cache.lookup(&ctx.filing.key, &ctx.filing.request, SystemTime::now())
            {
                let now = SystemTime::now();
                let status = Status::Hit {
                    ttl: entry.ttl(now),
                    detail: None,
                    collapsed: true,
                };
                write(session, &entry, &status, now).await?;
                return Ok(Phase::Answered);
            }
        }
    }
    Ok(Phase::Forward(Box::new(ctx)))
}

/// Serves a stale entry because the region or origin failed, if its `stale-if-error` allows.
pub async fn serve_stale_on_error(
    session: &mut Session,
    cache: &Cache,
    ctx: &CacheCtx,
) -> Option<u16> {
    log::debug!(
        "cache: stale candidate for {:?}: {}",
        ctx.filing.tags.path,
        ctx.stale.is_some()
    );
    let entry = ctx.stale.as_ref()?;
    let now = SystemTime::now();
    if !entry.may_serve_on_error(now) || session.response_written().is_some() {
        return None;
    }
    let status = Status::Hit {
        ttl: entry.ttl(now),
        detail: Some("stale-if-error"),
        collapsed: false,
    };
    match write(session, entry, &status, now).await {
        Ok(()) => {
            cache.count_stale_served();
            Some(entry.status.as_u16())
        }
        Err(e) => {
            log::debug!("cannot write a stale response: {e}");
            None
        }
    }
}

/// Writes a stored response.
async fn write(
    session: &mut Session,
    entry: &Entry,
    status: &Status,
    now: SystemTime,
) -> Result<()> {
    let mut head = ResponseHeader::build(entry.status, Some(entry.headers.len() + 5))?;
    for (name, value) in &entry.headers {
        if !NOT_REPLAYED.contains(&name.as_str()) {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    head.insert_header("age", entry.age(now).to_string())?;
    head.insert_header("content-length", entry.body.len())?;
    head.insert_header("x-poplar-placement", "cache")?;
    head.insert_header("cache-status", status.header())?;
    if not_modified(session.req_header(), &entry.headers) {
        let mut head = ResponseHeader::build(304, Some(8))?;
        for name in [
            "etag",
            "cache-control",
            "expires",
            "vary",
            "last-modified",
            "content-location",
            "date",
        ] {
            if let Some(value) = entry.headers.get(name) {
                head.insert_header(name, value.clone())?;
            }
        }
        head.insert_header("age", entry.age(now).to_string())?;
        head.insert_header("x-poplar-placement", "cache")?;
        head.insert_header("cache-status", status.header())?;
        return session.write_response_header(Box::new(head), true).await;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let end = head_only || entry.body.is_empty();
    session.write_response_header(Box::new(head), end).await?;
    if !end {
        session
            .write_response_body(Some(entry.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// Whether a conditional GET or HEAD can be answered 304 from a stored response
/// (RFC 9110, section 13): `If-None-Match` against its `ETag` (weak comparison), else
/// `If-Modified-Since` against its `Last-Modified`.
fn not_modified(req: &pingora_http::RequestHeader, stored: &http::HeaderMap) -> bool {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return false;
    }
    let text = |map: &http::HeaderMap, name| {
        map.get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(tags) = text(&req.headers, "if-none-match") {
        let Some(etag) = text(stored, "etag") else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return tags
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == weak(&etag));
    }
    let since =
        text(&req.headers, "if-modified-since").and_then(|d| httpdate::parse_http_date(&d).ok());
    let modified = text(stored, "last-modified").and_then(|d| httpdate::parse_http_date(&d).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// The most body read before placement to key a pure route (Pingora can replay that much).
const KEYED_BODY: u64 = 64 << 10;

impl Edge {
    /// The cache phase of a cacheable route: `Ok(true)` when answered from the cache.
    pub(super) async fn cache_phase(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<bool> {
        let Some(rc) = route.cache else {
            return Ok(false);
        };
        let req = session.req_header();
        let is_read = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let (mut fwd, mut storable) = (FWD_MISS, req.method == http::Method::GET);
        if req.headers.contains_key(http::header::RANGE) {
            (fwd, storable) = (FWD_BYPASS, false);
        } else if !is_read && rc.pure {
            match task::declared_body_len(req) {
                Some(len) if len <= KEYED_BODY => {
                    // Kept for a replay if the request is forwarded after all.
                    session.enable_retry_buffering();
                    let mut chunks = Vec::new();
                    while let Some(chunk) = session.read_request_body().await? {
                        chunks.push(chunk);
                    }
                    ctx.body = Some(task::concat(chunks));
                    storable = true;
                }
                _ => (fwd, storable) = (FWD_BYPASS, false),
            }
        } else if !is_read {
            (fwd, storable) = (FWD_METHOD, false);
        }
        let filing = self.filing(session, route, ctx.body.as_deref());
        let mut cache_ctx = CacheCtx::new(filing, rc.ttl, fwd, storable);
        cache_ctx.replay = Replay {
            method: session.req_header().method.clone(),
            body: ctx.body.clone().unwrap_or_default(),
        };
        match lookup(session, &self.parts.cache, cache_ctx).await? {
            Phase::Answered => Ok(true),
            Phase::Refresh(cache_ctx) => {
                self.refresh(route, cache_ctx);
                Ok(true)
            }
            Phase::Forward(cache_ctx) => {
                ctx.cache = Some(cache_ctx);
                Ok(false)
            }
        }
    }

    /// Where the answer to this request is stored.
    fn filing(&self, session: &Session, route: &Route, body: Option<&[u8]>) -> Filing {
        let req = session.req_header();
        let (task, version) = match &route.target {
            Target::Task(name) => (
                Some(name.clone()),
                self.parts.versions.get(name).map_or("", String::as_str),
            ),
            Target::Origin(_) => (None, ""),
        };
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        // An unsafe method on a route that is not pure is keyed as the GET it invalidates.
        let method = if body.is_some() {
            req.method.as_str()
        } else {
            "GET"
        };
        let key = primary_key(&KeyParts {
            route: route.index,
            version,
            method,
            host,
            path_and_query,
            body,
        });
        let mut request = req.as_owned_parts();
        if body.is_some() {
            // A pure task's answer is judged as a GET's: the body is in the key.
            request.method = http::Method::GET;
        }
        let tags = Tags {
            route: route.index,
            task,
            path: req.uri.path().to_string(),
        };
        Filing { key, tags, request }
    }

    /// Fetches a stale entry's answer again in the background.
    fn refresh(&self, route: &Route, cache_ctx: Box<CacheCtx>) {
        let source = match &route.target {
            Target::Origin(addr) => Source::Http {
                addr: *addr,
                extra: Vec::new(),
            },
            Target::Task(name) if !self.parts.regions.is_empty() => {
                let home = route
                    .region
                    .as_deref()
                    .and_then(|h| self.parts.regions.index_of(h));
                let region = self
                    .parts
                    .regions
                    .choose(home, &[])
                    .and_then(|i| self.parts.regions.spec(i));
                let (Some(region), Some(key)) = (region, &self.parts.key) else {
                    return;
                };
                let req = &cache_ctx.filing.request;
                let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
                let method = cache_ctx.replay.method.as_str();
                let extra = signing::headers(&key.0, method, path_and_query, name).into();
                Source::Http {
                    addr: region.address,
                    extra,
                }
            }
            Target::Task(name) => {
                let Some(task) = self.parts.placer.loaded(name) else {
                    return;
                };
                Source::Inline {
                    runtime: self.parts.placer.runtime().clone(),
                    task,
                }
            }
        };
        refresh::spawn(self.parts.cache.clone(), cache_ctx, source);
    }
}
