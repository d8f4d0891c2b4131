//! The server's YAML config: the schema users write, compiled into the runtime structs the
//! rest of Poplar reads.
//!
//! Loading happens in two layers. `schema` walks the parsed YAML and checks every key and
//! value, collecting every problem with its path (`routes[2].task: unknown task "helo"`)
//! instead of stopping at the first. What comes out is plain data: [`Config`].

mod schema;
#[cfg(test)]
mod tests;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use schema::parse;

/// A validated server config.
#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub listen: SocketAddr,
    /// Worker threads for the proxy service (Pingora's `threads`).
    pub threads: usize,
    /// Where the admin endpoint (`/stats`) listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// The key edges sign forwarded requests with and regions check; needed by an edge
    /// with regions and by a region.
    pub forwarding_key: Option<ForwardingKey>,
    pub placement: PlacementSpec,
    /// Edge only; sorted by name.
    pub regions: Vec<RegionSpec>,
    pub health: HealthSpec,
    /// The edge's result cache (used by routes with `cache:`).
    pub cache: CacheSpec,
    pub tasks: BTreeMap<String, TaskSpec>,
    /// Edge only, in config order; [`crate::routing::Router`] decides precedence.
    pub routes: Vec<RouteSpec>,
}

/// A shared secret, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardingKey(pub Vec<u8>);

impl fmt::Debug for ForwardingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ForwardingKey({} bytes)", self.0.len())
    }
}

/// How an edge places task requests.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementSpec {
    /// Requests per second at which a task turns hot.
    pub hot_threshold: f64,
    /// A hot task whose rate stays below this for `cooldown` turns cold again.
    pub cool_threshold: f64,
    pub cooldown: Duration,
    /// Concurrent inline executions at most; also sizes Wasmtime's instance pool.
    pub max_inline: usize,
    /// Tasks compiled and kept ready at the edge, at most.
    pub max_resident: usize,
    /// Compiled code kept resident, in bytes, at most.
    pub max_resident_memory: u64,
    /// The largest limits a task may declare and still run inline under `auto`.
    pub inline_limits: Limits,
    /// How long a task that outgrew the edge at run time is kept off it.
    pub oversized_cooldown: Duration,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        PlacementSpec {
            hot_threshold: 5.0,
            cool_threshold: 2.5,
            cooldown: Duration::from_secs(10),
            max_inline: 64,
            max_resident: 64,
            max_resident_memory: 512 << 20,
            inline_limits: Limits {
                memory: 128 << 20,
                timeout: Duration::from_millis(100),
                max_body: 64 << 10,
            },
            oversized_cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    pub name: String,
    pub address: SocketAddr,
}

/// The edge's result cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSpec {
    /// Bytes of responses kept, at most.
    pub memory: u64,
    /// The largest response body stored.
    pub max_entry: u64,
    /// How long concurrent misses on one key wait for the first to fill it.
    pub lock_timeout: Duration,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            memory: 256 << 20,
            max_entry: 8 << 20,
            lock_timeout: Duration::from_secs(5),
        }
    }
}

/// A route's caching: present means on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteCache {
    /// Freshness for responses that state none.
    pub ttl: Option<Duration>,
    /// The task is a pure function of its request: cache every method, keyed also by a
    /// hash of the body.
    pub pure: bool,
}

/// Active health checks of regions, and passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSpec {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes before a region is taken out.
    pub unhealthy_after: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            unhealthy_after: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
    Region,
}

#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    /// Resolved against the config file's folder.
    pub wasm: PathBuf,
    pub limits: Limits,
}

/// What one execution of a task may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes, across the instance's memories.
    pub memory: u64,
    /// Wall-clock deadline for one request, from instantiation to the end of the response body.
    pub timeout: Duration,
    /// Largest request body handed to the task; larger ones get 413.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            timeout: Duration::from_secs(1),
            max_body: 1 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub matcher: Match,
    pub target: Target,
    /// Where a task route's requests run; `Edge` for origin routes.
    pub placement: Mode,
    /// The home region: tried first while healthy (data locality).
    pub region: Option<String>,
    /// `None`: this route never caches.
    pub cache: Option<RouteCache>,
}

/// A task route's placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inline when hot, resident, fitting and a slot is free; else forwarded.
    Auto,
    /// Always inline (compiled at start).
    Edge,
    /// Always forwarded.
    Region,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Lower-case host without port; `*.example.com` matches any subdomain.
    pub host: Option<String>,
    pub path: PathMatch,
    /// Upper-case method names; `None` matches every method.
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Task(String),
    Origin(SocketAddr),
}

/// One problem in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// A path into the document, such as `routes[2].match.path_prefix`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, in document order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        let plural = if n == 1 { "" } else { "s" };
        writeln!(f, "{}: {n} problem{plural}", self.file.display())?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a config file. Relative paths inside it resolve from its folder.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        file: file.to_path_buf(),
        errors: vec![ConfigError {
            path: String::new(),
            message,
        }],
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    let base = file.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    })
}
