//! Request coalescing: the first miss on a key leads (runs the task or forwards); later
//! misses on the same key wait for it, within a bound, then look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Default)]
pub struct Locks {
    leaders: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// Held by the leader of a key; dropping it releases the waiters.
pub struct Leader {
    locks: Arc<Locks>,
    key: String,
    _done: watch::Sender<()>,
}

pub enum Turn {
    Lead(Leader),
    /// Another request is fetching this key: wait for it with [`wait`].
    Wait(watch::Receiver<()>),
}

impl Locks {
    pub fn acquire(self: &Arc<Self>, key: &str) -> Turn {
        let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = leaders.get(key).filter(|rx| rx.has_changed().is_ok()) {
            return Turn::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        leaders.insert(key.to_string(), rx);
        Turn::Lead(Leader {
            locks: self.clone(),
            key: key.to_string(),
            _done: tx,
        })
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut leaders = self.locks.leaders.lock().unwrap_or_else(|p| p.into_inner());
        leaders.remove(&self.key);
    }
}

/// Waits until the leader is done or `bound` passes; true if it finished in time.
pub async fn wait(mut rx: watch::Receiver<()>, bound: Duration) -> bool {
    // The sender is never sent on: `changed` returns Err exactly when the leader is gone.
    tokio::time::timeout(bound, rx.changed()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_and_waiters_released_when_it_is_done() {
        let locks = Arc::new(Locks::default());
        let Turn::Lead(leader) = locks.acquire("k") else {
            panic!("first is the leader")
        };
        let Turn::Wait(rx) = locks.acquire("k") else {
            panic!("second waits")
        };
        assert!(matches!(locks.acquire("other"), Turn::Lead(_)));
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(30)));
        drop(leader);
        assert!(waiter.await.unwrap());
        assert!(matches!(locks.acquire("k"), Turn::Lead(_)), "free again");
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let locks = Arc::new(Locks::default());
        let _leader = locks.acquire("k");
        let Turn::Wait(rx) = locks.acquire("k") else {
            panic!()
        };
        assert!(!wait(rx, Duration::from_millis(10)).await);
    }
}
