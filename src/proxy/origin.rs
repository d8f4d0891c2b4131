//! An origin route's request on its way: a server of the pool per attempt, the next one after
//! a refused connection, and what the request's outcome says of the server it reached.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};

use crate::errors::ErrorKind;
use crate::origins::{Pick, Pool, Tried};

pub(super) struct ToOrigin {
    pool: Arc<Pool>,
    tried: Tried,
    current: Option<Pick>,
    /// Whether a connection to `current` was made (a failure after it counts against it too).
    connected: bool,
}

impl ToOrigin {
    pub(super) fn new(pool: Arc<Pool>) -> ToOrigin {
        ToOrigin {
            pool,
            tried: Tried::default(),
            current: None,
            connected: false,
        }
    }

    /// The peer for the next attempt at a request for `path`: a `502 origin` when the pool
    /// has no server left to try.
    pub(super) fn next_peer(&mut self, path: &str) -> Result<Box<HttpPeer>> {
        let pick = self
            .pool
            .pick(path, self.tried)
            .map_err(|why| ErrorKind::Origin.to_pingora(why))?;
        self.tried.add(pick.server);
        self.current = Some(pick);
        self.connected = false;
        Ok(Box::new(self.pool.peer(pick)))
    }

    pub(super) fn connected(&mut self) {
        self.connected = true;
    }

    /// The current server refused the connection: counted against it; nothing was sent, so
    /// the request is retried while another server is left.
    pub(super) fn refused(&self, e: &mut Error) {
        if let Some(pick) = self.current {
            self.pool.failed(pick.server);
            e.set_retry(self.pool.has_untried(self.tried));
        }
    }

    /// The request ended, `failed` or not, on the server it connected to.
    pub(super) fn ended(&self, failed: bool) {
        if let (Some(pick), true) = (self.current, self.connected) {
            match failed {
                true => self.pool.failed(pick.server),
                false => self.pool.answered(pick.server),
            }
        }
    }

    /// The `Host` the pool sends instead of the client's.
    pub(super) fn host(&self) -> Option<&str> {
        self.pool.spec.host.as_deref()
    }

    /// The address of the server tried last.
    pub(super) fn addr(&self) -> Option<SocketAddr> {
        self.current.map(|p| p.addr)
    }
}
