//! End-to-end, over raw sockets (an HTTP library would normalise these requests away):
//! HTTP/1 framing that two peers could read differently is refused with 400 and the
//! connection closed, so no client's bytes reach an origin inside another client's request;
//! pipelined requests are answered in order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::start_edge;

/// An origin that reads request heads itself and, like many servers, takes a body only
/// when `Content-Length` is one plain number. It records every request line it receives,
/// and keeps connections alive.
struct NaiveOrigin {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NaiveOrigin {
    fn start() -> NaiveOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || serve_naively(conn, &seen));
            }
        });
        NaiveOrigin { addr, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn serve_naively(conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = request_line.trim_end().to_string();
        seen.lock().unwrap().push(request_line.clone());
        let answer = format!("{request_line}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn edge_before(origin: SocketAddr) -> common::Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 1\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"{origin}\"\n"
    ))
}

/// Sends raw bytes on a new connection and reads until the edge closes it or goes quiet.
fn exchange(edge: &common::Edge, request: &[u8]) -> (String, bool) {
    let addr = edge.running.addr;
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Reads one whole response with a content-length from a kept-alive connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
        head += &line;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

#[test]
fn a_listed_content_length_cannot_smuggle_bytes_into_the_next_request() {
    let origin = NaiveOrigin::start();
    let edge = edge_before(origin.addr);

    let (answer, closed) = exchange(
        &edge,
        b"GET /o/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3, 3\r\n\r\nabc",
    );
    assert_eq!(status_of(&answer), "400", "{answer}");
    assert!(answer.contains("x-poplar-error: bad-request"), "{answer}");
    assert!(closed, "the connection is closed after a framing error");

    // Another client's request, which Pingora sends on the pooled origin connection.
    let (answer, _) = exchange(
        &edge,
        b"GET /o/victim HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(answer.ends_with("GET /o/victim HTTP/1.1\n"), "{answer}");
    assert_eq!(
        origin.lines(),
        vec!["GET /o/victim HTTP/1.1".to_string()],
        "the origin saw the victim's request whole, and nothing of the refused one"
    );
}

#[test]
fn ambiguous_shapes_get_400_and_a_closed_connection() {
    let origin = NaiveOrigin::start();
    let edge = edge_before(origin.addr);
    let shapes: [&[u8]; 6] = [
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ];
    for shape in shapes {
        let (answer, closed) = exchange(&edge, shape);
        let shown = String::from_utf8_lossy(shape);
        assert_eq!(status_of(&answer), "400", "{shown}: {answer}");
        assert!(closed, "{shown}: the connection stays open");
    }
    assert!(origin.lines().is_empty(), "{:?}", origin.lines());

    // The plain shapes still pass, HTTP/1.0 without a Host included.
    let (answer, _) = exchange(&edge, b"GET /ok HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&answer), "200", "{answer}");
    let (answer, _) = exchange(
        &edge,
        b"POST /ok HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "200", "{answer}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = NaiveOrigin::start();
    let edge = edge_before(origin.addr);
    let conn = TcpStream::connect(edge.running.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut writer = conn.try_clone().unwrap();
    writer
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\nGET /second HTTP/1.1\r\nHost: a.test\r\n\r\nGET /third HTTP/1.1\r\nHost: a.test\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(conn);
    for path in ["/first", "/second", "/third"] {
        let response = read_response(&mut reader);
        assert_eq!(status_of(&response), "200", "{response}");
        assert!(
            response.ends_with(&format!("GET {path} HTTP/1.1\n")),
            "{path}: {response}"
        );
    }
}

#[test]
fn error_bodies_name_no_internal_address() {
    let origin = NaiveOrigin::start();
    let edge = edge_before(origin.addr);
    let (answer, _) = exchange(
        &edge,
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "400", "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    assert_eq!(body, "the request is malformed\n", "{answer}");
    assert!(
        !answer.contains(&origin.addr.port().to_string()),
        "{answer}"
    );
}
