//! Edge-to-region request signing (v2): HMAC-SHA256 with a shared key over everything that
//! changes what the task computes (the method, path and query, task, Host, the body's
//! SHA-256, a canonical digest of the headers the task sees) and over a timestamp and a
//! request id that make each signature single-use. A region checks it with a bounded clock
//! skew and a constant-time compare, and refuses a signature it has seen ([`Seen`]).
//! `docs/SECURITY.md` has the threat model.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Names the task a forwarded request is for.
pub const TASK_HEADER: &str = "x-poplar-task";
/// Unix seconds at which the edge signed the request.
pub const TIMESTAMP_HEADER: &str = "x-poplar-timestamp";
/// The edge's id for the request: logged on both sides, and signed so a signature is used once.
pub const REQUEST_ID_HEADER: &str = "x-poplar-request-id";
/// The body's SHA-256 in hex, or [`STREAMED`].
pub const BODY_HEADER: &str = "x-poplar-body-sha256";
/// `v2=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-poplar-signature";
/// A body the edge streams on without holding it whole (over 64 KiB, or of unknown length):
/// covered by its declared length among the headers, not by a digest.
pub const STREAMED: &str = "streamed";
/// How far an edge's clock may be from a region's.
pub const MAX_SKEW_SECS: u64 = 30;
/// Signatures a region remembers, at most: more than this many forwards within the skew
/// window are refused as if replayed, never let through unchecked.
pub const MAX_SEEN: usize = 1 << 20;

/// What the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub timestamp: u64,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub task: &'a str,
    /// The Host, lower-cased.
    pub host: &'a str,
    /// The body's SHA-256 in hex, or [`STREAMED`].
    pub body: &'a str,
    /// [`headers_digest`] of the request.
    pub headers: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the request is not signed")]
    Missing,
    #[error("the signature is malformed")]
    Malformed,
    #[error("the signature is too old or from the future")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
    #[error("the signature was used before (a replay)")]
    Replayed,
    #[error("the body is not the one signed")]
    Body,
}

fn mac(key: &[u8], s: &Signed<'_>) -> Hmac<Sha256> {
    // An HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    let Signed {
        timestamp,
        request_id,
        method,
        path_and_query,
        task,
        host,
        body,
        headers,
    } = s;
    // Each field on its own line; none can hold a newline (HTTP forbids it in all of them).
    let text = format!(
        "poplar-v2\n{timestamp}\n{request_id}\n{method}\n{path_and_query}\n{task}\n{host}\n{body}\n{headers}"
    );
    mac.update(text.as_bytes());
    mac
}

/// The `x-poplar-signature` value for a request.
pub fn sign(key: &[u8], s: &Signed<'_>) -> String {
    format!("v2={}", hex(&mac(key, s).finalize().into_bytes()))
}

/// Checks a signature header against the request it came with, at time `now` (unix secs).
/// Returns the tag, for [`Seen`].
pub fn verify(
    key: &[u8],
    s: &Signed<'_>,
    signature: Option<&str>,
    now: u64,
) -> Result<[u8; 32], Rejection> {
    let signature = signature.ok_or(Rejection::Missing)?;
    let hex = signature.strip_prefix("v2=").ok_or(Rejection::Malformed)?;
    let tag = decode_hex(hex).ok_or(Rejection::Malformed)?;
    if now.abs_diff(s.timestamp) > MAX_SKEW_SECS {
        return Err(Rejection::Stale);
    }
    mac(key, s)
        .verify_slice(&tag)
        .map_err(|_| Rejection::Mismatch)?;
    Ok(tag)
}

/// What an edge says of a request it forwards, beside the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    pub task: &'a str,
    pub request_id: &'a str,
    /// The body's SHA-256 in hex ([`body_digest`]), or [`STREAMED`].
    pub body: &'a str,
}

/// The headers that name and sign a forwarded request, signed now over the request as it
/// will be sent: its method, path and query, and `headers` (taken before these are added).
pub fn signed_headers(
    key: &[u8],
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    f: &Forwarding<'_>,
) -> [(&'static str, String); 5] {
    let timestamp = unix_now();
    let host = host_of(headers);
    let digest = headers_digest(headers);
    let signed = Signed {
        timestamp,
        request_id: f.request_id,
        method,
        path_and_query,
        task: f.task,
        host: &host,
        body: f.body,
        headers: &digest,
    };
    [
        (TASK_HEADER, f.task.to_string()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (REQUEST_ID_HEADER, f.request_id.to_string()),
        (BODY_HEADER, f.body.to_string()),
        (SIGNATURE_HEADER, sign(key, &signed)),
    ]
}

/// Signs `request` as it will be sent, adding the headers of [`signed_headers`].
pub fn sign_request(
    key: &[u8],
    request: &mut pingora_http::RequestHeader,
    f: &Forwarding<'_>,
) -> pingora_error::Result<()> {
    let path_and_query = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = request.method.as_str();
    let signed = signed_headers(key, method, path_and_query, &request.headers, f);
    for (name, value) in signed {
        request.insert_header(name, value)?;
    }
    Ok(())
}

/// A forwarded request whose signature holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub task: String,
    pub request_id: String,
    /// The signed body digest, or [`STREAMED`]: the caller checks the body against it.
    pub body: String,
    pub tag: [u8; 32],
    pub timestamp: u64,
}

/// Checks a request that says it comes from an edge, at `now` (unix seconds).
pub fn check(
    key: &[u8],
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    now: u64,
) -> Result<Verified, Rejection> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = text(SIGNATURE_HEADER);
    let fields = (
        text(TASK_HEADER),
        text(TIMESTAMP_HEADER),
        text(REQUEST_ID_HEADER),
        text(BODY_HEADER),
    );
    let (Some(task), Some(timestamp), Some(request_id), Some(body)) = fields else {
        return Err(match signature {
            Some(_) => Rejection::Malformed,
            None => Rejection::Missing,
        });
    };
    let timestamp = timestamp.parse().map_err(|_| Rejection::Malformed)?;
    let host = host_of(headers);
    let digest = headers_digest(headers);
    let signed = Signed {
        timestamp,
        request_id,
        method,
        path_and_query,
        task,
        host: &host,
        body,
        headers: &digest,
    };
    let tag = verify(key, &signed, signature, now)?;
    Ok(Verified {
        task: task.to_string(),
        request_id: request_id.to_string(),
        body: body.to_string(),
        tag,
        timestamp,
    })
}

fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Headers that one hop may change and the task never sees as sent.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A digest of the headers the task will see: every header but hop-by-hop ones and
/// Poplar's own (`x-poplar-*`), names lower-case and sorted, repeated values in order.
pub fn headers_digest(headers: &HeaderMap) -> String {
    let mut names: Vec<&str> = headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| !n.starts_with("x-poplar-") && !HOP_BY_HOP.contains(n))
        .collect();
    names.sort_unstable();
    let mut digest = Sha256::new();
    for name in names {
        for value in headers.get_all(name) {
            digest.update(name.as_bytes());
            digest.update(b":");
            digest.update(value.as_bytes());
            digest.update(b"\n");
        }
    }
    hex(&digest.finalize())
}

/// The body's SHA-256 in hex.
pub fn body_digest(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The signatures a region has accepted within the skew window: each is accepted once.
pub struct Seen {
    inner: Mutex<SeenInner>,
}

#[derive(Default)]
struct SeenInner {
    tags: HashSet<[u8; 32]>,
    /// Tags by when they can be forgotten (their timestamp plus the skew), oldest first.
    expiries: VecDeque<(u64, [u8; 32])>,
}

impl Seen {
    pub fn new() -> Seen {
        Seen {
            inner: Mutex::new(SeenInner::default()),
        }
    }

    /// Records a signature signed at `timestamp`; false if it was seen before (or the set
    /// is full of live signatures, which only a flood of them can do).
    pub fn first_use(&self, tag: [u8; 32], timestamp: u64, now: u64) -> bool {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(&(expiry, old)) = inner.expiries.front() {
            if expiry >= now {
                break;
            }
            inner.expiries.pop_front();
            inner.tags.remove(&old);
        }
        if inner.tags.len() >= MAX_SEEN || !inner.tags.insert(tag) {
            return false;
        }
        // Timestamps arrive nearly in order; a late one only stays a little longer.
        let expiry = (timestamp + MAX_SKEW_SECS).max(inner.expiries.back().map_or(0, |e| e.0));
        inner.expiries.push_back((expiry, tag));
        true
    }
}

impl Default for Seen {
    fn default() -> Self {
        Seen::new()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-shared";

    fn req(timestamp: u64) -> Signed<'static> {
        Signed {
            timestamp,
            request_id: "5eed-1",
            method: "POST",
            path_and_query: "/json?x=1",
            task: "json-transform",
            host: "api.example.com",
            body: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            headers: "h1",
        }
    }

    #[test]
    fn a_signature_verifies_within_the_skew() {
        let sig = sign(KEY, &req(1000));
        assert!(verify(KEY, &req(1000), Some(&sig), 1000).is_ok());
        assert!(verify(KEY, &req(1000), Some(&sig), 1000 + MAX_SKEW_SECS).is_ok());
        assert!(verify(KEY, &req(1000), Some(&sig), 1000 - MAX_SKEW_SECS).is_ok());
        assert_eq!(
            verify(KEY, &req(1000), Some(&sig), 1000 + MAX_SKEW_SECS + 1),
            Err(Rejection::Stale)
        );
    }

    #[test]
    fn any_change_breaks_it() {
        let sig = sign(KEY, &req(1000));
        let base = req(1000);
        let changed = [
            Signed {
                method: "GET",
                ..base
            },
            Signed {
                path_and_query: "/json?x=2",
                ..base
            },
            Signed {
                task: "hello",
                ..base
            },
            Signed {
                timestamp: 1001,
                ..base
            },
            Signed {
                request_id: "5eed-2",
                ..base
            },
            Signed {
                host: "evil.example",
                ..base
            },
            Signed {
                body: STREAMED,
                ..base
            },
            Signed {
                headers: "h2",
                ..base
            },
        ];
        for s in changed {
            assert_eq!(
                verify(KEY, &s, Some(&sig), 1000),
                Err(Rejection::Mismatch),
                "{s:?}"
            );
        }
        assert_eq!(
            verify(b"another key, just as long", &req(1000), Some(&sig), 1000),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn malformed_and_missing() {
        assert_eq!(verify(KEY, &req(1), None, 1), Err(Rejection::Missing));
        for bad in [
            "deadbeef",
            "v2=zz",
            "v1=00",
            &format!("v2={}", "g".repeat(64)),
        ] {
            assert_eq!(
                verify(KEY, &req(1), Some(bad), 1),
                Err(Rejection::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_headers_digest_ignores_hops_and_our_own_but_not_order_of_repeats() {
        let mut a = HeaderMap::new();
        a.insert("host", "x".parse().unwrap());
        a.append("accept", "a".parse().unwrap());
        a.append("accept", "b".parse().unwrap());
        let mut b = a.clone();
        b.insert("connection", "keep-alive".parse().unwrap());
        b.insert("x-poplar-signature", "v2=..".parse().unwrap());
        assert_eq!(headers_digest(&a), headers_digest(&b));
        let mut c = HeaderMap::new();
        c.insert("host", "x".parse().unwrap());
        c.append("accept", "b".parse().unwrap());
        c.append("accept", "a".parse().unwrap());
        assert_ne!(headers_digest(&a), headers_digest(&c));
        let mut d = a.clone();
        d.insert("set-cookie", "s=1".parse().unwrap());
        assert_ne!(
            headers_digest(&a),
            headers_digest(&d),
            "an added header counts"
        );
    }

    #[test]
    fn a_signature_is_accepted_once_within_its_window() {
        let seen = Seen::new();
        assert!(seen.first_use([1; 32], 1000, 1000));
        assert!(!seen.first_use([1; 32], 1000, 1005), "a replay");
        assert!(seen.first_use([2; 32], 1000, 1005));
        // Past the window the tag is forgotten; verify() refuses it as stale by then.
        assert!(seen.first_use([1; 32], 1000, 1000 + MAX_SKEW_SECS + 1));
    }
}
