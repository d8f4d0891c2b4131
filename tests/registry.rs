//! A region's task registry: deploys over its admin listener (and `poplar deploy`), versions,
//! rollback, what is refused, and what survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::net::SocketAddr;

use common::{Key, client, start_edge};

const TOKEN: &str = "test-deploy-token-0123456789";
/// Limits within the inline limits of [`edge_from_registry`]'s edges (a deadline that a
/// loaded machine's scheduler cannot miss).
const FITS: &str = "memory=32MiB&timeout=2s";

/// A region with a registry in `dir` (and `echo` in its config file), its admin at `admin`.
fn registry_region(key: &Key, dir: &std::path::Path, admin: SocketAddr) -> common::Edge {
    let token = key.dir.path().join("deploy.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    start_edge(&format!(
        "role: region\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nadmin: {{ listen: \"{admin}\" }}\nregistry: {{ dir: \"{}\", token_file: \"{}\", max_memory: 128MiB }}\ntasks:\n  echo: {{ wasm: echo.wasm }}\n",
        key.path(),
        dir.display(),
        token.display()
    ))
}

/// An edge sending `/greet` to `region`, always there.
fn edge_before(key: &Key, region: SocketAddr) -> common::Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 200ms }}\nregions:\n  west: {{ address: \"{region}\" }}\ntasks:\n  greet: {{ wasm: hello.wasm }}\nroutes:\n  - match: {{ path_prefix: /greet }}\n    task: greet\n    placement: region\n",
        key.path()
    ))
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(common::tasks_dir().join(name)).unwrap()
}

fn digest(bytes: &[u8]) -> String {
    poplar::wasm::digest(bytes)
}

async fn deploy(admin: SocketAddr, name: &str, query: &str, code: Vec<u8>) -> (u16, String) {
    let resp = client()
        .put(format!("http://{admin}/tasks/{name}?{query}"))
        .bearer_auth(TOKEN)
        .body(code)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn listing(admin: SocketAddr) -> serde_json::Value {
    let resp = client()
        .get(format!("http://{admin}/tasks"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// What `/greet/x` answers through `edge`, and the digest the region named.
async fn greet(edge: &common::Edge) -> (u16, String, String) {
    let resp = client()
        .get(format!("{}/greet/x", edge.base))
        .send()
        .await
        .unwrap();
    let digest = common::header(&resp, "x-poplar-task-digest");
    (resp.status().as_u16(), digest, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployed_task_runs_is_versioned_rolled_back_and_kept_across_a_restart() {
    let key = Key::new();
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_addr();
    let region = registry_region(&key, dir.path(), admin);
    let edge = edge_before(&key, region.running.addr);

    // Not deployed yet: the region has no such task.
    let (status, _, _) = greet(&edge).await;
    assert_eq!(status, 404);

    let (hello, echo) = (wasm("hello.wasm"), wasm("echo.wasm"));
    let (status, text) = deploy(admin, "greet", "memory=32MiB&timeout=2s", hello.clone()).await;
    assert_eq!(status, 201, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["current"]["digest"], digest(&hello));
    assert_eq!(answer["current"]["limits"]["memory"], 32 << 20);
    assert_eq!(answer["current"]["limits"]["timeout_ms"], 2000);
    let (status, ran, body) = greet(&edge).await;
    assert_eq!((status, ran), (200, digest(&hello)));
    assert!(body.starts_with("Hello, world!"), "{body}");

    // A second version: current at once.
    let (status, text) = deploy(admin, "greet", "", echo.clone()).await;
    assert_eq!(status, 201, "{text}");
    let (status, ran, body) = greet(&edge).await;
    assert_eq!((status, ran), (200, digest(&echo)));
    assert!(!body.starts_with("Hello, world!"), "{body}");
    let list = listing(admin).await;
    let versions = list["tasks"]["greet"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(list["tasks"]["greet"]["current"], digest(&echo));

    // Rollback by digest.
    let resp = client()
        .post(format!(
            "http://{admin}/tasks/greet/current?digest={}",
            digest(&hello)
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (status, ran, _) = greet(&edge).await;
    assert_eq!((status, ran), (200, digest(&hello)));

    // Restarted on the same folder: the same current version answers.
    region.running.stop();
    let admin = common::free_addr();
    let region = registry_region(&key, dir.path(), admin);
    let edge = edge_before(&key, region.running.addr);
    let (status, ran, _) = greet(&edge).await;
    assert_eq!((status, ran), (200, digest(&hello)));
    assert_eq!(
        listing(admin).await,
        list_with_current(list, &digest(&hello))
    );
    let stats = admin_stats(admin).await;
    assert_eq!(stats["registry"]["greet"]["current"], digest(&hello));

    // Deleted: gone, and its code with it.
    let resp = client()
        .delete(format!("http://{admin}/tasks/greet"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(greet(&edge).await.0, 404);
    let left = std::fs::read_dir(dir.path().join("code")).unwrap().count();
    assert_eq!(left, 0);
}

fn list_with_current(mut list: serde_json::Value, digest: &str) -> serde_json::Value {
    list["tasks"]["greet"]["current"] = digest.into();
    list
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deploys_are_refused_and_change_nothing() {
    let key = Key::new();
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_addr();
    let _region = registry_region(&key, dir.path(), admin);
    let hello = wasm("hello.wasm");
    let (status, text) = deploy(admin, "greet", "", hello.clone()).await;
    assert_eq!(status, 201, "{text}");
    let before = listing(admin).await;

    // No token, and another token.
    let resp = client()
        .put(format!("http://{admin}/tasks/greet"))
        .body(wasm("echo.wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let resp = client()
        .put(format!("http://{admin}/tasks/greet"))
        .bearer_auth("another-token-0123456789")
        .body(wasm("echo.wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "a wrong digest",
            format!("digest={}", digest(b"something else")),
            wasm("echo.wasm"),
            400,
            "not the digest given",
        ),
        (
            "a core module",
            String::new(),
            b"\0asm\x01\0\0\0".to_vec(),
            422,
            "core wasm module",
        ),
        (
            "not wasm",
            String::new(),
            b"#!/bin/sh\necho hi\n".to_vec(),
            422,
            "not a valid component",
        ),
        (
            "a component that is not wasi:http",
            String::new(),
            b"\0asm\x0d\0\x01\0".to_vec(),
            422,
            "wasi:http",
        ),
        (
            "more memory than the registry allows",
            "memory=1GiB".into(),
            wasm("echo.wasm"),
            400,
            "registry.max_memory",
        ),
        (
            "a bad limit",
            "timeout=soon".into(),
            wasm("echo.wasm"),
            400,
            "timeout",
        ),
    ];
    for (what, query, code, status, says) in cases {
        let (got, text) = deploy(admin, "greet", &query, code).await;
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
    }
    // The config file's task, and a name that is not one.
    let (got, text) = deploy(admin, "echo", "", wasm("echo.wasm")).await;
    assert_eq!(got, 409, "{text}");
    let (got, _) = deploy(admin, "_hidden", "", wasm("echo.wasm")).await;
    assert_eq!(got, 400);

    // An upload cut short: its Content-Length says more than comes before the end.
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(admin).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "PUT /tasks/greet HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        hello.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&hello[..hello.len() / 2]).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert_eq!(common::status_of(&answer), "400", "{answer}");
    assert!(answer.contains("cut short"), "{answer}");

    assert_eq!(
        listing(admin).await,
        before,
        "a refused deploy changed the registry"
    );
}

#[test]
fn poplar_deploy_tasks_and_rollback_from_the_command_line() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = Key::new();
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_addr();
    let _region = registry_region(&key, dir.path(), admin);
    let poplar = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poplar"))
            .args(args)
            .env("POPLAR_DEPLOY_TOKEN", TOKEN)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let errors = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), text, errors)
    };
    let url = format!("http://{admin}");
    let hello = common::tasks_dir().join("hello.wasm").display().to_string();
    let echo = common::tasks_dir().join("echo.wasm").display().to_string();
    let (code, out, err) = poplar(&[
        "deploy", "greet", &hello, "--region", &url, "--memory", "32MiB",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&digest(&wasm("hello.wasm"))), "{out}");
    let (code, _, err) = poplar(&["deploy", "greet", &echo, "--region", &url]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = poplar(&["tasks", "--region", &url]);
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed["tasks"]["greet"]["current"],
        digest(&wasm("echo.wasm"))
    );
    let hello_digest = digest(&wasm("hello.wasm"));
    let (code, _, err) = poplar(&["rollback", "greet", &hello_digest, "--region", &url]);
    assert_eq!(code, Some(0), "{err}");
    let listed = rt.block_on(listing(admin));
    assert_eq!(listed["tasks"]["greet"]["current"], hello_digest);
    // Refusals exit non-zero with the region's reason.
    let (code, _, err) = poplar(&["rollback", "greet", "00", "--region", &url]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = poplar(&["undeploy", "greet", "--region", &url]);
    assert_eq!(code, Some(0), "{err}");
}

/// An edge whose `greet` has no wasm file: its code comes from `region` when it turns hot
/// (at 2 requests/s), kept in `code` if given.
fn edge_from_registry(
    key: &Key,
    region: SocketAddr,
    admin: SocketAddr,
    code: Option<&std::path::Path>,
) -> common::Edge {
    let cache = code.map_or(String::new(), |d| {
        format!("code_cache: {{ dir: \"{}\" }}\n", d.display())
    });
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nadmin: {{ listen: \"{admin}\" }}\n{cache}forwarding: {{ key_file: {} }}\nhealth: {{ interval: 200ms }}\nplacement: {{ hot_threshold: 2, cool_threshold: 1, cooldown: 1m, inline_limits: {{ timeout: 2s }} }}\nregions:\n  west: {{ address: \"{region}\" }}\ntasks:\n  greet: {{}}\nroutes:\n  - match: {{ path_prefix: /greet }}\n    task: greet\n    region: west\n",
        key.path()
    ))
}

/// Requests `/greet/x` (20 a second) until it runs at the edge with the code `digest`, or
/// 15 s pass; the placements seen on the way.
async fn until_inline_with(edge: &common::Edge, admin: SocketAddr, digest: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < common::PATIENCE {
        let resp = client()
            .get(format!("{}/greet/x", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let placement = common::placement(&resp);
        if seen.last() != Some(&placement) {
            seen.push(placement.clone());
        }
        let stats = admin_stats(admin).await;
        let greet = &stats["tasks"]["greet"];
        if placement == "edge; reason=hot" && greet["digest"] == digest {
            assert_eq!(greet["from"], "regions");
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never ran inline with {digest}: {seen:?}");
}

use common::admin_stats;

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_takes_deployed_code_when_hot_and_follows_deploys_and_rollbacks() {
    let key = Key::new();
    let dir = tempfile::tempdir().unwrap();
    let region_admin = common::free_addr();
    let region = registry_region(&key, dir.path(), region_admin);
    let (hello, echo) = (wasm("hello.wasm"), wasm("echo.wasm"));
    assert_eq!(
        deploy(region_admin, "greet", FITS, hello.clone()).await.0,
        201
    );

    let admin = common::free_addr();
    let edge = edge_from_registry(&key, region.running.addr, admin, None);
    let seen = until_inline_with(&edge, admin, &digest(&hello)).await;
    assert!(seen[0].starts_with("region; name=west"), "{seen:?}");
    assert!(
        seen.iter().any(|p| p.ends_with("reason=warming")),
        "{seen:?}"
    );
    // The edge runs it: hello's answer, with no region in the way.
    let resp = client()
        .get(format!("{}/greet/inline", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(common::placement(&resp), "edge; reason=hot");
    assert!(resp.text().await.unwrap().starts_with("Hello, world!"));

    // A new version at the region reaches the edge within seconds: never the old code
    // again once the edge has seen it.
    assert_eq!(
        deploy(region_admin, "greet", FITS, echo.clone()).await.0,
        201
    );
    until_inline_with(&edge, admin, &digest(&echo)).await;
    let resp = client()
        .get(format!("{}/greet/inline", edge.base))
        .send()
        .await
        .unwrap();
    assert!(!resp.text().await.unwrap().starts_with("Hello, world!"));

    // Rolled back: hello again.
    let resp = client()
        .post(format!(
            "http://{region_admin}/tasks/greet/current?digest={}",
            digest(&hello)
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    until_inline_with(&edge, admin, &digest(&hello)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_edge_takes_code_and_compiled_code_from_disk() {
    let key = Key::new();
    let (dir, code) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let region_admin = common::free_addr();
    let region = registry_region(&key, dir.path(), region_admin);
    let hello = wasm("hello.wasm");
    assert_eq!(
        deploy(region_admin, "greet", FITS, hello.clone()).await.0,
        201
    );

    let admin = common::free_addr();
    let edge = edge_from_registry(&key, region.running.addr, admin, Some(code.path()));
    until_inline_with(&edge, admin, &digest(&hello)).await;
    let stats = admin_stats(admin).await;
    assert_eq!(stats["code"]["compiled"], 1, "{}", stats["code"]);
    edge.running.stop();
    assert!(
        code.path()
            .join(format!("{}.wasm", digest(&hello)))
            .exists()
    );

    let admin = common::free_addr();
    let edge = edge_from_registry(&key, region.running.addr, admin, Some(code.path()));
    until_inline_with(&edge, admin, &digest(&hello)).await;
    let stats = admin_stats(admin).await;
    // Nothing compiled: the code came from disk, its compiled form too.
    let counts = (&stats["code"]["compiled"], &stats["code"]["loaded"]);
    assert_eq!(counts, (&0.into(), &1.into()), "{}", stats["code"]);
    let ready = &stats["tasks"]["greet"]["ready"];
    assert_eq!(ready["compiled"], false, "{ready}");
    let text = common::metrics_text(admin).await;
    let sample = "poplar_task_code_ready_seconds{task=\"greet\",how=\"loaded\"}";
    assert!(text.contains(sample), "{text}");
}

/// A region that lists `greet` at `digest` but serves `code` for it (and answers every
/// forward itself), one request per connection.
fn lying_region(digest: String, code: Vec<u8>) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // The rest of the head (no request here has a body).
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            let body: Vec<u8> = if path == "/_poplar/tasks" {
                format!(
                    "{{\"tasks\":{{\"greet\":{{\"digest\":\"{digest}\",\"size\":1,\"limits\":{{\"memory\":33554432,\"timeout_ms\":100,\"max_body\":1024}},\"deployed\":0}}}}}}"
                )
                .into_bytes()
            } else if path.starts_with("/_poplar/code/") {
                code.clone()
            } else {
                b"ok\n".to_vec()
            };
            let mut conn = reader.into_inner();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn code_a_region_serves_that_does_not_match_its_digest_is_never_run() {
    let key = Key::new();
    let code = tempfile::tempdir().unwrap();
    let hello = digest(&wasm("hello.wasm"));
    let region = lying_region(hello.clone(), wasm("echo.wasm"));
    let admin = common::free_addr();
    let edge = edge_from_registry(&key, region, admin, Some(code.path()));
    // Hot for 3 s: the code is asked for, refused, and the task stays forwarded.
    let mut placements = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let resp = client()
            .get(format!("{}/greet/x", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        placements.insert(common::placement(&resp));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        placements
            .iter()
            .all(|p| p.starts_with("region; name=west")),
        "{placements:?}"
    );
    let stats = admin_stats(admin).await;
    let greet = &stats["tasks"]["greet"];
    assert_eq!(greet["current"], hello.as_str(), "{greet}");
    assert!(greet["hot"].as_bool().unwrap(), "{greet}");
    assert_eq!(greet["code"], "absent", "{greet}");
    assert_eq!(stats["code"]["compiled"], 0, "{}", stats["code"]);
    // Nothing of it kept on disk.
    assert_eq!(std::fs::read_dir(code.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_version_and_code_an_edge_took_from_its_regions() {
    let key = Key::new();
    let dir = tempfile::tempdir().unwrap();
    let region_admin = common::free_addr();
    let region = registry_region(&key, dir.path(), region_admin);
    let hello = wasm("hello.wasm");
    assert_eq!(
        deploy(region_admin, "greet", FITS, hello.clone()).await.0,
        201
    );

    let (listen, admin) = (common::free_addr(), common::free_addr());
    let file = dir.path().join("edge.yaml");
    let text = |threshold: u32| {
        format!(
            "role: edge\nlisten: \"{listen}\"\nthreads: 2\nadmin: {{ listen: \"{admin}\" }}\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 200ms }}\nplacement: {{ hot_threshold: {threshold}, cool_threshold: 1, cooldown: 1m, inline_limits: {{ timeout: 2s }} }}\nregions:\n  west: {{ address: \"{}\" }}\ntasks:\n  greet: {{}}\nroutes:\n  - match: {{ path_prefix: /greet }}\n    task: greet\n    region: west\n",
            key.path(),
            region.running.addr
        )
    };
    std::fs::write(&file, text(2)).unwrap();
    let running = common::start_file(&file);
    let edge = common::Edge {
        base: format!("http://{listen}"),
        running,
    };
    until_inline_with(&edge, admin, &digest(&hello)).await;
    let compiled = admin_stats(admin).await["code"]["compiled"].clone();

    // A reload that changes a threshold: the task keeps its version, heat and code.
    std::fs::write(&file, text(3)).unwrap();
    let resp = client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = client()
        .get(format!("{}/greet/after", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(common::placement(&resp), "edge; reason=hot");
    let stats = admin_stats(admin).await;
    assert_eq!(stats["tasks"]["greet"]["digest"], digest(&hello));
    assert_eq!(
        stats["code"]["compiled"], compiled,
        "the reload compiled again"
    );
}
