//! A config's listeners on Pingora's proxy services: plain ones by address, TLS ones with
//! their certificates chosen per handshake ([`crate::tls::Resolver`]) and ALPN `h2` and
//! `http/1.1`. Pingora takes h2c (HTTP/2 with prior knowledge) per service, not per
//! listener, so plain listeners with `h2c` get a service of their own, sharing the proxy.
//! Sockets bound before the server was built are handed to Pingora here too.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::v1::server::RequestHeadLimits;
use pingora_core::server::{ListenFds, Server};
use pingora_core::services::listening::Service;
use pingora_proxy::ProxyHttp;

use super::capped::{Capped, Connections};
use crate::config::{ClientLimits, ConfigError, ListenerSpec};
use crate::tls::Resolver;

/// A TLS listener's certificate choice, by its address: what a reload replaces.
pub type Resolvers = Vec<(SocketAddr, Arc<Resolver>)>;

/// Adds `proxy` to `server` on every listener, its client connections held to `clients`
/// (counted in `connections`), the first of its services first in `order`.
pub(super) fn add<P>(
    server: &mut Server,
    listeners: &[ListenerSpec],
    proxy: P,
    (name, clients, connections): (&str, &ClientLimits, &Arc<Connections>),
    order: &mut super::StartOrder,
) -> Result<Resolvers, ConfigError>
where
    P: ProxyHttp + Clone + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let mut resolvers = Vec::new();
    for h2c in [false, true] {
        let group: Vec<&ListenerSpec> = listeners.iter().filter(|l| l.h2c == h2c).collect();
        if group.is_empty() {
            continue;
        }
        let mut app = pingora_proxy::http_proxy(&server.configuration, proxy.clone());
        app.server_options = Some(server_options(clients, h2c));
        let capped = Capped {
            app: Arc::new(app),
            max: clients.max_connections,
            connections: connections.clone(),
        };
        let mut service = Service::new(name.to_string(), capped);
        for listener in group {
            let addr = listener.addr.to_string();
            let Some(tls) = &listener.tls else {
                service.add_tcp(&addr);
                continue;
            };
            let Some(certificates) = tls.loaded.clone() else {
                let message = "certificates not loaded (the config was not prepared)";
                return Err(ConfigError::new("listen", message));
            };
            let resolver = Arc::new(Resolver::new(certificates));
            let mut settings = TlsSettings::intermediate("", "")
                .map_err(|e| ConfigError::new("listen", format!("{addr}: {e}")))?;
            settings.set_cert_resolver(resolver.clone());
            if tls.http2 {
                settings.enable_h2();
            }
            service.add_tls_with_settings(&addr, None, settings);
            resolvers.push((listener.addr, resolver));
        }
        order.proxy(server.add_service(service));
    }
    Ok(resolvers)
}

/// Hands listeners bound before the server was built to Pingora: each goes into the table
/// of listening sockets under its address, where Pingora's listener for that address takes
/// it instead of binding (the table graceful upgrades fill). Done before the server runs,
/// so the table is filled before any service binds.
pub(super) fn hand_over(fds: &ListenFds, listeners: Vec<TcpListener>) {
    for listener in listeners {
        let Ok(addr) = listener.local_addr() else {
            continue; // dropped: Pingora binds the address itself
        };
        if let Err(e) = listener.set_nonblocking(true) {
            log::warn!("listener on {addr}: {e}; Pingora binds it anew");
            continue;
        }
        fds.lock().add(addr.to_string(), listener.into_raw_fd());
    }
}

/// Pingora's options for a service: the client limits, and h2c if asked for.
fn server_options(clients: &ClientLimits, h2c: bool) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    options.keepalive_request_limit = Some(clients.max_requests);
    options.h2_idle_timeout = Some(clients.idle_timeout);
    options.head_limits = Some(RequestHeadLimits {
        max_bytes: clients.max_header_bytes,
        max_headers: clients.max_headers,
        timeout: Some(clients.header_timeout),
        idle: Some(clients.idle_timeout),
        body_timeout: Some(clients.body_timeout),
    });
    options
}
