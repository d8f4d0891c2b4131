//! The region: runs any task it is configured with, for requests signed by an edge, and
//! answers its health check. It never proxies.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use super::task::{self, Inline};
use super::{RequestIds, refuse_bad_framing, respond, strip_poplar_headers};
use crate::config::ForwardingKey;
use crate::errors::ErrorKind;
use crate::regions::health::HEALTH_PATH;
use crate::regions::signing::{self, Rejection, Signed};
use crate::wasm::{Runtime, Task};

pub struct RegionServer {
    runtime: Arc<Runtime>,
    tasks: HashMap<String, Arc<Task>>,
    key: ForwardingKey,
    ids: RequestIds,
}

impl RegionServer {
    pub fn new(runtime: Arc<Runtime>, tasks: Vec<Arc<Task>>, key: ForwardingKey) -> RegionServer {
        let tasks = tasks.into_iter().map(|t| (t.name.clone(), t)).collect();
        RegionServer {
            runtime,
            tasks,
            key,
            ids: RequestIds::new(),
        }
    }

    /// The task a request names, if its signature holds.
    fn authorize(&self, req: &RequestHeader) -> Result<String, (ErrorKind, String)> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header(signing::SIGNATURE_HEADER);
        let (Some(task), Some(timestamp)) = (
            header(signing::TASK_HEADER),
            header(signing::TIMESTAMP_HEADER),
        ) else {
            let kind = if signature.is_some() {
                ErrorKind::BadSignature
            } else {
                ErrorKind::Unsigned
            };
            return Err((kind, "task requests must come from an edge, signed".into()));
        };
        let timestamp = timestamp
            .parse()
            .map_err(|_| (ErrorKind::BadSignature, "bad timestamp".to_string()))?;
        let signed = Signed {
            timestamp,
            method: req.method.as_str(),
            path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            task,
        };
        match signing::verify(&self.key.0, &signed, signature, signing::unix_now()) {
            Ok(()) => Ok(task.to_string()),
            Err(Rejection::Missing) => Err((ErrorKind::Unsigned, Rejection::Missing.to_string())),
            Err(e) => Err((ErrorKind::BadSignature, e.to_string())),
        }
    }
}

async fn health(session: &mut Session) -> Result<()> {
    let body = Bytes::from_static(b"ok\n");
    let mut head = ResponseHeader::build(200, Some(3))?;
    head.insert_header("content-type", "text/plain")?;
    head.insert_header("content-length", body.len())?;
    head.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for RegionServer {
    type CTX = ();

    fn new_ctx(&self) {}

    /// No downstream modules: Pingora's default adds a response-compression module that is
    /// switched off yet still runs per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if refuse_bad_framing(session).await? {
            return Ok(true);
        }
        if session.req_header().uri.path() == HEALTH_PATH {
            health(session).await?;
            return Ok(true);
        }
        let name = match self.authorize(session.req_header()) {
            Ok(name) => name,
            Err((kind, message)) => {
                session.set_keepalive(None);
                respond::error(session, kind, &message).await?;
                return Ok(true);
            }
        };
        let Some(task) = self.tasks.get(&name) else {
            respond::error(
                session,
                ErrorKind::UnknownTask,
                &format!("this region has no task {name:?}"),
            )
            .await?;
            return Ok(true);
        };
        strip_poplar_headers(session.req_header_mut());
        let run = Inline {
            runtime: &self.runtime,
            task,
            slot: None,
            request_id: self.ids.next(),
            placement: None,
            may_fall_back: false,
            body: None,
            cache: None,
        };
        task::serve(session, run).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "a region does not proxy",
        ))
    }
}
