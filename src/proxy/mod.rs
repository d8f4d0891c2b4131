//! The `ProxyHttp` implementations: the edge ([`Edge`]) and the region ([`RegionServer`]).
//! Each phase is a few lines that call into a module.

mod access;
mod cached;
mod edge;
mod refresh;
mod region;
mod respond;
mod task;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::errors::ErrorKind;
use crate::{framing, normalize};

pub use edge::{Edge, Parts as EdgeParts};
pub use region::RegionServer;

/// Request ids for logs: a per-process prefix and a counter.
pub struct RequestIds {
    boot: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        RequestIds {
            boot,
            next: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:x}", self.boot).into()
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// Drops every `x-poplar-*` header: at the edge, clients may not speak for Poplar.
fn strip_poplar_headers(req: &mut RequestHeader) {
    let names: Vec<_> = req
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-poplar-"))
        .cloned()
        .collect();
    for name in names {
        req.remove_header(&name);
    }
}

/// Refuses a request whose HTTP/1 framing is ambiguous ([`framing`]): 400, and the
/// connection closed without reading its body. `Ok(true)` when it was refused.
///
/// Also lets the connection carry pipelined requests: each is answered in order, where
/// Pingora would otherwise answer the first and drop the rest.
async fn refuse_bad_framing(session: &mut Session) -> pingora_error::Result<bool> {
    let Some(h1) = session.as_http1() else {
        return Ok(false);
    };
    let req = h1.req_header();
    let raw = req
        .headers
        .contains_key(http::header::TRANSFER_ENCODING)
        .then(|| h1.get_headers_raw_bytes());
    let head = framing::Head {
        version: req.version,
        headers: &req.headers,
        raw: raw.as_deref(),
    };
    match framing::check(&head) {
        Ok(()) => {
            session.set_pipelining_enabled(true);
            Ok(false)
        }
        Err(refusal) => {
            session.set_keepalive(None);
            respond::error(session, ErrorKind::BadRequest, &refusal.to_string()).await?;
            Ok(true)
        }
    }
}

/// Rewrites a request to its normal form ([`normalize`]): the path routes, caches, origins
/// and tasks see alike, in origin form, with the absolute form's authority as its Host.
/// Returns the normalised host; `Err` for a request that cannot be put in that form.
fn normalize_request(req: &mut RequestHeader) -> Result<Option<String>, String> {
    // Pingora keeps an absolute-form target verbatim (and has checked that Host names the
    // same authority); its URI holds only the path.
    let raw = req.raw_path();
    let absolute = !raw.starts_with(b"/") && raw != b"*";
    let header = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let host = normalize::host(req.uri.authority().map(|a| a.as_str()), header);
    let path = normalize::path(req.uri.path());
    if !absolute && path.is_none() {
        return Ok(host);
    }
    let path = path.as_deref().unwrap_or(req.uri.path());
    let origin_form = match req.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let uri = origin_form
        .parse::<http::Uri>()
        .map_err(|e| format!("cannot normalise the request target: {e}"))?;
    req.set_uri(uri);
    Ok(host)
}

/// `X-Forwarded-For` as the edge passes it on (to origins, regions and tasks alike): from a
/// trusted proxy, its list (every line of it, in order) with the peer appended; from anyone
/// else, the peer alone, and `Forwarded` and `X-Real-IP` dropped: a client cannot choose
/// the address an origin believes it has.
fn forwarded_for(
    req: &mut RequestHeader,
    peer: Option<std::net::IpAddr>,
    trusted: &[ipnet::IpNet],
) -> pingora_error::Result<()> {
    let trusted_peer = peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)));
    let mut chain: Vec<String> = Vec::new();
    if trusted_peer {
        chain = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
    } else {
        req.remove_header("forwarded");
        req.remove_header("x-real-ip");
    }
    req.remove_header("x-forwarded-for");
    if let Some(ip) = peer {
        chain.push(ip.to_string());
    }
    if !chain.is_empty() {
        req.insert_header("x-forwarded-for", chain.join(", "))?;
    }
    Ok(())
}
