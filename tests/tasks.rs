//! End-to-end: each example task served inline by a real edge, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use common::{client, one_task, start_edge};

#[tokio::test(flavor = "multi_thread")]
async fn hello_greets_and_echoes_path_and_query() {
    let edge = start_edge(&one_task("hello", "{ timeout: 2s }"));
    let resp = client()
        .get(format!("{}/hello/there?name=Ada&x=1", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(headers["x-poplar-placement"], "edge; reason=pinned");
    let timing = headers["server-timing"].to_str().unwrap();
    let ms: f64 = timing
        .strip_prefix("task;dur=")
        .expect(timing)
        .parse()
        .expect(timing);
    assert!(
        ms > 0.0 && ms < 2000.0,
        "{timing}: within the task's 2 s deadline"
    );
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        "Hello, Ada!\npath: /hello/there\nquery: name=Ada&x=1\n"
    );

    // HEAD: the length of the body it would get, no body, and the connection stays usable.
    let client = client();
    let resp = client
        .head(format!("{}/hello", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "35");
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    let resp = client
        .get(format!("{}/hello", edge.base))
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    assert_eq!(body, "Hello, world!\npath: /hello\nquery: \n");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_returns_body_and_selected_headers() {
    let edge = start_edge(&one_task("echo", "{ timeout: 2s, max_body: 256KiB }"));
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let resp = client()
        .post(format!("{}/echo/path", edge.base))
        .header("content-type", "application/octet-stream")
        .header("x-echo-color", "green")
        .header("x-not-echoed", "1")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(headers["x-echo-method"], "POST");
    assert_eq!(headers["x-echo-path"], "/echo/path");
    assert_eq!(headers["x-echo-color"], "green");
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(!headers.contains_key("x-not-echoed"));
    // A body over 64 KiB is streamed back with chunked encoding.
    assert!(headers.get("content-length").is_none());
    assert_eq!(resp.bytes().await.unwrap().as_ref(), payload.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_transform_transforms_and_rejects_bad_json() {
    let edge = start_edge(&one_task("json-transform", "{ timeout: 2s }"));
    let url = format!("{}/json-transform", edge.base);
    let resp = client()
        .post(&url)
        .body(r#"{"name": "poplar", "n": [1, 2, {"deep": "yes"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(doc["transformed"]["name"], "POPLAR");
    assert_eq!(doc["transformed"]["n"][2]["deep"], "YES");
    assert_eq!(doc["stats"]["strings"], 2);
    assert_eq!(doc["stats"]["numbers"], 2);
    assert_eq!(doc["stats"]["depth"], 3);

    let resp = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().starts_with("bad JSON:"));

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST, PUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_tasks_can_share_one_build() {
    // 200 tasks from one wasm compile once; each is still its own task and route.
    let mut yaml = String::from("role: edge\nlisten: LISTEN\nthreads: 2\ntasks:\n");
    for i in 0..200 {
        yaml += &format!("  t{i}: {{ wasm: hello.wasm }}\n");
    }
    yaml += "routes:\n";
    for i in 0..200 {
        yaml += &format!("  - match: {{ path_prefix: /t/{i} }}\n    task: t{i}\n");
    }
    let edge = start_edge(&yaml);
    for i in [0, 57, 199] {
        let resp = client()
            .get(format!("{}/t/{i}?name=n{i}", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.text()
                .await
                .unwrap()
                .starts_with(&format!("Hello, n{i}!"))
        );
    }
}

/// Every example task has a test: each crate in `tasks/` is named (as `name.wasm` or
/// `/name`) by some end-to-end test.
#[test]
fn every_task_in_tasks_has_a_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests: String = std::fs::read_dir(root.join("tests"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(root.join("tasks")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
            tasks.push(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(tasks.len() >= 8, "{tasks:?}");
    let untested: Vec<&String> = tasks
        .iter()
        .filter(|t| {
            !tests.contains(&format!("{t}.wasm"))
                && !tests.contains(&format!("\"/{t}"))
                && !tests.contains(&format!("one_task(\"{t}\""))
        })
        .collect();
    assert!(untested.is_empty(), "tasks without a test: {untested:?}");
}
