//! From the file's shape ([`schema::File`]) to the runtime model ([`Config`]): defaults
//! filled in, values checked against their bounds, references between sections checked,
//! every problem collected with its path. No I/O: files and the environment are read by
//! [`super::prepare`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::schema::{self, File};
use super::source::{Reported, join};
use super::units::Dur;
use super::{
    AccessLogSpec, AdminSpec, CacheSpec, Config, DEFAULT_ADMIN, HealthSpec, KeySource, Limits,
    LogTarget, Match, Mode, PathMatch, PlacementSpec, RegionAddress, RegionSpec, Role, RouteCache,
    RouteSpec, Target, TaskSpec,
};

/// Most inline executions one server may run at once (each reserves pool address space).
const MAX_INLINE_CEILING: usize = 4096;
/// The most request body Pingora can replay to a region after reading it for an inline try.
const REPLAYABLE_BODY: u64 = 64 << 10;
const NAME_RULE: &str =
    "names use letters, digits, '.', '_' and '-', and start with a letter or digit";
/// Keys only an edge has.
const EDGE_ONLY: &str = "applies to edges only";

/// Names declared in the file, whatever became of their entries: a route naming a task or
/// region whose own entry is wrong gets no second, spurious "unknown" error.
pub struct Declared {
    pub tasks: Vec<String>,
    pub regions: Vec<String>,
    pub origins: Vec<String>,
}

impl Declared {
    pub fn of(doc: &serde_json::Value) -> Declared {
        let keys = |section: &str| {
            doc.get(section)
                .and_then(serde_json::Value::as_object)
                .map_or_else(Vec::new, |m| m.keys().cloned().collect())
        };
        Declared {
            tasks: keys("tasks"),
            regions: keys("regions"),
            origins: keys("origins"),
        }
    }
}

pub fn compile(file: File, declared: &Declared, base: &Path, r: &mut Reported) -> Option<Config> {
    // Built as far as it can be even when role or listen is missing or wrong (reported
    // already), so that the tasks' files are checked too; never used with errors.
    let role = file.role.unwrap_or_else(|| {
        r.error("role", "missing");
        Role::Edge
    });
    let edge = role != Role::Region;
    if !edge {
        region_keys_only(&file, r);
    }
    let listeners = super::listen::compile(file.listen, file.admin.as_ref(), base, r);
    let threads = threads(file.threads, r);
    let placement = file
        .placement
        .map_or_else(PlacementSpec::default, |p| placement(p, r));
    let regions = regions(file.regions, r);
    let tasks = tasks(file.tasks, base, r, edge && !declared.regions.is_empty());
    let has_registry = file.registry.is_some();
    let mut registry = file.registry.and_then(|g| registry(g, base, r));
    if edge && registry.take().is_some() {
        r.error("registry", "applies to regions only");
    }
    if !edge && has_registry && file.admin.is_none() {
        let message = "needs admin: the deploy API is on the admin listener";
        r.error("registry", message);
    }
    if !edge && declared.tasks.is_empty() && !has_registry {
        r.error(
            "tasks",
            "missing: a region needs at least one task (or a registry to deploy them to)",
        );
    }
    let routes = if edge {
        // Without regions, a task without wasm is wrong already (tasks.NAME.wasm).
        let remote: Vec<&str> = (tasks.values())
            .filter(|t| t.wasm.is_none() && !declared.regions.is_empty())
            .map(|t| t.name.as_str())
            .collect();
        routes(file.routes, declared, &remote, r)
    } else {
        Vec::new()
    };
    let largest = tasks.values().map(|t| t.limits.memory).max();
    if let (Some(budget), Some(largest)) = (placement.guest_memory, largest)
        && budget < largest
    {
        let message = format!("must be at least the largest task memory ({largest} bytes)");
        r.error("placement.guest_memory", message);
    }
    let mut origins = super::origins::compile(file.origins, base, r);
    super::origins::add_route_servers(&routes, &mut origins);
    if !declared.regions.is_empty() && placement.inline_limits.max_body > REPLAYABLE_BODY {
        let message = "must be at most 64KiB with regions: a body read for an inline try is replayed to a region on fallback";
        r.error("placement.inline_limits.max_body", message);
    }
    // An edge with regions, and a region, need a key: from the environment if no file.
    let needs_key = !edge || !declared.regions.is_empty();
    let key_source = match file.forwarding {
        Some(f) => Some(KeySource::File(base.join(f.key_file))),
        None => needs_key.then_some(KeySource::Env),
    };
    Some(Config {
        role,
        listeners,
        threads,
        guest_log: file.guest_log.map_or(log::Level::Info, log::Level::from),
        grace_period: grace_period(file.grace_period, &tasks, r),
        upgrade_socket: file
            .upgrade_socket
            .map_or_else(|| super::DEFAULT_UPGRADE_SOCKET.into(), |s| base.join(s)),
        admin: file.admin.map(|a| admin(a, base)),
        access_log: file.access_log.and_then(|a| access_log(a, base, r)),
        clients: super::clients::compile(file.clients, r),
        key_source,
        forwarding_key: None,
        placement,
        regions,
        health: file
            .health
            .map_or_else(HealthSpec::default, |h| health(h, r)),
        cache: file.cache.map_or_else(CacheSpec::default, |c| cache(c, r)),
        trusted_proxies: trusted_proxies(file.trusted_proxies.unwrap_or_default(), r),
        request_id_header: file.request_id_header.and_then(|n| header_name(&n, r)),
        tasks,
        code_cache: file.code_cache.and_then(|c| code_cache(c, base, r)),
        registry,
        origins,
        routes,
    })
}

fn registry(g: schema::Registry, base: &Path, r: &mut Reported) -> Option<super::RegistrySpec> {
    let Some(dir) = g.dir.filter(|d| !d.trim().is_empty()) else {
        r.error("registry.dir", "missing: a folder for deployed code");
        return None;
    };
    let max_memory = g.max_memory.map_or(256 << 20, |s| s.0);
    if !(1 << 20..=16 << 30).contains(&max_memory) {
        r.error("registry.max_memory", "must be from 1MiB to 16GiB");
    }
    let max_code = g.max_code.map_or(64 << 20, |s| s.0);
    if !(1 << 10..=1 << 30).contains(&max_code) {
        r.error("registry.max_code", "must be from 1KiB to 1GiB");
    }
    Some(super::RegistrySpec {
        dir: base.join(dir),
        token_file: g.token_file.map(|f| base.join(f)),
        token: None,
        max_memory,
        max_code,
    })
}

fn code_cache(c: schema::CodeCache, base: &Path, r: &mut Reported) -> Option<super::CodeCacheSpec> {
    let Some(dir) = c.dir.filter(|d| !d.trim().is_empty()) else {
        r.error("code_cache.dir", "missing: a folder for compiled code");
        return None;
    };
    let max_bytes = c.max_size.map_or(1 << 30, |s| s.0);
    if max_bytes < 1 << 20 {
        r.error("code_cache.max_size", "must be at least 1MiB");
    }
    Some(super::CodeCacheSpec {
        dir: base.join(dir),
        max_bytes,
    })
}

fn admin(admin: schema::Admin, base: &Path) -> AdminSpec {
    AdminSpec {
        listen: admin.listen.unwrap_or(DEFAULT_ADMIN),
        token_file: admin.token_file.map(|f| base.join(f)),
        token: None,
        guard_reads: admin.guard_reads.unwrap_or(false),
    }
}

fn access_log(log: schema::AccessLog, base: &Path, r: &mut Reported) -> Option<AccessLogSpec> {
    let Some(to) = log.to else {
        r.error("access_log.to", "missing: stderr or a file");
        return None;
    };
    let to = match to.trim() {
        "stderr" => LogTarget::Stderr,
        "" => {
            r.error("access_log.to", "must be stderr or a file");
            return None;
        }
        path => LogTarget::File(base.join(path)),
    };
    let format = log.format.unwrap_or_default();
    Some(AccessLogSpec { to, format })
}

/// Whole seconds (Pingora's unit), by default the longest task timeout plus 1 s.
fn grace_period(
    given: Option<Dur>,
    tasks: &BTreeMap<String, TaskSpec>,
    r: &mut Reported,
) -> Duration {
    let Some(Dur(given)) = given else {
        let longest = tasks.values().map(|t| t.limits.timeout).max();
        let secs = longest.unwrap_or_default().as_secs_f64().ceil() as u64;
        return Duration::from_secs(secs + 1);
    };
    if given.subsec_nanos() != 0 {
        r.error("grace_period", "must be whole seconds");
    }
    given
}

fn header_name(name: &str, r: &mut Reported) -> Option<http::HeaderName> {
    let parsed = http::HeaderName::from_bytes(name.as_bytes()).ok();
    if parsed.is_none() {
        let message = format!("{name:?} is not a header name");
        r.error("request_id_header", message);
    }
    parsed
}

/// Worker threads: at least one; by default one per core.
fn threads(threads: Option<usize>, r: &mut Reported) -> usize {
    match threads {
        Some(0) => {
            r.error("threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// A region has no routes, regions, health checks or cache, and places nothing.
fn region_keys_only(file: &File, r: &mut Reported) {
    let present = [
        ("regions", !file.regions.is_empty()),
        ("origins", !file.origins.is_empty()),
        ("health", file.health.is_some()),
        ("cache", file.cache.is_some()),
        ("routes", file.routes.is_some()),
        ("trusted_proxies", file.trusted_proxies.is_some()),
        ("request_id_header", file.request_id_header.is_some()),
    ];
    for (key, _) in present.iter().filter(|(_, here)| *here) {
        r.error(*key, EDGE_ONLY);
    }
    if let Some(p) = &file.placement {
        let edge_keys = [
            ("hot_threshold", p.hot_threshold.is_some()),
            ("cool_threshold", p.cool_threshold.is_some()),
            ("cooldown", p.cooldown.is_some()),
            ("max_resident", p.max_resident.is_some()),
            ("max_resident_memory", p.max_resident_memory.is_some()),
            ("inline_limits", p.inline_limits.is_some()),
            ("oversized_cooldown", p.oversized_cooldown.is_some()),
        ];
        for (key, _) in edge_keys.iter().filter(|(_, here)| *here) {
            r.error(format!("placement.{key}"), EDGE_ONLY);
        }
    }
}

/// CIDRs (`10.0.0.0/8`), or single addresses taken as one host.
fn trusted_proxies(list: Vec<String>, r: &mut Reported) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => {
                let message = format!("{text:?} is not an address or a CIDR such as 10.0.0.0/8");
                r.error(format!("trusted_proxies[{i}]"), message);
            }
        }
    }
    nets
}

fn placement(p: schema::Placement, r: &mut Reported) -> PlacementSpec {
    let mut spec = PlacementSpec::default();
    if let Some(n) = p.max_inline {
        if n == 0 || n > MAX_INLINE_CEILING {
            let message = format!("must be between 1 and {MAX_INLINE_CEILING}");
            r.error("placement.max_inline", message);
        }
        spec.max_inline = n.clamp(1, MAX_INLINE_CEILING);
    }
    if let Some(hot) = p.hot_threshold {
        if hot.is_nan() || hot <= 0.0 {
            let message = "must be more than 0 requests per second";
            r.error("placement.hot_threshold", message);
        }
        spec.hot_threshold = hot;
        spec.cool_threshold = hot / 2.0;
    }
    if let Some(cool) = p.cool_threshold {
        if cool.is_nan() || cool < 0.0 || cool > spec.hot_threshold {
            let message = "must be between 0 and hot_threshold";
            r.error("placement.cool_threshold", message);
        }
        spec.cool_threshold = cool;
    }
    if let Some(n) = p.max_resident {
        if n == 0 {
            r.error("placement.max_resident", "must be at least 1");
        }
        spec.max_resident = n;
    }
    spec.guest_memory = p.guest_memory.map(|s| s.0);
    spec.cooldown = p.cooldown.map_or(spec.cooldown, |d| d.0);
    spec.oversized_cooldown = p
        .oversized_cooldown
        .map_or(spec.oversized_cooldown, |d| d.0);
    spec.max_resident_memory = p
        .max_resident_memory
        .map_or(spec.max_resident_memory, |s| s.0);
    if let Some(l) = p.inline_limits {
        spec.inline_limits = limits(l, "placement.inline_limits", spec.inline_limits, r);
    }
    if let Some(f) = p.failing {
        let policy = &mut spec.failing;
        policy.after = f.after.unwrap_or(policy.after);
        policy.pause = f.pause.map_or(policy.pause, |d| d.0);
        policy.max_pause = f.max_pause.map_or(policy.max_pause, |d| d.0);
        if policy.pause.is_zero() {
            r.error("placement.failing.pause", "must be more than 0");
        }
        if policy.max_pause < policy.pause {
            r.error("placement.failing.max_pause", "must be at least pause");
        }
    }
    spec
}

fn limits(l: schema::Limits, path: &str, default: Limits, r: &mut Reported) -> Limits {
    let limits = Limits {
        memory: l.memory.map_or(default.memory, |s| s.0),
        timeout: l.timeout.map_or(default.timeout, |d| d.0),
        max_body: l.max_body.map_or(default.max_body, |s| s.0),
    };
    for (field, message) in limits.problems() {
        r.error(join(path, field), message);
    }
    limits
}

fn regions(regions: BTreeMap<String, schema::Region>, r: &mut Reported) -> Vec<RegionSpec> {
    let mut specs = Vec::new();
    for (name, region) in regions {
        if !valid_name(&name) {
            r.error(format!("regions.{name}"), NAME_RULE);
        }
        match RegionAddress::parse(&region.address) {
            Ok(address) => specs.push(RegionSpec { name, address }),
            // The error stops the config; routes naming it are judged by the declared names.
            Err(e) => r.error(format!("regions.{name}.address"), e),
        }
    }
    specs
}

fn health(h: schema::Health, r: &mut Reported) -> HealthSpec {
    let default = HealthSpec::default();
    let spec = HealthSpec {
        interval: h.interval.map_or(default.interval, |d| d.0),
        timeout: h.timeout.map_or(default.timeout, |d| d.0),
        unhealthy_after: h.unhealthy_after.unwrap_or(default.unhealthy_after),
        resolve_every: h.resolve_every.map_or(default.resolve_every, |d| d.0),
    };
    if spec.interval < Duration::from_millis(10) {
        r.error("health.interval", "must be at least 10ms");
    }
    if spec.timeout.is_zero() {
        r.error("health.timeout", "must be more than 0");
    }
    if spec.unhealthy_after == 0 {
        r.error("health.unhealthy_after", "must be at least 1");
    }
    if spec.resolve_every < Duration::from_secs(1) {
        r.error("health.resolve_every", "must be at least 1s");
    }
    spec
}

fn cache(c: schema::Cache, r: &mut Reported) -> CacheSpec {
    let default = CacheSpec::default();
    let spec = CacheSpec {
        memory: c.memory.map_or(default.memory, |s| s.0),
        max_entry: c.max_entry.map_or(default.max_entry, |s| s.0),
        lock_timeout: c.lock_timeout.map_or(default.lock_timeout, |d| d.0),
    };
    if spec.memory < 1 << 20 {
        r.error("cache.memory", "must be at least 1MiB");
    } else if spec.max_entry > spec.memory || spec.max_entry > 64 << 20 {
        let message = "must be at most cache.memory and at most 64MiB";
        r.error("cache.max_entry", message);
    }
    spec
}

/// `from_regions`: whether a task without `wasm` may take its code from regions (an edge
/// with regions).
fn tasks(
    tasks: BTreeMap<String, schema::Task>,
    base: &Path,
    r: &mut Reported,
    from_regions: bool,
) -> BTreeMap<String, TaskSpec> {
    let mut specs = BTreeMap::new();
    for (name, task) in tasks {
        let path = format!("tasks.{name}");
        if !valid_name(&name) {
            r.error(&path, NAME_RULE);
        }
        let limits = task.limits.map_or_else(Limits::default, |l| {
            limits(l, &join(&path, "limits"), Limits::default(), r)
        });
        if task.wasm.is_none() && !from_regions {
            let message = "missing: a wasm file (only an edge with regions takes code from them)";
            r.error(join(&path, "wasm"), message);
        }
        let spec = TaskSpec {
            name: name.clone(),
            wasm: task.wasm.map(|w| base.join(w)),
            limits,
        };
        specs.insert(name, spec);
    }
    specs
}

/// `remote`: the tasks whose code comes from regions, which cannot be pinned to the edge.
fn routes(
    routes: Option<Vec<Option<schema::Route>>>,
    declared: &Declared,
    remote: &[&str],
    r: &mut Reported,
) -> Vec<RouteSpec> {
    let Some(items) = routes else {
        r.error("routes", "missing: a server needs at least one route");
        return Vec::new();
    };
    if items.is_empty() {
        r.error("routes", "a server needs at least one route");
    }
    let mut specs: Vec<(usize, RouteSpec)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(item) = item else {
            r.shape_error(&path, "expected a route");
            continue;
        };
        let Some(route) = route(item, &path, declared, r) else {
            continue;
        };
        if let Target::Task(name) = &route.target
            && route.placement == Mode::Edge
            && remote.contains(&name.as_str())
        {
            let message = format!(
                "edge needs the task's wasm file here: {name}'s code comes from regions when it turns hot"
            );
            r.error(join(&path, "placement"), message);
        }
        if let Some(&(j, _)) = specs.iter().find(|(_, s)| s.matcher == route.matcher) {
            let message = format!("same match as routes[{j}], so it could never be chosen");
            r.error(format!("{path}.match"), message);
        }
        specs.push((i, route));
    }
    specs.into_iter().map(|(_, route)| route).collect()
}

fn route(
    route: schema::Route,
    path: &str,
    declared: &Declared,
    r: &mut Reported,
) -> Option<RouteSpec> {
    let before = r.count();
    let matcher = matcher(route.matcher, &join(path, "match"), r);
    let target = match (route.task, route.origin) {
        (Some(_), Some(_)) => {
            r.shape_error(path, "has both task and origin; a route has one of them");
            None
        }
        (None, None) => {
            r.shape_error(path, "needs a task or an origin");
            None
        }
        (Some(name), None) if declared.tasks.contains(&name) => Some(Target::Task(name)),
        (Some(name), None) => {
            r.error(join(path, "task"), format!("unknown task {name:?}"));
            None
        }
        (None, Some(origin)) if declared.origins.contains(&origin) => Some(Target::Origin(origin)),
        (None, Some(origin)) => match super::origins::ServerSpec::parse(&origin) {
            Ok(_) => Some(Target::Origin(origin)),
            Err(e) => {
                let message = format!("{e}; or name a pool in origins");
                r.error(join(path, "origin"), message);
                None
            }
        },
    };
    let is_task = matches!(target, Some(Target::Task(_)));
    if !is_task && (route.placement.is_some() || route.region.is_some()) && target.is_some() {
        r.error(path, "placement and region apply to task routes only");
    }
    let placement = match route.placement {
        Some(Mode::Region) if declared.regions.is_empty() => {
            r.error(join(path, "placement"), "region needs regions configured");
            Mode::Region
        }
        Some(mode) => mode,
        None if declared.regions.is_empty() => Mode::Edge,
        None => Mode::Auto,
    };
    if let Some(name) = &route.region
        && !declared.regions.contains(name)
    {
        r.error(join(path, "region"), format!("unknown region {name:?}"));
    }
    let cache = route.cache.map(|c| route_cache(c, path, is_task, r));
    (r.count() == before).then_some(RouteSpec {
        matcher: matcher?,
        target: target?,
        placement,
        region: route.region,
        cache,
    })
}

fn route_cache(c: schema::RouteCache, path: &str, is_task: bool, r: &mut Reported) -> RouteCache {
    let path = join(path, "cache");
    let ttl = c.ttl.map(|d| d.0);
    let pure = c.pure.unwrap_or(false);
    if ttl.is_some_and(|t| t < Duration::from_secs(1)) {
        let message = "must be at least 1s (freshness counts whole seconds)";
        r.error(join(&path, "ttl"), message);
    }
    if pure && !is_task {
        r.error(join(&path, "pure"), "applies to task routes only");
    }
    RouteCache { ttl, pure }
}

fn matcher(m: schema::Match, path: &str, r: &mut Reported) -> Option<Match> {
    let before = r.count();
    let host = m.host.map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        if bare.is_empty() || !bare.chars().all(valid) {
            let message = "must be a host name such as example.com or *.example.com, without port";
            r.error(join(path, "host"), message);
        }
    }
    for (key, p) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if p.as_ref().is_some_and(|p| !p.starts_with('/')) {
            r.error(join(path, key), "must start with \"/\"");
        }
    }
    let path_match = match (m.path, m.path_prefix) {
        (Some(p), None) => Some(PathMatch::Exact(p)),
        (None, Some(p)) => Some(PathMatch::Prefix(p)),
        (Some(_), Some(_)) => {
            r.shape_error(path, "has both path and path_prefix; use one");
            None
        }
        // A host alone matches every path of that host.
        (None, None) if host.is_some() => Some(PathMatch::Prefix("/".into())),
        (None, None) => {
            let message = "needs host, path or path_prefix (path_prefix: \"/\" matches everything)";
            r.shape_error(path, message);
            None
        }
    };
    let methods = m.methods.map(|ms| {
        ms.iter()
            .map(|m| m.to_ascii_uppercase())
            .collect::<Vec<_>>()
    });
    if let Some(ms) = &methods {
        if ms.is_empty() {
            r.error(join(path, "methods"), "must name at least one method");
        }
        for bad in ms
            .iter()
            .filter(|m| http::Method::from_bytes(m.as_bytes()).is_err())
        {
            r.error(
                join(path, "methods"),
                format!("{bad:?} is not an HTTP method"),
            );
        }
    }
    (r.count() == before).then_some(Match {
        host,
        path: path_match?,
        methods,
    })
}

pub(crate) fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
