//! Reloading a config in place (`SIGHUP`, `POST /reload`), an edge's or a region's: the file is read, checked
//! and loaded whole off the request path (pinned tasks compiled, digests computed), then
//! swapped in at once ([`EdgeParts::live`](crate::proxy::EdgeParts)). A request keeps the
//! config it arrived under; the next one sees the new. A config with any problem changes
//! nothing: every problem is reported, and the old config keeps serving.
//!
//! What a reload keeps: the cache (keys carry each task's digest, so entries of a task whose
//! code changed are no longer found), each kept task's heat and compiled code (same wasm and
//! limits), each kept region's health, and the counters. What it cannot change (listeners,
//! threads, the engine's sizing, the cache's size, logging) is refused as needing a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{capacity, fail, load, no_key, versions};
use crate::admin::Reload;
use crate::config::{self, Config, ConfigError, ConfigErrors, Mode, Target, TaskSpec};
use crate::metrics::Counters;
use crate::metrics::RouteCounts;
use crate::origins::Origins;
use crate::placement::Placer;
use crate::proxy::EdgeLive as Live;
use crate::proxy::RegionLive;
use crate::regions::Regions;
use crate::routing::Router;
use crate::wasm::{Runtime, Task};

/// Reloads one edge's config file.
pub struct Reloader {
    pub(super) source: PathBuf,
    /// The config in force. Held for the whole of a reload: reloads run one at a time.
    pub(super) current: Mutex<Config>,
    pub(super) live: Arc<ArcSwap<Live>>,
    /// What the health checks probe.
    pub(super) regions: Arc<ArcSwap<Regions>>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) counters: Arc<Counters>,
    /// The TLS listeners' certificate choice: a reload reads the files again and swaps.
    pub(super) resolvers: Mutex<super::listeners::Resolvers>,
}

/// What a reload changed: its log line and `POST /reload`'s answer.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub routes: usize,
    /// Tasks new to this config, or whose wasm or limits changed.
    pub tasks_changed: Vec<String>,
    pub tasks_kept: Vec<String>,
    pub tasks_removed: Vec<String>,
    pub regions: usize,
    /// TLS listeners whose certificates were read again (renewed ones take effect).
    pub tls_listeners: usize,
}

impl Reloader {
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let config = config::load(&self.source)?;
        let restart = needs_restart(&current, &config);
        if !restart.is_empty() {
            return Err(fail(&self.source, restart));
        }
        let old = self.live.load_full();
        let live = live(&config, &self.source, &self.runtime, Some(&old))?;
        self.counters.add(config.tasks.keys().map(String::as_str));
        let mut reloaded = summary(&current, &config, &old, &live);
        reloaded.tls_listeners = replace_certificates(&self.resolvers, &config);
        self.regions.store(live.regions.clone());
        self.live.store(Arc::new(live));
        *current = config;
        Ok(reloaded)
    }
}

/// Swaps each TLS listener's certificates for those `config` read; how many.
fn replace_certificates(resolvers: &Mutex<super::listeners::Resolvers>, config: &Config) -> usize {
    let resolvers = resolvers.lock().unwrap_or_else(|p| p.into_inner());
    let mut replaced = 0;
    for (addr, resolver) in resolvers.iter() {
        let listener = config.listeners.iter().find(|l| l.addr == *addr);
        if let Some(loaded) = listener.and_then(|l| l.tls.as_ref()?.loaded.clone()) {
            resolver.replace(loaded);
            replaced += 1;
        }
    }
    replaced
}

/// Reloads one region's config file: its tasks (each unchanged one keeps its compiled code)
/// and its forwarding key. What needs a restart is what an edge's reload refuses.
pub struct RegionReloader {
    pub(super) source: PathBuf,
    pub(super) current: Mutex<Config>,
    pub(super) live: Arc<ArcSwap<RegionLive>>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) counters: Arc<Counters>,
    pub(super) resolvers: Mutex<super::listeners::Resolvers>,
}

/// What a region's reload changed.
#[derive(Debug, serde::Serialize)]
pub struct RegionReloaded {
    pub tasks_changed: Vec<String>,
    pub tasks_kept: Vec<String>,
    pub tasks_removed: Vec<String>,
    pub tls_listeners: usize,
}

impl RegionReloader {
    pub fn reload(&self) -> Result<RegionReloaded, ConfigErrors> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let config = config::load(&self.source)?;
        let restart = needs_restart(&current, &config);
        if !restart.is_empty() {
            return Err(fail(&self.source, restart));
        }
        let versions = versions(&config, &self.source)?;
        let old = self.live.load_full();
        let (mut tasks, mut to_load, mut reloaded) = (
            HashMap::new(),
            Vec::new(),
            RegionReloaded {
                tasks_changed: Vec::new(),
                tasks_kept: Vec::new(),
                tasks_removed: Vec::new(),
                tls_listeners: 0,
            },
        );
        for spec in config.tasks.values() {
            let same = old
                .tasks
                .get(&spec.name)
                .filter(|t| versions.get(&spec.name) == Some(&t.digest) && t.limits == spec.limits);
            match same {
                Some(task) => {
                    tasks.insert(spec.name.clone(), task.clone());
                    reloaded.tasks_kept.push(spec.name.clone());
                }
                None => {
                    to_load.push(spec);
                    reloaded.tasks_changed.push(spec.name.clone());
                }
            }
        }
        for task in load(&self.runtime, to_load, &versions, &self.source)? {
            tasks.insert(task.name.clone(), task);
        }
        let key = config
            .forwarding_key
            .clone()
            .ok_or_else(|| no_key(&self.source))?;
        reloaded.tasks_removed = (old.tasks.keys())
            .filter(|name| !config.tasks.contains_key(*name))
            .cloned()
            .collect();
        reloaded.tasks_removed.sort();
        self.counters.add(config.tasks.keys().map(String::as_str));
        reloaded.tls_listeners = replace_certificates(&self.resolvers, &config);
        self.live.store(Arc::new(RegionLive { tasks, key }));
        *current = config;
        Ok(reloaded)
    }
}

impl Reload for RegionReloader {
    fn reload(&self) -> Result<serde_json::Value, ConfigErrors> {
        let reloaded = RegionReloader::reload(self)?;
        log::info!("reloaded {}: {reloaded:?}", self.source.display());
        Ok(serde_json::to_value(reloaded).unwrap_or_default())
    }
}

impl Reload for Reloader {
    fn reload(&self) -> Result<serde_json::Value, ConfigErrors> {
        let reloaded = Reloader::reload(self)?;
        log::info!("reloaded {}: {reloaded:?}", self.source.display());
        Ok(serde_json::to_value(reloaded).unwrap_or_default())
    }
}

/// The keys a running server cannot change: each one that changed is an error.
fn needs_restart(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            let message = "changed: this takes a restart, not a reload (docs/OPERATIONS.md)";
            errors.push(ConfigError::new(key, message));
        }
    };
    check("role", old.role == new.role);
    let mut listeners = (old.listeners.iter()).zip(&new.listeners);
    check(
        "listen",
        old.listeners.len() == new.listeners.len() && listeners.all(|(a, b)| a.same_socket(b)),
    );
    check("threads", old.threads == new.threads);
    check("admin", old.admin == new.admin);
    check("access_log", old.access_log == new.access_log);
    check("clients", old.clients == new.clients);
    check("grace_period", old.grace_period == new.grace_period);
    check("upgrade_socket", old.upgrade_socket == new.upgrade_socket);
    check("guest_log", old.guest_log == new.guest_log);
    check("cache", old.cache == new.cache);
    check("code_cache", old.code_cache == new.code_cache);
    check("registry", old.registry == new.registry);
    let (before, after) = (&old.placement, &new.placement);
    check(
        "placement.max_inline",
        before.max_inline == after.max_inline,
    );
    check(
        "placement.guest_memory",
        before.guest_memory == after.guest_memory,
    );
    check("placement.failing", before.failing == after.failing);
    // The engine's instance pool is sized for the largest task memory at start.
    let pool = capacity(old).max_memory;
    for task in new.tasks.values().filter(|t| t.limits.memory > pool) {
        let message = format!(
            "is more than the {pool} bytes this server's engine was sized for at start: this takes a restart"
        );
        errors.push(ConfigError::new(
            format!("tasks.{}.limits.memory", task.name),
            message,
        ));
    }
    errors
}

/// The tasks an edge loads at start: those of `placement: edge` routes (every task route's,
/// without regions).
pub(super) fn pinned(config: &Config) -> Vec<&TaskSpec> {
    let names: Vec<&str> = config
        .routes
        .iter()
        .filter(|r| config.regions.is_empty() || r.placement == Mode::Edge)
        .filter_map(|r| match &r.target {
            Target::Task(name) => Some(name.as_str()),
            Target::Origin(_) => None,
        })
        .collect();
    config
        .tasks
        .values()
        .filter(|t| names.contains(&t.name.as_str()))
        .collect()
}

/// The part of an edge a config decides. On a reload (`old`), the compiled code of tasks
/// whose wasm and limits did not change is taken from `old`, not compiled again.
pub(super) fn live(
    config: &Config,
    source: &Path,
    runtime: &Arc<Runtime>,
    old: Option<&Live>,
) -> Result<Live, ConfigErrors> {
    let versions = versions(config, source)?;
    let (mut pinned, to_load): (Vec<Arc<Task>>, Vec<&TaskSpec>) = {
        let mut kept = Vec::new();
        let mut to_load = Vec::new();
        for spec in pinned(config) {
            match old.and_then(|o| same_code(&o.placer, spec, &versions)) {
                Some(task) => kept.push(task),
                None => to_load.push(spec),
            }
        }
        (kept, to_load)
    };
    pinned.extend(load(runtime, to_load, &versions, source)?);
    let key = config.forwarding_key.clone();
    if !config.regions.is_empty() && key.is_none() {
        return Err(no_key(source));
    }
    let placer = Placer::new(
        config.placement.clone(),
        runtime.clone(),
        config.tasks.values().cloned(),
        pinned,
    );
    let (specs, health) = (config.regions.clone(), config.health);
    let (placer, regions) = match old {
        Some(old) => {
            let regions = match old.regions.is(&specs, &health) {
                true => old.regions.clone(),
                false => Arc::new(Regions::carried(specs, health, &old.regions)),
            };
            (Placer::reloaded(placer, &old.placer, &versions), regions)
        }
        None => (placer, Arc::new(Regions::new(specs, health))),
    };
    let origins = Origins::new(config.origins.values(), old.map(|o| &*o.origins));
    let router = Router::new(&config.routes);
    let route_counts = match old {
        Some(old) => RouteCounts::carried(config.routes.len(), &old.route_counts, |i| {
            let (before, now) = (old.router.by_index(i), router.by_index(i));
            before
                .zip(now)
                .is_some_and(|(b, n)| b.matcher == n.matcher && b.target == n.target)
        }),
        None => RouteCounts::new(config.routes.len()),
    };
    Ok(Live {
        route_counts,
        origins: Arc::new(origins),
        router,
        placer: Arc::new(placer),
        regions,
        key,
        versions,
        trusted_proxies: config.trusted_proxies.clone(),
        request_id_header: config.request_id_header.clone(),
    })
}

/// The code `placer` has loaded for `spec`'s task, if it is the same wasm with the same
/// limits.
fn same_code(
    placer: &Placer,
    spec: &TaskSpec,
    versions: &HashMap<String, String>,
) -> Option<Arc<Task>> {
    let task = placer.loaded(&spec.name)?;
    let same = versions.get(&spec.name) == Some(&task.digest) && task.limits == spec.limits;
    same.then_some(task)
}

fn summary(before: &Config, after: &Config, old: &Live, new: &Live) -> Reloaded {
    let mut reloaded = Reloaded {
        routes: after.routes.len(),
        tasks_changed: Vec::new(),
        tasks_kept: Vec::new(),
        tasks_removed: Vec::new(),
        regions: after.regions.len(),
        tls_listeners: 0,
    };
    for (name, spec) in &after.tasks {
        let kept = before
            .tasks
            .get(name)
            .is_some_and(|b| b.limits == spec.limits)
            && old.versions.get(name) == new.versions.get(name);
        match kept {
            true => reloaded.tasks_kept.push(name.clone()),
            false => reloaded.tasks_changed.push(name.clone()),
        }
    }
    let removed = before
        .tasks
        .keys()
        .filter(|n| !after.tasks.contains_key(*n));
    reloaded.tasks_removed = removed.cloned().collect();
    reloaded
}
