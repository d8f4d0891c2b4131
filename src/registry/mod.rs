//! A region's task registry: task code by SHA-256 digest, each task's versions (digest,
//! limits, when deployed) and its current one, kept in `registry.dir` and loaded at start.
//!
//! On disk: `code/<digest>.wasm`, one file per distinct component, and `index.json`, the
//! tasks and their versions; both written under a temporary name and renamed, so a crash
//! leaves the old file or the new one, never half of either. A version becomes current only
//! once its component compiled and linked here, so what is current always runs; a change
//! that cannot be written to disk changes nothing. Changes go one at a time.
//!
//! The deploy API over it ([`api`]) is on the region's admin listener; edges take the
//! current versions and their code over the region's own listener, signed ([`CODE_PATH`]).

pub mod api;
pub mod client;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::admin::BearerToken;
use crate::config::{Limits, RegistrySpec};
use crate::wasm::{self, LoadError, Runtime, Task};

/// The path prefix of what a region tells edges of its registry: `GET /_poplar/tasks`
/// lists every deployed task's current version; `GET /_poplar/code/<digest>` answers that
/// code. Both signed as forwards are.
pub const CODE_PATH: &str = "/_poplar/code/";
pub const TASKS_PATH: &str = "/_poplar/tasks";
/// A region's answer to a forward names the version of the task that ran (its digest).
pub const DIGEST_HEADER: &str = "x-poplar-task-digest";
/// The `x-poplar-task` an edge signs its registry requests with: no task's name, so a
/// client's request for these paths, forwarded for a task, runs that task.
pub const REGISTRY_TASK: &str = "_registry";

/// One deployed version of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// Bytes of the component.
    pub size: u64,
    pub limits: LimitsDoc,
    /// When it was deployed, in Unix seconds.
    pub deployed: u64,
}

/// [`Limits`] as the registry writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsDoc {
    pub memory: u64,
    pub timeout_ms: u64,
    pub max_body: u64,
}

impl From<Limits> for LimitsDoc {
    fn from(l: Limits) -> LimitsDoc {
        LimitsDoc {
            memory: l.memory,
            timeout_ms: u64::try_from(l.timeout.as_millis()).unwrap_or(u64::MAX),
            max_body: l.max_body,
        }
    }
}

impl From<LimitsDoc> for Limits {
    fn from(l: LimitsDoc) -> Limits {
        Limits {
            memory: l.memory,
            timeout: Duration::from_millis(l.timeout_ms),
            max_body: l.max_body,
        }
    }
}

/// A task's versions, oldest first, and the current one's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub current: String,
    pub versions: Vec<Version>,
}

impl Entry {
    pub fn current(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.digest == self.current)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    tasks: BTreeMap<String, Entry>,
}

/// Why a registry change was refused; nothing current changed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The request is wrong (a name, a parameter, a digest that does not match).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The name is the config file's, not the registry's.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The upload is not a component this region can run.
    #[error("{0}")]
    Unrunnable(String),
    /// The disk refused.
    #[error("{0}")]
    Storage(String),
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::Invalid(_) => 400,
            Refused::NotFound(_) => 404,
            Refused::Conflict(_) => 409,
            Refused::TooLarge(_) => 413,
            Refused::Unrunnable(_) => 422,
            Refused::Storage(_) => 500,
        }
    }
}

pub struct Registry {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    pub max_memory: u64,
    pub max_code: u64,
    /// What the deploy API needs.
    pub(crate) token: BearerToken,
    index: Mutex<Index>,
    /// One change at a time (held across a change's compile and writes).
    changing: tokio::sync::Mutex<()>,
    /// The current version of each task, compiled: what requests run.
    current: ArcSwap<HashMap<String, Arc<Task>>>,
    /// Tasks the config file names: those are the file's, not deployable.
    config_names: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Opens the registry in `spec.dir` and loads every task's current version. A version
    /// whose code is missing or damaged is logged and left out (the rest serve); an index
    /// that cannot be read is an error: the region does not start on a registry it cannot
    /// read.
    pub fn open(
        spec: &RegistrySpec,
        runtime: Arc<Runtime>,
        config_names: Vec<String>,
    ) -> Result<Registry, String> {
        let dir = spec.dir.clone();
        std::fs::create_dir_all(dir.join("code"))
            .map_err(|e| format!("cannot use {}: {e}", dir.display()))?;
        let index = match std::fs::read(dir.join("index.json")) {
            Ok(bytes) => serde_json::from_slice::<Index>(&bytes)
                .map_err(|e| format!("{}: not a registry index: {e}", dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(format!("cannot read {}/index.json: {e}", dir.display())),
        };
        let token = (spec.token.as_ref()).map_or(&[][..], |t| t.0.as_slice());
        let registry = Registry {
            dir,
            runtime,
            max_memory: spec.max_memory,
            max_code: spec.max_code,
            token: BearerToken::new(token),
            index: Mutex::new(index.clone()),
            changing: tokio::sync::Mutex::new(()),
            current: ArcSwap::default(),
            config_names,
        };
        let mut current = HashMap::new();
        for (name, entry) in &index.tasks {
            let Some(version) = entry.current() else {
                log::error!("registry: task {name} has no version {}", entry.current);
                continue;
            };
            match registry.load(name, version) {
                Ok(task) => {
                    current.insert(name.clone(), Arc::new(task));
                }
                Err(e) => log::error!("registry: task {name} cannot be loaded, not served: {e}"),
            }
        }
        registry.current.store(Arc::new(current));
        Ok(registry)
    }

    /// The current version of `name`, compiled.
    pub fn task(&self, name: &str) -> Option<Arc<Task>> {
        self.current.load().get(name).cloned()
    }

    /// Every task's current version, compiled.
    pub fn tasks(&self) -> Arc<HashMap<String, Arc<Task>>> {
        self.current.load_full()
    }

    /// Every task and its versions.
    pub fn entries(&self) -> BTreeMap<String, Entry> {
        lock(&self.index).tasks.clone()
    }

    /// Each task's current version (what edges are told).
    pub fn current_versions(&self) -> BTreeMap<String, Version> {
        let index = lock(&self.index);
        (index.tasks.iter())
            .filter_map(|(name, entry)| Some((name.clone(), entry.current()?.clone())))
            .collect()
    }

    /// The code `digest`, if a version of a task has it.
    pub fn code(&self, digest: &str) -> Option<Vec<u8>> {
        if !wasm::is_digest(digest) {
            return None;
        }
        let known = lock(&self.index)
            .tasks
            .values()
            .any(|e| e.versions.iter().any(|v| v.digest == digest));
        if !known {
            return None;
        }
        let bytes = std::fs::read(self.code_path(digest)).ok()?;
        (wasm::digest(&bytes) == digest).then_some(bytes)
    }

    fn code_path(&self, digest: &str) -> PathBuf {
        self.dir.join("code").join(format!("{digest}.wasm"))
    }

    /// Compiles (or loads compiled) a version's code, checked against its digest.
    fn load(&self, name: &str, version: &Version) -> Result<Task, String> {
        let path = self.code_path(&version.digest);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if wasm::digest(&bytes) != version.digest {
            return Err(format!("{} does not match its digest", path.display()));
        }
        let limits = Limits::from(version.limits);
        self.runtime
            .load_bytes(name, &bytes, limits)
            .map_err(|e| e.to_string())
    }

    /// Deploys `code` as the current version of `name`, with `limits`. `expected`, if
    /// given, is the digest the uploader computed: a different one means the upload was
    /// cut or changed on the way. The component is compiled and linked before anything
    /// changes. Answers the version, and whether it is new (a digest deployed before, with
    /// the same limits, is made current again).
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        code: bytes::Bytes,
        limits: Limits,
        expected: Option<&str>,
    ) -> Result<(Version, bool), Refused> {
        self.deployable(name)?;
        if limits.memory > self.max_memory {
            return Err(Refused::Invalid(format!(
                "memory: at most {} bytes here (registry.max_memory)",
                self.max_memory
            )));
        }
        let digest = wasm::digest(&code);
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(Refused::Invalid(format!(
                "the upload's SHA-256 is {digest}, not the digest given ({expected}): cut short or changed on the way"
            )));
        }
        let _one = self.changing.lock().await;
        let registry = self.clone();
        let (task_name, bytes) = (name.to_string(), code.clone());
        let compiled = tokio::task::spawn_blocking(move || {
            registry.runtime.load_bytes(&task_name, &bytes, limits)
        })
        .await
        .map_err(|e| Refused::Storage(format!("the compile did not finish: {e}")))?;
        let task = compiled.map_err(|e| match e {
            LoadError::CoreModule | LoadError::Compile(_) | LoadError::Link(_) => {
                Refused::Unrunnable(e.to_string())
            }
            LoadError::Read { .. } | LoadError::FromRegions | LoadError::Changed { .. } => {
                Refused::Storage(e.to_string())
            }
        })?;
        let path = self.code_path(&digest);
        if !path.exists() {
            wasm::write_atomically(&path, &code)
                .map_err(|e| Refused::Storage(format!("cannot keep the code: {e}")))?;
        }
        let version = Version {
            digest: digest.clone(),
            size: code.len() as u64,
            limits: limits.into(),
            deployed: crate::regions::signing::unix_now(),
        };
        let new = {
            let mut index = lock(&self.index).clone();
            let entry = index.tasks.entry(name.to_string()).or_insert(Entry {
                current: digest.clone(),
                versions: Vec::new(),
            });
            // One version per digest: deployed again, it moves to the end (with the
            // limits given now, if they differ).
            let before = entry.versions.iter().position(|v| v.digest == digest);
            let new = match before.map(|i| entry.versions.remove(i)) {
                Some(kept) if kept.limits == version.limits => {
                    entry.versions.push(kept);
                    false
                }
                _ => {
                    entry.versions.push(version.clone());
                    true
                }
            };
            entry.current = digest;
            self.commit(index)?;
            new
        };
        self.swap(name, Some(Arc::new(task)));
        let version = self
            .entries()
            .get(name)
            .and_then(|e| e.current().cloned())
            .unwrap_or(version);
        log::info!(
            "registry: {name} {} deployed ({} bytes){}",
            version.digest,
            version.size,
            if new { "" } else { ", again" }
        );
        Ok((version, new))
    }

    /// Makes the version `digest` of `name` current again (a rollback).
    pub async fn set_current(
        self: &Arc<Self>,
        name: &str,
        digest: &str,
    ) -> Result<Version, Refused> {
        let _one = self.changing.lock().await;
        let version = self
            .entries()
            .get(name)
            .ok_or_else(|| Refused::NotFound(format!("no task {name:?} in the registry")))?
            .versions
            .iter()
            .find(|v| v.digest == digest)
            .cloned()
            .ok_or_else(|| Refused::NotFound(format!("task {name:?} has no version {digest}")))?;
        let registry = self.clone();
        let (task_name, loading) = (name.to_string(), version.clone());
        let task = tokio::task::spawn_blocking(move || registry.load(&task_name, &loading))
            .await
            .map_err(|e| Refused::Storage(format!("the load did not finish: {e}")))?
            .map_err(Refused::Storage)?;
        let mut index = lock(&self.index).clone();
        if let Some(entry) = index.tasks.get_mut(name) {
            entry.current = digest.to_string();
        }
        self.commit(index)?;
        self.swap(name, Some(Arc::new(task)));
        log::info!("registry: {name} is {digest} again");
        Ok(version)
    }

    /// Removes `name` and its versions; code no other task's version has is deleted.
    pub async fn delete(&self, name: &str) -> Result<Entry, Refused> {
        let _one = self.changing.lock().await;
        let mut index = lock(&self.index).clone();
        let removed = index
            .tasks
            .remove(name)
            .ok_or_else(|| Refused::NotFound(format!("no task {name:?} in the registry")))?;
        self.commit(index)?;
        self.swap(name, None);
        self.collect_garbage();
        log::info!("registry: {name} deleted");
        Ok(removed)
    }

    fn deployable(&self, name: &str) -> Result<(), Refused> {
        if !crate::config::valid_name(name) || name.len() > 128 {
            return Err(Refused::Invalid(format!(
                "{name:?} is not a task name: letters, digits, '.', '_' and '-', starting with a letter or digit"
            )));
        }
        if self.config_names.iter().any(|n| n == name) {
            return Err(Refused::Conflict(format!(
                "task {name:?} is declared in the region's config file: change it there"
            )));
        }
        Ok(())
    }

    /// Writes `index` to disk, then makes it the one in force.
    fn commit(&self, index: Index) -> Result<(), Refused> {
        let mut bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| Refused::Storage(format!("cannot write the index: {e}")))?;
        bytes.push(b'\n');
        wasm::write_atomically(&self.dir.join("index.json"), &bytes)
            .map_err(|e| Refused::Storage(format!("cannot write the index: {e}")))?;
        *lock(&self.index) = index;
        Ok(())
    }

    fn swap(&self, name: &str, task: Option<Arc<Task>>) {
        let mut current = HashMap::clone(&self.current.load());
        match task {
            Some(task) => current.insert(name.to_string(), task),
            None => current.remove(name),
        };
        self.current.store(Arc::new(current));
    }

    /// Deletes code files no version names.
    fn collect_garbage(&self) {
        let named: std::collections::HashSet<String> = lock(&self.index)
            .tasks
            .values()
            .flat_map(|e| e.versions.iter().map(|v| format!("{}.wasm", v.digest)))
            .collect();
        let Ok(files) = std::fs::read_dir(self.dir.join("code")) else {
            return;
        };
        for file in files.filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            if !named.contains(&name) && !name.starts_with('.') {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
