//! Pingora alone, for `scripts/bench.sh` to measure beside Poplar in the same run: the
//! smallest `ProxyHttp` that proxies every request to `--origin` (or, without it, answers
//! 200 from `request_filter`), with Poplar's settings (1 thread unless `--threads`, one
//! single-threaded runtime per thread, jemalloc). What Poplar adds is the difference.
//!
//!   cargo run --release --example bare_pingora -- --listen 127.0.0.1:9200 --origin 127.0.0.1:8080
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod common;
use common::arg;

struct Bare {
    origin: Option<String>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<bool> {
        if self.origin.is_some() {
            return Ok(false);
        }
        let mut head = ResponseHeader::build(200, Some(2))?;
        head.insert_header("content-length", "6")?;
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(b"hello\n")), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let origin = self.origin.clone().unwrap_or_default();
        Ok(Box::new(HttpPeer::new(origin, false, String::new())))
    }
}

fn main() {
    let listen = arg("--listen").expect("--listen ADDR");
    let threads = arg("--threads").and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf = ServerConf {
        threads,
        work_stealing: false,
        // Stop at once on SIGTERM, as `poplar serve` does with no task running.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            origin: arg("--origin"),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
