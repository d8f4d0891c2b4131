//! Property tests of the parts strangers feed: the config loader, framing, normalisation and
//! routing, signatures, the cache's HTTP rules, and requests as a guest receives them. No
//! input panics; round trips hold. Case counts are bounded for CI (`PROPTEST_CASES` raises
//! them for a longer hunt).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use poplar::config::{Match, Mode, PathMatch, RouteSpec, Target};
use poplar::regions::signing::{self, Signed};
use poplar::routing::Router;

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n)
}

/// Text shaped like a config: keys the schema knows, values of every kind, nesting.
fn config_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("role".to_string()),
        Just("listen".to_string()),
        Just("threads".to_string()),
        Just("tasks".to_string()),
        Just("routes".to_string()),
        Just("regions".to_string()),
        Just("match".to_string()),
        Just("path_prefix".to_string()),
        Just("host".to_string()),
        Just("origin".to_string()),
        Just("task".to_string()),
        Just("limits".to_string()),
        Just("memory".to_string()),
        Just("cache".to_string()),
        Just("ttl".to_string()),
        Just("placement".to_string()),
        Just("trusted_proxies".to_string()),
        "[a-z_]{1,8}".prop_map(|s| s),
    ];
    let scalar = prop_oneof![
        Just("edge".to_string()),
        Just("region".to_string()),
        Just("127.0.0.1:8080".to_string()),
        Just("64MiB".to_string()),
        Just("50ms".to_string()),
        Just("/".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("~".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    let line = (0usize..4, key, scalar, any::<bool>()).prop_map(|(indent, key, value, list)| {
        let pad = "  ".repeat(indent);
        match list {
            true => format!("{pad}- {key}: {value}"),
            false => format!("{pad}{key}: {value}"),
        }
    });
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn the_config_loader_never_panics(text in config_like()) {
        let _ = poplar::config::compile(&text, Path::new("/nowhere"));
    }

    #[test]
    fn the_config_loader_never_panics_on_any_text(text in "\\PC{0,200}") {
        let _ = poplar::config::compile(&text, Path::new("/nowhere"));
    }

    #[test]
    fn normalised_paths_are_normal_and_stay_so(raw in "/[a-zA-Z0-9%./_~-]{0,40}") {
        let once = poplar::normalize::path(&raw).unwrap_or_else(|| raw.clone());
        prop_assert!(once.starts_with('/'), "{once}");
        prop_assert!(!once.contains("//"), "{once}");
        prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{once}");
        prop_assert_eq!(poplar::normalize::path(&once), None, "{} -> {}", raw, once);
    }

    #[test]
    fn normalised_hosts_are_lower_case_without_port_or_dot(raw in "[a-zA-Z0-9.-]{1,20}(:[0-9]{1,5})?") {
        if let Some(host) = poplar::normalize::host(None, Some(&raw)) {
            prop_assert_eq!(host.clone(), host.to_ascii_lowercase());
            prop_assert!(!host.ends_with('.') && !host.contains(':'), "{}", host);
            prop_assert_eq!(poplar::normalize::host(None, Some(&host)), Some(host.clone()));
        }
    }

    #[test]
    fn routing_answers_any_request(host in proptest::option::of("\\PC{0,20}"), path in "/\\PC{0,30}", method in "[A-Z]{1,7}") {
        let routes = router();
        let found = routes.route(host.as_deref(), &path, &method);
        // The catch-all takes whatever nothing else does.
        prop_assert!(found.is_some());
    }

    #[test]
    fn a_signature_holds_for_its_request_and_no_other(
        timestamp in 1_000u64..2_000_000_000,
        fields in prop::collection::vec("[ -~]{0,16}", 7),
        which in 0usize..7,
        other in "[ -~]{1,16}",
    ) {
        let key = b"0123456789abcdef-property";
        let signed = Signed {
            timestamp,
            request_id: &fields[0],
            method: &fields[1],
            path_and_query: &fields[2],
            task: &fields[3],
            host: &fields[4],
            body: &fields[5],
            headers: &fields[6],
        };
        let signature = signing::sign(key, &signed);
        prop_assert!(signing::verify(key, &signed, Some(&signature), timestamp).is_ok());
        let mut changed = fields.clone();
        prop_assume!(changed[which] != other);
        changed[which] = other;
        let tampered = Signed {
            request_id: &changed[0],
            method: &changed[1],
            path_and_query: &changed[2],
            task: &changed[3],
            host: &changed[4],
            body: &changed[5],
            headers: &changed[6],
            ..signed
        };
        prop_assert!(signing::verify(key, &tampered, Some(&signature), timestamp).is_err());
    }

    #[test]
    fn any_signature_header_is_refused_without_panic(signature in "\\PC{0,80}") {
        let key = b"0123456789abcdef-property";
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&signature) {
            headers.insert(signing::SIGNATURE_HEADER, value.clone());
            headers.insert(signing::TIMESTAMP_HEADER, value.clone());
            headers.insert(signing::TASK_HEADER, value.clone());
            headers.insert(signing::REQUEST_ID_HEADER, value.clone());
            headers.insert(signing::BODY_HEADER, value);
        }
        prop_assert!(signing::check(key, "GET", "/", &headers, 1_000).is_err());
    }

    #[test]
    fn cache_rules_take_any_header_values(
        cache_control in "[ -~]{0,40}",
        vary in "[ -~]{0,20}",
        expires in "[ -~]{0,30}",
        request_cc in "[ -~]{0,30}",
    ) {
        let mut req = http::Request::get("http://a.test/x");
        if let Ok(v) = http::HeaderValue::from_str(&request_cc) {
            req = req.header("cache-control", v);
        }
        let (req, ()) = req.body(()).unwrap().into_parts();
        let mut res = http::Response::builder().status(200);
        for (name, value) in [("cache-control", &cache_control), ("vary", &vary), ("expires", &expires)] {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                res = res.header(name, v);
            }
        }
        let (res, ()) = res.body(()).unwrap().into_parts();
        let _ = poplar::cache::policy::request_bypasses(&req);
        let _ = poplar::cache::policy::judge(&req, &res, Some(Duration::from_secs(30)), SystemTime::now());
    }

    #[test]
    fn framing_judges_any_header_set(
        lengths in prop::collection::vec("[ -~]{0,12}", 0..3),
        codings in prop::collection::vec("[ -~]{0,12}", 0..3),
        hosts in 0usize..3,
    ) {
        let mut headers = http::HeaderMap::new();
        for l in &lengths {
            if let Ok(v) = http::HeaderValue::from_str(l) { headers.append("content-length", v); }
        }
        for c in &codings {
            if let Ok(v) = http::HeaderValue::from_str(c) { headers.append("transfer-encoding", v); }
        }
        for _ in 0..hosts {
            headers.append("host", http::HeaderValue::from_static("a"));
        }
        let head = poplar::framing::Head { version: http::Version::HTTP_11, headers: &headers, raw: None };
        let verdict = poplar::framing::check(&head);
        // Whatever passes is framed one way: at most one length, a plain number, not beside chunked.
        if verdict.is_ok() {
            prop_assert!(headers.get_all("content-length").iter().count() <= 1);
            prop_assert!(!(headers.contains_key("content-length") && headers.contains_key("transfer-encoding")));
            prop_assert_eq!(hosts, 1);
        }
    }
}

fn router() -> Router {
    let spec = |matcher: Match, port: u16| RouteSpec {
        matcher,
        target: Target::Origin(format!("127.0.0.1:{port}")),
        placement: Mode::Edge,
        region: None,
        cache: None,
    };
    Router::new(&[
        spec(
            Match {
                host: Some("*.example.com".into()),
                path: PathMatch::Prefix("/api".into()),
                methods: Some(vec!["GET".into()]),
            },
            1,
        ),
        spec(
            Match {
                host: None,
                path: PathMatch::Exact("/x".into()),
                methods: None,
            },
            2,
        ),
        spec(
            Match {
                host: None,
                path: PathMatch::Prefix("/".into()),
                methods: None,
            },
            3,
        ),
    ])
}

/// Arbitrary headers, targets and bodies sent to a running edge, inline to a guest: every
/// request gets an answer (a status line), and the edge keeps serving.
#[test]
fn requests_a_guest_receives_never_break_the_edge() {
    use std::io::{Read, Write};
    let edge = common::start_edge(
        "role: edge\nlisten: LISTEN\nthreads: 2\ntasks:\n  echo:\n    wasm: echo.wasm\nroutes:\n  - match: { path_prefix: / }\n    task: echo\n",
    );
    let request = (
        "/[ -~]{0,30}",
        prop::collection::vec(("[!-9;-~]{1,12}", "[ -~\\t]{0,24}"), 0..6),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    let mut runner = proptest::test_runner::TestRunner::new(cases(48));
    runner
        .run(&request, |(target, headers, body)| {
            let mut text = format!("POST {target} HTTP/1.1\r\nHost: a.test\r\n");
            for (name, value) in &headers {
                text += &format!("{name}: {value}\r\n");
            }
            text += &format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let mut bytes = text.into_bytes();
            bytes.extend_from_slice(&body);
            let mut conn = std::net::TcpStream::connect(edge.running.addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.write_all(&bytes).unwrap();
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer);
            prop_assert!(
                answer.starts_with(b"HTTP/1.1 "),
                "no answer to {:?}",
                String::from_utf8_lossy(&bytes)
            );
            Ok(())
        })
        .unwrap();
    let (answer, _) = common::exchange(
        &edge,
        b"GET /still-here HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(common::status_of(&answer), "200", "{answer}");
}
