//! HTTP caching rules (RFC 9111), Poplar's own: whether a response may be stored, how old it
//! is and for how long it is fresh (with a route's default TTL when the response says
//! nothing), what a request's own directives accept, how long a response may be served
//! stale (RFC 5861), and what a `304` changes in a stored response. Plain functions, no I/O.
//!
//! Parsing follows what caches in the field accept, where the RFC leaves it open: a
//! delta-seconds value is read up to its first non-digit (`3600.5` is 3600, as Squid does),
//! the first of two values counts, and dates are read in any of the three HTTP forms and the
//! common misspellings of them (`Expires` of an unreadable form is in the past).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode, request, response};

use super::fields::{
    Directives, MAX_DELTA, date_of, delta_seconds, directives, first_text, split_list,
    surrogate_directives,
};
pub use super::fields::{SURROGATE_CAPABILITY, SURROGATE_TARGET, parse_date};

/// A heuristic freshness is this share of the time since `Last-Modified` (RFC 9111, 4.2.2)...
const HEURISTIC_SHARE: u32 = 10;
/// ...and never more than a day.
const HEURISTIC_MAX: Duration = Duration::from_secs(86_400);

/// When and how a stored response was judged: what its age and freshness are computed from.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// When the response was received.
    pub received: SystemTime,
    /// Its age then (RFC 9111, 4.2.3: the larger of `Age` and what `Date` says).
    pub initial_age: Duration,
    /// How long it is fresh from its origin (s-maxage, max-age, Expires, the route's TTL or
    /// a heuristic).
    pub lifetime: Duration,
    /// `no-cache` (without field names): stored, but validated before every use.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    pub must_revalidate: bool,
}

impl Freshness {
    /// Its age at `now` (RFC 9111, 4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.received).unwrap_or_default()
    }

    /// When it stops being fresh (before `received` if it came stale).
    pub fn fresh_until(&self) -> SystemTime {
        let until = self.received + self.lifetime;
        until.checked_sub(self.initial_age).unwrap_or(self.received)
    }
}

/// What the rules say about one response.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub freshness: Freshness,
    /// Fresh for this long from now; zero when it is stored only to be validated.
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// The headers to store: the response's, less hop-by-hop fields, those its `Connection`
    /// names and those a `no-cache="..."` or `private="..."` names.
    pub headers: HeaderMap,
}

impl Verdict {
    /// The verdict on a response that is served once and not stored: stale at once.
    pub fn served_once(headers: HeaderMap, now: SystemTime) -> Verdict {
        Verdict {
            freshness: Freshness {
                received: now,
                initial_age: Duration::ZERO,
                lifetime: Duration::ZERO,
                no_cache: true,
                must_revalidate: true,
            },
            ttl: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            headers,
        }
    }
}

/// Why a response is not stored, for `Cache-Status: ...; detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// `no-store`, `private`, an uncacheable status, `Authorization`, `Set-Cookie`...
    Uncacheable,
    /// Storable, but fresh for no time at all, with no stale allowance and no validator.
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

/// `Age`: the leading digits of its first value (`7200.0` and `7200;x=1` are 7200, as
/// Squid reads them); one with no leading digit (`abc`, `-7200`) is invalid, and the
/// response is taken as stale (RFC 9111, 5.1).
fn age_value(headers: &HeaderMap) -> Duration {
    match first_text(headers, "age") {
        Some(v) => delta_seconds(v.trim()).unwrap_or(Duration::from_secs(MAX_DELTA)),
        None => Duration::ZERO,
    }
}

/// `headers` with every value in an allocation of its own. A parsed header's value is a view
/// into the buffer its whole head was read into (4 KiB and up): kept in the cache as it is,
/// one small entry holds that buffer and the cache's byte count misses it.
pub fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        owned.append(name.clone(), owned_value(value));
    }
    owned
}

/// `value` in an allocation of its own (see [`owned_headers`]).
fn owned_value(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// What a request's own directives ask of the cache (RFC 9111, 5.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// `no-store`: neither served from nor stored in the cache.
    pub no_store: bool,
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): validated first.
    pub no_cache: bool,
    /// `max-age`: nothing older.
    pub max_age: Option<Duration>,
    /// `min-fresh`: fresh for at least this long still.
    pub min_fresh: Option<Duration>,
    /// `max-stale`: stale by at most this much is fine (`Duration::MAX` without a value).
    pub max_stale: Option<Duration>,
    /// `only-if-cached`: answer from the cache or `504`.
    pub only_if_cached: bool,
}

impl Wants {
    pub fn of(req: &request::Parts) -> Wants {
        if !req.headers.contains_key(http::header::CACHE_CONTROL) {
            let pragma = req.headers.get_all(http::header::PRAGMA).iter().any(|p| {
                p.to_str()
                    .is_ok_and(|p| p.to_ascii_lowercase().contains("no-cache"))
            });
            return Wants {
                no_cache: pragma,
                ..Wants::default()
            };
        }
        let cc = Directives(directives(&req.headers));
        Wants {
            no_store: cc.has("no-store"),
            no_cache: cc.has("no-cache"),
            max_age: cc.seconds("max-age"),
            min_fresh: cc.seconds("min-fresh"),
            max_stale: cc
                .value("max-stale")
                .map(|v| v.and_then(delta_seconds).unwrap_or(Duration::MAX)),
            only_if_cached: cc.has("only-if-cached"),
        }
    }

    /// Whether a stored response of `freshness` may answer this request at `now` without
    /// being validated (RFC 9111, 4.2 and 5.2.1).
    pub fn accepts(&self, freshness: &Freshness, now: SystemTime) -> bool {
        if self.no_cache || freshness.no_cache {
            return false;
        }
        let age = freshness.age(now);
        if self.max_age.is_some_and(|max| age > max) {
            return false;
        }
        let left = freshness.lifetime.saturating_sub(age);
        if age < freshness.lifetime {
            return self.min_fresh.is_none_or(|min| left >= min);
        }
        let stale_by = age - freshness.lifetime;
        !freshness.must_revalidate && self.max_stale.is_some_and(|max| stale_by <= max)
    }
}

/// Whether a client asked to bypass stored responses (`no-cache`, or `Pragma: no-cache`).
pub fn request_bypasses(req: &request::Parts) -> bool {
    let wants = Wants::of(req);
    wants.no_cache || wants.no_store
}

/// Status codes whose responses may be stored with heuristic freshness (RFC 9110, 15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose semantics a cache knows (for `must-understand`, RFC 9111, 5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=208 | 226 | 300..=308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=511
    )
}

/// Header fields never stored: hop-by-hop ones (RFC 9110, 7.6.1), and what a proxy says to
/// its own client.
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
    "trailer",
];

/// The headers of `res` a cache keeps: less [`NOT_STORED`], what its `Connection` names,
/// and `extra` (a `no-cache="..."` or `private="..."` list).
fn stored_headers(res: &HeaderMap, extra: &[String]) -> HeaderMap {
    let mut named: Vec<String> = extra.to_vec();
    for line in res.get_all(http::header::CONNECTION).iter() {
        if let Ok(line) = line.to_str() {
            named.extend(split_list(line).iter().map(|n| n.to_ascii_lowercase()));
        }
    }
    let mut kept = HeaderMap::with_capacity(res.len());
    for (name, value) in res {
        let name_str = name.as_str();
        if NOT_STORED.contains(&name_str) || named.iter().any(|n| n == name_str) {
            continue;
        }
        kept.append(name.clone(), owned_value(value));
    }
    kept
}

/// Judges a response to `req`, received at `now`. `default_ttl` is the route's `cache.ttl`.
pub fn judge(
    req: &request::Parts,
    res: &response::Parts,
    default_ttl: Option<Duration>,
    now: SystemTime,
) -> Result<Verdict, NotStored> {
    judge_on_clock(req, res, default_ttl, now, Duration::ZERO)
}

/// [`judge`] on a cache clock running `lead` ahead of the system's (a test's moved clock):
/// the response's `Date`, from a system clock, is compared with `now - lead`.
pub fn judge_on_clock(
    req: &request::Parts,
    res: &response::Parts,
    default_ttl: Option<Duration>,
    now: SystemTime,
    lead: Duration,
) -> Result<Verdict, NotStored> {
    if res.headers.contains_key("x-poplar-error") {
        return Err(NotStored::PoplarError);
    }
    let cc = Directives(directives(&res.headers));
    let status = res.status;
    if status.is_informational() || matches!(status.as_u16(), 206 | 304) {
        return Err(NotStored::Uncacheable);
    }
    if cc.has("must-understand") && !understood(status) {
        return Err(NotStored::Uncacheable);
    }
    // Surrogate-Control, where it speaks to this edge, takes the place of Cache-Control.
    let surrogate = surrogate_directives(&res.headers);
    let private = cc.value("private");
    let authorized = req.headers.contains_key(http::header::AUTHORIZATION)
        && !(cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate"));
    // A response that sets a cookie is one client's: never stored for another (a deliberate
    // choice, as Fastly and Varnish make by default; RFC 9111 would allow it).
    let sets_cookie = res.headers.contains_key(http::header::SET_COOKIE);
    let refused = match &surrogate {
        Some(sc) => sc.has("no-store"),
        None => cc.has("no-store") || matches!(private, Some(None)),
    };
    if refused || authorized || sets_cookie {
        return Err(NotStored::Uncacheable);
    }
    let vary_star = res
        .headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| split_list(v).contains(&"*"));
    if vary_star {
        return Err(NotStored::Uncacheable);
    }

    let date = date_of(&res.headers, "date");
    let wall = now.checked_sub(lead).unwrap_or(now);
    let apparent_age = date
        .and_then(|d| wall.duration_since(d).ok())
        .unwrap_or_default();
    let initial_age = apparent_age.max(age_value(&res.headers));
    let lifetime = if let Some(s) = surrogate.as_ref().and_then(|sc| sc.seconds("max-age")) {
        Some(s)
    } else if let Some(s) = cc.seconds("s-maxage") {
        Some(s)
    } else if let Some(m) = cc.seconds("max-age") {
        Some(m)
    } else if res.headers.contains_key(http::header::EXPIRES) {
        let expires = date_of(&res.headers, "expires").unwrap_or(SystemTime::UNIX_EPOCH);
        Some(
            expires
                .duration_since(date.unwrap_or(wall))
                .unwrap_or_default(),
        )
    } else if let Some(ttl) = default_ttl {
        Some(ttl)
    } else if heuristically_cacheable(status) || cc.has("public") {
        // Without `Last-Modified`, fresh for no time: kept only to be validated.
        Some(
            date_of(&res.headers, "last-modified").map_or(Duration::ZERO, |modified| {
                let since = date
                    .unwrap_or(wall)
                    .duration_since(modified)
                    .unwrap_or_default();
                (since / HEURISTIC_SHARE).min(HEURISTIC_MAX)
            }),
        )
    } else {
        None
    };
    let mut omitted = cc.named_fields("no-cache");
    omitted.extend(cc.named_fields("private"));
    let freshness = Freshness {
        received: now,
        initial_age,
        lifetime: lifetime.unwrap_or_default(),
        no_cache: matches!(cc.value("no-cache"), Some(None)),
        must_revalidate: ["must-revalidate", "proxy-revalidate", "s-maxage"]
            .iter()
            .any(|d| cc.has(d)),
    };
    let (swr, sie) = if freshness.must_revalidate || freshness.no_cache {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            cc.seconds("stale-while-revalidate").unwrap_or_default(),
            cc.seconds("stale-if-error").unwrap_or_default(),
        )
    };
    let ttl = if freshness.no_cache {
        Duration::ZERO
    } else {
        freshness.lifetime.saturating_sub(initial_age)
    };
    let validated = res.headers.contains_key(http::header::ETAG)
        || res.headers.contains_key(http::header::LAST_MODIFIED);
    if lifetime.is_none() && !freshness.no_cache {
        return Err(NotStored::NoFreshness);
    }
    if ttl.is_zero() && swr.is_zero() && sie.is_zero() && !validated {
        return Err(NotStored::NoFreshness);
    }
    Ok(Verdict {
        freshness,
        ttl,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        headers: stored_headers(&res.headers, &omitted),
    })
}

/// Header fields a `304` never changes in the stored response (RFC 9111, 3.2, and what the
/// body they describe would contradict).
const KEPT_ON_304: &[&str] = &[
    "content-encoding",
    "content-length",
    "content-md5",
    "content-range",
    "etag",
];

/// The stored response's headers as a `304` to its validation updates them (RFC 9111,
/// 4.3.4): each field the `304` carries replaces the stored one of its name.
pub fn freshened(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let update = stored_headers(not_modified, &[]);
    let mut merged = stored.clone();
    for name in update.keys() {
        if KEPT_ON_304.contains(&name.as_str()) {
            continue;
        }
        merged.remove(name);
        for value in update.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {

    #[test]
    fn owned_headers_hold_no_view_of_the_buffer_they_were_read_from() {
        let buffer = bytes::Bytes::from(vec![b'v'; 4096]);
        let mut headers = HeaderMap::new();
        let view = http::HeaderValue::from_maybe_shared(buffer.slice(10..20)).unwrap();
        headers.append("x-a", view);
        let owned = owned_headers(&headers);
        let copy = owned["x-a"].as_bytes();
        assert_eq!(copy, &buffer[10..20]);
        let inside = buffer.as_ptr_range();
        assert!(!inside.contains(&copy.as_ptr()), "a copy, not a view");
    }

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
            Err(NotStored::Uncacheable)
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

    fn judged(headers: &[(&str, &str)]) -> Result<Verdict, NotStored> {
        judge(&req(&[]), &res(200, headers), None, SystemTime::now())
    }

    #[test]
    fn directives_parse_as_a_list_of_tokens() {
        let max_age = |cc: &str| ttl(&[("cache-control", cc)], None);
        assert_eq!(max_age("MaX-aGe=3600"), Ok(3600), "names ignore case");
        assert_eq!(max_age("max-age=003600"), Ok(3600));
        assert_eq!(
            max_age("max-age=3600.5"),
            Ok(3600),
            "leading digits, as Squid"
        );
        assert_eq!(max_age("max-age=\"3600\""), Ok(3600), "quoted");
        assert_eq!(
            max_age("max-age=1800, max-age=1"),
            Ok(1800),
            "the first counts"
        );
        assert_eq!(max_age("max-age=99999999999"), Ok(2_147_483_648), "clamped");
        // Invalid values are stale; a malformed directive is none.
        for cc in ["max-age='3600'", "max-age=-1", "max-age= 3600"] {
            assert_eq!(max_age(cc), Err(NotStored::NoFreshness), "{cc}");
        }
        assert_eq!(max_age("max-age =3600"), Err(NotStored::NoFreshness));
        // A comma inside a quoted value does not split it.
        assert_eq!(max_age("extension=\"max-age=3600, a\", max-age=1"), Ok(1));
    }

    #[test]
    fn surrogate_control_for_this_edge_takes_the_place_of_cache_control() {
        let ttl_of = |headers: &[(&str, &str)]| judged(headers).map(|v| v.ttl.as_secs());
        assert_eq!(ttl_of(&[("surrogate-control", "max-age=3600")]), Ok(3600));
        assert_eq!(
            ttl_of(&[
                ("cache-control", "max-age=1"),
                ("surrogate-control", "MaX-aGe=600")
            ]),
            Ok(600)
        );
        assert_eq!(
            ttl_of(&[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=600;poplar")
            ]),
            Ok(600)
        );
        assert_eq!(
            ttl_of(&[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "max-age=600;other")
            ]),
            Ok(60),
            "meant for another surrogate"
        );
        assert_eq!(
            ttl_of(&[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "no-store")
            ]),
            Err(NotStored::Uncacheable)
        );
    }

    #[test]
    fn age_comes_from_age_and_date() {
        let now = SystemTime::now();
        let two_hours_ago = httpdate(now - Duration::from_secs(7200));
        // Date two hours back: already older than its hour of freshness.
        // (An ETag: stored, to be validated, so the verdict shows its freshness.)
        let etag = ("etag", "\"e\"");
        let v = judged(&[
            ("date", &two_hours_ago),
            ("cache-control", "max-age=3600"),
            etag,
        ]);
        assert!(v.unwrap().ttl.is_zero(), "apparent age counts");
        for age in ["7200", "7200.0", "7200;foo=bar", "7200, 0"] {
            let v = judged(&[("age", age), ("cache-control", "max-age=3600"), etag]).unwrap();
            assert!(v.ttl.is_zero(), "Age: {age}");
        }
        let v = judged(&[("age", "7200"), ("cache-control", "max-age=3600")]);
        assert_eq!(
            v.unwrap_err(),
            NotStored::NoFreshness,
            "stale, nothing to validate"
        );
        let v = judged(&[("age", "abc"), ("cache-control", "max-age=3600"), etag]).unwrap();
        assert!(v.ttl.is_zero(), "an invalid Age: stale");
        let v = judged(&[("cache-control", "max-age=3600"), etag]).unwrap();
        assert_eq!(v.ttl.as_secs(), 3600, "no Age: none");
    }

    #[test]
    fn any_status_with_explicit_freshness_is_stored_heuristics_only_for_some() {
        let expires = httpdate(SystemTime::now() + Duration::from_secs(600));
        for status in [200, 204, 301, 400, 404, 500, 503, 599] {
            let v = judge(
                &req(&[]),
                &res(status, &[("expires", &expires)]),
                None,
                SystemTime::now(),
            );
            assert!(v.is_ok(), "{status}");
        }
        let lm = httpdate(SystemTime::now() - Duration::from_secs(1000));
        let heuristic = |status| {
            judge(
                &req(&[]),
                &res(status, &[("last-modified", &lm)]),
                None,
                SystemTime::now(),
            )
            .map(|v| v.ttl.as_secs())
        };
        assert!(matches!(heuristic(200), Ok(99..=100)), "a tenth of its age");
        assert_eq!(heuristic(302), Err(NotStored::NoFreshness));
        let understood = |status| {
            let headers = [("cache-control", "max-age=60, must-understand")];
            judge(&req(&[]), &res(status, &headers), None, SystemTime::now()).is_ok()
        };
        assert!(understood(200));
        assert!(!understood(599));
        assert!(
            judge(
                &req(&[]),
                &res(206, &[("cache-control", "max-age=60")]),
                None,
                SystemTime::now()
            )
            .is_err()
        );
    }

    #[test]
    fn vary_star_and_named_and_hop_by_hop_fields() {
        assert!(judged(&[("cache-control", "max-age=60"), ("vary", "foo, *")]).is_err());
        let v = judged(&[
            ("cache-control", "max-age=60, no-cache=\"x-secret\""),
            ("x-secret", "1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ])
        .unwrap();
        assert!(
            !v.freshness.no_cache,
            "no-cache with fields: those fields go, not the entry"
        );
        let names: Vec<&str> = v.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["cache-control", "x-kept"]);
    }

    #[test]
    fn a_request_says_what_it_accepts() {
        let now = SystemTime::now();
        let stored = |cc: &str, age: &str| {
            judge(
                &req(&[]),
                &res(
                    200,
                    &[("cache-control", cc), ("age", age), ("etag", "\"e\"")],
                ),
                None,
                now,
            )
            .unwrap()
            .freshness
        };
        let accepts = |wants: &str, f: &Freshness| {
            Wants::of(&req(&[("cache-control", wants)])).accepts(f, now)
        };
        let half_gone = stored("max-age=3600", "1800");
        assert!(!accepts("max-age=600", &half_gone));
        assert!(accepts("max-age=2000", &half_gone));
        assert!(!accepts("min-fresh=2000", &half_gone));
        assert!(accepts("min-fresh=1000", &half_gone));
        assert!(!accepts("no-cache", &half_gone));
        let stale = stored("max-age=1500", "2000");
        assert!(!accepts("foo", &stale));
        assert!(accepts("max-stale=1000", &stale));
        assert!(!accepts("max-stale=100", &stale));
        assert!(accepts("max-stale", &stale));
        assert!(!accepts(
            "max-stale",
            &stored("max-age=1500, must-revalidate", "2000")
        ));
        assert!(
            !accepts("foo", &stored("max-age=3600, no-cache", "0")),
            "validated every time"
        );
        let wants = Wants::of(&req(&[("cache-control", "no-store, only-if-cached")]));
        assert!(wants.no_store && wants.only_if_cached);
        assert!(Wants::of(&req(&[("pragma", "no-cache")])).no_cache);
    }

    #[test]
    fn a_304_updates_the_stored_headers_but_not_those_of_the_body() {
        let mut stored = HeaderMap::new();
        for (k, v) in [
            ("etag", "\"a\""),
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("content-encoding", "gzip"),
        ] {
            stored.insert(k, v.parse().unwrap());
        }
        let mut answer = HeaderMap::new();
        for (k, v) in [
            ("etag", "\"a\""),
            ("content-type", "text/html"),
            ("x-a", "2"),
            ("content-encoding", "br"),
            ("connection", "close"),
        ] {
            answer.insert(k, v.parse().unwrap());
        }
        let merged = freshened(&stored, &answer);
        assert_eq!(merged["content-type"], "text/html");
        assert_eq!(merged["x-a"], "2");
        assert_eq!(merged["content-encoding"], "gzip");
        assert!(!merged.contains_key("connection"));
        answer.insert("etag", "\"b\"".parse().unwrap());
        assert_eq!(
            freshened(&stored, &answer)["etag"],
            "\"a\"",
            "its own ETag kept"
        );
    }

    fn httpdate(t: SystemTime) -> String {
        httpdate::fmt_http_date(t)
    }
}
