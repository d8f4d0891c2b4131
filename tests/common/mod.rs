//! Shared test harness: real servers on ephemeral loopback ports, real wasm components
//! built from `tasks/`, and a real HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use poplar::server::Running;

/// Where `scripts/build-tasks.sh` puts the components.
pub fn tasks_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks/dist");
    assert!(
        dir.join("hello.wasm").is_file(),
        "the example tasks are not built: run scripts/test.sh, or scripts/build-tasks.sh first"
    );
    dir
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// An edge started from a YAML config. `LISTEN` in the text is replaced with a free
/// address; `wasm:` paths resolve from `tasks/dist`.
pub struct Edge {
    pub running: Running,
    pub base: String,
}

pub fn start_edge(yaml: &str) -> Edge {
    let addr = free_addr();
    let text = yaml.replace("LISTEN", &addr.to_string());
    let config = poplar::config::parse(&text, &tasks_dir()).unwrap_or_else(|errors| {
        panic!("test config is invalid: {errors:#?}");
    });
    let running = Running::start(&config, std::path::Path::new("test.yaml")).expect("edge starts");
    Edge {
        base: format!("http://{}", running.addr),
        running,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A task route config for `task` at `/<task>` with the given limits (YAML flow mapping).
pub fn one_task(task: &str, limits: &str) -> String {
    format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\ntasks:\n  {task}:\n    wasm: {task}.wasm\n    limits: {limits}\nroutes:\n  - match: {{ path_prefix: /{task} }}\n    task: {task}\n"
    )
}
