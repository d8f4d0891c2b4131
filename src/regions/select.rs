//! Region choice for one forward, over a snapshot of what the edge knows: the home region
//! while it is healthy (data locality), else the healthy region with the lowest smoothed
//! latency. Regions already tried for this request are skipped (failover).

use std::cmp::Ordering;

/// What selection needs to know of a region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionView {
    pub healthy: bool,
    /// Smoothed response latency; `None` until the first probe or response.
    pub latency_ms: Option<f64>,
}

/// The region to try next, or `None` when no healthy region is left.
pub fn choose(regions: &[RegionView], home: Option<usize>, tried: &[usize]) -> Option<usize> {
    let usable = |i: &usize| regions.get(*i).is_some_and(|r| r.healthy) && !tried.contains(i);
    if let Some(home) = home.filter(usable) {
        return Some(home);
    }
    (0..regions.len())
        .filter(usable)
        .min_by(|&a, &b| faster(&regions[a], &regions[b]).then(a.cmp(&b)))
}

/// Known latencies first, lowest first; a region not yet measured comes after them.
fn faster(a: &RegionView, b: &RegionView) -> Ordering {
    match (a.latency_ms, b.latency_ms) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(healthy: bool, latency_ms: Option<f64>) -> RegionView {
        RegionView {
            healthy,
            latency_ms,
        }
    }

    #[test]
    fn home_first_while_healthy() {
        let regions = [r(true, Some(5.0)), r(true, Some(50.0))];
        assert_eq!(choose(&regions, Some(1), &[]), Some(1));
        let regions = [r(true, Some(5.0)), r(false, Some(50.0))];
        assert_eq!(choose(&regions, Some(1), &[]), Some(0));
    }

    #[test]
    fn otherwise_the_fastest_healthy_one() {
        let regions = [
            r(true, Some(30.0)),
            r(true, Some(10.0)),
            r(false, Some(1.0)),
            r(true, None),
        ];
        assert_eq!(choose(&regions, None, &[]), Some(1));
        assert_eq!(choose(&regions, None, &[1]), Some(0));
        assert_eq!(
            choose(&regions, None, &[1, 0]),
            Some(3),
            "unmeasured comes last, but is used"
        );
        assert_eq!(
            choose(&regions, None, &[1, 0, 3]),
            None,
            "unhealthy is never chosen"
        );
    }

    #[test]
    fn failover_skips_a_tried_home() {
        let regions = [r(true, Some(30.0)), r(true, Some(10.0))];
        assert_eq!(choose(&regions, Some(0), &[0]), Some(1));
    }

    #[test]
    fn none_when_all_are_down_or_there_are_none() {
        assert_eq!(
            choose(&[r(false, Some(1.0)), r(false, None)], Some(0), &[]),
            None
        );
        assert_eq!(choose(&[], None, &[]), None);
        assert_eq!(
            choose(&[r(true, None)], Some(7), &[]),
            Some(0),
            "a bad home index is ignored"
        );
    }

    #[test]
    fn ties_go_to_config_order() {
        let regions = [r(true, Some(10.0)), r(true, Some(10.0))];
        assert_eq!(choose(&regions, None, &[]), Some(0));
    }
}
