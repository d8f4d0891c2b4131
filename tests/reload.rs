//! Reloading an edge's config in place (`POST /reload`; `SIGHUP` is in tests/cli.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{client, free_addr, start_file, tasks_dir};

/// An edge whose route 0 (`/c`, hello, cached) is the same in every config, and whose `/t`
/// goes to `task`.
fn config(listen: SocketAddr, admin: SocketAddr, task: &str) -> String {
    let dist = tasks_dir();
    format!(
        "role: edge\nlisten: \"{listen}\"\nthreads: 2\nadmin: {{ listen: \"{admin}\" }}\ntasks:\n  hello: {{ wasm: {hello} }}\n  echo: {{ wasm: {echo} }}\nroutes:\n  - match: {{ path_prefix: /c }}\n    task: hello\n    cache: {{ ttl: 1h }}\n  - match: {{ path_prefix: /t }}\n    task: {task}\n",
        hello = dist.join("hello.wasm").display(),
        echo = dist.join("echo.wasm").display(),
    )
}

fn write(file: &Path, text: &str) {
    // Written whole, then renamed: a reload never reads half a file.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, file).unwrap();
}

async fn reload(admin: SocketAddr) -> (u16, String) {
    let resp = client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Which task answered `/t`: echo sends `x-echo-method`, hello says hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Hello,
    Echo,
    Other,
}

struct Seen {
    sent: Instant,
    done: Instant,
    status: u16,
    answer: Answer,
}

/// Asks `/t` on one keep-alive connection until `stop`, counting answers in `answers`.
async fn keep_asking(base: String, stop: Arc<AtomicBool>, answers: Arc<AtomicUsize>) -> Vec<Seen> {
    let client = client();
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let (status, answer) = match client.get(format!("{base}/t?name=x")).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let echo = resp.headers().contains_key("x-echo-method");
                let body = resp.text().await.unwrap_or_default();
                let answer = match (echo, body.starts_with("Hello, x!")) {
                    (true, _) => Answer::Echo,
                    (false, true) => Answer::Hello,
                    _ => Answer::Other,
                };
                (status, answer)
            }
            Err(_) => (0, Answer::Other),
        };
        seen.push(Seen {
            sent,
            done: Instant::now(),
            status,
            answer,
        });
        answers.fetch_add(1, Ordering::Relaxed);
    }
    seen
}

/// One reload: when it was asked, when it was answered, and the config in force after it.
struct Swap {
    asked: Instant,
    answered: Instant,
    in_force: Answer,
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_lose_no_request_and_each_request_sees_the_config_it_arrived_under() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("edge.yaml");
    let (listen, admin) = (free_addr(), free_addr());
    let with = |task: &str| config(listen, admin, task);
    write(&file, &with("hello"));
    let _edge = start_file(&file);
    let base = format!("http://{listen}");

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    const CLIENTS: usize = 4;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(keep_asking(base.clone(), stop.clone(), answers.clone())))
        .collect();
    // Between two reloads, at least 60 ms and `BETWEEN` requests sent after the first was
    // answered: each client's request in flight at that moment, then `BETWEEN` more. Waiting
    // for answers, not only for time, keeps every window judged however slow the machine is.
    const BETWEEN: usize = 20;
    let between = || {
        let answers = &answers;
        let from = answers.load(Ordering::Relaxed);
        async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let started = Instant::now();
            while answers.load(Ordering::Relaxed) < from + CLIENTS + BETWEEN
                && started.elapsed() < common::PATIENCE
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut swaps = vec![Swap {
        asked: Instant::now(),
        answered: Instant::now(),
        in_force: Answer::Hello,
    }];
    for i in 0..21 {
        between().await;
        let (text, in_force) = match i {
            // An invalid config: refused whole, the one in force goes on.
            10 => (
                with("hello").replace("task: hello\n    cache", "task: nothere\n    cache"),
                swaps.last().unwrap().in_force,
            ),
            i if i % 2 == 0 => (with("echo"), Answer::Echo),
            _ => (with("hello"), Answer::Hello),
        };
        write(&file, &text);
        let asked = Instant::now();
        let (status, body) = reload(admin).await;
        let answered = Instant::now();
        if i == 10 {
            assert_eq!(status, 422, "{body}");
            assert!(
                body.contains("routes[0].task: unknown task \"nothere\""),
                "{body}"
            );
        } else {
            assert_eq!(status, 200, "reload {i}: {body}");
        }
        swaps.push(Swap {
            asked,
            answered,
            in_force,
        });
    }
    between().await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }

    let failed: Vec<_> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed",
        failed.len(),
        seen.len()
    );
    // A request sent after a swap was answered and answered before the next was asked
    // arrived under that swap's config, and only that one.
    let mut judged = 0;
    for s in &seen {
        let window = swaps
            .windows(2)
            .find(|w| s.sent >= w[0].answered && s.done <= w[1].asked);
        let last = swaps.last().filter(|w| s.sent >= w.answered);
        if let Some(swap) = window.map(|w| &w[0]).or(last) {
            assert_eq!(s.answer, swap.in_force);
            judged += 1;
        }
    }
    let (hello, echo) = (Answer::Hello, Answer::Echo);
    let count = |a: Answer| seen.iter().filter(|s| s.answer == a).count();
    assert!(count(hello) > 0 && count(echo) > 0, "both configs served");
    eprintln!(
        "{} requests over {} reloads: {} hello, {} echo; {judged} judged",
        seen.len(),
        swaps.len() - 1,
        count(hello),
        count(echo)
    );
    // Not a vacuous check: every window between two reloads had its requests judged.
    let windows = swaps.len();
    assert!(
        judged >= windows * BETWEEN,
        "{judged} of {} judged over {windows} windows",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_cache_and_code_of_unchanged_tasks_and_refuses_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.yaml");
    let (listen, admin) = (free_addr(), free_addr());
    write(&file, &config(listen, admin, "hello"));
    let _edge = start_file(&file);
    let get = |path: &str| client().get(format!("http://{listen}{path}")).send();
    let placement = |resp: &reqwest::Response| {
        let value = resp.headers().get("x-poplar-placement");
        value
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    get("/c?n=1").await.unwrap();
    assert_eq!(placement(&get("/c?n=1").await.unwrap()), "cache");

    write(&file, &config(listen, admin, "echo"));
    let (status, body) = reload(admin).await;
    assert_eq!(status, 200, "{body}");
    let reloaded: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reloaded["routes"], 2);
    assert_eq!(reloaded["tasks_kept"], serde_json::json!(["echo", "hello"]));
    assert_eq!(
        placement(&get("/c?n=1").await.unwrap()),
        "cache",
        "hello's code did not change: its entry is still found"
    );
    let echo = get("/t").await.unwrap();
    assert!(echo.headers().contains_key("x-echo-method"));
    let stats = common::admin_stats(admin).await;
    assert_eq!(stats["tasks"]["hello"]["code"], "pinned");

    // A listener cannot move in place.
    let moved = config(free_addr(), admin, "hello");
    write(&file, &moved);
    let (status, body) = reload(admin).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("listen: changed: this takes a restart, not a reload"),
        "{body}"
    );
    let still = get("/t").await.unwrap();
    assert!(
        still.headers().contains_key("x-echo-method"),
        "the config in force goes on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_reloads_its_tasks_keeping_the_unchanged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::Key::new();
    let dist = tasks_dir();
    let (region_listen, region_admin) = (free_addr(), free_addr());
    let region_file = dir.path().join("region.yaml");
    let region = |t: &str| {
        format!(
            "role: region\nlisten: \"{region_listen}\"\nadmin: {{ listen: \"{region_admin}\" }}\nforwarding: {{ key_file: {key} }}\ntasks:\n  t: {{ wasm: {t} }}\n  kept: {{ wasm: {hello} }}\n",
            key = key.path(),
            t = dist.join(format!("{t}.wasm")).display(),
            hello = dist.join("hello.wasm").display(),
        )
    };
    write(&region_file, &region("hello"));
    let _region = start_file(&region_file);
    let edge_listen = free_addr();
    let edge_file = dir.path().join("edge.yaml");
    write(
        &edge_file,
        &format!(
            "role: edge\nlisten: \"{edge_listen}\"\nforwarding: {{ key_file: {key} }}\nregions:\n  r: {{ address: \"{region_listen}\" }}\ntasks:\n  t: {{ wasm: {hello} }}\nroutes:\n  - match: {{ path_prefix: /t }}\n    task: t\n    placement: region\n",
            key = key.path(),
            hello = dist.join("hello.wasm").display(),
        ),
    );
    let _edge = start_file(&edge_file);
    let ask = || async {
        let resp = client()
            .get(format!("http://{edge_listen}/t?name=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers().contains_key("x-echo-method")
    };
    assert!(!ask().await, "hello answers first");
    write(&region_file, &region("echo"));
    let (status, body) = reload(region_admin).await;
    assert_eq!(status, 200, "{body}");
    let reloaded: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reloaded["tasks_changed"],
        serde_json::json!(["t"]),
        "{body}"
    );
    assert_eq!(
        reloaded["tasks_kept"],
        serde_json::json!(["kept"]),
        "{body}"
    );
    assert!(ask().await, "the region runs the new code for t");
    // A bad region config changes nothing.
    write(
        &region_file,
        &region("echo").replace("tasks:", "tasks:\n  bad: { wasm: nowhere.wasm }"),
    );
    let (status, body) = reload(region_admin).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("tasks.bad.wasm"), "{body}");
    assert!(ask().await, "the config in force goes on");
}
