//! The file's shape: what a user writes, as serde types. Every mapping rejects keys it does
//! not know; closed sets are enums; sizes and durations are typed. `poplar schema` prints
//! the JSON Schema of [`File`], for editors to validate and complete configs with.
//!
//! Fields the file must have are `Option` here all the same (marked required in the JSON
//! Schema): a missing one is reported by [`super::compile`] beside every other problem,
//! instead of ending the reading.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::Deserialize;

use super::units::{Dur, Size};
use super::{Mode, Role};

/// A Poplar server's config: one file per server, edge or region.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Poplar config")]
pub struct File {
    /// `edge` or `region`.
    #[schemars(required)]
    pub role: Option<Role>,
    /// Where the proxy listens: one plain HTTP address (`ip:port`), or a list of listeners,
    /// each plain or TLS.
    #[schemars(required)]
    pub listen: Option<Listen>,
    /// Worker threads (default: one per core).
    pub threads: Option<usize>,
    /// The level guests' stdout and stderr lines are logged at, under the target
    /// `poplar::guest` (default `info`).
    pub guest_log: Option<LogLevel>,
    /// How long `SIGTERM` lets requests in flight finish, after the listeners close, before
    /// the process exits (default: the longest task timeout plus 1 s). Whole seconds.
    pub grace_period: Option<Dur>,
    /// The Unix socket a graceful upgrade (`poplar serve --upgrade`) hands the listening
    /// sockets over on, relative to the config's folder (default
    /// `/tmp/poplar-upgrade.sock`): the same for the old process and the new.
    pub upgrade_socket: Option<String>,
    pub admin: Option<Admin>,
    /// One line per request, written off the request's path.
    pub access_log: Option<AccessLog>,
    /// What one client connection may take: request head size and time, body stalls,
    /// idle keep-alive, requests per connection, connections per listener.
    pub clients: Option<super::clients::Clients>,
    pub forwarding: Option<Forwarding>,
    pub placement: Option<Placement>,
    /// Edge only: the regions forwarded tasks run in, by name.
    #[serde(default)]
    pub regions: BTreeMap<String, Region>,
    /// Edge only: active health checks of the regions.
    pub health: Option<Health>,
    /// Edge only: origin pools by name, for routes' `origin:`.
    #[serde(default)]
    pub origins: BTreeMap<String, Origin>,
    /// Edge only: the result cache used by routes with `cache:`.
    pub cache: Option<Cache>,
    /// Edge only: proxies (CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` is kept and
    /// extended; from anyone else it, `Forwarded` and `X-Real-IP` are dropped.
    pub trusted_proxies: Option<Vec<String>>,
    /// Edge only: a header (such as `x-request-id`) whose value, set by a proxy in front,
    /// becomes the request's id in logs and is sent on to regions; else the edge makes one.
    pub request_id_header: Option<String>,
    /// Compiled task code kept on disk, so a restart compiles nothing it compiled before
    /// (and, at an edge, the code it took from regions).
    pub code_cache: Option<CodeCache>,
    /// Region only: task code deployed with `poplar deploy`, kept by digest with its versions.
    pub registry: Option<Registry>,
    /// The tasks this server can run, by name.
    #[serde(default)]
    pub tasks: BTreeMap<String, Task>,
    /// Edge only: what each request is matched to.
    #[schemars(with = "Option<Vec<Route>>")]
    pub routes: Option<Vec<Option<Route>>>,
}

/// `listen:` one address, or listeners.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum Listen {
    /// One plain HTTP/1.1 listener.
    Address(SocketAddr),
    Listeners(Vec<Listener>),
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Listen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address (ip:port) or a list of listeners")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Listen, E> {
                s.parse().map(Listen::Address).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Listen, A::Error> {
                let d = serde::de::value::SeqAccessDeserializer::new(seq);
                Vec::deserialize(d).map(Listen::Listeners)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One listening socket.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `ip:port`.
    #[schemars(required)]
    pub address: Option<SocketAddr>,
    /// Makes it an HTTPS listener.
    pub tls: Option<Tls>,
    /// Plain listeners: HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 (default false).
    pub h2c: Option<bool>,
    /// Plain listeners: answer every request with a `308` to the same URL over HTTPS, on the
    /// first TLS listener's port (default false).
    pub redirect_https: Option<bool>,
}

/// A TLS listener's settings: TLS 1.2 and 1.3 only.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificates, chosen by the name the client asks for (SNI) among each one's DNS
    /// names (wildcards included); the first one for clients that name none, or another.
    #[schemars(required)]
    pub certificates: Option<Vec<Certificate>>,
    /// Whether HTTP/2 is offered by ALPN beside HTTP/1.1 (default true).
    pub http2: Option<bool>,
}

/// A certificate and its key, PEM files relative to the config's folder.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// The certificate chain: the server's certificate first, then intermediates.
    #[schemars(required)]
    pub cert: Option<String>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(required)]
    pub key: Option<String>,
}

/// A pool of origin servers.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// Each `host:port`, `http://host[:port]` or `https://host[:port]`; a host is an IP
    /// address or a name (resolved in the background, never on a request's path).
    #[schemars(required)]
    pub servers: Option<Vec<String>>,
    /// `round_robin` (the default) or `path_hash`: each path keeps to one server while that
    /// server is up (cache locality), by rendezvous hashing.
    pub balance: Option<super::Balance>,
    /// The `Host` header sent to the servers (default: the client's).
    pub host: Option<String>,
    /// HTTPS servers: a PEM file of the CAs their certificates are checked against, relative
    /// to the config's folder (default: the system's roots).
    pub ca: Option<String>,
    /// HTTPS servers: whether their certificates are checked, chain and name (default true).
    pub verify: Option<bool>,
    pub timeouts: Option<OriginTimeouts>,
    /// Active health checks (default: none; passive ejection only).
    pub health: Option<OriginHealth>,
    /// Passive ejection: a server whose requests fail `failures` times in a row (a refused
    /// connection, or an error after it) is left out for `duration`.
    pub eject: Option<Eject>,
    /// How often server names are resolved again (default 30s).
    pub resolve_every: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginTimeouts {
    /// To connect (and finish a TLS handshake); default 2s. A refused or timed-out connect
    /// goes to the next server.
    pub connect: Option<Dur>,
    /// Between reads of the answer; default 30s.
    pub read: Option<Dur>,
    /// Between writes of the request; default 30s.
    pub write: Option<Dur>,
    /// How long an unused connection is kept for reuse; default 60s.
    pub idle: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginHealth {
    /// `GET` this path; 2xx and 3xx are healthy.
    #[schemars(required)]
    pub path: Option<String>,
    /// Default 5s.
    pub interval: Option<Dur>,
    /// Default 2s.
    pub timeout: Option<Dur>,
    /// Consecutive failed checks before a server is left out (default 2); one success
    /// brings it back.
    pub unhealthy_after: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Eject {
    /// Default 3.
    pub failures: Option<u32>,
    /// Default 10s.
    pub duration: Option<Dur>,
}

/// A `log` level.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::Level {
    fn from(level: LogLevel) -> log::Level {
        match level {
            LogLevel::Error => log::Level::Error,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Info => log::Level::Info,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Trace => log::Level::Trace,
        }
    }
}

/// The admin endpoint (`/stats`, `/metrics`, `/purge`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port` (default `127.0.0.1:9901`, loopback).
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token `POST /purge` needs, relative to the config's folder
    /// (else `POPLAR_ADMIN_TOKEN`, if set). Required for a listener off loopback.
    pub token_file: Option<String>,
    /// Whether `GET /stats` and `GET /metrics` need the token too (default false).
    pub guard_reads: Option<bool>,
}

/// The access log.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stderr`, or a file (relative to the config's folder), appended to and reopened on
    /// `SIGUSR1` for log rotation.
    #[schemars(required)]
    pub to: Option<String>,
    /// `text` (combined-like, then `key=value` fields; the default) or `json` (one object
    /// per line).
    pub format: Option<super::LogFormat>,
}

/// Where the key shared by edges and regions is read from (else `POPLAR_FORWARDING_KEY`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Forwarding {
    /// A file holding the key, relative to the config's folder.
    pub key_file: String,
}

/// How an edge places task requests (a region takes only `max_inline`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Requests per second that make a task hot (default 5).
    pub hot_threshold: Option<f64>,
    /// A hot task below this rate for `cooldown` turns cold (default: half of hot_threshold).
    pub cool_threshold: Option<f64>,
    pub cooldown: Option<Dur>,
    /// Concurrent inline executions (default 64).
    pub max_inline: Option<usize>,
    /// Linear memory all executions together may hold, in bytes (default: max_inline times
    /// the largest task memory). A guest that would grow past it is stopped as if at its own
    /// cap (`500 memory`).
    pub guest_memory: Option<Size>,
    /// Tasks kept compiled at the edge (default 64).
    pub max_resident: Option<usize>,
    /// Compiled code kept at the edge, in bytes (default 512MiB).
    pub max_resident_memory: Option<Size>,
    /// The largest limits a task may declare and still run inline under `auto`.
    pub inline_limits: Option<Limits>,
    /// How long a task that outgrew the edge is kept off it (default 30s).
    pub oversized_cooldown: Option<Dur>,
    /// A task whose runs keep failing is paused (edges and regions).
    pub failing: Option<Failing>,
}

/// `placement.failing`: a task whose runs fail `after` times in a row (a trap, its memory
/// cap, its deadline, a body cut short) is paused for `pause`: its requests are answered
/// `503 paused` with `Retry-After` (at an edge under `auto`, forwarded with
/// `reason=failing`) instead of run. The first run after a pause is a probe: failing, it
/// pauses the task again for twice as long, up to `max_pause`; any whole answer ends it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Failing {
    /// Failed runs in a row (default 20); 0: never pause.
    pub after: Option<u32>,
    /// Default 1s.
    pub pause: Option<Dur>,
    /// Default 30s.
    pub max_pause: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// The region's proxy listener: `ip:port`, or `name:port` (a DNS name, resolved at load
    /// and again in the background, never on a request's path).
    pub address: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    /// Consecutive failed probes before a region is taken out.
    pub unhealthy_after: Option<u32>,
    /// How often a region named by DNS is resolved again (default 30s, at least 1s).
    pub resolve_every: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Memory the cache holds (default 256MiB): bodies, headers, keys and each entry's
    /// bookkeeping all counted, so the process's RSS grows by about this much when full.
    pub memory: Option<Size>,
    /// The largest response stored (default 8MiB).
    pub max_entry: Option<Size>,
    /// How long concurrent misses wait for the first to fill a key (default 5s).
    pub lock_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeCache {
    /// A folder of this server's own, relative to the config's folder (created if absent).
    #[schemars(required)]
    pub dir: Option<String>,
    /// Bytes kept there, at most (default 1GiB); the least recently used files go first.
    pub max_size: Option<Size>,
}

/// A region's task registry: the deploy API on its admin listener (`/tasks`), the code and
/// its versions kept in `dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// A folder of this region's own, relative to the config's folder (created if absent).
    #[schemars(required)]
    pub dir: Option<String>,
    /// A file holding the bearer token deploys need, relative to the config's folder (else
    /// `POPLAR_DEPLOY_TOKEN`); at least 16 bytes.
    pub token_file: Option<String>,
    /// The largest memory a deployed task may declare (default 256MiB).
    pub max_memory: Option<Size>,
    /// The largest component a deploy may upload (default 64MiB).
    pub max_code: Option<Size>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// A wasi:http component, relative to the config's folder. An edge's task may have
    /// none: its code is taken from its regions' registries when it turns hot.
    pub wasm: Option<String>,
    pub limits: Option<Limits>,
}

/// What one execution of a task may use.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory (default 64MiB).
    pub memory: Option<Size>,
    /// Deadline of one request (default 1s).
    pub timeout: Option<Dur>,
    /// Largest request body (default 1MiB); larger ones get 413.
    pub max_body: Option<Size>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(rename = "match")]
    pub matcher: Match,
    /// The task that answers (or `origin`).
    pub task: Option<String>,
    /// The origin proxied to (or `task`): a pool named in `origins`, or one server as
    /// `host:port`, `http://host[:port]` or `https://host[:port]`.
    pub origin: Option<String>,
    /// Task routes: `auto`, `edge` or `region`.
    pub placement: Option<Mode>,
    /// Task routes: the home region, tried first while healthy.
    pub region: Option<String>,
    /// Caching under HTTP rules; absent: never cached.
    pub cache: Option<RouteCache>,
}

/// What a route matches. `host` alone matches every path of that host.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// `example.com` or `*.example.com`, without port.
    pub host: Option<String>,
    /// An exact path.
    pub path: Option<String>,
    /// A prefix of whole path segments.
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// Freshness for responses that state none.
    pub ttl: Option<Dur>,
    /// The task is a pure function of its request: every method cached, keyed by the body too.
    pub pure: Option<bool>,
}

/// The JSON Schema of the config file.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(File)).unwrap_or_default()
}
