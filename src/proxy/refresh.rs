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
use crate::regions::signing;
use crate::wasm::{Runtime, Task};

/// How long a refresh may take in all.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a refresh gets its answer.
pub enum Source {
    /// An origin, or a region (signed, as every forward is).
    Http {
        addr: SocketAddr,
        signing: Option<Signing>,
    },
    Inline {
        runtime: Arc<Runtime>,
        task: Arc<Task>,
    },
}

/// How a refresh sent to a region is signed.
pub struct Signing {
    pub key: Vec<u8>,
    pub task: String,
    pub request_id: Arc<str>,
}

/// Refreshes the entry `ctx` files, then releases its waiters.
pub fn spawn(cache: Arc<Cache>, mut ctx: Box<CacheCtx>, source: Source) {
    tokio::spawn(async move {
        let fetched = tokio::time::timeout(REFRESH_TIMEOUT, fetch(&ctx, source)).await;
        match fetched {
            Ok(Ok((head, body))) => {
                ctx.on_head(&cache, &head, Some(body.len()));
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
        Source::Http { addr, signing } => {
            // The body's framing is this client's to set, for the body it sends.
            let mut headers = parts.headers.clone();
            headers.remove(http::header::TRANSFER_ENCODING);
            headers.insert(http::header::CONTENT_LENGTH, body.len().into());
            if let Some(s) = signing {
                let digest = signing::body_digest(&body);
                let forwarding = signing::Forwarding {
                    task: &s.task,
                    request_id: &s.request_id,
                    body: &digest,
                };
                let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let method = parts.method.as_str();
                let signed =
                    signing::signed_headers(&s.key, method, path_and_query, &headers, &forwarding);
                for (name, value) in signed {
                    headers.insert(name, http::HeaderValue::try_from(value)?);
                }
            }
            let mut request = http::Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone());
            for (name, value) in &headers {
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
            let (chunks, complete) = response.collect_up_to(usize::MAX, REFRESH_TIMEOUT).await?;
            anyhow::ensure!(complete, "body not complete");
            Ok((response.head.clone(), crate::body::concat(chunks)))
        }
    }
}
