//! Tasks whose code comes from regions (no wasm file at the edge): the version the regions
//! say is current, the code wanted when such a task turns hot, and what the code watcher
//! ([`crate::regions::code`]) brings back. A new version drops the old one's code at once, so
//! an old version never answers once the edge knows of a new one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Code, FETCH_RETRY, Placer, Remote, lock};

impl Placer {
    /// The code wanted from regions since last asked: `(task, digest)`.
    pub fn wanted(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *lock(&self.wanted))
    }

    /// Whether a region answered with a version this edge did not know since last asked.
    pub fn take_poll_soon(&self) -> bool {
        self.poll_soon.swap(false, Ordering::Relaxed)
    }

    /// The tasks whose code comes from regions.
    pub fn remote_tasks(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.tasks.values().filter(|e| e.remote))
            .map(|e| e.spec.name.clone())
            .collect();
        names.sort();
        names
    }

    /// A task from regions: its current version's digest, once known (its cache key).
    pub fn version(&self, task: &str) -> Option<String> {
        let entry = self.tasks.get(task).filter(|e| e.remote)?;
        lock(&entry.state)
            .version
            .as_ref()
            .map(|v| v.digest.clone())
    }

    /// A region answered a forward of `task` with the version `digest`: one this edge
    /// does not know makes the code watcher look at once.
    pub fn observed(&self, task: &str, digest: &str) {
        let Some(entry) = self.tasks.get(task).filter(|e| e.remote) else {
            return;
        };
        let known = lock(&entry.state)
            .version
            .as_ref()
            .is_some_and(|v| v.digest == digest);
        if !known {
            self.poll_soon.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// The regions say `version` is `task`'s current one (`None`: none of them has it). A
    /// new version drops the code of the old at once: requests are forwarded (`warming`)
    /// until the new one is ready, never answered by the old. Whether it changed.
    pub fn set_version(&self, task: &str, version: Option<Remote>) -> bool {
        let Some(entry) = self.tasks.get(task).filter(|e| e.remote) else {
            return false;
        };
        let mut state = lock(&entry.state);
        if state.version == version {
            return false;
        }
        let was = state.version.as_ref().map_or("none", |v| v.digest.as_str());
        let now = version.as_ref().map_or("none", |v| v.digest.as_str());
        log::info!("task {task}: version {now} at the regions (was {was})");
        state.version = version;
        state.fetch_after = None;
        if !matches!(state.code, Code::Absent) {
            state.code = Code::Absent;
            drop(state);
            lock(&self.resident).remove(task);
        }
        true
    }

    /// The code `digest` of `task`, fetched (and checked against its digest): compiled in
    /// the background, unless the task has moved on to another version meanwhile.
    pub fn fetched(self: &Arc<Self>, task: &str, digest: &str, code: Vec<u8>) {
        let Some(entry) = self.tasks.get(task).filter(|e| e.remote) else {
            return;
        };
        let limits = {
            let mut state = lock(&entry.state);
            let current = state.version.as_ref().filter(|v| v.digest == digest);
            let (Some(version), Code::Fetching) = (current, &state.code) else {
                return;
            };
            let limits = version.limits;
            state.code = Code::Compiling;
            limits
        };
        let name = task.to_string();
        self.compile(entry.clone(), move |runtime| {
            runtime.load_bytes(&name, &code, limits)
        });
    }

    /// The code of `task` could not be had from any region: forwarded, asked again later.
    pub fn fetch_failed(&self, task: &str, why: &str) {
        let Some(entry) = self.tasks.get(task) else {
            return;
        };
        log::error!(
            "task {task}: its code could not be taken from the regions ({why}); forwarded, tried again in {}s",
            FETCH_RETRY.as_secs()
        );
        let mut state = lock(&entry.state);
        if matches!(state.code, Code::Fetching) {
            state.code = Code::Absent;
            state.fetch_after = Some(Instant::now() + FETCH_RETRY);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::{Limits, Mode, PlacementSpec, TaskSpec};
    use crate::wasm::{Capacity, Runtime};

    fn fresh() -> Placer {
        let runtime = Runtime::new(Capacity {
            instances: 1,
            max_memory: 1 << 20,
            guest_memory: 1 << 20,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let spec = TaskSpec {
            name: "greet".into(),
            wasm: None,
            limits: Limits::default(),
        };
        Placer::new(
            PlacementSpec::default(),
            Arc::new(runtime),
            [spec],
            Vec::new(),
        )
    }

    fn version(digest: &str) -> Remote {
        // Within the edge's default inline limits (a 100 ms deadline).
        let limits = Limits {
            timeout: std::time::Duration::from_millis(50),
            ..Limits::default()
        };
        Remote {
            digest: digest.into(),
            limits,
        }
    }

    #[test]
    fn a_version_is_learnt_kept_across_a_reload_and_code_of_another_is_ignored() {
        let placer = Arc::new(fresh());
        assert_eq!(placer.remote_tasks(), ["greet"]);
        assert_eq!(placer.version("greet"), None);
        assert!(placer.set_version("greet", Some(version("aa"))));
        assert!(!placer.set_version("greet", Some(version("aa"))));
        assert_eq!(placer.version("greet").as_deref(), Some("aa"));

        // Hot with a version known: its code is wanted, once.
        for _ in 0..50 {
            let _ = placer.place("greet", Mode::Auto, Some(0));
        }
        assert_eq!(placer.wanted(), [("greet".to_string(), "aa".to_string())]);
        assert!(placer.wanted().is_empty());
        // Code of a version that is no longer current is not compiled.
        assert!(placer.set_version("greet", Some(version("bb"))));
        placer.fetched("greet", "aa", b"not wasm".to_vec());
        let status = placer.status();
        assert_eq!(status[0].1.code, "absent");

        let reloaded = Placer::reloaded(fresh(), &placer, &HashMap::new());
        assert_eq!(reloaded.version("greet").as_deref(), Some("bb"));
    }
}
