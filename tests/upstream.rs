//! The edge's own client (background refreshes, health probes) against a scripted origin
//! on a real socket: pooled connections are reused, a connection the origin closed is not
//! an error, and an answer is whole or not an answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use pingora_http::RequestHeader;
use poplar::upstream::{self, Client, Failed};

/// Answers by path: `/ok` keeps the connection; `/then-close` answers and closes it
/// without saying so; `/short` promises 10 bytes and sends 3; `/big` sends 100 bytes.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(conn));
            }
        });
        Scripted { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream) {
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
            return;
        }
    }
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
    let peer = upstream::region_peer(common::refusing_addr(), std::time::Duration::from_secs(1));
    let refused = client.exchange(&peer, get("/ok"), Bytes::new(), 1024).await;
    assert!(
        matches!(refused, Err(Failed::Refused(_))),
        "{:?}",
        refused.err()
    );
}
