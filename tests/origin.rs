//! End-to-end: origin routes proxied like a CDN, 404 for no route, 502 for a dead origin,
//! and clients' `x-poplar-*` headers never reaching anyone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use common::{client, start_edge};
use poplar::demo::Origin;

fn edge_with_origin(origin: std::net::SocketAddr) -> common::Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\ntasks:\n  hello:\n    wasm: hello.wasm\nroutes:\n  - match: {{ path_prefix: /hello }}\n    task: hello\n  - match: {{ path_prefix: /site, methods: [GET, POST, HEAD] }}\n    origin: \"{origin}\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_post_are_proxied_to_the_origin() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge_with_origin(origin.addr);

    let resp = client()
        .get(format!("{}/site/page?q=1&r=two", edge.base))
        .header("host", "www.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-origin-host"],
        "www.example.test",
        "the Host is kept"
    );
    assert_eq!(resp.headers()["x-origin-forwarded-for"], "127.0.0.1");
    assert!(resp.headers().get("x-poplar-placement").is_none());
    assert_eq!(
        resp.text().await.unwrap(),
        "origin GET /site/page?q=1&r=two\n"
    );

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let resp = client()
        .post(format!("{}/site/upload", edge.base))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    let (first_line, rest) = body.split_at(b"origin POST /site/upload\n".len());
    assert_eq!(first_line, b"origin POST /site/upload\n");
    assert_eq!(
        rest,
        payload.as_slice(),
        "the body reaches the origin intact"
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_poplar_headers_are_stripped() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge_with_origin(origin.addr);
    let resp = client()
        .get(format!("{}/site/x", edge.base))
        .header("x-poplar-placement", "region; name=evil")
        .header("X-Poplar-Task", "other")
        .header("x-keep-me", "1")
        .send()
        .await
        .unwrap();
    let names = resp.headers()["x-origin-header-names"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(names.split(',').any(|n| n == "x-keep-me"), "{names}");
    assert!(!names.contains("x-poplar"), "{names}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_404_and_dead_origin_is_502() {
    let dead = common::refusing_addr();
    let edge = edge_with_origin(dead);

    let resp = client()
        .get(format!("{}/elsewhere", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-poplar-error"], "no-route");
    assert_eq!(
        resp.text().await.unwrap(),
        "no route matches this request\n"
    );

    // A method the origin route does not take is not routed either.
    let resp = client()
        .delete(format!("{}/site/x", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // One client for both: a failed proxy attempt ends its connection, and the answer says
    // so, so that a client reusing connections never sends the next request into it.
    let reused = client();
    let resp = reused
        .get(format!("{}/site/x", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-poplar-error"], "origin");
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(
        resp.text().await.unwrap(),
        "the origin could not be reached or failed\n"
    );

    // The edge keeps serving.
    let resp = reused
        .get(format!("{}/hello", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_cannot_call_out() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = start_edge(&common::one_task("outbound", "{ timeout: 2s }"));
    let resp = client()
        .get(format!("{}/outbound?to={}", edge.base, origin.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("refused: "), "{text}");
    assert_eq!(origin.hits(), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_proxies_choose_the_forwarded_for_address() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let spoof = |edge: &common::Edge| {
        client()
            .get(format!("{}/site/x", edge.base))
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .header("forwarded", "for=9.9.9.9")
            .header("x-real-ip", "9.9.9.9")
            .send()
    };
    // The test client (127.0.0.1) is not trusted: its claims are dropped.
    let edge = edge_with_origin(origin.addr);
    let resp = spoof(&edge).await.unwrap();
    assert_eq!(resp.headers()["x-origin-forwarded-for"], "127.0.0.1");
    let names = resp.headers()["x-origin-header-names"].to_str().unwrap();
    assert!(
        !names
            .split(',')
            .any(|n| n == "forwarded" || n == "x-real-ip"),
        "{names}"
    );

    // Trusted, its list is kept whole (both lines, in order) and the peer appended.
    let trusting = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 1\ntrusted_proxies: [127.0.0.0/8, \"::1\"]\nroutes:\n  - match: {{ path_prefix: /site }}\n    origin: \"{}\"\n",
        origin.addr
    ));
    let resp = spoof(&trusting).await.unwrap();
    assert_eq!(
        resp.headers()["x-origin-forwarded-for"],
        "1.2.3.4, 5.6.7.8, 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_answers_its_health_path_before_any_route() {
    // A route for every path: the health path is the edge's own all the same, as a load
    // balancer's or Kubernetes' probe expects.
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"{}\"\n",
        origin.addr
    ));
    let resp = client()
        .get(format!("{}/_poplar/health", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.text().await.unwrap(), "ok\n");
    let resp = client()
        .get(format!("{}/_poplar/healthy", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "origin GET /_poplar/healthy\n");
}
