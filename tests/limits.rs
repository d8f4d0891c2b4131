//! End-to-end: abusive guests are stopped at their limits with the right status, while
//! other requests keep being served; bodies over the limit get 413.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use bytes::Bytes;
use common::{Edge, client, start_edge};

/// An edge with `hello` and every abusive task, each at `/<task>`.
fn abusive_edge() -> Edge {
    let tasks = [
        "hello",
        "spin-forever",
        "memory-hog",
        "trap",
        "stack-overflow",
    ];
    let mut yaml = String::from("role: edge\nlisten: LISTEN\nthreads: 2\ntasks:\n");
    for t in tasks {
        yaml += &format!(
            "  {t}:\n    wasm: {t}.wasm\n    limits: {{ memory: 16MiB, timeout: 300ms, max_body: 1KiB }}\n"
        );
    }
    yaml += "routes:\n";
    for t in tasks {
        yaml += &format!("  - match: {{ path_prefix: /{t} }}\n    task: {t}\n");
    }
    start_edge(&yaml)
}

/// Sends `path` while two other clients keep asking for `hello`; every hello must succeed.
async fn abuse(edge: &Edge, path: &str) -> (u16, String, String) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hellos = Vec::new();
    for _ in 0..2 {
        let (url, stop) = (format!("{}/hello", edge.base), stop.clone());
        hellos.push(tokio::spawn(async move {
            let client = client();
            let mut served = 0;
            // Bounded: at most 2,000 requests per client, and it stops once the abuse is answered.
            while served < 2000 && (served < 5 || !stop.load(std::sync::atomic::Ordering::Relaxed))
            {
                let resp = client.get(&url).send().await.expect("hello is answered");
                assert_eq!(resp.status(), 200, "hello failed during abuse");
                assert!(resp.text().await.unwrap().starts_with("Hello, world!"));
                served += 1;
            }
            served
        }));
    }
    let resp = client()
        .get(format!("{}{path}", edge.base))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let kind = common::header(&resp, "x-poplar-error");
    let body = resp.text().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hellos {
        assert!(h.await.expect("hello client") >= 5);
    }
    (status, kind, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn abusive_guests_are_stopped_and_others_keep_being_served() {
    let edge = abusive_edge();
    let (status, kind, body) = abuse(&edge, "/spin-forever").await;
    assert_eq!((status, kind.as_str()), (504, "deadline"), "{body}");
    assert_eq!(body, "the task ran past its deadline\n");

    let (status, kind, body) = abuse(&edge, "/memory-hog").await;
    assert_eq!((status, kind.as_str()), (500, "memory"), "{body}");

    let (status, kind, body) = abuse(&edge, "/trap").await;
    assert_eq!((status, kind.as_str()), (500, "trap"), "{body}");
    assert!(
        body.contains("wasm `unreachable` instruction executed"),
        "{body}"
    );

    let (status, kind, body) = abuse(&edge, "/stack-overflow").await;
    assert_eq!((status, kind.as_str()), (500, "trap"), "{body}");
    assert!(body.contains("call stack exhausted"), "{body}");

    // Abuse leaves nothing behind: the same edge still runs every task.
    for _ in 0..3 {
        let (status, kind, _) = abuse(&edge, "/spin-forever").await;
        assert_eq!((status, kind.as_str()), (504, "deadline"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_abusers_do_not_take_the_server_down() {
    let edge = abusive_edge();
    let mut abusers = Vec::new();
    for i in 0..16 {
        let path = ["/spin-forever", "/memory-hog", "/trap", "/stack-overflow"][i % 4];
        let url = format!("{}{path}", edge.base);
        abusers.push(tokio::spawn(async move {
            client().get(url).send().await.unwrap().status().as_u16()
        }));
    }
    let (status, _, _) = abuse(&edge, "/trap").await;
    assert_eq!(status, 500);
    for a in abusers {
        assert!(matches!(a.await.unwrap(), 500 | 504));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_413() {
    let edge = abusive_edge();
    let url = format!("{}/hello", edge.base);
    let resp = client()
        .post(&url)
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "exactly max_body is fine");

    let resp = client()
        .post(&url)
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-poplar-error"], "too-large");

    // No declared length: refused once the body grows past the limit.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'y'; 512]))).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = client().post(&url).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-poplar-error"], "too-large");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execution_that_waits_for_a_slot_is_counted_and_then_runs() {
    let admin = common::free_addr();
    let edge = common::start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\nadmin: {{ listen: \"{admin}\" }}\nplacement: {{ max_inline: 1 }}\ntasks:\n  echo: {{ wasm: echo.wasm, limits: {{ timeout: 5s }} }}\nroutes:\n  - match: {{ path_prefix: /echo }}\n    task: echo\n"
    ));
    let slow = |base: String| async move {
        common::client()
            .get(format!("{base}/echo?sleep_ms=1500"))
            .send()
            .await
            .unwrap()
            .status()
    };
    let (a, b) = tokio::join!(slow(edge.base.clone()), slow(edge.base.clone()));
    assert_eq!(
        (a.as_u16(), b.as_u16()),
        (200, 200),
        "the second waited, then ran"
    );
    let text = common::metrics_text(admin).await;
    let waits = text
        .lines()
        .find_map(|l| l.strip_prefix("poplar_execution_slot_waits_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(waits, Some(1), "{text}");
}
