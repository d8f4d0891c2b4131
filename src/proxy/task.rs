//! Serving a task route inline: read the request body within the task's limit, run the
//! task, and write its response back through the Pingora session.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::respond;
use crate::errors::ErrorKind;
use crate::wasm::{GuestResponse, Runtime, Task, TaskError};

/// Bodies up to this size are collected and sent with a `content-length`; longer ones
/// stream with chunked encoding.
const COLLECT_LIMIT: usize = 64 << 10;

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

/// Runs `task` for the request in `session` and writes the answer, whatever it is.
pub async fn serve(
    session: &mut Session,
    runtime: &Runtime,
    task: &Task,
    request_id: Arc<str>,
) -> Result<()> {
    let body = match read_body(session, task.limits.max_body).await {
        Ok(body) => body,
        Err(kind) => {
            let message = match kind {
                ErrorKind::TooLarge => {
                    format!("request body is larger than {} bytes", task.limits.max_body)
                }
                _ => "cannot read the request body".to_string(),
            };
            return respond::error(session, kind, &message).await;
        }
    };
    let request = guest_request(session, body);

    let started = Instant::now();
    let until = tokio::time::Instant::from_std(started + task.limits.timeout);
    let Some(slot) = runtime.slot(until).await else {
        log::warn!(
            "[{request_id}] task {}: no execution slot freed up within its deadline",
            task.name
        );
        return respond::error(session, ErrorKind::Busy, "no execution slot is free").await;
    };
    let mut response = match task.call(slot, request, request_id.clone()).await {
        Ok(response) => response,
        Err(e) => return fail(session, task, &request_id, e).await,
    };
    let (chunks, complete) = match response.collect_up_to(COLLECT_LIMIT).await {
        Ok(collected) => collected,
        Err(e) => return fail(session, task, &request_id, e).await,
    };
    let mut head = response_head(&response, started)?;
    if complete {
        let body = concat(chunks);
        head.insert_header("content-length", body.len())?;
        // A HEAD response says how long the body would be, and sends none.
        let head_only = session.req_header().method == http::Method::HEAD;
        let end = body.is_empty() || head_only;
        session.write_response_header(Box::new(head), end).await?;
        if !end {
            session.write_response_body(Some(body), true).await?;
        }
        return Ok(());
    }
    head.insert_header("transfer-encoding", "chunked")?;
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(head), true).await;
    }
    session.write_response_header(Box::new(head), false).await?;
    for chunk in chunks {
        session.write_response_body(Some(chunk), false).await?;
    }
    stream_rest(session, task, &request_id, &mut response).await
}

/// Streams the rest of a long body. A failure now can only cut the response short.
async fn stream_rest(
    session: &mut Session,
    task: &Task,
    request_id: &str,
    response: &mut GuestResponse,
) -> Result<()> {
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => session.write_response_body(Some(chunk), false).await?,
            Ok(None) => return session.write_response_body(None, true).await,
            Err(e) => {
                log::error!("[{request_id}] task {} failed mid-response: {e}", task.name);
                return Err(respond::as_pingora_error(e.kind(), e.to_string()));
            }
        }
    }
}

async fn fail(session: &mut Session, task: &Task, request_id: &str, e: TaskError) -> Result<()> {
    log::error!("[{request_id}] task {}: {e}", task.name);
    respond::error(session, e.kind(), &e.to_string()).await
}

/// Reads the whole request body, refusing one over `max_body` bytes (by its declared
/// length before reading anything, else as it arrives).
async fn read_body(session: &mut Session, max_body: u64) -> Result<Bytes, ErrorKind> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        // The body stays unread: this connection cannot be reused.
        session.set_keepalive(None);
        return Err(ErrorKind::TooLarge);
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
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
            Err(_) => {
                session.set_keepalive(None);
                return Err(ErrorKind::BadRequest);
            }
        }
    }
}

fn guest_request(session: &Session, body: Bytes) -> http::Request<Full<Bytes>> {
    let parts = session.req_header().as_owned_parts();
    http::Request::from_parts(parts, Full::new(body))
}

fn response_head(response: &GuestResponse, started: Instant) -> Result<ResponseHeader> {
    let mut head =
        ResponseHeader::build(response.head.status, Some(response.head.headers.len() + 3))?;
    for (name, value) in &response.head.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    head.insert_header("x-poplar-placement", "edge; reason=pinned")?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    head.append_header("server-timing", format!("task;dur={ms:.3}"))?;
    Ok(head)
}

fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            all.freeze()
        }
    }
}
