//! End-to-end: one edge in front of two regions, on loopback. Placement (cold, warming,
//! hot, oversized, busy, fallback, pinned), region choice (home, latency, failover, none
//! left), and the edge-to-region signature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Edge, Key, Relay, client, placement, start_edge, start_region};

/// Knobs of the test edge, as YAML flow mappings.
struct Setup<'a> {
    placement: &'a str,
    /// `admin.listen`, if any.
    admin: Option<SocketAddr>,
    health: &'a str,
    /// The wstd task's limits at the edge.
    wstd_limits: &'a str,
    routes: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            placement: "{ hot_threshold: 3 }",
            admin: None,
            health: "{ interval: 100ms, timeout: 2s, unhealthy_after: 1 }",
            wstd_limits: "{ memory: 16MiB, timeout: 3s, max_body: 64KiB }",
            routes: AUTO_ROUTES,
        }
    }
}

/// An edge with tasks `hello`, `echo` and `wstd` (the wstd example server), in front of
/// `regions`.
fn edge(key: &Key, regions: &[(&str, SocketAddr)], setup: Setup<'_>) -> Edge {
    let mut yaml = format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nplacement: {}\nhealth: {}\nregions:\n",
        key.path(),
        setup.placement,
        setup.health
    );
    for (name, addr) in regions {
        yaml += &format!("  {name}: {{ address: \"{addr}\" }}\n");
    }
    if let Some(admin) = setup.admin {
        yaml += &format!("admin: {{ listen: \"{admin}\" }}\n");
    }
    yaml += "tasks:\n";
    yaml += "  hello:\n    wasm: hello.wasm\n    limits: { memory: 16MiB, timeout: 100ms, max_body: 64KiB }\n";
    yaml += "  echo:\n    wasm: echo.wasm\n    limits: { memory: 16MiB, timeout: 100ms, max_body: 4MiB }\n";
    yaml += &format!(
        "  wstd:\n    wasm: wstd-http-server.wasm\n    limits: {}\n",
        setup.wstd_limits
    );
    yaml += "routes:\n";
    yaml += setup.routes;
    start_edge(&yaml)
}

const AUTO_ROUTES: &str = "  - match: { path_prefix: /hello }\n    task: hello\n  - match: { path_prefix: /echo }\n    task: echo\n  - match: { path: / }\n    task: wstd\n  - match: { path: /wait-response }\n    task: wstd\n";

/// Sends GETs to `url` until one is placed as `want`; panics after `common::PATIENCE`. The
/// bound is time, not a count of requests: how long an edge takes to compile a task for inline
/// runs depends on the machine's load (a loaded CI machine once needed more than 3,000). The pause between requests is at least 10 ms: the edge compiles at nice 19, on the cycles
/// traffic leaves, and a test sending without a pause takes them all.
async fn until_placed(url: &str, want: &str, pause: Duration) -> Vec<String> {
    let client = client();
    let started = Instant::now();
    let pause = pause.max(Duration::from_millis(10));
    let mut seen = Vec::new();
    while started.elapsed() < common::PATIENCE {
        let resp = client.get(url).send().await.unwrap();
        assert!(resp.status().is_success(), "{} for {url}", resp.status());
        let p = placement(&resp);
        seen.push(p.clone());
        if p == want {
            return seen;
        }
        tokio::time::sleep(pause).await;
    }
    let last = &seen[seen.len().saturating_sub(8)..];
    panic!(
        "never placed {want:?} in {} requests; the last: {last:?}",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_starts_cold_turns_hot_and_cools_down() {
    let key = Key::new();
    let (east, west) = (
        start_region(&key, &["hello"]),
        start_region(&key, &["hello"]),
    );
    let setup = Setup {
        placement: "{ hot_threshold: 5, cool_threshold: 2, cooldown: 300ms }",
        routes: "  - match: { path_prefix: /hello }\n    task: hello\n    region: east\n",
        ..Setup::default()
    };
    let edge = edge(&key, &[("east", east.addr), ("west", west.addr)], setup);
    let url = format!("{}/hello?name=heat", edge.base);

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(placement(&resp), "region; name=east; reason=cold");
    assert_eq!(
        resp.text().await.unwrap(),
        "Hello, heat!\npath: /hello\nquery: name=heat\n"
    );

    let seen = until_placed(&url, "edge; reason=hot", Duration::ZERO).await;
    assert!(seen.iter().any(|p| p == "region; name=east; reason=cold"));
    assert!(
        seen.iter()
            .any(|p| p == "region; name=east; reason=warming"),
        "{seen:?}"
    );

    // Two requests a second is under the cool threshold: after the cool-down it is cold.
    let seen = until_placed(
        &url,
        "region; name=east; reason=cold",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        seen.len() > 1,
        "stays hot for the cool-down first: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_routes_are_obeyed_and_clients_cannot_choose() {
    let key = Key::new();
    let (east, west) = (
        start_region(&key, &["hello", "echo"]),
        start_region(&key, &["hello", "echo"]),
    );
    let routes = "  - match: { path_prefix: /pinned-edge }\n    task: hello\n    placement: edge\n  - match: { path_prefix: /pinned-region }\n    task: hello\n    placement: region\n    region: west\n  - match: { path_prefix: /echo }\n    task: echo\n    placement: region\n";
    let setup = Setup {
        placement: "{ hot_threshold: 1000 }",
        routes,
        ..Setup::default()
    };
    let edge = edge(&key, &[("east", east.addr), ("west", west.addr)], setup);
    for _ in 0..3 {
        let resp = client()
            .get(format!("{}/pinned-edge", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(placement(&resp), "edge; reason=pinned");
        let resp = client()
            .get(format!("{}/pinned-region", edge.base))
            .header("x-poplar-placement", "edge; reason=hot")
            .send()
            .await
            .unwrap();
        assert_eq!(placement(&resp), "region; name=west; reason=pinned");
        assert!(resp.text().await.unwrap().starts_with("Hello, world!"));
    }
    // A client naming another task, or forging a signature, changes nothing: the edge
    // strips x-poplar-* and signs for the route's own task.
    let resp = client()
        .post(format!("{}/echo", edge.base))
        .header("x-poplar-task", "hello")
        .header("x-poplar-signature", "v1=forged")
        .header("x-echo-probe", "1")
        .body("still echo")
        .send()
        .await
        .unwrap();
    assert!(placement(&resp).starts_with("region; name="));
    assert_eq!(resp.headers()["x-echo-probe"], "1");
    assert_eq!(resp.text().await.unwrap(), "still echo");
}

/// Makes `task` hot and resident at the edge, through `path`.
async fn heat(edge: &Edge, path: &str) {
    until_placed(
        &format!("{}{path}", edge.base),
        "edge; reason=hot",
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_body_is_forwarded_as_oversized() {
    let key = Key::new();
    let region = start_region(&key, &["echo"]);
    let edge = edge(&key, &[("only", region.addr)], Setup::default());
    heat(&edge, "/echo").await;

    let small = client()
        .post(format!("{}/echo", edge.base))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&small), "edge; reason=hot");

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let resp = client()
        .post(format!("{}/echo", edge.base))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&resp), "region; name=only; reason=oversized");
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        payload.as_slice(),
        "streamed to the region intact"
    );

    // No declared length (chunked): the edge cannot know it fits.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok("chunked ".into()), Ok("body".into())];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = client()
        .post(format!("{}/echo", edge.base))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&resp), "region; name=only; reason=oversized");
    assert_eq!(resp.text().await.unwrap(), "chunked body");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_slot_held_the_next_request_is_forwarded_as_busy() {
    let key = Key::new();
    let region = start_region(&key, &["wstd"]);
    let setup = Setup {
        placement: "{ hot_threshold: 3, max_inline: 2, inline_limits: { timeout: 5s } }",
        ..Setup::default()
    };
    let edge = edge(&key, &[("only", region.addr)], setup);
    heat(&edge, "/").await;

    // Three slow requests at once (the guest sleeps a second on a WASI clock): two take
    // the two slots, the third finds none and goes to the region rather than wait.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/wait-response", edge.base);
            tokio::spawn(async move {
                let resp = client().get(url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                placement(&resp)
            })
        })
        .collect();
    let mut seen = Vec::new();
    for h in slow {
        seen.push(h.await.unwrap());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "edge; reason=hot",
            "edge; reason=hot",
            "region; name=only; reason=busy"
        ]
    );
    let client = client();
    // Never queued: once the slots are free, it runs at the edge again.
    let resp = client.get(format!("{}/", edge.base)).send().await.unwrap();
    assert_eq!(placement(&resp), "edge; reason=hot");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_outgrows_the_edge_falls_back_to_the_region() {
    let key = Key::new();
    let region = start_region(&key, &["wstd"]);
    // At the edge the task gets 100 ms; the region gives it 5 s.
    let setup = Setup {
        wstd_limits: "{ memory: 16MiB, timeout: 100ms, max_body: 16KiB }",
        ..Setup::default()
    };
    let edge = edge(&key, &[("only", region.addr)], setup);
    heat(&edge, "/").await;

    let resp = client()
        .get(format!("{}/wait-response", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(placement(&resp), "region; name=only; reason=fallback");
    assert!(resp.text().await.unwrap().starts_with("slept for"));

    // Marked oversized for a cool-down: the next requests go straight to the region.
    let resp = client()
        .get(format!("{}/", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&resp), "region; name=only; reason=oversized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buffered_body_is_replayed_to_the_region_on_fallback() {
    let key = Key::new();
    let region = start_region(&key, &["echo"]);
    let edge = edge(&key, &[("only", region.addr)], Setup::default());
    heat(&edge, "/echo").await;

    // The echo task sleeps 300 ms here: past the edge's 100 ms, well within the region's 5 s.
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 199) as u8).collect();
    let resp = client()
        .post(format!("{}/echo?sleep_ms=300", edge.base))
        .header("x-echo-replayed", "yes")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(placement(&resp), "region; name=only; reason=fallback");
    assert_eq!(resp.headers()["x-echo-replayed"], "yes");
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        body.as_ref(),
        payload.as_slice(),
        "the same body reached the region"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_moves_away_from_a_slow_region() {
    let key = Key::new();
    let (a, b) = (
        start_region(&key, &["hello"]),
        start_region(&key, &["hello"]),
    );
    let (relay_a, relay_b) = (Relay::start(a.addr), Relay::start(b.addr));
    relay_b.set_delay(30);
    let routes = "  - match: { path_prefix: /hello }\n    task: hello\n    placement: region\n";
    let edge = edge(
        &key,
        &[("a", relay_a.addr), ("b", relay_b.addr)],
        Setup {
            routes,
            ..Setup::default()
        },
    );
    let url = format!("{}/hello", edge.base);

    let last_five_at = |want: &'static str| {
        let url = url.clone();
        async move {
            let client = client();
            let mut recent = Vec::new();
            for _ in 0..300 {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                recent.push(placement(&resp));
                if recent.len() >= 5 && recent[recent.len() - 5..].iter().all(|p| p.contains(want))
                {
                    return;
                }
            }
            panic!(
                "traffic never settled on {want}: {:?}",
                &recent[recent.len().saturating_sub(20)..]
            );
        }
    };
    last_five_at("name=a;").await;
    relay_b.set_delay(0);
    relay_a.set_delay(60);
    last_five_at("name=b;").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_region_fails_over_then_none_left_is_503() {
    let key = Key::new();
    let (east, west) = (
        start_region(&key, &["hello"]),
        start_region(&key, &["hello"]),
    );
    let routes = "  - match: { path_prefix: /hello }\n    task: hello\n    placement: region\n    region: east\n";
    // Probes are rare here, so the edge learns of the stop from the request itself.
    let health = "{ interval: 1h, timeout: 500ms, unhealthy_after: 1 }";
    let (east_addr, west_addr) = (east.addr, west.addr);
    let edge = edge(
        &key,
        &[("east", east_addr), ("west", west_addr)],
        Setup {
            routes,
            health,
            ..Setup::default()
        },
    );
    let url = format!("{}/hello", edge.base);

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(
        placement(&resp),
        "region; name=east; reason=pinned",
        "home first"
    );

    east.stop();
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "no client-visible error");
    assert_eq!(placement(&resp), "region; name=west; reason=pinned");

    west.stop();
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-poplar-error"], "no-region");
    // Now both are known down: refused at once.
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-poplar-error"], "no-region");
}

/// A task request to a region over a raw socket, so that the headers it carries are exactly
/// those given: `(status, x-poplar-error)`.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let error = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-poplar-error: "))
        .unwrap_or("")
        .to_string();
    (status, error)
}

/// A forwarded request as an edge signs it: `POST /hello?x=1` with `host`, `extra` headers
/// and `body`, and the five signing headers; then `tamper` may change the bytes.
fn signed_request(
    key: &[u8],
    host: &str,
    extra: &[(&str, &str)],
    body: &str,
    request_id: &str,
) -> String {
    use poplar::regions::signing::{Forwarding, body_digest, signed_headers};
    let mut headers = http::HeaderMap::new();
    headers.insert("host", host.parse().unwrap());
    headers.insert("content-length", body.len().into());
    for (name, value) in extra {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let digest = body_digest(body.as_bytes());
    let forwarding = Forwarding {
        task: "hello",
        request_id,
        body: &digest,
    };
    let mut text = "POST /hello?x=1 HTTP/1.1\r\n".to_string();
    for (name, value) in &headers {
        text += &format!("{name}: {}\r\n", value.to_str().unwrap());
    }
    for (name, value) in signed_headers(key, "POST", "/hello?x=1", &headers, &forwarding) {
        text += &format!("{name}: {value}\r\n");
    }
    text + "connection: close\r\n\r\n" + body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_runs_nothing_without_a_valid_signature() {
    use poplar::regions::signing::{Signed, sign, unix_now};
    let key = Key::new();
    let admin = common::free_addr();
    let region = start_edge(&format!(
        "role: region\nlisten: LISTEN\nthreads: 2\nadmin: {{ listen: \"{admin}\" }}\nforwarding: {{ key_file: {} }}\ntasks:\n  hello:\n    wasm: hello.wasm\n",
        key.path()
    ))
    .running;
    let addr = region.addr;

    let unsigned =
        "POST /hello?x=1 HTTP/1.1\r\nhost: r\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    assert_eq!(
        raw_exchange(addr, unsigned.as_bytes()),
        (401, "unsigned".into())
    );

    let good = signed_request(&key.bytes(), "r", &[("x-echo", "1")], "hi", "id-1");
    assert_eq!(raw_exchange(addr, good.as_bytes()).0, 200, "{good}");
    // The same request again, within the skew: a replay.
    assert_eq!(
        raw_exchange(addr, good.as_bytes()),
        (403, "bad-signature".into()),
        "a captured request does not run twice"
    );
    let stats = common::admin_stats(admin).await;
    assert_eq!(stats["replays_refused"], 1, "{stats}");

    // One signature, a changed request: each is refused.
    let fresh = |id: &str| signed_request(&key.bytes(), "r", &[("x-echo", "1")], "hi", id);
    let tampered = [
        fresh("id-2").replace("\r\n\r\nhi", "\r\n\r\nho"),
        fresh("id-3").replace("host: r\r\n", "host: elsewhere\r\n"),
        fresh("id-4").replace(
            "x-echo: 1\r\n",
            "x-echo: 1\r\nset-cookie: session=stolen\r\n",
        ),
        fresh("id-5").replace("x-echo: 1\r\n", "x-echo: 2\r\n"),
        fresh("id-6").replace("x-poplar-task: hello", "x-poplar-task: other"),
        fresh("id-7").replace("x-poplar-request-id: id-7", "x-poplar-request-id: id-8"),
        fresh("id-9").replace("/hello?x=1", "/hello?x=2"),
    ];
    for request in tampered {
        assert_eq!(
            raw_exchange(addr, request.as_bytes()),
            (403, "bad-signature".into()),
            "{request}"
        );
    }

    // Stale, and malformed.
    let then = unix_now() - 120;
    let stale_sig = sign(
        &key.bytes(),
        &Signed {
            timestamp: then,
            request_id: "old",
            method: "POST",
            path_and_query: "/hello?x=1",
            task: "hello",
            host: "r",
            body: "x",
            headers: "x",
        },
    );
    let stale = fresh("id-10")
        .lines()
        .map(|l| match l.split_once(": ") {
            Some(("x-poplar-signature", _)) => format!("x-poplar-signature: {stale_sig}"),
            Some(("x-poplar-timestamp", _)) => format!("x-poplar-timestamp: {then}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_eq!(
        raw_exchange(addr, stale.as_bytes()),
        (403, "bad-signature".into())
    );
    let malformed = fresh("id-11").replace("x-poplar-signature: v2=", "x-poplar-signature: v1=");
    assert_eq!(
        raw_exchange(addr, malformed.as_bytes()),
        (403, "bad-signature".into())
    );

    // Signed properly, it runs; the health check needs no signature.
    let again = fresh("id-12");
    assert_eq!(raw_exchange(addr, again.as_bytes()).0, 200);
    let resp = client()
        .get(format!("http://{}/_poplar/health", region.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resident_set_is_bounded_and_the_admin_endpoint_counts() {
    let key = Key::new();
    let region = start_region(&key, &["hello", "echo"]);
    let admin = common::free_addr();
    // Room for one resident task: heating a second evicts the first once the second is the
    // hotter.
    let heat_rules = "{ hot_threshold: 3, cool_threshold: 1, max_resident: 1 }";
    let routes = "  - match: { path_prefix: /hello }\n    task: hello\n  - match: { path_prefix: /echo }\n    task: echo\n";
    let setup = Setup {
        placement: heat_rules,
        routes,
        admin: Some(admin),
        ..Setup::default()
    };
    let edge = edge(&key, &[("only", region.addr)], setup);

    heat(&edge, "/hello").await;
    let stats = common::admin_stats(admin).await;
    assert_eq!(stats["tasks"]["hello"]["code"], "resident");
    heat(&edge, "/echo").await;
    let stats = common::admin_stats(admin).await;
    assert_eq!(stats["tasks"]["echo"]["code"], "resident");
    assert_eq!(
        stats["tasks"]["hello"]["code"], "absent",
        "evicted: {stats}"
    );

    // hello is still hot, but colder than echo, the one resident: it is forwarded as cold
    // and not compiled, so the two do not take turns evicting each other. Heating echo can
    // take long on a loaded machine (its compile runs at nice 19) and hello cools meanwhile:
    // echo is kept busy and hello asked for 5 times a second until hello is hot again, at a
    // rate above its hot threshold (just hot, it could cool below the cool threshold before
    // the request that is judged).
    let busy = tokio::spawn({
        let url = format!("{}/echo", edge.base);
        async move {
            loop {
                let _ = client().get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let started = Instant::now();
    let hot = |stats: &serde_json::Value| {
        let hello = &stats["tasks"]["hello"];
        hello["hot"] == true && hello["rate"].as_f64().unwrap_or(0.0) >= 3.0
    };
    while !hot(&common::admin_stats(admin).await) && started.elapsed() < common::PATIENCE {
        let _ = client().get(format!("{}/hello", edge.base)).send().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resp = client()
        .get(format!("{}/hello", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&resp), "region; name=only; reason=cold");
    let now = common::admin_stats(admin).await;
    assert_eq!(now["tasks"]["hello"]["hot"], true, "{now}");
    assert_eq!(now["tasks"]["hello"]["code"], "absent", "{now}");
    busy.abort();

    let counts = &stats["placements"]["hello"];
    assert!(counts["edge/hot"].as_u64().unwrap() >= 1, "{counts}");
    assert!(counts["region/cold"].as_u64().unwrap() >= 1, "{counts}");
    // Response times are counted apart for requests run here and those forwarded.
    let latency = &now["latency"];
    for site in ["edge", "region"] {
        let count = latency[site]["count"].as_u64().unwrap();
        let bucketed: u64 = latency[site]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_u64().unwrap())
            .sum();
        assert!(count >= 1 && bucketed == count, "{latency}");
        assert!(latency[site]["p99_ms"].as_f64().unwrap() > 0.0, "{latency}");
    }
    assert_eq!(stats["regions"][0]["name"], "only");
    assert_eq!(stats["regions"][0]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_region_refusing_the_connection_is_503_no_region() {
    let key = Key::new();
    // Nothing listens on either: each connection is refused.
    let (east, west) = (common::refusing_addr(), common::refusing_addr());
    let routes = "  - match: { path_prefix: /hello }\n    task: hello\n    placement: region\n    region: east\n";
    let health = "{ interval: 1h, unhealthy_after: 3 }";
    for post in [false, true] {
        let edge = edge(
            &key,
            &[("east", east), ("west", west)],
            Setup {
                routes,
                health,
                ..Setup::default()
            },
        );
        let url = format!("{}/hello", edge.base);
        for _ in 0..2 {
            let request = if post {
                client().post(&url).body("x")
            } else {
                client().get(&url)
            };
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 503, "post: {post}");
            assert_eq!(resp.headers()["x-poplar-error"], "no-region");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_named_by_dns_are_resolved_and_one_that_never_resolves_is_passed_over() {
    let key = Key::new();
    let region = start_region(&key, &["hello"]);
    let admin = common::free_addr();
    // The home region's name never resolves; the other is `localhost`, as a Kubernetes
    // Service name would be given.
    let edge = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nadmin: {{ listen: \"{admin}\" }}\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 100ms, timeout: 2s, resolve_every: 1s }}\nregions:\n  nowhere: {{ address: \"no-such-host.invalid:80\" }}\n  named: {{ address: \"localhost:{}\" }}\ntasks:\n  hello: {{ wasm: hello.wasm }}\nroutes:\n  - match: {{ path_prefix: /hello }}\n    task: hello\n    placement: region\n    region: nowhere\n",
        key.path(),
        region.addr.port()
    ));
    for _ in 0..3 {
        let resp = client()
            .get(format!("{}/hello?name=dns", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(placement(&resp), "region; name=named; reason=pinned");
        assert!(resp.text().await.unwrap().starts_with("Hello, dns!"));
    }
    let stats = common::admin_stats(admin).await;
    let regions = stats["regions"].as_array().unwrap();
    let by_name = |name: &str| regions.iter().find(|r| r["name"] == name).unwrap();
    let named = by_name("named");
    assert_eq!(
        named["address"],
        format!("localhost:{}", region.addr.port())
    );
    assert_eq!(
        named["resolved"],
        serde_json::json!([region.addr.to_string()])
    );
    assert_eq!(named["healthy"], true, "{named}");
    let nowhere = by_name("nowhere");
    assert_eq!(nowhere["resolved"], serde_json::json!([]));
    assert!(nowhere["unresolved"].is_string(), "{nowhere}");
}
