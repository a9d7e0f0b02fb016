//! The breaker's sliding windows: the last N calls, or the calls of the last N seconds.
//! Both keep running totals, so recording and reading are O(1) (amortized for the time
//! window, which clears the buckets it skips over).

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
    #[inline]
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failure);
        self.slow += u32::from(slow);
    }

    #[inline]
    fn sub(&mut self, other: &Tally) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
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
    pub fn record(&mut self, failure: bool, slow: bool, now: Instant) {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(failure, slow, now),
        }
    }

    /// The totals over the window as of `now`.
    #[inline]
    pub fn tally(&mut self, now: Instant) -> Tally {
        match self {
            Window::Count(w) => w.total,
            Window::Time(w) => {
                w.advance_to(now);
                w.total
            }
        }
    }
}

const FAILURE: u8 = 1;
const SLOW: u8 = 2;

/// The last `ring.len()` outcomes, one byte each, with running totals.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[u8]>,
    /// Where the next outcome goes (and, once full, the oldest outcome).
    next: usize,
    total: Tally,
}

impl CountWindow {
    fn new(size: usize) -> Self {
        Self {
            ring: vec![0; size].into_boxed_slice(),
            next: 0,
            total: Tally::default(),
        }
    }

    #[inline]
    fn record(&mut self, failure: bool, slow: bool) {
        let full = self.total.calls as usize == self.ring.len();
        let Some(slot) = self.ring.get_mut(self.next) else {
            return;
        };
        if full {
            let old = *slot;
            self.total.sub(&Tally {
                calls: 1,
                failures: u32::from(old & FAILURE != 0),
                slow: u32::from(old & SLOW != 0),
            });
        }
        *slot = if failure { FAILURE } else { 0 } | if slow { SLOW } else { 0 };
        self.total.add(failure, slow);
        self.next += 1;
        if self.next == self.ring.len() {
            self.next = 0;
        }
    }
}

/// The outcomes of the last `buckets.len()` seconds, one bucket per second, with running
/// totals.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Tally]>,
    origin: Instant,
    /// The latest second (since `origin`) seen; its bucket is `head % len`.
    head: u64,
    total: Tally,
}

impl TimeWindow {
    fn new(seconds: usize, origin: Instant) -> Self {
        Self {
            buckets: vec![Tally::default(); seconds].into_boxed_slice(),
            origin,
            head: 0,
            total: Tally::default(),
        }
    }

    /// Moves the head to `now`'s second, clearing the buckets that fall out of the
    /// window. An instant older than the head (a call that finished "before" one already
    /// recorded, on another thread) leaves the head where it is.
    #[inline]
    fn advance_to(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        if second <= self.head {
            return;
        }
        let len = self.buckets.len() as u64;
        if second - self.head >= len {
            self.buckets.fill(Tally::default());
            self.total = Tally::default();
        } else {
            for s in self.head + 1..=second {
                let bucket = &mut self.buckets[(s % len) as usize];
                self.total.sub(bucket);
                *bucket = Tally::default();
            }
        }
        self.head = second;
    }

    #[inline]
    fn record(&mut self, failure: bool, slow: bool, now: Instant) {
        self.advance_to(now);
        let len = self.buckets.len() as u64;
        self.buckets[(self.head % len) as usize].add(failure, slow);
        self.total.add(failure, slow);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn count_window_slides_over_the_last_n_calls() {
        let now = Instant::now();
        let mut w = Window::new(&WindowConfig::Count(3), now);
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
        let mut w = Window::new(&WindowConfig::Time(Duration::from_secs(3)), t0);
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
        let mut w = Window::new(&WindowConfig::Time(Duration::from_secs(2)), t0);
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
}
