//! Filling one key: what a cacheable request carries from the lookup to the end of its
//! answer (why it went forward, whether it may be stored, its lock, a stale entry for
//! `stale-if-error`), and the recording of the answer as it passes, inline or proxied, to
//! store it whole. No I/O: the proxy phases feed it.

use std::sync::Arc;

use bytes::BytesMut;

use super::{Cache, Entry, Filing, Leader, Status, Verdict, policy};

/// Why a request went forward (RFC 9211 `fwd=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Not in the cache.
    UriMiss,
    /// In the cache, but not for this request's `Vary` headers.
    VaryMiss,
    /// In the cache, stale.
    Stale,
    /// A method that is not cached (it may invalidate).
    Method,
    /// Not looked up (a range request, or a body too large to key).
    Bypass,
    /// The request asked to bypass the cache (`no-cache`, ...).
    Request,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Method => "method",
            Fwd::Bypass => "bypass",
            Fwd::Request => "request",
        }
    }
}

/// A cacheable route's per-request cache state.
pub struct CacheCtx {
    pub filing: Filing,
    pub ttl: Option<std::time::Duration>,
    /// Why the request goes forward (RFC 9211 `fwd=`).
    pub fwd: Fwd,
    /// Whether the answer may be stored (GET, or any method on a pure route; not HEAD).
    pub storable: bool,
    /// A stored response this request may not take as it is: validated with the origin or
    /// region (its `ETag` or `Last-Modified` sent with the request), and served on an error
    /// when its `stale-if-error` allows.
    pub stale: Option<Arc<Entry>>,
    /// The stale entry's validators went with the request.
    pub validating: bool,
    /// The answer the edge gives from the cache instead of the one that came back: the stale
    /// entry freshened by a `304`, or served on a `5xx` under `stale-if-error`.
    pub answer: Option<(Arc<Entry>, Status)>,
    /// Held while this request fills the key, so others wait for it.
    pub leader: Option<Leader>,
    /// The request as it came, for a background refresh to replay: its method (a pure
    /// route's is judged as a GET in `filing`) and, on a pure route, its body.
    pub replay: Replay,
    recording: Option<Recording>,
    /// Set once the response head was judged.
    status: Option<Status>,
}

struct Recording {
    verdict: Verdict,
    head: http::response::Parts,
    body: BytesMut,
}

/// What a refresh sends again.
#[derive(Default)]
pub struct Replay {
    pub method: http::Method,
    pub body: bytes::Bytes,
}

impl CacheCtx {
    pub fn new(
        filing: Filing,
        ttl: Option<std::time::Duration>,
        fwd: Fwd,
        storable: bool,
    ) -> CacheCtx {
        CacheCtx {
            filing,
            ttl,
            fwd,
            storable,
            stale: None,
            validating: false,
            answer: None,
            leader: None,
            replay: Replay::default(),
            recording: None,
            status: None,
        }
    }

    /// Whether the answer `head` is replaced by a stored one ([`CacheCtx::answer`]): a `304`
    /// to the validators the edge sent (the stored response, freshened by it, is stored
    /// again; RFC 9111, 4.3.4), or a `5xx` while the stale entry's `stale-if-error` holds.
    pub fn answer_from_store(&mut self, cache: &Cache, head: &http::response::Parts) -> bool {
        let Some(stale) = &self.stale else {
            return false;
        };
        let now = cache.now();
        // A 304 to the edge's own validators is about the one response it holds for them,
        // whatever ETag it names: that response, freshened (its own ETag kept), answers. Passed
        // on, the 304 would reach a client that asked no question.
        if head.status == http::StatusCode::NOT_MODIFIED && self.validating {
            let mut res = http::Response::new(()).into_parts().0;
            res.status = stale.status;
            res.headers = policy::freshened(&stale.headers, &head.headers);
            let (entry, stored) = match cache.judge(&self.filing.request, &res, self.ttl) {
                Ok(verdict) => {
                    let entry = Entry::new(&self.filing.request, verdict, &res, &stale.body);
                    (entry.clone(), cache.keep(&self.filing, entry))
                }
                Err(_) => {
                    // It may no longer be stored (a `no-store` now): served this once.
                    cache.invalidate(&self.filing.key);
                    let verdict = policy::Verdict::served_once(res.headers.clone(), now);
                    (
                        Entry::new(&self.filing.request, verdict, &res, &stale.body),
                        false,
                    )
                }
            };
            let status = Status::Forward {
                fwd: self.fwd,
                stored,
                detail: Some("revalidated"),
            };
            self.answer = Some((entry, status));
            self.leader = None;
            return true;
        }
        if head.status.is_server_error()
            && let Some(answer) = self.stale_if_error(now)
        {
            self.answer = Some(answer);
            self.leader = None;
            return true;
        }
        false
    }

    /// The stale entry and its `Cache-Status`, when its `stale-if-error` lets it answer for
    /// a failure now (never to a client's `no-cache`).
    pub fn stale_if_error(&self, now: std::time::SystemTime) -> Option<(Arc<Entry>, Status)> {
        let stale = self.stale.as_ref().filter(|_| self.fwd == Fwd::Stale)?;
        stale.may_serve_on_error(now).then(|| {
            let status = Status::Hit {
                ttl: stale.ttl(now),
                detail: Some("stale-if-error"),
                collapsed: false,
            };
            (stale.clone(), status)
        })
    }

    /// Judges the response head; returns the `Cache-Status` to send with it.
    /// `length` is the body's, when known now (a `content-length`, or a body already
    /// whole): only then can the answer be called `stored` before its body has passed.
    pub fn on_head(
        &mut self,
        cache: &Cache,
        head: &http::response::Parts,
        length: Option<usize>,
    ) -> String {
        let mut detail = None;
        if self.fwd == Fwd::Method && (head.status.is_success() || head.status.is_redirection()) {
            cache.invalidate(&self.filing.key);
            // And the URIs its answer names, of the same host (RFC 9111, 4.4).
            if let Some(siblings) = &self.filing.siblings {
                for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
                    let named = head.headers.get(name).and_then(|v| v.to_str().ok());
                    if let Some(key) = named.and_then(|uri| siblings.key_of(uri)) {
                        cache.invalidate(&key);
                    }
                }
            }
        }
        let made_by = head.headers.get(crate::registry::DIGEST_HEADER);
        let other_version = (self.filing.version.as_ref())
            .is_some_and(|ours| made_by.is_some_and(|v| v.as_bytes() != ours.as_bytes()));
        if self.storable && other_version {
            detail = Some("other-version");
        } else if self.storable {
            match cache.judge(&self.filing.request, head, self.ttl) {
                Ok(verdict) => {
                    if length.is_none_or(|len| cache.fits(len)) {
                        self.recording = Some(Recording {
                            verdict,
                            head: head.clone(),
                            body: BytesMut::with_capacity(length.unwrap_or(0)),
                        });
                    } else {
                        detail = Some("too-large");
                    }
                }
                Err(why) => detail = Some(why.as_str()),
            }
        }
        // A body of unknown length may yet outgrow the cache: not claimed as stored.
        let status = Status::Forward {
            fwd: self.fwd,
            stored: self.recording.is_some() && length.is_some(),
            detail,
        };
        let header = status.header();
        self.status = Some(status);
        header
    }

    /// A piece of the body on its way to the client.
    pub fn on_body(&mut self, cache: &Cache, chunk: &[u8]) {
        if let Some(r) = &mut self.recording {
            if cache.fits(r.body.len() + chunk.len()) {
                r.body.extend_from_slice(chunk);
            } else {
                self.recording = None;
            }
        }
    }

    /// The body is complete: store it.
    pub fn on_end(&mut self, cache: &Cache) {
        log::debug!(
            "cache: end of {:?}, recording: {}",
            self.filing.tags.path,
            self.recording.is_some()
        );
        if let Some(r) = self.recording.take() {
            cache.store(&self.filing, r.verdict, &r.head, r.body.freeze());
        }
        self.leader = None;
    }

    /// The `Cache-Status` for an error answered by Poplar on this route.
    pub fn error_status(&self) -> String {
        Status::Forward {
            fwd: self.fwd,
            stored: false,
            detail: Some("error"),
        }
        .header()
    }
}
