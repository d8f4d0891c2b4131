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

use crate::config::{Config, Limits, Match, PathMatch, Role, RouteSpec, Target, TaskSpec};
use crate::server::Running;

/// An origin server on its own thread. It answers every request with `200`, a first line
/// `origin <METHOD> <path?query>`, then the request body as received; headers
/// `x-origin-host`, `x-origin-forwarded-for` and `x-origin-header-names` show what it was sent.
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
    hits.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut text = format!("origin {} {target}\n", parts.method).into_bytes();
    text.extend_from_slice(&body);
    let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
    let seen = |name: &str| {
        parts
            .headers
            .get(name)
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""))
    };
    let response = http::Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-origin-host", seen("host"))
        .header("x-origin-forwarded-for", seen("x-forwarded-for"))
        .header("x-origin-header-names", names.join(","))
        .body(Full::new(Bytes::from(text)));
    Ok(response.unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new()))))
}

/// The example tasks the demo serves, by name, with the file each is built to.
pub const DEMO_TASKS: &[(&str, &str)] = &[
    ("hello", "hello.wasm"),
    ("echo", "echo.wasm"),
    ("json-transform", "json-transform.wasm"),
];

/// The demo edge's config: `/hello`, `/echo` and `/json` run tasks; the rest goes to `origin`.
pub fn demo_config(listen: SocketAddr, origin: SocketAddr, tasks_dir: &Path) -> Config {
    let limits = Limits {
        memory: 64 << 20,
        timeout: std::time::Duration::from_secs(1),
        max_body: 64 << 10,
    };
    let tasks: BTreeMap<String, TaskSpec> = DEMO_TASKS
        .iter()
        .map(|&(name, file)| {
            let wasm = tasks_dir.join(file);
            (
                name.to_string(),
                TaskSpec {
                    name: name.to_string(),
                    wasm,
                    limits,
                },
            )
        })
        .collect();
    let route = |path: &str, target: Target| RouteSpec {
        matcher: Match {
            host: None,
            path: PathMatch::Prefix(path.to_string()),
            methods: None,
        },
        target,
    };
    Config {
        role: Role::Edge,
        listen,
        threads: 2,
        max_inline: 64,
        tasks,
        routes: vec![
            route("/hello", Target::Task("hello".into())),
            route("/echo", Target::Task("echo".into())),
            route("/json", Target::Task("json-transform".into())),
            route("/", Target::Origin(origin)),
        ],
    }
}

/// Runs the demo until Ctrl-C.
pub fn run(listen: SocketAddr, origin_addr: SocketAddr, tasks_dir: PathBuf) -> anyhow::Result<()> {
    for (_, file) in DEMO_TASKS {
        let path = tasks_dir.join(file);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build the tasks first (scripts/build-tasks.sh)",
            path.display()
        );
    }
    let origin = Origin::start(origin_addr)
        .with_context(|| format!("cannot start the demo origin on {origin_addr}"))?;
    let config = demo_config(listen, origin.addr, &tasks_dir);
    let edge = Running::start(&config, Path::new("<demo>"))
        .with_context(|| format!("cannot start the edge on {listen}"))?;
    let base = format!("http://{}", edge.addr);
    println!("Poplar demo is up.");
    println!("  edge    {base}  (tasks: /hello /echo /json; everything else goes to the origin)");
    println!("  origin  http://{}", origin.addr);
    println!();
    println!("Try:");
    println!("  curl -i '{base}/hello?name=Ada'");
    println!(
        "  curl -i -X POST --data 'ping' -H 'content-type: text/plain' -H 'x-echo-demo: yes' {base}/echo"
    );
    println!(
        "  curl -i -X POST --data '{{\"name\": \"poplar\", \"tags\": [\"edge\", \"wasm\"]}}' {base}/json"
    );
    println!("  curl -i {base}/some/page        # proxied to the origin");
    println!();
    println!("Ctrl-C stops it.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    println!("stopping");
    edge.stop();
    drop(origin);
    Ok(())
}
