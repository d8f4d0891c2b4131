//! The `poplar` binary: `check` on every shipped config and on broken ones, and `serve`
//! as a real process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{released_addr, tasks_dir};

fn poplar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poplar"))
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("poplar.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn every_shipped_config_checks() {
    tasks_dir();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(conf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = poplar()
                .args(["check", "-c"])
                .arg(&path)
                .env("POPLAR_FORWARDING_KEY", "an-example-key-for-the-checks")
                .env("POPLAR_DEPLOY_TOKEN", "an-example-token-for-the-checks")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {stderr}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3);
}

#[test]
fn check_reports_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-component.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let file = write_config(
        dir.path(),
        r#"role: edge
listen: 127.0.0.1:99999
threads: many
tasks:
  good:
    wasm: not-a-component.wasm
  bad name:
    wasm: nowhere.wasm
    limits: { memory: lots, timeout: 50ms, cpu: 1 }
routes:
  - match: { path_prefix: /a }
    task: good
  - match: { path: b }
    task: missing
  - match: { host: "a.test:80", path_prefix: / }
    origin: localhost
"#,
    );
    let out = poplar().args(["check", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "DIR");
    let expected = r#"DIR/poplar.yaml: 10 problems
  listen: invalid socket address syntax (line 2, column 9)
  threads: invalid type: string "many", expected usize (line 3, column 10)
  tasks.bad name: names use letters, digits, '.', '_' and '-', and start with a letter or digit (line 8, column 5)
  tasks.bad name.limits.memory: invalid size "lots"; use a size such as 64MiB or 512KiB (line 9, column 23)
  tasks.bad name.limits.cpu: unknown field `cpu`, expected one of `memory`, `timeout`, `max_body` (line 9, column 49)
  routes[1].match.path: must start with "/" (line 13, column 20)
  routes[1].task: unknown task "missing" (line 14, column 11)
  routes[2].match.host: must be a host name such as example.com or *.example.com, without port (line 15, column 20)
  routes[2].origin: "localhost" needs a port (host:port); or name a pool in origins (line 16, column 13)
  tasks.bad name.wasm: cannot read "DIR/nowhere.wasm": No such file or directory (os error 2)
"#;
    assert_eq!(stderr, expected);
}

#[test]
fn a_file_that_is_not_a_component_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let file = write_config(
        dir.path(),
        "role: edge\nlisten: 127.0.0.1:1\ntasks:\n  x:\n    wasm: x.wasm\nroutes:\n  - match: { path: /x }\n    task: x\n",
    );
    let out = poplar().args(["check", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tasks.x.wasm: is a core wasm module, not a component"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("x.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let out = poplar().args(["check", "-c"]).arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tasks.x.wasm: not a valid component"),
        "{stderr}"
    );

    // `serve` refuses it the same way, without starting.
    let out = poplar().args(["serve", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// An edge config serving wstd's example server at `prefix`, with `head` (top-level keys,
/// each line ending in a newline) and the task's `limits` (a flow mapping, or empty).
fn wstd_edge(dir: &Path, head: &str, limits: &str, prefix: &str) -> (SocketAddr, PathBuf) {
    let addr = released_addr();
    let wasm = tasks_dir().join("wstd-http-server.wasm");
    let limits = match limits {
        "" => String::new(),
        l => format!("    limits: {l}\n"),
    };
    let text = format!(
        "role: edge\nlisten: \"{addr}\"\n{head}tasks:\n  wstd:\n    wasm: {}\n{limits}routes:\n  - match: {{ path_prefix: {prefix} }}\n    task: wstd\n",
        wasm.display()
    );
    (addr, write_config(dir, &text))
}

#[test]
fn serve_runs_tasks_and_logs_guest_output_with_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let head = "threads: 2\nrequest_id_header: x-request-id\nguest_log: warn\n";
    let (addr, file) = wstd_edge(dir.path(), head, "", "/");
    let log = dir.path().join("stderr.log");
    // Guest lines at warn (guest_log) pass a warn filter that info lines do not.
    let mut child = serve_logging_to(&file, &log, "warn");

    let started = Instant::now();
    let body = loop {
        match reqwest::blocking_get(format!("http://{addr}/echo-headers")) {
            Ok(body) => break body,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("server never answered: {e}"),
        }
    };
    assert!(body.is_empty());
    // An id given by a proxy in front tags the guest's lines instead.
    let given = reqwest::blocking_get_with(
        format!("http://{addr}/echo-headers"),
        "x-request-id: lb-7f3a.2\r\n",
    )
    .unwrap();
    assert!(given.is_empty());
    // SIGINT: Pingora's fast shutdown.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = wait_for_exit(&mut child);
    assert!(status.success(), "{status}");

    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("stdout: serving /echo-headers"))
        .unwrap_or_else(|| panic!("{logged}"));
    // `[<request id>] stdout: ...`
    assert!(
        line.contains("WARN")
            && line.contains("poplar::guest")
            && line.contains("] stdout: serving"),
        "{line}"
    );
    assert!(
        logged.contains("[lb-7f3a.2] stdout: serving /echo-headers"),
        "{logged}"
    );
}

/// A tiny blocking GET, so this test needs no async runtime.
mod reqwest {
    use std::io::{Read, Write};

    pub fn blocking_get(url: String) -> std::io::Result<String> {
        blocking_get_with(url, "")
    }

    /// With more header lines, each ending in CRLF.
    pub fn blocking_get_with(url: String, headers: &str) -> std::io::Result<String> {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = std::net::TcpStream::connect(host)?;
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nhost: {host}\r\n{headers}connection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(response));
        }
        let (_, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        Ok(body.to_string())
    }
}

#[test]
fn schema_prints_a_json_schema_of_the_config_file() {
    let out = poplar().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(schema["title"], "Poplar config");
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys refused"
    );
    let required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required keys")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(required, ["role", "listen"]);
    let modes: Vec<&str> = schema["$defs"]["Mode"]["oneOf"]
        .as_array()
        .expect("placement modes")
        .iter()
        .filter_map(|v| v["const"].as_str())
        .collect();
    assert_eq!(modes, ["auto", "edge", "region"]);
}

#[test]
fn serve_exits_at_once_when_it_cannot_listen() {
    let dir = tempfile::tempdir().unwrap();
    // Held for the whole test: the address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let file = write_config(
        dir.path(),
        &format!(
            "role: edge\nlisten: \"{addr}\"\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: 127.0.0.1:9\n"
        ),
    );
    let started = Instant::now();
    let out = poplar().args(["serve", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "it exits, non-zero");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "without retrying"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (listen)")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_admin_endpoint_cannot_share_the_proxys_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "role: edge\nlisten: 127.0.0.1:8080\nadmin: { listen: 127.0.0.1:8080 }\nroutes:\n  - match: { path_prefix: / }\n    origin: 127.0.0.1:9\n",
    );
    let out = poplar().args(["check", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.listen: 127.0.0.1:8080 is also in listen"),
        "{stderr}"
    );
}

#[test]
fn sigterm_closes_the_listener_and_lets_the_request_in_flight_finish() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin, mut child, log) = stoppable_edge(dir.path(), "{ timeout: 10s }");
    let metrics = || reqwest::blocking_get(format!("http://{admin}/metrics"));

    // A request in flight that cannot finish before this test sends the rest of its body.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    write!(
        slow,
        "POST /echo HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello"
    )
    .unwrap();
    wait_for("the request in flight", || {
        metrics().is_ok_and(|m| m.contains("poplar_requests_in_flight 1"))
    });

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_for("new connections refused", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    assert!(child.try_wait().unwrap().is_none(), "still up, draining");

    slow.write_all(b"world").unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("helloworld"), "the whole body: {answer}");

    let status = wait_for_exit(&mut child);
    assert!(status.success(), "{status}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("no request in flight"),
        "it ended once drained, not at the end of the grace period: {logged}"
    );
}

#[test]
fn a_connection_accepted_before_sigterm_has_its_first_request_answered() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin, mut child, _log) = stoppable_edge(dir.path(), "");
    let metrics = || reqwest::blocking_get(format!("http://{admin}/metrics"));

    // Accepted, its request not sent yet: what a client sees when the stop lands between its
    // connect and its write.
    let mut early = std::net::TcpStream::connect(addr).unwrap();
    wait_for("the connection accepted", || {
        metrics().is_ok_and(|m| m.contains("poplar_client_connections 1"))
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_for("new connections refused", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    std::thread::sleep(Duration::from_millis(200)); // past the watchdog's first look
    assert!(child.try_wait().unwrap().is_none(), "still up for it");

    write!(
        early,
        "POST /echo HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 5\r\n\r\nhello"
    )
    .unwrap();
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "the whole body: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "not kept alive past the stop: {answer}"
    );
    let status = wait_for_exit(&mut child);
    assert!(status.success(), "{status}");
}

/// `poplar serve` runs a single-threaded runtime on each of its threads. A client connection
/// is accepted on one and may be served on another; an upstream connection is made on the
/// thread of the request that needed it and goes back to a pool all threads share. A socket
/// left registered with another thread's I/O driver has each of its wake-ups pass through
/// that thread: an eventfd `write` per wake-up (before the fix, 40,752 of them for 49,572
/// origin requests, and 137,288 for 214,000 requests with cache hits, on this machine). So
/// the writes the process makes while it proxies tell whether each connection is woken by
/// the thread serving it; upstream connections must still be reused.
#[cfg(target_os = "linux")]
#[test]
fn on_two_threads_each_connection_is_woken_by_the_thread_that_serves_it() {
    use common::{NaiveOrigin, read_response, status_of};
    use std::io::{BufReader, Write};
    use std::net::TcpStream;

    const CLIENTS: u64 = 16;
    const REQUESTS: u64 = 60;
    let origin = NaiveOrigin::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = released_addr();
    let text = format!(
        "role: edge\nlisten: \"{addr}\"\nthreads: 2\nroutes:\n  - match: {{ path_prefix: /o }}\n    origin: \"http://{}\"\n",
        origin.addr
    );
    let file = write_config(dir.path(), &text);
    let mut child = serve_logging_to(&file, &dir.path().join("stderr.log"), "warn");
    wait_for("the proxy", || TcpStream::connect(addr).is_ok());

    let before = write_calls(child.id());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                for request in 0..REQUESTS {
                    let head =
                        format!("GET /o/{client}/{request} HTTP/1.1\r\nHost: a.test\r\n\r\n");
                    conn.write_all(head.as_bytes()).unwrap();
                    let response = read_response(&mut reader);
                    assert_eq!(status_of(&response), "200", "{response}");
                    assert!(response.ends_with(&format!("/o/{client}/{request} HTTP/1.1\n")));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let writes = write_calls(child.id()) - before;
    let _ = child.kill();
    let _ = child.wait();

    let requests = CLIENTS * REQUESTS;
    assert!(
        writes * 10 < requests,
        "{writes} write calls for {requests} requests: connections woken across threads"
    );
    assert!(
        origin.connections() <= CLIENTS,
        "{} upstream connections for {CLIENTS} clients: pooled ones not reused",
        origin.connections()
    );
}

/// `write` calls (and the like: not `send`) made so far by every thread of process `pid`.
#[cfg(target_os = "linux")]
fn write_calls(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|task| {
            let io = std::fs::read_to_string(task.unwrap().path().join("io")).unwrap_or_default();
            io.lines()
                .find_map(|line| line.strip_prefix("syscw: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// `poplar serve` of the wstd task on one thread with a 20 s grace period, once its admin
/// endpoint answers: the proxy's address, the admin endpoint's, the process, its log.
fn stoppable_edge(
    dir: &Path,
    limits: &str,
) -> (SocketAddr, SocketAddr, std::process::Child, PathBuf) {
    let admin = released_addr();
    let head = format!("admin: {{ listen: \"{admin}\" }}\nthreads: 1\ngrace_period: 20s\n");
    let (addr, file) = wstd_edge(dir, &head, limits, "/");
    let log = dir.join("stderr.log");
    let child = serve_logging_to(&file, &log, "info");
    let metrics = || reqwest::blocking_get(format!("http://{admin}/metrics"));
    wait_for("the admin endpoint", || metrics().is_ok());
    (addr, admin, child, log)
}

/// `poplar serve -c file`, its stderr (at `RUST_LOG=level`) in `log`.
fn serve_logging_to(file: &Path, log: &Path, level: &str) -> std::process::Child {
    poplar()
        .args(["serve", "-c"])
        .arg(file)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Polls `ready` until it holds, for at most 30 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: not after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, for at most 30 s: a shutdown that hangs fails the test, not
/// the whole run.
fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let stopping = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if stopping.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve did not exit within 30 s of its signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_access_log_has_a_line_per_request_and_sigusr1_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let head = "threads: 1\naccess_log: { to: access.log, format: json }\n";
    let (addr, file) = wstd_edge(dir.path(), head, "", "/echo-headers");
    let mut child = poplar()
        .args(["serve", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| reqwest::blocking_get(format!("http://{addr}{path}"));
    wait_for("the server", || get("/echo-headers").is_ok());
    let _ = get("/nowhere?x=1");
    let log = dir.path().join("access.log");
    let lines = |path: &Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for("two lines", || lines(&log).len() >= 2);
    let logged = lines(&log);
    let last = &logged[logged.len() - 1];
    assert_eq!(last["path"], "/nowhere?x=1", "{last}");
    assert_eq!(last["status"], 404, "{last}");
    assert_eq!(last["error"], "no-route", "{last}");
    let ran = &logged[logged.len() - 2];
    assert_eq!(ran["status"], 200, "{ran}");
    assert_eq!(
        (ran["task"].as_str(), ran["placement"].as_str()),
        (Some("wstd"), Some("edge"))
    );
    assert_eq!(ran["route"], 0, "{ran}");
    assert!(ran["id"].as_str().is_some_and(|id| !id.is_empty()), "{ran}");
    assert!(ran["duration"].as_f64().is_some_and(|d| d > 0.0), "{ran}");

    // A rotation moves the file; SIGUSR1 makes the server write a new one.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let _ = Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status();
    wait_for("a new file after SIGUSR1", || {
        let _ = get("/nowhere?after=rotation");
        !lines(&log).is_empty()
    });
    assert_eq!(lines(&log)[0]["path"], "/nowhere?after=rotation");
    // Lines written before the reopen took effect are in the moved file, after what it had.
    let before = lines(&rotated);
    assert_eq!(
        before[..logged.len()],
        logged[..],
        "the moved file keeps what it had"
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(wait_for_exit(&mut child).success());
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_leaves_the_old_serving() {
    let dir = tempfile::tempdir().unwrap();
    let addr = released_addr();
    let dist = tasks_dir();
    let with = |task: &str| {
        format!(
            "role: edge\nlisten: \"{addr}\"\nthreads: 1\ntasks:\n  hello: {{ wasm: {} }}\n  echo: {{ wasm: {} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    task: {task}\n",
            dist.join("hello.wasm").display(),
            dist.join("echo.wasm").display()
        )
    };
    let file = write_config(dir.path(), &with("hello"));
    let log = dir.path().join("stderr.log");
    let mut child = serve_logging_to(&file, &log, "info");
    let body = || reqwest::blocking_get(format!("http://{addr}/x?name=y"));
    wait_for("hello", || body().is_ok_and(|b| b.starts_with("Hello, y!")));
    let hup = |child: &std::process::Child| {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };

    write_config(dir.path(), &with("echo"));
    hup(&child);
    // echo answers a GET with its (empty) body.
    wait_for("echo after SIGHUP", || body().is_ok_and(|b| b.is_empty()));

    write_config(dir.path(), &with("nothere"));
    hup(&child);
    wait_for("the refusal logged", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reload refused"))
    });
    assert!(child.try_wait().unwrap().is_none(), "still serving");
    assert_eq!(body().unwrap(), "", "the config in force goes on");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("unknown task \"nothere\""), "{logged}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(wait_for_exit(&mut child).success());
}

/// What one request on a new connection got: the task that answered, or the error.
fn ask_once(addr: SocketAddr) -> Result<&'static str, String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    conn.write_all(b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {text:?}"));
    }
    Ok(if text.contains("x-echo-path") {
        "echo"
    } else {
        "hello"
    })
}

#[test]
fn a_graceful_upgrade_hands_the_listener_to_a_new_process_without_refusing_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let addr = released_addr();
    let dist = tasks_dir();
    let config = |task: &str, file: &str| {
        let text = format!(
            "role: edge\nlisten: \"{addr}\"\nthreads: 1\ngrace_period: 2s\nupgrade_socket: upgrade.sock\ntasks:\n  {task}: {{ wasm: {} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    task: {task}\n",
            dist.join(format!("{task}.wasm")).display()
        );
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (old_file, new_file) = (config("hello", "old.yaml"), config("echo", "new.yaml"));
    let mut old = serve_logging_to(&old_file, &dir.path().join("old.log"), "info");
    wait_for("the old server", || ask_once(addr) == Ok("hello"));

    // A client asking on a new connection each time, throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asking = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 20_000 {
                seen.push(ask_once(addr));
            }
            seen
        })
    };
    let new_log = dir.path().join("new.log");
    let mut new = poplar()
        .args(["serve", "--upgrade", "-c"])
        .arg(&new_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&new_log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill")
        .args(["-QUIT", &old.id().to_string()])
        .status();
    let status = wait_for_exit(&mut old);
    assert!(
        status.success(),
        "the old process exits 0 after handing over: {status}"
    );
    wait_for("the new server", || ask_once(addr) == Ok("echo"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = asking.join().unwrap();
    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    let log = std::fs::read_to_string(&new_log).unwrap_or_default();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}\n{log}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let by = |t| seen.iter().filter(|r| *r == &Ok(t)).count();
    eprintln!(
        "upgrade: {} requests, {} from the old process, {} from the new",
        seen.len(),
        by("hello"),
        by("echo")
    );
    assert!(by("hello") > 0 && by("echo") > 0);
    let _ = Command::new("kill")
        .args(["-TERM", &new.id().to_string()])
        .status();
    assert!(wait_for_exit(&mut new).success());
}

/// `poplar demo`'s deploy path, as its guide prints it: deploy a task the edge has no code
/// for, see it turn hot and run at the edge, deploy another version, roll back.
#[test]
fn the_demo_takes_a_deployed_task_to_the_edge_and_follows_its_versions() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = tempfile::tempdir().unwrap();
    let [edge, https, origin, east, west, admin, region_admin] =
        std::array::from_fn(|_| common::released_addr());
    let demo = poplar()
        .arg("demo")
        .args(["--listen", &edge.to_string(), "--https", &https.to_string()])
        .args([
            "--origin",
            &origin.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--regions", &east.to_string(), &west.to_string()])
        .args(["--region-admin", &region_admin.to_string()])
        .arg("--registry")
        .arg(registry.path())
        .arg("--tasks")
        .arg(tasks_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _demo = Kill(demo);
    let deploy = |file: &str| {
        let out = poplar()
            .args(["deploy", "greet"])
            .arg(tasks_dir().join(file))
            .args(["--region", &format!("http://{region_admin}")])
            .args(["--memory", "32MiB", "--timeout", "100ms"])
            .env("POPLAR_DEPLOY_TOKEN", poplar::demo::DEMO_DEPLOY_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["current"]["digest"].as_str().unwrap().to_string()
    };
    // Up once its edge answers.
    let client = common::client();
    let get = |path: &str| {
        let (client, url) = (client.clone(), format!("http://{edge}{path}"));
        rt.block_on(async move {
            let resp = client.get(url).send().await.ok()?;
            let placement = common::placement(&resp);
            Some((resp.status().as_u16(), placement, resp.text().await.ok()?))
        })
    };
    let started = std::time::Instant::now();
    let up = std::iter::from_fn(|| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        (started.elapsed() < common::PATIENCE)
            .then(|| get("/some/page").is_some_and(|(status, _, _)| status == 200))
    })
    .any(|up| up);
    assert!(up, "the demo did not come up");

    let hello = deploy("hello.wasm");
    // hello answers a greeting; echo, for a GET, an empty body.
    let hello_ran = |body: &str| body.starts_with("Hello, world!");
    let inline_with = |ran: &dyn Fn(&str) -> bool| {
        let started = std::time::Instant::now();
        while started.elapsed() < common::PATIENCE {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let inline = get("/greet/demo").is_some_and(|(status, placement, body)| {
                status == 200 && placement == "edge; reason=hot" && ran(&body)
            });
            if inline {
                return true;
            }
        }
        false
    };
    assert!(inline_with(&hello_ran), "hello never ran at the edge");
    deploy("echo.wasm");
    assert!(
        inline_with(&|body: &str| body.is_empty()),
        "the new version never ran at the edge"
    );
    let out = poplar()
        .args(["rollback", "greet", &hello])
        .args(["--region", &format!("http://{region_admin}")])
        .env("POPLAR_DEPLOY_TOKEN", poplar::demo::DEMO_DEPLOY_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        inline_with(&hello_ran),
        "the rollback never reached the edge"
    );
}
