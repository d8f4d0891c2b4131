//! End-to-end: the cache's HTTP rules (RFC 9111) through an origin route, with a real client:
//! validation of stale entries, stale-if-error on a 5xx, and a request's own directives.
//! (`scripts/cache-conformance.sh` runs the whole http-cache-tests suite; these hold the
//! rules it found missing.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::time::Duration;

use common::{Edge, client, free_addr, header, placement, start_edge};
use poplar::demo::Origin;

fn edge(origin: std::net::SocketAddr) -> Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nadmin: {{ listen: \"{}\" }}\nroutes:\n  - match: {{ path_prefix: /site }}\n    origin: \"{origin}\"\n    cache: {{ ttl: 60s }}\n",
        free_addr()
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_entry_is_validated_and_a_304_freshens_it() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr);
    let url = format!("{}/site/v?cc=max-age=1&etag=v1", edge.base);
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(
        header(&first, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    assert_eq!(header(&first, "x-origin-count"), "1");
    // The edge says what it is to the origin (Surrogate-Control may target it).
    let seen = header(&first, "x-origin-header-names");
    assert!(
        seen.split(',').any(|h| h == "surrogate-capability"),
        "{seen}"
    );
    let body = first.text().await.unwrap();

    // Stale: the edge asks with the stored ETag, the origin says 304, and the client gets
    // the stored body with the headers the 304 brought (its count: the second request).
    edge.running.clock.advance(Duration::from_millis(2100));
    let validated = client().get(&url).send().await.unwrap();
    assert_eq!(validated.status(), 200);
    assert_eq!(
        header(&validated, "cache-status"),
        "poplar; fwd=stale; stored; detail=revalidated"
    );
    assert_eq!(header(&validated, "x-origin-count"), "2");
    assert_eq!(header(&validated, "etag"), "\"v1\"");
    assert_eq!(validated.text().await.unwrap(), body);
    assert_eq!(origin.hits(), 2);

    // Fresh again, with the updated headers, from the cache.
    let hit = client().get(&url).send().await.unwrap();
    assert_eq!(placement(&hit), "cache");
    assert_eq!(header(&hit, "x-origin-count"), "2");
    assert_eq!(hit.text().await.unwrap(), body);
    assert_eq!(origin.hits(), 2);

    // A client's own validator is answered from the freshened entry.
    let conditional = client()
        .get(&url)
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), 304);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_is_replaced_by_the_stale_entry_while_stale_if_error_allows() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr);
    let url = format!("{}/site/e?cc=max-age=1,stale-if-error=60", edge.base);
    let first = client().get(&url).send().await.unwrap();
    let body = first.text().await.unwrap();
    edge.running.clock.advance(Duration::from_millis(2100));

    let failing = || client().get(&url).header("x-origin-status", "503").send();
    let stale = failing().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(
        header(&stale, "cache-status").ends_with("detail=stale-if-error"),
        "{}",
        header(&stale, "cache-status")
    );
    assert_eq!(stale.text().await.unwrap(), body);

    // Past the allowance the 503 goes through.
    edge.running.clock.advance(Duration::from_secs(61));
    assert_eq!(failing().await.unwrap().status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_says_what_it_accepts() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr);
    let url = format!("{}/site/r?cc=max-age=3600", edge.base);
    let with = |cc: &'static str| client().get(&url).header("cache-control", cc).send();

    // only-if-cached with nothing stored: 504, and nothing asked of the origin.
    let none = with("only-if-cached").await.unwrap();
    assert_eq!(none.status(), 504);
    assert_eq!(origin.hits(), 0);
    // no-store: neither taken from the cache nor stored in it.
    let no_store = with("no-store").await.unwrap();
    assert_eq!(header(&no_store, "cache-status"), "poplar; fwd=request");
    assert_eq!(with("only-if-cached").await.unwrap().status(), 504);

    client().get(&url).send().await.unwrap();
    assert_eq!(placement(&with("only-if-cached").await.unwrap()), "cache");
    // Ten seconds old: too old for max-age=5, not for max-age=60; min-fresh past its hour
    // goes forward.
    edge.running.clock.advance(Duration::from_secs(10));
    assert_eq!(placement(&with("max-age=60").await.unwrap()), "cache");
    let too_old = with("max-age=5").await.unwrap();
    assert!(header(&too_old, "cache-status").starts_with("poplar; fwd=stale"));
    let fresh_enough = with("min-fresh=7200").await.unwrap();
    assert!(header(&fresh_enough, "cache-status").starts_with("poplar; fwd=stale"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsafe_method_invalidates_the_uris_its_answer_names() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr);
    let get = |path: &'static str| client().get(format!("{}{path}", edge.base)).send();
    for path in ["/site/target", "/site/other"] {
        get(path).await.unwrap();
        assert_eq!(placement(&get(path).await.unwrap()), "cache", "{path}");
    }
    let post = client()
        .post(format!("{}/site/post?location=/site/target", edge.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&post, "location"), "/site/target");
    let again = get("/site/target").await.unwrap();
    assert_eq!(
        header(&again, "cache-status"),
        "poplar; fwd=uri-miss; stored"
    );
    assert_eq!(placement(&get("/site/other").await.unwrap()), "cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_served_from_a_stored_whole_response() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr);
    let url = format!("{}/site/video?size=100&etag=v1", edge.base);
    let ranged = |range: &'static str| client().get(&url).header("range", range).send();

    // A miss goes to the origin as it is, and its answer is not stored.
    let miss = ranged("bytes=0-9").await.unwrap();
    assert!(header(&miss, "cache-status").starts_with("poplar; fwd=uri-miss"));
    assert!(!header(&miss, "cache-status").contains("stored"));
    let whole = client().get(&url).send().await.unwrap();
    let body = whole.bytes().await.unwrap();
    assert_eq!(body.len(), 100);

    let part = ranged("bytes=10-19").await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(placement(&part), "cache");
    assert_eq!(header(&part, "content-range"), "bytes 10-19/100");
    assert_eq!(part.bytes().await.unwrap(), body.slice(10..20));
    let suffix = ranged("bytes=-5").await.unwrap();
    assert_eq!(header(&suffix, "content-range"), "bytes 95-99/100");
    assert_eq!(suffix.bytes().await.unwrap(), body.slice(95..));
    assert_eq!(ranged("bytes=100-").await.unwrap().status(), 416);

    // If-Range: the part only while the stored response is the one the client has.
    let same = client()
        .get(&url)
        .header("range", "bytes=0-0")
        .header("if-range", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 206);
    let changed = client()
        .get(&url)
        .header("range", "bytes=0-0")
        .header("if-range", "\"v0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.bytes().await.unwrap(), body);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_inline_run_is_replaced_by_the_stale_entry_while_stale_if_error_allows() {
    let edge = start_edge(
        "role: edge\nlisten: LISTEN\ntasks:\n  echo:\n    wasm: echo.wasm\n    limits: { timeout: 300ms }\nroutes:\n  - match: { path_prefix: /echo }\n    task: echo\n    cache: {}\n",
    );
    // Past its deadline: a 504 from the edge, unless the stale entry may answer.
    let url = format!("{}/echo/s", edge.base);
    let failed = common::stale_if_error_covers_a_deadline(&edge, &url, 5000).await;
    assert_eq!(header(&failed, "x-poplar-error"), "deadline");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_response_keeps_its_date_beside_its_age() {
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let edge = edge(origin.addr);
    let url = format!("{}/site/d?cc=max-age=60", edge.base);
    let first = client().get(&url).send().await.unwrap();
    let date = header(&first, "date");
    assert!(!date.is_empty());
    // Past the next second of the wall clock, so that a Date made now would differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = client().get(&url).send().await.unwrap();
    assert_eq!(placement(&hit), "cache");
    assert_eq!(header(&hit, "date"), date, "the origin's Date, not now");
    assert!(header(&hit, "age").parse::<u64>().unwrap() >= 1);
}
