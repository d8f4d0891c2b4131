//! What an edge without placement must do, for `scripts/bench.sh`'s mixed scenario: run every
//! task inline, within a budget of resident code. A request for a task whose code is not
//! resident waits while it is loaded (compiled, or loaded compiled from `--code-cache`), and
//! the least recently used tasks are evicted to make room; loads run one per core at a time.
//! Same engine, same execution path as Poplar's inline runs (`poplar::wasm`); only the
//! placement differs.
//!
//!   cargo run --release --example lru_edge -- --listen 127.0.0.1:9300 --tasks DIR \
//!     --budget 134217728 [--code-cache DIR] [--memory 134217728]
//!
//! `/t/<i>/...` runs `DIR/t<i>.wasm` (limits from `DIR/t<i>.limits`: `memory timeout_ms`, else
//! 64 MiB and 1 s).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a bench run

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use poplar::config::{Limits, TaskSpec};
use poplar::wasm::{Capacity, Runtime, Task};
use tokio::sync::OnceCell;

mod common;
use common::arg;

/// The resident tasks, most recently used last, and their code's bytes.
struct Resident {
    budget: u64,
    order: Vec<(String, u64)>,
    loading: HashMap<String, Arc<OnceCell<Arc<Task>>>>,
}

struct Edge {
    runtime: Runtime,
    dir: PathBuf,
    resident: Mutex<Resident>,
    /// Loads run one per core at a time (as many as the machine can compile), the rest wait.
    loads: tokio::sync::Semaphore,
}

impl Edge {
    fn limits(&self, name: &str) -> Limits {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.limits"))).unwrap_or_default();
        let mut fields = text
            .split_whitespace()
            .filter_map(|f| f.parse::<u64>().ok());
        let default = Limits::default();
        Limits {
            memory: fields.next().unwrap_or(default.memory),
            timeout: fields.next().map_or(default.timeout, Duration::from_millis),
            max_body: default.max_body,
        }
    }

    /// The task's code: resident, or loaded now (the request waits) and made resident.
    async fn task(self: &Arc<Self>, name: &str) -> Result<Arc<Task>, String> {
        let cell = {
            let mut resident = self.resident.lock().unwrap();
            if let Some(i) = resident.order.iter().position(|(n, _)| n == name) {
                let used = resident.order.remove(i);
                resident.order.push(used);
            }
            resident
                .loading
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let edge = self.clone();
        let task = cell
            .get_or_try_init(|| async move {
                let spec = TaskSpec {
                    name: name.to_string(),
                    wasm: Some(edge.dir.join(format!("{name}.wasm"))),
                    limits: edge.limits(name),
                };
                let _turn = edge.loads.acquire().await.map_err(|e| e.to_string())?;
                let loader = edge.clone();
                let task = tokio::task::spawn_blocking(move || loader.runtime.load(&spec))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                let task = Arc::new(task);
                edge.admit(name, task.code_bytes);
                Ok::<_, String>(task)
            })
            .await?;
        Ok(task.clone())
    }

    /// Makes `name` resident, evicting the least recently used until the budget holds.
    fn admit(&self, name: &str, bytes: u64) {
        let mut resident = self.resident.lock().unwrap();
        resident.order.retain(|(n, _)| n != name);
        resident.order.push((name.to_string(), bytes));
        while resident.order.iter().map(|(_, b)| b).sum::<u64>() > resident.budget
            && resident.order.len() > 1
        {
            let (evicted, _) = resident.order.remove(0);
            resident.loading.remove(&evicted);
        }
    }
}

async fn answer(
    edge: Arc<Edge>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let name = path
        .strip_prefix("/t/")
        .and_then(|rest| rest.split('/').next())
        .map(|i| format!("t{i}"));
    let failed = |status: u16, why: String| {
        let mut resp = http::Response::new(Full::new(Bytes::from(why)));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(resp)
    };
    let Some(name) = name else {
        return failed(404, "no route\n".into());
    };
    let task = match edge.task(&name).await {
        Ok(task) => task,
        Err(e) => return failed(500, format!("{e}\n")),
    };
    let (parts, _) = req.into_parts();
    let mut request = http::Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = format!("http://edge{}", parts.uri).parse().unwrap();
    *request.headers_mut() = parts.headers;
    let until = tokio::time::Instant::now() + task.limits.timeout;
    let Some(slot) = edge.runtime.slot(until).await else {
        return failed(503, "busy\n".into());
    };
    let mut response = match task.call(slot, request, "lru".into()).await {
        Ok(response) => response,
        Err(e) => return failed(500, format!("{e}\n")),
    };
    match response.collect_up_to(1 << 20, task.limits.timeout).await {
        Ok((chunks, true)) => {
            let body = Bytes::from(chunks.concat());
            let mut resp = http::Response::new(Full::new(body));
            *resp.status_mut() = response.head.status;
            Ok(resp)
        }
        Ok((_, false)) => failed(500, "body too large or too slow\n".into()),
        Err(e) => failed(500, format!("{e}\n")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let listen: SocketAddr = arg("--listen")
        .and_then(|a| a.parse().ok())
        .expect("--listen ADDR");
    let dir = PathBuf::from(arg("--tasks").expect("--tasks DIR"));
    let budget = arg("--budget")
        .and_then(|b| b.parse().ok())
        .expect("--budget BYTES");
    let memory = arg("--memory")
        .and_then(|m| m.parse().ok())
        .unwrap_or(128 << 20);
    let mut runtime = Runtime::new(Capacity {
        instances: 64,
        max_memory: memory,
        guest_memory: memory * 64,
    })
    .expect("engine");
    if let Some(cache) = arg("--code-cache") {
        runtime.keep_code_in(std::path::Path::new(&cache), 4 << 30)?;
    }
    let edge = Arc::new(Edge {
        runtime,
        dir,
        resident: Mutex::new(Resident {
            budget,
            order: Vec::new(),
            loading: HashMap::new(),
        }),
        loads: tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let edge = edge.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(edge.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
