//! Promotion compiles: background work, one at a time, at the lowest CPU priority.
//!
//! Compiling a component takes a core (or all of them: Cranelift compiles functions in
//! parallel) for tens of milliseconds to seconds. At normal priority that is taken from
//! the requests the edge is serving; at nice 19 a compile gets the cycles traffic leaves
//! and still finishes under full load, only later (docs/BENCHMARKS.md: hello inline p99
//! 3.3 ms alone, 9 ms beside a compile loop at nice 0, 4-5 ms beside one at nice 19).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs compile jobs in the order given, with its own rayon pool for the
/// parallel part, every thread of both at nice 19. The thread starts with the first job.
pub struct Compiler {
    jobs: OnceLock<mpsc::Sender<Job>>,
    /// What the promotions compiled so far came to (for `/metrics`).
    pub stats: CompileStats,
}

/// Promotion compiles since start: how many, how many failed, and the time they took.
#[derive(Default)]
pub struct CompileStats {
    compiles: AtomicU64,
    failures: AtomicU64,
    nanos: AtomicU64,
}

impl CompileStats {
    pub fn record(&self, took: Duration, ok: bool) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// `(compiles, failures, seconds)`.
    pub fn snapshot(&self) -> (u64, u64, f64) {
        let seconds = self.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (count(&self.compiles), count(&self.failures), seconds)
    }
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler {
            jobs: OnceLock::new(),
            stats: CompileStats::default(),
        }
    }

    /// Queues `job`; `false` if there is no compile thread to run it.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let jobs = self.jobs.get_or_init(Compiler::start);
        jobs.send(Box::new(job)).is_ok()
    }

    fn start() -> mpsc::Sender<Job> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("poplar-compile".into())
            .spawn(move || {
                lower_priority();
                let mut pool = None;
                for job in queue {
                    // Wasmtime's parallel compilation runs on the pool it is called from.
                    let pool = pool.get_or_insert_with(|| {
                        rayon::ThreadPoolBuilder::new()
                            .thread_name(|i| format!("poplar-compile-{i}"))
                            .start_handler(|_| lower_priority())
                            .build()
                    });
                    let run = std::panic::AssertUnwindSafe(|| match pool {
                        Ok(pool) => pool.install(job),
                        Err(_) => job(),
                    });
                    // One job's panic must not end the promotions of every task after it.
                    if std::panic::catch_unwind(run).is_err() {
                        log::error!("a compile job panicked");
                    }
                }
            });
        if let Err(e) = spawned {
            // The queue's end is gone with the closure: `submit` reports every job refused.
            log::error!("cannot start the compile thread: {e}");
        }
        jobs
    }
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler::new()
    }
}

/// Moves the calling thread to nice 19 (Linux nice values are per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its arguments; `who` 0 is the calling thread.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if result != 0 {
            log::warn!(
                "compiles keep normal CPU priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: as in `lower_priority`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn jobs_run_in_order_at_the_lowest_priority_on_threads_of_their_own() {
        let ours = nice_of_this_thread();
        let compiler = Compiler::new();
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            assert!(compiler.submit(move || {
                // The parallel part runs on the pool's threads, at the same priority.
                let pool_nice = rayon::join(nice_of_this_thread, nice_of_this_thread);
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((i, nice_of_this_thread(), pool_nice, name))
                    .unwrap();
            }));
        }
        let ran: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        for (i, (order, nice, pool_nice, name)) in ran.into_iter().enumerate() {
            assert_eq!(order, i);
            assert_eq!((nice, pool_nice), (19, (19, 19)));
            assert!(name.unwrap().starts_with("poplar-compile"));
        }
        assert_eq!(nice_of_this_thread(), ours, "the caller's priority changed");
    }
}
