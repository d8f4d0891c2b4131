//! `listen:`: one plain address, or a list of listeners each plain or TLS. Compiled here
//! (no I/O); the certificates are read by [`load_certificates`], when the config is
//! prepared.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::schema::{self, Listen};
use super::source::Reported;
use super::{ConfigError, DEFAULT_ADMIN};

/// A listening socket.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    /// Its TLS settings: an HTTPS listener.
    pub tls: Option<TlsSpec>,
    /// A plain listener that also takes HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// A plain listener that answers every request with a `308` to HTTPS on this port.
    pub redirect_https: Option<u16>,
}

impl ListenerSpec {
    /// A plain HTTP/1.1 listener, as `listen: ip:port` makes one.
    pub fn plain(addr: SocketAddr) -> ListenerSpec {
        ListenerSpec {
            addr,
            tls: None,
            h2c: false,
            redirect_https: None,
        }
    }

    /// Whether `other` is this socket with the same protocols (certificates aside): what a
    /// reload can keep.
    pub fn same_socket(&self, other: &ListenerSpec) -> bool {
        let http2 = |l: &ListenerSpec| l.tls.as_ref().map(|t| t.http2);
        self.addr == other.addr
            && http2(self) == http2(other)
            && self.h2c == other.h2c
            && self.redirect_https == other.redirect_https
    }
}

#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// `(cert, key)` PEM files, resolved against the config's folder.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// Whether ALPN offers `h2` beside `http/1.1`.
    pub http2: bool,
    /// The certificates, once prepared.
    pub loaded: Option<Arc<crate::tls::Certificates>>,
}

/// The listeners `listen:` declares; none that shares an address with another or with the
/// admin endpoint.
pub fn compile(
    listen: Option<Listen>,
    admin: Option<&schema::Admin>,
    base: &Path,
    r: &mut Reported,
) -> Vec<ListenerSpec> {
    let listeners = match listen {
        None => {
            r.error("listen", "missing");
            return Vec::new();
        }
        Some(Listen::Address(addr)) => vec![ListenerSpec::plain(addr)],
        Some(Listen::Listeners(list)) if list.is_empty() => {
            r.error("listen", "empty: at least one listener");
            return Vec::new();
        }
        Some(Listen::Listeners(list)) => listeners(list, base, r),
    };
    let admin = admin.map(|a| a.listen.unwrap_or(DEFAULT_ADMIN));
    if let Some(admin) = admin.filter(|a| listeners.iter().any(|l| l.addr == *a)) {
        let message = format!("{admin} is also in listen: one address, one listener");
        r.error("admin.listen", message);
    }
    listeners
}

fn listeners(list: Vec<schema::Listener>, base: &Path, r: &mut Reported) -> Vec<ListenerSpec> {
    let https_port = list
        .iter()
        .find(|l| l.tls.is_some())
        .and_then(|l| l.address.map(|a| a.port()));
    let mut out: Vec<ListenerSpec> = Vec::new();
    for (i, listener) in list.into_iter().enumerate() {
        let path = format!("listen[{i}]");
        let Some(addr) = listener.address else {
            r.error(format!("{path}.address"), "missing");
            continue;
        };
        if out.iter().any(|l| l.addr == addr) {
            r.error(format!("{path}.address"), format!("{addr} is listed twice"));
        }
        let tls = listener.tls.map(|t| tls(t, &path, base, r));
        let h2c = listener.h2c.unwrap_or(false);
        let redirect = listener.redirect_https.unwrap_or(false);
        if tls.is_some() && (h2c || redirect) {
            let key = if h2c { "h2c" } else { "redirect_https" };
            let message = "is for plain listeners: a TLS listener offers h2 by ALPN";
            r.error(format!("{path}.{key}"), message);
        }
        let redirect_https = match (redirect, https_port) {
            (true, None) => {
                let message = "needs a TLS listener in listen to send clients to";
                r.error(format!("{path}.redirect_https"), message);
                None
            }
            (true, port) => port,
            (false, _) => None,
        };
        out.push(ListenerSpec {
            addr,
            tls,
            h2c,
            redirect_https,
        });
    }
    out
}

fn tls(tls: schema::Tls, path: &str, base: &Path, r: &mut Reported) -> TlsSpec {
    let list = tls.certificates.unwrap_or_else(|| {
        r.error(format!("{path}.tls.certificates"), "missing");
        Vec::new()
    });
    if list.is_empty() {
        r.error(format!("{path}.tls.certificates"), "empty: at least one");
    }
    let mut certificates = Vec::new();
    for (j, c) in list.into_iter().enumerate() {
        let at = format!("{path}.tls.certificates[{j}]");
        match (c.cert, c.key) {
            (Some(cert), Some(key)) => certificates.push((base.join(cert), base.join(key))),
            (cert, _) => {
                let missing = if cert.is_none() { "cert" } else { "key" };
                r.error(format!("{at}.{missing}"), "missing");
            }
        }
    }
    TlsSpec {
        certificates,
        http2: tls.http2.unwrap_or(true),
        loaded: None,
    }
}

/// Reads every TLS listener's certificates; each problem at its file's key.
pub fn load_certificates(listeners: &mut [ListenerSpec], errors: &mut Vec<ConfigError>) {
    for (i, listener) in listeners.iter_mut().enumerate() {
        let Some(tls) = &mut listener.tls else {
            continue;
        };
        let pairs: Vec<(&Path, &Path)> = tls
            .certificates
            .iter()
            .map(|(c, k)| (c.as_path(), k.as_path()))
            .collect();
        match crate::tls::Certificates::load(&pairs) {
            Ok(certificates) => tls.loaded = Some(Arc::new(certificates)),
            Err(problems) => {
                for (j, is_key, message) in problems {
                    let file = if is_key { "key" } else { "cert" };
                    let path = format!("listen[{i}].tls.certificates[{j}].{file}");
                    errors.push(ConfigError::new(path, message));
                }
            }
        }
    }
}
