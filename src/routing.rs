//! Route matching: which configured route answers a request, from its host, path and method.
//!
//! Precedence, most specific first (ties fall to the next rule):
//! 1. an exact `path` before any `path_prefix`;
//! 2. the longest `path_prefix`;
//! 3. a route naming the `host` exactly, then a `*.` wildcard (the longer first), then no host;
//! 4. a route listing `methods` before one that takes every method;
//! 5. the order in the config.
//!
//! A `path_prefix` matches whole segments: `/hello` matches `/hello` and `/hello/x`, not
//! `/helloworld`; `/` matches everything. Hosts and paths arrive normalised
//! ([`crate::normalize`]): one spelling per resource.

use std::cmp::Reverse;

use crate::config::{Match, Mode, PathMatch, RouteCache, RouteSpec, Target};

/// A compiled route table.
#[derive(Debug, Clone)]
pub struct Router {
    /// Sorted by precedence: the first match wins.
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the config's `routes` list, for logs and errors.
    pub index: usize,
    pub matcher: Match,
    pub target: Target,
    pub placement: Mode,
    /// The home region's name.
    pub region: Option<String>,
    pub cache: Option<RouteCache>,
}

impl Router {
    pub fn new(specs: &[RouteSpec]) -> Router {
        let mut routes: Vec<Route> = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| Route {
                index,
                matcher: spec.matcher.clone(),
                target: spec.target.clone(),
                placement: spec.placement,
                region: spec.region.clone(),
                cache: spec.cache,
            })
            .collect();
        routes.sort_by_key(|r| precedence(&r.matcher, r.index));
        Router { routes }
    }

    /// The route for a request. `host` is the `Host` header (any port is ignored).
    /// The route at position `index` of the config's `routes`.
    pub fn by_index(&self, index: usize) -> Option<&Route> {
        self.routes.iter().find(|r| r.index == index)
    }

    pub fn route(&self, host: Option<&str>, path: &str, method: &str) -> Option<&Route> {
        let host = host.map(crate::normalize::strip_port);
        self.routes
            .iter()
            .find(|r| matches(&r.matcher, host, path, method))
    }
}

type Precedence = (u8, Reverse<usize>, u8, Reverse<usize>, u8, usize);

fn precedence(m: &Match, index: usize) -> Precedence {
    let (path_rank, prefix_len) = match &m.path {
        PathMatch::Exact(_) => (0, 0),
        PathMatch::Prefix(p) => (1, p.len()),
    };
    let (host_rank, host_len) = match &m.host {
        Some(h) if h.starts_with("*.") => (1, h.len()),
        Some(_) => (0, 0),
        None => (2, 0),
    };
    let method_rank = u8::from(m.methods.is_none());
    (
        path_rank,
        Reverse(prefix_len),
        host_rank,
        Reverse(host_len),
        method_rank,
        index,
    )
}

fn matches(m: &Match, host: Option<&str>, path: &str, method: &str) -> bool {
    let path_ok = match &m.path {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => prefix_matches(p, path),
    };
    let host_ok = match (&m.host, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(want), Some(got)) => host_matches(want, got),
    };
    let method_ok = m
        .methods
        .as_ref()
        .is_none_or(|ms| ms.iter().any(|x| x.eq_ignore_ascii_case(method)));
    path_ok && host_ok && method_ok
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// `want` is lower case; `got` is as the client sent it.
fn host_matches(want: &str, got: &str) -> bool {
    match want.strip_prefix("*.") {
        Some(parent) => {
            let got = got.as_bytes();
            got.len() > parent.len() + 1
                && got[got.len() - parent.len()..].eq_ignore_ascii_case(parent.as_bytes())
                && got[got.len() - parent.len() - 1] == b'.'
        }
        None => want.eq_ignore_ascii_case(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        host: Option<&str>,
        path: PathMatch,
        methods: Option<&[&str]>,
        origin_port: u16,
    ) -> RouteSpec {
        RouteSpec {
            matcher: Match {
                host: host.map(str::to_string),
                path,
                methods: methods.map(|ms| ms.iter().map(|m| m.to_string()).collect()),
            },
            target: Target::Origin(format!("127.0.0.1:{origin_port}")),
            placement: Mode::Edge,
            region: None,
            cache: None,
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_string())
    }

    fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.to_string())
    }

    /// Each row: host, path, method, and the config index that must answer (None: 404).
    #[test]
    fn precedence_table() {
        let router = Router::new(&[
            route(None, prefix("/"), None, 0),                        // 0
            route(None, prefix("/api"), None, 1),                     // 1
            route(None, prefix("/api/v2"), None, 2),                  // 2
            route(None, exact("/api"), None, 3),                      // 3
            route(Some("example.com"), prefix("/api"), None, 4),      // 4
            route(Some("*.example.com"), prefix("/api"), None, 5),    // 5
            route(Some("*.eu.example.com"), prefix("/api"), None, 6), // 6
            route(None, prefix("/api"), Some(&["POST"]), 7),          // 7
            route(Some("only.test"), prefix("/only"), None, 8),       // 8
            route(None, prefix("/dir/"), None, 9),                    // 9
        ]);
        let table: &[(Option<&str>, &str, &str, Option<usize>)] = &[
            (None, "/", "GET", Some(0)),
            (None, "/anything/else", "GET", Some(0)),
            (None, "/api", "GET", Some(3)), // exact before prefix
            (Some("example.com"), "/api", "GET", Some(3)), // exact path beats host
            (None, "/api/users", "GET", Some(1)),
            (None, "/apiary", "GET", Some(0)), // prefixes match whole segments
            (None, "/api/v2/users", "GET", Some(2)), // longest prefix wins
            (None, "/api/v2", "GET", Some(2)),
            (Some("example.com"), "/api/users", "GET", Some(4)), // exact host
            (Some("EXAMPLE.com:8080"), "/api/users", "GET", Some(4)), // case and port ignored
            (Some("a.example.com"), "/api/users", "GET", Some(5)), // wildcard host
            (Some("a.eu.example.com"), "/api/x", "GET", Some(6)), // longer wildcard first
            (Some("badexample.com"), "/api/x", "GET", Some(1)),  // wildcard needs a dot
            (None, "/api/x", "POST", Some(7)),                   // methods before any method
            (None, "/api/x", "post", Some(7)),
            (Some("example.com"), "/api/x", "POST", Some(4)), // host outranks methods
            (Some("only.test"), "/only/x", "GET", Some(8)),
            (Some("other.test"), "/only/x", "GET", Some(0)),
            (None, "/dir/", "GET", Some(9)),
            (None, "/dir/file", "GET", Some(9)),
            (None, "/dir", "GET", Some(0)),
            (Some("[::1]:8080"), "/", "GET", Some(0)),
        ];
        for &(host, path, method, want) in table {
            let got = router.route(host, path, method).map(|r| r.index);
            assert_eq!(got, want, "{method} {host:?} {path}");
        }
    }

    #[test]
    fn no_route_without_catch_all() {
        let router = Router::new(&[route(Some("a.test"), prefix("/x"), Some(&["GET"]), 1)]);
        assert!(router.route(Some("a.test"), "/y", "GET").is_none());
        assert!(router.route(Some("a.test"), "/x", "PUT").is_none());
        assert!(router.route(None, "/x", "GET").is_none());
        assert!(router.route(Some("a.test"), "/x", "GET").is_some());
    }

    #[test]
    fn ties_fall_to_config_order() {
        let router = Router::new(&[
            route(None, prefix("/a"), Some(&["GET"]), 0),
            route(None, prefix("/a"), Some(&["GET", "PUT"]), 1),
        ]);
        assert_eq!(router.route(None, "/a", "GET").map(|r| r.index), Some(0));
        assert_eq!(router.route(None, "/a", "PUT").map(|r| r.index), Some(1));
    }
}
