//! `origins:` and routes' `origin:`: pools of servers by name, or one server written in the
//! route (a pool of one, named by its text). Compiled here, no I/O; a pool's CA file is read
//! by [`load_cas`] when the config is prepared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;
use super::schema;
use super::source::{Reported, join};
use super::units::Dur;

/// How often server names are resolved again by default.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// How a pool spreads requests over its servers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Each path to one server while it is up (rendezvous hashing).
    PathHash,
}

/// A pool of origin servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginSpec {
    /// Its name in `origins`, or the text of a route's `origin:` for a server written there.
    pub name: String,
    pub servers: Vec<ServerSpec>,
    pub balance: Balance,
    /// The `Host` sent instead of the client's.
    pub host: Option<String>,
    /// A CA file for HTTPS servers, resolved against the config's folder.
    pub ca: Option<PathBuf>,
    /// The CA certificates (DER), once prepared.
    pub ca_certs: Option<Arc<Vec<Vec<u8>>>>,
    pub verify: bool,
    pub timeouts: Timeouts,
    pub health: Option<OriginHealthSpec>,
    pub eject: EjectSpec,
    pub resolve_every: Duration,
}

/// One server: a host (an IP address or a name) and port, over HTTP or HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    /// Lower-case; an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        match self.host.contains(':') {
            true => write!(f, "{scheme}://[{}]:{}", self.host, self.port),
            false => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl ServerSpec {
    /// `host:port`, `http://host[:port]` or `https://host[:port]` (a path is refused).
    pub fn parse(text: &str) -> Result<ServerSpec, String> {
        let (tls, rest, default_port) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest, Some(443)),
            Some(("http", rest)) => (false, rest, Some(80)),
            Some((scheme, _)) => return Err(format!("scheme {scheme:?}: http or https")),
            None => (false, text, None),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err("a server is host and port only: no path, query or user".into());
        }
        let authority: http::uri::Authority = rest
            .parse()
            .map_err(|_| format!("{text:?} is not host:port"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = match (authority.port_u16(), default_port) {
            (Some(port), _) | (None, Some(port)) => port,
            (None, None) => return Err(format!("{text:?} needs a port (host:port)")),
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{text:?} is not host:port"));
        }
        Ok(ServerSpec {
            host: host.to_ascii_lowercase(),
            port,
            tls,
        })
    }

    /// The host as an IP address, when it is one (not a name to resolve).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginHealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EjectSpec {
    pub failures: u32,
    pub duration: Duration,
}

impl Default for EjectSpec {
    fn default() -> EjectSpec {
        EjectSpec {
            failures: 3,
            duration: Duration::from_secs(10),
        }
    }
}

impl OriginSpec {
    /// A pool of the one server `text` names, with every default: what a route's
    /// `origin: "host:port"` makes.
    pub fn single(text: &str) -> Result<OriginSpec, String> {
        Ok(OriginSpec {
            name: text.to_string(),
            servers: vec![ServerSpec::parse(text)?],
            balance: Balance::default(),
            host: None,
            ca: None,
            ca_certs: None,
            verify: true,
            timeouts: Timeouts::default(),
            health: None,
            eject: EjectSpec::default(),
            resolve_every: RESOLVE_EVERY,
        })
    }
}

/// The pools of `origins:`.
pub fn compile(
    origins: BTreeMap<String, schema::Origin>,
    base: &Path,
    r: &mut Reported,
) -> BTreeMap<String, OriginSpec> {
    let mut out = BTreeMap::new();
    for (name, origin) in origins {
        let path = format!("origins.{name}");
        if let Some(spec) = pool(&name, origin, &path, base, r) {
            out.insert(name, spec);
        }
    }
    out
}

fn pool(
    name: &str,
    origin: schema::Origin,
    path: &str,
    base: &Path,
    r: &mut Reported,
) -> Option<OriginSpec> {
    let Some(texts) = origin.servers else {
        r.error(join(path, "servers"), "missing");
        return None;
    };
    if texts.is_empty() {
        r.error(join(path, "servers"), "empty: at least one server");
    }
    let mut servers = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match ServerSpec::parse(text) {
            Ok(server) if servers.contains(&server) => {
                r.error(
                    format!("{path}.servers[{i}]"),
                    format!("{server} is listed twice"),
                );
            }
            Ok(server) => servers.push(server),
            Err(e) => r.error(format!("{path}.servers[{i}]"), e),
        }
    }
    let host = origin.host.filter(|h| {
        let ok = http::HeaderValue::from_str(h).is_ok() && !h.is_empty();
        if !ok {
            r.error(join(path, "host"), "not a valid Host header value");
        }
        ok
    });
    let dur = |d: Option<Dur>, default: Duration| d.map_or(default, |d| d.0);
    let (t, default) = (origin.timeouts, Timeouts::default());
    let timeouts = Timeouts {
        connect: dur(t.as_ref().and_then(|t| t.connect), default.connect),
        read: dur(t.as_ref().and_then(|t| t.read), default.read),
        write: dur(t.as_ref().and_then(|t| t.write), default.write),
        idle: dur(t.as_ref().and_then(|t| t.idle), default.idle),
    };
    for (key, value) in [
        ("connect", timeouts.connect),
        ("read", timeouts.read),
        ("write", timeouts.write),
    ] {
        if value.is_zero() || value > Duration::from_secs(3600) {
            r.error(
                format!("{path}.timeouts.{key}"),
                "must be more than 0 and at most 1h",
            );
        }
    }
    let health = origin
        .health
        .and_then(|h| health(h, &join(path, "health"), r));
    let default = EjectSpec::default();
    let eject = EjectSpec {
        failures: (origin.eject.as_ref().and_then(|e| e.failures))
            .unwrap_or(default.failures)
            .max(1),
        duration: dur(origin.eject.and_then(|e| e.duration), default.duration),
    };
    let resolve_every = dur(origin.resolve_every, RESOLVE_EVERY).max(Duration::from_secs(1));
    Some(OriginSpec {
        name: name.to_string(),
        servers,
        balance: origin.balance.unwrap_or_default(),
        host,
        ca: origin.ca.map(|c| base.join(c)),
        ca_certs: None,
        verify: origin.verify.unwrap_or(true),
        timeouts,
        health,
        eject,
        resolve_every,
    })
}

fn health(h: schema::OriginHealth, path: &str, r: &mut Reported) -> Option<OriginHealthSpec> {
    let Some(probe) = h.path else {
        r.error(join(path, "path"), "missing");
        return None;
    };
    if !probe.starts_with('/') {
        r.error(join(path, "path"), "must start with /");
    }
    let interval = h.interval.map_or(Duration::from_secs(5), |d| d.0);
    let timeout = h.timeout.map_or(Duration::from_secs(2), |d| d.0);
    if interval < Duration::from_millis(100) {
        r.error(join(path, "interval"), "must be at least 100ms");
    }
    if timeout.is_zero() {
        r.error(join(path, "timeout"), "must be more than 0");
    }
    Some(OriginHealthSpec {
        path: probe,
        interval,
        timeout,
        unhealthy_after: h.unhealthy_after.unwrap_or(2).max(1),
    })
}

/// A pool of one for each server a route names by its text (`origin: "host:port"`).
pub fn add_route_servers(routes: &[super::RouteSpec], origins: &mut BTreeMap<String, OriginSpec>) {
    for route in routes {
        if let super::Target::Origin(name) = &route.target
            && !origins.contains_key(name)
            && let Ok(spec) = OriginSpec::single(name)
        {
            origins.insert(name.clone(), spec);
        }
    }
}

/// Reads each pool's CA file; each problem at its pool's `ca`.
pub fn load_cas(origins: &mut BTreeMap<String, OriginSpec>, errors: &mut Vec<ConfigError>) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for (name, origin) in origins.iter_mut() {
        let Some(file) = &origin.ca else {
            continue;
        };
        let path = format!("origins.{name}.ca");
        let shown = format!("{:?}", file.display().to_string());
        let certs = std::fs::read(file)
            .map_err(|e| format!("cannot read {shown}: {e}"))
            .and_then(|pem| {
                CertificateDer::pem_slice_iter(&pem)
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{shown} is not PEM: {e}"))
            })
            .and_then(|certs| {
                let bad = certs
                    .iter()
                    .find(|c| x509_parser::parse_x509_certificate(c).is_err());
                match (certs.is_empty(), bad) {
                    (true, _) => Err(format!("no certificate in {shown}")),
                    (false, Some(_)) => {
                        Err(format!("{shown} holds a certificate that does not parse"))
                    }
                    (false, None) => Ok(certs),
                }
            });
        match certs {
            Ok(certs) => origin.ca_certs = Some(Arc::new(certs)),
            Err(message) => errors.push(ConfigError::new(path, message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_host_and_port_with_an_optional_scheme() {
        let parse = |t: &str| ServerSpec::parse(t).map(|s| s.to_string());
        assert_eq!(parse("127.0.0.1:9000").unwrap(), "http://127.0.0.1:9000");
        assert_eq!(
            parse("App.Internal:8080").unwrap(),
            "http://app.internal:8080"
        );
        assert_eq!(
            parse("https://example.com").unwrap(),
            "https://example.com:443"
        );
        assert_eq!(
            parse("https://example.com:8443/").unwrap(),
            "https://example.com:8443"
        );
        assert_eq!(parse("http://[::1]:81").unwrap(), "http://[::1]:81");
        assert_eq!(
            parse("http://example.com").unwrap(),
            "http://example.com:80"
        );
        assert!(parse("example.com").unwrap_err().contains("needs a port"));
        assert!(
            parse("https://example.com/path")
                .unwrap_err()
                .contains("no path")
        );
        assert!(
            parse("ftp://example.com:21")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(parse("a b:80").is_err());
        assert!(parse("host:0").is_err());
        assert_eq!(
            ServerSpec::parse("[::1]:80").unwrap().ip(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(ServerSpec::parse("localhost:80").unwrap().ip(), None);
    }
}
