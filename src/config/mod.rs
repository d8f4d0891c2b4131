//! The server's YAML config: the schema users write, compiled into the runtime structs the
//! rest of Poplar reads.
//!
//! Reading a config goes one way, each step its own module: [`source`] reads the YAML into
//! a tree that knows each node's line and column; [`schema`] is the file's shape as serde
//! types (unknown keys rejected), deserialized with every type error collected; `compile`
//! turns it into the runtime model below, checking bounds and references. None of these
//! does I/O: [`prepare`] then reads the forwarding key and checks the wasm files. Every
//! problem is reported at once, with its path (`routes[2].task: unknown task "helo"`) and,
//! where the YAML or a type is wrong, its line and column.

mod clients;
mod compile;
mod listen;
mod origins;
pub mod schema;
mod source;
#[cfg(test)]
mod tests;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use clients::ClientLimits;
pub(crate) use compile::valid_name;
pub use listen::{ListenerSpec, TlsSpec};
pub use origins::{Balance, EjectSpec, OriginHealthSpec, OriginSpec, ServerSpec, Timeouts};

/// The environment variable holding the forwarding key when no `key_file` is given.
pub const FORWARDING_KEY_ENV: &str = "POPLAR_FORWARDING_KEY";
const MIN_KEY_BYTES: usize = 16;

/// A validated server config.
#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    /// Never empty once compiled.
    pub listeners: Vec<ListenerSpec>,
    /// Worker threads for the proxy service (Pingora's `threads`).
    pub threads: usize,
    /// The level guests' output is logged at.
    pub guest_log: log::Level,
    /// How long `SIGTERM` lets requests in flight finish (`grace_period`).
    pub grace_period: std::time::Duration,
    /// Where a graceful upgrade hands the listening sockets over (`upgrade_socket`).
    pub upgrade_socket: PathBuf,
    /// Where request lines go, if anywhere.
    pub access_log: Option<AccessLogSpec>,
    /// What one client connection may take (`clients:`).
    pub clients: ClientLimits,
    /// The admin endpoint (`/stats`, `/metrics`, `/purge`), if any.
    pub admin: Option<AdminSpec>,
    /// Where the forwarding key comes from: set for an edge with regions and a region.
    pub key_source: Option<KeySource>,
    /// The key edges sign forwarded requests with and regions check, once [`prepare`]d.
    pub forwarding_key: Option<ForwardingKey>,
    pub placement: PlacementSpec,
    /// Edge only; sorted by name.
    pub regions: Vec<RegionSpec>,
    pub health: HealthSpec,
    /// The edge's result cache (used by routes with `cache:`).
    pub cache: CacheSpec,
    /// Peers whose `X-Forwarded-For` the edge keeps (and extends).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where request ids come from when a proxy in front sets them.
    pub request_id_header: Option<http::HeaderName>,
    pub tasks: BTreeMap<String, TaskSpec>,
    /// Where compiled code is kept on disk (`code_cache:`), if anywhere.
    pub code_cache: Option<CodeCacheSpec>,
    /// Region only: the task registry (`registry:`), if any.
    pub registry: Option<RegistrySpec>,
    /// Edge only: the origin pools routes name, those written in a route included (named
    /// by their text).
    pub origins: BTreeMap<String, OriginSpec>,
    /// Edge only, in config order; [`crate::routing::Router`] decides precedence.
    pub routes: Vec<RouteSpec>,
}

impl Config {
    /// The first listener's address: where a server started in a test or the demo is
    /// reached.
    pub fn addr(&self) -> SocketAddr {
        self.listeners
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |l| l.addr)
    }
}

/// The access log's destination and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    pub to: LogTarget,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(std::path::PathBuf),
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The admin endpoint: where it listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSpec {
    pub listen: SocketAddr,
    /// `admin.token_file`, resolved against the config's folder; else [`ADMIN_TOKEN_ENV`].
    pub token_file: Option<PathBuf>,
    /// The bearer token, once [`prepare`]d: `POST /purge` needs it (and the reads, with
    /// `guard_reads`). None: the endpoint is open, which only a loopback one may be.
    pub token: Option<Secret>,
    pub guard_reads: bool,
}

/// Where a graceful upgrade hands sockets over when `upgrade_socket` is not given.
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/poplar-upgrade.sock";

/// Where the admin endpoint listens when `admin.listen` is not given.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

/// The environment variable holding the admin token when no `token_file` is given.
pub const ADMIN_TOKEN_ENV: &str = "POPLAR_ADMIN_TOKEN";

/// A bearer token, kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Where a forwarding key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `forwarding.key_file`, resolved against the config's folder.
    File(PathBuf),
    /// [`FORWARDING_KEY_ENV`].
    Env,
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
    /// Linear memory of all executions together, at most; `None`: max_inline times the
    /// largest task memory.
    pub guest_memory: Option<u64>,
    /// Tasks compiled and kept ready at the edge, at most.
    pub max_resident: usize,
    /// Compiled code kept resident, in bytes, at most.
    pub max_resident_memory: u64,
    /// The largest limits a task may declare and still run inline under `auto`.
    pub inline_limits: Limits,
    /// How long a task that outgrew the edge at run time is kept off it.
    pub oversized_cooldown: Duration,
    /// When a task whose runs keep failing is paused.
    pub failing: crate::wasm::FailPolicy,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        PlacementSpec {
            hot_threshold: 5.0,
            cool_threshold: 2.5,
            cooldown: Duration::from_secs(10),
            max_inline: 64,
            guest_memory: None,
            max_resident: 64,
            max_resident_memory: 512 << 20,
            inline_limits: Limits {
                memory: 128 << 20,
                timeout: Duration::from_millis(100),
                max_body: 64 << 10,
            },
            oversized_cooldown: Duration::from_secs(30),
            failing: crate::wasm::FailPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    pub name: String,
    pub address: RegionAddress,
}

/// Where a region's proxy listens: an IP address, or a DNS name (a Kubernetes Service's, say)
/// resolved at load and again in the background; and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegionAddress {
    /// Lower-case; an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
}

impl RegionAddress {
    /// `ip:port` or `name:port`: no scheme, no path.
    pub fn parse(text: &str) -> Result<RegionAddress, String> {
        if text.contains("://") {
            return Err(format!(
                "{text:?}: a region's address is host:port, without a scheme"
            ));
        }
        let server = ServerSpec::parse(text)?;
        Ok(RegionAddress {
            host: server.host,
            port: server.port,
        })
    }
}

impl From<SocketAddr> for RegionAddress {
    fn from(addr: SocketAddr) -> RegionAddress {
        RegionAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for RegionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// `code_cache:` the folder compiled code is kept in, and its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeCacheSpec {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// `registry:` where deployed code is kept, and what a deploy may bring.
#[derive(Debug, Clone)]
pub struct RegistrySpec {
    pub dir: PathBuf,
    /// Resolved against the config's folder; else [`DEPLOY_TOKEN_ENV`].
    pub token_file: Option<PathBuf>,
    /// The bearer token deploys need, once [`prepare`]d.
    pub token: Option<Secret>,
    pub max_memory: u64,
    pub max_code: u64,
}

impl PartialEq for RegistrySpec {
    fn eq(&self, other: &Self) -> bool {
        let token = |s: &RegistrySpec| s.token.as_ref().map(|t| t.0.clone());
        self.dir == other.dir
            && self.token_file == other.token_file
            && token(self) == token(other)
            && self.max_memory == other.max_memory
            && self.max_code == other.max_code
    }
}

/// The environment variable holding the deploy token when no `registry.token_file` is given.
pub const DEPLOY_TOKEN_ENV: &str = "POPLAR_DEPLOY_TOKEN";

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
    /// How often a region named by DNS is resolved again.
    pub resolve_every: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            unhealthy_after: 2,
            resolve_every: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
    Region,
}

#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    /// The component, resolved against the config file's folder. `None` at an edge: the
    /// code comes from its regions' registries when the task turns hot.
    pub wasm: Option<PathBuf>,
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

impl Limits {
    /// What is out of bounds, by field: a config file's task and a deploy are held to the same.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if !(1 << 20..=4 << 30).contains(&self.memory) {
            problems.push(("memory", "must be between 1MiB and 4GiB"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            problems.push(("timeout", "must be more than 0 and at most 10m"));
        }
        if self.max_body > 1 << 30 {
            problems.push(("max_body", "must be at most 1GiB"));
        }
        problems
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
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
    /// A pool in [`Config::origins`], by name.
    Origin(String),
}

/// One problem in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// A path into the document, such as `routes[2].match.path_prefix`; empty for the whole file.
    pub path: String,
    pub message: String,
    /// Line and column, where the YAML or a value's type is wrong.
    pub location: Option<(u64, u64)>,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// Parses a config document and [`prepare`]s it. `base` is the folder relative paths
/// resolve from.
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let (config, mut errors) = read(text, base);
    // The files are checked even when the text has problems: all are listed at once.
    if let Some(config) = config {
        match prepare(config, |name| std::env::var(name).ok()) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(more) => errors.extend(more),
        }
    }
    Err(errors)
}

/// Reads and checks a config document, without touching files or the environment.
pub fn compile(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    match read(text, base) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(errors),
    }
}

/// The config as far as it could be built, and every problem found in the text.
fn read(text: &str, base: &Path) -> (Option<Config>, Vec<ConfigError>) {
    let doc = match source::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => return (None, vec![e]),
    };
    if !doc.value.is_object() {
        let message = "expected a mapping of config keys at the top of the file";
        let mut error = ConfigError::new("", message);
        error.location = doc.locate("");
        return (None, vec![error]);
    }
    let declared = compile::Declared::of(&doc.value);
    let mut reported = source::Reported::default();
    let config = doc
        .deserialize::<schema::File>(&mut reported)
        .and_then(|file| compile::compile(file, &declared, base, &mut reported));
    (config, reported.in_file_order(&doc))
}

/// What a compiled config needs from outside: the forwarding key (from its file, or from
/// the environment through `env`) and the task's wasm files, which must exist.
pub fn prepare(
    mut config: Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    for (task, wasm) in (config.tasks.values()).filter_map(|t| Some((t, t.wasm.as_ref()?))) {
        let path = format!("tasks.{}.wasm", task.name);
        match std::fs::metadata(wasm) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => errors.push(ConfigError::new(path, format!("{wasm:?} is not a file"))),
            Err(e) => {
                let shown = wasm.display();
                errors.push(ConfigError::new(
                    path,
                    format!("cannot read \"{shown}\": {e}"),
                ));
            }
        }
    }
    let key = match &config.key_source {
        Some(KeySource::File(file)) => match std::fs::read(file) {
            Ok(bytes) => Some(("forwarding.key_file", bytes.trim_ascii().to_vec())),
            Err(e) => {
                let message = format!("cannot read {:?}: {e}", file.display().to_string());
                errors.push(ConfigError::new("forwarding.key_file", message));
                None
            }
        },
        Some(KeySource::Env) => match env(FORWARDING_KEY_ENV) {
            Some(key) => Some(("forwarding", key.trim().as_bytes().to_vec())),
            None => {
                let message = format!(
                    "no forwarding key: set {FORWARDING_KEY_ENV} or forwarding.key_file (edges with regions and regions need one)"
                );
                errors.push(ConfigError::new("forwarding", message));
                None
            }
        },
        None => env(FORWARDING_KEY_ENV).map(|key| ("forwarding", key.trim().as_bytes().to_vec())),
    };
    if let Some((path, key)) = key {
        if key.len() < MIN_KEY_BYTES {
            let message = format!("the forwarding key must be at least {MIN_KEY_BYTES} bytes");
            errors.push(ConfigError::new(path, message));
        }
        config.forwarding_key = Some(ForwardingKey(key));
    }
    if let Some(admin) = &mut config.admin {
        admin.token = admin_token(admin, &env, &mut errors);
    }
    if let Some(registry) = &mut config.registry {
        registry.token = deploy_token(registry, &env, &mut errors);
    }
    listen::load_certificates(&mut config.listeners, &mut errors);
    origins::load_cas(&mut config.origins, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// The deploy token, from its file or the environment: a registry needs one.
fn deploy_token(
    registry: &RegistrySpec,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Secret> {
    let (path, token) = match &registry.token_file {
        Some(file) => match std::fs::read(file) {
            Ok(bytes) => ("registry.token_file", bytes.trim_ascii().to_vec()),
            Err(e) => {
                let message = format!("cannot read {:?}: {e}", file.display().to_string());
                errors.push(ConfigError::new("registry.token_file", message));
                return None;
            }
        },
        None => match env(DEPLOY_TOKEN_ENV) {
            Some(token) => ("registry", token.trim().as_bytes().to_vec()),
            None => {
                let message = format!(
                    "no deploy token: set {DEPLOY_TOKEN_ENV} or registry.token_file (deploys need one)"
                );
                errors.push(ConfigError::new("registry", message));
                return None;
            }
        },
    };
    if token.len() < MIN_KEY_BYTES {
        let message = format!("the deploy token must be at least {MIN_KEY_BYTES} bytes");
        errors.push(ConfigError::new(path, message));
        return None;
    }
    Some(Secret(token))
}

/// The admin endpoint's token, from its file or the environment; an error where the
/// endpoint needs one and has none.
fn admin_token(
    admin: &AdminSpec,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Secret> {
    let token = match &admin.token_file {
        Some(file) => match std::fs::read(file) {
            Ok(bytes) => Some(("admin.token_file", bytes.trim_ascii().to_vec())),
            Err(e) => {
                let message = format!("cannot read {:?}: {e}", file.display().to_string());
                errors.push(ConfigError::new("admin.token_file", message));
                return None;
            }
        },
        None => env(ADMIN_TOKEN_ENV).map(|t| ("admin", t.trim().as_bytes().to_vec())),
    };
    let needed_by = if admin.guard_reads {
        Some(("admin.guard_reads", "guarded reads need a token"))
    } else if !admin.listen.ip().is_loopback() {
        let why = "an admin endpoint off loopback needs a token (it can purge the cache)";
        Some(("admin.listen", why))
    } else {
        None
    };
    match (token, needed_by) {
        (Some((path, token)), _) if token.len() < MIN_KEY_BYTES => {
            let message = format!("the admin token must be at least {MIN_KEY_BYTES} bytes");
            errors.push(ConfigError::new(path, message));
            None
        }
        (Some((_, token)), _) => Some(Secret(token)),
        (None, Some((path, why))) => {
            let message = format!("{why}: set admin.token_file or {ADMIN_TOKEN_ENV}");
            errors.push(ConfigError::new(path, message));
            None
        }
        (None, None) => None,
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
        errors: vec![ConfigError::new("", message)],
    };
    let text = std::fs::read_to_string(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    let base = file.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    })
}
