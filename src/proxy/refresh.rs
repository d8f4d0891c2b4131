//! Background refresh for `stale-while-revalidate`: fetch the answer again, off any
//! request's path, and store it. The request sent is the one refreshed: its method, head
//! and (on a pure route, whose key holds the body's hash) its body. A region is chosen,
//! failed over, timed ([`Attempts`]) and signed for as a client request's forward is, and
//! reached at the same peers with the same timeouts, over the edge's pooled
//! [`upstream::Client`]; a task of an edge without regions runs inline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use pingora_http::RequestHeader;

use crate::cache::Cache;
use crate::cache::CacheCtx;
use crate::config::Target;
use crate::proxy::EdgeLive as Live;
use crate::regions::{Attempts, Regions, signing};
use crate::routing::Route;
use crate::upstream::{self, Answer, Client, Failed};
use crate::wasm::{Runtime, Task};

/// How long a refresh may take in all.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a refresh gets its answer.
pub enum Source {
    /// A server of the pool, on to the next while they refuse the connection.
    Origin(Arc<crate::origins::Pool>),
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

impl Source {
    /// Where a stale entry of `route` is fetched again: its origin pool, its task's regions
    /// (signed with an id from `request_id`), or the task's code at this edge; `None` when
    /// there is nothing to ask.
    pub fn for_route(
        live: &Live,
        route: &Route,
        request_id: impl FnOnce() -> Arc<str>,
    ) -> Option<Source> {
        Some(match &route.target {
            Target::Origin(name) => Source::Origin(live.origins.get(name)?.clone()),
            Target::Task(name) if !live.regions.is_empty() => {
                let key = live.key.as_ref()?;
                let home = route.region.as_deref();
                Source::Region {
                    regions: live.regions.clone(),
                    home: home.and_then(|h| live.regions.index_of(h)),
                    signing: Signing {
                        key: key.0.clone(),
                        task: name.clone(),
                        request_id: request_id(),
                    },
                }
            }
            Target::Task(name) => Source::Inline {
                runtime: live.placer.runtime().clone(),
                task: live.placer.loaded(name)?,
            },
        })
    }
}

/// How a refresh sent to a region is signed.
pub struct Signing {
    pub key: Vec<u8>,
    pub task: String,
    pub request_id: Arc<str>,
}

/// Refreshes the entry `ctx` files, then releases its waiters.
pub fn spawn(cache: Arc<Cache>, client: Arc<Client>, mut ctx: Box<CacheCtx>, source: Source) {
    tokio::spawn(async move {
        let limit = usize::try_from(cache.spec().max_entry).unwrap_or(usize::MAX);
        let fetch = fetch(&ctx, &client, source, limit);
        match tokio::time::timeout(REFRESH_TIMEOUT, fetch).await {
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

async fn fetch(
    ctx: &CacheCtx,
    client: &Client,
    source: Source,
    limit: usize,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let mut parts = ctx.filing.request.clone();
    parts.method = ctx.replay.method.clone();
    let body = ctx.replay.body.clone();
    // The body's framing is this client's to set, for the body it sends (and signs).
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    match source {
        Source::Origin(pool) => {
            let mut head: RequestHeader = parts.into();
            if let Some(host) = &pool.spec.host {
                head.insert_header(http::header::HOST, host.as_str())?;
            }
            let path = head.uri.path().to_string();
            let mut tried = crate::origins::Tried::default();
            loop {
                let pick = pool.pick(&path, tried).map_err(|e| anyhow::anyhow!(e))?;
                tried.add(pick.server);
                let peer = pool.peer(pick);
                match client
                    .exchange(&peer, head.clone(), body.clone(), limit)
                    .await
                {
                    Ok(answer) => {
                        pool.answered(pick.server);
                        return Ok(whole(answer));
                    }
                    Err(e) => {
                        pool.failed(pick.server);
                        let refused = matches!(e, upstream::Failed::Refused(_));
                        if !(refused && pool.has_untried(tried)) {
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        Source::Region {
            regions,
            home,
            signing,
        } => {
            let answer = from_a_region(client, &regions, home, &signing, parts.into(), body, limit);
            Ok(whole(answer.await?))
        }
        Source::Inline { runtime, task } => {
            let slot = runtime
                .try_slot()
                .ok_or_else(|| anyhow::anyhow!("no execution slot free"))?;
            let request = http::Request::from_parts(parts, Full::new(body));
            let mut response = task.call(slot, request, "refresh".into()).await?;
            let (chunks, complete) = response.collect_up_to(limit, REFRESH_TIMEOUT).await?;
            anyhow::ensure!(complete, "the answer is larger than {limit} bytes");
            Ok((response.head.clone(), crate::body::concat(chunks)))
        }
    }
}

fn whole(answer: Answer) -> (http::response::Parts, Bytes) {
    (answer.head.as_owned_parts(), answer.body)
}

/// Sends the refresh to a region as a client request's forward goes: signed, to the
/// region [`Attempts`] chooses, on to the next while they refuse the connection.
async fn from_a_region(
    client: &Client,
    regions: &Regions,
    home: Option<usize>,
    signing: &Signing,
    mut head: RequestHeader,
    body: Bytes,
    limit: usize,
) -> anyhow::Result<Answer> {
    let digest = signing::body_digest(&body);
    let forwarding = signing::Forwarding {
        task: &signing.task,
        request_id: &signing.request_id,
        body: &digest,
    };
    signing::sign_request(&signing.key, &mut head, &forwarding)?;
    let mut attempts = Attempts::new(home);
    loop {
        let Some((spec, peer)) = attempts.next_peer(regions) else {
            anyhow::bail!("no healthy region");
        };
        match client
            .exchange(&peer, head.clone(), body.clone(), limit)
            .await
        {
            Ok(answer) => {
                attempts.answered(regions);
                return Ok(answer);
            }
            Err(Failed::Refused(e)) => {
                log::warn!("refresh: region {} refused: {e}", spec.name);
                if !attempts.refused(regions) {
                    anyhow::bail!("every region refused");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
