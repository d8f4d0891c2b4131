//! Shared test harness: real servers on ephemeral loopback ports, real wasm components
//! built from `tasks/`, and a real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poplar::server::Running;

/// How long a test waits for what the machine's load can delay (an edge's compile, which runs
/// at nice 19 on the cycles traffic leaves): long, since a loaded CI machine is slow, and
/// bounded. Tests wait by time, never by a count of tries.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Where `scripts/build-tasks.sh` puts the components.
pub fn tasks_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks/dist");
    assert!(
        dir.join("hello.wasm").is_file(),
        "the example tasks are not built: run scripts/test.sh, or scripts/build-tasks.sh first"
    );
    dir
}

/// Listeners bound by [`free_addr`] that no server has taken yet.
static RESERVED: Mutex<Vec<TcpListener>> = Mutex::new(Vec::new());
/// Sockets bound by [`refusing_addr`], never listening.
static REFUSING: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());

/// A loopback address, bound now and held: the next server this harness starts with the
/// address in its config (`listen` or `admin.listen`) is handed the listener, so nothing
/// else can take the port in between.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    RESERVED.lock().unwrap().push(listener);
    addr
}

/// A loopback address that refuses every connection: bound (so no one else gets the port)
/// but never listening, for the whole test run.
pub fn refusing_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind an ephemeral port");
    let addr = socket.local_addr().expect("local address");
    REFUSING.lock().unwrap().push(socket);
    addr
}

/// A loopback port free a moment ago and let go, for a server in another process (which
/// cannot be handed a listener): another process may take it first, a risk kept to the
/// tests of `poplar serve` itself.
pub fn released_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// Starts `config` on the listeners [`free_addr`] reserved for its addresses.
pub fn start(config: &poplar::config::Config) -> Running {
    start_from(config, std::path::Path::new("test.yaml"))
}

/// Starts the config in `file` (which a reload reads again), as [`start`] does.
pub fn start_file(file: &std::path::Path) -> Running {
    let config = poplar::config::load(file).unwrap_or_else(|errors| panic!("{errors}"));
    start_from(&config, file)
}

fn start_from(config: &poplar::config::Config, source: &std::path::Path) -> Running {
    let mut wanted: Vec<Option<SocketAddr>> =
        config.listeners.iter().map(|l| Some(l.addr)).collect();
    wanted.push(config.admin.as_ref().map(|a| a.listen));
    let listeners = {
        let mut reserved = RESERVED.lock().unwrap();
        let (mine, rest) = reserved
            .drain(..)
            .partition(|l| wanted.contains(&l.local_addr().ok()));
        *reserved = rest;
        mine
    };
    Running::start_on(config, source, listeners).expect("server starts")
}

/// An edge started from a YAML config. `LISTEN` in the text is replaced with a free
/// address; `wasm:` paths resolve from `tasks/dist`.
pub struct Edge {
    pub running: Running,
    pub base: String,
}

pub fn start_edge(yaml: &str) -> Edge {
    let _ = env_logger::builder().is_test(true).try_init();
    let addr = free_addr();
    let text = yaml.replace("LISTEN", &addr.to_string());
    let config = poplar::config::parse(&text, &tasks_dir()).unwrap_or_else(|errors| {
        panic!("test config is invalid: {errors:#?}");
    });
    let running = start(&config);
    Edge {
        base: format!("http://{}", running.addr),
        running,
    }
}

/// A plain HTTP client with its own connections. Its TLS settings are made once and shared:
/// left to itself, reqwest loads the system's roots for every client built (milliseconds
/// each, enough to spread a burst of a hundred clients past a 300 ms fill).
pub fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

/// [`client`]'s builder, to add to.
pub fn client_builder() -> reqwest::ClientBuilder {
    static TLS: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    let tls = TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls.clone())
}

/// A task route config for `task` at `/<task>` with the given limits (YAML flow mapping).
pub fn one_task(task: &str, limits: &str) -> String {
    format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\ntasks:\n  {task}:\n    wasm: {task}.wasm\n    limits: {limits}\nroutes:\n  - match: {{ path_prefix: /{task} }}\n    task: {task}\n"
    )
}

/// A forwarding key shared by the edges and regions of one test, in a file.
pub struct Key {
    pub dir: tempfile::TempDir,
}

impl Key {
    pub fn new() -> Key {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("forwarding.key"),
            "test-forwarding-key-0123456789\n",
        )
        .expect("key file");
        Key { dir }
    }

    pub fn path(&self) -> String {
        self.dir.path().join("forwarding.key").display().to_string()
    }

    pub fn bytes(&self) -> Vec<u8> {
        b"test-forwarding-key-0123456789".to_vec()
    }
}

/// A region serving `tasks` (names of components in tasks/dist) with roomy limits.
pub fn start_region(key: &Key, tasks: &[&str]) -> Running {
    let mut yaml = format!(
        "role: region\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\ntasks:\n",
        key.path()
    );
    for t in tasks {
        let file = if *t == "wstd" { "wstd-http-server" } else { t };
        let limits = "{ memory: 64MiB, timeout: 5s, max_body: 4MiB }";
        yaml += &format!("  {t}:\n    wasm: {file}.wasm\n    limits: {limits}\n");
    }
    start_edge(&yaml).running
}

/// A TCP relay in front of `target` that holds each chunk from the client for a delay
/// that can be changed while it runs: a far-away region, on loopback.
pub struct Relay {
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(poplar::demo::relay(client, target, delay.clone()));
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = accept => {}
                }
            });
        });
        Relay {
            addr,
            delay_ms,
            stop: Some(stop),
        }
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The `x-poplar-placement` of a response, or "" if it has none.
pub fn placement(resp: &reqwest::Response) -> String {
    header(resp, "x-poplar-placement")
}

/// A response header's value, or "" if it has none.
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// `GET /stats` from an admin endpoint.
/// Stores `url`'s answer (an echo task's) as fresh for 1 s and usable stale on error for 60 s,
/// lets it go stale, then asks again with the run slept past its deadline
/// (`x-echo-sleep-ms`): the stale entry answers while stale-if-error holds, the failure (a
/// 504) once it has passed. Returns that failure.
pub async fn stale_if_error_covers_a_deadline(
    edge: &Edge,
    url: &str,
    sleep_ms: u64,
) -> reqwest::Response {
    let first = client()
        .get(url)
        .header("x-echo-set-cache-control", "max-age=1, stale-if-error=60")
        .header("x-echo-mark", "first")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    edge.running.clock.advance(Duration::from_millis(2100));

    let slow = || client().get(url).header("x-echo-sleep-ms", sleep_ms).send();
    let stale = slow().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(header(&stale, "cache-status").ends_with("detail=stale-if-error"));
    assert_eq!(header(&stale, "x-echo-mark"), "first");
    edge.running.clock.advance(Duration::from_secs(61));
    let failed = slow().await.unwrap();
    assert_eq!(failed.status(), 504);
    failed
}

pub async fn admin_stats(admin: SocketAddr) -> serde_json::Value {
    let resp = client()
        .get(format!("http://{admin}/stats"))
        .send()
        .await
        .expect("admin answers");
    serde_json::from_str(&resp.text().await.expect("stats body")).expect("stats are JSON")
}

/// The admin endpoint's `/metrics`, as text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let resp = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("admin answers");
    resp.text().await.expect("metrics body")
}

/// A certificate authority made for one test.
pub fn test_ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// An origin that reads request heads itself and, like many servers, takes a body only
/// when `Content-Length` is one plain number. It records every request line it receives,
/// counts the connections it accepted, and keeps connections alive.
pub struct NaiveOrigin {
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicU64>,
}

impl NaiveOrigin {
    pub fn start() -> NaiveOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (seen, accepted) = (lines.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                std::thread::spawn(move || serve_naively(conn, &seen));
            }
        });
        NaiveOrigin {
            addr,
            lines,
            connections,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve_naively(conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some((request_line, _body)) = read_plain_request(&mut reader) {
        seen.lock().unwrap().push(request_line.clone());
        let answer = format!("{request_line}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads one request as a naive server does: its request line (without the line end) and a
/// body of its `Content-Length` when that is one plain number, else none. `None` at the end
/// of the connection or on a read error.
pub fn read_plain_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((request_line.trim_end().to_string(), body))
}

/// Sends raw bytes on a new connection and reads until the edge closes it or goes quiet.
pub fn exchange(edge: &Edge, request: &[u8]) -> (String, bool) {
    let addr = edge.running.addr;
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Reads one whole response with a content-length from a kept-alive connection.
pub fn read_response(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
        head += &line;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

pub fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}
