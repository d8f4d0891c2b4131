//! The edge's own client (background refreshes, health probes) against a scripted origin
//! on a real socket: pooled connections are reused, a connection the origin closed is not
//! an error, one idle past its timeout is closed, and an answer is whole or not an answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora_http::RequestHeader;
use poplar::upstream::{self, Client, Failed};

/// Answers by path: `/ok` keeps the connection; `/then-close` answers and closes it
/// without saying so; `/short` promises 10 bytes and sends 3; `/big` sends 100 bytes.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections the client closed (the server read the end of the stream).
    closed: Arc<AtomicUsize>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counted, ended) = (connections.clone(), closed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                std::thread::spawn(move || {
                    if serve(conn) == Ended::ByClient {
                        ended.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Scripted {
            addr,
            connections,
            closed,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[derive(PartialEq)]
enum Ended {
    ByClient,
    ByServer,
}

fn serve(conn: TcpStream) -> Ended {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some((request_line, body)) = common::read_plain_request(&mut reader) {
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let (response, close) = match path.as_str() {
            "/ok" => (ok(&body), false),
            "/then-close" => (ok(&body), true),
            "/short" => (
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".into(),
                true,
            ),
            _ => (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
                    "x".repeat(100)
                ),
                false,
            ),
        };
        writer.write_all(response.as_bytes()).unwrap();
        if close {
            return Ended::ByServer;
        }
    }
    Ended::ByClient
}

/// `ok` and the request body's length.
fn ok(body: &[u8]) -> String {
    let answer = format!("ok {}", body.len());
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
        answer.len()
    )
}

fn get(path: &str) -> RequestHeader {
    let mut head = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    head.insert_header("host", "origin.test").unwrap();
    head
}

#[tokio::test]
async fn pooled_connections_are_reused_and_one_the_origin_closed_is_not_an_error() {
    let origin = Scripted::start();
    let client = Client::default();
    let peer = upstream::origin_peer(origin.addr);
    for _ in 0..3 {
        let answer = client.exchange(&peer, get("/ok"), Bytes::new(), 1024).await;
        assert_eq!(answer.unwrap().body, "ok 0");
    }
    assert_eq!(origin.connections(), 1, "one connection, kept in the pool");

    let mut post = RequestHeader::build("POST", b"/ok", None).unwrap();
    post.insert_header("content-length", "5").unwrap();
    let answer = client.exchange(&peer, post, Bytes::from("hello"), 1024);
    assert_eq!(answer.await.unwrap().body, "ok 5", "the body went with it");

    // Answered, then closed without a word: the pooled connection is dead.
    let answer = client.exchange(&peer, get("/then-close"), Bytes::new(), 1024);
    assert_eq!(answer.await.unwrap().body, "ok 0");
    let answer = client.exchange(&peer, get("/ok"), Bytes::new(), 1024).await;
    assert_eq!(answer.unwrap().body, "ok 0", "a new connection took it");
    assert_eq!(origin.connections(), 2);
}

#[tokio::test]
async fn a_pooled_connection_idle_past_its_timeout_is_closed_and_not_reused() {
    let origin = Scripted::start();
    let client = Client::default();
    let timeouts = poplar::config::Timeouts {
        idle: Duration::from_secs(1),
        ..Default::default()
    };
    let peer = upstream::peer(origin.addr, None, &timeouts);
    let answer = client.exchange(&peer, get("/ok"), Bytes::new(), 1024).await;
    assert_eq!(answer.unwrap().body, "ok 0");
    assert_eq!(origin.closed.load(Ordering::SeqCst), 0, "kept in the pool");
    // Nobody takes it: the pool closes it once its second is up (waited for, up to 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.closed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        origin.closed.load(Ordering::SeqCst),
        1,
        "closed when idle 1s"
    );
    let answer = client.exchange(&peer, get("/ok"), Bytes::new(), 1024).await;
    assert_eq!(answer.unwrap().body, "ok 0");
    assert_eq!(
        origin.connections(),
        2,
        "a new connection took the next request"
    );
}

#[tokio::test]
async fn an_answer_is_whole_or_not_an_answer() {
    let origin = Scripted::start();
    let client = Client::default();
    let peer = upstream::origin_peer(origin.addr);
    let short = client
        .exchange(&peer, get("/short"), Bytes::new(), 1024)
        .await;
    assert!(matches!(short, Err(Failed::Broken(_))), "{:?}", short.err());

    let big = client.exchange(&peer, get("/big"), Bytes::new(), 99).await;
    assert!(matches!(big, Err(Failed::TooLarge(99))), "{:?}", big.err());
    let fits = client.exchange(&peer, get("/big"), Bytes::new(), 100).await;
    assert_eq!(fits.unwrap().body.len(), 100);
}

#[tokio::test]
async fn a_refused_connection_is_refused_so_another_peer_may_take_it() {
    let client = Client::default();
    let peer = upstream::region_peer(common::refusing_addr(), Duration::from_secs(1));
    let refused = client.exchange(&peer, get("/ok"), Bytes::new(), 1024).await;
    assert!(
        matches!(refused, Err(Failed::Refused(_))),
        "{:?}",
        refused.err()
    );
}
