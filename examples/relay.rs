//! A TCP relay that puts a region "far away" on loopback: every chunk sent towards the
//! target waits `--delay-ms` first (one round trip's worth), replies pass straight back.
//! Used by `scripts/bench.sh`'s mixed scenario.
//!
//!   cargo run --release --example relay -- --listen 127.0.0.1:9100 --to 127.0.0.1:8181 --delay-ms 20
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpListener;

mod common;
use common::arg;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let listen: SocketAddr = arg("--listen")
        .and_then(|a| a.parse().ok())
        .expect("--listen ADDR");
    let target: SocketAddr = arg("--to").and_then(|a| a.parse().ok()).expect("--to ADDR");
    let delay_ms = Arc::new(AtomicU64::new(
        arg("--delay-ms").and_then(|d| d.parse().ok()).unwrap_or(0),
    ));
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(poplar::demo::relay(client, target, delay_ms.clone()));
    }
}
