//! The breaker's sliding windows: the last N calls, or the calls of the last N seconds.
//! Both keep running totals, so recording and reading are O(1) (amortized for the time
//! window, which clears the buckets it skips over), and both are lock-free: any number
//! of threads record into one window through `&self`.
//!
//! - **Count window**: a ring of one-byte atomic slots, and a slot index that a
//!   compare-and-swap advances and wraps (no division); each call swaps its outcome into
//!   its slot and corrects the running failure and slow totals by the difference to the
//!   outcome it replaced. Calls are the index until the ring first wraps, then its size.
//! - **Time window**: a ring of per-second buckets, each tagged with the second it
//!   holds. The thread that moves the head to a new second (compare-and-swap on the head)
//!   clears the buckets the window left behind; a bucket is claimed for a new second by a
//!   compare-and-swap on its tag, and the winner takes its old counts out of the running
//!   totals.
//!
//! Under concurrency the totals can lag a call or two behind the buckets (a call swapped
//! in but not yet added), and a call recorded exactly while its bucket is being claimed
//! for the new second may be lost; reads clamp the totals to a valid tally. A single
//! thread sees exact counts.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

use sluice_config::resilience::WindowConfig;

/// Calls, failures and slow calls counted over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Tally {
    /// A tally from running totals that may be off transiently: clamped to
    /// `0 <= failures, slow <= calls`.
    fn clamped(calls: i64, failures: i64, slow: i64) -> Tally {
        let calls = calls.clamp(0, i64::from(u32::MAX));
        let part = |n: i64| u32::try_from(n.clamp(0, calls)).unwrap_or(u32::MAX);
        Tally {
            calls: part(calls),
            failures: part(failures),
            slow: part(slow),
        }
    }
}

/// A sliding window of call outcomes.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// An empty window of the configured kind and size; `now` is where time buckets
    /// start.
    pub fn new(config: &WindowConfig, now: Instant) -> Self {
        match *config {
            WindowConfig::Count(n) => Window::Count(CountWindow::new(n.max(1) as usize)),
            WindowConfig::Time(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                Window::Time(TimeWindow::new(secs.max(1) as usize, now))
            }
        }
    }

    /// Adds one outcome.
    #[inline]
    pub fn record(&self, failure: bool, slow: bool, now: Instant) {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(failure, slow, now),
        }
    }

    /// The totals over the window as of `now`.
    #[inline]
    pub fn tally(&self, now: Instant) -> Tally {
        match self {
            Window::Count(w) => w.tally(),
            Window::Time(w) => {
                w.advance_to(now);
                w.tally()
            }
        }
    }
}

/// A slot that holds an outcome (an empty slot is 0).
const PRESENT: u8 = 1;
const FAILURE: u8 = 2;
const SLOW: u8 = 4;

/// The difference in (failures, slow) between a slot's new and old contents.
#[inline]
fn delta(new: u8, old: u8) -> (i64, i64) {
    let bit = |v: u8, b: u8| i64::from(v & b != 0);
    (
        bit(new, FAILURE) - bit(old, FAILURE),
        bit(new, SLOW) - bit(old, SLOW),
    )
}

/// Set in [`CountWindow::next`] once the ring has wrapped around: every slot is full.
const FULL: u64 = 1 << 63;

/// The last `ring.len()` outcomes, one byte each, with running totals.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[AtomicU8]>,
    /// The slot the next outcome goes to (`0..len`), with [`FULL`] set once the ring
    /// has wrapped. Advanced by compare-and-swap, which wraps it without a division.
    next: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    fn new(size: usize) -> Self {
        Self {
            ring: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) {
        let len = self.ring.len() as u64;
        let taken = self.next.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            let i = w & !FULL;
            Some(if i + 1 >= len { FULL } else { (w & FULL) | (i + 1) })
        });
        let i = match taken {
            Ok(w) | Err(w) => w & !FULL,
        };
        let Some(slot) = self.ring.get(i as usize) else {
            return;
        };
        let new = PRESENT | if failure { FAILURE } else { 0 } | if slow { SLOW } else { 0 };
        let old = slot.swap(new, Ordering::AcqRel);
        let (df, ds) = delta(new, old);
        if df != 0 {
            self.failures.fetch_add(df, Ordering::AcqRel);
        }
        if ds != 0 {
            self.slow.fetch_add(ds, Ordering::AcqRel);
        }
    }

    #[inline]
    fn tally(&self) -> Tally {
        let next = self.next.load(Ordering::Acquire);
        let calls = if next & FULL != 0 {
            self.ring.len() as u64
        } else {
            next
        };
        Tally::clamped(
            i64::try_from(calls).unwrap_or(i64::MAX),
            self.failures.load(Ordering::Acquire),
            self.slow.load(Ordering::Acquire),
        )
    }
}

/// One second of outcomes, tagged with the second (since the window's origin) it holds.
#[derive(Debug)]
struct Bucket {
    second: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// The outcomes of the last `buckets.len()` seconds, one bucket per second, with running
/// totals.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    origin: Instant,
    /// The latest second (since `origin`) seen; its bucket is `head % len`.
    head: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl TimeWindow {
    fn new(seconds: usize, origin: Instant) -> Self {
        Self {
            // Bucket `i` starts as second `i`'s (empty) bucket, so the first lap claims
            // nothing.
            buckets: (0..seconds as u64)
                .map(|i| Bucket {
                    second: AtomicU64::new(i),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
            origin,
            head: AtomicU64::new(0),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let len = self.buckets.len() as u64;
        &self.buckets[(second % len) as usize]
    }

    /// Makes `bucket` second `second`'s, if it holds an older one: the thread whose
    /// compare-and-swap moves the tag takes the old counts out of the totals.
    fn claim(&self, bucket: &Bucket, second: u64) {
        let mut tag = bucket.second.load(Ordering::Acquire);
        while tag < second {
            match bucket
                .second
                .compare_exchange_weak(tag, second, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let take = |a: &AtomicU32| i64::from(a.swap(0, Ordering::AcqRel));
                    let (c, f, s) = (take(&bucket.calls), take(&bucket.failures), take(&bucket.slow));
                    if c != 0 {
                        self.calls.fetch_sub(c, Ordering::AcqRel);
                    }
                    if f != 0 {
                        self.failures.fetch_sub(f, Ordering::AcqRel);
                    }
                    if s != 0 {
                        self.slow.fetch_sub(s, Ordering::AcqRel);
                    }
                    return;
                }
                Err(actual) => tag = actual,
            }
        }
    }

    /// Moves the head to `now`'s second, clearing the buckets that fall out of the
    /// window, and returns the head. An instant older than the head (a call that
    /// finished "before" one already recorded, on another thread) leaves the head where
    /// it is.
    #[inline]
    fn advance_to(&self, now: Instant) -> u64 {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let mut head = self.head.load(Ordering::Acquire);
        while second > head {
            match self
                .head
                .compare_exchange_weak(head, second, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // This thread moved the head from `head` to `second`: it clears every
                    // bucket in between (at most one lap).
                    let len = self.buckets.len() as u64;
                    let first = (head + 1).max(second.saturating_sub(len - 1));
                    for s in first..=second {
                        self.claim(self.bucket(s), s);
                    }
                    return second;
                }
                Err(actual) => head = actual,
            }
        }
        head
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool, now: Instant) {
        let second = self.advance_to(now);
        let bucket = self.bucket(second);
        self.claim(bucket, second);
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        self.calls.fetch_add(1, Ordering::AcqRel);
        if failure {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
            self.slow.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[inline]
    fn tally(&self) -> Tally {
        Tally::clamped(
            self.calls.load(Ordering::Acquire),
            self.failures.load(Ordering::Acquire),
            self.slow.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn count_window_slides_over_the_last_n_calls() {
        let now = Instant::now();
        let w = Window::new(&WindowConfig::Count(3), now);
        w.record(true, false, now);
        w.record(true, true, now);
        w.record(false, false, now);
        assert_eq!(
            w.tally(now),
            Tally {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        // The first failure falls out.
        w.record(false, false, now);
        assert_eq!(
            w.tally(now),
            Tally {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // Then the slow failure.
        w.record(false, false, now);
        assert_eq!(
            w.tally(now),
            Tally {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_expires_old_buckets() {
        let t0 = Instant::now();
        let w = Window::new(&WindowConfig::Time(Duration::from_secs(3)), t0);
        w.record(true, false, t0);
        w.record(false, false, t0 + Duration::from_millis(1500));
        w.record(true, true, t0 + Duration::from_millis(2900));
        assert_eq!(
            w.tally(t0 + Duration::from_millis(2999)),
            Tally {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        // Second 0 leaves the window at 3s.
        assert_eq!(
            w.tally(t0 + Duration::from_secs(3)),
            Tally {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(
            w.tally(t0 + Duration::from_secs(5)),
            Tally {
                calls: 0,
                failures: 0,
                slow: 0
            }
        );
        // A long gap clears everything at once.
        w.record(true, false, t0 + Duration::from_secs(6));
        assert_eq!(w.tally(t0 + Duration::from_secs(1000)), Tally::default());
    }

    #[test]
    fn time_window_files_late_outcomes_in_the_current_bucket() {
        let t0 = Instant::now();
        let w = Window::new(&WindowConfig::Time(Duration::from_secs(2)), t0);
        w.record(false, false, t0 + Duration::from_secs(1));
        w.record(true, false, t0);
        assert_eq!(
            w.tally(t0 + Duration::from_secs(2)),
            Tally {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(w.tally(t0 + Duration::from_secs(3)), Tally::default());
    }

    #[test]
    fn windows_count_every_call_recorded_from_many_threads() {
        let t0 = Instant::now();
        for config in [
            WindowConfig::Count(100_000),
            WindowConfig::Time(Duration::from_secs(60)),
        ] {
            let w = std::sync::Arc::new(Window::new(&config, t0));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let w = w.clone();
                    std::thread::spawn(move || {
                        for i in 0..10_000u32 {
                            w.record(i % 5 == 0, i % 10 == 0, t0);
                        }
                    })
                })
                .collect();
            for t in threads {
                assert!(t.join().is_ok());
            }
            assert_eq!(
                w.tally(t0),
                Tally {
                    calls: 40_000,
                    failures: 8_000,
                    slow: 4_000
                },
                "{config:?}"
            );
        }
    }

    #[test]
    fn a_full_count_window_stays_exact_under_concurrent_overwrites() {
        let t0 = Instant::now();
        let w = std::sync::Arc::new(Window::new(&WindowConfig::Count(64), t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        w.record(i % 2 == 0, false, t0);
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        // Whatever interleaving: once every call is in, the totals match the ring.
        let Window::Count(c) = &*w else { unreachable!() };
        let failures = c
            .ring
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & FAILURE != 0)
            .count() as u32;
        assert_eq!(
            w.tally(t0),
            Tally {
                calls: 64,
                failures,
                slow: 0
            }
        );
    }
}
