//! An exact, lock-free weighted split: the smooth weighted round robin order (nginx's
//! algorithm) computed once, at build time, and walked with one atomic counter.
//!
//! Over any run of one period (the sum of the weights over their greatest common
//! divisor) each index gets exactly its share, and the picks are interleaved (5, 1, 1
//! gives `a a b a c a a`), never coin flips. Picking is a `fetch_add` and a load, with no
//! lock, so threads share the one order without contention on a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest period kept; weights whose period would be longer are scaled down to it
/// (shares then hold to within one pick in this many).
pub const MAX_PERIOD: u64 = 1 << 16;

/// A precomputed smooth weighted round robin order.
#[derive(Debug)]
pub struct WeightedSequence {
    order: Box<[u32]>,
    next: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WeightedSequence {
    /// The order for `weights` (index i has weight `weights[i]`; 0 never comes up).
    pub fn new(weights: &[u32]) -> WeightedSequence {
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
        let mut w: Vec<i64> = weights
            .iter()
            .map(|&x| u64::from(x).checked_div(g).unwrap_or(0) as i64)
            .collect();
        let sum: i64 = w.iter().sum();
        if sum as u64 > MAX_PERIOD {
            for x in &mut w {
                if *x > 0 {
                    *x = ((*x as u64 * MAX_PERIOD / sum as u64).max(1)) as i64;
                }
            }
        }
        let total: i64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        WeightedSequence {
            order: order.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next index in the order, or `None` when every weight is 0.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        if self.order.len() <= 1 {
            return self.order.first().map(|&i| i as usize);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.order[n % self.order.len()] as usize)
    }

    /// The next index in the order for which `usable` holds, or `None` when none does
    /// within one period.
    pub fn pick_where(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.order.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.order[(start + k) % len] as usize)
            .find(|&i| usable(i))
    }

    /// The length of one period.
    pub fn period(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counts(s: &WeightedSequence, n: usize, len: usize) -> Vec<usize> {
        let mut c = vec![0; len];
        for _ in 0..n {
            c[s.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn interleaves_like_nginx() {
        let s = WeightedSequence::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| s.pick().unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ninety_ten_is_exact_over_every_hundred() {
        let s = WeightedSequence::new(&[90, 10]);
        assert_eq!(s.period(), 10);
        for _ in 0..5 {
            assert_eq!(counts(&s, 100, 2), [90, 10]);
        }
        // Not bunched: the canary's picks are spread out.
        let first: Vec<usize> = (0..10).map(|_| s.pick().unwrap()).collect();
        assert_eq!(first.iter().filter(|&&i| i == 1).count(), 1);
    }

    #[test]
    fn zero_weights_never_come_up() {
        let s = WeightedSequence::new(&[0, 3, 0]);
        assert_eq!(counts(&s, 30, 3), [0, 30, 0]);
        assert_eq!(WeightedSequence::new(&[0, 0]).pick(), None);
        assert_eq!(WeightedSequence::new(&[]).pick(), None);
    }

    #[test]
    fn huge_weights_are_scaled_and_stay_close() {
        let s = WeightedSequence::new(&[1_000_000, 999_999, 1]);
        assert!(s.period() as u64 <= MAX_PERIOD + 3);
        let c = counts(&s, s.period(), 3);
        assert!(c[2] >= 1);
        assert!((c[0] as i64 - c[1] as i64).abs() <= 2, "{c:?}");
    }

    #[test]
    fn pick_where_skips_unusable() {
        let s = WeightedSequence::new(&[1, 1, 1]);
        let c: Vec<usize> = (0..6).map(|_| s.pick_where(|i| i != 1).unwrap()).collect();
        assert!(!c.contains(&1));
        assert_eq!(s.pick_where(|_| false), None);
    }

    #[test]
    fn shared_between_threads_stays_exact() {
        let s = std::sync::Arc::new(WeightedSequence::new(&[3, 1]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut c = [0usize; 2];
                    for _ in 0..1000 {
                        c[s.pick().unwrap()] += 1;
                    }
                    c
                })
            })
            .collect();
        let mut total = [0usize; 2];
        for h in handles {
            let c = h.join().unwrap();
            total[0] += c[0];
            total[1] += c[1];
        }
        assert_eq!(total, [3000, 1000]);
    }
}
