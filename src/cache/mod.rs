//! The edge's result cache: task results (inline or from a region) and origin responses,
//! under HTTP caching rules, bounded by bytes, with request coalescing, stale serving and
//! purge.
//!
//! Storage is TinyUFO (S3-FIFO with TinyLFU admission, as Pingora's memory cache uses),
//! weighted by size. Each primary key holds the variants `Vary` asks for.

pub mod fields;
pub mod fill;
pub mod key;
pub mod lock;
pub mod policy;
pub mod range;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, request};
use tinyufo::TinyUfo;

use crate::config::CacheSpec;
use crate::shards::Sharded;
pub use fill::{CacheCtx, Fwd, Replay};
pub use key::{KeyParts, Status, primary_key};
pub use lock::{Leader, Locks, Turn};
pub use policy::{Freshness, NotStored, Verdict, Wants};

/// Variants kept per primary key (distinct `Vary` values); the oldest goes first.
const MAX_VARIANTS: usize = 16;
/// Weights count KiB (TinyUFO weighs items in 16 bits).
const WEIGHT_UNIT: usize = 1024;
/// What a stored entry costs beyond its bytes: the entry and its freshness, its bucket and
/// `Arc`s, its index slot and tags, TinyUFO's per-item state (measured with the policy object
/// the entry held before: docs/RELIABILITY.md; an upper bound now).
const ENTRY_OVERHEAD: usize = 2048;
/// What a header field costs beyond its name and value (its map slot and allocation).
const FIELD_OVERHEAD: usize = 48;

/// Where a response is to be stored: its key, its tags, and the request it answers.
#[derive(Debug, Clone)]
pub struct Filing {
    pub key: String,
    pub tags: Tags,
    /// The request it answers, as filed: a copy of the session's, made by
    /// `proxy::cached::lookup` only when the request goes on (a fresh hit needs none).
    pub request: request::Parts,
    /// A pure route keys the body: the filed request is judged as a GET.
    pub by_body: bool,
    /// A task from regions: the version the key carries. An answer a region says another
    /// version made (`x-poplar-task-digest`) is not stored under it.
    pub version: Option<String>,
    /// An unsafe method's: where the keys of other URIs of its route and host are made, for
    /// the `Location` and `Content-Location` its answer invalidates too (RFC 9111, 4.4).
    pub siblings: Option<Box<Siblings>>,
}

/// What a key holds beside its path: the route, its version, the host.
#[derive(Debug, Clone)]
pub struct Siblings {
    pub route: usize,
    pub version: String,
    pub host: String,
}

impl Siblings {
    /// The key of a GET of `uri` (a path, or an absolute URI of the same host), if it is one
    /// of these.
    pub fn key_of(&self, uri: &str) -> Option<String> {
        let uri: http::Uri = uri.parse().ok()?;
        if let Some(authority) = uri.authority()
            && !authority.as_str().eq_ignore_ascii_case(&self.host)
        {
            return None;
        }
        let path_and_query = uri.path_and_query()?.as_str();
        if !path_and_query.starts_with('/') {
            return None;
        }
        Some(primary_key(&KeyParts {
            route: self.route,
            version: &self.version,
            method: "GET",
            host: &self.host,
            path_and_query,
            body: None,
        }))
    }
}

/// What a stored response is filed under, for purges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub route: usize,
    pub task: Option<String>,
    pub path: String,
}

/// One stored response.
pub struct Entry {
    pub freshness: Freshness,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    fresh_until: SystemTime,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    vary: Vec<(String, Option<String>)>,
}

impl Entry {
    /// The entry for the response `head` with `body` to `req`, as `verdict` judged it.
    pub fn new(
        req: &request::Parts,
        verdict: Verdict,
        head: &http::response::Parts,
        body: &[u8],
    ) -> Arc<Entry> {
        // Copied: kept as they came, the headers would hold the buffer their head was read
        // into (the verdict's are copies), and the body any larger buffer it is a view of.
        Arc::new(Entry {
            fresh_until: verdict.freshness.fresh_until(),
            freshness: verdict.freshness,
            status: head.status,
            headers: verdict.headers,
            body: Bytes::copy_from_slice(body),
            stale_while_revalidate: verdict.stale_while_revalidate,
            stale_if_error: verdict.stale_if_error,
            vary: vary_values(req, head),
        })
    }

    /// Seconds of freshness left (negative once stale), for `Cache-Status: ttl=`.
    pub fn ttl(&self, now: SystemTime) -> i64 {
        match self.fresh_until.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }

    /// The `Age` to send with it.
    pub fn age(&self, now: SystemTime) -> u64 {
        self.freshness.age(now).as_secs()
    }

    /// Whether it can be validated: it has an `ETag` or a `Last-Modified`.
    pub fn validators(&self) -> impl Iterator<Item = (&'static str, &http::HeaderValue)> {
        [
            ("if-none-match", "etag"),
            ("if-modified-since", "last-modified"),
        ]
        .into_iter()
        .filter_map(|(ask, name)| self.headers.get(name).map(|v| (ask, v)))
        // With an ETag, If-Modified-Since adds nothing (RFC 9110, 13.1.3).
        .take(1)
    }

    fn staleness(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fresh_until).unwrap_or_default()
    }

    /// Stale, but within a `stale-while-revalidate` it has (one it has not: validated
    /// before it is used, even while its freshness is not over, as after `no-cache`).
    pub fn may_revalidate_in_background(&self, now: SystemTime) -> bool {
        !self.stale_while_revalidate.is_zero() && self.staleness(now) <= self.stale_while_revalidate
    }

    /// Stale, but within a `stale-if-error` it has.
    pub fn may_serve_on_error(&self, now: SystemTime) -> bool {
        !self.stale_if_error.is_zero() && self.staleness(now) <= self.stale_if_error
    }

    fn vary_matches(&self, req: &request::Parts) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| vary_value_matches(req, name, value.as_deref()))
    }

    /// The bytes it holds: its body, its headers, the request values its `Vary` names,
    /// and what each entry costs beyond them.
    fn weight(&self) -> usize {
        let vary: usize = (self.vary.iter())
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, String::len))
            .sum();
        self.body.len() + field_bytes(&self.headers) + vary + ENTRY_OVERHEAD
    }
}

/// What the header fields in `headers` hold.
fn field_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + FIELD_OVERHEAD)
        .sum()
}

struct Bucket {
    key: String,
    variants: Vec<Arc<Entry>>,
}

/// The time the cache judges freshness by: the system clock plus an offset that only
/// moves forward, so a test can let entries age without sleeping.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicU64>,
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + std::time::Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// How far this clock runs ahead of the system's.
    pub fn lead(&self) -> Duration {
        Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock `by` ahead of the system's.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// The answer of a lookup.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// A matching response that is no longer fresh.
    Stale(Arc<Entry>),
    /// Responses for this URL, none for this request's `Vary` values.
    VaryMiss,
    Miss,
}

/// Per thread (every hit writes one): see [`Sharded`].
#[derive(Default)]
struct Counters {
    hits: Sharded<AtomicU64>,
    misses: Sharded<AtomicU64>,
    coalesced: Sharded<AtomicU64>,
    stores: Sharded<AtomicU64>,
    evictions: Sharded<AtomicU64>,
    stale_served: Sharded<AtomicU64>,
}

/// Cache counters and size, for the admin endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub coalesced_waits: u64,
    pub stores: u64,
    pub evictions: u64,
    pub stale_served: u64,
    pub entries: usize,
    pub bytes_in_use: u64,
    pub bytes_limit: u64,
}

/// What to purge.
#[derive(Debug, Clone)]
pub enum Purge {
    Route(usize),
    Task(String),
    PathPrefix(String),
}

pub struct Cache {
    /// Keyed by a hash of the primary key; the bucket holds the key to rule out collisions.
    /// Made at the first store: TinyUFO's frequency sketch for the default 256 MiB is 620 KB
    /// written a byte at a time, 0.6 ms of every edge's start-up, cacheable routes or none.
    store: OnceLock<TinyUfo<u64, Arc<Bucket>>>,
    /// Its weight limit, in [`WEIGHT_UNIT`]s.
    units: usize,
    /// Every stored key with its tags and weight: purges walk it, evictions prune it.
    index: Mutex<HashMap<String, (Tags, u64)>>,
    pub locks: Arc<Locks>,
    spec: CacheSpec,
    counters: Counters,
    clock: Clock,
}

impl Cache {
    /// The store, made now if nothing was stored yet.
    fn made_store(&self) -> &TinyUfo<u64, Arc<Bucket>> {
        self.store
            .get_or_init(|| TinyUfo::new(self.units, (self.units / 16).max(16)))
    }

    /// What is stored under `key` (its own, not another key's of the same hash).
    fn bucket(&self, key: &str) -> Option<Arc<Bucket>> {
        let bucket = self.store.get()?.get(&hash(key))?;
        (bucket.key == key).then_some(bucket)
    }

    pub fn new(spec: CacheSpec) -> Cache {
        Cache::with_clock(spec, Clock::default())
    }

    /// A cache reading the time from `clock` (which tests move on instead of sleeping).
    pub fn with_clock(spec: CacheSpec, clock: Clock) -> Cache {
        let units = (spec.memory as usize / WEIGHT_UNIT).max(1);
        Cache {
            store: OnceLock::new(),
            units,
            index: Mutex::new(HashMap::new()),
            locks: Arc::new(Locks::default()),
            spec,
            counters: Counters::default(),
            clock,
        }
    }

    /// Now, as freshness is judged: the system clock, moved on by any [`Clock::advance`].
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Judges a response to `req` received now, by this cache's clock (see
    /// [`policy::judge_on_clock`]).
    pub fn judge(
        &self,
        req: &request::Parts,
        res: &http::response::Parts,
        default_ttl: Option<Duration>,
    ) -> Result<Verdict, NotStored> {
        policy::judge_on_clock(req, res, default_ttl, self.now(), self.clock.lead())
    }

    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    fn index(&self) -> MutexGuard<'_, HashMap<String, (Tags, u64)>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `key` up for `req` (whose headers `Vary` may name, and whose own directives,
    /// `max-age`, `min-fresh`, `max-stale`, `no-cache`, say what it accepts).
    pub fn lookup(&self, key: &str, req: &request::Parts, now: SystemTime) -> Lookup {
        self.lookup_for(key, req, &Wants::of(req), now)
    }

    /// [`Cache::lookup`] with `req`'s directives already read.
    pub fn lookup_for(
        &self,
        key: &str,
        req: &request::Parts,
        wants: &Wants,
        now: SystemTime,
    ) -> Lookup {
        let Some(bucket) = self.bucket(key) else {
            return Lookup::Miss;
        };
        let plain = *wants == Wants::default();
        let mut stale = None;
        for entry in bucket.variants.iter().rev().filter(|e| e.vary_matches(req)) {
            let fresh = if plain {
                // The common case, decided without the age: no request directives.
                now < entry.fresh_until && !entry.freshness.no_cache
            } else {
                wants.accepts(&entry.freshness, now)
            };
            if fresh {
                return Lookup::Fresh(entry.clone());
            }
            stale = stale.or(Some(entry.clone()));
        }
        match stale {
            Some(entry) => Lookup::Stale(entry),
            None => Lookup::VaryMiss,
        }
    }

    /// What concurrent misses on `key` coalesce on: the key itself, and, when its stored
    /// responses vary, this request's values of the headers they vary on, so that filling
    /// one variant never makes another wait.
    pub fn lock_key(&self, key: &str, req: &request::Parts) -> String {
        let bucket = self.bucket(key);
        let Some(entry) = bucket.as_ref().and_then(|b| b.variants.last()) else {
            return key.to_string();
        };
        let mut lock = key.to_string();
        for (name, _) in &entry.vary {
            let value = req.headers.get(name.as_str()).map(|v| v.as_bytes());
            lock.push('\n');
            lock.push_str(name);
            lock.push('=');
            lock.push_str(&String::from_utf8_lossy(value.unwrap_or(b"")));
        }
        lock
    }

    pub fn count_hit(&self) {
        self.counters.hits.add(1);
    }

    pub fn count_miss(&self) {
        self.counters.misses.add(1);
    }

    pub fn count_coalesced(&self) {
        self.counters.coalesced.add(1);
    }

    pub fn count_stale_served(&self) {
        self.counters.stale_served.add(1);
    }

    /// Whether a body of `len` bytes may be stored at all.
    pub fn fits(&self, len: usize) -> bool {
        len as u64 <= self.spec.max_entry
    }

    /// Stores a response judged storable. Returns whether it was kept (admission may
    /// refuse it when the cache is full of more popular entries).
    pub fn store(
        &self,
        filing: &Filing,
        verdict: Verdict,
        head: &http::response::Parts,
        body: Bytes,
    ) -> bool {
        self.fits(body.len())
            && self.keep(filing, Entry::new(&filing.request, verdict, head, &body))
    }

    /// Stores `entry` under `filing`'s key (see [`Cache::store`]).
    pub fn keep(&self, filing: &Filing, entry: Arc<Entry>) -> bool {
        let Filing { key, tags, .. } = filing;
        let variants = self.variants_with(key, entry);
        // The key is held twice: in its bucket and in the index.
        let bytes: usize =
            variants.iter().map(|v| v.weight()).sum::<usize>() + 2 * key.len() + tags.path.len();
        let weight = u16::try_from(bytes.div_ceil(WEIGHT_UNIT).max(1)).unwrap_or(u16::MAX);
        let bucket = Arc::new(Bucket {
            key: key.clone(),
            variants,
        });
        let evicted = self.made_store().put(hash(key), bucket, weight);
        let mut index = self.index();
        index.insert(
            key.clone(),
            (tags.clone(), u64::from(weight) * WEIGHT_UNIT as u64),
        );
        let mut kept = true;
        for gone in evicted {
            if gone.data.key == *key {
                kept = false; // refused at admission
            } else {
                self.counters.evictions.add(1);
            }
            index.remove(&gone.data.key);
        }
        if kept {
            self.counters.stores.add(1);
        }
        kept
    }

    /// The variants stored under `key` with `entry` among them: it replaces the one of its
    /// own `Vary` values, and the oldest goes past [`MAX_VARIANTS`].
    fn variants_with(&self, key: &str, entry: Arc<Entry>) -> Vec<Arc<Entry>> {
        let mut variants: Vec<Arc<Entry>> = match self.bucket(key) {
            Some(bucket) => bucket.variants.clone(),
            None => Vec::new(),
        };
        variants.retain(|v| v.vary != entry.vary);
        variants.push(entry);
        if variants.len() > MAX_VARIANTS {
            variants.remove(0);
        }
        variants
    }

    /// Drops the entries of one key: a successful unsafe request (POST, PUT, DELETE...)
    /// invalidates what was stored for its URI (RFC 9111, section 4.4).
    pub fn invalidate(&self, key: &str) {
        let removed = self.store.get().and_then(|s| s.remove(&hash(key)));
        if removed.is_some() {
            self.index().remove(key);
        }
    }

    /// Drops every entry that `what` names; returns how many.
    pub fn purge(&self, what: &Purge) -> usize {
        let mut index = self.index();
        let doomed: Vec<String> = index
            .iter()
            .filter(|(_, (tags, _))| match what {
                Purge::Route(r) => tags.route == *r,
                Purge::Task(t) => tags.task.as_deref() == Some(t.as_str()),
                Purge::PathPrefix(p) => tags.path.starts_with(p.as_str()),
            })
            .map(|(k, _)| k.clone())
            .collect();
        let store = self.store.get();
        for key in &doomed {
            if let Some(store) = store {
                store.remove(&hash(key));
            }
            index.remove(key);
        }
        doomed.len()
    }

    pub fn stats(&self) -> CacheStats {
        let index = self.index();
        let c = &self.counters;
        CacheStats {
            hits: c.hits.sum(),
            misses: c.misses.sum(),
            coalesced_waits: c.coalesced.sum(),
            stores: c.stores.sum(),
            evictions: c.evictions.sum(),
            stale_served: c.stale_served.sum(),
            entries: index.len(),
            bytes_in_use: index.values().map(|(_, w)| w).sum(),
            bytes_limit: self.spec.memory,
        }
    }
}

fn hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
}

/// The request header values a response's `Vary` names: what tells its variants apart.
fn vary_values(req: &request::Parts, res: &http::response::Parts) -> Vec<(String, Option<String>)> {
    res.headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .map(|name| {
            let value = header_value(req, &name);
            (name, value)
        })
        .collect()
}

/// A request header's value as `Vary` compares it: its lines joined, each list element
/// trimmed (`Foo: 1` and `Foo: 2` match `Foo: 1, 2` and ` 1,2 `), and lower-cased for the
/// `Accept-*` fields, whose tokens ignore case.
fn header_value(req: &request::Parts, name: &str) -> Option<String> {
    let joined = joined_value(req, name)?;
    Some(if name.starts_with("accept") {
        joined.to_ascii_lowercase()
    } else {
        joined
    })
}

/// Whether `req`'s `name` reads as `stored` does under [`header_value`]; without making a
/// string in the common case, one line already in normal form.
fn vary_value_matches(req: &request::Parts, name: &str, stored: Option<&str>) -> bool {
    let mut lines = req.headers.get_all(name).iter();
    let (first, more) = (lines.next(), lines.next().is_some());
    match (first, stored) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(line), Some(stored)) => {
            let bytes = line.as_bytes();
            let plain = !more
                && !bytes.contains(&b',')
                && bytes.first().is_none_or(|b| !b.is_ascii_whitespace())
                && bytes.last().is_none_or(|b| !b.is_ascii_whitespace())
                && !(name.starts_with("accept") && bytes.iter().any(u8::is_ascii_uppercase));
            if plain {
                bytes == stored.as_bytes()
            } else {
                header_value(req, name).as_deref() == Some(stored)
            }
        }
    }
}

fn joined_value(req: &request::Parts, name: &str) -> Option<String> {
    let mut lines = req.headers.get_all(name).iter().peekable();
    lines.peek()?;
    let mut joined = String::new();
    for line in lines {
        for element in String::from_utf8_lossy(line.as_bytes()).split(',') {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(element.trim());
        }
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "example.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn response(headers: &[(&str, &str)]) -> http::response::Parts {
        let mut b = http::Response::builder().status(200);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn filing(path: &str, req: request::Parts) -> Filing {
        Filing {
            key: format!("k{path}"),
            by_body: false,
            version: None,
            siblings: None,
            tags: Tags {
                route: 0,
                task: None,
                path: path.into(),
            },
            request: req,
        }
    }

    fn put(
        cache: &Cache,
        f: &Filing,
        res: &http::response::Parts,
        ttl: Option<u64>,
        body: &'static [u8],
    ) -> bool {
        let now = SystemTime::now();
        let verdict = policy::judge(&f.request, res, ttl.map(Duration::from_secs), now).unwrap();
        cache.store(f, verdict, res, Bytes::from_static(body))
    }

    #[test]
    fn stored_with_the_route_default_then_found_fresh() {
        let cache = Cache::new(CacheSpec::default());
        let f = filing("/a", request("/a", &[]));
        assert!(put(
            &cache,
            &f,
            &response(&[("content-type", "text/plain")]),
            Some(30),
            b"hi"
        ));
        let Lookup::Fresh(entry) = cache.lookup(&f.key, &f.request, SystemTime::now()) else {
            panic!("not fresh")
        };
        assert_eq!(entry.body.as_ref(), b"hi");
        assert!((29..=30).contains(&entry.ttl(SystemTime::now())));
    }

    #[test]
    fn variants_by_vary() {
        let cache = Cache::new(CacheSpec::default());
        let en = filing("/v", request("/v", &[("accept-language", "en")]));
        let fr = filing("/v", request("/v", &[("accept-language", "fr")]));
        let res = response(&[("vary", "accept-language"), ("cache-control", "max-age=60")]);
        put(&cache, &en, &res, None, b"en");
        assert!(matches!(
            cache.lookup(&fr.key, &fr.request, SystemTime::now()),
            Lookup::VaryMiss
        ));
        put(&cache, &fr, &res, None, b"fr");
        put(&cache, &en, &res, None, b"en2");
        let body = |f: &Filing| match cache.lookup(&f.key, &f.request, SystemTime::now()) {
            Lookup::Fresh(e) => e.body.clone(),
            _ => panic!("miss"),
        };
        assert_eq!(
            (body(&en).as_ref(), body(&fr).as_ref()),
            (&b"en2"[..], &b"fr"[..])
        );
    }

    #[test]
    fn vary_compares_values_as_one_normalised_list() {
        let cache = Cache::new(CacheSpec::default());
        let stored = filing(
            "/n",
            request("/n", &[("foo", "1, 2"), ("accept-language", "en, DE")]),
        );
        let res = response(&[
            ("vary", "foo, accept-language"),
            ("cache-control", "max-age=60"),
        ]);
        put(&cache, &stored, &res, None, b"x");
        let mut two_lines = request("/n", &[("foo", "1"), ("accept-language", "EN,de")]);
        two_lines.headers.append("foo", "2 ".parse().unwrap());
        let hit = cache.lookup(&stored.key, &two_lines, SystemTime::now());
        assert!(
            matches!(hit, Lookup::Fresh(_)),
            "lines joined, spaces and case of Accept-* ignored"
        );
        let other = request("/n", &[("foo", "1,3"), ("accept-language", "en, de")]);
        let miss = cache.lookup(&stored.key, &other, SystemTime::now());
        assert!(matches!(miss, Lookup::VaryMiss));
    }

    #[test]
    fn siblings_name_keys_of_their_own_host_only() {
        let siblings = Siblings {
            route: 1,
            version: String::new(),
            host: "example.test".into(),
        };
        let get = |path: &str| {
            primary_key(&KeyParts {
                route: 1,
                version: "",
                method: "GET",
                host: "example.test",
                path_and_query: path,
                body: None,
            })
        };
        assert_eq!(siblings.key_of("/a?b=1"), Some(get("/a?b=1")));
        assert_eq!(siblings.key_of("http://EXAMPLE.test/a"), Some(get("/a")));
        assert_eq!(siblings.key_of("https://other.test/a"), None);
        assert_eq!(siblings.key_of("relative/path"), None);
    }

    #[test]
    fn purge_and_stats() {
        let cache = Cache::new(CacheSpec::default());
        let res = response(&[("cache-control", "max-age=60")]);
        for path in ["/a/1", "/a/2", "/b"] {
            put(&cache, &filing(path, request(path, &[])), &res, None, b"x");
        }
        assert_eq!(cache.stats().entries, 3);
        assert_eq!(cache.purge(&Purge::PathPrefix("/a".into())), 2);
        let b = filing("/b", request("/b", &[]));
        assert!(matches!(
            cache.lookup(&b.key, &b.request, SystemTime::now()),
            Lookup::Fresh(_)
        ));
        let a = filing("/a/1", request("/a/1", &[]));
        assert!(matches!(
            cache.lookup(&a.key, &a.request, SystemTime::now()),
            Lookup::Miss
        ));
        assert_eq!(cache.purge(&Purge::Route(0)), 1);
        assert_eq!(cache.stats().entries, 0);
    }
}
