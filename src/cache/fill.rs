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
    /// A stale entry, for `stale-if-error`.
    pub stale: Option<Arc<Entry>>,
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
            leader: None,
            replay: Replay::default(),
            recording: None,
            status: None,
        }
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
        }
        if self.storable {
            match policy::judge(&self.filing.request, head, self.ttl, cache.now()) {
                Ok(verdict) => {
                    if length.is_none_or(|len| cache.fits(len)) {
                        self.recording = Some(Recording {
                            verdict,
                            head: head.clone(),
                            body: BytesMut::new(),
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
            cache.store(
                &self.filing,
                r.verdict,
                &r.head,
                r.body.freeze(),
                cache.now(),
            );
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
