//! Task code: compiled components kept on disk (`code_cache:`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use common::{admin_stats, client, start_edge};

/// An edge whose `/hello` runs inline (loaded at start), keeping compiled code in `dir`.
fn pinned_edge(dir: &std::path::Path, admin: std::net::SocketAddr) -> common::Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 1\nadmin: {{ listen: \"{admin}\" }}\ncode_cache: {{ dir: \"{}\" }}\ntasks:\n  hello: {{ wasm: hello.wasm }}\nroutes:\n  - match: {{ path_prefix: /hello }}\n    task: hello\n",
        dir.display()
    ))
}

/// `(compiled, loaded)` since the edge started.
async fn code_counts(admin: std::net::SocketAddr) -> (u64, u64) {
    let code = &admin_stats(admin).await["code"];
    let count = |k: &str| {
        code[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no code.{k}: {code}"))
    };
    (count("compiled"), count("loaded"))
}

async fn hello_answers(edge: &common::Edge) {
    let resp = client()
        .get(format!("{}/hello/disk", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(common::placement(&resp), "edge; reason=pinned");
    assert_eq!(
        resp.text().await.unwrap(),
        "Hello, world!\npath: /hello/disk\nquery: \n"
    );
}

fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

/// Replaces `path` by a copy with one byte in its middle flipped, as damage on disk would leave
/// it. The copy is renamed over the file, never written into it: a component of the stopped edge
/// may still be mapped from the old file (its last handle can drop on another thread after
/// `stop`, reading the mapping as it goes), and a mapped file cut short or changed under it is a
/// SIGBUS or worse for that reader (the CI run of 415010b died of a SIGBUS from exactly that).
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let copy = path.with_extension("damaged");
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::rename(&copy, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_edge_loads_its_compiled_code_and_a_damaged_artifact_is_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_addr();

    // First start: nothing on disk, hello is compiled and kept.
    let edge = pinned_edge(dir.path(), admin);
    assert_eq!(code_counts(admin).await, (1, 0));
    hello_answers(&edge).await;
    edge.running.stop();
    let kept = artifacts(dir.path());
    assert_eq!(kept.len(), 1, "{kept:?}");

    // Restarted: hello is loaded from disk, nothing compiled, and it answers.
    let admin = common::free_addr();
    let edge = pinned_edge(dir.path(), admin);
    assert_eq!(code_counts(admin).await, (0, 1));
    hello_answers(&edge).await;
    edge.running.stop();

    // A damaged artifact (one byte in its code changed) is never run: compiled again.
    damage(&kept[0]);
    let admin = common::free_addr();
    let edge = pinned_edge(dir.path(), admin);
    assert_eq!(code_counts(admin).await, (1, 0));
    hello_answers(&edge).await;
    let text = common::metrics_text(admin).await;
    assert!(
        text.contains("poplar_code_ready_total{how=\"compiled\"} 1"),
        "{text}"
    );
    edge.running.stop();
    // And kept whole again: the next start loads it.
    let admin = common::free_addr();
    let _edge = pinned_edge(dir.path(), admin);
    assert_eq!(code_counts(admin).await, (0, 1));
}

#[test]
fn a_code_cache_folder_that_cannot_be_made_is_a_config_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "role: edge\nlisten: {}\ncode_cache: {{ dir: \"{}/sub\" }}\ntasks:\n  hello: {{ wasm: hello.wasm }}\nroutes:\n  - match: {{ path_prefix: /hello }}\n    task: hello\n",
        common::released_addr(),
        file.path().display()
    );
    let config = poplar::config::parse(&text, &common::tasks_dir()).unwrap();
    let source = common::tasks_dir().join("edge.yaml");
    let err = match poplar::server::Running::start(&config, &source) {
        Ok(_) => panic!("started with a code cache inside a file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("code_cache.dir: cannot use"), "{err}");
}
