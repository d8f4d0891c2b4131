//! The code watcher: how an edge takes the code of tasks it has no wasm file for.
//!
//! Every [`POLL_EVERY`] (and at once when a region answers a forward with a version the edge
//! did not know), it asks the healthy regions, home region first, for their registries'
//! current versions (`GET /_poplar/tasks`, signed) and tells the placer each task's. When
//! the placer wants a task's code (it turned hot), the watcher takes it from the code cache
//! on disk, or from a region (`GET /_poplar/code/<digest>`, signed), checks it against its
//! digest, keeps it on disk and hands it to the placer to compile. Nothing here is on a
//! request's path: a task waiting for its code is forwarded meanwhile (`warming`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;

use super::Regions;
use super::signing::{self, Forwarding};
use crate::config::ForwardingKey;
use crate::placement::{Placer, Remote};
use crate::registry::{CODE_PATH, REGISTRY_TASK, TASKS_PATH, Version};
use crate::upstream::{self, Client};

/// How often the edge asks its regions for their tasks' current versions: a deploy reaches
/// an edge within this (and its compile).
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// The largest code taken from a region.
const MAX_CODE: usize = 256 << 20;
/// The largest listing of versions read.
const MAX_LISTING: usize = 16 << 20;

/// What the watcher works on: the config in force's placer, regions and key, and each
/// task's home region (by the routes naming it).
pub struct View {
    pub placer: Arc<Placer>,
    pub regions: Arc<Regions>,
    pub key: Option<ForwardingKey>,
    pub homes: HashMap<String, String>,
}

pub struct CodeWatch {
    /// The view of the config in force (a reload changes it).
    pub view: Arc<dyn Fn() -> View + Send + Sync>,
    pub client: Arc<Client>,
}

#[async_trait]
impl BackgroundService for CodeWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut polled: Option<Instant> = None;
        loop {
            let view = (self.view)();
            let remote = view.placer.remote_tasks();
            if !remote.is_empty() && !view.regions.is_empty() && view.key.is_some() {
                let due = polled.is_none_or(|at| at.elapsed() >= POLL_EVERY);
                if view.placer.take_poll_soon() || due {
                    self.poll(&view, &remote).await;
                    polled = Some(Instant::now());
                }
                for (task, digest) in view.placer.wanted() {
                    match self.take(&view, &task, &digest).await {
                        Ok(code) => view.placer.fetched(&task, &digest, code),
                        Err(why) => view.placer.fetch_failed(&task, &why),
                    }
                }
            }
            let next = polled.map_or(POLL_EVERY, |at| POLL_EVERY.saturating_sub(at.elapsed()));
            tokio::select! {
                _ = shutdown.changed() => return,
                () = view.placer.wake.notified() => {}
                () = tokio::time::sleep(next) => {}
            }
        }
    }
}

/// A fresh id for each of the watcher's requests: a signature is accepted once.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("code-{}-{nanos:x}-{n}", std::process::id())
}

impl CodeWatch {
    /// One signed `GET` of `path` from region `i`; the answer's body if it is a `200`.
    async fn get(&self, view: &View, i: usize, path: &str, limit: usize) -> Result<Bytes, String> {
        let (Some(spec), Some(key)) = (view.regions.spec(i), &view.key) else {
            return Err("no such region".into());
        };
        let mut head =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        head.insert_header(http::header::HOST, spec.address.to_string())
            .map_err(|e| e.to_string())?;
        let body = signing::body_digest(b"");
        let forwarding = Forwarding {
            task: REGISTRY_TASK,
            request_id: &request_id(),
            body: &body,
        };
        signing::sign_request(&key.0, &mut head, &forwarding).map_err(|e| e.to_string())?;
        let addr = view.regions.addr(i).ok_or("no address")?;
        let peer = upstream::region_peer(addr, Duration::from_secs(30));
        let answer = self
            .client
            .exchange(&peer, head, Bytes::new(), limit)
            .await
            .map_err(|e| format!("region {}: {e}", spec.name))?;
        match answer.head.status.as_u16() {
            200 => Ok(answer.body),
            status => Err(format!("region {} answered {status}", spec.name)),
        }
    }

    /// Asks every healthy region for its current versions, and tells the placer each
    /// task's: its home region's, else the first region's in order that has it. A task no
    /// answering region has is told it has none (its code here is dropped).
    async fn poll(&self, view: &View, remote: &[String]) {
        let order = view.regions.in_order(None);
        let mut listings: HashMap<usize, HashMap<String, Version>> = HashMap::new();
        for &i in &order {
            #[derive(serde::Deserialize)]
            struct Listing {
                tasks: HashMap<String, Version>,
            }
            match self.get(view, i, TASKS_PATH, MAX_LISTING).await {
                Ok(body) => match serde_json::from_slice::<Listing>(&body) {
                    Ok(listing) => {
                        listings.insert(i, listing.tasks);
                    }
                    Err(e) => log::warn!("a region's task listing is not one: {e}"),
                },
                Err(e) => log::debug!("task versions not asked of a region: {e}"),
            }
        }
        if listings.is_empty() {
            return;
        }
        for task in remote {
            let home = view.homes.get(task).and_then(|h| view.regions.index_of(h));
            let found = (home.into_iter().chain(order.iter().copied()))
                .find_map(|i| listings.get(&i)?.get(task));
            let version = found.map(|v| Remote {
                digest: v.digest.clone(),
                limits: v.limits.into(),
            });
            view.placer.set_version(task, version);
        }
    }

    /// The code `digest` of `task`: from the code cache, else from a region (home first),
    /// checked against its digest and kept on disk.
    async fn take(&self, view: &View, task: &str, digest: &str) -> Result<Vec<u8>, String> {
        let store = view.placer.runtime().store();
        if let Some(code) = store.and_then(|s| s.code(digest)) {
            return Ok(code);
        }
        let home = view.homes.get(task).and_then(|h| view.regions.index_of(h));
        let mut why = "no healthy region".to_string();
        for i in view.regions.in_order(home) {
            let path = format!("{CODE_PATH}{digest}");
            let name = view.regions.spec(i).map_or("?", |s| s.name.as_str());
            match self.get(view, i, &path, MAX_CODE).await {
                Ok(code) if crate::wasm::digest(&code) == digest => {
                    log::info!(
                        "task {task}: code {digest} taken from region {name} ({} bytes)",
                        code.len()
                    );
                    if let Some(store) = store {
                        store.keep_code(digest, &code);
                    }
                    return Ok(code.to_vec());
                }
                Ok(code) => {
                    why = format!("region {name} served code that does not match its digest");
                    log::error!(
                        "task {task}: region {name} served {} bytes for {digest} whose digest is {}: refused",
                        code.len(),
                        crate::wasm::digest(&code)
                    );
                }
                Err(e) => why = e,
            }
        }
        Err(why)
    }
}
