//! A TCP relay that puts a region "far away" on loopback: every chunk sent towards the
//! target waits `--delay-ms` first (one round trip's worth), replies pass straight back.
//! Used by `scripts/bench.sh`'s mixed scenario.
//!
//!   cargo run --release --example relay -- --listen 127.0.0.1:9100 --to 127.0.0.1:8181 --delay-ms 20

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listen: SocketAddr = arg("--listen")
        .and_then(|a| a.parse().ok())
        .expect("--listen ADDR");
    let target: SocketAddr = arg("--to").and_then(|a| a.parse().ok()).expect("--to ADDR");
    let delay = Duration::from_millis(arg("--delay-ms").and_then(|d| d.parse().ok()).unwrap_or(0));
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let up = async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = uw.shutdown().await;
            };
            let down = async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            };
            tokio::join!(up, down);
        });
    }
}
