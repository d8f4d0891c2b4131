//! One inline execution of the `hello` task: take a slot, instantiate from the `ProxyPre`,
//! call the handler, collect the response body, drop the store.
//!
//! Reference in the same run: the same loop with a task that answers nothing (`trap`),
//! and the bare cost of taking a slot. Run with `cargo bench --bench inline`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use poplar::config::Limits;
use poplar::wasm::{Capacity, Runtime};

fn request() -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri("/hello?name=bench")
        .header("host", "bench.test")
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

fn inline(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks/dist");
    let wasm = std::fs::read(dir.join("hello.wasm")).expect("run scripts/build-tasks.sh first");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Arc::new(
        Runtime::new(Capacity {
            instances: 16,
            max_memory: 64 << 20,
            guest_memory: 16 * (64 << 20),
        })
        .unwrap(),
    );
    let limits = Limits {
        timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let hello = Arc::new(runtime.load_bytes("hello", &wasm, limits).unwrap());
    let id: Arc<str> = "bench".into();

    c.bench_function("slot only", |b| {
        b.to_async(&tokio).iter(|| {
            let runtime = runtime.clone();
            async move {
                runtime
                    .slot(tokio::time::Instant::now() + Duration::from_secs(1))
                    .await
                    .unwrap()
            }
        })
    });
    c.bench_function("hello: instantiate, call, collect", |b| {
        b.to_async(&tokio).iter(|| {
            let (runtime, hello, id) = (runtime.clone(), hello.clone(), id.clone());
            async move {
                let slot = runtime
                    .slot(tokio::time::Instant::now() + Duration::from_secs(1))
                    .await
                    .unwrap();
                let mut response = hello.call(slot, request(), id).await.unwrap();
                let (chunks, complete) = response
                    .collect_up_to(64 << 10, std::time::Duration::from_secs(1))
                    .await
                    .unwrap();
                assert!(complete && !chunks.is_empty());
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = inline
}
criterion_main!(benches);
