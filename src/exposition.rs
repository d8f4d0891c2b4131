//! `GET /metrics` on the admin listener: what `/stats` shows, in the Prometheus text
//! format (OpenMetrics), named by Prometheus conventions: a `poplar_` prefix, base units,
//! `_total` counters, `_seconds` histograms. Label values are task, route-free names
//! (task, region, where answered, placement, reason): never a path or a host, so the
//! number of series is bounded by the config.
//!
//! Read on each scrape from the counters the proxy keeps anyway; nothing is added to a
//! request's path.

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::access_log::AccessLog;
use crate::cache::Cache;
use crate::metrics::{Counters, InFlight, Latencies};
use crate::placement::Placer;
use crate::proxy::EdgeLive as Live;
use crate::regions::Regions;
use crate::wasm::Runtime;

/// What the admin endpoint reports on, in `/stats` and `/metrics`; an edge has all of it, a
/// region only counters and refused replays.
#[derive(Clone)]
pub struct Sources {
    pub counters: Arc<Counters>,
    pub latencies: Option<Arc<Latencies>>,
    /// At an edge: the config in force (placement state, regions), which a reload replaces.
    pub live: Option<Arc<ArcSwap<Live>>>,
    pub cache: Option<Arc<Cache>>,
    /// At a region: replayed edge signatures refused.
    pub replays_refused: Option<Arc<AtomicU64>>,
    pub in_flight: InFlight,
    pub runtime: Option<Arc<Runtime>>,
    /// A region's task registry, if it has one.
    pub registry: Option<Arc<crate::registry::Registry>>,
    pub access_log: Option<Arc<AccessLog>>,
    /// Client connections open and refused at `clients.max_connections`.
    pub connections: Arc<crate::server::Connections>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry reading `sources` at each scrape.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    // The process's own, unprefixed as every Prometheus client library names them.
    registry.register_collector(Box::new(Process));
    let poplar = registry.sub_registry_with_prefix("poplar");
    poplar.register_collector(Box::new(sources));
    registry
}

/// `process_*`: resident memory, open file descriptors (sockets included), CPU time and start
/// time, read from `/proc/self` at each scrape (Linux; elsewhere nothing).
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(p) = process_now() else {
            return Ok(());
        };
        let one = |v: f64| [(Vec::new(), v)];
        let bytes = Some(&Unit::Bytes);
        gauges(
            &mut encoder,
            "process_resident_memory",
            "Resident memory",
            bytes,
            one(p.rss),
        )?;
        let help = "Open file descriptors (listening and client sockets, files)";
        gauges(&mut encoder, "process_open_fds", help, None, one(p.fds))?;
        let secs = Some(&Unit::Seconds);
        let help = "User and system CPU time";
        let cpu = [(Vec::new(), ConstCounter::new(p.cpu_seconds))];
        family(
            &mut encoder,
            "process_cpu",
            help,
            secs,
            MetricType::Counter,
            cpu,
        )?;
        let help = "Start time of the process since the Unix epoch";
        gauges(
            &mut encoder,
            "process_start_time",
            help,
            secs,
            one(p.start_time),
        )
    }
}

struct ProcessNow {
    rss: f64,
    fds: f64,
    cpu_seconds: f64,
    start_time: f64,
}

fn process_now() -> Option<ProcessNow> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    // SAFETY: sysconf only reads its argument.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    let (page, ticks) = (page.max(1) as f64, ticks.max(1) as f64);
    let rss = statm.split_whitespace().nth(1)?.parse::<f64>().ok()? * page;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised name: utime and stime are the 12th and 13th, the start
    // time (in ticks after boot) the 20th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = (tick(11)? + tick(12)?) / ticks;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let start_time = now.as_secs_f64() - uptime + tick(19)? / ticks;
    Some(ProcessNow {
        rss,
        fds,
        cpu_seconds,
        start_time,
    })
}

/// The registry's metrics as text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let in_flight = [(Vec::new(), self.in_flight.now() as f64)];
        let help = "Requests being served by the proxy now";
        gauges(&mut encoder, "requests_in_flight", help, None, in_flight)?;
        if let Some(runtime) = &self.runtime {
            let (running, slots) = runtime.slots_in_use();
            let help = "Task executions running now";
            let running = [(Vec::new(), running as f64)];
            gauges(&mut encoder, "executions_running", help, None, running)?;
            let help = "Task executions that can run at once (placement.max_inline)";
            let slots = [(Vec::new(), slots as f64)];
            gauges(&mut encoder, "execution_slots", help, None, slots)?;
            let help = "Task executions that found no slot free and waited for one";
            let waits = [(Vec::new(), runtime.slot_waits())];
            counters(&mut encoder, "execution_slot_waits", help, waits)?;
            let (held, budget, refused) = runtime.guest_memory();
            let help = "Linear memory held by the executions running now";
            gauges(
                &mut encoder,
                "guest_memory",
                help,
                Some(&Unit::Bytes),
                [(Vec::new(), held as f64)],
            )?;
            let help = "Linear memory all executions together may hold (placement.guest_memory)";
            let budget = [(Vec::new(), budget as f64)];
            gauges(
                &mut encoder,
                "guest_memory_budget",
                help,
                Some(&Unit::Bytes),
                budget,
            )?;
            let help = "Guest memory growths refused because the budget was spent";
            counters(
                &mut encoder,
                "guest_memory_refused",
                help,
                [(Vec::new(), refused)],
            )?;
            code(runtime, &mut encoder)?;
        }
        self.placements(&mut encoder)?;
        if let Some(latencies) = &self.latencies {
            response_times(latencies, &mut encoder)?;
        }
        if let Some(live) = &self.live {
            let live = live.load();
            tasks(&live.placer, &mut encoder)?;
            if !live.regions.is_empty() {
                regions_health(&live.regions, &mut encoder)?;
            }
            routes_and_compiles(&live, &mut encoder)?;
            let servers = live.origins.status();
            if !servers.is_empty() {
                let up = servers.iter().map(|s| {
                    let labels = vec![("origin", s.origin.clone()), ("server", s.server.clone())];
                    (labels, f64::from(u8::from(s.in_service)))
                });
                let help = "Whether the origin server takes requests (1) or is out (0)";
                gauges(&mut encoder, "origin_server_up", help, None, up)?;
            }
        }
        let failures = pingora_core::services::listening::downstream_handshake_failures();
        let help = "TLS handshakes clients failed or did not finish";
        counters(
            &mut encoder,
            "tls_handshake_failures",
            help,
            [(Vec::new(), failures)],
        )?;
        clients(&self.connections, &mut encoder)?;
        if let Some(cache) = &self.cache {
            cache_counters(cache, &mut encoder)?;
        }
        if let Some(log) = &self.access_log {
            let help = "Access log lines dropped because the writer was behind";
            counters(
                &mut encoder,
                "access_log_dropped",
                help,
                [(Vec::new(), log.dropped())],
            )?;
        }
        if let Some(refused) = &self.replays_refused {
            let n = refused.load(Ordering::Relaxed);
            let help = "Signed forwards refused as replays";
            counters(&mut encoder, "replays_refused", help, [(Vec::new(), n)])?;
        }
        Ok(())
    }
}

/// Client connections open and refused, and request heads refused, by status.
fn clients(
    connections: &crate::server::Connections,
    encoder: &mut DescriptorEncoder<'_>,
) -> std::fmt::Result {
    let help = "Client connections open now";
    let open = [(Vec::new(), connections.open() as f64)];
    gauges(encoder, "client_connections", help, None, open)?;
    let help = "Client connections refused at clients.max_connections";
    let refused = [(Vec::new(), connections.refused())];
    counters(encoder, "client_connections_refused", help, refused)?;
    let [timeout, uri, fields] = pingora_proxy::refused_request_heads();
    let by_status = [("408", timeout), ("414", uri), ("431", fields)]
        .map(|(status, n)| (vec![("status", status.to_string())], n));
    let help =
        "Request heads refused: too slow (408), request line (414) or fields (431) too large";
    counters(encoder, "request_heads_refused", help, by_status)
}

impl Sources {
    /// Task requests by task, where they ran and why (non-zero counts only).
    fn placements(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut samples = Vec::new();
        for (task, counts) in self.counters.snapshot() {
            for (key, n) in counts {
                let (placement, reason) = key.split_once('/').unwrap_or((key.as_str(), ""));
                let labels: Labels = vec![
                    ("task", task.clone()),
                    ("placement", placement.to_string()),
                    ("reason", reason.to_string()),
                ];
                samples.push((labels, n));
            }
        }
        let help = "Task requests by where they ran (edge or region) and why";
        counters(encoder, "task_requests", help, samples)
    }
}

fn response_times(latencies: &Latencies, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let help = "Response times, arrival to end of response, by where answered";
    let mut family = encoder.encode_descriptor(
        "response",
        help,
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for h in latencies.histograms() {
        let labels: Labels = vec![("answered", h.answered.to_string())];
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
    }
    Ok(())
}

fn tasks(placer: &Placer, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let status = placer.status();
    let hot = status
        .iter()
        .map(|(name, s)| (vec![("task", name.clone())], f64::from(u8::from(s.hot))));
    let help = "Whether the task is hot (1) or cold (0) at this edge";
    gauges(encoder, "task_hot", help, None, hot)?;
    let rate = status
        .iter()
        .map(|(name, s)| (vec![("task", name.clone())], s.rate));
    let help = "The task's smoothed request rate, per second, as of its last request";
    gauges(encoder, "task_request_rate", help, None, rate)?;
    let code = status.iter().map(|(name, s)| {
        let labels = vec![("task", name.clone()), ("state", s.code.to_string())];
        (labels, 1.0)
    });
    let help = "The state of the task's compiled code at this edge (absent, fetching, compiling, resident, pinned, failed)";
    gauges(encoder, "task_code", help, None, code)?;
    let pauses = status
        .iter()
        .map(|(name, s)| (vec![("task", name.clone())], s.pauses));
    let help = "Times the task's code loaded here was paused because its runs kept failing (placement.failing)";
    counters(encoder, "task_pauses", help, pauses)?;
    // How the code loaded now was made ready, and how long that took.
    let ready = status.iter().filter_map(|(name, s)| {
        let ready = s.ready?;
        let how = if ready.compiled { "compiled" } else { "loaded" };
        let labels = vec![("task", name.clone()), ("how", how.to_string())];
        Some((labels, ready.ms / 1000.0))
    });
    let help = "The time the task's code loaded here took to make ready: compiled, or loaded from code_cache";
    gauges(
        encoder,
        "task_code_ready",
        help,
        Some(&Unit::Seconds),
        ready,
    )
}

/// Task code made ready, compiled or loaded compiled from the code cache; the cache's size.
fn code(runtime: &Runtime, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let counts = runtime.code.snapshot();
    let how = |h: &str| vec![("how", h.to_string())];
    let help = "Task components made ready: compiled from wasm, or loaded compiled from code_cache";
    let ready = [
        (how("compiled"), counts.compiled),
        (how("loaded"), counts.loaded),
    ];
    counters(encoder, "code_ready", help, ready)?;
    let help = "Time making task components ready took";
    let took = [
        (how("compiled"), ConstCounter::new(counts.compile_seconds)),
        (how("loaded"), ConstCounter::new(counts.load_seconds)),
    ];
    family(
        encoder,
        "code_ready",
        help,
        Some(&Unit::Seconds),
        MetricType::Counter,
        took,
    )?;
    if let Some(store) = runtime.store() {
        let help = "Bytes of code and compiled code kept in code_cache";
        let bytes = [(Vec::new(), store.bytes() as f64)];
        gauges(encoder, "code_cache", help, Some(&Unit::Bytes), bytes)?;
    }
    Ok(())
}

/// Requests by route and status class; promotion compiles; the resident set.
fn routes_and_compiles(live: &Live, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let by_route = live
        .route_counts
        .snapshot()
        .into_iter()
        .map(|(route, class, n)| {
            let route = route.map_or_else(|| "none".to_string(), |i| i.to_string());
            (vec![("route", route), ("status", class.to_string())], n)
        });
    let help = "Requests answered, by route (its place in routes, or none) and status class";
    counters(encoder, "requests", help, by_route)?;
    let (compiles, failures, seconds) = live.placer.compiles();
    let help = "Promotion compiles of tasks turned hot";
    counters(encoder, "compiles", help, [(Vec::new(), compiles)])?;
    let help = "Promotion compiles that failed";
    counters(encoder, "compile_failures", help, [(Vec::new(), failures)])?;
    let help = "Time promotion compiles took";
    let took = [(Vec::new(), ConstCounter::new(seconds))];
    family(
        encoder,
        "compile",
        help,
        Some(&Unit::Seconds),
        MetricType::Counter,
        took,
    )?;
    let (tasks, bytes) = live.placer.resident();
    let help = "Tasks with compiled code resident at the edge (promoted; pinned ones aside)";
    gauges(
        encoder,
        "resident_tasks",
        help,
        None,
        [(Vec::new(), tasks as f64)],
    )?;
    let help = "Compiled code of the resident tasks";
    gauges(
        encoder,
        "resident_code",
        help,
        Some(&Unit::Bytes),
        [(Vec::new(), bytes as f64)],
    )
}

fn regions_health(regions: &Regions, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let status = regions.status();
    let healthy = status.iter().map(|s| {
        (
            vec![("region", s.name.clone())],
            f64::from(u8::from(s.healthy)),
        )
    });
    let help = "Whether the region takes forwards (1) or is out (0)";
    gauges(encoder, "region_healthy", help, None, healthy)?;
    let latency = status.iter().filter_map(|s| {
        let seconds = s.latency_ms? / 1000.0;
        Some((vec![("region", s.name.clone())], seconds))
    });
    let failures = status
        .iter()
        .map(|s| (vec![("region", s.name.clone())], s.forward_failures));
    let help = "Forwards to the region that failed (refused, or broken after sending)";
    counters(encoder, "region_forward_failures", help, failures)?;
    let help = "The region's smoothed response time (forwards and probes)";
    gauges(
        encoder,
        "region_latency",
        help,
        Some(&Unit::Seconds),
        latency,
    )
}

fn cache_counters(cache: &Cache, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    let s = cache.stats();
    let counted = [
        ("cache_hits", "Answers from the cache", s.hits),
        (
            "cache_misses",
            "Cacheable requests not answered from the cache",
            s.misses,
        ),
        (
            "cache_coalesced_waits",
            "Requests that waited for another's fill of the same key",
            s.coalesced_waits,
        ),
        ("cache_stores", "Answers stored", s.stores),
        (
            "cache_evictions",
            "Entries evicted to make room",
            s.evictions,
        ),
        (
            "cache_stale_served",
            "Stale answers served (while revalidating or on error)",
            s.stale_served,
        ),
    ];
    for (name, help, n) in counted {
        counters(encoder, name, help, [(Vec::new(), n)])?;
    }
    let sized = [
        (
            "cache_entries",
            "Entries in the cache",
            None,
            s.entries as f64,
        ),
        (
            "cache_size",
            "Bytes the cache's entries take",
            Some(&Unit::Bytes),
            s.bytes_in_use as f64,
        ),
        (
            "cache_limit",
            "The cache's configured size",
            Some(&Unit::Bytes),
            s.bytes_limit as f64,
        ),
    ];
    for (name, help, unit, v) in sized {
        gauges(encoder, name, help, unit, [(Vec::new(), v)])?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let samples = samples.into_iter().map(|(l, n)| (l, ConstCounter::new(n)));
    family(encoder, name, help, None, MetricType::Counter, samples)
}

fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> std::fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(encoder, name, help, unit, MetricType::Gauge, samples)
}

/// One metric family: a sample without labels is the family's only one.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, metric) in samples {
        match labels.is_empty() {
            true => return metric.encode(family),
            false => metric.encode(family.encode_family(&labels)?)?,
        }
    }
    Ok(())
}
