//! HTTP caching rules (RFC 9111) on top of `http-cache-semantics`: whether a response may
//! be stored, for how long it is fresh (with a route's default TTL when the response says
//! nothing), and how long it may be served stale (RFC 5861). Plain functions, no I/O.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, request, response};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// What the rules say about one response.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub policy: CachePolicy,
    /// Fresh for this long from now; zero means not worth storing.
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// Why a response is not stored, for `Cache-Status: ...; detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// `no-store`, `private`, an uncacheable status, `Authorization`, `Set-Cookie`...
    Uncacheable,
    /// Storable, but fresh for no time at all and with no stale allowance.
    NoFreshness,
    /// Produced by Poplar (an `x-poplar-error`), never cached.
    PoplarError,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Uncacheable => "uncacheable",
            NotStored::NoFreshness => "no-freshness",
            NotStored::PoplarError => "error",
        }
    }
}

fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let d = d.trim();
            match d.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_string()),
                ),
                None => (d.to_ascii_lowercase(), None),
            }
        })
}

fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    directives(headers)
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v?.parse().ok())
        .map(Duration::from_secs)
}

fn has(headers: &HeaderMap, name: &str) -> bool {
    directives(headers).any(|(k, _)| k == name)
}

/// Whether the response states its own freshness (so a route's default TTL does not apply).
fn states_freshness(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::EXPIRES)
        || has(headers, "max-age")
        || has(headers, "s-maxage")
}

/// Whether a client asked to bypass stored responses (`no-cache`, or `Pragma: no-cache`).
pub fn request_bypasses(req: &request::Parts) -> bool {
    has(&req.headers, "no-cache")
        || (!req.headers.contains_key(http::header::CACHE_CONTROL)
            && req
                .headers
                .get(http::header::PRAGMA)
                .and_then(|p| p.to_str().ok())
                .is_some_and(|p| p.contains("no-cache")))
}

/// Judges a response to `req`. `default_ttl` is the route's `cache.ttl`.
pub fn judge(
    req: &request::Parts,
    res: &response::Parts,
    default_ttl: Option<Duration>,
    now: SystemTime,
) -> Result<Verdict, NotStored> {
    if res.headers.contains_key("x-poplar-error") {
        return Err(NotStored::PoplarError);
    }
    let judged = with_default_ttl(res, default_ttl);
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(req, &judged, now, options);
    if !policy.is_storable() {
        return Err(NotStored::Uncacheable);
    }
    let ttl = policy.time_to_live(now);
    let (swr, sie) = stale_windows(&res.headers);
    if ttl.is_zero() && swr.is_zero() && sie.is_zero() {
        return Err(NotStored::NoFreshness);
    }
    Ok(Verdict {
        policy,
        ttl,
        stale_while_revalidate: swr,
        stale_if_error: sie,
    })
}

/// `res` as the policy should judge it: with the route's default TTL as `s-maxage` (for a
/// shared cache only) when it states no freshness of its own. What is stored and served
/// keeps the response's own headers.
fn with_default_ttl(res: &response::Parts, default_ttl: Option<Duration>) -> response::Parts {
    let mut judged = res.clone();
    if let Some(ttl) = default_ttl.filter(|_| !states_freshness(&res.headers)) {
        let value = match res
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
        {
            Some(cc) => format!("{cc}, s-maxage={}", ttl.as_secs()),
            None => format!("s-maxage={}", ttl.as_secs()),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            judged.headers.insert(http::header::CACHE_CONTROL, value);
        }
    }
    judged
}

/// How long past its freshness the answer may be served while it is refreshed, and on an
/// error: `stale-while-revalidate` and `stale-if-error`, none where must-revalidate,
/// proxy-revalidate, s-maxage or no-cache forbid a shared cache to serve stale.
fn stale_windows(headers: &http::HeaderMap) -> (Duration, Duration) {
    let strict = [
        "must-revalidate",
        "proxy-revalidate",
        "s-maxage",
        "no-cache",
    ]
    .iter()
    .any(|d| has(headers, d));
    if strict {
        return (Duration::ZERO, Duration::ZERO);
    }
    (
        seconds(headers, "stale-while-revalidate").unwrap_or_default(),
        seconds(headers, "stale-if-error").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method("GET").uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn res(status: u16, headers: &[(&str, &str)]) -> response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn ttl(headers: &[(&str, &str)], default: Option<u64>) -> Result<u64, NotStored> {
        let now = SystemTime::now();
        judge(
            &req(&[]),
            &res(200, headers),
            default.map(Duration::from_secs),
            now,
        )
        .map(|v| v.ttl.as_secs())
    }

    #[test]
    fn freshness_from_the_response() {
        assert_eq!(ttl(&[("cache-control", "max-age=60")], None), Ok(60));
        assert_eq!(
            ttl(&[("cache-control", "max-age=60, s-maxage=10")], None),
            Ok(10),
            "s-maxage wins for a shared cache"
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=60")], Some(5)),
            Ok(60),
            "the response's own freshness wins over the route's"
        );
        assert_eq!(
            ttl(&[], Some(30)),
            Ok(30),
            "the route's default applies when the response says nothing"
        );
        assert_eq!(ttl(&[], None), Err(NotStored::NoFreshness));
    }

    #[test]
    fn what_is_never_stored() {
        assert_eq!(
            ttl(&[("cache-control", "no-store, max-age=60")], Some(30)),
            Err(NotStored::Uncacheable)
        );
        assert_eq!(
            ttl(&[("cache-control", "private, max-age=60")], Some(30)),
            Err(NotStored::Uncacheable)
        );
        assert_eq!(
            ttl(&[("cache-control", "no-cache")], Some(30)),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            ttl(&[("x-poplar-error", "trap")], Some(30)),
            Err(NotStored::PoplarError)
        );
        assert_eq!(
            ttl(
                &[("set-cookie", "a=b"), ("cache-control", "max-age=60")],
                None
            ),
            Err(NotStored::NoFreshness)
        );
        let auth = judge(
            &req(&[("authorization", "x")]),
            &res(200, &[("cache-control", "max-age=60")]),
            None,
            SystemTime::now(),
        );
        assert!(matches!(auth, Err(NotStored::Uncacheable)));
    }

    #[test]
    fn expires_and_stale_allowances() {
        let now = SystemTime::now();
        let date = httpdate(now);
        let expires = httpdate(now + Duration::from_secs(120));
        let v = judge(
            &req(&[]),
            &res(200, &[("date", &date), ("expires", &expires)]),
            None,
            now,
        )
        .unwrap();
        assert!((118..=120).contains(&v.ttl.as_secs()), "{:?}", v.ttl);

        let v = judge(
            &req(&[]),
            &res(
                200,
                &[(
                    "cache-control",
                    "max-age=1, stale-while-revalidate=30, stale-if-error=600",
                )],
            ),
            None,
            now,
        )
        .unwrap();
        assert_eq!(
            (
                v.stale_while_revalidate.as_secs(),
                v.stale_if_error.as_secs()
            ),
            (30, 600)
        );
        let v = judge(
            &req(&[]),
            &res(
                200,
                &[(
                    "cache-control",
                    "max-age=1, must-revalidate, stale-if-error=600",
                )],
            ),
            None,
            now,
        )
        .unwrap();
        assert_eq!(
            v.stale_if_error,
            Duration::ZERO,
            "must-revalidate forbids serving stale"
        );
    }

    #[test]
    fn client_bypass() {
        assert!(request_bypasses(&req(&[("cache-control", "no-cache")])));
        assert!(request_bypasses(&req(&[("pragma", "no-cache")])));
        assert!(!request_bypasses(&req(&[(
            "cache-control",
            "max-age=0, foo"
        )])));
    }

    fn httpdate(t: SystemTime) -> String {
        httpdate::fmt_http_date(t)
    }
}
