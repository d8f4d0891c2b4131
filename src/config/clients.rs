//! `clients:` what one client connection may take from the server: the size of a request
//! head and how long it may take, how long a body may stall, how long a connection may sit
//! idle, how many requests it may make and how many connections a listener holds. Each
//! breach is refused with its status (408, 413, 414, 431, 503) and counted.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::source::Reported;
use super::units::{Dur, Size};

/// The parser holds at most this many header fields.
const MOST_HEADERS: usize = 256;

/// `clients:` as written.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// Bytes of a request line and its header fields together (default 32KiB). Over it:
    /// `414` while the request line is unfinished, `431` after.
    pub max_header_bytes: Option<Size>,
    /// Header fields in a request (default 100, at most 256). Over it: `431`.
    pub max_headers: Option<usize>,
    /// From a request head's first byte to its end (default 30s). Over it: `408`.
    pub header_timeout: Option<Dur>,
    /// How long a request body may go without a byte arriving (default 60s). Over it: `408`.
    pub body_timeout: Option<Dur>,
    /// How long a kept-alive connection may wait for its next request before it is closed
    /// (default 75s).
    pub idle_timeout: Option<Dur>,
    /// Requests on one connection before it is closed after the last's response (default
    /// 1000).
    pub max_requests: Option<u32>,
    /// Open connections per listener (default 10000). Over it a new connection gets `503`
    /// and is closed.
    pub max_connections: Option<usize>,
}

/// The compiled limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_requests: u32,
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_header_bytes: 32 << 10,
            max_headers: 100,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            max_requests: 1000,
            max_connections: 10_000,
        }
    }
}

pub(super) fn compile(c: Option<Clients>, r: &mut Reported) -> ClientLimits {
    let d = ClientLimits::default();
    let Some(c) = c else { return d };
    let spec = ClientLimits {
        max_header_bytes: c.max_header_bytes.map_or(d.max_header_bytes, |s| {
            usize::try_from(s.0).unwrap_or(usize::MAX)
        }),
        max_headers: c.max_headers.unwrap_or(d.max_headers),
        header_timeout: c.header_timeout.map_or(d.header_timeout, |t| t.0),
        body_timeout: c.body_timeout.map_or(d.body_timeout, |t| t.0),
        idle_timeout: c.idle_timeout.map_or(d.idle_timeout, |t| t.0),
        max_requests: c.max_requests.unwrap_or(d.max_requests),
        max_connections: c.max_connections.unwrap_or(d.max_connections),
    };
    if !(1 << 10..=1 << 20).contains(&spec.max_header_bytes) {
        r.error("clients.max_header_bytes", "must be from 1KiB to 1MiB");
    }
    if !(1..=MOST_HEADERS).contains(&spec.max_headers) {
        r.error("clients.max_headers", "must be from 1 to 256");
    }
    for (key, value) in [
        ("clients.header_timeout", spec.header_timeout),
        ("clients.body_timeout", spec.body_timeout),
    ] {
        if value < Duration::from_millis(100) {
            r.error(key, "must be at least 100ms");
        }
    }
    if spec.idle_timeout < Duration::from_secs(1) {
        r.error("clients.idle_timeout", "must be at least 1s");
    }
    if spec.max_requests == 0 {
        r.error("clients.max_requests", "must be at least 1");
    }
    if spec.max_connections == 0 {
        r.error("clients.max_connections", "must be at least 1");
    }
    spec
}
