//! Edge-to-region request signing: HMAC-SHA256 with a shared key over a timestamp, the
//! method, the path and query, and the task name; checked with a bounded clock skew and a
//! constant-time compare.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Names the task a forwarded request is for.
pub const TASK_HEADER: &str = "x-poplar-task";
/// Unix seconds at which the edge signed the request.
pub const TIMESTAMP_HEADER: &str = "x-poplar-timestamp";
/// `v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-poplar-signature";
/// How far an edge's clock may be from a region's.
pub const MAX_SKEW_SECS: u64 = 30;

/// What the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub timestamp: u64,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub task: &'a str,
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
}

fn mac(key: &[u8], s: &Signed<'_>) -> Hmac<Sha256> {
    // An HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    let Signed {
        timestamp,
        method,
        path_and_query,
        task,
    } = s;
    mac.update(format!("poplar-v1\n{timestamp}\n{method}\n{path_and_query}\n{task}").as_bytes());
    mac
}

/// The `x-poplar-signature` value for a request.
pub fn sign(key: &[u8], s: &Signed<'_>) -> String {
    let tag = mac(key, s).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// The three headers that name and sign a forwarded request, signed now.
pub fn headers(
    key: &[u8],
    method: &str,
    path_and_query: &str,
    task: &str,
) -> [(&'static str, String); 3] {
    let timestamp = unix_now();
    let signature = sign(
        key,
        &Signed {
            timestamp,
            method,
            path_and_query,
            task,
        },
    );
    [
        (TASK_HEADER, task.to_string()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, signature),
    ]
}

/// Checks a signature header against the request it came with, at time `now` (unix secs).
pub fn verify(
    key: &[u8],
    s: &Signed<'_>,
    signature: Option<&str>,
    now: u64,
) -> Result<(), Rejection> {
    let signature = signature.ok_or(Rejection::Missing)?;
    let hex = signature.strip_prefix("v1=").ok_or(Rejection::Malformed)?;
    let tag = decode_hex(hex).ok_or(Rejection::Malformed)?;
    if now.abs_diff(s.timestamp) > MAX_SKEW_SECS {
        return Err(Rejection::Stale);
    }
    mac(key, s)
        .verify_slice(&tag)
        .map_err(|_| Rejection::Mismatch)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
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
            method: "POST",
            path_and_query: "/json?x=1",
            task: "json-transform",
        }
    }

    #[test]
    fn a_signature_verifies_within_the_skew() {
        let sig = sign(KEY, &req(1000));
        assert_eq!(verify(KEY, &req(1000), Some(&sig), 1000), Ok(()));
        assert_eq!(
            verify(KEY, &req(1000), Some(&sig), 1000 + MAX_SKEW_SECS),
            Ok(())
        );
        assert_eq!(
            verify(KEY, &req(1000), Some(&sig), 1000 - MAX_SKEW_SECS),
            Ok(())
        );
        assert_eq!(
            verify(KEY, &req(1000), Some(&sig), 1000 + MAX_SKEW_SECS + 1),
            Err(Rejection::Stale)
        );
    }

    #[test]
    fn any_change_breaks_it() {
        let sig = sign(KEY, &req(1000));
        let changed = [
            Signed {
                method: "GET",
                ..req(1000)
            },
            Signed {
                path_and_query: "/json?x=2",
                ..req(1000)
            },
            Signed {
                task: "hello",
                ..req(1000)
            },
            Signed {
                timestamp: 1001,
                ..req(1000)
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
        assert_eq!(
            verify(KEY, &req(1), Some("deadbeef"), 1),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            verify(KEY, &req(1), Some("v1=zz"), 1),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            verify(KEY, &req(1), Some(&format!("v1={}", "g".repeat(64))), 1),
            Err(Rejection::Malformed)
        );
    }
}
