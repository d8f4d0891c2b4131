//! The edge's cache phase: look up before placement, answer hits (fresh, or stale within
//! `stale-while-revalidate`), coalesce concurrent misses, and record what comes back,
//! inline or proxied, to store it.

use std::time::SystemTime;

use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::cache::{
    Cache, CacheCtx, Entry, Filing, Fwd, KeyParts, Lookup, Status, Tags, Turn, lock, policy,
    primary_key,
};
use crate::config::Target;
use crate::proxy::EdgeLive as Live;
use crate::routing::Route;

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

/// What the cache phase did with a request.
pub enum Phase {
    /// Answered from the cache.
    Answered,
    /// Go on: run or forward it, then record the answer.
    Forward(Box<CacheCtx>),
    /// Answered with a stale entry; this request leads its refresh, in the background.
    Refresh(Box<CacheCtx>),
}

/// Looks the request up. `filing` is where its answer would be stored.
pub async fn lookup(session: &mut Session, cache: &Cache, mut ctx: CacheCtx) -> Result<Phase> {
    if matches!(ctx.fwd, Fwd::Method | Fwd::Bypass) {
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    if policy::request_bypasses(&ctx.filing.request) {
        ctx.fwd = Fwd::Request;
        cache.count_miss();
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    let now = cache.now();
    match cache.lookup(&ctx.filing.key, &ctx.filing.request, now) {
        Lookup::Fresh(entry) => {
            cache.count_hit();
            write(session, &entry, &hit(&entry, now, None, false), now).await?;
            return Ok(Phase::Answered);
        }
        Lookup::Stale(entry) if entry.may_revalidate_in_background(now) => {
            cache.count_stale_served();
            let status = hit(&entry, now, Some("stale-while-revalidate"), false);
            write(session, &entry, &status, now).await?;
            ctx.fwd = Fwd::Stale;
            return Ok(lead_a_refresh(cache, ctx));
        }
        Lookup::Stale(entry) => {
            ctx.fwd = Fwd::Stale;
            ctx.stale = Some(entry);
        }
        Lookup::VaryMiss => ctx.fwd = Fwd::VaryMiss,
        Lookup::Miss => ctx.fwd = Fwd::UriMiss,
    }
    cache.count_miss();
    coalesce(session, cache, ctx).await
}

fn hit(
    entry: &Entry,
    now: std::time::SystemTime,
    detail: Option<&'static str>,
    collapsed: bool,
) -> Status {
    Status::Hit {
        ttl: entry.ttl(now),
        detail,
        collapsed,
    }
}

/// After a stale answer went out: this request refreshes the entry in the background,
/// unless another is at it or it was refreshed between the lookup and the lock.
fn lead_a_refresh(cache: &Cache, mut ctx: CacheCtx) -> Phase {
    let lock = cache.lock_key(&ctx.filing.key, &ctx.filing.request);
    if let Turn::Lead(leader) = cache.locks.acquire(&lock) {
        let refreshed = cache.lookup(&ctx.filing.key, &ctx.filing.request, cache.now());
        if !matches!(refreshed, Lookup::Fresh(_)) {
            ctx.leader = Some(leader);
            return Phase::Refresh(Box::new(ctx));
        }
    }
    Phase::Answered
}

/// A miss: the first request for its key (and variant) fills it; the others wait for that
/// answer, up to `lock_timeout`, and go forward themselves if it did not come.
async fn coalesce(session: &mut Session, cache: &Cache, mut ctx: CacheCtx) -> Result<Phase> {
    let lock = cache.lock_key(&ctx.filing.key, &ctx.filing.request);
    match cache.locks.acquire(&lock) {
        Turn::Lead(leader) => ctx.leader = Some(leader),
        Turn::Wait(rx) => {
            cache.count_coalesced();
            if lock::wait(rx, cache.spec().lock_timeout).await
                && let Lookup::Fresh(entry) =
                    cache.lookup(&ctx.filing.key, &ctx.filing.request, cache.now())
            {
                let now = cache.now();
                write(session, &entry, &hit(&entry, now, None, true), now).await?;
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
    let now = cache.now();
    if !entry.may_serve_on_error(now) || session.response_written().is_some() {
        return None;
    }
    let status = hit(entry, now, Some("stale-if-error"), false);
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

/// Where the answer to this request for `host` (normalised), with `body` when a pure route
/// keys it, is stored.
pub fn filing(
    session: &Session,
    host: Option<&str>,
    body: Option<&[u8]>,
    live: &Live,
    route: &Route,
) -> Filing {
    let host = host.unwrap_or("");
    let req = session.req_header();
    let (task, version) = match &route.target {
        Target::Task(name) => (
            Some(name.clone()),
            live.versions.get(name).map_or("", String::as_str),
        ),
        Target::Origin(_) => (None, ""),
    };
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
