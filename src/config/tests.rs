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
        Target::Origin("127.0.0.1:9000".to_string())
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
fn the_grace_period_is_whole_seconds_and_outlasts_the_tasks_by_default() {
    let yaml = "role: edge\nlisten: 127.0.0.1:8080\ntasks:\n  t:\n    wasm: Cargo.toml\n    limits: { timeout: 2500ms }\nroutes:\n  - match: { path: /t }\n    task: t\n";
    let config = parse(yaml, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid");
    assert_eq!(
        config.grace_period,
        Duration::from_secs(4),
        "2.5 s rounded up, plus 1 s"
    );
    let given = format!("grace_period: 30s\n{yaml}");
    let config = parse(&given, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid");
    assert_eq!(config.grace_period, Duration::from_secs(30));
    let halves = format!("grace_period: 1500ms\n{yaml}");
    assert_eq!(
        errors(&halves),
        ["grace_period: must be whole seconds (line 1, column 15)"]
    );
}

#[test]
fn every_problem_is_reported_with_its_path_and_place() {
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
    origin: example.com
  - match: { path: /y }
"#;
    let expected = [
        "role: unknown variant `edje`, expected `edge` or `region` (line 2, column 7)",
        "listen: invalid socket address syntax (line 3, column 9)",
        "colour: unknown field `colour`, expected one of `role`, `listen`, `threads`, `guest_log`, `grace_period`, `upgrade_socket`, `admin`, `access_log`, `clients`, `forwarding`, `placement`, `regions`, `health`, `origins`, `cache`, `trusted_proxies`, `request_id_header`, `code_cache`, `registry`, `tasks`, `routes` (line 4, column 9)",
        "tasks.hello.limits.memory: invalid size \"64XB\"; use a size such as 64MiB or 512KiB (line 8, column 23)",
        "tasks.hello.limits.timeout: invalid duration \"soon\"; use a duration such as 50ms or 2s (line 8, column 38)",
        "routes[0].match.path_prefix: must start with \"/\" (line 10, column 27)",
        "routes[0].task: unknown task \"helo\" (line 11, column 11)",
        "routes[1].match.methods: \"BAD METHOD\" is not an HTTP method (line 12, column 33)",
        "routes[1].origin: \"example.com\" needs a port (host:port); or name a pool in origins (line 13, column 13)",
        "routes[2]: needs a task or an origin (line 14, column 5)",
    ];
    let got = errors(yaml);
    assert_eq!(got[..expected.len()], expected);
    // The files are checked after the text, and listed after it.
    assert_eq!(got.len(), expected.len() + 1);
    assert!(got[expected.len()].starts_with("tasks.hello.wasm: cannot read"));
}

#[test]
fn ten_mistakes_are_listed_at_once_with_the_wasm_files() {
    let yaml = r#"role: edge
listen: 127.0.0.1:8080
threads: many
regions:
  east: { address: "https://east.example" }
  west: { adress: "127.0.0.1:1" }
cache: { memory: 1KiB }
tasks:
  hello: { wasm: nowhere.wasm }
  bye: { wasm: [bye.wasm] }
routes:
  - match: { path_prefix: /a }
    task: hello
    region: east
  - match: { path: /b }
    task: bye
    region: north
  - match: { host: "bad host" }
    origin: 127.0.0.1:9000
"#;
    let got = errors(yaml);
    let expected = [
        "threads: invalid type: string \"many\", expected usize (line 3, column 10)",
        "regions.east.address: \"https://east.example\": a region's address is host:port, without a scheme (line 5, column 20)",
        "regions.west.address: missing (line 6, column 9)",
        "regions.west.adress: unknown field `adress`, expected `address` (line 6, column 19)",
        "cache.memory: must be at least 1MiB (line 7, column 18)",
        "tasks.bye.wasm: invalid type: sequence, expected a string",
        "routes[1].region: unknown region \"north\" (line 17, column 13)",
        "routes[2].match.host: must be a host name such as example.com or *.example.com, without port (line 18, column 20)",
        "tasks.hello.wasm: cannot read",
        "forwarding: no forwarding key: set POPLAR_FORWARDING_KEY or forwarding.key_file (edges with regions and regions need one)",
    ];
    for (i, want) in expected.iter().enumerate() {
        assert!(
            got.get(i).is_some_and(|g| g.starts_with(want)),
            "{i}: {want:?} not in {got:#?}"
        );
    }
    // Routes naming east or bye (whose wasm is wrong) get no spurious "unknown" error.
    assert_eq!(got.len(), expected.len(), "{got:#?}");
}

#[test]
fn a_host_alone_matches_every_path_of_it() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\nroutes:\n  - match: { host: API.example.com }\n    origin: 127.0.0.1:2\n";
    let config = parse(yaml, Path::new(".")).expect("valid");
    assert_eq!(
        config.routes[0].matcher,
        Match {
            host: Some("api.example.com".into()),
            path: PathMatch::Prefix("/".into()),
            methods: None,
        }
    );
    let got = errors(
        "role: edge\nlisten: 127.0.0.1:1\nroutes:\n  - match: {}\n    origin: 127.0.0.1:2\n",
    );
    assert_eq!(
        got,
        [
            "routes[0].match: needs host, path or path_prefix (path_prefix: \"/\" matches everything) (line 4, column 12)"
        ]
    );
}

#[test]
fn compiling_reads_no_file_and_no_environment() {
    let yaml = "role: region\nlisten: 127.0.0.1:1\nforwarding: { key_file: no/such/key }\ntasks:\n  t: { wasm: no/such.wasm }\n";
    let config = compile(yaml, Path::new("/base")).expect("compiles without touching files");
    assert_eq!(
        config.key_source,
        Some(KeySource::File("/base/no/such/key".into()))
    );
    assert_eq!(
        config.tasks["t"].wasm.as_deref(),
        Some(Path::new("/base/no/such.wasm"))
    );
    assert!(config.forwarding_key.is_none());

    let yaml = "role: region\nlisten: 127.0.0.1:1\ntasks:\n  t: { wasm: Cargo.toml }\n";
    let config = compile(yaml, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("compiles");
    assert_eq!(config.key_source, Some(KeySource::Env));
    let short = prepare(config.clone(), |_| Some("short".into())).expect_err("too short");
    assert_eq!(
        short[0].to_string(),
        "forwarding: the forwarding key must be at least 16 bytes"
    );
    let key = "0123456789abcdef0123";
    let ready = prepare(config, |_| Some(key.into())).expect("prepared");
    assert_eq!(
        ready.forwarding_key,
        Some(ForwardingKey(key.as_bytes().to_vec()))
    );
}

#[test]
fn shape_errors() {
    let got = errors("role: edge\nlisten: 127.0.0.1:1\nroutes: {}\n");
    assert_eq!(
        got,
        ["routes: invalid type: map, expected a sequence (line 3, column 9)"]
    );
    let got = errors("- just\n- a list\n");
    assert_eq!(
        got,
        ["expected a mapping of config keys at the top of the file (line 1, column 1)"]
    );
    let got = errors("role: [edge\n");
    assert!(got[0].starts_with("not valid YAML"), "{got:?}");
    assert!(got[0].ends_with("(line 1, column 7)"), "{got:?}");
    let got = errors(
        "role: region\nlisten: 127.0.0.1:1\nroutes: []\ncache: {}\nplacement: { hot_threshold: 2 }\nforwarding: { key_file: Cargo.toml }\ntasks:\n  t: { wasm: Cargo.toml }\n",
    );
    assert_eq!(
        got,
        [
            "routes: applies to edges only (line 3, column 9)",
            "cache: applies to edges only (line 4, column 8)",
            "placement.hot_threshold: applies to edges only (line 5, column 29)",
        ]
    );
}

#[test]
fn trusted_proxies_are_addresses_or_cidrs() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\ntrusted_proxies: [10.0.0.0/8, \"::1\", 192.168.1.7, nope, 10.0.0.0/99]\nroutes:\n  - match: { path_prefix: / }\n    origin: 127.0.0.1:2\n";
    assert_eq!(
        errors(yaml),
        [
            "trusted_proxies[3]: \"nope\" is not an address or a CIDR such as 10.0.0.0/8 (line 3, column 51)",
            "trusted_proxies[4]: \"10.0.0.0/99\" is not an address or a CIDR such as 10.0.0.0/8 (line 3, column 57)",
        ]
    );
    let ok = yaml.replace(", nope, 10.0.0.0/99", "");
    let config = parse(&ok, Path::new(".")).expect("valid");
    assert_eq!(config.trusted_proxies.len(), 3);
}

#[test]
fn route_conflicts() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\nroutes:\n  - match: { path: /a, path_prefix: /a }\n    origin: 127.0.0.1:2\n  - match: { path_prefix: /b }\n    origin: 127.0.0.1:2\n    task: x\n  - match: { path_prefix: /c }\n    origin: 127.0.0.1:2\n  - match: { path_prefix: /c }\n    origin: 127.0.0.1:3\n";
    let got = errors(yaml);
    assert_eq!(
        got,
        [
            "routes[0].match: has both path and path_prefix; use one (line 4, column 12)",
            "routes[1]: has both task and origin; a route has one of them (line 6, column 5)",
            "routes[3].match: same match as routes[2], so it could never be chosen (line 11, column 12)",
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
            "placement.max_inline: must be between 1 and 4096 (line 3, column 26)",
            "threads: must be at least 1 (line 4, column 10)",
            "tasks.t.limits.memory: must be between 1MiB and 4GiB (line 8, column 23)",
            "tasks.t.limits.timeout: must be more than 0 and at most 10m (line 8, column 38)",
            "tasks.t.limits.max_body: must be at most 1GiB (line 8, column 52)",
        ]
    );
}

#[test]
fn every_example_config_matches_the_json_schema() {
    let schema = schema::json_schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let doc = source::Document::parse(&text).expect("YAML");
        let problems: Vec<String> = validator
            .iter_errors(&doc.value)
            .map(|e| format!("{}: {e}", e.instance_path))
            .collect();
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} configs in conf/");
    // And the schema refuses what the loader refuses.
    let bad =
        source::Document::parse("role: edge\nlisten: 1.2.3.4:5\ncolour: blue\n").expect("YAML");
    assert!(!validator.is_valid(&bad.value));
}

#[test]
fn an_admin_endpoint_off_loopback_or_guarding_reads_needs_a_token() {
    let edge = "role: edge\nlisten: 127.0.0.1:8080\nroutes:\n  - match: { path_prefix: / }\n    origin: 127.0.0.1:9\n";
    let prepared = |admin: &str, env: Option<&str>| {
        let config =
            compile(&format!("{edge}admin: {admin}\n"), Path::new("/base")).expect("compiles");
        let env = env.map(str::to_string);
        prepare(config, move |name| {
            env.clone().filter(|_| name == ADMIN_TOKEN_ENV)
        })
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let open = prepared("{}", None).expect("a loopback endpoint may be open");
    let admin = open.admin.expect("admin");
    assert_eq!(admin.listen, DEFAULT_ADMIN);
    assert!(admin.token.is_none());
    assert_eq!(
        prepared("{ listen: \"0.0.0.0:9901\" }", None).unwrap_err(),
        [
            "admin.listen: an admin endpoint off loopback needs a token (it can purge the cache): set admin.token_file or POPLAR_ADMIN_TOKEN"
        ]
    );
    assert_eq!(
        prepared("{ guard_reads: true }", None).unwrap_err(),
        [
            "admin.guard_reads: guarded reads need a token: set admin.token_file or POPLAR_ADMIN_TOKEN"
        ]
    );
    assert_eq!(
        prepared("{ token_file: no/such/token }", None).unwrap_err(),
        [
            "admin.token_file: cannot read \"/base/no/such/token\": No such file or directory (os error 2)"
        ]
    );
    assert_eq!(
        prepared("{}", Some("short")).unwrap_err(),
        ["admin: the admin token must be at least 16 bytes"]
    );
    let token = "0123456789abcdef-admin";
    let guarded = prepared("{ listen: \"0.0.0.0:9901\" }", Some(token)).expect("a token");
    let token = guarded.admin.and_then(|a| a.token);
    assert_eq!(token, Some(Secret(b"0123456789abcdef-admin".to_vec())));
}

#[test]
fn origins_are_pools_by_name_or_one_server_written_in_the_route() {
    let yaml = "role: edge
listen: 127.0.0.1:8080
origins:
  web:
    servers: [\"10.0.0.1:8080\", \"https://app.internal\"]
    balance: path_hash
    host: app.example.com
    timeouts: { connect: 1s }
    health: { path: /healthz }
routes:
  - match: { path_prefix: /a }
    origin: web
  - match: { path_prefix: / }
    origin: \"https://backend.example.com:8443\"
";
    let config = parse(yaml, Path::new(".")).expect("valid");
    let web = &config.origins["web"];
    assert_eq!(web.balance, Balance::PathHash);
    assert_eq!(web.servers[1].to_string(), "https://app.internal:443");
    assert_eq!(web.timeouts.connect, Duration::from_secs(1));
    assert_eq!(web.timeouts.read, Duration::from_secs(30));
    assert_eq!(web.health.as_ref().map(|h| h.unhealthy_after), Some(2));
    let single = &config.origins["https://backend.example.com:8443"];
    assert!(single.servers[0].tls);
    assert_eq!(config.routes[1].target, Target::Origin(single.name.clone()));

    let bad = "role: edge
listen: 127.0.0.1:8080
origins:
  web:
    servers: [\"10.0.0.1\", \"ftp://x:1\", \"10.0.0.2:80\", \"http://10.0.0.2:80\"]
    ca: no-such-ca.pem
    health: { path: healthz }
  empty: { servers: [] }
routes:
  - match: { path_prefix: /a }
    origin: nowhere
  - match: { path_prefix: / }
    origin: web
";
    let shown = errors(bad);
    let has = |text: &str| {
        assert!(
            shown.iter().any(|e| e.contains(text)),
            "no {text:?} in {shown:#?}"
        )
    };
    has("origins.web.servers[0]: \"10.0.0.1\" needs a port");
    has("origins.web.servers[1]: scheme \"ftp\"");
    has("origins.web.servers[3]: http://10.0.0.2:80 is listed twice");
    has("origins.web.health.path: must start with /");
    has("origins.web.ca: cannot read");
    has("origins.empty.servers: empty");
    has("routes[0].origin: \"nowhere\" needs a port (host:port); or name a pool in origins");
}

#[test]
fn client_limits_have_defaults_and_bounds() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\nroutes:\n  - match: { path: / }\n    origin: 127.0.0.1:2\n";
    let config = parse(yaml, Path::new(".")).expect("valid");
    assert_eq!(config.clients, ClientLimits::default());
    assert_eq!(config.clients.max_header_bytes, 32 << 10);
    let yaml = format!(
        "{yaml}clients: {{ max_header_bytes: 2MiB, max_headers: 300, header_timeout: 10ms, idle_timeout: 0s, max_requests: 0, max_connections: 0 }}\n"
    );
    let got = errors(&yaml);
    assert_eq!(
        got,
        [
            "clients.max_header_bytes: must be from 1KiB to 1MiB (line 6, column 30)",
            "clients.max_headers: must be from 1 to 256 (line 6, column 49)",
            "clients.header_timeout: must be at least 100ms (line 6, column 70)",
            "clients.idle_timeout: must be at least 1s (line 6, column 90)",
            "clients.max_requests: must be at least 1 (line 6, column 108)",
            "clients.max_connections: must be at least 1 (line 6, column 128)",
        ]
    );
}

#[test]
fn the_guest_memory_budget_holds_at_least_the_largest_task() {
    let yaml = "role: edge\nlisten: 127.0.0.1:1\nplacement: { guest_memory: 16MiB }\ntasks:\n  t:\n    wasm: Cargo.toml\n    limits: { memory: 32MiB }\nroutes:\n  - match: { path: /t }\n    task: t\n";
    assert_eq!(
        errors(yaml),
        [
            "placement.guest_memory: must be at least the largest task memory (33554432 bytes) (line 3, column 28)"
        ]
    );
}

#[test]
fn a_registry_is_a_regions_and_needs_an_admin_listener_and_a_token() {
    // Compiled only: these need no key or token to be wrong.
    let errors = |yaml: &str| match compile(yaml, Path::new("/base")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(
        errors(
            "role: edge\nlisten: 127.0.0.1:8080\nregistry: { dir: reg }\nroutes:\n  - match: { path_prefix: / }\n    origin: 127.0.0.1:9\n"
        ),
        ["registry: applies to regions only (line 3, column 11)"]
    );
    assert_eq!(
        errors("role: region\nlisten: 127.0.0.1:8181\nregistry: { dir: reg }\n"),
        ["registry: needs admin: the deploy API is on the admin listener (line 3, column 11)"]
    );
    assert_eq!(
        errors("role: region\nlisten: 127.0.0.1:8181\nadmin: {}\nregistry: { max_code: 1B }\n"),
        ["registry.dir: missing: a folder for deployed code (line 4, column 11)",]
    );
    let region = "role: region\nlisten: 127.0.0.1:8181\nadmin: {}\nregistry: { dir: reg, max_memory: 512MiB }\n";
    let config =
        compile(region, Path::new("/base")).expect("a region needs no task with a registry");
    let spec = config.registry.clone().expect("registry");
    assert_eq!(
        (spec.dir, spec.max_memory, spec.max_code),
        ("/base/reg".into(), 512 << 20, 64 << 20)
    );
    let env = |token: &'static str| {
        move |name: &str| match name {
            FORWARDING_KEY_ENV => Some("0123456789abcdef-forwarding".to_string()),
            DEPLOY_TOKEN_ENV => Some(token.to_string()).filter(|t| !t.is_empty()),
            _ => None,
        }
    };
    let refused = |token| {
        prepare(config.clone(), env(token))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        refused(""),
        [
            "registry: no deploy token: set POPLAR_DEPLOY_TOKEN or registry.token_file (deploys need one)"
        ]
    );
    assert_eq!(
        refused("short"),
        ["registry: the deploy token must be at least 16 bytes"]
    );
    let prepared = prepare(config.clone(), env("0123456789abcdef-deploy")).expect("a token");
    let token = prepared.registry.and_then(|r| r.token);
    assert_eq!(token, Some(Secret(b"0123456789abcdef-deploy".to_vec())));
}

#[test]
fn a_task_without_wasm_takes_its_code_from_regions_and_so_needs_them() {
    let errors = |yaml: &str| match compile(yaml, Path::new("/base")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let edge = "role: edge\nlisten: 127.0.0.1:8080\ntasks:\n  greet: {}\nroutes:\n  - match: { path_prefix: /greet }\n    task: greet\n";
    assert_eq!(
        errors(edge),
        [
            "tasks.greet.wasm: missing: a wasm file (only an edge with regions takes code from them) (line 4, column 10)"
        ]
    );
    let with_regions = format!("{edge}regions:\n  west: {{ address: \"127.0.0.1:8181\" }}\n");
    let config = compile(&with_regions, Path::new("/base")).expect("from regions");
    assert_eq!(config.tasks["greet"].wasm, None);
    assert_eq!(
        errors(&format!("{with_regions}    placement: edge\n").replace(
            "regions:\n  west: { address: \"127.0.0.1:8181\" }\n    placement: edge\n",
            "    placement: edge\nregions:\n  west: { address: \"127.0.0.1:8181\" }\n"
        )),
        [
            "routes[0].placement: edge needs the task's wasm file here: greet's code comes from regions when it turns hot (line 8, column 16)"
        ]
    );
    assert_eq!(
        errors("role: region\nlisten: 127.0.0.1:8181\ntasks:\n  greet: {}\n"),
        [
            "tasks.greet.wasm: missing: a wasm file (only an edge with regions takes code from them) (line 4, column 10)"
        ]
    );
}
