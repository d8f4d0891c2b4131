//! The `ProxyHttp` implementations: the edge ([`Edge`]) and the region ([`RegionServer`]).
//! Each phase is a few lines that call into a module.

mod access;
mod cached;
mod edge;
mod origin;
mod refresh;
mod region;
mod respond;
mod retry;
mod task;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::errors::ErrorKind;
use crate::{framing, normalize};

pub use edge::{Edge, Live as EdgeLive, Parts as EdgeParts};
pub use region::{RegionLive, RegionServer};

/// Request ids for logs: a per-process prefix and a counter. Each thread takes the counter's
/// values a block at a time, so that the threads serving requests do not all write one shared
/// counter (see [`crate::shards`]); ids are unique, in order within a thread.
pub struct RequestIds {
    boot: u32,
    /// Tells this generator's blocks from another's in a thread's [`BLOCK`].
    serial: u64,
    next: AtomicU64,
}

/// Ids a thread takes at once.
const BLOCK_SIZE: u64 = 1024;

thread_local! {
    /// The block this thread is using: its generator's serial, the next id, the block's end.
    static BLOCK: Cell<(u64, u64, u64)> = const { Cell::new((u64::MAX, 0, 0)) };
}

impl RequestIds {
    pub fn new() -> RequestIds {
        static SERIALS: AtomicU64 = AtomicU64::new(0);
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        RequestIds {
            boot,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            next: AtomicU64::new(0),
        }
    }

    /// `{boot:08x}-{n:x}`, written digit by digit: `format!` was ~1,400 instructions of an
    /// inline request.
    pub fn next(&self) -> Arc<str> {
        let n = BLOCK.with(|block| {
            let (serial, mut n, mut end) = block.get();
            if serial != self.serial || n == end {
                n = self.next.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
                end = n.wrapping_add(BLOCK_SIZE);
            }
            block.set((self.serial, n.wrapping_add(1), end));
            n
        });
        let mut id = [0u8; 25];
        let mut len = hex(u64::from(self.boot), 8, &mut id);
        id[len] = b'-';
        len += 1;
        len += hex(n, 1, &mut id[len..]);
        // Hex digits and '-': ASCII.
        std::str::from_utf8(&id[..len]).map_or_else(|_| Arc::from(""), Arc::from)
    }
}

/// Writes `n` in lowercase hex, at least `width` digits, to the start of `out`; the digits
/// written (`out` must have room for 16).
fn hex(n: u64, width: usize, out: &mut [u8]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (16 - n.leading_zeros() as usize / 4).max(width).min(16);
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = DIGITS[((n >> shift) & 0xf) as usize];
    }
    digits
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
    if req.version == http::Version::HTTP_2 {
        host_from_authority(req)?;
    }
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

/// An HTTP/2 request's `Host` is its `:authority` (RFC 9113 §8.3.1), set as a header so that
/// signatures, tasks, caches and HTTP/1 origins all read it where an HTTP/1 request has it.
fn host_from_authority(req: &mut RequestHeader) -> Result<(), String> {
    let Some(authority) = req.uri.authority() else {
        return Ok(());
    };
    let value = http::HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
    if req.headers.get(http::header::HOST) != Some(&value) {
        req.insert_header(http::header::HOST, value)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Who sent a request: its peer and the proxies trusted to speak for their clients.
#[derive(Clone, Copy)]
pub struct Sender<'a> {
    pub peer: Option<std::net::IpAddr>,
    pub trusted: &'a [ipnet::IpNet],
}

/// `X-Forwarded-For` as the edge passes it on (to origins, regions and tasks alike): from a
/// trusted proxy, its list (every line of it, in order) with the peer appended; from anyone
/// else, the peer alone, and `Forwarded` and `X-Real-IP` dropped: a client cannot choose
/// the address an origin believes it has.
///
/// Applied only to a request that leaves: the upstream request (each attempt's), the
/// guest's request ([`forwarded_for_filed`] on its own copy), a request filed for a
/// background refresh; not to one answered from the cache or refused: rewriting the header
/// in the session's map, with its case map beside it, cost about 3,400 instructions.
///
/// `X-Forwarded-Proto` says how the client reached the edge (`https` on a TLS listener);
/// a trusted proxy's own is kept (it terminated the client's connection).
fn forwarded_for(
    req: &mut RequestHeader,
    peer: Option<std::net::IpAddr>,
    tls: bool,
    trusted: &[ipnet::IpNet],
) -> pingora_error::Result<()> {
    let value = forwarded_value(&req.headers, peer, trusted);
    for name in dropped_with(peer, trusted) {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    if let Some(value) = value {
        req.insert_header(XFF.clone(), value)?;
    }
    if let Some(proto) = forwarded_proto(&req.headers, peer, tls, trusted) {
        req.insert_header(XFP.clone(), proto)?;
    }
    Ok(())
}

/// The `X-Forwarded-Proto` to set, unless a trusted proxy has set one.
fn forwarded_proto(
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    tls: bool,
    trusted: &[ipnet::IpNet],
) -> Option<http::HeaderValue> {
    if headers.contains_key(&XFP) && is_trusted(peer, trusted) {
        return None;
    }
    Some(http::HeaderValue::from_static(if tls {
        "https"
    } else {
        "http"
    }))
}

/// [`forwarded_for`] on a plain header map: a guest's request, or one filed for a
/// background refresh.
fn forwarded_for_filed(
    headers: &mut http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    tls: bool,
    trusted: &[ipnet::IpNet],
) {
    let value = forwarded_value(headers, peer, trusted);
    for name in dropped_with(peer, trusted) {
        headers.remove(name);
    }
    if let Some(value) = value.and_then(|v| http::HeaderValue::try_from(v).ok()) {
        headers.insert(XFF.clone(), value);
    }
    if let Some(proto) = forwarded_proto(headers, peer, tls, trusted) {
        headers.insert(XFP.clone(), proto);
    }
}

static XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static XFP: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");

fn is_trusted(peer: Option<std::net::IpAddr>, trusted: &[ipnet::IpNet]) -> bool {
    peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)))
}

/// The headers replaced or dropped: `X-Forwarded-For` always; from an untrusted peer,
/// `Forwarded` and `X-Real-IP` too.
fn dropped_with(
    peer: Option<std::net::IpAddr>,
    trusted: &[ipnet::IpNet],
) -> impl Iterator<Item = &'static http::HeaderName> {
    let untrusted = !is_trusted(peer, trusted);
    [&XFF, &http::header::FORWARDED, &REAL_IP]
        .into_iter()
        .enumerate()
        .filter(move |(i, _)| *i == 0 || untrusted)
        .map(|(_, name)| name)
}

/// The new `X-Forwarded-For`, if there is anything to say.
fn forwarded_value(
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    trusted: &[ipnet::IpNet],
) -> Option<String> {
    let mut chain = String::with_capacity(16);
    if is_trusted(peer, trusted) {
        for value in headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok()) {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(value);
        }
    }
    if let Some(ip) = peer {
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        push_ip(&mut chain, ip);
    }
    (!chain.is_empty()).then_some(chain)
}

/// Appends an address as `Display` writes it; an IPv4 one by hand, as `fmt` costs about
/// 1,600 instructions on every request that goes on (callgrind).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                let (hundreds, tens) = (octet / 100, octet / 10 % 10);
                if hundreds > 0 {
                    out.push(char::from(b'0' + hundreds));
                }
                if hundreds > 0 || tens > 0 {
                    out.push(char::from(b'0' + tens));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    proptest::proptest! {
        /// A request id reads as `format!("{boot:08x}-{n:x}")` would write it.
        #[test]
        fn a_request_id_is_the_boot_prefix_and_the_count_in_hex(boot: u32, n: u64) {
            let ids = RequestIds { boot, next: AtomicU64::new(n), ..RequestIds::new() };
            proptest::prop_assert_eq!(&*ids.next(), format!("{boot:08x}-{n:x}"));
            if n < u64::MAX {
                let next = n + 1;
                proptest::prop_assert_eq!(&*ids.next(), format!("{boot:08x}-{next:x}"));
            }
        }

        /// An address reads as `Display` writes it.
        #[test]
        fn an_address_is_written_as_display_writes_it(bits: u32, v6: u128) {
            for ip in [std::net::IpAddr::from(bits.to_be_bytes()), std::net::IpAddr::from(v6.to_be_bytes())] {
                let mut text = String::from("x");
                push_ip(&mut text, ip);
                proptest::prop_assert_eq!(text, format!("x{ip}"));
            }
        }
    }

    #[test]
    fn request_ids_are_unique_across_threads_and_generators() {
        let ids = Arc::new(RequestIds::new());
        let other = RequestIds::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..3000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(seen.insert(id.clone()), "{id} twice");
            }
        }
        // Interleaved on one thread with another generator: each keeps its own count.
        let (a, b, c) = (ids.next(), other.next(), ids.next());
        assert!(seen.insert(a.clone()) && seen.insert(c.clone()), "{a} {c}");
        assert!(b.ends_with("-0"), "{b}");
    }

    #[test]
    fn short_octets_are_written_without_leading_zeros() {
        for text in ["0.0.0.0", "10.0.9.100", "255.255.255.255", "1.20.0.99"] {
            let mut out = String::new();
            push_ip(&mut out, text.parse().unwrap());
            assert_eq!(out, text);
        }
    }

    /// The same rewrite on a request going on and on one filed for a refresh.
    #[test]
    fn a_filed_request_gets_the_forwarded_for_a_live_one_does() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let sent = [
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ];
        for (peer, want, kept) in [
            ("10.1.2.3", "1.2.3.4, 10.1.2.3", true),
            ("192.0.2.9", "192.0.2.9", false),
        ] {
            let peer = Some(peer.parse().unwrap());
            let mut filed = headers(&sent);
            forwarded_for_filed(&mut filed, peer, true, &trusted);
            let mut live = RequestHeader::build("GET", b"/", None).unwrap();
            for (name, value) in sent {
                live.append_header(name, value).unwrap();
            }
            forwarded_for(&mut live, peer, true, &trusted).unwrap();
            for map in [&filed, &live.headers] {
                assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
                assert_eq!(map["x-forwarded-for"], want);
                assert_eq!(map.contains_key("forwarded"), kept);
                assert_eq!(map.contains_key("x-real-ip"), kept);
                assert_eq!(map["x-forwarded-proto"], "https");
            }
        }
    }
}
