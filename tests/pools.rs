//! Origin pools: servers by address and by name, failover, HTTPS origins with their own CA,
//! the Host override, and WebSocket upgrades through an origin route.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{client, refusing_addr, start_edge};
use poplar::demo::Origin;
use rcgen::{CertificateParams, KeyPair};

fn origin() -> Origin {
    Origin::start("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[tokio::test]
async fn a_pool_with_a_dead_server_and_one_killed_mid_test_answers_every_request() {
    let (a, mut b) = (origin(), Some(origin()));
    let dead = refusing_addr();
    let yaml = format!(
        "role: edge\nlisten: LISTEN\nthreads: 2\norigins:\n  web:\n    servers: [\"{}\", \"{dead}\", \"{}\"]\n    eject: {{ failures: 1, duration: 30s }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: web\n",
        a.addr,
        b.as_ref().unwrap().addr
    );
    let edge = start_edge(&yaml);
    let client = client();
    for i in 0..60 {
        if i == 20 {
            b = None; // killed: its pooled connections and its port go away
        }
        let resp = client
            .get(format!("{}/r/{i}", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}: {:?}", resp.headers());
        assert_eq!(resp.text().await.unwrap(), format!("origin GET /r/{i}\n"));
    }
    assert!(b.is_none());
    assert!(
        a.hits() >= 40,
        "the server left standing took the rest: {}",
        a.hits()
    );
}

#[tokio::test]
async fn path_hash_keeps_each_path_on_one_server() {
    let (a, b, c) = (origin(), origin(), origin());
    let yaml = format!(
        "role: edge\nlisten: LISTEN\norigins:\n  web:\n    servers: [\"{}\", \"{}\", \"{}\"]\n    balance: path_hash\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: web\n",
        a.addr, b.addr, c.addr
    );
    let edge = start_edge(&yaml);
    let client = client();
    let hits = || [a.hits(), b.hits(), c.hits()];
    for i in 0..30 {
        let url = format!("{}/item/{i}", edge.base);
        let before = hits();
        client.get(&url).send().await.unwrap();
        let first: Vec<usize> = (0..3).filter(|&s| hits()[s] > before[s]).collect();
        for _ in 0..3 {
            let before = hits();
            client.get(&url).send().await.unwrap();
            let again: Vec<usize> = (0..3).filter(|&s| hits()[s] > before[s]).collect();
            assert_eq!(again, first, "/item/{i} moved");
        }
    }
    assert!(
        hits().iter().all(|&h| h > 0),
        "every server has paths: {:?}",
        hits()
    );
}

#[tokio::test]
async fn a_name_is_resolved_off_the_request_path_and_one_that_never_resolves_is_502_origin() {
    let a = origin();
    let yaml = format!(
        "role: edge\nlisten: LISTEN\norigins:\n  named:\n    servers: [\"localhost:{}\"]\n    host: backend.internal\n  nowhere:\n    servers: [\"no-such-host.invalid:80\"]\nroutes:\n  - match: {{ path_prefix: /gone }}\n    origin: nowhere\n  - match: {{ path_prefix: / }}\n    origin: named\n",
        a.addr.port()
    );
    let edge = start_edge(&yaml);
    let resp = client()
        .get(format!("{}/page", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-origin-host"],
        "backend.internal",
        "the Host override"
    );
    let resp = client()
        .get(format!("{}/gone", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-poplar-error"], "origin");
}

/// A test CA and an HTTPS origin whose certificate it issued for `localhost`.
struct HttpsOrigin {
    addr: SocketAddr,
    ca_pem: String,
}

fn https_origin() -> HttpsOrigin {
    let ca = common::test_ca();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let host = req.headers().get("host").cloned();
                            let mut resp = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(format!("secure origin {}\n", req.uri().path())),
                            ));
                            if let Some(host) = host {
                                resp.headers_mut().insert("x-origin-host", host);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
    });
    HttpsOrigin {
        addr,
        ca_pem: ca.pem(),
    }
}

#[tokio::test]
async fn an_https_origin_is_verified_against_its_ca_and_a_wrong_ca_is_502_origin() {
    let origin = https_origin();
    let dir = tempfile::tempdir().unwrap();
    let (good, wrong) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&good, &origin.ca_pem).unwrap();
    std::fs::write(&wrong, common::test_ca().pem()).unwrap();
    let port = origin.addr.port();
    let yaml = format!(
        "role: edge
listen: LISTEN
origins:
  good: {{ servers: [\"https://localhost:{port}\"], ca: \"{good}\" }}
  wrong: {{ servers: [\"https://localhost:{port}\"], ca: \"{wrong}\" }}
  unchecked: {{ servers: [\"https://localhost:{port}\"], ca: \"{wrong}\", verify: false }}
routes:
  - match: {{ path_prefix: /wrong }}
    origin: wrong
  - match: {{ path_prefix: /unchecked }}
    origin: unchecked
  - match: {{ path_prefix: / }}
    origin: good
",
        good = good.display(),
        wrong = wrong.display(),
    );
    let edge = start_edge(&yaml);
    let resp = client()
        .get(format!("{}/page", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "secure origin /page\n");
    let resp = client()
        .get(format!("{}/wrong", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-poplar-error"], "origin");
    let resp = client()
        .get(format!("{}/unchecked", edge.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "verify: false takes any certificate");
}

#[test]
fn a_websocket_upgrade_passes_through_an_origin_route() {
    // An origin that accepts the upgrade, then echoes every byte.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        let mut upgrade = false;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            upgrade |= line.to_ascii_lowercase().starts_with("upgrade: websocket");
            if line == "\r\n" {
                break;
            }
        }
        let mut writer = stream;
        if !upgrade {
            writer
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            return;
        }
        writer
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = reader.read(&mut buf).unwrap_or(0);
            if n == 0 || writer.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let yaml = format!(
        "role: edge\nlisten: LISTEN\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"{origin}\"\n"
    );
    let edge = start_edge(&yaml);
    let mut stream = TcpStream::connect(edge.running.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    for message in ["hello", "over the upgrade"] {
        stream.write_all(message.as_bytes()).unwrap();
        let mut echoed = vec![0u8; message.len()];
        reader.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
}

#[tokio::test]
async fn active_health_checks_take_a_failing_server_out_and_stats_say_so() {
    let a = origin();
    let dead = refusing_addr();
    let admin = common::free_addr();
    let yaml = format!(
        "role: edge\nlisten: LISTEN\nadmin: {{ listen: \"{admin}\" }}\norigins:\n  web:\n    servers: [\"{}\", \"{dead}\"]\n    health: {{ path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 2 }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: web\n",
        a.addr
    );
    let edge = start_edge(&yaml);
    // Checks run every 100 ms: wait (boundedly) for the dead server to be judged.
    let mut servers = serde_json::Value::Null;
    for _ in 0..100 {
        servers = common::admin_stats(admin).await["origins"].clone();
        if servers[1]["healthy"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(servers[0]["healthy"], true, "{servers}");
    assert_eq!(servers[1]["healthy"], false, "{servers}");
    assert_eq!(servers[1]["in_service"], false, "{servers}");
    assert_eq!(
        servers[1]["ejected"], false,
        "out by its checks, not by requests: {servers}"
    );
    let hits = a.hits();
    for i in 0..10 {
        let resp = client()
            .get(format!("{}/p/{i}", edge.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(
        a.hits() >= hits + 10,
        "every request went to the healthy server"
    );
    let metrics = common::metrics_text(admin).await;
    let up = format!("poplar_origin_server_up{{origin=\"web\",server=\"http://{dead}\"}} 0");
    assert!(metrics.contains(&up), "{metrics}");
}
