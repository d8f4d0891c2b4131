//! The config schema: walks the parsed YAML and builds a [`Config`], collecting every problem
//! with its path. Each field is deserialized on its own, so one bad value never hides another.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{Config, ConfigError, Limits, Match, PathMatch, Role, RouteSpec, Target, TaskSpec};

const TOP_KEYS: &[&str] = &["role", "listen", "threads", "placement", "tasks", "routes"];
const PLACEMENT_KEYS: &[&str] = &["max_inline"];
const TASK_KEYS: &[&str] = &["wasm", "limits"];
const LIMIT_KEYS: &[&str] = &["memory", "timeout", "max_body"];
const ROUTE_KEYS: &[&str] = &["match", "task", "origin"];
const MATCH_KEYS: &[&str] = &["host", "path", "path_prefix", "methods"];

/// Most inline executions one server may run at once (each reserves pool address space).
const MAX_INLINE_CEILING: usize = 4096;

/// Parses a config document. `base` is the folder relative paths resolve from.
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        vec![ConfigError {
            path: String::new(),
            message: format!("not valid YAML: {e}"),
        }]
    })?;
    let mut walk = Walk::default();
    let config = walk.config(&doc, base);
    match config {
        Some(config) if walk.errors.is_empty() => Ok(config),
        _ => Err(walk.errors),
    }
}

#[derive(Default)]
struct Walk {
    errors: Vec<ConfigError>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Walk {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// The mapping at `path`, after reporting any key not in `allowed`.
    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.error(path, format!("expected a mapping, found {}", kind(value)));
            return None;
        };
        for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
            let expected = allowed.join(", ");
            self.error(
                join(path, key),
                format!("unknown key; expected one of: {expected}"),
            );
        }
        Some(map)
    }

    /// The value of an optional field, or `None` when absent or invalid (which is reported).
    fn get<T: DeserializeOwned>(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<T> {
        let value = map.get(key)?;
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(join(path, key), e.to_string());
                None
            }
        }
    }

    fn require<T: DeserializeOwned>(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<T> {
        if !map.contains_key(key) {
            self.error(join(path, key), "missing");
            return None;
        }
        self.get(map, key, path)
    }

    fn config(&mut self, doc: &Value, base: &Path) -> Option<Config> {
        let top = self.object(doc, "", TOP_KEYS)?;
        let role: Option<Role> = self.require(top, "role", "");
        let listen: Option<SocketAddr> = self.require(top, "listen", "");
        let threads = self.threads(top);
        let max_inline = self.placement(top);
        let tasks = self.tasks(top, base);
        // Routes may name any declared task, valid or not: its own errors are reported already.
        let declared: Vec<&str> = top
            .get("tasks")
            .and_then(Value::as_object)
            .map_or_else(Vec::new, |m| m.keys().map(String::as_str).collect());
        let routes = self.routes(top, &declared);
        Some(Config {
            role: role?,
            listen: listen?,
            threads: threads?,
            max_inline: max_inline?,
            tasks,
            routes,
        })
    }

    fn threads(&mut self, top: &Map<String, Value>) -> Option<usize> {
        let default = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.get::<usize>(top, "threads", "") {
            Some(0) => {
                self.error("threads", "must be at least 1");
                None
            }
            Some(n) => Some(n),
            None if top.contains_key("threads") => None,
            None => Some(default),
        }
    }

    fn placement(&mut self, top: &Map<String, Value>) -> Option<usize> {
        let default = 64;
        let Some(value) = top.get("placement") else {
            return Some(default);
        };
        let map = self.object(value, "placement", PLACEMENT_KEYS)?;
        match self.get::<usize>(map, "max_inline", "placement") {
            Some(n) if n == 0 || n > MAX_INLINE_CEILING => {
                let message = format!("must be between 1 and {MAX_INLINE_CEILING}");
                self.error("placement.max_inline", message);
                None
            }
            Some(n) => Some(n),
            None if map.contains_key("max_inline") => None,
            None => Some(default),
        }
    }

    fn tasks(&mut self, top: &Map<String, Value>, base: &Path) -> BTreeMap<String, TaskSpec> {
        let mut tasks = BTreeMap::new();
        let Some(value) = top.get("tasks") else {
            return tasks;
        };
        let Value::Object(map) = value else {
            self.error(
                "tasks",
                format!("expected a mapping of task names, found {}", kind(value)),
            );
            return tasks;
        };
        for (name, spec) in map {
            let path = format!("tasks.{name}");
            if !valid_task_name(name) {
                let message = "task names use letters, digits, '.', '_' and '-', and start with a letter or digit";
                self.error(&path, message);
            }
            if let Some(task) = self.task(name, spec, &path, base) {
                tasks.insert(name.clone(), task);
            }
        }
        tasks
    }

    fn task(&mut self, name: &str, value: &Value, path: &str, base: &Path) -> Option<TaskSpec> {
        let map = self.object(value, path, TASK_KEYS)?;
        let wasm = self.require::<String>(map, "wasm", path).and_then(|file| {
            let resolved = base.join(&file);
            match std::fs::metadata(&resolved) {
                Ok(meta) if meta.is_file() => Some(resolved),
                Ok(_) => {
                    self.error(join(path, "wasm"), format!("{file:?} is not a file"));
                    None
                }
                Err(e) => {
                    let shown = resolved.display();
                    self.error(join(path, "wasm"), format!("cannot read \"{shown}\": {e}"));
                    None
                }
            }
        });
        let limits = match map.get("limits") {
            Some(value) => self.limits(value, &join(path, "limits")),
            None => Some(Limits::default()),
        };
        Some(TaskSpec {
            name: name.to_string(),
            wasm: wasm?,
            limits: limits?,
        })
    }

    fn limits(&mut self, value: &Value, path: &str) -> Option<Limits> {
        let map = self.object(value, path, LIMIT_KEYS)?;
        let default = Limits::default();
        let before = self.errors.len();
        let memory = self
            .get::<Size>(map, "memory", path)
            .map_or(default.memory, |s| s.0);
        let timeout = self
            .get::<Dur>(map, "timeout", path)
            .map_or(default.timeout, |d| d.0);
        let max_body = self
            .get::<Size>(map, "max_body", path)
            .map_or(default.max_body, |s| s.0);
        if !(1 << 20..=4 << 30).contains(&memory) {
            self.error(join(path, "memory"), "must be between 1MiB and 4GiB");
        }
        if timeout.is_zero() || timeout > Duration::from_secs(600) {
            self.error(join(path, "timeout"), "must be more than 0 and at most 10m");
        }
        if max_body > 1 << 30 {
            self.error(join(path, "max_body"), "must be at most 1GiB");
        }
        (self.errors.len() == before).then_some(Limits {
            memory,
            timeout,
            max_body,
        })
    }

    fn routes(&mut self, top: &Map<String, Value>, tasks: &[&str]) -> Vec<RouteSpec> {
        let Some(value) = top.get("routes") else {
            self.error("routes", "missing: a server needs at least one route");
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.error("routes", format!("expected a list, found {}", kind(value)));
            return Vec::new();
        };
        if items.is_empty() {
            self.error("routes", "a server needs at least one route");
        }
        let mut routes: Vec<(usize, RouteSpec)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(route) = self.route(item, &path, tasks) else {
                continue;
            };
            if let Some(&(j, _)) = routes.iter().find(|(_, r)| r.matcher == route.matcher) {
                self.error(
                    format!("{path}.match"),
                    format!("same match as routes[{j}], so it could never be chosen"),
                );
            }
            routes.push((i, route));
        }
        routes.into_iter().map(|(_, route)| route).collect()
    }

    fn route(&mut self, value: &Value, path: &str, tasks: &[&str]) -> Option<RouteSpec> {
        let map = self.object(value, path, ROUTE_KEYS)?;
        let matcher = match map.get("match") {
            Some(value) => self.matcher(value, &join(path, "match")),
            None => {
                self.error(join(path, "match"), "missing");
                None
            }
        };
        let task: Option<String> = self.get(map, "task", path);
        let origin: Option<SocketAddr> = self.get(map, "origin", path);
        let target = match (map.contains_key("task"), map.contains_key("origin")) {
            (true, true) => {
                self.error(path, "has both task and origin; a route has one of them");
                None
            }
            (false, false) => {
                self.error(path, "needs a task or an origin");
                None
            }
            (true, false) => task.and_then(|name| {
                if tasks.contains(&name.as_str()) {
                    Some(Target::Task(name))
                } else {
                    self.error(join(path, "task"), format!("unknown task {name:?}"));
                    None
                }
            }),
            (false, true) => origin.map(Target::Origin),
        };
        Some(RouteSpec {
            matcher: matcher?,
            target: target?,
        })
    }

    fn matcher(&mut self, value: &Value, path: &str) -> Option<Match> {
        let map = self.object(value, path, MATCH_KEYS)?;
        let before = self.errors.len();
        let host = self
            .get::<String>(map, "host", path)
            .map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                self.error(
                    join(path, "host"),
                    "must be a host name such as example.com or *.example.com, without port",
                );
            }
        }
        let exact = self.get::<String>(map, "path", path);
        let prefix = self.get::<String>(map, "path_prefix", path);
        for (key, p) in [("path", &exact), ("path_prefix", &prefix)] {
            if p.as_ref().is_some_and(|p| !p.starts_with('/')) {
                self.error(join(path, key), "must start with \"/\"");
            }
        }
        let path_match = match (exact, prefix) {
            (Some(p), None) => Some(PathMatch::Exact(p)),
            (None, Some(p)) => Some(PathMatch::Prefix(p)),
            (Some(_), Some(_)) => {
                self.error(path, "has both path and path_prefix; use one");
                None
            }
            (None, None) => {
                if !map.contains_key("path") && !map.contains_key("path_prefix") {
                    self.error(
                        path,
                        "needs path or path_prefix (path_prefix: \"/\" matches everything)",
                    );
                }
                None
            }
        };
        let methods = self.get::<Vec<String>>(map, "methods", path).map(|ms| {
            ms.iter()
                .map(|m| m.to_ascii_uppercase())
                .collect::<Vec<_>>()
        });
        if let Some(ms) = &methods {
            if ms.is_empty() {
                self.error(join(path, "methods"), "must name at least one method");
            }
            for m in ms
                .iter()
                .filter(|m| http::Method::from_bytes(m.as_bytes()).is_err())
            {
                self.error(
                    join(path, "methods"),
                    format!("{m:?} is not an HTTP method"),
                );
            }
        }
        (self.errors.len() == before).then_some(Match {
            host,
            path: path_match?,
            methods,
        })
    }
}

fn valid_task_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A byte size: `64MiB`, `512KiB`, `1GB` or a plain number of bytes.
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size such as 64MiB"))?
        {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid size {s:?}; use a size such as 64MiB or 512KiB"
                    ))
                }),
        }
    }
}

/// A duration: `50ms`, `2s`, `1m 30s`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration such as 50ms or 2s"))?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}; use a duration such as 50ms or 2s"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(config.max_inline, 64);
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
            "role: unknown variant `edje`, expected `edge`",
            "listen: invalid socket address syntax",
            "colour: unknown key; expected one of: role, listen, threads, placement, tasks, routes",
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
}
