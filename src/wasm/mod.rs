//! Wasmtime: one engine per server, one pre-instantiated component per task, one fresh
//! store and instance per request.
//!
//! The engine uses the pooling allocator (sized from `placement.max_inline`) and epoch
//! interruption driven by a ticker thread; each request's store gets a memory cap and a
//! wall-clock deadline (see [`exec`]).

mod exec;
mod failing;
mod host;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::config::{Limits, TaskSpec};
pub use exec::{GuestResponse, TaskError};
pub use failing::{FailPolicy, Failures};
use host::{GuestMemory, Host};
pub use store::{CodeStore, is_digest, write_atomically};

/// How often the epoch advances: the granularity of deadlines and of guest time slices.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Why a task could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "is a core wasm module, not a component: build it for wasm32-wasip2 (or componentize it)"
    )]
    CoreModule,
    #[error("not a valid component: {0:#}")]
    Compile(wasmtime::Error),
    #[error("not a wasi:http/proxy component this host can run: {0:#}")]
    Link(wasmtime::Error),
    #[error("its code comes from regions, not a file here")]
    FromRegions,
    #[error("{path} changed while it was being loaded: load it again")]
    Changed { path: String },
}

/// What the engine must be able to hold at once.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Concurrent instances.
    pub instances: u32,
    /// The largest memory cap of any task, in bytes.
    pub max_memory: u64,
    /// Linear memory all executions together may hold, in bytes.
    pub guest_memory: u64,
}

/// The engine, the linker and the epoch ticker, shared by every task of a server.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    /// One permit per instance the pool holds: an execution runs only with one in hand.
    slots: Arc<Semaphore>,
    instances: usize,
    ticker: EpochTicker,
    /// Executions that found no slot free and waited for one (a sign `max_inline` is small).
    slot_waits: std::sync::atomic::AtomicU64,
    /// The level guests' stdout and stderr lines are logged at (target `poplar::guest`).
    guest_log: log::Level,
    /// When tasks loaded from now on are paused for failing (`placement.failing`).
    failing: FailPolicy,
    /// Linear memory held by every execution, against `placement.guest_memory`.
    memory: Arc<GuestMemory>,
    /// Compiled code kept on disk (`code_cache:`), if any.
    store: Option<CodeStore>,
    /// Components compiled, and loaded compiled from the store, since start.
    pub code: CodeStats,
}

/// How tasks' code was made ready since start: compiled from wasm, or loaded compiled
/// from the code cache, and the time each took.
#[derive(Debug, Default)]
pub struct CodeStats {
    compiled: AtomicU64,
    compile_nanos: AtomicU64,
    loaded: AtomicU64,
    load_nanos: AtomicU64,
}

/// [`CodeStats`] as read at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CodeCounts {
    pub compiled: u64,
    pub compile_seconds: f64,
    pub loaded: u64,
    pub load_seconds: f64,
}

impl CodeStats {
    fn record(&self, compiled: bool, took: Duration) {
        let (count, nanos) = match compiled {
            true => (&self.compiled, &self.compile_nanos),
            false => (&self.loaded, &self.load_nanos),
        };
        count.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        nanos.fetch_add(took, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CodeCounts {
        let seconds = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / 1e9;
        CodeCounts {
            compiled: self.compiled.load(Ordering::Relaxed),
            compile_seconds: seconds(&self.compile_nanos),
            loaded: self.loaded.load(Ordering::Relaxed),
            load_seconds: seconds(&self.load_nanos),
        }
    }
}

impl Runtime {
    pub fn new(capacity: Capacity) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(capacity))?;
        let mut linker = Linker::<Host>::new(&engine);
        // All of WASI p2, as `wasmtime serve -S cli` links: Rust std guests import
        // wasi:cli/environment, exit and terminal-*, beyond the proxy world.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let instances = capacity.instances.max(1) as usize;
        let slots = Arc::new(Semaphore::new(instances));
        let ticker = EpochTicker::start(&engine, slots.clone());
        Ok(Runtime {
            engine,
            linker,
            slots,
            instances,
            ticker,
            slot_waits: std::sync::atomic::AtomicU64::new(0),
            guest_log: log::Level::Info,
            failing: FailPolicy::default(),
            memory: Arc::new(GuestMemory::new(capacity.guest_memory)),
            store: None,
            code: CodeStats::default(),
        })
    }

    /// Keeps compiled code in `dir` (at most `max_bytes` of it), and loads it from there.
    pub fn keep_code_in(&mut self, dir: &std::path::Path, max_bytes: u64) -> std::io::Result<()> {
        self.store = Some(CodeStore::open(dir, max_bytes, &self.engine)?);
        Ok(())
    }

    /// The code cache, if there is one.
    pub fn store(&self) -> Option<&CodeStore> {
        self.store.as_ref()
    }

    /// Logs the guests of tasks loaded from now on at `level`.
    pub fn set_guest_log(&mut self, level: log::Level) {
        self.guest_log = level;
    }

    /// Pauses tasks loaded from now on whose runs keep failing, as `policy` says.
    pub fn set_failing(&mut self, policy: FailPolicy) {
        self.failing = policy;
    }

    /// Executions running now (slots taken), and how many can run at once.
    pub fn slots_in_use(&self) -> (usize, usize) {
        let free = self.slots.available_permits();
        (self.instances.saturating_sub(free), self.instances)
    }

    /// Guest linear memory held now, its budget, and growths the budget refused.
    pub fn guest_memory(&self) -> (u64, u64, u64) {
        self.memory.usage()
    }

    /// Executions that waited for a slot, since start.
    pub fn slot_waits(&self) -> u64 {
        self.slot_waits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An execution slot if one is free right now.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        self.ticker.wake();
        Some(slot)
    }

    /// An execution slot, waiting for one until `until` at the latest.
    pub async fn slot(&self, until: tokio::time::Instant) -> Option<OwnedSemaphorePermit> {
        if let Some(slot) = self.try_slot() {
            return Some(slot);
        }
        self.slot_waits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let acquire = self.slots.clone().acquire_owned();
        let slot = tokio::time::timeout_at(until, acquire).await.ok()?.ok()?;
        self.ticker.wake();
        Some(slot)
    }

    /// Compiles and links a task. This is slow (milliseconds to seconds): never on a request.
    pub fn load(&self, spec: &TaskSpec) -> Result<Task, LoadError> {
        let bytes = read(spec)?;
        self.load_bytes(&spec.name, &bytes, spec.limits)
    }

    pub fn load_bytes(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<Task, LoadError> {
        let digest = digest(bytes);
        let (component, ready) = match self.kept(&digest) {
            Some(made) => made,
            None => self.compile(bytes, &digest)?,
        };
        self.link(name, digest, &component, limits, ready)
    }

    /// The compiled component of code `digest` from the code cache, if it is there: no
    /// need to read (or hash) the wasm again.
    fn kept(&self, digest: &str) -> Option<(Component, Ready)> {
        let started = std::time::Instant::now();
        let component = self.store.as_ref()?.compiled(&self.engine, digest)?;
        Some((component, self.made(false, started)))
    }

    /// Compiles `bytes` (whose digest is `digest`) and keeps the result in the code cache.
    fn compile(&self, bytes: &[u8], digest: &str) -> Result<(Component, Ready), LoadError> {
        let started = std::time::Instant::now();
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(LoadError::CoreModule);
        }
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        let ready = self.made(true, started);
        if let Some(store) = &self.store {
            store.keep_compiled(digest, &component);
        }
        Ok((component, ready))
    }

    /// A component made ready since `started`, compiled or loaded: counted, and said so.
    fn made(&self, compiled: bool, started: std::time::Instant) -> Ready {
        let took = started.elapsed();
        self.code.record(compiled, took);
        Ready::new(compiled, took)
    }

    /// Makes a task of a compiled component (several tasks may share one).
    fn link(
        &self,
        name: &str,
        digest: String,
        component: &Component,
        limits: Limits,
        ready: Ready,
    ) -> Result<Task, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(LoadError::Link)?;
        let pre = ProxyPre::new(pre).map_err(LoadError::Link)?;
        let code = component.image_range();
        Ok(Task {
            name: name.to_string(),
            code_bytes: (code.end as usize).saturating_sub(code.start as usize) as u64,
            digest,
            limits,
            ready,
            guest_log: self.guest_log,
            memory: self.memory.clone(),
            failures: Failures::new(self.failing),
            pre,
        })
    }
}

fn read(spec: &TaskSpec) -> Result<Vec<u8>, LoadError> {
    let Some(wasm) = &spec.wasm else {
        return Err(LoadError::FromRegions);
    };
    std::fs::read(wasm).map_err(|source| LoadError::Read {
        path: wasm.display().to_string(),
        source,
    })
}

/// Bytes of each linear memory kept resident between instances (tables: a sixteenth).
const KEEP_RESIDENT: usize = 1 << 20;

fn engine_config(capacity: Capacity) -> wasmtime::Config {
    let instances = capacity.instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasip2 guest has 3 core instances, 1 memory and 2 tables; leave room for
    // components from other toolchains.
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(16))
        .max_core_instances_per_component(16)
        .total_memories(instances.saturating_mul(2))
        .max_memories_per_component(2)
        .total_tables(instances.saturating_mul(8))
        .max_tables_per_module(4)
        .total_stacks(instances)
        .max_memory_size(usize::try_from(capacity.max_memory).unwrap_or(usize::MAX))
        // Memory an instance leaves beyond what is kept resident is given back to the
        // kernel when the instance ends, not queued: a queue of 64 memory hogs' pages kept
        // gigabytes resident (issue 16). A guest that dirtied less than the kept range
        // queues nothing, so this costs small guests no system call.
        .decommit_batch_size(1);
    // Keep what a request dirtied resident and copy the image back over just those pages
    // (found with the PAGEMAP_SCAN ioctl, Linux 6.7+), instead of dropping them and taking a
    // page fault on each again in the next request: 11k to 15k hello requests/s on one
    // thread (docs/BENCHMARKS.md). Without the ioctl, wasmtime zeroes the whole kept range
    // each time instead, which costs more than it saves.
    pool.linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT / 16)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// How a task's component was made ready: compiled from wasm, or loaded compiled from the
/// code cache, and how long it took.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ready {
    pub compiled: bool,
    pub ms: f64,
}

impl Ready {
    fn new(compiled: bool, took: Duration) -> Ready {
        Ready {
            compiled,
            ms: took.as_secs_f64() * 1000.0,
        }
    }
}

/// A loaded task, ready to instantiate.
pub struct Task {
    pub name: String,
    /// SHA-256 of the wasm file, hex: identifies this version of the task.
    pub digest: String,
    pub limits: Limits,
    /// Size of its compiled code, for the resident set's memory bound.
    pub code_bytes: u64,
    /// How its code was made ready here.
    pub ready: Ready,
    /// The level its stdout and stderr lines are logged at.
    guest_log: log::Level,
    /// The runtime's budget its executions' memory is taken from.
    memory: Arc<GuestMemory>,
    /// Its runs that failed in a row, and whether it is paused for them.
    pub failures: Failures,
    pre: ProxyPre<Host>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while a guest may be running (an
/// execution slot is taken), and sleeps without waking while none is: an idle server does
/// not tick 500 times a second. Taking a slot wakes it ([`Runtime::try_slot`]).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::Thread>,
    /// Epochs advanced so far (what the tests watch).
    #[cfg_attr(not(test), allow(dead_code))]
    ticks: Arc<AtomicU64>,
}

impl EpochTicker {
    fn start(engine: &Engine, slots: Arc<Semaphore>) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let (weak, flag, count) = (engine.weak(), stop.clone(), ticks.clone());
        let all = slots.available_permits();
        let spawned = std::thread::Builder::new()
            .name("poplar-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if slots.available_permits() == all {
                        // A slot taken after this check unparks us, and an unpark that comes
                        // before `park` makes it return at once: no wake-up is lost.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        let thread = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                // Without a ticker no deadline can fire, so this must not go unnoticed.
                log::error!(
                    "cannot start the epoch thread, guest deadlines rely on timers only: {e}"
                );
                None
            }
        };
        EpochTicker {
            stop,
            thread,
            ticks,
        }
    }

    /// Resumes ticking if the ticker sleeps; an atomic swap if it does not.
    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
    }
}

/// A task version: the hex SHA-256 of its wasm.
pub fn digest(wasm: &[u8]) -> String {
    Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads every task of a config, collecting the failures by task name. `known` holds the
/// digests of wasm files already read (the config's versions): a task whose compiled code
/// is in the code cache is then loaded without reading its wasm again.
pub fn load_all<'a>(
    runtime: &Runtime,
    specs: impl IntoIterator<Item = &'a TaskSpec>,
    known: &HashMap<String, String>,
) -> (Vec<Arc<Task>>, Vec<(String, LoadError)>) {
    // Tasks built from the same wasm share one compilation.
    let mut compiled: HashMap<String, (Component, Ready)> = HashMap::new();
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for spec in specs {
        let task = load_one(runtime, spec, known.get(&spec.name), &mut compiled);
        match task {
            Ok(task) => loaded.push(Arc::new(task)),
            Err(e) => failed.push((spec.name.clone(), e)),
        }
    }
    (loaded, failed)
}

fn load_one(
    runtime: &Runtime,
    spec: &TaskSpec,
    known: Option<&String>,
    compiled: &mut HashMap<String, (Component, Ready)>,
) -> Result<Task, LoadError> {
    let (digest, bytes) = match known {
        Some(digest) => (digest.clone(), None),
        None => {
            let bytes = read(spec)?;
            (digest(&bytes), Some(bytes))
        }
    };
    let made = compiled.get(&digest).cloned();
    let (component, ready) = match made.or_else(|| runtime.kept(&digest)) {
        Some(made) => made,
        None => {
            let bytes = match bytes {
                Some(bytes) => bytes,
                None => read_again(spec, &digest)?,
            };
            runtime.compile(&bytes, &digest)?
        }
    };
    let task = runtime.link(&spec.name, digest.clone(), &component, spec.limits, ready)?;
    compiled.insert(digest, (component, ready));
    Ok(task)
}

/// The wasm of a task whose digest was taken before: refused if it has changed since.
fn read_again(spec: &TaskSpec, digest: &str) -> Result<Vec<u8>, LoadError> {
    let bytes = read(spec)?;
    if self::digest(&bytes) != digest {
        let path = spec.wasm.as_ref().map(|w| w.display().to_string());
        return Err(LoadError::Changed {
            path: path.unwrap_or_default(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `done` every tick for up to 10 s.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        (0..5_000).any(|_| {
            std::thread::sleep(EPOCH_TICK);
            done()
        })
    }

    #[test]
    fn kept_code_loads_without_reading_the_wasm_and_a_file_changed_since_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        let built = concat!(env!("CARGO_MANIFEST_DIR"), "/tasks/dist/hello.wasm");
        std::fs::copy(built, &wasm).unwrap();
        let capacity = Capacity {
            instances: 1,
            max_memory: 64 << 20,
            guest_memory: 64 << 20,
        };
        let mut runtime = Runtime::new(capacity).unwrap();
        runtime
            .keep_code_in(&dir.path().join("code"), 1 << 30)
            .unwrap();
        let spec = TaskSpec {
            name: "hello".into(),
            wasm: Some(wasm.clone()),
            limits: crate::config::Limits::default(),
        };
        let (loaded, failed) = load_all(&runtime, [&spec], &HashMap::new());
        assert!(failed.is_empty(), "{failed:?}");
        assert!(loaded[0].ready.compiled);
        let known = HashMap::from([("hello".to_string(), loaded[0].digest.clone())]);

        // Its compiled code is kept: the wasm is not read again (it is gone).
        std::fs::remove_file(&wasm).unwrap();
        let (loaded, failed) = load_all(&runtime, [&spec], &known);
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!loaded[0].ready.compiled);

        // With nothing kept, a file whose bytes are no longer the digest's is refused.
        std::fs::write(&wasm, b"\0asm\x0d\0\x01\0").unwrap();
        let fresh = Runtime::new(capacity).unwrap();
        let (loaded, failed) = load_all(&fresh, [&spec], &known);
        assert!(loaded.is_empty());
        assert!(
            matches!(&failed[..], [(name, LoadError::Changed { .. })] if name == "hello"),
            "{failed:?}"
        );
    }

    #[test]
    fn the_epoch_advances_only_while_a_slot_is_taken() {
        let runtime = Runtime::new(Capacity {
            instances: 2,
            max_memory: 1 << 20,
            guest_memory: 2 << 20,
        })
        .unwrap();
        let ticks = || runtime.ticker.ticks.load(Ordering::Relaxed);
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(ticks(), 0, "an idle runtime ticked");

        let slot = runtime.try_slot().unwrap();
        assert!(
            eventually(|| ticks() >= 3),
            "a taken slot did not wake the ticker"
        );
        drop(slot);
        // The tick under way ends, then the ticker sleeps for good.
        let mut last = ticks();
        assert!(
            eventually(|| {
                std::thread::sleep(EPOCH_TICK * 4);
                std::mem::replace(&mut last, ticks()) == last
            }),
            "the ticker kept ticking with every slot free"
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let _slot = rt.block_on(runtime.slot(until)).unwrap();
        let before = ticks();
        assert!(
            eventually(|| ticks() > before + 2),
            "a slot waited for did not wake the ticker"
        );
    }
}
