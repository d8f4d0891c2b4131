//! Origin pools at run time: each server's addresses (names resolved in the background,
//! never on a request's path), its health (active checks and passive ejection), and the
//! choice of a server per request, with failover to the next on a refused connection.
//!
//! Choice: round robin over the servers in service, or rendezvous hashing of the path
//! (`path_hash`), so a path keeps to one server while it is up and only the paths of a server
//! that leaves move. A server is out of service while it has no address, failed its active
//! checks, or is ejected for failing requests; when every server is out, the least bad is
//! tried all the same (a pool never refuses while something may answer).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::WrappedX509;
use pingora_http::RequestHeader;

use crate::config::{Balance, OriginSpec, ServerSpec};
use crate::resolve::Resolved;
use crate::upstream::Client;

/// Every pool of a config, by name.
#[derive(Default)]
pub struct Origins {
    pools: HashMap<String, Arc<Pool>>,
}

impl Origins {
    /// The pools of `specs`; what `old` knew of a server (its addresses, its health) is kept
    /// for the same server in a pool of the same name. Names `old` has no addresses for are
    /// resolved now (a config load or reload, off any request's path).
    pub fn new<'a>(
        specs: impl IntoIterator<Item = &'a OriginSpec>,
        old: Option<&Origins>,
    ) -> Origins {
        let pools = specs
            .into_iter()
            .map(|spec| {
                let before = old.and_then(|o| o.pools.get(&spec.name));
                (
                    spec.name.clone(),
                    Arc::new(Pool::new(spec, before.map(|p| &**p))),
                )
            })
            .collect();
        Origins { pools }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }
}

/// A server as `/stats` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ServerStatus {
    pub origin: String,
    pub server: String,
    /// Its addresses now (a name's last good ones).
    pub addresses: Vec<String>,
    /// Whether requests go to it (addressed, healthy, not ejected).
    pub in_service: bool,
    pub healthy: bool,
    pub ejected: bool,
    /// Why its name has no address, while it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

impl Origins {
    /// Every server of every pool, by pool name then config order.
    pub fn status(&self) -> Vec<ServerStatus> {
        let now = now_ms();
        let mut pools: Vec<&Arc<Pool>> = self.pools.values().collect();
        pools.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let mut out = Vec::new();
        for pool in pools {
            for server in &pool.servers {
                out.push(ServerStatus {
                    origin: pool.spec.name.clone(),
                    server: server.spec.to_string(),
                    addresses: server
                        .name
                        .addrs()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    in_service: server.in_service(now),
                    healthy: server.healthy.load(Ordering::Relaxed),
                    ejected: server.ejected_until.load(Ordering::Relaxed) > now,
                    unresolved: server.name.unresolved(),
                });
            }
        }
        out
    }
}

/// One pool.
pub struct Pool {
    pub spec: OriginSpec,
    servers: Vec<Server>,
    next: AtomicUsize,
    ca: Option<Arc<[WrappedX509]>>,
    /// Keeps this pool's connections its own. Pingora's connection pool tells peers apart by
    /// address, SNI and verification flags but not by CA: without it, a connection another
    /// pool verified against its CA would be reused by a pool trusting another.
    group: u64,
}

/// One server of a pool and what is known of it.
pub struct Server {
    pub spec: ServerSpec,
    /// Its host's addresses.
    name: Resolved,
    /// Failed active checks in a row; out of service at the pool's `unhealthy_after`.
    probe_failures: AtomicU32,
    healthy: AtomicBool,
    /// Failed requests in a row; at the pool's `eject.failures` it is ejected.
    failures: AtomicU32,
    /// Ejected until this many milliseconds after [`epoch`].
    ejected_until: AtomicU64,
}

/// A server chosen for a request.
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub server: usize,
    pub addr: SocketAddr,
}

/// Servers already tried for one request (at most 64 are told apart).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, server: usize) {
        self.0 |= 1 << (server % 64);
    }

    fn has(self, server: usize) -> bool {
        self.0 & (1 << (server % 64)) != 0
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Server {
    fn new(spec: &ServerSpec, before: Option<&Server>) -> Server {
        let name = Resolved::new(
            format!("origin {spec}"),
            &spec.host,
            spec.port,
            before.map(|old| &old.name),
        );
        // A name carried over with its addresses keeps what its checks found.
        let healthy = match before {
            Some(old) if spec.ip().is_none() && old.name.has_addrs() => {
                old.healthy.load(Ordering::Relaxed)
            }
            _ => true,
        };
        Server {
            spec: spec.clone(),
            name,
            probe_failures: AtomicU32::new(0),
            healthy: AtomicBool::new(healthy),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    fn in_service(&self, now: u64) -> bool {
        self.name.has_addrs()
            && self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.name.next()
    }
}

impl Pool {
    fn new(spec: &OriginSpec, before: Option<&Pool>) -> Pool {
        let servers = spec
            .servers
            .iter()
            .map(|s| {
                let old = before.and_then(|p| p.servers.iter().find(|o| o.spec == *s));
                Server::new(s, old)
            })
            .collect();
        let ca = spec.ca_certs.as_ref().map(|certs| {
            let wrapped: Vec<WrappedX509> = certs
                .iter()
                .map(|der| WrappedX509::new(der.clone(), pingora_core::utils::tls::parse_x509))
                .collect();
            Arc::from(wrapped)
        });
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        spec.hash(&mut hasher);
        Pool {
            spec: spec.clone(),
            servers,
            next: AtomicUsize::new(0),
            ca,
            group: hasher.finish(),
        }
    }

    /// A server for a request for `path`, not among `tried`; `Err` says why there is none.
    pub fn pick(&self, path: &str, tried: Tried) -> Result<Pick, String> {
        let now = now_ms();
        let untried = || (0..self.servers.len()).filter(move |&i| !tried.has(i));
        let choose = |usable: &dyn Fn(usize) -> bool| -> Option<usize> {
            match self.spec.balance {
                Balance::RoundRobin => {
                    let n = self.servers.len().max(1);
                    let start = self.next.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|k| (start + k) % n)
                        .find(|&i| !tried.has(i) && usable(i))
                }
                Balance::PathHash => untried()
                    .filter(|&i| usable(i))
                    .max_by_key(|&i| weight(path, &self.servers[i].spec)),
            }
        };
        let server = choose(&|i| self.servers[i].in_service(now))
            .or_else(|| choose(&|i| self.servers[i].name.has_addrs()));
        let Some(server) = server else {
            return Err(self.why_none(tried));
        };
        let addr = self.servers[server]
            .addr()
            .ok_or_else(|| self.why_none(tried))?;
        Ok(Pick { server, addr })
    }

    fn why_none(&self, tried: Tried) -> String {
        let mut reasons = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            let why = match (server.name.unresolved(), tried.has(i)) {
                (_, true) => "tried".to_string(),
                (Some(why), false) => format!("{} never resolved: {why}", server.spec.host),
                (None, false) => "no address".to_string(),
            };
            reasons.push(format!("{}: {why}", server.spec));
        }
        format!(
            "origin {}: no server to try ({})",
            self.spec.name,
            reasons.join("; ")
        )
    }

    /// Whether a server other than those `tried` has an address to try.
    pub fn has_untried(&self, tried: Tried) -> bool {
        (0..self.servers.len()).any(|i| !tried.has(i) && self.servers[i].name.has_addrs())
    }

    /// The peer to reach `pick` at: its address, TLS with the server's name for SNI and
    /// verification, the pool's timeouts and CA.
    pub fn peer(&self, pick: Pick) -> HttpPeer {
        let server = &self.servers[pick.server].spec;
        let sni = server.tls.then(|| server.host.clone());
        let mut peer = crate::upstream::peer(pick.addr, sni, &self.spec.timeouts);
        peer.options.verify_cert = self.spec.verify;
        peer.options.verify_hostname = self.spec.verify;
        peer.options.ca = self.ca.clone();
        peer.group_key = self.group;
        peer
    }

    /// A request to `server` failed (a refused connection, or an error after it).
    pub fn failed(&self, server: usize) {
        let Some(s) = self.servers.get(server) else {
            return;
        };
        let failures = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let eject = self.spec.eject;
        if failures >= eject.failures {
            let until = now_ms() + u64::try_from(eject.duration.as_millis()).unwrap_or(u64::MAX);
            if s.ejected_until.swap(until, Ordering::Relaxed) <= now_ms() {
                log::warn!(
                    "origin {}: {} ejected for {:?} after {failures} failed requests in a row",
                    self.spec.name,
                    s.spec,
                    eject.duration
                );
            }
            s.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to `server` was answered.
    pub fn answered(&self, server: usize) {
        if let Some(s) = self.servers.get(server)
            && s.failures.load(Ordering::Relaxed) != 0
        {
            s.failures.store(0, Ordering::Relaxed);
        }
    }

    fn record_probe(&self, server: usize, healthy: bool) {
        let Some(s) = self.servers.get(server) else {
            return;
        };
        let Some(health) = &self.spec.health else {
            return;
        };
        if healthy {
            s.probe_failures.store(0, Ordering::Relaxed);
            if !s.healthy.swap(true, Ordering::Relaxed) {
                log::info!("origin {}: {} is healthy again", self.spec.name, s.spec);
            }
        } else {
            let failures = s.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= health.unhealthy_after && s.healthy.swap(false, Ordering::Relaxed) {
                log::warn!(
                    "origin {}: {} failed {failures} health checks: out of service",
                    self.spec.name,
                    s.spec
                );
            }
        }
    }
}

/// A server's rendezvous weight for `path`.
fn weight(path: &str, server: &ServerSpec) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    server.hash(&mut hasher);
    hasher.finish()
}

/// Resolves server names again and runs active health checks, for the pools in force.
pub struct Keeper {
    pub origins: Arc<dyn Fn() -> Arc<Origins> + Send + Sync>,
    pub client: Arc<Client>,
}

const TICK: Duration = Duration::from_millis(250);

#[async_trait]
impl BackgroundService for Keeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Per pool and server: when it was last resolved and last checked.
        let mut resolved: HashMap<(String, ServerSpec), Instant> = HashMap::new();
        let mut checked: HashMap<(String, ServerSpec), Instant> = HashMap::new();
        loop {
            let origins = (self.origins)();
            let mut work = Vec::new();
            for pool in origins.pools() {
                for (i, server) in pool.servers.iter().enumerate() {
                    let key = (pool.spec.name.clone(), server.spec.clone());
                    let due = |map: &HashMap<_, Instant>, every: Duration| {
                        map.get(&key).is_none_or(|t| t.elapsed() >= every)
                    };
                    if server.spec.ip().is_none() && due(&resolved, pool.spec.resolve_every) {
                        resolved.insert(key.clone(), Instant::now());
                        work.push(resolve(pool.clone(), i).boxed());
                    }
                    if let Some(h) = &pool.spec.health
                        && due(&checked, h.interval)
                    {
                        checked.insert(key, Instant::now());
                        work.push(check(pool.clone(), i, self.client.clone()).boxed());
                    }
                }
            }
            let all = futures_util::future::join_all(work);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = all => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

async fn resolve(pool: Arc<Pool>, server: usize) {
    pool.servers[server].name.refresh().await;
}

async fn check(pool: Arc<Pool>, server: usize, client: Arc<Client>) {
    let Some(health) = pool.spec.health.clone() else {
        return;
    };
    let Some(addr) = pool.servers[server].addr() else {
        return; // no address: out of service already
    };
    let peer = pool.peer(Pick { server, addr });
    let host = pool
        .spec
        .host
        .clone()
        .unwrap_or_else(|| pool.servers[server].spec.host.clone());
    let healthy = async {
        let mut head = RequestHeader::build("GET", health.path.as_bytes(), None).ok()?;
        head.insert_header(http::header::HOST, host).ok()?;
        let answer = client.exchange(&peer, head, bytes::Bytes::new(), 64 << 10);
        let answer = tokio::time::timeout(health.timeout, answer)
            .await
            .ok()?
            .ok()?;
        Some(answer.head.status.is_success() || answer.head.status.is_redirection())
    };
    let healthy = healthy.await.unwrap_or(false);
    pool.record_probe(server, healthy);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(servers: &[&str], balance: Balance) -> Pool {
        let mut spec = OriginSpec::single(servers[0]).unwrap();
        spec.servers = servers
            .iter()
            .map(|s| ServerSpec::parse(s).unwrap())
            .collect();
        spec.balance = balance;
        Pool::new(&spec, None)
    }

    #[test]
    fn round_robin_goes_round_and_skips_what_was_tried_or_is_out() {
        let pool = pool(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            Balance::RoundRobin,
        );
        let picks: Vec<usize> = (0..6)
            .map(|_| pool.pick("/", Tried::default()).unwrap().server)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(1);
        assert_eq!(pool.pick("/", tried).unwrap().server, 2);
        tried.add(2);
        assert!(
            pool.pick("/", tried)
                .unwrap_err()
                .contains("no server to try")
        );
        // Ejected after three failures in a row: left out while another is in service.
        for _ in 0..3 {
            pool.failed(1);
        }
        let picks: Vec<usize> = (0..4)
            .map(|_| pool.pick("/", Tried::default()).unwrap().server)
            .collect();
        assert!(!picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn path_hash_keeps_a_path_on_one_server_and_moves_only_a_removed_servers_paths() {
        let pool = pool(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            Balance::PathHash,
        );
        let paths: Vec<String> = (0..300).map(|i| format!("/item/{i}")).collect();
        let first: Vec<usize> = paths
            .iter()
            .map(|p| pool.pick(p, Tried::default()).unwrap().server)
            .collect();
        let again: Vec<usize> = paths
            .iter()
            .map(|p| pool.pick(p, Tried::default()).unwrap().server)
            .collect();
        assert_eq!(first, again);
        for s in 0..3 {
            let share = first.iter().filter(|&&x| x == s).count();
            assert!(
                (50..150).contains(&share),
                "server {s} has {share} of 300 paths"
            );
        }
        for _ in 0..3 {
            pool.failed(2);
        }
        for (p, before) in paths.iter().zip(&first) {
            let now = pool.pick(p, Tried::default()).unwrap().server;
            if *before != 2 {
                assert_eq!(now, *before, "{p} moved though its server stayed");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn when_every_server_is_out_the_pool_still_tries_one() {
        let pool = pool(&["10.0.0.1:80", "10.0.0.2:80"], Balance::RoundRobin);
        for s in 0..2 {
            for _ in 0..3 {
                pool.failed(s);
            }
        }
        assert!(pool.pick("/", Tried::default()).is_ok());
    }
}
