//! Turning a [`Config`] into a running Pingora server: load the tasks, build the proxy
//! service, derive Pingora's own settings, and run it in the foreground or in a thread.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::proxy::Edge;
use crate::routing::Router;
use crate::wasm::{self, Capacity, Runtime, Task};

/// Builds the server for `config`: compiles every task (slow: seconds for big ones).
pub fn build(config: &Config, source: &Path) -> Result<Server, ConfigErrors> {
    let (runtime, tasks) = load_tasks(config, source)?;
    let edge = Edge::new(Router::new(&config.routes), tasks, Arc::new(runtime));

    let mut server = Server::new_with_opt_and_conf(None, server_conf(config));
    server.bootstrap();
    let mut service =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, edge, "poplar edge");
    service.add_tcp(&config.listen.to_string());
    server.add_service(service);
    Ok(server)
}

/// Sets up the wasm runtime and compiles every task. A task that cannot load is a config
/// error, reported with the others at its `wasm` key.
pub fn load_tasks(
    config: &Config,
    source: &Path,
) -> Result<(Runtime, Vec<Arc<Task>>), ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: source.to_path_buf(),
        errors,
    };
    let runtime = Runtime::new(capacity(config)).map_err(|e| {
        fail(vec![ConfigError {
            path: "placement.max_inline".into(),
            message: format!("cannot set up the wasm engine for this many instances: {e:#}"),
        }])
    })?;
    let (tasks, failed) = wasm::load_all(&runtime, config.tasks.values());
    if !failed.is_empty() {
        let errors = failed
            .into_iter()
            .map(|(name, e)| ConfigError {
                path: format!("tasks.{name}.wasm"),
                message: e.to_string(),
            })
            .collect();
        return Err(fail(errors));
    }
    Ok((runtime, tasks))
}

fn capacity(config: &Config) -> Capacity {
    let max_memory = config
        .tasks
        .values()
        .map(|t| t.limits.memory)
        .max()
        .unwrap_or(64 << 20);
    Capacity {
        instances: u32::try_from(config.max_inline).unwrap_or(u32::MAX),
        max_memory,
    }
}

/// Pingora's settings, derived from ours. The grace period after SIGTERM only needs to
/// outlast the longest task deadline.
fn server_conf(config: &Config) -> ServerConf {
    let longest = config
        .tasks
        .values()
        .map(|t| t.limits.timeout)
        .max()
        .unwrap_or_default();
    ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(longest.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    }
}

/// A server running on a thread of this process, as tests and `poplar demo` use it.
/// Dropping it stops the server.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Builds and starts the server, and waits until it accepts connections.
    pub fn start(config: &Config, source: &Path) -> anyhow::Result<Running> {
        let server = build(config, source)?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("poplar {}", config.listen))
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(StopWatch(stopped)),
                })
            })?;
        let running = Running {
            addr: config.listen,
            stop,
            thread: Some(thread),
        };
        wait_until_listening(config.listen, Duration::from_secs(20))?;
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
