//! Background refresh for `stale-while-revalidate`: fetch the answer again, off any
//! request's path, and store it. The request sent is the one refreshed: its method, head
//! and (on a pure route, whose key holds the body's hash) its body. A region is chosen,
//! signed for, failed over and timed as a client request's forward is (the same
//! [`Regions`] choice and records, the same signing); origins and regions are asked over a
//! plain HTTP/1.1 client; a task of an edge without regions runs inline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::cache::Cache;
use crate::cache::CacheCtx;
use crate::regions::{Regions, signing};
use crate::wasm::{Runtime, Task};

/// How long a refresh may take in all.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to an origin or a region may take, as for client requests' forwards.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a refresh gets its answer.
pub enum Source {
    Origin(SocketAddr),
    /// The route's home region first if healthy, else the fastest; a refused connection
    /// fails over to the next.
    Region {
        regions: Arc<Regions>,
        home: Option<usize>,
        signing: Signing,
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
    // The body's framing is this client's to set, for the body it sends.
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    match source {
        Source::Origin(addr) => {
            let sender = connect(addr).await?;
            send(sender, &parts, body).await
        }
        Source::Region {
            regions,
            home,
            signing,
        } => from_a_region(&regions, home, &signing, parts, body).await,
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

async fn from_a_region(
    regions: &Regions,
    home: Option<usize>,
    signing: &Signing,
    mut parts: http::request::Parts,
    body: Bytes,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let digest = signing::body_digest(&body);
    let forwarding = signing::Forwarding {
        task: &signing.task,
        request_id: &signing.request_id,
        body: &digest,
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let signed = signing::signed_headers(
        &signing.key,
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        &forwarding,
    );
    for (name, value) in signed {
        parts
            .headers
            .insert(name, http::HeaderValue::try_from(value)?);
    }
    let mut tried = Vec::new();
    loop {
        let chosen = regions.choose(home, &tried);
        let Some((i, spec)) = chosen.and_then(|i| regions.spec(i).map(|s| (i, s))) else {
            anyhow::bail!("no healthy region");
        };
        let sender = match connect(spec.address).await {
            Ok(sender) => sender,
            Err(e) => {
                // Nothing was sent: the next region may take it.
                log::warn!("refresh: region {} refused: {e}", spec.name);
                regions.record_failure(i);
                tried.push(i);
                continue;
            }
        };
        let sent = std::time::Instant::now();
        let answer = send(sender, &parts, body.clone()).await?;
        regions.record_response(i, sent.elapsed());
        return Ok(answer);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))??;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    mut sender: Sender,
    parts: &http::request::Parts,
    body: Bytes,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let mut request = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone());
    for (name, value) in &parts.headers {
        request = request.header(name, value);
    }
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let (head, body) = response.into_parts();
    Ok((head, body.collect().await?.to_bytes()))
}
