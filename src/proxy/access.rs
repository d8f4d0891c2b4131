//! One access log line per request, from what the session and the response say.

use std::time::{Instant, SystemTime};

use pingora_proxy::Session;

use super::respond::{CACHE_STATUS, ERROR, PLACEMENT};
use crate::access_log::{AccessLog, Line};

/// What a proxy phase knows of a request beyond its session.
pub struct Known<'a> {
    pub started: Option<Instant>,
    pub id: &'a str,
    pub host: Option<&'a str>,
    pub route: Option<usize>,
    pub task: Option<&'a str>,
    /// The origin, when it went to one.
    pub upstream: Option<String>,
}

/// Logs the request `session` served. Where it ran and why, its cache status and error
/// are read back from the response as sent, so the log says what the client was told.
pub fn log(log: &AccessLog, session: &Session, known: Known<'_>) {
    let req = session.req_header();
    let written = session.response_written();
    let header = |name: &http::HeaderName| {
        written
            .and_then(|r| r.headers.get(name))
            .and_then(|v| v.to_str().ok())
    };
    let request_header =
        |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let placement = header(&PLACEMENT).map(Placement::parse);
    let took = known.started.map(|s| s.elapsed()).unwrap_or_default();
    let version = match req.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let region = placement.as_ref().and_then(|p| p.region);
    log.log(&Line {
        time: SystemTime::now() - took,
        id: known.id,
        client: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        method: req.method.as_str(),
        host: known.host.unwrap_or_default(),
        path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        version,
        status: written.map_or(0, |r| r.status.as_u16()),
        bytes: session.body_bytes_sent(),
        duration: took.as_secs_f64(),
        route: known.route,
        task: known.task,
        placement: placement.as_ref().map(|p| p.site),
        reason: placement.as_ref().and_then(|p| p.reason),
        cache: header(&CACHE_STATUS),
        upstream: known.upstream.or_else(|| region.map(str::to_string)),
        // Poplar's own errors are all 4xx or 5xx: no lookup for the rest.
        error: written
            .filter(|r| r.status.as_u16() >= 400)
            .and_then(|_| header(&ERROR)),
        referer: request_header(http::header::REFERER),
        user_agent: request_header(http::header::USER_AGENT),
    });
}

/// `edge; reason=hot` or `region; name=east; reason=cold`.
struct Placement<'a> {
    site: &'a str,
    region: Option<&'a str>,
    reason: Option<&'a str>,
}

impl<'a> Placement<'a> {
    fn parse(value: &'a str) -> Placement<'a> {
        if !value.contains(';') {
            // `cache`: nothing more to find.
            return Placement {
                site: value.trim(),
                region: None,
                reason: None,
            };
        }
        let mut parts = value.split(';').map(str::trim);
        let site = parts.next().unwrap_or_default();
        let (mut region, mut reason) = (None, None);
        for part in parts {
            match part.split_once('=') {
                Some(("name", name)) => region = Some(name),
                Some(("reason", why)) => reason = Some(why),
                _ => {}
            }
        }
        Placement {
            site,
            region,
            reason,
        }
    }
}
