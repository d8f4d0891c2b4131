//! Counters of where each task's requests ran and why, for the admin endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::placement::Reason;

/// Where a request ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Edge,
    Region,
}

const SITES: [Site; 2] = [Site::Edge, Site::Region];
const SLOTS: usize = SITES.len() * Reason::ALL.len();

fn slot(site: Site, reason: Reason) -> usize {
    let s = SITES.iter().position(|&x| x == site).unwrap_or(0);
    let r = Reason::ALL.iter().position(|&x| x == reason).unwrap_or(0);
    s * Reason::ALL.len() + r
}

/// Per task, a count for each site and reason.
pub struct Counters {
    tasks: HashMap<String, [AtomicU64; SLOTS]>,
}

impl Counters {
    pub fn new<'a>(tasks: impl IntoIterator<Item = &'a str>) -> Counters {
        let tasks = tasks
            .into_iter()
            .map(|t| (t.to_string(), std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Counters { tasks }
    }

    pub fn count(&self, task: &str, site: Site, reason: Reason) {
        if let Some(counts) = self.tasks.get(task) {
            counts[slot(site, reason)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{task: {"edge/hot": n, "region/cold": n, ...}}`, non-zero counts only.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.tasks
            .iter()
            .map(|(task, counts)| {
                let mut by_key = BTreeMap::new();
                for site in SITES {
                    for reason in Reason::ALL {
                        let n = counts[slot(site, reason)].load(Ordering::Relaxed);
                        if n > 0 {
                            let site = if site == Site::Edge { "edge" } else { "region" };
                            by_key.insert(format!("{site}/{}", reason.as_str()), n);
                        }
                    }
                }
                (task.clone(), by_key)
            })
            .collect()
    }
}
