//! Counters every request writes, kept per thread.
//!
//! A counter all threads add to is one cache line that moves between cores at every add, a
//! classic cause of poor scaling with threads. A [`Sharded`] value has one copy per shard,
//! each on its own cache lines; a thread writes the copy its index picks and readers (the
//! admin endpoint, the metrics) add up every copy. On this project's 2-core machine the
//! change measured level (docs/BENCHMARKS.md, fifteenth session): there the second thread is
//! short of a core, not of cache lines; with more cores the shared lines would cost more.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Two cache lines: an adjacent-line prefetcher pulls lines in pairs.
#[repr(align(128))]
struct Padded<T>(T);

/// One `T` per shard, each alone on its cache lines.
pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

impl<T> Sharded<T> {
    pub fn new_with(mut make: impl FnMut() -> T) -> Sharded<T> {
        Sharded {
            shards: (0..shard_count()).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling thread's copy.
    pub fn local(&self) -> &T {
        // shard_count() is a power of two.
        &self.shards[thread_index() & (self.shards.len() - 1)].0
    }

    /// Every copy, to add up.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|s| &s.0)
    }
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Sharded<T> {
        Sharded::new_with(T::default)
    }
}

impl Sharded<AtomicU64> {
    pub fn add(&self, n: u64) {
        self.local().fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from this thread's copy, which may wrap below zero (a gauge whose adds
    /// and subtracts ran on different threads): the sum of all copies is still right.
    pub fn sub(&self, n: u64) {
        self.local().fetch_sub(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.all()
            .fold(0u64, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

/// Enough shards that the threads serving requests (one per core by default) rarely share
/// one: twice the cores, a power of two, 4 to 64.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores * 2).next_power_of_two().clamp(4, 64)
    })
}

/// This thread's index, given out in the order threads first ask.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        index.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_threads_adds_are_summed_and_a_gauge_may_move_between_threads() {
        let counter = Arc::new(Sharded::<AtomicU64>::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.sum(), 8000);
        // Taken off on other threads than the ones that added.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || counter.sub(2000))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.sum(), 0);
    }

    #[test]
    fn copies_are_on_their_own_cache_lines() {
        let sharded = Sharded::<AtomicU64>::default();
        let addresses: Vec<usize> = sharded.all().map(|c| c as *const _ as usize).collect();
        assert!(addresses.len() >= 4 && addresses.len().is_power_of_two());
        for pair in addresses.windows(2) {
            assert!(pair[1] - pair[0] >= 128, "{addresses:?}");
        }
    }
}
