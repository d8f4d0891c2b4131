//! The server's YAML config: the schema users write, compiled into the runtime structs the
//! rest of Poplar reads.
//!
//! Loading happens in two layers. `schema` walks the parsed YAML and checks every key and
//! value, collecting every problem with its path (`routes[2].task: unknown task "helo"`)
//! instead of stopping at the first. What comes out is plain data: [`Config`].

mod schema;

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
    /// Concurrent inline executions at most; also sizes Wasmtime's instance pool.
    pub max_inline: usize,
    pub tasks: BTreeMap<String, TaskSpec>,
    /// In config order; [`crate::routing::Router`] decides precedence.
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
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
