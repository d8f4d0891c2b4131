//! The edge's `ProxyHttp`: each phase is a few lines that call into a module.
//!
//! `request_filter` matches the route: a task route is answered there (inline), an origin
//! route falls through to Pingora's proxy path with the origin chosen in `upstream_peer`.

mod respond;
mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::Target;
use crate::errors::ErrorKind;
use crate::routing::Router;
use crate::wasm::{Runtime, Task};

/// Timeouts towards origins: connect fast, allow slow responses.
const ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ORIGIN_READ_TIMEOUT: Duration = Duration::from_secs(30);
const ORIGIN_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The edge proxy: routes, loaded tasks and the runtime they run in.
pub struct Edge {
    router: Router,
    tasks: HashMap<String, Arc<Task>>,
    runtime: Arc<Runtime>,
    requests: AtomicU64,
    /// Distinguishes request ids across restarts.
    boot: u32,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    origin: Option<SocketAddr>,
}

impl Edge {
    pub fn new(router: Router, tasks: Vec<Arc<Task>>, runtime: Arc<Runtime>) -> Edge {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
        Edge {
            router,
            tasks: tasks.into_iter().map(|t| (t.name.clone(), t)).collect(),
            runtime,
            requests: AtomicU64::new(0),
            boot,
        }
    }

    fn request_id(&self) -> Arc<str> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:x}", self.boot).into()
    }
}

/// Clients may not speak for Poplar: their `x-poplar-*` headers are dropped.
fn strip_poplar_headers(req: &mut RequestHeader) {
    let names: Vec<_> = req
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-poplar-"))
        .cloned()
        .collect();
    for name in names {
        req.remove_header(&name);
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        strip_poplar_headers(session.req_header_mut());
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri.host());
        let Some(route) = self.router.route(host, req.uri.path(), req.method.as_str()) else {
            respond::error(session, ErrorKind::NoRoute, "no route matches this request").await?;
            return Ok(true);
        };
        match &route.target {
            Target::Origin(addr) => {
                ctx.origin = Some(*addr);
                Ok(false)
            }
            Target::Task(name) => {
                let Some(task) = self.tasks.get(name) else {
                    // Config validation makes this unreachable; answer rather than panic.
                    respond::error(session, ErrorKind::Internal, "task not loaded").await?;
                    return Ok(true);
                };
                task::serve(session, &self.runtime, task, self.request_id()).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(addr) = ctx.origin else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no origin chosen for this request",
            ));
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(ORIGIN_CONNECT_TIMEOUT);
        peer.options.read_timeout = Some(ORIGIN_READ_TIMEOUT);
        peer.options.write_timeout = Some(ORIGIN_WRITE_TIMEOUT);
        peer.options.idle_timeout = Some(ORIGIN_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let forwarded = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(earlier) => format!("{earlier}, {}", client.ip()),
                None => client.ip().to_string(),
            };
            upstream.insert_header("x-forwarded-for", forwarded)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let Some(kind) = respond::classify_proxy_error(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let message = match kind {
            ErrorKind::Origin => "the origin could not be reached or failed".to_string(),
            _ => e.to_string(),
        };
        if let Err(write) = respond::error(session, kind, &message).await {
            log::debug!("cannot write the error response: {write}");
        }
        FailToProxy {
            error_code: kind.status(),
            can_reuse_downstream: false,
        }
    }
}
