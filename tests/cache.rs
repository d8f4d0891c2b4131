//! End-to-end: the edge's result cache, on task routes (inline and forwarded) and origin
//! routes, under HTTP caching rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Edge, Key, client, free_addr, header, placement, start_edge, start_region};
use poplar::demo::Origin;

/// An edge without regions: `/hello` (cached 30 s by default), `/echo` (cached, response
/// freshness only), `/pure` (echo, pure: POSTs cached by body), `/site` (origin, cached),
/// `/nocache` (origin, not cached). Admin on `admin`.
fn edge(origin: SocketAddr, admin: SocketAddr, cache: &str) -> Edge {
    start_edge(&format!(
        r#"role: edge
listen: LISTEN
threads: 2
admin: {{ listen: "{admin}" }}
cache: {cache}
tasks:
  hello:
    wasm: hello.wasm
  echo:
    wasm: echo.wasm
    limits: {{ timeout: 3s }}
routes:
  - match: {{ path_prefix: /hello }}
    task: hello
    cache: {{ ttl: 30s }}
  - match: {{ path_prefix: /echo }}
    task: echo
    cache: {{}}
  - match: {{ path_prefix: /pure }}
    task: echo
    cache: {{ ttl: 30s, pure: true }}
  - match: {{ path_prefix: /site }}
    origin: "{origin}"
    cache: {{}}
  - match: {{ path_prefix: /nocache }}
    origin: "{origin}"
"#
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn response_times_are_counted_by_where_requests_were_answered() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = free_addr();
    let edge = edge(origin.addr, admin, "{}");
    for path in ["/hello?name=t", "/hello?name=t", "/nocache", "/none"] {
        client()
            .get(format!("{}{path}", edge.base))
            .send()
            .await
            .unwrap();
    }
    // A request is counted in its logging phase, which may run a moment after its answer
    // reached the client: wait (boundedly) for the three to be counted.
    let mut stats = common::admin_stats(admin).await;
    for _ in 0..50 {
        let counted = ["edge", "cache", "origin"]
            .iter()
            .all(|s| stats["latency"][s]["count"] == 1);
        if counted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stats = common::admin_stats(admin).await;
    }
    let latency = &stats["latency"];
    // The run inline, the hit that followed, the origin; the 404 is nowhere.
    for site in ["edge", "cache", "origin"] {
        assert_eq!(latency[site]["count"], 1, "{site}: {latency}");
    }
    assert_eq!(latency.as_object().unwrap().len(), 3, "{latency}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_count_what_was_sent() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = free_addr();
    let edge = edge(origin.addr, admin, "{}");
    for path in [
        "/hello?name=m",
        "/hello?name=m",
        "/hello?name=n",
        "/nocache",
    ] {
        let resp = client().get(format!("{}{path}", edge.base)).send().await;
        assert_eq!(resp.unwrap().status(), 200, "{path}");
    }
    let resp = client().get(format!("{}/nowhere", edge.base)).send().await;
    assert_eq!(resp.unwrap().status(), 404);
    // A request is counted in its logging phase, just after its response went out: scrape
    // once none is in flight.
    let mut scrapes = 0;
    let (resp, text) = loop {
        let resp = client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap();
        let ct = header(&resp, "content-type");
        let (status, text) = (resp.status(), resp.text().await.unwrap());
        scrapes += 1;
        if text.contains("poplar_requests_in_flight 0.0") || scrapes == 200 {
            break ((status, ct), text);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(resp.0, 200);
    assert!(resp.1.starts_with("application/openmetrics-text"));
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |metric: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let sample = scrape.samples.iter().find(|s| {
            s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })?;
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        }
    };
    // Two runs inline (the first request of each name), one hit, one origin request.
    let ran = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "poplar_task_requests_total")
        .filter(|s| s.labels.get("task") == Some("hello"));
    let ran: f64 = ran
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(ran, 2.0, "{text}");
    assert_eq!(value("poplar_cache_hits_total", &[]), Some(1.0), "{text}");
    assert_eq!(value("poplar_cache_stores_total", &[]), Some(2.0), "{text}");
    for (answered, n) in [("edge", 2.0), ("cache", 1.0), ("origin", 1.0)] {
        let count = value("poplar_response_seconds_count", &[("answered", answered)]);
        assert_eq!(count, Some(n), "{answered}: {text}");
    }
    assert_eq!(
        value("poplar_response_seconds_count", &[("answered", "region")]),
        None
    );
    let histogram = scrape.samples.iter().find(|s| {
        s.metric == "poplar_response_seconds" && s.labels.get("answered") == Some("edge")
    });
    let Some(prometheus_parse::Value::Histogram(buckets)) = histogram.map(|h| &h.value) else {
        panic!("no edge histogram: {text}");
    };
    assert_eq!(
        buckets.last().map(|b| (b.less_than, b.count)),
        Some((f64::INFINITY, 2.0))
    );
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );
    assert_eq!(
        value("poplar_task_hot", &[("task", "hello")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value("poplar_cache_limit_bytes", &[]).map(|b| b > 0.0),
        Some(true)
    );
    // By route (its place in routes) and status class; the 404 matched none.
    for (route, status, n) in [("0", "2xx", 3.0), ("4", "2xx", 1.0), ("none", "4xx", 1.0)] {
        let labels = [("route", route), ("status", status)];
        assert_eq!(
            value("poplar_requests_total", &labels),
            Some(n),
            "{route} {status}: {text}"
        );
    }
    assert_eq!(
        value("poplar_requests_total", &[("route", "1")]),
        None,
        "{text}"
    );
    // Nothing turned hot: no promotion compiled, nothing resident beside the pinned.
    assert_eq!(value("poplar_compiles_total", &[]), Some(0.0), "{text}");
    assert_eq!(
        value("poplar_resident_code_bytes", &[]),
        Some(0.0),
        "{text}"
    );
    // The process's own, unprefixed.
    let rss = value("process_resident_memory_bytes", &[]).unwrap_or_default();
    assert!(rss > 1e6, "{text}");
    assert!(
        value("process_open_fds", &[]).is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert!(
        value("process_cpu_seconds_total", &[]).is_some_and(|s| s > 0.0),
        "{text}"
    );
    let started = value("process_start_time_seconds", &[]).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(
        started > 1.6e9 && started <= now.as_secs_f64() + 1.0,
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_result_is_a_miss_then_a_hit() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    let url = format!("{}/hello?name=cache", edge.base);

    let first = client().get(&url).send().await.unwrap();
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    assert_eq!(placement(&first), "edge; reason=pinned");
    let body = first.text().await.unwrap();

    let second = client().get(&url).send().await.unwrap();
    assert_eq!(placement(&second), "cache");
    let status = header(&second, "cache-status");
    assert!(status.starts_with("poplar; hit; ttl="), "{status}");
    let ttl: i64 = status.rsplit('=').next().unwrap().parse().unwrap();
    assert!((28..=30).contains(&ttl), "{status}");
    assert!(second.headers().contains_key("age"));
    assert!(
        second.headers().get("server-timing").is_none(),
        "nothing ran"
    );
    assert_eq!(second.text().await.unwrap(), body);

    // HEAD is answered from the GET's entry, without a body.
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(placement(&head), "cache");
    assert_eq!(header(&head, "content-length"), body.len().to_string());

    // Another query is another key; a client's no-cache goes forward (and refreshes it).
    let other = client().get(format!("{url}&x=1")).send().await.unwrap();
    assert_eq!(
        header(&other, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    let bypass = client()
        .get(&url)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&bypass, "cache-status"),
        "poplar; fwd=request; stored"
    );
    // Methods other than GET and HEAD are not cached on a route that is not pure.
    let post = client().post(&url).body("x").send().await.unwrap();
    assert_eq!(header(&post, "cache-status"), "poplar; fwd=method");
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_freshness_expiry_no_store_and_private() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    let get = |path: &str| client().get(format!("{}{path}", edge.base)).send();

    let a = get("/site/a?cc=max-age=1").await.unwrap();
    assert_eq!(header(&a, "cache-status"), "poplar; fwd=uri-miss; stored");
    let b = get("/site/a?cc=max-age=1").await.unwrap();
    assert_eq!(placement(&b), "cache");
    assert_eq!(header(&b, "x-origin-count"), header(&a, "x-origin-count"));
    // Past max-age it is stale: forward again, and store the new answer.
    edge.running.clock.advance(Duration::from_millis(2100));
    let c = get("/site/a?cc=max-age=1").await.unwrap();
    assert_eq!(header(&c, "cache-status"), "poplar; fwd=stale; stored");
    assert_ne!(header(&c, "x-origin-count"), header(&a, "x-origin-count"));

    for cc in ["no-store", "private,max-age=60"] {
        let path = format!("/site/never?cc={cc}");
        let first = get(&path).await.unwrap();
        let status = header(&first, "cache-status");
        assert!(
            status.starts_with("poplar; fwd=uri-miss; detail="),
            "{cc}: {status}"
        );
        let second = get(&path).await.unwrap();
        assert!(
            header(&second, "cache-status").starts_with("poplar; fwd=uri-miss"),
            "{cc} was stored"
        );
        assert_ne!(
            header(&first, "x-origin-count"),
            header(&second, "x-origin-count")
        );
    }
    // Nothing said and no route default: not stored.
    let plain = get("/site/plain").await.unwrap();
    assert_eq!(
        header(&plain, "cache-status"),
        "poplar; fwd=uri-miss; detail=no-freshness"
    );
    // A route without cache: no Cache-Status at all.
    let uncached = get("/nocache/x?cc=max-age=60").await.unwrap();
    assert_eq!(header(&uncached, "cache-status"), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    let url = format!("{}/site/v?cc=max-age=60&vary=accept-language", edge.base);
    let get = |lang: &'static str| client().get(&url).header("accept-language", lang).send();

    let en = get("en").await.unwrap();
    assert_eq!(header(&en, "cache-status"), "poplar; fwd=uri-miss; stored");
    let fr = get("fr").await.unwrap();
    assert_eq!(header(&fr, "cache-status"), "poplar; fwd=vary-miss; stored");
    let en2 = get("en").await.unwrap();
    let fr2 = get("fr").await.unwrap();
    assert_eq!(
        (placement(&en2), placement(&fr2)),
        ("cache".into(), "cache".into())
    );
    assert_eq!(
        header(&en2, "x-origin-count"),
        header(&en, "x-origin-count")
    );
    assert_eq!(
        header(&fr2, "x-origin-count"),
        header(&fr, "x-origin-count")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_run_once() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = free_addr();
    let edge = edge(origin.addr, admin, "{}");

    let burst = |path: String| {
        let url = format!("{}{path}", edge.base);
        (0..100)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let resp = client()
                        .get(url)
                        .header("x-echo-set-cache-control", "max-age=60")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    (header(&resp, "cache-status"), resp.text().await.unwrap())
                })
            })
            .collect::<Vec<_>>()
    };
    // An origin that takes 300 ms: 100 requests for one cold key reach it once.
    let mut statuses = Vec::new();
    for h in burst("/site/slow?cc=max-age=60&delay_ms=300".into()) {
        statuses.push(h.await.unwrap().0);
    }
    assert_eq!(origin.hits(), 1, "{statuses:?}");
    assert!(statuses.iter().any(|s| s.contains("collapsed")));

    // A task that takes 300 ms: it runs once.
    let mut bodies = Vec::new();
    for h in burst("/echo/slow?sleep_ms=300".into()).into_iter() {
        bodies.push(h.await.unwrap());
    }
    let stats = common::admin_stats(admin).await;
    assert_eq!(stats["placements"]["echo"]["edge/pinned"], 1, "{stats}");
    assert!(
        stats["cache"]["coalesced_waits"].as_u64().unwrap() >= 99 + 99,
        "{stats}"
    );
    let _ = bodies;
}

#[tokio::test(flavor = "multi_thread")]
async fn pure_routes_cache_by_body() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    let post = |body: &'static str| {
        client()
            .post(format!("{}/pure", edge.base))
            .body(body)
            .send()
    };
    let a = post("one").await.unwrap();
    assert_eq!(header(&a, "cache-status"), "poplar; fwd=uri-miss; stored");
    let b = post("one").await.unwrap();
    assert_eq!(placement(&b), "cache");
    assert_eq!(b.text().await.unwrap(), "one");
    let c = post("two").await.unwrap();
    assert_eq!(header(&c, "cache-status"), "poplar; fwd=uri-miss; stored");
    assert_eq!(c.text().await.unwrap(), "two");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_serves_stale_and_refreshes() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    let url = format!(
        "{}/site/swr?cc=max-age=1,stale-while-revalidate=60",
        edge.base
    );
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    edge.running.clock.advance(Duration::from_millis(2100));

    let stale = client().get(&url).send().await.unwrap();
    assert_eq!(placement(&stale), "cache");
    assert!(header(&stale, "cache-status").ends_with("detail=stale-while-revalidate"));
    assert_eq!(
        header(&stale, "x-origin-count"),
        header(&first, "x-origin-count")
    );

    // The refresh ran in the background: soon a fresh hit carries the new answer.
    let started = Instant::now();
    loop {
        let resp = client().get(&url).send().await.unwrap();
        let status = header(&resp, "cache-status");
        if status.starts_with("poplar; hit; ttl=") && !status.contains("detail") {
            assert_ne!(
                header(&resp, "x-origin-count"),
                header(&first, "x-origin-count")
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never refreshed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_serves_stale_when_the_region_is_down() {
    let key = Key::new();
    let region = start_region(&key, &["echo"]);
    let edge = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 1h }}\nregions:\n  only: {{ address: \"{}\" }}\ntasks:\n  echo:\n    wasm: echo.wasm\nroutes:\n  - match: {{ path_prefix: /echo }}\n    task: echo\n    placement: region\n    cache: {{}}\n",
        key.path(),
        region.addr
    ));
    let url = format!("{}/echo/report", edge.base);
    let first = client()
        .get(&url)
        .header("x-echo-set-cache-control", "max-age=1, stale-if-error=60")
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&first), "region; name=only; reason=pinned");
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );

    region.stop();
    edge.running.clock.advance(Duration::from_millis(2100));
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(placement(&resp), "cache");
    let status = header(&resp, "cache-status");
    assert!(
        status.starts_with("poplar; hit; ttl=-") && status.ends_with("detail=stale-if-error"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_replaces_a_regions_5xx() {
    let key = Key::new();
    let region = start_region(&key, &["echo"]);
    let edge = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 1h }}\nregions:\n  only: {{ address: \"{}\" }}\ntasks:\n  echo:\n    wasm: echo.wasm\nroutes:\n  - match: {{ path_prefix: /echo }}\n    task: echo\n    placement: region\n    cache: {{}}\n",
        key.path(),
        region.addr
    ));
    // The region runs it past its deadline (5 s) and answers 504: the stale entry answers.
    let url = format!("{}/echo/slow", edge.base);
    common::stale_if_error_covers_a_deadline(&edge, &url, 8000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_byte_budget_holds_under_large_responses() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = free_addr();
    let edge = edge(origin.addr, admin, "{ memory: 1MiB, max_entry: 512KiB }");
    for i in 0..60 {
        let resp = client()
            .get(format!(
                "{}/site/big{i}?cc=max-age=60&size=100000",
                edge.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.bytes().await.unwrap().len(), 100_000);
    }
    let too_big = client()
        .get(format!("{}/site/huge?cc=max-age=60&size=600000", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&too_big, "cache-status"),
        "poplar; fwd=uri-miss; detail=too-large"
    );
    let stats = common::admin_stats(admin).await;
    let used = stats["cache"]["bytes_in_use"].as_u64().unwrap();
    assert!(used <= 1 << 20, "{stats}");
    assert!(stats["cache"]["entries"].as_u64().unwrap() < 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_by_prefix_task_and_route() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = free_addr();
    let edge = edge(origin.addr, admin, "{}");
    let get = |path: &str| client().get(format!("{}{path}", edge.base)).send();
    let purge = |query: &str| {
        client()
            .post(format!("http://{admin}/purge?{query}"))
            .send()
    };
    for path in [
        "/site/a/1?cc=max-age=60",
        "/site/a/2?cc=max-age=60",
        "/site/b?cc=max-age=60",
        "/hello/x",
    ] {
        get(path).await.unwrap();
        assert_eq!(placement(&get(path).await.unwrap()), "cache", "{path}");
    }
    let purged: serde_json::Value = purge("prefix=/site/a").await.unwrap().json().await.unwrap();
    assert_eq!(purged["purged"], 2);
    assert_eq!(
        header(
            &get("/site/a/1?cc=max-age=60").await.unwrap(),
            "cache-status"
        ),
        "poplar; fwd=uri-miss; stored"
    );
    assert_eq!(
        placement(&get("/site/b?cc=max-age=60").await.unwrap()),
        "cache"
    );

    let purged: serde_json::Value = purge("task=hello").await.unwrap().json().await.unwrap();
    assert_eq!(purged["purged"], 1);
    assert_ne!(placement(&get("/hello/x").await.unwrap()), "cache");
    // Route 3 is /site.
    let purged: serde_json::Value = purge("route=3").await.unwrap().json().await.unwrap();
    assert_eq!(purged["purged"], 2);
    assert_eq!(purge("nonsense").await.unwrap().status(), 400);

    // A form posted from another site's page (what a browser sends) changes nothing.
    get("/site/b?cc=max-age=60").await.unwrap();
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let resp = client()
            .post(format!("http://{admin}/purge?prefix=/"))
            .header(name, value)
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{name}: {value}");
    }
    assert_eq!(
        placement(&get("/site/b?cc=max-age=60").await.unwrap()),
        "cache"
    );
    let same = client()
        .post(format!("http://{admin}/purge?prefix=/"))
        .header("origin", format!("http://{admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200, "the endpoint's own page may");
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_requests_and_invalidation() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    let url = format!("{}/hello/etag", edge.base);
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );

    // With validators: the echo task sets the ETag and Last-Modified it is asked for.
    let doc = format!("{}/echo/doc", edge.base);
    let stored = client()
        .get(&doc)
        .header("x-echo-set-cache-control", "max-age=60")
        .header("x-echo-set-etag", "\"v1\"")
        .header("x-echo-set-last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&stored, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    let cases = [
        ("if-none-match", "\"v1\"", 304),
        ("if-none-match", "W/\"v1\", \"v0\"", 304),
        ("if-none-match", "\"v2\"", 200),
        ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT", 304),
        ("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT", 200),
    ];
    for (name, value, want) in cases {
        let resp = client().get(&doc).header(name, value).send().await.unwrap();
        assert_eq!(resp.status(), want, "{name}: {value}");
        assert_eq!(placement(&resp), "cache");
        if want == 304 {
            assert_eq!(header(&resp, "etag"), "\"v1\"");
            assert_eq!(resp.bytes().await.unwrap().len(), 0);
        }
    }

    // A successful POST to the URI invalidates what was stored for it.
    let site = format!("{}/site/doc?cc=max-age=60", edge.base);
    client().get(&site).send().await.unwrap();
    assert_eq!(
        placement(&client().get(&site).send().await.unwrap()),
        "cache"
    );
    let post = client().post(&site).body("change").send().await.unwrap();
    assert_eq!(header(&post, "cache-status"), "poplar; fwd=method");
    let after = client().get(&site).send().await.unwrap();
    assert_eq!(
        header(&after, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
}

/// POSTs `body` to a pure route whose answers go stale after a second, until the background
/// refresh has stored a fresh answer; returns that answer's body. The refresh must replay
/// the request it refreshes, body and method included: the key holds the body's hash.
async fn refreshed_pure_answer(edge: &Edge, body: &'static str) -> String {
    let base = &edge.base;
    let post = || {
        client()
            .post(format!("{base}/pure"))
            .header(
                "x-echo-set-cache-control",
                "max-age=1, stale-while-revalidate=60",
            )
            .body(body)
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    edge.running.clock.advance(Duration::from_millis(2100));
    let stale = post().await.unwrap();
    assert!(
        header(&stale, "cache-status").ends_with("detail=stale-while-revalidate"),
        "{}",
        header(&stale, "cache-status")
    );
    assert_eq!(stale.text().await.unwrap(), body);
    let started = Instant::now();
    loop {
        let resp = post().await.unwrap();
        let status = header(&resp, "cache-status");
        if status.starts_with("poplar; hit; ttl=") && !status.contains("detail") {
            return resp.text().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never refreshed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pure_routes_refresh_replays_its_body_inline() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr, free_addr(), "{}");
    assert_eq!(
        refreshed_pure_answer(&edge, "payload-one").await,
        "payload-one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pure_routes_refresh_replays_its_body_in_a_region() {
    let key = Key::new();
    let region = start_region(&key, &["echo"]);
    let edge = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 1h }}\nregions:\n  only: {{ address: \"{}\" }}\ntasks:\n  echo:\n    wasm: echo.wasm\nroutes:\n  - match: {{ path_prefix: /pure }}\n    task: echo\n    placement: region\n    cache: {{ pure: true }}\n",
        key.path(),
        region.addr
    ));
    assert_eq!(
        refreshed_pure_answer(&edge, "payload-two").await,
        "payload-two"
    );
}

/// An origin that answers every request with a chunked body of `size` bytes, cacheable.
fn chunked_origin(size: usize) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let head = "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            let body = format!("{size:x}\r\n{}\r\n0\r\n\r\n", "x".repeat(size));
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body.as_bytes());
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_unknown_length_is_not_called_stored_before_it_is() {
    for (size, cached) in [(600_000, false), (1_000, true)] {
        let origin = chunked_origin(size);
        let edge = start_edge(&format!(
            "role: edge\nlisten: LISTEN\nthreads: 1\ncache: {{ memory: 1MiB, max_entry: 512KiB }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"{origin}\"\n    cache: {{}}\n"
        ));
        let url = format!("{}/big", edge.base);
        let first = client().get(&url).send().await.unwrap();
        assert_eq!(header(&first, "cache-status"), "poplar; fwd=uri-miss");
        assert_eq!(first.bytes().await.unwrap().len(), size);
        let second = client().get(&url).send().await.unwrap();
        assert_eq!(placement(&second) == "cache", cached, "{size} bytes");
        assert_eq!(second.bytes().await.unwrap().len(), size);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_cannot_speak_for_the_cache_or_for_poplar() {
    let edge = start_edge(
        "role: edge\nlisten: LISTEN\nthreads: 1\ntasks:\n  echo:\n    wasm: echo.wasm\nroutes:\n  - match: { path_prefix: /echo }\n    task: echo\n",
    );
    let resp = client()
        .get(format!("{}/echo", edge.base))
        .header("x-echo-set-cache-status", "poplar; hit; ttl=999")
        .header("x-echo-set-x-poplar-placement", "cache")
        .header("x-echo-set-x-kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-kept"),
        "yes",
        "the task's own headers pass"
    );
    assert_eq!(
        header(&resp, "cache-status"),
        "",
        "not on a route without cache"
    );
    assert_eq!(placement(&resp), "edge; reason=pinned");
}

#[tokio::test(flavor = "multi_thread")]
async fn variants_of_one_url_do_not_wait_on_each_others_fill() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let admin = free_addr();
    let edge = edge(origin.addr, admin, "{}");
    let url = format!(
        "{}/site/v?cc=max-age=60&vary=accept-language&delay_ms=300",
        edge.base
    );
    let get = |lang: &'static str| {
        client()
            .get(url.clone())
            .header("accept-language", lang)
            .send()
    };
    get("en").await.unwrap();
    let coalesced = || async {
        common::admin_stats(admin).await["cache"]["coalesced_waits"]
            .as_u64()
            .unwrap()
    };
    let before = coalesced().await;
    let (fr, de) = tokio::join!(get("fr"), get("de"));
    assert_eq!(fr.unwrap().status(), 200);
    assert_eq!(de.unwrap().status(), 200);
    assert_eq!(coalesced().await, before, "fr and de filled side by side");
    let (a, b) = tokio::join!(get("it"), get("it"));
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    assert_eq!(coalesced().await, before + 1, "one variant still coalesces");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_fails_over_to_another_region_as_a_forward_does() {
    let key = Key::new();
    let (east, west) = (start_region(&key, &["echo"]), start_region(&key, &["echo"]));
    let edge = start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nforwarding: {{ key_file: {} }}\nhealth: {{ interval: 1h }}\nregions:\n  east: {{ address: \"{}\" }}\n  west: {{ address: \"{}\" }}\ntasks:\n  echo:\n    wasm: echo.wasm\nroutes:\n  - match: {{ path_prefix: /echo }}\n    task: echo\n    placement: region\n    region: east\n    cache: {{}}\n",
        key.path(),
        east.addr,
        west.addr
    ));
    let get = || {
        client()
            .get(format!("{}/echo/r", edge.base))
            .header(
                "x-echo-set-cache-control",
                "max-age=1, stale-while-revalidate=60",
            )
            .send()
    };
    let first = get().await.unwrap();
    assert_eq!(placement(&first), "region; name=east; reason=pinned");
    east.stop();
    edge.running.clock.advance(Duration::from_millis(2100));
    let stale = get().await.unwrap();
    assert!(header(&stale, "cache-status").ends_with("detail=stale-while-revalidate"));
    // The refresh finds east gone (the edge has not probed it) and asks west.
    let started = Instant::now();
    loop {
        let status = header(&get().await.unwrap(), "cache-status");
        if status.starts_with("poplar; hit; ttl=") && !status.contains("detail") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never refreshed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(west);
}

/// With a token, `POST /purge` needs it (401 without, 403 with another); the reads stay
/// open unless `guard_reads`.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_guards_changes_and_with_guard_reads_the_reads() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let token = "test-admin-token-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    for guard_reads in [false, true] {
        let admin = free_addr();
        let _edge = start_edge(&format!(
            "role: edge\nlisten: LISTEN\nthreads: 1\nadmin: {{ listen: \"{admin}\", token_file: {:?}, guard_reads: {guard_reads} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: 127.0.0.1:9\n",
            token_file.display().to_string()
        ));
        let ask = |method: reqwest::Method, path: &str, bearer: Option<&str>| {
            let mut req = client().request(method, format!("http://{admin}{path}"));
            if let Some(bearer) = bearer {
                req = req.bearer_auth(bearer);
            }
            req.send()
        };
        let open = ask(reqwest::Method::POST, "/purge?prefix=/", None)
            .await
            .unwrap();
        assert_eq!(open.status(), 401);
        assert_eq!(
            header(&open, "www-authenticate"),
            "Bearer realm=\"poplar admin\""
        );
        let wrong = ask(
            reqwest::Method::POST,
            "/purge?prefix=/",
            Some("not-the-token"),
        );
        assert_eq!(wrong.await.unwrap().status(), 403);
        let right = ask(reqwest::Method::POST, "/purge?prefix=/", Some(token));
        assert_eq!(right.await.unwrap().status(), 200);
        for path in ["/stats", "/metrics"] {
            let bare = ask(reqwest::Method::GET, path, None)
                .await
                .unwrap()
                .status();
            assert_eq!(bare, if guard_reads { 401 } else { 200 }, "{path}");
            let with = ask(reqwest::Method::GET, path, Some(token)).await.unwrap();
            assert_eq!(with.status(), 200, "{path}");
        }
    }
}
