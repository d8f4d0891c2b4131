//! Writing Poplar's own responses: errors with `x-poplar-error`, and headers shared by
//! every task response.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use pingora_error::{Error, ErrorSource, ErrorType, OkOrErr, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::errors::ErrorKind;

// Names parsed once, not on every response.
/// `x-poplar-placement`: where a response was made, and why.
pub static PLACEMENT: HeaderName = HeaderName::from_static("x-poplar-placement");
/// `cache-status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// `x-poplar-error`: the kind of an error Poplar answered.
pub static ERROR: HeaderName = HeaderName::from_static("x-poplar-error");

/// A response head with `status` and exactly `headers`, put together as a plain header map.
///
/// Nothing is parsed again and no case map is kept beside it: Pingora writes standard names
/// title-cased (`Content-Length`), as nginx does, and others as they are. Through
/// `ResponseHeader::insert_header` every header cost a parse of its name and two map inserts
/// (callgrind: building a cache hit's head from seven stored headers was a fifth of the hit).
pub fn head(status: StatusCode, headers: HeaderMap) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    ResponseHeader::from(parts)
}

/// `value` as a header value, or the error of a response that cannot be made.
pub fn value(value: impl TryInto<HeaderValue>, what: &'static str) -> Result<HeaderValue> {
    value
        .try_into()
        .ok()
        .or_err(ErrorType::InvalidHTTPHeader, what)
}

/// Sends `head` (a 200) with `body`, never to be cached.
pub async fn ok(
    session: &mut Session,
    mut head: ResponseHeader,
    content_type: &str,
    body: Bytes,
) -> Result<()> {
    head.insert_header("content-type", content_type.to_string())?;
    head.insert_header("content-length", body.len())?;
    head.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes an error response: the kind's status, its one-line plain-text message, and
/// `x-poplar-error`; logs it once, at the kind's level, with `detail` (which the client
/// never sees: it may name internal addresses or a guest's backtrace). Does nothing if a
/// response has already started.
pub async fn error(session: &mut Session, kind: ErrorKind, detail: &str) -> Result<()> {
    error_with(session, kind, detail, None, &[]).await
}

/// A `308` to the request's URL over HTTPS on `port` (omitted when 443), as a plain
/// listener with `redirect_https` answers; `host` is the request's, normalised.
pub async fn to_https(session: &mut Session, host: &str, port: u16) -> Result<()> {
    let target = session
        .req_header()
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let location = match port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    };
    let mut head = ResponseHeader::build(308, Some(3))?;
    head.insert_header(http::header::LOCATION, location)?;
    head.insert_header(http::header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(head), true).await
}

/// [`error`], with what the client may be told beyond the kind's message (`shown`, after a
/// colon), and more headers (a `Cache-Status`, a `Retry-After`).
pub async fn error_with(
    session: &mut Session,
    kind: ErrorKind,
    detail: &str,
    shown: Option<&str>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let (status, name) = kind.status_and_name();
    let req = session.req_header();
    let started = session.response_written().is_some();
    log::log!(
        kind.level(),
        "{status} {name}{}: {} {} from {}: {detail}",
        if started {
            " after the response began"
        } else {
            ""
        },
        req.method,
        req.uri.path(),
        session
            .client_addr()
            .map_or_else(String::new, ToString::to_string),
    );
    if started {
        return Ok(());
    }
    let body = match shown {
        Some(shown) => format!("{}: {shown}\n", kind.message()),
        None => format!("{}\n", kind.message()),
    };
    let body = Bytes::from(body);
    let mut headers = HeaderMap::with_capacity(4 + extra.len());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(ERROR.clone(), HeaderValue::from_static(name));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, text) in extra {
        let name = HeaderName::try_from(*name)
            .ok()
            .or_err(ErrorType::InvalidHTTPHeader, "an error's header name")?;
        headers.insert(name, value(text.as_str(), "an error's header")?);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let head = head(status, headers);
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The kind of a proxying failure, or `None` when the client is gone and nobody can be
/// told. A kind of ours travels as the error's cause; anything else is Pingora's, judged
/// by where it came from: upstream is the origin, or the region when `forwarded`.
pub fn classify_proxy_error(e: &Error, forwarded: bool) -> Option<ErrorKind> {
    if let Some(kind) = ErrorKind::carried_by(e) {
        return Some(kind);
    }
    match e.esource() {
        ErrorSource::Upstream if forwarded => Some(ErrorKind::Region),
        ErrorSource::Upstream => Some(ErrorKind::Origin),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
            _ => Some(ErrorKind::BadRequest),
        },
        ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
            ErrorType::HTTPStatus(400..=499) => Some(ErrorKind::BadRequest),
            _ => Some(ErrorKind::Internal),
        },
    }
}
