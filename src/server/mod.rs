//! Turning a [`Config`] into a running Pingora server: load the tasks, build the proxy
//! service, derive Pingora's own settings, and run it in the foreground or in a thread.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::ServiceHandle;
use tokio::sync::watch;

use pingora_core::apps::http_app::HttpServer;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use std::collections::HashMap;

use crate::access_log::AccessLog;
use crate::admin::{Admin, Reload, Sources};
use crate::cache::{Cache, Clock};
use crate::config::{Config, ConfigError, ConfigErrors, Role, TaskSpec};
use crate::metrics::{Counters, InFlight};
use crate::proxy::{Edge, EdgeParts, RegionServer};
use crate::regions::HealthChecker;
use crate::registry::Registry;
use crate::wasm::{self, Capacity, Runtime, Task};

mod capped;
mod listeners;
mod reload;
mod services;
pub use capped::Connections;
pub use reload::{RegionReloaded, RegionReloader, Reloaded, Reloader};
use services::{EXIT_SLACK_SECS, ExitWatchdog, ReloadOnHangUp, Reopen};

/// Where the listening sockets of a server [`build`] makes come from.
pub enum Sockets {
    /// Bound by this process beforehand ([`bind_listeners`]).
    Bound(Vec<TcpListener>),
    /// Taken over from the running process (Pingora's graceful upgrade, on
    /// `upgrade_socket`): the server waits up to 5 s for them, which the old process sends
    /// on `SIGQUIT`.
    Upgrade,
}

/// Builds the server for `config`, as `poplar serve` runs it: compiles the tasks it needs at
/// start (slow: seconds for big ones).
pub fn build(config: &Config, source: &Path, sockets: Sockets) -> Result<Server, ConfigErrors> {
    let in_flight = InFlight::default();
    let connections = Arc::<Connections>::default();
    let built = Built {
        work_stealing: false,
        clock: Clock::default(),
        in_flight: in_flight.clone(),
        connections: connections.clone(),
        sockets,
        signals: true,
    };
    let (mut server, mut order) = build_with(config, source, built)?;
    let conf = &server.configuration;
    let drain = conf.grace_period_seconds.unwrap_or(0)
        + conf.graceful_shutdown_timeout_seconds.unwrap_or(0);
    let watchdog = ExitWatchdog {
        after: Duration::from_secs(drain + EXIT_SLACK_SECS),
        in_flight,
        connections,
    };
    order.later(server.add_service(background_service("exit watchdog", watchdog)));
    order.settle();
    Ok(server)
}

/// The proxy starts first, every other service after it: Pingora starts services in
/// dependency order, making a runtime and a thread for each on the way, and the first
/// request need not wait for those of the admin endpoint, the upkeep, the signal handlers
/// and the watchdog. (With the sockets handed over before the run as well, the server
/// running to its first request read went from 2.0 to 1.1 ms here.)
#[derive(Default)]
struct StartOrder {
    proxy: Option<ServiceHandle>,
    later: Vec<ServiceHandle>,
}

impl StartOrder {
    fn proxy(&mut self, service: ServiceHandle) {
        self.proxy.get_or_insert(service);
    }

    fn later(&mut self, service: ServiceHandle) {
        self.later.push(service);
    }

    fn settle(self) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        for service in &self.later {
            service.add_dependency(proxy);
        }
    }
}

/// How a server is built, beyond its config.
struct Built {
    work_stealing: bool,
    clock: Clock,
    in_flight: InFlight,
    /// Client connections open, over every listener.
    connections: Arc<Connections>,
    /// Bound already (handed to Pingora, [`listeners::hand_over`]), or to come from the old
    /// process.
    sockets: Sockets,
    /// Whether `SIGUSR1` reopens the access log: only where the process is the server's.
    signals: bool,
}

fn build_with(
    config: &Config,
    source: &Path,
    built: Built,
) -> Result<(Server, StartOrder), ConfigErrors> {
    let conf = server_conf(config, built.work_stealing);
    let (listeners, upgrade) = match built.sockets {
        Sockets::Bound(listeners) => (listeners, false),
        Sockets::Upgrade => (Vec::new(), true),
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    listeners::hand_over(&server.listen_fds(), listeners);
    let mut order = StartOrder::default();
    let (clock, in_flight) = (built.clock, built.in_flight);
    let access_log = open_access_log(config, source)?;
    if let Some(log) = access_log.as_ref().filter(|_| built.signals) {
        let reopen = Reopen { log: log.clone() };
        order.later(server.add_service(background_service("access log reopen", reopen)));
    }
    let shared = Shared {
        counters: Arc::new(Counters::new(config.tasks.keys().map(String::as_str))),
        in_flight,
        access_log,
        order: &mut order,
        signals: built.signals,
        connections: built.connections,
    };
    let (sources, reload) = match config.role {
        Role::Edge => add_edge(&mut server, config, source, shared, clock)?,
        Role::Region => add_region(&mut server, config, source, shared)?,
    };
    if let Some(admin) = &config.admin {
        let registry = sources.registry.clone();
        let mut app = Admin::new(sources, admin, reload);
        if let Some(registry) = registry {
            app = app.with_registry(registry);
        }
        let mut service = Service::new("poplar admin".to_string(), HttpServer::new_app(app));
        service.add_tcp(&admin.listen.to_string());
        order.later(server.add_service(service));
    }
    Ok((server, order))
}

/// What a server has whatever its role.
struct Shared<'a> {
    counters: Arc<Counters>,
    in_flight: InFlight,
    access_log: Option<Arc<AccessLog>>,
    /// Where the proxy and the other services go in the start order.
    order: &'a mut StartOrder,
    /// Whether the process's signals are the server's (`SIGHUP` reloads, `SIGUSR1` reopens
    /// the access log): not for a server on a thread of a test.
    signals: bool,
    /// Client connections open, over every listener (`clients.max_connections`).
    connections: Arc<capped::Connections>,
}

/// The edge proxy and its regions' health checks; what its admin endpoint reports on.
fn add_edge(
    server: &mut Server,
    config: &Config,
    source: &Path,
    shared: Shared<'_>,
    clock: Clock,
) -> Result<(Sources, Option<Arc<dyn Reload>>), ConfigErrors> {
    let signals = shared.signals;
    let (in_flight, access_log) = (shared.in_flight.clone(), shared.access_log.clone());
    let (edge, reloader) = edge(
        config,
        source,
        shared.counters.clone(),
        clock,
        in_flight,
        access_log,
    )?;
    let sources = Sources {
        counters: shared.counters,
        latencies: Some(edge.latencies.clone()),
        live: Some(edge.live.clone()),
        cache: Some(edge.cache.clone()),
        replays_refused: None,
        registry: None,
        in_flight: shared.in_flight,
        runtime: Some(reloader.runtime.clone()),
        access_log: shared.access_log,
        connections: shared.connections.clone(),
    };
    // Always: a reload may bring the first region.
    let checker = HealthChecker::new(reloader.regions.clone(), edge.client.clone());
    let live = edge.live.clone();
    let keeper = crate::origins::Keeper {
        origins: Arc::new(move || live.load().origins.clone()),
        client: edge.client.clone(),
    };
    let live = edge.live.clone();
    let watch = crate::regions::code::CodeWatch {
        view: Arc::new(move || {
            let live = live.load();
            let homes = (0..)
                .map_while(|i| live.router.by_index(i))
                .filter_map(|r| match (&r.target, &r.region) {
                    (crate::config::Target::Task(task), Some(home)) => {
                        Some((task.clone(), home.clone()))
                    }
                    _ => None,
                })
                .collect();
            crate::regions::code::View {
                placer: live.placer.clone(),
                regions: live.regions.clone(),
                key: live.key.clone(),
                homes,
            }
        }),
        client: edge.client.clone(),
    };
    // One thread for the edge's upkeep: each Pingora background service is a thread and a
    // runtime of its own, and these wait on the network, not the CPU.
    let upkeep = services::Together(vec![Box::new(checker), Box::new(keeper), Box::new(watch)]);
    let upkeep = background_service("region health, origin names, task code", upkeep);
    shared.order.later(server.add_service(upkeep));
    let edge = Edge::new(edge);
    let resolvers = listeners::add(
        server,
        &config.listeners,
        edge,
        ("poplar edge", &config.clients, &shared.connections),
        shared.order,
    )
    .map_err(|e| fail(source, vec![e]))?;
    *reloader.resolvers.lock().unwrap_or_else(|p| p.into_inner()) = resolvers;
    let reloader = Arc::new(reloader);
    if signals {
        let on_hup = ReloadOnHangUp {
            reloader: reloader.clone() as Arc<dyn Reload>,
        };
        let on_hup = background_service("reload on SIGHUP", on_hup);
        shared.order.later(server.add_service(on_hup));
    }
    Ok((sources, Some(reloader as Arc<dyn Reload>)))
}

/// The region proxy; what its admin endpoint reports on.
fn add_region(
    server: &mut Server,
    config: &Config,
    source: &Path,
    shared: Shared<'_>,
) -> Result<(Sources, Option<Arc<dyn Reload>>), ConfigErrors> {
    let mut region = region(config, source)?;
    let reloader = Arc::new(RegionReloader {
        source: source.to_path_buf(),
        current: std::sync::Mutex::new(config.clone()),
        live: region.live.clone(),
        runtime: region.runtime().clone(),
        counters: shared.counters.clone(),
        resolvers: std::sync::Mutex::default(),
    });
    if shared.signals {
        let on_hup = ReloadOnHangUp {
            reloader: reloader.clone() as Arc<dyn Reload>,
        };
        let on_hup = background_service("reload on SIGHUP", on_hup);
        shared.order.later(server.add_service(on_hup));
    }
    region.in_flight = shared.in_flight.clone();
    region.access_log = shared.access_log.clone();
    let sources = Sources {
        counters: shared.counters,
        latencies: None,
        live: None,
        cache: None,
        replays_refused: Some(region.replays.clone()),
        registry: region.registry.clone(),
        in_flight: shared.in_flight,
        runtime: Some(region.runtime().clone()),
        access_log: shared.access_log,
        connections: shared.connections.clone(),
    };
    let resolvers = listeners::add(
        server,
        &config.listeners,
        region,
        ("poplar region", &config.clients, &shared.connections),
        shared.order,
    )
    .map_err(|e| fail(source, vec![e]))?;
    *reloader.resolvers.lock().unwrap_or_else(|p| p.into_inner()) = resolvers;
    Ok((sources, Some(reloader as Arc<dyn Reload>)))
}

/// The access log, opened now: a file that cannot be opened is an error at start.
fn open_access_log(config: &Config, source: &Path) -> Result<Option<Arc<AccessLog>>, ConfigErrors> {
    let Some(spec) = &config.access_log else {
        return Ok(None);
    };
    match AccessLog::open(spec) {
        Ok(log) => Ok(Some(Arc::new(log))),
        Err(e) => {
            let message = format!("cannot open: {e}");
            Err(fail(
                source,
                vec![ConfigError::new("access_log.to", message)],
            ))
        }
    }
}

fn fail(source: &Path, errors: Vec<ConfigError>) -> ConfigErrors {
    ConfigErrors {
        file: source.to_path_buf(),
        errors,
    }
}

fn no_key(source: &Path) -> ConfigErrors {
    let message = "no forwarding key".to_string();
    fail(source, vec![ConfigError::new("forwarding", message)])
}

/// The edge: tasks of `placement: edge` routes are loaded now; the others when they turn hot.
fn edge(
    config: &Config,
    source: &Path,
    counters: Arc<Counters>,
    clock: Clock,
    in_flight: InFlight,
    access_log: Option<Arc<AccessLog>>,
) -> Result<(EdgeParts, Reloader), ConfigErrors> {
    let runtime = Arc::new(runtime(config, source)?);
    let live = reload::live(config, source, &runtime, None)?;
    let regions = Arc::new(ArcSwap::new(live.regions.clone()));
    let live = Arc::new(ArcSwap::from_pointee(live));
    let reloader = Reloader {
        source: source.to_path_buf(),
        current: std::sync::Mutex::new(config.clone()),
        live: live.clone(),
        regions,
        runtime,
        counters: counters.clone(),
        resolvers: std::sync::Mutex::default(),
    };
    let parts = EdgeParts {
        live,
        counters,
        latencies: Arc::default(),
        cache: Arc::new(Cache::with_clock(config.cache, clock)),
        client: Arc::default(),
        in_flight,
        access_log,
        redirects: (config.listeners.iter())
            .filter_map(|l| Some((l.addr, l.redirect_https?)))
            .collect(),
    };
    Ok((parts, reloader))
}

/// Each task's version: the SHA-256 of its wasm, so a new build never shares cache entries.
fn versions(config: &Config, source: &Path) -> Result<HashMap<String, String>, ConfigErrors> {
    let mut versions = HashMap::new();
    let mut errors = Vec::new();
    for task in config.tasks.values() {
        let Some(wasm) = &task.wasm else {
            continue;
        };
        match std::fs::read(wasm) {
            Ok(bytes) => {
                versions.insert(task.name.clone(), wasm::digest(&bytes));
            }
            Err(e) => errors.push(ConfigError::new(
                format!("tasks.{}.wasm", task.name),
                format!("cannot read: {e}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(versions)
    } else {
        Err(fail(source, errors))
    }
}

/// The region: every task is loaded now, the config's and the registry's current ones.
fn region(config: &Config, source: &Path) -> Result<RegionServer, ConfigErrors> {
    let (runtime, tasks) = load_tasks(config, source)?;
    let key = config
        .forwarding_key
        .clone()
        .ok_or_else(|| no_key(source))?;
    let runtime = Arc::new(runtime);
    let mut region = RegionServer::new(runtime.clone(), tasks, key);
    if let Some(spec) = &config.registry {
        let names = config.tasks.keys().cloned().collect();
        let registry = Registry::open(spec, runtime, names)
            .map_err(|e| fail(source, vec![ConfigError::new("registry.dir", e)]))?;
        region.registry = Some(Arc::new(registry));
    }
    Ok(region)
}

/// Sets up the wasm runtime and compiles every task, as `poplar check` does.
pub fn load_tasks(
    config: &Config,
    source: &Path,
) -> Result<(Runtime, Vec<Arc<Task>>), ConfigErrors> {
    let runtime = runtime(config, source)?;
    // A task from regions has nothing to compile here.
    let files = config.tasks.values().filter(|t| t.wasm.is_some());
    let tasks = load(&runtime, files, &HashMap::new(), source)?;
    Ok((runtime, tasks))
}

fn runtime(config: &Config, source: &Path) -> Result<Runtime, ConfigErrors> {
    let mut runtime = Runtime::new(capacity(config)).map_err(|e| {
        let message = format!("cannot set up the wasm engine for this many instances: {e:#}");
        fail(
            source,
            vec![ConfigError::new("placement.max_inline", message)],
        )
    })?;
    runtime.set_guest_log(config.guest_log);
    runtime.set_failing(config.placement.failing);
    if let Some(cache) = &config.code_cache {
        runtime
            .keep_code_in(&cache.dir, cache.max_bytes)
            .map_err(|e| {
                let message = format!("cannot use {}: {e}", cache.dir.display());
                fail(source, vec![ConfigError::new("code_cache.dir", message)])
            })?;
    }
    Ok(runtime)
}

/// Compiles tasks (or loads their compiled code: `versions` holds the digests already
/// taken); one that cannot load is a config error at its `wasm` key.
fn load<'a>(
    runtime: &Runtime,
    specs: impl IntoIterator<Item = &'a TaskSpec>,
    versions: &HashMap<String, String>,
    source: &Path,
) -> Result<Vec<Arc<Task>>, ConfigErrors> {
    let (tasks, failed) = wasm::load_all(runtime, specs, versions);
    if failed.is_empty() {
        return Ok(tasks);
    }
    let errors = failed
        .into_iter()
        .map(|(name, e)| ConfigError::new(format!("tasks.{name}.wasm"), e.to_string()))
        .collect();
    Err(fail(source, errors))
}

fn capacity(config: &Config) -> Capacity {
    // A registry's tasks may declare up to its max_memory, deployed after start.
    let deployable = config.registry.as_ref().map(|r| r.max_memory);
    let max_memory = (config.tasks.values().map(|t| t.limits.memory))
        .chain(deployable)
        .max()
        .unwrap_or(64 << 20);
    let instances = u32::try_from(config.placement.max_inline).unwrap_or(u32::MAX);
    Capacity {
        instances,
        max_memory,
        guest_memory: (config.placement.guest_memory)
            .unwrap_or(max_memory.saturating_mul(u64::from(instances))),
    }
}

/// Pingora's settings, derived from ours. After `SIGTERM` Pingora closes the listeners and
/// waits the grace period (`grace_period`) for requests in flight; [`ExitWatchdog`] ends
/// the wait once none is left.
///
/// `poplar serve` runs one single-threaded runtime per thread, as nginx runs one event loop
/// per worker: a request stays on the thread that accepted it, with no cross-thread wakeups
/// (+16% requests/s on the origin route, docs/BENCHMARKS.md). Guests yield at every epoch
/// tick, so none holds its thread. Servers started and stopped within one process
/// ([`Running`]) use work stealing instead: Pingora 0.9 can hand a new no-steal runtime the
/// handles of one already shut down (cloudflare/pingora#981), and its services then exit.
fn server_conf(config: &Config, work_stealing: bool) -> ServerConf {
    ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(2),
        upgrade_sock: config.upgrade_socket.display().to_string(),
        work_stealing,
        ..ServerConf::default()
    }
}

/// The backlog of each listening socket: Pingora's, when it binds one itself.
const LISTEN_BACKLOG: i32 = 65535;

/// Binds every listening address (`listen` and `admin.listen`) before anything starts, as
/// Pingora would (`SO_REUSEADDR`, a backlog of 65535), and hands the sockets to the server
/// ([`build`]): an address that is taken or not ours is an error now, and `poplar serve`
/// exits non-zero, where Pingora would retry it in a listener thread that then panics with
/// the process still up; and each address accepts connections (into its backlog) from the
/// moment the admin endpoint answers, where Pingora binds each service's addresses when that
/// service's thread starts, so a readiness probe could pass before the proxy listened.
pub fn bind_listeners(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let mut problems = Vec::new();
    let mut bound = Vec::new();
    let listeners = config.listeners.iter().map(|l| ("listen", l.addr));
    let admin = config.admin.as_ref().map(|a| ("admin.listen", a.listen));
    for (key, addr) in listeners.chain(admin) {
        match bind(addr) {
            Ok(listener) => bound.push(listener),
            Err(e) => problems.push(format!("cannot listen on {addr} ({key}): {e}")),
        }
    }
    if let Some(admin) = config.admin.as_ref().filter(|a| !a.guard_reads)
        && !admin.listen.ip().is_loopback()
    {
        log::warn!(
            "the admin endpoint listens on {}: every network that reaches it can read /stats and /metrics (admin.guard_reads: true to need the token)",
            admin.listen
        );
    }
    match problems.is_empty() {
        true => Ok(bound),
        false => anyhow::bail!("{}", problems.join("; ")),
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A server running on a thread of this process, as tests and `poplar demo` use it.
/// Dropping it stops the server.
pub struct Running {
    pub addr: SocketAddr,
    /// The clock its cache judges freshness by: [`Clock::advance`] ages every entry
    /// without waiting.
    pub clock: Clock,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Builds and starts the server, and waits until it accepts connections.
    pub fn start(config: &Config, source: &Path) -> anyhow::Result<Running> {
        let listeners = bind_listeners(config)?;
        Running::start_on(config, source, listeners)
    }

    /// [`Running::start`] on listeners the caller has bound already: one whose address is
    /// `listen` or `admin.listen` serves it, so no other process can take the port between
    /// choosing it and the server listening (as a port picked free and let go can be).
    /// Addresses without a listener here are bound by the server.
    pub fn start_on(
        config: &Config,
        source: &Path,
        listeners: Vec<TcpListener>,
    ) -> anyhow::Result<Running> {
        let clock = Clock::default();
        let built = Built {
            work_stealing: true,
            clock: clock.clone(),
            in_flight: InFlight::default(),
            connections: Arc::default(),
            sockets: Sockets::Bound(listeners),
            signals: false,
        };
        let (server, order) = build_with(config, source, built)?;
        order.settle();
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("poplar {}", config.addr()))
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(StopWatch(stopped)),
                })
            })?;
        let running = Running {
            addr: config.addr(),
            clock,
            stop,
            thread: Some(thread),
        };
        for listener in &config.listeners {
            wait_until_listening(listener.addr, Duration::from_secs(20))?;
        }
        Ok(running)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct StopWatch(watch::Receiver<bool>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}

fn wait_until_listening(addr: SocketAddr, patience: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < patience {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("nothing is listening on {addr} after {patience:?}")
}
