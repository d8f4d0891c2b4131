//! The services a Poplar server adds to Pingora's beside its proxies: the exit watchdog of
//! a stop, the access log's reopening, reloads on `SIGHUP`, and [`Together`], background
//! services sharing one thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::server::ShutdownWatch;

use super::capped::Connections;
use crate::access_log::AccessLog;
use crate::admin::Reload;
use crate::metrics::InFlight;

/// Background services run side by side on one thread (Pingora gives each service a thread
/// and a runtime of its own): each ends with the shutdown, as it would alone.
pub(super) struct Together(
    pub(super) Vec<Box<dyn pingora_core::services::background::BackgroundService + Send + Sync>>,
);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Together {
    async fn start(&self, shutdown: ShutdownWatch) {
        let all = self.0.iter().map(|service| service.start(shutdown.clone()));
        futures_util::future::join_all(all).await;
    }
}

/// How long past its drain a stopping server may take before the watchdog ends it.
pub(super) const EXIT_SLACK_SECS: u64 = 5;

/// Once a shutdown has begun, ends the process as soon as no client connection is open and
/// no request in flight (Pingora would sleep out the whole grace period however idle), and in
/// any case if the shutdown has not finished well after its drain: Pingora 0.9.1's accept
/// loop could spin on "the runtime is being shut down" errors, the process never exiting
/// (fixed in the patched pingora-core, `vendor/README.md`; this stays as a second guard).
/// Connections, not only requests: one accepted just before the shutdown whose request has
/// not arrived yet is served (the patched pingora-proxy reads its first request), and ending
/// the process under it would reset it. Idle kept-alive connections are closed at the
/// shutdown, so they do not hold it. Only for `poplar serve`: an in-process server must not
/// end its host process.
pub(super) struct ExitWatchdog {
    pub(super) after: Duration,
    pub(super) in_flight: InFlight,
    pub(super) connections: Arc<Connections>,
}

/// How often a stopping server looks for connections still open. The first look is one
/// period into the shutdown, so that a connection accepted as it began has reached the
/// proxy (and is counted) by then.
const DRAIN_POLL: Duration = Duration::from_millis(50);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for ExitWatchdog {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let (after, in_flight) = (self.after, self.in_flight.clone());
        let connections = self.connections.clone();
        std::thread::spawn(move || {
            let began = Instant::now();
            while began.elapsed() < after {
                std::thread::sleep(DRAIN_POLL);
                if in_flight.now() == 0 && connections.open() == 0 {
                    log::info!(
                        "no request in flight and no connection open {:?} into the shutdown: exiting",
                        began.elapsed()
                    );
                    std::process::exit(0);
                }
            }
            log::error!("shutdown did not finish {after:?} after it began: exiting now");
            std::process::exit(0);
        });
    }
}

/// Runs `each` for every `kind` signal, until the server shuts down.
async fn on_signal<F: std::future::Future<Output = ()>>(
    kind: tokio::signal::unix::SignalKind,
    what: &str,
    mut shutdown: ShutdownWatch,
    mut each: impl FnMut() -> F,
) {
    let mut signals = match tokio::signal::unix::signal(kind) {
        Ok(signals) => signals,
        Err(e) => return log::error!("cannot take {what}: {e}"),
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            got = signals.recv() => match got {
                Some(()) => each().await,
                None => return,
            },
        }
    }
}

/// Reopens the access log on `SIGUSR1`, as log rotation (logrotate's `postrotate`) asks.
pub(super) struct Reopen {
    pub(super) log: Arc<AccessLog>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Reopen {
    async fn start(&self, shutdown: ShutdownWatch) {
        let usr1 = tokio::signal::unix::SignalKind::user_defined1();
        on_signal(usr1, "SIGUSR1 for the access log", shutdown, || async {
            log::info!("SIGUSR1: reopening the access log");
            self.log.reopen();
        })
        .await;
    }
}

/// Reloads the config file on `SIGHUP` (an edge's or a region's reloader), off the runtime's
/// threads.
pub(super) struct ReloadOnHangUp {
    pub(super) reloader: Arc<dyn Reload>,
}

impl ReloadOnHangUp {
    async fn reload(&self) {
        let reloader = self.reloader.clone();
        log::info!("SIGHUP: reloading the config");
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(_)) => {} // the reloader logs what changed
            Ok(Err(errors)) => {
                log::error!("reload refused, the config in force goes on: {errors}");
            }
            Err(e) => log::error!("the reload failed: {e}"),
        }
    }
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for ReloadOnHangUp {
    async fn start(&self, shutdown: ShutdownWatch) {
        let hup = tokio::signal::unix::SignalKind::hangup();
        on_signal(hup, "SIGHUP for reloads", shutdown, || self.reload()).await;
    }
}
