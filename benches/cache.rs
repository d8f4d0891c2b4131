//! The cache's per-request work: building a key, a lookup that hits, and a store.
//! Run with `cargo bench --bench cache`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use std::hint::black_box;
use std::time::SystemTime;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use poplar::cache::{Cache, Filing, KeyParts, Lookup, Tags, policy, primary_key};
use poplar::config::CacheSpec;

fn cache(c: &mut Criterion) {
    let parts = KeyParts {
        route: 3,
        version: "9f2c1e0b7a6d5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3",
        method: "GET",
        host: "www.example.com",
        path_and_query: "/products/12345?color=blue&size=m",
        body: None,
    };
    c.bench_function("cache key", |b| b.iter(|| primary_key(black_box(&parts))));

    let cache = Cache::new(CacheSpec::default());
    let request = http::Request::builder()
        .uri("/products/12345?color=blue&size=m")
        .header("host", "www.example.com")
        .header("accept-encoding", "gzip")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let response = http::Response::builder()
        .header("content-type", "text/html")
        .header("cache-control", "public, max-age=3600")
        .header("vary", "accept-encoding")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let filing = Filing {
        key: primary_key(&parts),
        tags: Tags {
            route: 3,
            task: None,
            path: "/products/12345".into(),
        },
        request: request.clone(),
        by_body: false,
        version: None,
        siblings: None,
    };
    let now = SystemTime::now();
    let body = Bytes::from(vec![b'x'; 4096]);
    let verdict = policy::judge(&request, &response, None, now).unwrap();
    assert!(cache.store(&filing, verdict.clone(), &response, body.clone()));

    c.bench_function("cache lookup, hit (4 KiB, Vary)", |b| {
        b.iter(
            || match cache.lookup(black_box(&filing.key), &request, SystemTime::now()) {
                Lookup::Fresh(entry) => entry,
                _ => panic!("miss"),
            },
        )
    });
    c.bench_function("cache judge + store (4 KiB)", |b| {
        b.iter(|| {
            let verdict = policy::judge(&request, &response, None, now).unwrap();
            cache.store(&filing, verdict, &response, body.clone())
        })
    });
}

criterion_group!(benches, cache);
criterion_main!(benches);
