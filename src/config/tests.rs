//! Config parsing and validation, with the wording of errors pinned.

use std::path::Path;
use std::time::Duration;

use super::*;

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml, Path::new(env!("CARGO_MANIFEST_DIR"))) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_origin_config() {
    let yaml = "role: edge\nlisten: 127.0.0.1:8080\nroutes:\n  - match: { path_prefix: / }\n    origin: 127.0.0.1:9000\n";
    let config = parse(yaml, Path::new(".")).expect("valid");
    assert_eq!(config.role, Role::Edge);
    assert_eq!(config.placement.max_inline, 64);
    assert_eq!(
        config.routes[0].target,
        Target::Origin("127.0.0.1:9000".parse().unwrap())
    );
}

#[test]
fn sizes_and_durations() {
    let yaml = "role: edge\nlisten: 127.0.0.1:8080\ntasks:\n  t:\n    wasm: Cargo.toml\n    limits: { memory: 32MiB, timeout: 250ms, max_body: 16KiB }\nroutes:\n  - match: { path: /t }\n    task: t\n";
    let config = parse(yaml, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid");
    let limits = config.tasks["t"].limits;
    assert_eq!(limits.memory, 32 << 20);
    assert_eq!(limits.timeout, Duration::from_millis(250));
    assert_eq!(limits.max_body, 16 << 10);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let yaml = r#"
role: edje
listen: "nowhere"
colour: blue
tasks:
  hello:
    wasm: missing.wasm
    limits: { memory: 64XB, timeout: soon }
routes:
  - match: { path_prefix: hello }
    task: helo
  - match: { path: /x, methods: [GET, "BAD METHOD"] }
    origin: example.com:80
  - match: { path: /y }
"#;
    let got = errors(yaml);
    let expected = [
        "role: unknown variant `edje`, expected `edge` or `region`",
        "listen: invalid socket address syntax",
        "colour: unknown key; expected one of: role, listen, threads, admin, forwarding, placement, regions, health, cache, tasks, routes",
        "tasks.hello.wasm: cannot read",
        "tasks.hello.limits.memory: invalid size \"64XB\"",
        "tasks.hello.limits.timeout: invalid duration \"soon\"",
        "routes[0].match.path_prefix: must start with \"/\"",
        "routes[0].task: unknown task \"helo\"",
        "routes[1].match.methods: \"BAD METHOD\" is not an HTTP method",
        "routes[1].origin: invalid socket address syntax",
        "routes[2]: needs a task or an origin",
    ];
    for want in expected {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "{got:#?}");
}

#[test]
fn shape_errors() {
    let got = errors("role: edge\nlisten: 127.0.0.1:1\nroutes: {}\n");
    assert_eq!(got, ["routes: expected a list, found a mapping"]);
    let got = errors("- just\n- a list\n");
    assert_eq!(got, ["expected a mapping, found a list"]);
    let got = errors("role: [edge\n");
    assert!(got[0].starts_with("not valid YAML"), "{got:?}");
}

#[test]
fn route_conflicts() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\nroutes:\n  - match: { path: /a, path_prefix: /a }\n    origin: 127.0.0.1:2\n  - match: { path_prefix: /b }\n    origin: 127.0.0.1:2\n    task: x\n  - match: { path_prefix: /c }\n    origin: 127.0.0.1:2\n  - match: { path_prefix: /c }\n    origin: 127.0.0.1:3\n";
    let got = errors(yaml);
    assert_eq!(
        got,
        [
            "routes[0].match: has both path and path_prefix; use one",
            "routes[1]: has both task and origin; a route has one of them",
            "routes[3].match: same match as routes[2], so it could never be chosen",
        ]
    );
}

#[test]
fn limits_are_bounded() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\nplacement: { max_inline: 0 }\nthreads: 0\ntasks:\n  t:\n    wasm: Cargo.toml\n    limits: { memory: 1KiB, timeout: 0s, max_body: 2GiB }\nroutes:\n  - match: { path: /t }\n    task: t\n";
    let got = errors(yaml);
    assert_eq!(
        got,
        [
            "threads: must be at least 1",
            "placement.max_inline: must be between 1 and 4096",
            "tasks.t.limits.memory: must be between 1MiB and 4GiB",
            "tasks.t.limits.timeout: must be more than 0 and at most 10m",
            "tasks.t.limits.max_body: must be at most 1GiB",
        ]
    );
}
