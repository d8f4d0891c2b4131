//! The routes: each route's match, target, placement, home region and caching.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::super::units::Dur;
use super::super::{Match, Mode, PathMatch, RouteCache, RouteSpec, Target};
use super::{MATCH_KEYS, ROUTE_CACHE_KEYS, ROUTE_KEYS, Walk, join, kind};

impl Walk {
    pub(super) fn routes(
        &mut self,
        top: &Map<String, Value>,
        tasks: &[&str],
        regions: &[&str],
    ) -> Vec<RouteSpec> {
        let Some(value) = top.get("routes") else {
            self.error("routes", "missing: a server needs at least one route");
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.error("routes", format!("expected a list, found {}", kind(value)));
            return Vec::new();
        };
        if items.is_empty() {
            self.error("routes", "a server needs at least one route");
        }
        let mut routes: Vec<(usize, RouteSpec)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(route) = self.route(item, &path, tasks, regions) else {
                continue;
            };
            if let Some(&(j, _)) = routes.iter().find(|(_, r)| r.matcher == route.matcher) {
                self.error(
                    format!("{path}.match"),
                    format!("same match as routes[{j}], so it could never be chosen"),
                );
            }
            routes.push((i, route));
        }
        routes.into_iter().map(|(_, route)| route).collect()
    }

    pub(super) fn route(
        &mut self,
        value: &Value,
        path: &str,
        tasks: &[&str],
        regions: &[&str],
    ) -> Option<RouteSpec> {
        let map = self.object(value, path, ROUTE_KEYS)?;
        let matcher = match map.get("match") {
            Some(value) => self.matcher(value, &join(path, "match")),
            None => {
                self.error(join(path, "match"), "missing");
                None
            }
        };
        let task: Option<String> = self.get(map, "task", path);
        let origin: Option<SocketAddr> = self.get(map, "origin", path);
        let target = match (map.contains_key("task"), map.contains_key("origin")) {
            (true, true) => {
                self.error(path, "has both task and origin; a route has one of them");
                None
            }
            (false, false) => {
                self.error(path, "needs a task or an origin");
                None
            }
            (true, false) => task.and_then(|name| {
                if tasks.contains(&name.as_str()) {
                    Some(Target::Task(name))
                } else {
                    self.error(join(path, "task"), format!("unknown task {name:?}"));
                    None
                }
            }),
            (false, true) => origin.map(Target::Origin),
        };
        let (placement, region) = self.route_placement(map, path, regions);
        let cache = self.route_cache(map, path);
        if map.contains_key("origin")
            && (map.contains_key("placement") || map.contains_key("region"))
        {
            self.error(path, "placement and region apply to task routes only");
        }
        Some(RouteSpec {
            matcher: matcher?,
            target: target?,
            placement: placement?,
            region: region?,
            cache: cache?,
        })
    }

    pub(super) fn route_cache(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Option<Option<RouteCache>> {
        let Some(value) = map.get("cache") else {
            return Some(None);
        };
        let path = join(path, "cache");
        let fields = self.object(value, &path, ROUTE_CACHE_KEYS)?;
        let before = self.errors.len();
        let ttl = self.get::<Dur>(fields, "ttl", &path).map(|d| d.0);
        let pure = self.get::<bool>(fields, "pure", &path).unwrap_or(false);
        if ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            self.error(
                join(&path, "ttl"),
                "must be at least 1s (freshness counts whole seconds)",
            );
        }
        if pure && !map.contains_key("task") {
            self.error(join(&path, "pure"), "applies to task routes only");
        }
        (self.errors.len() == before).then_some(Some(RouteCache { ttl, pure }))
    }

    /// A route's `placement` (default: `auto` with regions, else `edge`) and home `region`.
    pub(super) fn route_placement(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        regions: &[&str],
    ) -> (Option<Mode>, Option<Option<String>>) {
        let default = if regions.is_empty() {
            Mode::Edge
        } else {
            Mode::Auto
        };
        let mode = match self.get::<Mode>(map, "placement", path) {
            Some(Mode::Region) if regions.is_empty() => {
                self.error(join(path, "placement"), "region needs regions configured");
                None
            }
            Some(mode) => Some(mode),
            None if map.contains_key("placement") => None,
            None => Some(default),
        };
        let region = match self.get::<String>(map, "region", path) {
            Some(name) if regions.contains(&name.as_str()) => Some(Some(name)),
            Some(name) => {
                self.error(join(path, "region"), format!("unknown region {name:?}"));
                None
            }
            None if map.contains_key("region") => None,
            None => Some(None),
        };
        (mode, region)
    }

    pub(super) fn matcher(&mut self, value: &Value, path: &str) -> Option<Match> {
        let map = self.object(value, path, MATCH_KEYS)?;
        let before = self.errors.len();
        let host = self
            .get::<String>(map, "host", path)
            .map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                self.error(
                    join(path, "host"),
                    "must be a host name such as example.com or *.example.com, without port",
                );
            }
        }
        let exact = self.get::<String>(map, "path", path);
        let prefix = self.get::<String>(map, "path_prefix", path);
        for (key, p) in [("path", &exact), ("path_prefix", &prefix)] {
            if p.as_ref().is_some_and(|p| !p.starts_with('/')) {
                self.error(join(path, key), "must start with \"/\"");
            }
        }
        let path_match = match (exact, prefix) {
            (Some(p), None) => Some(PathMatch::Exact(p)),
            (None, Some(p)) => Some(PathMatch::Prefix(p)),
            (Some(_), Some(_)) => {
                self.error(path, "has both path and path_prefix; use one");
                None
            }
            (None, None) => {
                if !map.contains_key("path") && !map.contains_key("path_prefix") {
                    self.error(
                        path,
                        "needs path or path_prefix (path_prefix: \"/\" matches everything)",
                    );
                }
                None
            }
        };
        let methods = self.get::<Vec<String>>(map, "methods", path).map(|ms| {
            ms.iter()
                .map(|m| m.to_ascii_uppercase())
                .collect::<Vec<_>>()
        });
        if let Some(ms) = &methods {
            if ms.is_empty() {
                self.error(join(path, "methods"), "must name at least one method");
            }
            for m in ms
                .iter()
                .filter(|m| http::Method::from_bytes(m.as_bytes()).is_err())
            {
                self.error(
                    join(path, "methods"),
                    format!("{m:?} is not an HTTP method"),
                );
            }
        }
        (self.errors.len() == before).then_some(Match {
            host,
            path: path_match?,
            methods,
        })
    }
}
