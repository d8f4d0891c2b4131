//! The way out of the edge: the peers (addresses with their timeouts) that origins and
//! regions are reached at, and one pooled HTTP client, Pingora's own connector, for the
//! requests the edge makes itself: background refreshes and region health probes. Client
//! requests go out through Pingora's proxy path to the same peers, with the same timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Error;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::config::Timeouts;

/// Shorter than an origin's: another region can take the request.
const REGION_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// An origin with the default timeouts, over plain HTTP/1.1.
pub fn origin_peer(addr: SocketAddr) -> HttpPeer {
    peer(addr, None, &Timeouts::default())
}

/// A region, over plain HTTP/1.1, given `read` to answer (its longest task deadline and
/// the round trip): a region silent for longer is hung, not busy.
pub fn region_peer(addr: SocketAddr, read: Duration) -> HttpPeer {
    let timeouts = Timeouts {
        connect: REGION_CONNECT_TIMEOUT,
        read,
        ..Timeouts::default()
    };
    peer(addr, None, &timeouts)
}

/// A peer at `addr` with `timeouts` (the connect one bounding a TLS handshake too), over TLS
/// with `sni` when given.
pub fn peer(addr: SocketAddr, sni: Option<String>, timeouts: &Timeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, sni.is_some(), sni.unwrap_or_default());
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.total_connection_timeout = Some(timeouts.connect);
    peer.options.read_timeout = Some(timeouts.read);
    peer.options.write_timeout = Some(timeouts.write);
    peer.options.idle_timeout = Some(timeouts.idle);
    peer
}

/// A whole answer.
pub struct Answer {
    pub head: ResponseHeader,
    pub body: Bytes,
}

/// Why an exchange has no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// No connection could be made: nothing was sent, another peer may take the request.
    #[error("cannot connect: {0}")]
    Refused(Box<Error>),
    /// The request was sent, or may have been, and no whole answer came back.
    #[error("{0}")]
    Broken(Box<Error>),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// How many pooled connections an exchange tries before a new one: a connection the peer
/// closed while it sat in the pool fails at once, with nothing processed.
const STALE_TRIES: usize = 2;

/// One pooled client for the edge's own requests. Connections are kept per peer and
/// shared by every thread.
pub struct Client {
    connector: Connector,
}

impl Default for Client {
    fn default() -> Client {
        Client {
            connector: Connector::new(None),
        }
    }
}

impl Client {
    /// Sends `head` with `body` to `peer` and reads the whole answer, of at most `limit`
    /// body bytes. `head` frames the body (a `Content-Length`, or none for an empty one). A
    /// pooled connection found closed is retried on the next.
    pub async fn exchange(
        &self,
        peer: &HttpPeer,
        head: RequestHeader,
        body: Bytes,
        limit: usize,
    ) -> Result<Answer, Failed> {
        let mut stale = 0;
        loop {
            let (mut session, reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(Failed::Refused)?;
            let sent = async {
                session.write_request_header(Box::new(head.clone())).await?;
                if !body.is_empty() {
                    session.write_request_body(body.clone(), true).await?;
                }
                session.finish_request_body().await?;
                session.read_response_header().await
            };
            match sent.await {
                Ok(()) => {}
                Err(_) if reused && stale < STALE_TRIES => {
                    stale += 1;
                    continue;
                }
                Err(e) => return Err(Failed::Broken(e)),
            }
            let Some(answer) = session.response_header().cloned() else {
                return Err(Failed::Broken(Error::explain(
                    pingora_error::ErrorType::InvalidHTTPHeader,
                    "no response header",
                )));
            };
            let mut whole = BytesMut::new();
            while let Some(chunk) = session.read_response_body().await.map_err(Failed::Broken)? {
                if whole.len() + chunk.len() > limit {
                    return Err(Failed::TooLarge(limit));
                }
                whole.extend_from_slice(&chunk);
            }
            self.connector
                .release_http_session(session, peer, peer.options.idle_timeout)
                .await;
            return Ok(Answer {
                head: answer,
                body: whole.freeze(),
            });
        }
    }
}
