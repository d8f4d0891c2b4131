//! A host's addresses: an IP address as it is, a name resolved at config load and again in
//! the background, never on a request's path. Origin servers and regions named by DNS (a
//! Kubernetes Service, say) both keep theirs here. A name that stops resolving keeps its last
//! good addresses; one that never resolved has none, and says why.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// How long one background resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One host and port, and what it resolves to.
pub struct Resolved {
    /// Who it is, for the logs: `origin http://a:80`, `region west`.
    what: String,
    host: String,
    port: u16,
    addrs: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Why the name has no address, while it has none (or stopped resolving).
    unresolved: Mutex<Option<String>>,
}

impl Resolved {
    /// `host` (an IP address without brackets, or a name) and `port`. A name is resolved
    /// now, on this thread (config loads only), unless `before`, the same host's record from
    /// the config this one replaces, has addresses: those are kept until the next refresh.
    pub fn new(what: String, host: &str, port: u16, before: Option<&Resolved>) -> Resolved {
        let resolved = Resolved {
            what,
            host: host.to_string(),
            port,
            addrs: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            unresolved: Mutex::new(None),
        };
        match (host.parse::<std::net::IpAddr>(), before) {
            (Ok(ip), _) => resolved
                .addrs
                .store(Arc::new(vec![SocketAddr::new(ip, port)])),
            (Err(_), Some(old)) if old.has_addrs() => resolved.addrs.store(old.addrs.load_full()),
            (Err(_), _) => {
                use std::net::ToSocketAddrs;
                let found = (host, port).to_socket_addrs().map(|a| a.collect());
                resolved.take(found);
            }
        }
        resolved
    }

    /// Whether the host is a name (resolved again in the background), not an IP address.
    pub fn is_name(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_err()
    }

    pub fn has_addrs(&self) -> bool {
        !self.addrs.load().is_empty()
    }

    /// The addresses now (a name's last good ones).
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// The next address, round robin over the host's; `None` while it has none.
    pub fn next(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        addrs.get(i % addrs.len().max(1)).copied()
    }

    /// Why the name has no address (or stopped resolving), while that holds.
    pub fn unresolved(&self) -> Option<String> {
        self.unresolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves the name again (a background service's work; an IP address is left as is).
    pub async fn refresh(&self) {
        if !self.is_name() {
            return;
        }
        let lookup = tokio::net::lookup_host((self.host.clone(), self.port));
        let found = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(found) => found.map(|a| a.collect()),
            Err(_) => Err(std::io::Error::other(format!(
                "timed out after {RESOLVE_TIMEOUT:?}"
            ))),
        };
        self.take(found);
    }

    /// Takes a resolution's outcome: new addresses, or the last good ones kept.
    fn take(&self, found: std::io::Result<Vec<SocketAddr>>) {
        let mut unresolved = self.unresolved.lock().unwrap_or_else(|p| p.into_inner());
        let (what, host) = (&self.what, &self.host);
        match found {
            Ok(addrs) if !addrs.is_empty() => {
                if unresolved.take().is_some() || **self.addrs.load() != addrs {
                    log::info!("{what}: {host} resolves to {addrs:?}");
                }
                self.addrs.store(Arc::new(addrs));
            }
            outcome => {
                let why = match outcome {
                    Err(e) => e.to_string(),
                    Ok(_) => "no addresses".to_string(),
                };
                let kept = self.addrs.load();
                if kept.is_empty() {
                    log::warn!("{what}: {host} does not resolve: {why}");
                } else {
                    log::warn!(
                        "{what}: {host} stopped resolving ({why}); keeping {:?}",
                        **kept
                    );
                }
                *unresolved = Some(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_address_is_its_own_and_a_name_keeps_its_last_good_addresses() {
        let ip = Resolved::new("region a".into(), "127.0.0.1", 9, None);
        assert!(!ip.is_name());
        assert_eq!(ip.next(), Some(([127, 0, 0, 1], 9).into()));

        let name = Resolved::new("region b".into(), "localhost", 9, None);
        assert!(
            name.is_name() && name.has_addrs(),
            "{:?}",
            name.unresolved()
        );
        let good = name.addrs();
        name.take(Err(std::io::Error::other("gone")));
        assert_eq!(name.addrs(), good, "kept");
        assert_eq!(name.unresolved().as_deref(), Some("gone"));
        let carried = Resolved::new("region b".into(), "localhost", 9, Some(&name));
        assert_eq!(carried.addrs(), good);

        let never = Resolved::new("region c".into(), "no-such-host.invalid", 9, None);
        assert!(!never.has_addrs() && never.next().is_none());
        assert!(never.unresolved().is_some());
    }
}
