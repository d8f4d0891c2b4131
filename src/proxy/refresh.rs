//! Background refresh for `stale-while-revalidate`: fetch the answer again, off any
//! request's path, and store it. The request sent is the one refreshed: its method, head
//! and (on a pure route, whose key holds the body's hash) its body. Origins and regions are asked over a plain HTTP/1.1
//! client; a task of an edge without regions runs inline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::cache::Cache;
use crate::cache::CacheCtx;
use crate::wasm::{Runtime, Task};

/// How long a refresh may take in all.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a refresh gets its answer.
pub enum Source {
    /// An origin, or a region with the signature headers to send.
    Http {
        addr: SocketAddr,
        extra: Vec<(&'static str, String)>,
    },
    Inline {
        runtime: Arc<Runtime>,
        task: Arc<Task>,
    },
}

/// Refreshes the entry `ctx` files, then releases its waiters.
pub fn spawn(cache: Arc<Cache>, mut ctx: Box<CacheCtx>, source: Source) {
    tokio::spawn(async move {
        let fetched = tokio::time::timeout(REFRESH_TIMEOUT, fetch(&ctx, source)).await;
        match fetched {
            Ok(Ok((head, body))) => {
                ctx.on_head(&cache, &head);
                ctx.on_body(&cache, &body);
                ctx.on_end(&cache);
            }
            Ok(Err(e)) => log::warn!(
                "background refresh of {:?} failed: {e}",
                ctx.filing.tags.path
            ),
            Err(_) => log::warn!("background refresh of {:?} timed out", ctx.filing.tags.path),
        }
    });
}

async fn fetch(ctx: &CacheCtx, source: Source) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let mut parts = ctx.filing.request.clone();
    parts.method = ctx.replay.method.clone();
    let body = ctx.replay.body.clone();
    match source {
        Source::Http { addr, extra } => {
            let mut request = http::Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone());
            // The body's framing is this client's to set, for the body it sends.
            let framing = [
                http::header::CONTENT_LENGTH,
                http::header::TRANSFER_ENCODING,
            ];
            for (name, value) in &parts.headers {
                if !framing.contains(name) {
                    request = request.header(name, value);
                }
            }
            for (name, value) in extra {
                request = request.header(name, value);
            }
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let response = sender.send_request(request.body(Full::new(body))?).await?;
            let (head, body) = response.into_parts();
            Ok((head, body.collect().await?.to_bytes()))
        }
        Source::Inline { runtime, task } => {
            let slot = runtime
                .try_slot()
                .ok_or_else(|| anyhow::anyhow!("no execution slot free"))?;
            let request = http::Request::from_parts(parts, Full::new(body));
            let mut response = task.call(slot, request, "refresh".into()).await?;
            let (chunks, complete) = response.collect_up_to(usize::MAX).await?;
            anyhow::ensure!(complete, "body not complete");
            Ok((response.head.clone(), crate::body::concat(chunks)))
        }
    }
}
