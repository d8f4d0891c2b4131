//! The edge's result cache: task results (inline or from a region) and origin responses,
//! under HTTP caching rules, bounded by bytes, with request coalescing, stale serving and
//! purge.
//!
//! Storage is TinyUFO (S3-FIFO with TinyLFU admission, as Pingora's memory cache uses),
//! weighted by size. Each primary key holds the variants `Vary` asks for.

pub mod fill;
pub mod key;
pub mod lock;
pub mod policy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, request};
use http_cache_semantics::{BeforeRequest, CachePolicy};
use tinyufo::TinyUfo;

use crate::config::CacheSpec;
pub use fill::{CacheCtx, Fwd, Replay};
pub use key::{KeyParts, Status, primary_key};
pub use lock::{Leader, Locks, Turn};
pub use policy::{NotStored, Verdict};

/// Variants kept per primary key (distinct `Vary` values); the oldest goes first.
const MAX_VARIANTS: usize = 16;
/// Weights count KiB (TinyUFO weighs items in 16 bits).
const WEIGHT_UNIT: usize = 1024;

/// Where a response is to be stored: its key, its tags, and the request it answers.
#[derive(Debug, Clone)]
pub struct Filing {
    pub key: String,
    pub tags: Tags,
    pub request: request::Parts,
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
    policy: CachePolicy,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    fresh_until: SystemTime,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    vary: Vec<(String, Option<String>)>,
}

impl Entry {
    /// Seconds of freshness left (negative once stale), for `Cache-Status: ttl=`.
    pub fn ttl(&self, now: SystemTime) -> i64 {
        match self.fresh_until.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }

    /// The `Age` to send with it.
    pub fn age(&self, now: SystemTime) -> u64 {
        self.policy.age(now).as_secs()
    }

    fn staleness(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fresh_until).unwrap_or_default()
    }

    /// Stale, but within `stale-while-revalidate`.
    pub fn may_revalidate_in_background(&self, now: SystemTime) -> bool {
        self.staleness(now) <= self.stale_while_revalidate
    }

    /// Stale, but within `stale-if-error`.
    pub fn may_serve_on_error(&self, now: SystemTime) -> bool {
        self.staleness(now) <= self.stale_if_error
    }

    fn vary_matches(&self, req: &request::Parts) -> bool {
        self.vary.iter().all(|(name, value)| {
            let got = req.headers.get(name.as_str()).and_then(|v| v.to_str().ok());
            got == value.as_deref()
        })
    }

    fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        self.body.len() + headers + 256
    }
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

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    stores: AtomicU64,
    evictions: AtomicU64,
    stale_served: AtomicU64,
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
    store: TinyUfo<u64, Arc<Bucket>>,
    /// Every stored key with its tags and weight: purges walk it, evictions prune it.
    index: Mutex<HashMap<String, (Tags, u64)>>,
    pub locks: Arc<Locks>,
    spec: CacheSpec,
    counters: Counters,
    clock: Clock,
}

impl Cache {
    pub fn new(spec: CacheSpec) -> Cache {
        Cache::with_clock(spec, Clock::default())
    }

    /// A cache reading the time from `clock` (which tests move on instead of sleeping).
    pub fn with_clock(spec: CacheSpec, clock: Clock) -> Cache {
        let units = (spec.memory as usize / WEIGHT_UNIT).max(1);
        Cache {
            store: TinyUfo::new(units, (units / 16).max(16)),
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

    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    fn index(&self) -> MutexGuard<'_, HashMap<String, (Tags, u64)>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `key` up for `req` (whose headers `Vary` may name).
    pub fn lookup(&self, key: &str, req: &request::Parts, now: SystemTime) -> Lookup {
        let Some(bucket) = self.store.get(&hash(key)).filter(|b| b.key == key) else {
            return Lookup::Miss;
        };
        let plain = !req.headers.contains_key(http::header::CACHE_CONTROL)
            && !req.headers.contains_key(http::header::PRAGMA);
        let mut stale = None;
        for entry in bucket.variants.iter().rev().filter(|e| e.vary_matches(req)) {
            // The common case, decided without the policy: no request directives, fresh.
            if plain && now < entry.fresh_until {
                return Lookup::Fresh(entry.clone());
            }
            match entry.policy.before_request(as_get(req).as_ref(), now) {
                BeforeRequest::Fresh(_) => return Lookup::Fresh(entry.clone()),
                BeforeRequest::Stale { matches: true, .. } => stale = stale.or(Some(entry.clone())),
                BeforeRequest::Stale { matches: false, .. } => {}
            }
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
        let bucket = self.store.get(&hash(key)).filter(|b| b.key == key);
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
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_miss(&self) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_coalesced(&self) {
        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_stale_served(&self) {
        self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
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
        now: SystemTime,
    ) -> bool {
        let Filing {
            key,
            tags,
            request: req,
        } = filing;
        if !self.fits(body.len()) {
            return false;
        }
        let entry = Arc::new(Entry {
            policy: verdict.policy,
            status: head.status,
            headers: head.headers.clone(),
            body,
            fresh_until: now + verdict.ttl,
            stale_while_revalidate: verdict.stale_while_revalidate,
            stale_if_error: verdict.stale_if_error,
            vary: vary_values(req, head),
        });
        let variants = self.variants_with(key, entry);
        let bytes: usize = variants.iter().map(|v| v.weight()).sum();
        let weight = u16::try_from(bytes.div_ceil(WEIGHT_UNIT).max(1)).unwrap_or(u16::MAX);
        let bucket = Arc::new(Bucket {
            key: key.clone(),
            variants,
        });
        let evicted = self.store.put(hash(key), bucket, weight);
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
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
            index.remove(&gone.data.key);
        }
        if kept {
            self.counters.stores.fetch_add(1, Ordering::Relaxed);
        }
        kept
    }

    /// The variants stored under `key` with `entry` among them: it replaces the one of its
    /// own `Vary` values, and the oldest goes past [`MAX_VARIANTS`].
    fn variants_with(&self, key: &str, entry: Arc<Entry>) -> Vec<Arc<Entry>> {
        let mut variants: Vec<Arc<Entry>> =
            match self.store.get(&hash(key)).filter(|b| b.key == *key) {
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
        if self.store.remove(&hash(key)).is_some() {
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
        for key in &doomed {
            self.store.remove(&hash(key));
            index.remove(key);
        }
        doomed.len()
    }

    pub fn stats(&self) -> CacheStats {
        let index = self.index();
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced_waits: c.coalesced.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            stale_served: c.stale_served.load(Ordering::Relaxed),
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

/// A HEAD is answered from a GET's entry: the policy is asked as for that GET.
fn as_get(req: &request::Parts) -> std::borrow::Cow<'_, request::Parts> {
    if req.method == http::Method::HEAD {
        let mut get = req.clone();
        get.method = http::Method::GET;
        std::borrow::Cow::Owned(get)
    } else {
        std::borrow::Cow::Borrowed(req)
    }
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
            let value = req
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (name, value)
        })
        .collect()
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
        cache.store(f, verdict, res, Bytes::from_static(body), now)
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
