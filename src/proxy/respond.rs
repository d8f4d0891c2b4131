//! Writing Poplar's own responses: errors with `x-poplar-error`, and headers shared by
//! every task response.

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::errors::ErrorKind;

/// Writes an error response: the kind's status, a one-line plain-text body, and
/// `x-poplar-error`. Does nothing if a response has already started.
pub async fn error(session: &mut Session, kind: ErrorKind, message: &str) -> Result<()> {
    error_with(session, kind, message, None).await
}

/// [`error`], with one more header (a `Cache-Status`).
pub async fn error_with(
    session: &mut Session,
    kind: ErrorKind,
    message: &str,
    extra: Option<(&'static str, String)>,
) -> Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    let (status, name) = kind.status_and_name();
    let body = Bytes::from(format!("{message}\n"));
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header("content-type", "text/plain; charset=utf-8")?;
    head.insert_header("content-length", body.len())?;
    head.insert_header("x-poplar-error", name)?;
    head.insert_header("cache-control", "no-store")?;
    if let Some((name, value)) = extra {
        head.insert_header(name, value)?;
    }
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The kind of a proxying failure, or `None` when the client is gone and nobody can be told.
pub fn classify_proxy_error(e: &Error) -> Option<ErrorKind> {
    if let ErrorType::HTTPStatus(code) = e.etype() {
        return Some(match code {
            400 => ErrorKind::BadRequest,
            413 => ErrorKind::TooLarge,
            503 => ErrorKind::NoRegion,
            _ => ErrorKind::Internal,
        });
    }
    match e.esource() {
        ErrorSource::Upstream => Some(ErrorKind::Origin),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
            _ => Some(ErrorKind::BadRequest),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(ErrorKind::Internal),
    }
}

/// A Pingora error carrying one of our kinds, for returning from a phase.
pub fn as_pingora_error(kind: ErrorKind, message: String) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(kind.status()), message)
}
