//! The edge's cache phase: look up before placement, answer hits (fresh, or stale within
//! `stale-while-revalidate`), coalesce concurrent misses, and record what comes back,
//! inline or proxied, to store it.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::cache::range;
use crate::cache::{
    Cache, CacheCtx, Entry, Filing, Fwd, KeyParts, Lookup, Siblings, Status, Tags, Turn, Wants,
    lock, primary_key,
};
use crate::config::Target;
use crate::proxy::EdgeLive as Live;
use crate::proxy::respond::{self, CACHE_STATUS, PLACEMENT};
use crate::routing::Route;

/// Headers never copied from a stored response: hop-by-hop, framing, and our own.
static NOT_REPLAYED: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &header::TRANSFER_ENCODING,
    &header::CONTENT_LENGTH,
    &header::AGE,
    &CACHE_STATUS,
    &PLACEMENT,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

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
        file_request(&mut ctx.filing, session);
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    // Judged on the session's request (its headers are the filed copy's): a fresh hit makes
    // no copy.
    let wants = Wants::of(session.req_header());
    if wants.no_store {
        // Neither served from the cache nor stored in it (RFC 9111, 5.2.1.5).
        (ctx.fwd, ctx.storable) = (Fwd::Request, false);
        cache.count_miss();
        file_request(&mut ctx.filing, session);
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    let now = cache.now();
    let found = match cache.lookup_for(&ctx.filing.key, session.req_header(), &wants, now) {
        Lookup::Fresh(entry) => {
            cache.count_hit();
            write(session, &entry, &hit(&entry, now, None, false), now).await?;
            return Ok(Phase::Answered);
        }
        other => other,
    };
    file_request(&mut ctx.filing, session);
    match found {
        // Served stale only to a request that states no wishes of its own.
        Lookup::Stale(entry)
            if wants == Wants::default() && entry.may_revalidate_in_background(now) =>
        {
            cache.count_stale_served();
            let status = hit(&entry, now, Some("stale-while-revalidate"), false);
            write(session, &entry, &status, now).await?;
            ctx.fwd = Fwd::Stale;
            return Ok(lead_a_refresh(cache, ctx));
        }
        Lookup::Stale(entry) => {
            ctx.fwd = if wants.no_cache {
                Fwd::Request
            } else {
                Fwd::Stale
            };
            ctx.stale = Some(entry);
        }
        Lookup::VaryMiss => ctx.fwd = Fwd::VaryMiss,
        // (A fresh entry was answered above.)
        Lookup::Miss | Lookup::Fresh(_) => ctx.fwd = Fwd::UriMiss,
    }
    cache.count_miss();
    if wants.only_if_cached {
        // Nothing stored may answer it, and it asked for nothing else (RFC 9111, 5.2.1.7).
        let status = Status::Forward {
            fwd: ctx.fwd,
            stored: false,
            detail: Some("only-if-cached"),
        };
        let mut head = ResponseHeader::build(504, Some(3))?;
        head.insert_header("content-length", "0")?;
        head.insert_header("cache-status", status.header())?;
        session.write_response_header(Box::new(head), true).await?;
        return Ok(Phase::Answered);
    }
    if ctx.filing.request.headers.contains_key(http::header::RANGE) {
        // Its answer, a part, fills nothing: no other request waits for it.
        return Ok(Phase::Forward(Box::new(ctx)));
    }
    coalesce(session, cache, ctx, &wants).await
}

/// What a filter returns to end the exchange with the origin or region when the cache
/// answers instead ([`CacheCtx::answer`]): Pingora then calls `fail_to_proxy`, which serves
/// it ([`serve_answer`]). Not a failure: nothing counts it as one.
pub fn answered_from_store() -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::Custom(ANSWERED_FROM_STORE),
        "the cache answers instead",
    )
}

const ANSWERED_FROM_STORE: &str = "answered from the cache";

/// Whether `e` is [`answered_from_store`].
pub fn is_answered_from_store(e: &pingora_error::Error) -> bool {
    matches!(e.etype(), pingora_error::ErrorType::Custom(what) if *what == ANSWERED_FROM_STORE)
}

/// Writes the answer the cache gives instead of the origin's or region's; its status.
pub async fn serve_answer(session: &mut Session, cache: &Cache, ctx: &mut CacheCtx) -> Option<u16> {
    let (entry, status) = ctx.answer.take()?;
    write_answer(session, cache, &entry, &status).await
}

/// Writes a stored answer given in place of the origin's, region's or task's (a stale one is
/// counted as served stale); its status, `None` when it could not be written.
async fn write_answer(
    session: &mut Session,
    cache: &Cache,
    entry: &Entry,
    status: &Status,
) -> Option<u16> {
    match write(session, entry, status, cache.now()).await {
        Ok(()) => {
            if matches!(status, Status::Hit { .. }) {
                cache.count_stale_served();
            }
            session.response_written().map(|r| r.status.as_u16())
        }
        Err(e) => {
            log::debug!("cannot write a stored answer: {e}");
            None
        }
    }
}

/// The validators of `ctx`'s stale entry, to send with the request, unless the client sent
/// its own (then its `304`, if any, is its own to take).
pub fn add_validators(
    ctx: &mut CacheCtx,
    upstream: &mut pingora_http::RequestHeader,
) -> Result<()> {
    let Some(stale) = &ctx.stale else {
        return Ok(());
    };
    let asks = [
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
    ];
    if asks.iter().any(|h| upstream.headers.contains_key(*h)) {
        return Ok(());
    }
    for (name, value) in stale.validators() {
        upstream.insert_header(name, value.clone())?;
        ctx.validating = true;
    }
    Ok(())
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
        // Only a request without directives of its own leads a refresh.
        let (req, now) = (&ctx.filing.request, cache.now());
        let refreshed = cache.lookup_for(&ctx.filing.key, req, &Wants::default(), now);
        if !matches!(refreshed, Lookup::Fresh(_)) {
            ctx.leader = Some(leader);
            return Phase::Refresh(Box::new(ctx));
        }
    }
    Phase::Answered
}

/// A miss: the first request for its key (and variant) fills it; the others wait for that
/// answer, up to `lock_timeout`, and go forward themselves if it did not come.
async fn coalesce(
    session: &mut Session,
    cache: &Cache,
    mut ctx: CacheCtx,
    wants: &Wants,
) -> Result<Phase> {
    let lock = cache.lock_key(&ctx.filing.key, &ctx.filing.request);
    match cache.locks.acquire(&lock) {
        Turn::Lead(leader) => ctx.leader = Some(leader),
        Turn::Wait(rx) => {
            cache.count_coalesced();
            if lock::wait(rx, cache.spec().lock_timeout).await
                && let Lookup::Fresh(entry) =
                    cache.lookup_for(&ctx.filing.key, &ctx.filing.request, wants, cache.now())
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
    if session.response_written().is_some() {
        return None;
    }
    let (entry, status) = ctx.stale_if_error(cache.now())?;
    write_answer(session, cache, &entry, &status).await
}

/// Writes a stored response; its head shares names and values with the entry's
/// ([`respond::head`]).
async fn write(
    session: &mut Session,
    entry: &Entry,
    status: &Status,
    now: SystemTime,
) -> Result<()> {
    let age = HeaderValue::from(entry.age(now));
    let cache_status = respond::value(status.header(), "cache-status")?;
    if not_modified(session.req_header(), &entry.headers) {
        let mut head = HeaderMap::with_capacity(10);
        for name in [
            header::ETAG,
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
            header::CONTENT_LOCATION,
            header::DATE,
        ] {
            for value in entry.headers.get_all(&name) {
                head.append(name.clone(), value.clone());
            }
        }
        head.insert(header::AGE, age);
        head.insert(PLACEMENT.clone(), HeaderValue::from_static("cache"));
        head.insert(CACHE_STATUS.clone(), cache_status);
        let head = respond::head(http::StatusCode::NOT_MODIFIED, head);
        return session.write_response_header(Box::new(head), true).await;
    }
    let mut headers = HeaderMap::with_capacity(entry.headers.len() + 4);
    for (name, value) in &entry.headers {
        if !NOT_REPLAYED.contains(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::AGE, age);
    // 204 and 304 have no body, and no Content-Length (RFC 9110, 8.6).
    if !matches!(entry.status.as_u16(), 204 | 304) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    headers.insert(PLACEMENT.clone(), HeaderValue::from_static("cache"));
    headers.insert(CACHE_STATUS.clone(), cache_status.clone());
    let mut head = respond::head(entry.status, headers);
    let mut body = entry.body.clone();
    if entry.status == http::StatusCode::OK {
        match range::wanted(session.req_header(), &entry.headers, body.len()) {
            range::Wanted::Whole => {}
            range::Wanted::Part(part) => {
                head.set_status(206)?;
                let content_range = format!("bytes {}-{}/{}", part.start, part.end - 1, body.len());
                head.insert_header(header::CONTENT_RANGE, content_range)?;
                head.insert_header(header::CONTENT_LENGTH, part.len())?;
                body = body.slice(part);
            }
            range::Wanted::Unsatisfiable => {
                let mut head = HeaderMap::with_capacity(4);
                let content_range = format!("bytes */{}", body.len());
                head.insert(
                    header::CONTENT_RANGE,
                    respond::value(content_range, "content-range")?,
                );
                head.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                head.insert(PLACEMENT.clone(), HeaderValue::from_static("cache"));
                head.insert(CACHE_STATUS.clone(), cache_status);
                let head = respond::head(http::StatusCode::RANGE_NOT_SATISFIABLE, head);
                return session.write_response_header(Box::new(head), true).await;
            }
        }
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let end = head_only || body.is_empty();
    session.write_response_header(Box::new(head), end).await?;
    if !end {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Whether a conditional GET or HEAD can be answered 304 from a stored response
/// (RFC 9110, section 13): `If-None-Match` against its `ETag` (weak comparison), else
/// `If-Modified-Since` against its `Last-Modified`.
fn not_modified(req: &pingora_http::RequestHeader, stored: &HeaderMap) -> bool {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return false;
    }
    let text = |map: &'_ HeaderMap, name: HeaderName| {
        map.get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(tags) = text(&req.headers, header::IF_NONE_MATCH) {
        let Some(etag) = text(stored, header::ETAG) else {
            return false;
        };
        // Weak comparison, and lenient on quotes an origin or client left off.
        let weak = |t: &str| {
            t.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        };
        return tags
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == weak(&etag));
    }
    let date = |map, name| text(map, name).and_then(|d| httpdate::parse_http_date(&d).ok());
    let since = date(&req.headers, header::IF_MODIFIED_SINCE);
    let modified = date(stored, header::LAST_MODIFIED);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// Files the request with `filing`: a copy of the session's, judged as a GET when a pure
/// route keys its body (the body is in the key).
fn file_request(filing: &mut Filing, session: &Session) {
    let mut request = session.req_header().as_owned_parts();
    if filing.by_body {
        request.method = http::Method::GET;
    }
    filing.request = request;
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
    let (task, file_version) = match &route.target {
        Target::Task(name) => (Some(name.clone()), live.versions.get(name)),
        Target::Origin(_) => (None, None),
    };
    // A task from regions has no file: its key carries the version they said is current.
    let remote = match (&task, file_version) {
        (Some(name), None) => Some(live.placer.version(name).unwrap_or_default()),
        _ => None,
    };
    let version = file_version.or(remote.as_ref()).map_or("", String::as_str);
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
    let tags = Tags {
        route: route.index,
        task,
        path: req.uri.path().to_string(),
    };
    let unsafe_method =
        body.is_none() && !matches!(req.method, http::Method::GET | http::Method::HEAD);
    let siblings = unsafe_method.then(|| {
        Box::new(Siblings {
            route: route.index,
            version: version.to_string(),
            host: host.to_string(),
        })
    });
    Filing {
        key,
        tags,
        // Filed by `lookup` when the request goes on ([`file_request`]).
        request: http::Request::new(()).into_parts().0,
        by_body: body.is_some(),
        version: remote,
        siblings,
    }
}
