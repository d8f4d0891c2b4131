//! `poplar demo`: an origin and an edge with the example tasks, on loopback.
//!
//! The origin here is a small HTTP server that says what it received, so a proxied
//! request can be checked end to end; the tests use it too.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use std::time::Duration;

use crate::config::{
    AdminSpec, CacheSpec, Config, ForwardingKey, HealthSpec, Limits, ListenerSpec, Match, Mode,
    OriginSpec, PathMatch, PlacementSpec, RegionSpec, RegistrySpec, Role, RouteCache, RouteSpec,
    Secret, Target, TaskSpec, TlsSpec,
};
use crate::server::Running;

/// An origin server on its own thread. It answers every request with `200`, a first line
/// `origin <METHOD> <path?query>`, then the request body as received; headers
/// `x-origin-host`, `x-origin-forwarded-for`, `x-origin-forwarded-proto` and
/// `x-origin-header-names` show what it was sent, and `x-origin-count` how many requests it
/// has answered. Query parameters shape the
/// answer: `cc=` its `Cache-Control`, `vary=` its `Vary`, `delay_ms=` a wait before it,
/// `size=` a body padded to that many bytes, `location=` its `Location`, `etag=T` an
/// `ETag: "T"` (and `304` to a request
/// whose `If-None-Match` names it); a request header `x-origin-status: N` makes it answer `N`.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    /// Starts the origin on `addr` (port 0 picks a free one).
    pub fn start(addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let counter = hits.clone();
        let thread = std::thread::Builder::new()
            .name("poplar origin".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(serve_origin(listener, counter, stopped)),
                    Err(e) => log::error!("origin: cannot start a runtime: {e}"),
                }
            })?;
        Ok(Origin {
            addr,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_origin(
    listener: std::net::TcpListener,
    hits: Arc<AtomicU64>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return log::error!("origin: {e}"),
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { log::warn!("origin: accept failed: {e}"); continue; }
            },
        };
        let hits = hits.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, hits.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("origin: connection ended: {e}");
            }
        });
    }
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    hits: Arc<AtomicU64>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let count = hits.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let param = |name: &str| {
        let query = parts.uri.query().unwrap_or_default();
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    if let Some(ms) = param("delay_ms").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut text = format!("origin {} {target}\n", parts.method).into_bytes();
    text.extend_from_slice(&body);
    if let Some(size) = param("size").and_then(|n| n.parse::<usize>().ok()) {
        text.resize(size.max(text.len()), b'.');
    }
    let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
    let seen = |name: &str| {
        parts
            .headers
            .get(name)
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""))
    };
    let mut response = http::Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-origin-count", count)
        .header("x-origin-host", seen("host"))
        .header("x-origin-forwarded-for", seen("x-forwarded-for"))
        .header("x-origin-forwarded-proto", seen("x-forwarded-proto"))
        .header("x-origin-header-names", names.join(","));
    if let Some(cc) = param("cc") {
        response = response.header("cache-control", cc);
    }
    if let Some(vary) = param("vary") {
        response = response.header("vary", vary);
    }
    if let Some(location) = param("location") {
        response = response.header("location", location);
    }
    // `?etag=T`: the answer carries `ETag: "T"`, and a request naming it gets `304`.
    if let Some(etag) = param("etag") {
        let etag = format!("\"{etag}\"");
        let named = seen("if-none-match")
            .to_str()
            .is_ok_and(|tags| tags.split(',').any(|t| t.trim() == etag));
        response = response.header("etag", &etag);
        if named {
            let response = response.status(304).body(Full::new(Bytes::new()));
            return Ok(response.unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new()))));
        }
    }
    // `x-origin-status: N` (a header, so that the URL, and the cache key, stay the same).
    if let Some(status) = parts
        .headers
        .get("x-origin-status")
        .and_then(|s| s.to_str().ok()?.parse::<u16>().ok())
    {
        response = response.status(status);
    }
    let response = response.body(Full::new(Bytes::from(text)));
    Ok(response.unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new()))))
}

/// Relays one connection to `target`, holding each chunk sent towards it for `delay_ms`
/// (read for every chunk, so it can change while the connection lives); replies pass straight
/// back. It puts a region "far away" on loopback, for tests and benchmarks.
pub async fn relay(client: tokio::net::TcpStream, target: SocketAddr, delay_ms: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = match tokio::net::TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        Err(e) => {
            log::warn!("relay: cannot reach {target}: {e}");
            return;
        }
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let ms = delay_ms.load(Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            if upstream_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = upstream_write.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
    };
    tokio::join!(up, down);
}

/// The example tasks the demo serves, by name, with the file each is built to.
pub const DEMO_TASKS: &[(&str, &str)] = &[
    ("hello", "hello.wasm"),
    ("echo", "echo.wasm"),
    ("json-transform", "json-transform.wasm"),
];

/// Where the demo's servers listen.
#[derive(Debug, Clone)]
pub struct DemoAddrs {
    pub edge: SocketAddr,
    /// The edge's HTTPS listener (HTTP/2 and HTTP/1.1), with a certificate made at start.
    pub https: SocketAddr,
    pub origin: SocketAddr,
    pub regions: [(&'static str, SocketAddr); 2],
    pub admin: SocketAddr,
    /// The first region's admin listener: its deploy API (`poplar deploy`).
    pub region_admin: SocketAddr,
    /// Where the first region keeps deployed tasks (kept across runs).
    pub registry: PathBuf,
}

/// The demo's deploy token (loopback only).
pub const DEMO_DEPLOY_TOKEN: &str = "poplar-demo-deploy-token";
/// The task the demo's edge takes from its region once deployed there.
pub const DEMO_DEPLOYED_TASK: &str = "greet";

fn demo_tasks(tasks_dir: &Path, limits: Limits) -> BTreeMap<String, TaskSpec> {
    DEMO_TASKS
        .iter()
        .map(|&(name, file)| {
            let wasm = tasks_dir.join(file);
            (
                name.to_string(),
                TaskSpec {
                    name: name.to_string(),
                    wasm: Some(wasm),
                    limits,
                },
            )
        })
        .collect()
}

/// A region's config: every demo task, with a region's larger limits; with `registry`
/// (its admin listener and folder), a registry to deploy tasks to.
pub fn region_config(
    listen: SocketAddr,
    tasks_dir: &Path,
    key: ForwardingKey,
    registry: Option<(SocketAddr, PathBuf)>,
) -> Config {
    let limits = Limits {
        memory: 256 << 20,
        timeout: Duration::from_secs(10),
        max_body: 16 << 20,
    };
    Config {
        role: Role::Region,
        listeners: vec![ListenerSpec::plain(listen)],
        threads: 1,
        admin: registry.as_ref().map(|(admin, _)| AdminSpec {
            listen: *admin,
            token_file: None,
            token: None,
            guard_reads: false,
        }),
        key_source: None,
        trusted_proxies: Vec::new(),
        request_id_header: None,
        guest_log: log::Level::Info,
        access_log: None,
        clients: crate::config::ClientLimits::default(),
        grace_period: Duration::from_secs(1),
        upgrade_socket: crate::config::DEFAULT_UPGRADE_SOCKET.into(),
        forwarding_key: Some(key),
        placement: PlacementSpec::default(),
        regions: Vec::new(),
        health: HealthSpec::default(),
        cache: CacheSpec::default(),
        tasks: demo_tasks(tasks_dir, limits),
        code_cache: None,
        registry: registry.map(|(_, dir)| RegistrySpec {
            dir,
            token_file: None,
            token: Some(Secret(DEMO_DEPLOY_TOKEN.as_bytes().to_vec())),
            max_memory: 256 << 20,
            max_code: 64 << 20,
        }),
        origins: BTreeMap::new(),
        routes: Vec::new(),
    }
}

/// The demo edge: `/hello` and `/echo` placed automatically, `/json` always in a region,
/// the rest proxied to the origin.
pub fn edge_config(addrs: &DemoAddrs, tasks_dir: &Path, key: ForwardingKey) -> Config {
    let limits = Limits {
        memory: 64 << 20,
        timeout: Duration::from_millis(100),
        max_body: 64 << 10,
    };
    Config {
        role: Role::Edge,
        listeners: vec![ListenerSpec::plain(addrs.edge), https_listener(addrs.https)],
        threads: 2,
        admin: Some(AdminSpec {
            listen: addrs.admin,
            token_file: None,
            token: None,
            guard_reads: false,
        }),
        key_source: None,
        trusted_proxies: Vec::new(),
        request_id_header: None,
        guest_log: log::Level::Info,
        access_log: None,
        clients: crate::config::ClientLimits::default(),
        grace_period: Duration::from_secs(1),
        upgrade_socket: crate::config::DEFAULT_UPGRADE_SOCKET.into(),
        forwarding_key: Some(key),
        placement: PlacementSpec {
            hot_threshold: 5.0,
            cool_threshold: 2.0,
            ..PlacementSpec::default()
        },
        regions: addrs
            .regions
            .iter()
            .map(|&(name, address)| RegionSpec {
                name: name.to_string(),
                address: address.into(),
            })
            .collect(),
        health: HealthSpec::default(),
        cache: CacheSpec::default(),
        tasks: {
            let mut tasks = demo_tasks(tasks_dir, limits);
            let deployed = TaskSpec {
                name: DEMO_DEPLOYED_TASK.to_string(),
                wasm: None,
                limits,
            };
            tasks.insert(deployed.name.clone(), deployed);
            tasks
        },
        code_cache: None,
        registry: None,
        origins: OriginSpec::single(&addrs.origin.to_string())
            .map(|o| BTreeMap::from([(o.name.clone(), o)]))
            .unwrap_or_default(),
        routes: demo_routes(addrs),
    }
}

/// HTTPS with a self-signed certificate for `localhost`, made for this run.
fn https_listener(addr: SocketAddr) -> ListenerSpec {
    let certificates = crate::tls::Certificates::self_signed(&["localhost"])
        .map_err(|e| log::error!("demo: cannot make a certificate: {e:#}"))
        .ok();
    ListenerSpec {
        tls: Some(TlsSpec {
            certificates: Vec::new(),
            http2: true,
            loaded: certificates.map(Arc::new),
        }),
        ..ListenerSpec::plain(addr)
    }
}

/// Cached hello, hello homed in the first region, echo, a region-only JSON transform, and
/// the origin for everything else.
fn demo_routes(addrs: &DemoAddrs) -> Vec<RouteSpec> {
    let route = |path: &str, target: Target, placement: Mode, region: Option<&str>| RouteSpec {
        matcher: Match {
            host: None,
            path: PathMatch::Prefix(path.to_string()),
            methods: None,
        },
        target,
        placement,
        region: region.map(str::to_string),
        cache: None,
    };
    let cached = |route: RouteSpec| RouteSpec {
        cache: Some(RouteCache {
            ttl: Some(Duration::from_secs(30)),
            pure: false,
        }),
        ..route
    };
    let task = |name: &str| Target::Task(name.to_string());
    vec![
        cached(route("/cached", task("hello"), Mode::Auto, None)),
        route(
            "/hello",
            task("hello"),
            Mode::Auto,
            Some(addrs.regions[0].0),
        ),
        route("/echo", task("echo"), Mode::Auto, None),
        route(
            "/greet",
            task(DEMO_DEPLOYED_TASK),
            Mode::Auto,
            Some(addrs.regions[0].0),
        ),
        route("/json", task("json-transform"), Mode::Region, None),
        route(
            "/",
            Target::Origin(addrs.origin.to_string()),
            Mode::Edge,
            None,
        ),
    ]
}

/// A key for this run only: the demo's servers share it in memory.
fn demo_key() -> ForwardingKey {
    use sha2::Digest;
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    ForwardingKey(sha2::Sha256::digest(seed.as_bytes()).to_vec())
}

/// Runs the demo until Ctrl-C.
pub fn run(addrs: DemoAddrs, tasks_dir: PathBuf) -> anyhow::Result<()> {
    for (_, file) in DEMO_TASKS {
        let path = tasks_dir.join(file);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build the tasks first (scripts/build-tasks.sh)",
            path.display()
        );
    }
    let key = demo_key();
    let origin = Origin::start(addrs.origin)
        .with_context(|| format!("cannot start the demo origin on {}", addrs.origin))?;
    let addrs = DemoAddrs {
        origin: origin.addr,
        ..addrs
    };
    let mut regions = Vec::new();
    let registry_dir = addrs.registry.clone();
    for (i, (name, addr)) in addrs.regions.into_iter().enumerate() {
        let registry = (i == 0).then(|| (addrs.region_admin, registry_dir.clone()));
        let config = region_config(addr, &tasks_dir, key.clone(), registry);
        let region = Running::start(&config, Path::new("<demo region>"))
            .with_context(|| format!("cannot start region {name} on {addr}"))?;
        regions.push(region);
    }
    let config = edge_config(&addrs, &tasks_dir, key);
    let edge = Running::start(&config, Path::new("<demo edge>"))
        .with_context(|| format!("cannot start the edge on {}", addrs.edge))?;
    print_guide(&addrs);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    println!("stopping");
    edge.stop();
    drop(regions);
    drop(origin);
    Ok(())
}

fn print_guide(addrs: &DemoAddrs) {
    let base = format!("http://{}", addrs.edge);
    let [(east, east_addr), (west, west_addr)] = addrs.regions;
    println!("Poplar demo is up.");
    let https = format!("https://localhost:{}", addrs.https.port());
    println!("  edge     {base}, and {https} (HTTP/2; a certificate made for this run)");
    println!(
        "           /hello (auto, home region {east}), /echo (auto), /json (always in a region),"
    );
    println!("           /cached (hello, results cached 30 s), / (origin)");
    println!("  regions  {east} http://{east_addr}, {west} http://{west_addr}");
    println!("  origin   http://{}", addrs.origin);
    println!("  admin    http://{}/stats", addrs.admin);
    println!(
        "  deploy   http://{} ({east}'s registry; token {DEMO_DEPLOY_TOKEN})",
        addrs.region_admin
    );
    println!();
    println!(
        "Try (watch x-poplar-placement: cold tasks go to a region, hot ones run at the edge):"
    );
    println!("  curl -i '{base}/hello?name=Ada'");
    println!(
        "  for i in $(seq 12); do curl -s -D - -o /dev/null '{base}/hello' | grep -i x-poplar-placement; done"
    );
    println!("  curl -i -X POST --data 'ping' -H 'x-echo-demo: yes' {base}/echo");
    println!(
        "  curl -i -X POST --data '{{\"name\": \"poplar\", \"tags\": [\"edge\", \"wasm\"]}}' {base}/json"
    );
    println!("  curl -i {base}/cached/page      # twice: the second is a cache hit (Cache-Status)");
    println!("  curl -i {base}/some/page        # proxied to the origin");
    println!(
        "  curl -i --http2 -k {https}/echo  # HTTPS and HTTP/2 (-k: the demo's own certificate)"
    );
    println!("  curl -s http://{}/stats", addrs.admin);
    println!();
    let region = format!("--region http://{}", addrs.region_admin);
    let task = DEMO_DEPLOYED_TASK;
    println!("Deploy a task the edge has no code for, and watch it come to the edge when hot:");
    println!("  export POPLAR_DEPLOY_TOKEN={DEMO_DEPLOY_TOKEN}");
    println!(
        "  poplar deploy {task} tasks/dist/hello.wasm {region} --memory 32MiB --timeout 100ms"
    );
    println!(
        "  for i in $(seq 20); do curl -s -D - -o /dev/null {base}/{task} | grep -i -e placement -e digest; sleep 0.1; done"
    );
    println!("  poplar deploy {task} tasks/dist/echo.wasm {region} --memory 32MiB --timeout 100ms");
    println!("  poplar tasks {task} {region}       # its versions; then, with the first digest:");
    println!("  poplar rollback {task} <digest> {region}");
    println!();
    println!("Ctrl-C stops it.");
}
