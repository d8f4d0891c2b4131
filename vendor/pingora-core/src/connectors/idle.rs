// Poplar patch: the pool of idle upstream connections, without a task per connection.
//
// 0.9.1 spawns a task for every connection it releases to the pool, which waits on the
// connection (a read, the idle timer, a signal that it is being taken); taking the connection
// back signals that task and then waits for it to let go of the connection. That is a task
// spawned, three extra task polls, two wake-ups and five allocations (task, Arc<Mutex>,
// oneshot, LRU node, hot-queue slot) for every request that reuses a connection.
//
// Here a released connection is only put on a shelf. Whether it is still usable is checked
// where 0.9.1 checked it too, when it is taken (a read that must find nothing: neither data
// nor the end of the stream) and past its idle timeout it is not taken. Connections nobody
// takes are looked at by one sweeper task per pool, running while the pool holds any: once a
// second it closes the ones past their idle timeout and the ones the server closed or wrote to.
// Taking and shelving are last in, first out per key (nginx's keepalive cache does the same),
// so the most recently used connection, the least likely to have been closed, goes first.

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::l4::stream::driver_thread;
use crate::protocols::Stream;
use log::debug;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// How often the sweeper looks at the connections nobody took.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Shelved {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
    /// The no-steal runtime's thread whose I/O driver the connection is registered with
    /// ([`driver_thread`]): a thread takes only the connections it made, as each nginx
    /// worker keeps its own keepalive connections.
    home: Option<ThreadId>,
}

impl Shelved {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

#[derive(Default)]
struct Shelves {
    by_key: HashMap<u64, Vec<Shelved>>,
    sweeping: bool,
}

/// Idle connections to upstreams, by group key (usually `Peer::reuse_hash`), at most `size`.
pub(crate) struct IdlePool {
    shelves: Mutex<Shelves>,
    size: usize,
    unexpected_data: Arc<AtomicU64>,
    evicted: Option<PoolCallback>,
}

impl IdlePool {
    pub(crate) fn new(
        size: usize,
        unexpected_data: Arc<AtomicU64>,
        evicted: Option<PoolCallback>,
    ) -> Self {
        IdlePool {
            shelves: Mutex::new(Shelves::default()),
            size,
            unexpected_data,
            evicted,
        }
    }

    /// The most recently shelved connection under `key` that is within its idle timeout and
    /// was made on this thread (see [`driver_thread`]). Expired ones met on the way are closed.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let here = driver_thread();
        let mut expired = Vec::new();
        let found = {
            let mut shelves = self.shelves.lock();
            let by_key = &mut shelves.by_key;
            let shelf = by_key.get_mut(&key)?;
            let mut found = None;
            let mut i = shelf.len();
            while i > 0 {
                i -= 1;
                if shelf[i].expired(now) {
                    expired.push(shelf.remove(i));
                } else if here.is_none() || shelf[i].home == here {
                    found = Some(shelf.remove(i).stream);
                    break;
                }
            }
            if shelf.is_empty() {
                by_key.remove(&key);
            }
            found
        };
        drop(expired); // closed outside the lock
        found
    }

    /// Shelve `stream` under `key`. At `size` connections the one idle longest is closed to
    /// make room (and the eviction callback told how long it was idle).
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, timeout: Option<Duration>) {
        if self.size == 0 {
            return;
        }
        let idle = Shelved {
            stream,
            since: Instant::now(),
            timeout,
            home: driver_thread(),
        };
        let (evicted, start_sweeper) = {
            let mut shelves = self.shelves.lock();
            let evicted = if shelves.len() >= self.size {
                shelves.evict_oldest()
            } else {
                None
            };
            shelves.by_key.entry(key).or_default().push(idle);
            let start_sweeper = !shelves.sweeping;
            shelves.sweeping = true;
            (evicted, start_sweeper)
        };
        if let Some(evicted) = evicted {
            debug!("idle pool full, closing the connection idle longest");
            if let Some(callback) = &self.evicted {
                callback(evicted.since.elapsed());
            }
        }
        if start_sweeper {
            self.start_sweeper();
        }
    }

    fn start_sweeper(self: &Arc<Self>) {
        let mut sweeper = Sweeper {
            pool: Arc::downgrade(self),
            done: false,
        };
        pingora_runtime::current_handle().spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match sweeper.pool.upgrade() {
                    Some(pool) if pool.sweep() => continue,
                    _ => break,
                }
            }
            sweeper.done = true;
            drop(sweeper);
        });
    }

    /// Closes what is past its idle timeout or no longer usable. Returns whether anything is
    /// left to sweep; when not, the sweeper ends (and the next `put` starts one).
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut closed = Vec::new();
        let left = {
            let mut shelves = self.shelves.lock();
            shelves.by_key.retain(|_, shelf| {
                let mut i = 0;
                while i < shelf.len() {
                    let idle = &mut shelf[i];
                    if idle.expired(now)
                        || !test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                    {
                        closed.push(shelf.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                !shelf.is_empty()
            });
            let left = !shelves.by_key.is_empty();
            if !left {
                shelves.sweeping = false;
            }
            left
        };
        if !closed.is_empty() {
            debug!("closing {} idle upstream connections", closed.len());
        }
        left
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shelves.lock().len()
    }
}

impl Shelves {
    /// Connections shelved (keys with none are removed, so this is a sum over a few keys).
    fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    fn evict_oldest(&mut self) -> Option<Shelved> {
        let (key, index) = self
            .by_key
            .iter()
            .flat_map(|(key, shelf)| {
                shelf
                    .iter()
                    .enumerate()
                    .map(move |(i, idle)| (idle.since, *key, i))
            })
            .min_by_key(|(since, _, _)| *since)
            .map(|(_, key, i)| (key, i))?;
        let shelf = self.by_key.get_mut(&key)?;
        let idle = shelf.remove(index);
        if shelf.is_empty() {
            self.by_key.remove(&key);
        }
        Some(idle)
    }
}

/// The sweeper task's state: if the task is dropped before it ends on its own (its runtime
/// shut down), the pool is told no sweeper runs, so the next `put` starts another.
struct Sweeper {
    pool: Weak<IdlePool>,
    done: bool,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.shelves.lock().sweeping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Box::new(L4Stream::from(client)), server)
    }

    fn pool(size: usize) -> Arc<IdlePool> {
        Arc::new(IdlePool::new(size, Arc::new(AtomicU64::new(0)), None))
    }

    // One runtime per thread (Pingora's no-steal runtimes): a connection is taken only on
    // the thread whose runtime made it.
    #[test]
    fn on_single_threaded_runtimes_a_thread_takes_only_the_connections_it_made() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let here = runtime();
        let pool = pool(8);
        let listener = here.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let (made_here, _server) = here.block_on(pair(&listener));
        let id = made_here.id();
        here.block_on(async { pool.put(1, made_here, None) });

        let elsewhere = pool.clone();
        let taken_elsewhere =
            std::thread::spawn(move || runtime().block_on(async { elsewhere.take(1).is_some() }))
                .join()
                .unwrap();
        assert!(!taken_elsewhere, "taken on another thread's runtime");
        let taken_here = here.block_on(async { pool.take(1) }).unwrap();
        assert_eq!(taken_here.id(), id);
    }

    #[tokio::test]
    async fn last_in_first_out_per_key_and_expired_ones_are_not_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool(8);
        let (a, _sa) = pair(&listener).await;
        let (b, _sb) = pair(&listener).await;
        let (c, _sc) = pair(&listener).await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(1, a, None);
        pool.put(1, b, None);
        pool.put(2, c, Some(Duration::ZERO));
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.take(1).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1).is_none());
        assert!(pool.take(2).is_none(), "past its idle timeout");
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn a_full_pool_closes_the_connection_idle_longest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool(2);
        let (a, mut sa) = pair(&listener).await;
        let (b, _sb) = pair(&listener).await;
        let (c, _sc) = pair(&listener).await;
        let (b_id, c_id) = (b.id(), c.id());
        pool.put(1, a, None);
        pool.put(2, b, None);
        pool.put(1, c, None);
        assert_eq!(pool.len(), 2);
        let mut buf = [0; 1];
        assert_eq!(sa.read(&mut buf).await.unwrap(), 0, "the oldest was closed");
        assert_eq!(pool.take(1).map(|s| s.id()), Some(c_id));
        assert_eq!(pool.take(2).map(|s| s.id()), Some(b_id));
    }

    #[tokio::test]
    async fn the_sweeper_closes_what_the_server_closed_or_wrote_to_and_what_expired() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool(8);
        let (closed, sa) = pair(&listener).await;
        let (written, mut sb) = pair(&listener).await;
        let (expires, mut sc) = pair(&listener).await;
        let (kept, _sd) = pair(&listener).await;
        let kept_id = kept.id();
        pool.put(1, closed, None);
        pool.put(1, written, None);
        pool.put(1, expires, Some(Duration::from_millis(500)));
        pool.put(1, kept, None);
        drop(sa);
        sb.write_all(b"x").await.unwrap();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(SWEEP_EVERY * 5, sc.read(&mut buf)).await;
        assert_eq!(read.unwrap().unwrap(), 0, "closed once expired");
        // The sweep that closed the expired one looked at the others too.
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.take(1).map(|s| s.id()), Some(kept_id));
        assert_eq!(pool.len(), 0);
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert!(
            !pool.shelves.lock().sweeping,
            "an empty pool has no sweeper"
        );
    }
}
