//! `clients.max_connections`: the open client connections a server holds, over all its
//! listeners. One over the cap is answered `503` and closed at once, before a request is
//! read, so a flood of connections costs a write each, not a session each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

/// What a connection over the cap is told (HTTP/1.1; an h2 client sees the connection close).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
x-poplar-error: busy\r\nretry-after: 1\r\ncontent-length: 28\r\nconnection: close\r\n\r\n\
too many client connections\n";

/// The count shared by every service of one server.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    refused: AtomicU64,
}

impl Connections {
    /// Connections refused at the cap so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A Pingora app (the proxy) behind the cap.
pub struct Capped<A> {
    pub app: Arc<A>,
    pub max: usize,
    pub connections: Arc<Connections>,
}

/// Holds one connection's place until it ends.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = &self.connections.open;
        let held = Held(open);
        if open.fetch_add(1, Ordering::Relaxed) >= self.max {
            drop(held);
            self.connections.refused.fetch_add(1, Ordering::Relaxed);
            let _ = stream.write_all(REFUSAL).await;
            let _ = stream.shutdown().await;
            return None;
        }
        let kept = self.app.process_new(stream, shutdown).await;
        drop(held);
        kept
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_says_its_length() {
        let text = std::str::from_utf8(super::REFUSAL).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
