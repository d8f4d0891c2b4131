//! The config schema: walks the parsed YAML and builds a [`Config`], collecting every problem
//! with its path. Each field is deserialized on its own, so one bad value never hides another.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

mod routes;
mod sections;

use super::units::{Dur, Size};
use super::{Config, ConfigError, Limits, Role, TaskSpec};

const EDGE_KEYS: &[&str] = &[
    "role",
    "listen",
    "threads",
    "admin",
    "forwarding",
    "placement",
    "regions",
    "health",
    "cache",
    "tasks",
    "routes",
];
const REGION_KEYS: &[&str] = &[
    "role",
    "listen",
    "threads",
    "admin",
    "forwarding",
    "placement",
    "tasks",
];
const EDGE_PLACEMENT_KEYS: &[&str] = &[
    "hot_threshold",
    "cool_threshold",
    "cooldown",
    "max_inline",
    "max_resident",
    "max_resident_memory",
    "inline_limits",
    "oversized_cooldown",
];
const REGION_PLACEMENT_KEYS: &[&str] = &["max_inline"];
const HEALTH_KEYS: &[&str] = &["interval", "timeout", "unhealthy_after"];
const TASK_KEYS: &[&str] = &["wasm", "limits"];
const LIMIT_KEYS: &[&str] = &["memory", "timeout", "max_body"];
const ROUTE_KEYS: &[&str] = &["match", "task", "origin", "placement", "region", "cache"];
const CACHE_KEYS: &[&str] = &["memory", "max_entry", "lock_timeout"];
const ROUTE_CACHE_KEYS: &[&str] = &["ttl", "pure"];
const MATCH_KEYS: &[&str] = &["host", "path", "path_prefix", "methods"];

/// Most inline executions one server may run at once (each reserves pool address space).
const MAX_INLINE_CEILING: usize = 4096;
/// The most request body Pingora can replay to a region after reading it for an inline try.
const REPLAYABLE_BODY: u64 = 64 << 10;
/// The environment variable holding the forwarding key when no `key_file` is given.
pub const FORWARDING_KEY_ENV: &str = "POPLAR_FORWARDING_KEY";
const MIN_KEY_BYTES: usize = 16;

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
        let Value::Object(raw) = doc else {
            self.error("", format!("expected a mapping, found {}", kind(doc)));
            return None;
        };
        let role: Option<Role> = self.require(raw, "role", "");
        let edge = role != Some(Role::Region);
        let top = self.object(doc, "", if edge { EDGE_KEYS } else { REGION_KEYS })?;
        let listen: Option<SocketAddr> = self.require(top, "listen", "");
        let threads = self.threads(top);
        let admin = self.admin(top);
        let placement = self.placement(top, edge);
        let regions = self.regions(top);
        let health = self.health(top);
        let cache = self.cache(top);
        let tasks = self.tasks(top, base);
        if !edge && tasks.is_empty() && !top.contains_key("tasks") {
            self.error("tasks", "missing: a region needs at least one task");
        }
        // Routes may name any declared task, valid or not: its own errors are reported already.
        let declared: Vec<&str> = top
            .get("tasks")
            .and_then(Value::as_object)
            .map_or_else(Vec::new, |m| m.keys().map(String::as_str).collect());
        let region_names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        let routes = if edge {
            self.routes(top, &declared, &region_names)
        } else {
            Vec::new()
        };
        if let (true, Some(p)) = (!regions.is_empty(), &placement)
            && p.inline_limits.max_body > REPLAYABLE_BODY
        {
            let message = "must be at most 64KiB with regions: a body read for an inline try is replayed to a region on fallback";
            self.error("placement.inline_limits.max_body", message);
        }
        let needs_key = !edge || !regions.is_empty();
        let forwarding_key = self.forwarding_key(top, base, needs_key);
        Some(Config {
            role: role?,
            listen: listen?,
            threads: threads?,
            admin: admin?,
            forwarding_key: forwarding_key?,
            placement: placement?,
            regions,
            health: health?,
            cache: cache?,
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
            if !valid_name(name) {
                self.error(&path, NAME_RULE);
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
            Some(value) => self.limits(value, &join(path, "limits"), Limits::default()),
            None => Some(Limits::default()),
        };
        Some(TaskSpec {
            name: name.to_string(),
            wasm: wasm?,
            limits: limits?,
        })
    }

    fn limits(&mut self, value: &Value, path: &str, default: Limits) -> Option<Limits> {
        let map = self.object(value, path, LIMIT_KEYS)?;
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
}

const NAME_RULE: &str =
    "names use letters, digits, '.', '_' and '-', and start with a letter or digit";

fn valid_name(name: &str) -> bool {
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
