//! End-to-end: a component nobody here wrote, built for `wasmtime serve -S cli`, runs
//! unchanged: the `http_server` example shipped in the published `wstd` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use common::{client, one_task, start_edge};

#[tokio::test(flavor = "multi_thread")]
async fn wstd_example_server_runs_unchanged() {
    let edge = start_edge(
        &one_task("wstd-http-server", "{ timeout: 5s }")
            .replace("path_prefix: /wstd-http-server", "path_prefix: /"),
    );
    let url = |path: &str| format!("{}{path}", edge.base);

    let resp = client().get(url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-poplar-placement"], "edge; reason=pinned");
    assert_eq!(
        resp.text().await.unwrap(),
        "Hello, wasi:http/proxy world!\n"
    );

    let resp = client()
        .post(url("/echo"))
        .body("round trip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "round trip");

    let resp = client()
        .get(url("/echo-headers"))
        .header("x-custom", "kept")
        .header("x-poplar-task", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-custom"], "kept");
    assert!(resp.headers().get("x-poplar-task").is_none());

    let resp = client()
        .get(url("/response-status"))
        .header("x-response-status", "418")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);

    // Five pieces, 100 ms apart: streamed through as the guest writes them (chunked, and
    // arriving in more than one piece), not collected first.
    let mut resp = client().get(url("/stream-body")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "not collected"
    );
    let mut pieces = Vec::new();
    while let Some(piece) = resp.chunk().await.unwrap() {
        pieces.push(piece);
    }
    assert!(pieces.len() >= 2, "arrived as one piece: {pieces:?}");
    let text = String::from_utf8(pieces.concat()).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("stream started"))
            .count(),
        5,
        "{text}"
    );

    // The guest sleeps on a WASI clock for a second, then answers.
    let resp = client().get(url("/wait-response")).send().await.unwrap();
    let text = resp.text().await.unwrap();
    let slept: u64 = text
        .trim()
        .strip_prefix("slept for ")
        .and_then(|t| t.strip_suffix(" millis"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(slept >= 1000, "{text}");

    // The guest fails to make a response: a clean 500 from Poplar.
    let resp = client().get(url("/response-fail")).send().await.unwrap();
    assert_eq!(resp.status(), 500);

    let resp = client().get(url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the guest's own 404");
    assert!(resp.headers().get("x-poplar-error").is_none());
}
