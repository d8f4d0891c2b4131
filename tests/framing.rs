//! End-to-end, over raw sockets (an HTTP library would normalise these requests away):
//! HTTP/1 framing that two peers could read differently is refused with 400 and the
//! connection closed, so no client's bytes reach an origin inside another client's request;
//! pipelined requests are answered in order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{NaiveOrigin, exchange, read_response, start_edge, status_of};

fn edge_before(origin: SocketAddr) -> common::Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 1\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"{origin}\"\n"
    ))
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

#[test]
fn raw_spaces_and_control_bytes_in_the_target_get_400_not_an_encoded_target() {
    let origin = NaiveOrigin::start();
    let edge = edge_before(origin.addr);
    // Before the pingora-core patch (vendor/README.md) each reached the origin re-encoded,
    // as `/a%20b`, `/a%00b`...: a target the client never sent.
    let targets: [&[u8]; 6] = [
        b"/a b",
        b"/a\x00b",
        b"/a\x01b",
        b"/a\x7fb",
        b"/a\tb",
        b"/a?q=x y",
    ];
    for target in targets {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let (answer, closed) = exchange(&edge, &request);
        assert_eq!(
            status_of(&answer),
            "400",
            "{}: {answer}",
            target.escape_ascii()
        );
        assert!(
            closed,
            "{}: the connection stays open",
            target.escape_ascii()
        );
    }
    assert!(origin.lines().is_empty(), "forwarded: {:?}", origin.lines());
    // What a client encodes itself still goes through as it was sent.
    let (answer, _) = exchange(
        &edge,
        b"GET /a%20b?q=x%00y HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(
        origin.lines(),
        vec!["GET /a%20b?q=x%00y HTTP/1.1".to_string()]
    );
}

#[test]
fn an_http2_preface_on_an_http1_only_port_is_closed_and_reaches_no_origin() {
    let origin = NaiveOrigin::start();
    let edge = edge_before(origin.addr);
    let (answer, closed) = exchange(&edge, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(closed, "the connection is closed: {answer:?}");
    assert!(
        answer.is_empty() || status_of(&answer).starts_with('4'),
        "nothing, or a 4xx: {answer:?}"
    );
    assert!(origin.lines().is_empty(), "{:?}", origin.lines());
    let (answer, _) = exchange(
        &edge,
        b"GET /o/next HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "200", "{answer}");
}
