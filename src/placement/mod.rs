//! Placement: for each task request at an edge, run it inline or forward it, and why.
//!
//! The decisions are plain functions over plain data ([`hotness`], [`admission`],
//! [`resident`]); the [`Placer`] holds the per-task state they read, and compiles tasks
//! in the background when they turn hot (never on a request's path).

pub mod admission;
mod compiler;
pub mod hotness;
mod remote;
pub mod resident;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use crate::config::{Limits, Mode, PlacementSpec, TaskSpec};
use crate::wasm::{LoadError, Runtime, Task};
pub use admission::Reason;
use admission::{Decision, Facts, Residency};
use compiler::Compiler;
use hotness::{Hotness, Thresholds};
use resident::{Admit, ResidentSet};

/// How long the resident set's admission floor is reused before it is computed again.
const FLOOR_REFRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// Where one request goes.
pub enum Placement {
    /// Run here. `slot` is taken already for `Hot`; a pinned run waits for one.
    Inline {
        task: Arc<Task>,
        slot: Option<OwnedSemaphorePermit>,
        reason: Reason,
    },
    Forward(Reason),
    /// The task is not one this edge has (or a pinned task's code is missing): a bug in
    /// start-up, answered as an internal error.
    Unknown,
}

/// The edge's placement state for every task of its config.
pub struct Placer {
    spec: PlacementSpec,
    thresholds: Thresholds,
    runtime: Arc<Runtime>,
    tasks: HashMap<String, Arc<TaskEntry>>,
    resident: Mutex<ResidentSet>,
    /// When the admission floor was last computed, and its value (none at start: the set is
    /// empty).
    floor: Mutex<(Instant, Option<f64>)>,
    /// Promotions compile there, one at a time, at the lowest CPU priority (one thread for
    /// every config a reload brings).
    compiler: Arc<Compiler>,
    /// Tasks whose code comes from regions, turned hot, waiting for their code: `(name,
    /// digest)`, taken by the code watcher ([`crate::regions::code`]).
    wanted: Mutex<Vec<(String, String)>>,
    /// Wakes the code watcher: code is wanted, or a region answered with another version.
    pub wake: tokio::sync::Notify,
    /// A region answered a forward with a version this edge did not know: look now.
    poll_soon: std::sync::atomic::AtomicBool,
}

/// How long a task whose code could not be fetched is left forwarded before trying again.
const FETCH_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The current version of a task whose code comes from regions, as a region said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub digest: String,
    pub limits: Limits,
}

struct TaskEntry {
    spec: TaskSpec,
    /// Its declared memory and deadline fit the edge's inline limits (a task from regions:
    /// those of its version, once known).
    fits: bool,
    /// Its code comes from regions (no wasm file here).
    remote: bool,
    /// Loaded at start for `placement: edge` routes; never evicted.
    pinned: Option<Arc<Task>>,
    state: Mutex<TaskState>,
}

impl TaskEntry {
    /// The code that runs here: resident, or else pinned at start.
    fn code_here<'a>(&'a self, state: &'a TaskState) -> Option<&'a Arc<Task>> {
        match &state.code {
            Code::Ready(task) => Some(task),
            _ => self.pinned.as_ref(),
        }
    }
}

struct TaskState {
    hotness: Hotness,
    code: Code,
    oversized_until: Option<Instant>,
    /// A task from regions: its current version there, once a region said.
    version: Option<Remote>,
    /// A task from regions whose code could not be fetched: not asked for again before.
    fetch_after: Option<Instant>,
}

enum Code {
    Absent,
    /// A task from regions: its code is being fetched (then compiled).
    Fetching,
    Compiling,
    Ready(Arc<Task>),
    Failed,
}

/// One task's placement state, for the admin endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskStatus {
    pub hot: bool,
    pub rate: f64,
    pub code: &'static str,
    /// Where its code comes from: `file` (the config's wasm) or `regions`.
    pub from: &'static str,
    /// The digest of the code it runs here, if any is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A task from regions: the digest of its current version there, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// How the code it runs here was made ready (compiled, or loaded from `code_cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<crate::wasm::Ready>,
    /// Seconds the task is still paused for failing (`placement.failing`), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_for: Option<f64>,
    /// Times the code it runs here was paused for failing.
    pub pauses: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a task's declared memory and deadline fit the edge's; its body limit is checked
/// per request, against the body each request declares.
fn fits(limits: &Limits, caps: &Limits) -> bool {
    limits.memory <= caps.memory && limits.timeout <= caps.timeout
}

impl Placer {
    /// `pinned` are the tasks loaded at start (those of `placement: edge` routes).
    pub fn new(
        spec: PlacementSpec,
        runtime: Arc<Runtime>,
        tasks: impl IntoIterator<Item = TaskSpec>,
        pinned: Vec<Arc<Task>>,
    ) -> Placer {
        let thresholds = Thresholds {
            hot: spec.hot_threshold,
            cool: spec.cool_threshold,
            cooldown: spec.cooldown,
        };
        let tasks = tasks
            .into_iter()
            .map(|task| {
                let pinned = pinned.iter().find(|p| p.name == task.name).cloned();
                let code = pinned.clone().map_or(Code::Absent, Code::Ready);
                let entry = TaskEntry {
                    fits: fits(&task.limits, &spec.inline_limits),
                    remote: task.wasm.is_none(),
                    spec: task,
                    pinned,
                    state: Mutex::new(TaskState {
                        hotness: Hotness::default(),
                        code,
                        oversized_until: None,
                        version: None,
                        fetch_after: None,
                    }),
                };
                (entry.spec.name.clone(), Arc::new(entry))
            })
            .collect();
        let resident = Mutex::new(ResidentSet::new(
            spec.max_resident,
            spec.max_resident_memory,
        ));
        Placer {
            spec,
            thresholds,
            runtime,
            tasks,
            resident,
            floor: Mutex::new((Instant::now(), None)),
            compiler: Arc::new(Compiler::new()),
            wanted: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            poll_soon: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The placer of a reloaded config: `new`, given `old`'s compile thread (its own never
    /// started), takes over what `old` learnt of the tasks the reload kept (by name): their
    /// heat, and their compiled code where it is still this config's (`digests` names each
    /// task's wasm; the limits are the same). A task mid-compile in `old` starts again here
    /// at its next request.
    pub fn reloaded(new: Placer, old: &Placer, digests: &HashMap<String, String>) -> Placer {
        let mut placer = new;
        placer.compiler = old.compiler.clone();
        let mut carried = Vec::new();
        for (name, entry) in &placer.tasks {
            let Some(before) = old.tasks.get(name) else {
                continue;
            };
            let before_entry = before;
            let before = lock(&before.state);
            let mut state = lock(&entry.state);
            state.hotness = before.hotness.clone();
            state.oversized_until = before.oversized_until;
            // A task from regions keeps the version they said, and the code of it.
            let remote = entry.remote && before_entry.remote;
            if remote {
                state.version = before.version.clone();
            }
            let same = |task: &Task| match remote {
                true => before
                    .version
                    .as_ref()
                    .is_some_and(|v| v.digest == task.digest),
                false => {
                    digests.get(name) == Some(&task.digest) && task.limits == entry.spec.limits
                }
            };
            if let Code::Ready(task) = &before.code
                && entry.pinned.is_none()
                && same(task)
            {
                carried.push(task.clone());
            }
        }
        let now = Instant::now();
        for task in carried {
            let admitted =
                lock(&placer.resident).admit(&task.name, task.code_bytes, |n| placer.rate(n, now));
            if let Admit::Admitted { evicted } = admitted {
                for other in evicted.iter().filter_map(|n| placer.tasks.get(n)) {
                    lock(&other.state).code = Code::Absent;
                }
                if let Some(entry) = placer.tasks.get(&task.name) {
                    lock(&entry.state).code = Code::Ready(task);
                }
            }
        }
        placer
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Counts a request for `task` and decides where it runs: gathers the facts, then one
    /// pure [`admission::decide`] says where and why. The only actions are what the decision
    /// implies: a hot task not yet compiled is sent to the compiler, and an inline run takes
    /// an execution slot (taking it is the "slot free" fact).
    pub fn place(self: &Arc<Self>, task: &str, mode: Mode, body_len: Option<u64>) -> Placement {
        let Some(entry) = self.tasks.get(task) else {
            return Placement::Unknown;
        };
        let now = Instant::now();
        let (mut facts, code, promote) = self.facts(entry, mode, body_len, now);
        if promote {
            self.promote(entry);
        }
        let mut slot = None;
        if admission::decide(&facts) == Decision::Inline(Reason::Hot) {
            slot = self.runtime.try_slot();
            facts.slot_free = slot.is_some();
        }
        match admission::decide(&facts) {
            Decision::Forward(reason) => Placement::Forward(reason),
            Decision::Inline(reason) => match code.or_else(|| entry.pinned.clone()) {
                Some(task) => Placement::Inline { task, slot, reason },
                // Pinned routes' code is loaded at start; without it nothing can run here.
                None => Placement::Unknown,
            },
        }
    }

    /// What the decision looks at, for one request at `now` (counted here); the code, if it
    /// is ready; and whether the task should be compiled now (hot, fits, not yet asked for,
    /// and hotter than the resident set's floor).
    fn facts(
        &self,
        entry: &TaskEntry,
        mode: Mode,
        body_len: Option<u64>,
        now: Instant,
    ) -> (Facts, Option<Arc<Task>>, bool) {
        let (hot, rate, residency, code, absent, cooling_off, fits_edge) = {
            let mut state = lock(&entry.state);
            state.hotness.observe(now, &self.thresholds);
            let (residency, code) = match &state.code {
                Code::Ready(task) => (Residency::Ready, Some(task.clone())),
                Code::Absent | Code::Fetching | Code::Compiling => (Residency::Warming, None),
                Code::Failed => (Residency::Never, None),
            };
            let cooling_off = state.oversized_until.is_some_and(|until| now < until);
            // A task from regions can be asked for once its version is known (and not
            // straight after a fetch failed).
            let askable = !entry.remote
                || (state.version.is_some() && state.fetch_after.is_none_or(|t| now >= t));
            let absent = matches!(state.code, Code::Absent) && askable;
            let fits_edge = match (&state.version, entry.remote) {
                (Some(version), true) => fits(&version.limits, &self.spec.inline_limits),
                _ => entry.fits,
            };
            (
                state.hotness.is_hot(),
                state.hotness.rate(now),
                residency,
                code,
                absent,
                cooling_off,
                fits_edge,
            )
        };
        // Only `auto` looks (a pinned route's run answers `paused` itself). A paused task's
        // code is loaded: a task without code here has not run here.
        let paused = mode == Mode::Auto
            && (code.as_ref().or(entry.pinned.as_ref()))
                .is_some_and(|task| task.failures.paused(now).is_some());
        let candidate = mode == Mode::Auto && fits_edge && hot && absent;
        let below_floor = candidate && self.admission_floor(now).is_some_and(|floor| rate <= floor);
        let facts = Facts {
            mode,
            hot,
            below_floor,
            residency,
            fits: fits_edge,
            cooling_off,
            paused,
            body_len,
            max_inline_body: self.spec.inline_limits.max_body,
            slot_free: true,
        };
        (facts, code, candidate && !below_floor)
    }

    /// Sends a task that turned hot to the compiler, unless another request did already.
    fn promote(self: &Arc<Self>, entry: &Arc<TaskEntry>) {
        let mut state = lock(&entry.state);
        if !matches!(state.code, Code::Absent) {
            return;
        }
        if entry.remote {
            let Some(digest) = state.version.as_ref().map(|v| v.digest.clone()) else {
                return;
            };
            state.code = Code::Fetching;
            let wanted = (entry.spec.name.clone(), digest);
            drop(state);
            log::info!(
                "task {} turned hot: taking its code {} from the regions",
                wanted.0,
                wanted.1
            );
            lock(&self.wanted).push(wanted);
            self.wake.notify_one();
            return;
        }
        state.code = Code::Compiling;
        drop(state);
        let spec = entry.spec.clone();
        self.compile(entry.clone(), move |runtime| runtime.load(&spec));
    }

    /// The task's compiled code, if it is loaded here (pinned or resident).
    pub fn loaded(&self, task: &str) -> Option<Arc<Task>> {
        let entry = self.tasks.get(task)?;
        entry.code_here(&lock(&entry.state)).cloned()
    }

    /// An inline run of `task` outgrew the edge: keep it off for a while.
    pub fn outgrew(&self, task: &str) {
        if let Some(entry) = self.tasks.get(task) {
            lock(&entry.state).oversized_until =
                Some(Instant::now() + self.spec.oversized_cooldown);
        }
    }

    /// The rate a task must beat to become resident (`None` while there is room), computed
    /// at most every [`FLOOR_REFRESH`].
    fn admission_floor(&self, now: Instant) -> Option<f64> {
        {
            let floor = lock(&self.floor);
            if now.saturating_duration_since(floor.0) < FLOOR_REFRESH {
                return floor.1;
            }
        }
        let value = lock(&self.resident).floor(|n| self.rate(n, now));
        *lock(&self.floor) = (now, value);
        value
    }

    fn rate(&self, task: &str, now: Instant) -> f64 {
        self.tasks
            .get(task)
            .map_or(0.0, |e| lock(&e.state).hotness.rate(now))
    }

    /// Compiles a promoted task off the request path (the task stays `warming` meanwhile),
    /// by `load`.
    fn compile(
        self: &Arc<Self>,
        entry: Arc<TaskEntry>,
        load: impl FnOnce(&Runtime) -> Result<Task, LoadError> + Send + 'static,
    ) {
        log::info!(
            "task {} turned hot: compiling it at the edge",
            entry.spec.name
        );
        let placer = self.clone();
        let queued = entry.clone();
        let submitted = self.compiler.submit(move || {
            let started = Instant::now();
            let load = std::panic::AssertUnwindSafe(|| load(&placer.runtime));
            let loaded = std::panic::catch_unwind(load).unwrap_or_else(|_| {
                Err(LoadError::Compile(wasmtime::Error::msg(
                    "the compiler panicked",
                )))
            });
            let stats = &placer.compiler.stats;
            stats.record(started.elapsed(), loaded.is_ok());
            placer.finish_compile(&queued, loaded);
        });
        if !submitted {
            log::error!(
                "task {} cannot be compiled at the edge (no compile thread): it will always be forwarded",
                entry.spec.name
            );
            lock(&entry.state).code = Code::Failed;
        }
    }

    fn finish_compile(&self, entry: &TaskEntry, loaded: Result<Task, LoadError>) {
        let name = &entry.spec.name;
        let task = match loaded {
            // A task from regions whose version changed while this compiled: the new
            // version is asked for at its next request.
            Ok(task) if entry.remote && !self.is_current(entry, &task.digest) => {
                log::info!(
                    "task {name}: {} compiled after a newer version came: dropped",
                    task.digest
                );
                return;
            }
            Ok(task) => task,
            Err(e) => {
                log::error!(
                    "task {name} cannot be loaded at the edge, it will always be forwarded: {e}"
                );
                lock(&entry.state).code = Code::Failed;
                return;
            }
        };
        let now = Instant::now();
        let admitted = lock(&self.resident).admit(name, task.code_bytes, |n| self.rate(n, now));
        match admitted {
            Admit::TooLarge => {
                log::warn!(
                    "task {name}: {} bytes of code is more than placement.max_resident_memory",
                    task.code_bytes
                );
                lock(&entry.state).code = Code::Failed;
            }
            Admit::Colder => {
                log::info!("task {name} is not as hot as the tasks resident at the edge: not kept");
                lock(&entry.state).code = Code::Absent;
            }
            Admit::Admitted { evicted } => {
                for other in evicted.iter().filter_map(|n| self.tasks.get(n)) {
                    log::info!(
                        "task {} evicted from the edge to make room for {name}",
                        other.spec.name
                    );
                    lock(&other.state).code = Code::Absent;
                }
                log::info!(
                    "task {name} is resident at the edge ({} bytes of code)",
                    task.code_bytes
                );
                lock(&entry.state).code = Code::Ready(Arc::new(task));
            }
        }
    }

    /// Whether `digest` is the current version of a task from regions, and its code is
    /// being compiled.
    fn is_current(&self, entry: &TaskEntry, digest: &str) -> bool {
        let state = lock(&entry.state);
        let current = state.version.as_ref().is_some_and(|v| v.digest == digest);
        current && matches!(state.code, Code::Compiling)
    }

    /// Promotion compiles so far: `(compiles, failures, seconds)`.
    pub fn compiles(&self) -> (u64, u64, f64) {
        self.compiler.stats.snapshot()
    }

    /// The resident set now: `(tasks, bytes of code)`.
    pub fn resident(&self) -> (usize, u64) {
        let set = lock(&self.resident);
        (set.len(), set.bytes())
    }

    pub fn status(&self) -> Vec<(String, TaskStatus)> {
        let now = Instant::now();
        let mut all: Vec<_> = self
            .tasks
            .iter()
            .map(|(name, entry)| {
                // Reading changes nothing: heat as of the task's last request.
                let state = lock(&entry.state);
                let code = match state.code {
                    Code::Absent => "absent",
                    Code::Fetching => "fetching",
                    Code::Compiling => "compiling",
                    Code::Ready(_) if entry.pinned.is_some() => "pinned",
                    Code::Ready(_) => "resident",
                    Code::Failed => "failed",
                };
                let (digest, ready) = match &state.code {
                    Code::Ready(task) => (Some(task.digest.clone()), Some(task.ready)),
                    _ => (None, None),
                };
                let code_here = entry.code_here(&state);
                let paused_for = code_here
                    .and_then(|t| t.failures.paused(now))
                    .map(|left| left.as_secs_f64());
                let pauses = code_here.map_or(0, |t| t.failures.pauses());
                let status = TaskStatus {
                    hot: state.hotness.is_hot(),
                    rate: state.hotness.rate(now),
                    code,
                    from: if entry.remote { "regions" } else { "file" },
                    digest,
                    current: state.version.as_ref().map(|v| v.digest.clone()),
                    ready,
                    paused_for,
                    pauses,
                };
                (name.clone(), status)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
