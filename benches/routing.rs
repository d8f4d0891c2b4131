//! Route matching over a realistic table: exact paths, prefixes, hosts and methods.
//! Run with `cargo bench --bench routing`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use criterion::{Criterion, criterion_group, criterion_main};
use poplar::config::{Match, Mode, PathMatch, RouteSpec, Target};
use poplar::routing::Router;
use std::hint::black_box;

fn table(n: usize) -> Vec<RouteSpec> {
    let origin = Target::Origin("127.0.0.1:9000".to_string());
    let mut routes: Vec<RouteSpec> = (0..n)
        .map(|i| RouteSpec {
            matcher: Match {
                host: (i % 3 == 0).then(|| format!("site{i}.example.com")),
                path: if i % 2 == 0 {
                    PathMatch::Prefix(format!("/app{i}"))
                } else {
                    PathMatch::Exact(format!("/app{i}/index.html"))
                },
                methods: (i % 5 == 0).then(|| vec!["GET".to_string()]),
            },
            target: Target::Task(format!("task{i}")),
            placement: Mode::Auto,
            region: None,
            cache: None,
        })
        .collect();
    routes.push(RouteSpec {
        matcher: Match {
            host: None,
            path: PathMatch::Prefix("/".into()),
            methods: None,
        },
        target: origin,
        placement: Mode::Edge,
        region: None,
        cache: None,
    });
    routes
}

fn routing(c: &mut Criterion) {
    for n in [8, 64] {
        let router = Router::new(&table(n));
        c.bench_function(&format!("route match, {n} routes, hit"), |b| {
            b.iter(|| {
                router.route(
                    black_box(Some("site0.example.com:8080")),
                    black_box("/app2/x/y"),
                    "GET",
                )
            })
        });
        c.bench_function(
            &format!("route match, {n} routes, fall through to /"),
            |b| {
                b.iter(|| {
                    router.route(
                        black_box(Some("other.test")),
                        black_box("/static/logo.png"),
                        "GET",
                    )
                })
            },
        );
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
