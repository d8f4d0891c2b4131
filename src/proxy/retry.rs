//! Whether a request that failed upstream after its connection was made goes to another
//! upstream: Pingora's rule for origins, and for a forward to a region, failover before any
//! answer reached the client.

use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use crate::regions::{Attempts, Regions};

/// A forward in flight, as the retry decision sees it.
pub(super) struct Forwarding<'a> {
    pub attempts: &'a mut Attempts,
    pub regions: &'a Regions,
    /// Whether the edge holds the whole body (so Pingora can send it again).
    pub replayable: bool,
}

/// Marks `e` retryable or not. An origin request follows Pingora's rule (an idempotent
/// method, its body still held, on a connection that was reused and went stale). A forward
/// whose region timed out or broke the connection before the client got anything is taken
/// off that region (out until a probe brings it back) and, when its body can be replayed,
/// sent to the next one; a stale pooled connection is simply tried again.
pub(super) fn decide(
    session: &Session,
    e: &mut Error,
    forward: Option<Forwarding<'_>>,
    client_reused: bool,
) {
    let held = !session.as_ref().retry_buffer_truncated();
    let Some(fwd) = forward else {
        if session.req_header().method.is_idempotent() && held {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        return;
    };
    if e.esource() != &ErrorSource::Upstream {
        // The client went away (or its side failed): nothing to say about the region.
        e.set_retry(false);
        return;
    }
    let unanswered = session.response_written().is_none();
    let replayable = unanswered && fwd.replayable && held;
    let hung = matches!(e.etype, ErrorType::ReadTimedout);
    if client_reused && !hung {
        // A pooled connection the region closed: nothing says the region is down.
        e.set_retry(replayable);
        return;
    }
    if !unanswered {
        e.set_retry(false);
        return;
    }
    log::warn!("forward: the region did not answer ({e}); trying another");
    let another = fwd.attempts.refused(fwd.regions);
    e.set_retry(replayable && another);
}
