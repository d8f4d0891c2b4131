//! End-to-end, over raw sockets: a host or path route cannot be bypassed by another spelling
//! of its host (case, trailing dot, port), of its path (percent-encoded unreserved bytes,
//! `//`, dot-segments) or by the absolute form; the origin sees the normalised request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use common::{NaiveOrigin, exchange, start_edge, status_of};

/// `api.example.com/h` goes to `api`; everything else to `rest`.
fn edge(api: &NaiveOrigin, rest: &NaiveOrigin) -> common::Edge {
    start_edge(&format!(
        "role: edge\nlisten: LISTEN\nthreads: 1\nroutes:\n  - match: {{ host: api.example.com, path_prefix: /h }}\n    origin: \"{}\"\n  - match: {{ path_prefix: / }}\n    origin: \"{}\"\n",
        api.addr, rest.addr
    ))
}

#[test]
fn other_spellings_of_a_host_or_path_reach_the_same_route() {
    let (api, rest) = (NaiveOrigin::start(), NaiveOrigin::start());
    let edge = edge(&api, &rest);
    let spellings: [(&str, &str); 8] = [
        ("GET /h/x HTTP/1.1", "api.example.com"),
        ("GET /h/x HTTP/1.1", "api.example.com."),
        ("GET /h/x HTTP/1.1", "API.Example.COM:8080"),
        ("GET /%68/x HTTP/1.1", "api.example.com"),
        ("GET //h/x HTTP/1.1", "api.example.com"),
        ("GET /z/../h/./x HTTP/1.1", "api.example.com"),
        ("GET /%7A/%2e%2e/h/x HTTP/1.1", "api.example.com"),
        ("GET http://api.example.com/h/x HTTP/1.1", "api.example.com"),
    ];
    for (line, host) in spellings {
        let request = format!("{line}\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (answer, _) = exchange(&edge, request.as_bytes());
        assert_eq!(status_of(&answer), "200", "{request}: {answer}");
    }
    assert!(rest.lines().is_empty(), "bypassed: {:?}", rest.lines());
    let seen = api.lines();
    assert_eq!(seen.len(), spellings.len());
    assert!(
        seen.iter().all(|l| l == "GET /h/x HTTP/1.1"),
        "the origin sees the normalised target: {seen:?}"
    );
    // An absolute form whose Host says otherwise is ambiguous: refused (by Pingora).
    let (answer, _) = exchange(
        &edge,
        b"GET http://api.example.com/h/x HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "400", "{answer}");
    // Other hosts and paths still go to the catch-all, and an encoded slash stays data.
    for request in [
        "GET /h/x HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n",
        "GET /hx HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        "GET /%2Fh/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    ] {
        let (answer, _) = exchange(&edge, request.as_bytes());
        assert_eq!(status_of(&answer), "200", "{request}: {answer}");
    }
    assert_eq!(rest.lines().len(), 3, "{:?}", rest.lines());
}
