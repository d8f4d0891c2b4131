//! The placement decision: the pure admission function, the whole `Placer::place` for a hot
//! resident task (heat bookkeeping, decision, taking a slot), and region choice.
//! Run with `cargo bench --bench placement`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use poplar::config::{HealthSpec, Limits, Mode, PlacementSpec, RegionSpec, TaskSpec};
use poplar::placement::admission::{Facts, Residency, decide};
use poplar::placement::{Placement, Placer};
use poplar::regions::{Attempts, Regions};
use poplar::wasm::{Capacity, Runtime};

fn placement(c: &mut Criterion) {
    let facts = Facts {
        mode: Mode::Auto,
        hot: true,
        below_floor: false,
        residency: Residency::Ready,
        fits: true,
        cooling_off: false,
        paused: false,
        body_len: Some(0),
        max_inline_body: 64 << 10,
        slot_free: true,
    };
    c.bench_function("admission decide", |b| b.iter(|| decide(black_box(&facts))));

    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks/dist/hello.wasm");
    let limits = Limits {
        memory: 16 << 20,
        timeout: Duration::from_millis(50),
        max_body: 64 << 10,
    };
    let spec = TaskSpec {
        name: "hello".into(),
        wasm: Some(wasm),
        limits,
    };
    let runtime = Arc::new(
        Runtime::new(Capacity {
            instances: 16,
            max_memory: 16 << 20,
            guest_memory: 16 * (16 << 20),
        })
        .unwrap(),
    );
    let hello = Arc::new(
        runtime
            .load(&spec)
            .expect("run scripts/build-tasks.sh first"),
    );
    let placer = Arc::new(Placer::new(
        PlacementSpec::default(),
        runtime,
        [spec],
        vec![hello],
    ));
    for _ in 0..10 {
        let _ = placer.place("hello", Mode::Auto, Some(0)); // make it hot
    }
    c.bench_function("placer place (hot, resident, slot free)", |b| {
        b.iter(
            || match placer.place(black_box("hello"), Mode::Auto, Some(0)) {
                Placement::Inline { slot, .. } => drop(slot),
                Placement::Forward(reason) => panic!("forwarded: {reason:?}"),
                Placement::Unknown => panic!("hello is unknown"),
            },
        )
    });

    let specs = (0..4).map(|i| RegionSpec {
        name: format!("r{i}"),
        address: std::net::SocketAddr::from(([127, 0, 0, 1], 8000 + i)).into(),
    });
    let regions = Regions::new(specs.collect(), HealthSpec::default());
    for i in 0..4 {
        let probed = poplar::regions::health::Probed {
            elapsed: Duration::from_millis(10 + i as u64 * 7),
            deadline: None,
        };
        regions.record_probe(i, Ok(probed));
    }
    c.bench_function("region choice, 4 regions", |b| {
        b.iter(|| Attempts::new(black_box(Some(1))).next(&regions).is_some())
    });
}

criterion_group!(benches, placement);
criterion_main!(benches);
