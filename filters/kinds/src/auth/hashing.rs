//! Password hashes (argon2, bcrypt) off the request's worker thread.
//!
//! A hash costs milliseconds of CPU by design (argon2id with the default parameters
//! about 20 ms here): run on a worker thread, it would stall every other request that
//! thread serves, and a client sending wrong passwords (never cached) could stall them
//! all. [`Hashing::run`] runs the check on tokio's blocking pool instead, at most
//! `limit` at once (one per CPU for the process-wide [`HASHING`]); a request over the
//! cap waits without holding a worker. Outside a tokio runtime (validation, a unit
//! test's `block_on`) the check runs where it is called.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

/// A cap on concurrent hash checks.
pub struct Hashing {
    permits: Semaphore,
}

/// The process-wide cap: one check per CPU.
pub static HASHING: LazyLock<Hashing> =
    LazyLock::new(|| Hashing::new(std::thread::available_parallelism().map_or(1, usize::from)));

impl Hashing {
    /// At most `limit` (at least 1) checks at once.
    pub fn new(limit: usize) -> Hashing {
        Hashing {
            permits: Semaphore::new(limit.max(1)),
        }
    }

    /// Runs `check` on the blocking pool once a permit is free; `None` when it could not
    /// run to its end (it panicked).
    pub async fn run<T: Send + 'static>(&self, check: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Some(check());
        };
        let _permit = self.permits.acquire().await.ok()?;
        runtime.spawn_blocking(check).await.ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Work that holds its thread for about `d` (a stand-in for a hash).
    fn busy(d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_check_leaves_the_worker_free() {
        // One worker thread: a check run on it would stop the ticker until it ends.
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::task::yield_now().await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let h = Hashing::new(1);
        let during = h
            .run({
                let ticks = ticks.clone();
                move || {
                    let before = ticks.load(Ordering::Relaxed);
                    busy(Duration::from_millis(200));
                    ticks.load(Ordering::Relaxed) - before
                }
            })
            .await
            .unwrap();
        ticker.abort();
        assert!(during > 0, "the worker served other tasks during the check");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_limit_run_at_once() {
        let h = Arc::new(Hashing::new(2));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (h, now, most) = (h.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    h.run(move || {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        busy(Duration::from_millis(50));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "two at once, never more");
    }

    #[test]
    fn outside_a_runtime_the_check_runs_in_place() {
        let h = Hashing::new(1);
        assert_eq!(crate::test_support::block_on(h.run(|| 7)), Some(7));
    }
}
