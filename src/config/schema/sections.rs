//! The config sections beyond tasks and routes: admin, forwarding key, placement,
//! regions, health checks and the cache.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use super::super::units::{Dur, Size};
use super::super::{CacheSpec, ForwardingKey, HealthSpec, PlacementSpec, RegionSpec};
use super::{
    CACHE_KEYS, EDGE_PLACEMENT_KEYS, FORWARDING_KEY_ENV, HEALTH_KEYS, MAX_INLINE_CEILING,
    MIN_KEY_BYTES, NAME_RULE, REGION_PLACEMENT_KEYS, Walk, kind, valid_name,
};

impl Walk {
    pub(super) fn admin(&mut self, top: &Map<String, Value>) -> Option<Option<SocketAddr>> {
        let Some(value) = top.get("admin") else {
            return Some(None);
        };
        let map = self.object(value, "admin", &["listen"])?;
        self.require::<SocketAddr>(map, "listen", "admin").map(Some)
    }

    pub(super) fn forwarding_key(
        &mut self,
        top: &Map<String, Value>,
        base: &Path,
        needed: bool,
    ) -> Option<Option<ForwardingKey>> {
        let file = match top.get("forwarding") {
            Some(value) => {
                let map = self.object(value, "forwarding", &["key_file"])?;
                Some(self.require::<String>(map, "key_file", "forwarding")?)
            }
            None => None,
        };
        let (path, key) = match &file {
            Some(file) => match std::fs::read(base.join(file)) {
                Ok(bytes) => ("forwarding.key_file", bytes.trim_ascii().to_vec()),
                Err(e) => {
                    self.error("forwarding.key_file", format!("cannot read {file:?}: {e}"));
                    return None;
                }
            },
            None => match std::env::var(FORWARDING_KEY_ENV) {
                Ok(key) => ("forwarding", key.trim().as_bytes().to_vec()),
                Err(_) if needed => {
                    let message = format!(
                        "no forwarding key: set {FORWARDING_KEY_ENV} or forwarding.key_file (edges with regions and regions need one)"
                    );
                    self.error("forwarding", message);
                    return None;
                }
                Err(_) => return Some(None),
            },
        };
        if key.len() < MIN_KEY_BYTES {
            self.error(
                path,
                format!("the forwarding key must be at least {MIN_KEY_BYTES} bytes"),
            );
            return None;
        }
        Some(Some(ForwardingKey(key)))
    }

    pub(super) fn placement(
        &mut self,
        top: &Map<String, Value>,
        edge: bool,
    ) -> Option<PlacementSpec> {
        let mut spec = PlacementSpec::default();
        let Some(value) = top.get("placement") else {
            return Some(spec);
        };
        let keys = if edge {
            EDGE_PLACEMENT_KEYS
        } else {
            REGION_PLACEMENT_KEYS
        };
        let map = self.object(value, "placement", keys)?;
        let before = self.errors.len();
        let p = "placement";
        if let Some(n) = self.get::<usize>(map, "max_inline", p) {
            if n == 0 || n > MAX_INLINE_CEILING {
                let message = format!("must be between 1 and {MAX_INLINE_CEILING}");
                self.error("placement.max_inline", message);
            }
            spec.max_inline = n;
        }
        if let Some(hot) = self.get::<f64>(map, "hot_threshold", p) {
            if hot.is_nan() || hot <= 0.0 {
                self.error(
                    "placement.hot_threshold",
                    "must be more than 0 requests per second",
                );
            }
            spec.hot_threshold = hot;
            spec.cool_threshold = hot / 2.0;
        }
        if let Some(cool) = self.get::<f64>(map, "cool_threshold", p) {
            if cool.is_nan() || cool < 0.0 || cool > spec.hot_threshold {
                self.error(
                    "placement.cool_threshold",
                    "must be between 0 and hot_threshold",
                );
            }
            spec.cool_threshold = cool;
        }
        if let Some(d) = self.get::<Dur>(map, "cooldown", p) {
            spec.cooldown = d.0;
        }
        if let Some(d) = self.get::<Dur>(map, "oversized_cooldown", p) {
            spec.oversized_cooldown = d.0;
        }
        if let Some(n) = self.get::<usize>(map, "max_resident", p) {
            if n == 0 {
                self.error("placement.max_resident", "must be at least 1");
            }
            spec.max_resident = n;
        }
        if let Some(s) = self.get::<Size>(map, "max_resident_memory", p) {
            spec.max_resident_memory = s.0;
        }
        if let Some(value) = map.get("inline_limits")
            && let Some(limits) = self.limits(value, "placement.inline_limits", spec.inline_limits)
        {
            spec.inline_limits = limits;
        }
        (self.errors.len() == before).then_some(spec)
    }

    pub(super) fn cache(&mut self, top: &Map<String, Value>) -> Option<CacheSpec> {
        let mut spec = CacheSpec::default();
        let Some(value) = top.get("cache") else {
            return Some(spec);
        };
        let map = self.object(value, "cache", CACHE_KEYS)?;
        let before = self.errors.len();
        if let Some(s) = self.get::<Size>(map, "memory", "cache") {
            spec.memory = s.0;
        }
        if let Some(s) = self.get::<Size>(map, "max_entry", "cache") {
            spec.max_entry = s.0;
        }
        if let Some(d) = self.get::<Dur>(map, "lock_timeout", "cache") {
            spec.lock_timeout = d.0;
        }
        if spec.memory < 1 << 20 {
            self.error("cache.memory", "must be at least 1MiB");
        }
        if spec.max_entry > spec.memory || spec.max_entry > 64 << 20 {
            self.error(
                "cache.max_entry",
                "must be at most cache.memory and at most 64MiB",
            );
        }
        (self.errors.len() == before).then_some(spec)
    }

    pub(super) fn regions(&mut self, top: &Map<String, Value>) -> Vec<RegionSpec> {
        let mut regions = Vec::new();
        let Some(value) = top.get("regions") else {
            return regions;
        };
        let Value::Object(map) = value else {
            self.error(
                "regions",
                format!("expected a mapping of region names, found {}", kind(value)),
            );
            return regions;
        };
        for (name, spec) in map {
            let path = format!("regions.{name}");
            if !valid_name(name) {
                self.error(&path, NAME_RULE);
            }
            let Some(fields) = self.object(spec, &path, &["address"]) else {
                continue;
            };
            if let Some(address) = self.require::<SocketAddr>(fields, "address", &path) {
                regions.push(RegionSpec {
                    name: name.clone(),
                    address,
                });
            }
        }
        regions
    }

    pub(super) fn health(&mut self, top: &Map<String, Value>) -> Option<HealthSpec> {
        let mut spec = HealthSpec::default();
        let Some(value) = top.get("health") else {
            return Some(spec);
        };
        let map = self.object(value, "health", HEALTH_KEYS)?;
        let before = self.errors.len();
        if let Some(d) = self.get::<Dur>(map, "interval", "health") {
            spec.interval = d.0;
        }
        if let Some(d) = self.get::<Dur>(map, "timeout", "health") {
            spec.timeout = d.0;
        }
        if let Some(n) = self.get::<u32>(map, "unhealthy_after", "health") {
            spec.unhealthy_after = n;
        }
        if spec.interval < Duration::from_millis(10) {
            self.error("health.interval", "must be at least 10ms");
        }
        if spec.timeout.is_zero() {
            self.error("health.timeout", "must be more than 0");
        }
        if spec.unhealthy_after == 0 {
            self.error("health.unhealthy_after", "must be at least 1");
        }
        (self.errors.len() == before).then_some(spec)
    }
}
