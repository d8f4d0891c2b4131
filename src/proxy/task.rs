//! Serving a task request inline: read the request body within the task's limit, run the
//! task, and write its response back through the Pingora session. Shared by the edge and
//! the region.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::sync::OwnedSemaphorePermit;

use super::{Sender, cached, forwarded_for_filed, respond};
use crate::cache::Cache;
use crate::cache::CacheCtx;
use crate::errors::ErrorKind;
use crate::wasm::{GuestResponse, Runtime, Task, TaskError};

/// Bodies up to this size are collected and sent with a `content-length`; longer ones
/// stream with chunked encoding.
const COLLECT_LIMIT: usize = 64 << 10;
/// How long a body may take to be written whole and still be sent with a length.
const COLLECT_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Response headers a task may not set: hop-by-hop ones, and framing, which Poplar owns.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// How an inline run is set up.
pub struct Inline<'a> {
    pub runtime: &'a Runtime,
    pub task: &'a Task,
    /// Taken already, or `None` to wait for one within the task's deadline.
    pub slot: Option<OwnedSemaphorePermit>,
    pub request_id: Arc<str>,
    /// The `x-poplar-placement` value to send, if any.
    pub placement: Option<String>,
    /// Keep the body for a replay to a region if the run outgrows the edge.
    pub may_fall_back: bool,
    /// The body, when it was read already (to key a pure route's cache entry).
    pub body: Option<Bytes>,
    /// The cache to record the answer in, on a cacheable route.
    pub cache: Option<(&'a Cache, &'a mut CacheCtx)>,
    /// Whether the client came over TLS: the guest sees scheme `https`.
    pub https: bool,
    /// Who sent the request, for its `X-Forwarded-For`; `None` when it says so already.
    pub sender: Option<Sender<'a>>,
}

/// How an inline run ended.
pub enum Served {
    /// A response went out (the task's, or an error).
    Answered,
    /// The task hit the edge's deadline or memory cap before answering (logged); nothing
    /// was sent and the body can be replayed.
    FallBack,
}

/// Runs the task for the request in `session` and writes the answer, whatever it is.
pub async fn serve(session: &mut Session, mut run: Inline<'_>) -> Result<Served> {
    if let Some(left) = run.task.failures.paused(Instant::now()) {
        paused(session, &run, left).await?;
        return Ok(Served::Answered);
    }
    let Some(body) = body_for(session, &mut run).await? else {
        return Ok(Served::Answered);
    };
    let request = guest_request(session, body, run.https, run.sender);
    let started = Instant::now();
    let Some(slot) = slot_for(session, &mut run, started).await? else {
        return Ok(Served::Answered);
    };
    let (task, request_id) = (run.task, run.request_id.clone());
    let outcome = async {
        let mut response = task.call(slot, request, request_id).await?;
        let collected = response.collect_up_to(COLLECT_LIMIT, COLLECT_WAIT).await?;
        Ok::<_, TaskError>((response, collected))
    }
    .await;
    let (mut response, (chunks, complete)) = match outcome {
        Ok(done) => done,
        Err(e @ (TaskError::Deadline | TaskError::Memory)) if run.may_fall_back => {
            failed(&run, &e);
            let id = &run.request_id;
            log::warn!(
                "[{id}] task {}: {e} at the edge; retrying in a region",
                task.name
            );
            return Ok(Served::FallBack);
        }
        Err(e) => {
            failed(&run, &e);
            let detail = format!("[{}] task {}: {e}", run.request_id, task.name);
            let shown = e.shown();
            fail(session, &run, e.kind(), &detail, shown.as_deref(), None).await?;
            return Ok(Served::Answered);
        }
    };
    // A region's answer (no placement: the edge says where it ran) names the version that
    // ran, which tells the edge a new one is current.
    let version = match run.placement {
        Some(_) => None,
        None => Some(run.task.digest.as_str()),
    };
    if let Some((cache, ctx)) = &mut run.cache
        && ctx.answer_from_store(cache, &response.head)
    {
        // A 5xx while a stale entry's stale-if-error holds: the entry answers.
        cached::serve_answer(session, cache, ctx).await;
        return Ok(Served::Answered);
    }
    let mut head = response_head(&response, started, run.placement.as_deref(), version)?;
    if let Some((cache, ctx)) = &mut run.cache {
        let length = complete.then(|| chunks.iter().map(Bytes::len).sum());
        head.insert_header("cache-status", ctx.on_head(cache, &response.head, length))?;
        chunks.iter().for_each(|c| ctx.on_body(cache, c));
        if complete {
            ctx.on_end(cache);
        }
    }
    if complete {
        run.task.failures.succeeded();
        write_whole(session, head, crate::body::concat(chunks)).await?;
    } else {
        write_streamed(session, head, chunks, &mut run, &mut response).await?;
    }
    Ok(Served::Answered)
}

/// The request body for the guest: already read, or read now within the task's
/// `max_body`. `None` once an error was answered.
async fn body_for(session: &mut Session, run: &mut Inline<'_>) -> Result<Option<Bytes>> {
    if let Some(body) = run.body.take() {
        return Ok(Some(body));
    }
    if run.may_fall_back {
        // Pingora replays this buffer (at most 64 KiB, which admission ensures) upstream.
        session.enable_retry_buffering();
    }
    let max_body = run.task.limits.max_body;
    match read_body(session, max_body).await {
        Ok(body) => Ok(Some(body)),
        Err(kind) => {
            let message = match kind {
                ErrorKind::TooLarge => format!("body over {max_body} bytes"),
                ErrorKind::BodyTimeout => kind.message().to_string(),
                _ => "cannot read the request body".to_string(),
            };
            fail(session, run, kind, &message, None, None).await?;
            Ok(None)
        }
    }
}

/// The execution slot: taken already, or waited for within the task's deadline. `None`
/// once `busy` was answered.
async fn slot_for(
    session: &mut Session,
    run: &mut Inline<'_>,
    started: Instant,
) -> Result<Option<OwnedSemaphorePermit>> {
    if let Some(slot) = run.slot.take() {
        return Ok(Some(slot));
    }
    let until = tokio::time::Instant::from_std(started + run.task.limits.timeout);
    if let Some(slot) = run.runtime.slot(until).await {
        return Ok(Some(slot));
    }
    let detail = format!(
        "[{}] task {}: no execution slot freed up within its deadline",
        run.request_id, run.task.name
    );
    fail(session, run, ErrorKind::Busy, &detail, None, None).await?;
    Ok(None)
}

/// A whole body, with its length. A HEAD response says how long it would be, sends none.
async fn write_whole(session: &mut Session, mut head: ResponseHeader, body: Bytes) -> Result<()> {
    head.insert_header("content-length", body.len())?;
    let end = body.is_empty() || session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(head), end).await?;
    if !end {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The pieces read so far, then the rest as the guest writes it.
async fn write_streamed(
    session: &mut Session,
    mut head: ResponseHeader,
    chunks: Vec<Bytes>,
    run: &mut Inline<'_>,
    response: &mut GuestResponse,
) -> Result<()> {
    head.insert_header("transfer-encoding", "chunked")?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if head_only {
        return Ok(());
    }
    for chunk in chunks {
        session.write_response_body(Some(chunk), false).await?;
    }
    stream_rest(session, run, response).await
}

/// A run that failed counts towards pausing the task (not the host's own failures).
fn failed(run: &Inline<'_>, e: &TaskError) {
    if matches!(e, TaskError::Host(_)) {
        return;
    }
    let task = run.task;
    if let Some(pause) = task.failures.failed(Instant::now()) {
        log::warn!(
            "[{}] task {} paused for {pause:?}: its runs keep failing (the last: {e})",
            run.request_id,
            task.name
        );
    }
}

/// Answers `503 paused` for a task paused for failing, with when to try again. The body
/// stays unread, so the connection closes after the answer if one may follow.
async fn paused(session: &mut Session, run: &Inline<'_>, left: std::time::Duration) -> Result<()> {
    if crate::body::declared_body_len(session.req_header()) != Some(0) {
        session.set_keepalive(None);
    }
    let detail = format!(
        "[{}] task {}: paused for {left:?} more",
        run.request_id, run.task.name
    );
    let retry = (
        "retry-after",
        left.as_secs_f64().ceil().max(1.0).to_string(),
    );
    fail(session, run, ErrorKind::Paused, &detail, None, Some(retry)).await
}

/// Answers an error, with the route's `Cache-Status` if it has one, and `extra`.
async fn fail(
    session: &mut Session,
    run: &Inline<'_>,
    kind: ErrorKind,
    detail: &str,
    shown: Option<&str>,
    extra: Option<(&'static str, String)>,
) -> Result<()> {
    if kind.status() >= 500
        && let Some((cache, ctx)) = &run.cache
        && cached::serve_stale_on_error(session, cache, ctx)
            .await
            .is_some()
    {
        log::warn!("served a stale response: {detail}");
        return Ok(());
    }
    let status = (run.cache.as_ref()).map(|(_, ctx)| ("cache-status", ctx.error_status()));
    let headers: Vec<_> = status.into_iter().chain(extra).collect();
    respond::error_with(session, kind, detail, shown, &headers).await
}

/// Streams the rest of a long body. A failure now can only cut the response short.
async fn stream_rest(
    session: &mut Session,
    run: &mut Inline<'_>,
    response: &mut GuestResponse,
) -> Result<()> {
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if let Some((cache, ctx)) = &mut run.cache {
                    ctx.on_body(cache, &chunk);
                }
                session.write_response_body(Some(chunk), false).await?;
            }
            Ok(None) => {
                run.task.failures.succeeded();
                if let Some((cache, ctx)) = &mut run.cache {
                    ctx.on_end(cache);
                }
                return session.write_response_body(None, true).await;
            }
            // Logged where the error is answered (`fail_to_proxy`), which can only cut
            // the response short now: a chunked body without its last chunk.
            Err(e) => {
                failed(run, &e);
                let detail = format!("[{}] task {}: {e}", run.request_id, run.task.name);
                return Err(e.kind().to_pingora(detail));
            }
        }
    }
}

/// Reads the whole request body, refusing one over `max_body` bytes (by its declared
/// length before reading anything, else as it arrives).
pub(super) async fn read_body(session: &mut Session, max_body: u64) -> Result<Bytes, ErrorKind> {
    let declared = crate::body::declared_body_len(session.req_header());
    if declared.is_some_and(|len| len > max_body) {
        // The body stays unread: this connection cannot be reused.
        session.set_keepalive(None);
        return Err(ErrorKind::TooLarge);
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(max_body) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > max_body {
                    session.set_keepalive(None);
                    return Err(ErrorKind::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                session.set_keepalive(None);
                return Err(match e.etype {
                    pingora_error::ErrorType::ReadTimedout => ErrorKind::BodyTimeout,
                    _ => ErrorKind::BadRequest,
                });
            }
        }
    }
}

/// The request as the guest sees it: `https://host/path` for a client that came over TLS
/// (wasi:http's scheme and authority), as received otherwise.
fn guest_request(
    session: &Session,
    body: Bytes,
    https: bool,
    sender: Option<Sender<'_>>,
) -> http::Request<Full<Bytes>> {
    let mut parts = session.req_header().as_owned_parts();
    if let Some(sender) = sender {
        // Set on the guest's own copy: a plain map, cheaper than the session's (whose case
        // map is kept beside it) and only this request's.
        forwarded_for_filed(&mut parts.headers, sender.peer, https, sender.trusted);
    }
    if https {
        let host = parts.headers.get(http::header::HOST).map(|h| h.as_bytes());
        let authority = host.and_then(|h| http::uri::Authority::try_from(h).ok());
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        if let Some(authority) = authority {
            uri.scheme = Some(http::uri::Scheme::HTTPS);
            uri.authority = Some(authority);
        }
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }
    http::Request::from_parts(parts, Full::new(body))
}

fn response_head(
    response: &GuestResponse,
    started: Instant,
    placement: Option<&str>,
    version: Option<&str>,
) -> Result<ResponseHeader> {
    let mut headers = http::HeaderMap::with_capacity(response.head.headers.len() + 3);
    for (name, value) in &response.head.headers {
        // A guest speaks neither for Poplar nor for its cache.
        let ours = name.as_str().starts_with("x-poplar-") || name == respond::CACHE_STATUS;
        if !HOP_BY_HOP.contains(&name.as_str()) && !ours {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(placement) = placement {
        headers.insert(
            respond::PLACEMENT.clone(),
            respond::value(placement, "placement")?,
        );
    }
    if let Some(version) = version {
        headers.insert(DIGEST.clone(), respond::value(version, "digest")?);
    }
    let timing = respond::value(server_timing(started.elapsed()), "server-timing")?;
    headers.append(SERVER_TIMING.clone(), timing);
    Ok(respond::head(response.head.status, headers))
}

/// `task;dur=` and the milliseconds to three places (`task;dur=0.456`), without `format!`'s
/// float formatting (about 1,500 instructions of an inline request).
fn server_timing(took: std::time::Duration) -> String {
    let micros = took.as_micros();
    let mut text = String::with_capacity(24);
    text.push_str("task;dur=");
    text.push_str(itoa::Buffer::new().format(micros / 1000));
    let fraction = micros % 1000;
    text.push('.');
    if fraction < 100 {
        text.push('0');
    }
    if fraction < 10 {
        text.push('0');
    }
    text.push_str(itoa::Buffer::new().format(fraction));
    text
}

static DIGEST: http::HeaderName = http::HeaderName::from_static(crate::registry::DIGEST_HEADER);
static SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");

#[cfg(test)]
mod tests {
    use super::server_timing;
    use std::time::Duration;

    #[test]
    fn server_timing_gives_milliseconds_to_three_places() {
        for micros in [0, 7, 42, 456, 1_000, 1_005, 12_340, 999_999, 3_600_000_001] {
            let took = Duration::from_micros(micros);
            let ms = micros as f64 / 1000.0;
            assert_eq!(
                server_timing(took),
                format!("task;dur={ms:.3}"),
                "{micros} µs"
            );
        }
        // Below a microsecond does not count.
        assert_eq!(server_timing(Duration::from_nanos(999)), "task;dur=0.000");
    }
}
