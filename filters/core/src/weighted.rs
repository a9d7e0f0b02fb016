//! A lock-free smooth weighted round robin: [`WeightedSequence`].
//!
//! The sequence nginx's smooth weighted round robin produces for a fixed set of weights
//! repeats with period `sum(weights) / gcd(weights)`. It is computed once, when the
//! sequence is built, and a pick is one `fetch_add` on an atomic cursor into it: no lock,
//! and the split is exact over every full period (weights 90/10 give exactly 90 and 10
//! over any 100 consecutive picks that start at a period boundary, and never drift by
//! more than one pick in between).
//!
//! Periods longer than [`MAX_PERIOD`] are not stored: the weights are first scaled down
//! (each non-zero weight keeps at least 1) so the period fits, which keeps each share
//! within `1 / MAX_PERIOD` of its exact value.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest precomputed sequence. Weight sums (divided by their gcd) above this are
/// scaled down to fit.
pub const MAX_PERIOD: usize = 4096;

/// The smooth weighted round robin order for a fixed list of weights, picked lock-free.
///
/// ```
/// use sluice_core::weighted::WeightedSequence;
///
/// let split = WeightedSequence::new(&[90, 10]);
/// let mut counts = [0; 2];
/// for _ in 0..100 {
///     counts[split.next().unwrap()] += 1;
/// }
/// assert_eq!(counts, [90, 10]);
/// ```
#[derive(Debug)]
pub struct WeightedSequence {
    /// Item indexes in pick order, one period long. Empty when every weight is 0.
    order: Box<[u32]>,
    /// Number of items the weights were given for.
    items: usize,
    cursor: AtomicUsize,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedSequence {
    /// The sequence for items `0..weights.len()` with these weights. An item of weight 0
    /// is never picked.
    pub fn new(weights: &[u32]) -> Self {
        let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
        let g = w.iter().copied().fold(0, gcd);
        if g > 1 {
            w.iter_mut().for_each(|x| *x /= g);
        }
        let sum: u64 = w.iter().sum();
        if sum > MAX_PERIOD as u64 {
            // Scale to fit, keeping every non-zero weight at least 1.
            let nonzero = w.iter().filter(|&&x| x > 0).count() as u64;
            let budget = (MAX_PERIOD as u64).saturating_sub(nonzero).max(1);
            for x in w.iter_mut().filter(|x| **x > 0) {
                *x = 1 + (*x * budget) / sum;
            }
        }
        let period: u64 = w.iter().sum();
        let total = i64::try_from(period).unwrap_or(i64::MAX);
        let mut current = vec![0i64; w.len()];
        let mut order = Vec::with_capacity(usize::try_from(period).unwrap_or(0));
        for _ in 0..period {
            // nginx: every item gains its weight, the largest current wins (ties to the
            // lowest index) and gives back the total.
            let mut best: Option<usize> = None;
            for i in (0..w.len()).filter(|&i| w[i] > 0) {
                current[i] += i64::try_from(w[i]).unwrap_or(i64::MAX);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            current[b] -= total;
            order.push(u32::try_from(b).unwrap_or(u32::MAX));
        }
        Self {
            order: order.into_boxed_slice(),
            items: weights.len(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Number of items (weighted or not).
    pub fn items(&self) -> usize {
        self.items
    }

    /// Length of one period of the sequence (0 when every weight is 0).
    pub fn period(&self) -> usize {
        self.order.len()
    }

    /// The next item in the sequence; `None` when every weight is 0.
    #[inline]
    pub fn next(&self) -> Option<usize> {
        let n = self.order.len();
        if n <= 1 {
            // One item (a route with one backend): no shared counter to touch.
            return self.order.first().map(|&i| i as usize);
        }
        let at = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        Some(self.order[at] as usize)
    }

    /// The next item for which `usable` holds, skipping the others' turns (so the usable
    /// items share the picks in proportion to their weights). `usable` is called at most
    /// once per item. `None` when no item with weight is usable.
    #[inline]
    pub fn pick(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.next()?;
        if usable(first) {
            return Some(first);
        }
        // Slow path: remember which items were refused, so each is asked only once.
        let mut refused = vec![false; self.items];
        refused[first] = true;
        let mut left = (0..self.items)
            .filter(|&i| i != first && self.order.contains(&(i as u32)))
            .count();
        while left > 0 {
            let i = self.next()?;
            if refused[i] {
                continue;
            }
            if usable(i) {
                return Some(i);
            }
            refused[i] = true;
            left -= 1;
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counts(s: &WeightedSequence, picks: usize, usable: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let mut c = vec![0; s.items()];
        for _ in 0..picks {
            c[s.pick(usable).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn follows_nginx_smooth_order() {
        let s = WeightedSequence::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| s.next().unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(s.period(), 7);
    }

    #[test]
    fn ninety_ten_is_exact_over_a_hundred_picks_and_interleaved() {
        let s = WeightedSequence::new(&[90, 10]);
        assert_eq!(s.period(), 10, "divided by the gcd");
        let seq: Vec<usize> = (0..100).map(|_| s.next().unwrap()).collect();
        assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 10);
        // Interleaved: never two picks of the light item in a row, and each run of ten
        // holds exactly one.
        for window in seq.chunks(10) {
            assert_eq!(window.iter().filter(|&&i| i == 1).count(), 1, "{window:?}");
        }
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let s = WeightedSequence::new(&[0, 3, 0, 1]);
        assert_eq!(counts(&s, 400, |_| true), [0, 300, 0, 100]);
        assert!(WeightedSequence::new(&[0, 0]).next().is_none());
        assert!(WeightedSequence::new(&[]).next().is_none());
    }

    #[test]
    fn unusable_items_are_skipped_and_the_rest_keep_their_ratio() {
        let s = WeightedSequence::new(&[2, 1, 1]);
        assert_eq!(counts(&s, 300, |i| i != 0), [0, 150, 150]);
        assert_eq!(s.pick(|_| false), None);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_the_period_cap() {
        let s = WeightedSequence::new(&[1_000_003, 999_983, 7]);
        assert!(s.period() <= MAX_PERIOD, "{}", s.period());
        let c = counts(&s, s.period() * 3, |_| true);
        assert!(c[2] >= 3, "a tiny weight still gets picks: {c:?}");
        let ratio = c[0] as f64 / c[1] as f64;
        assert!((ratio - 1_000_003.0 / 999_983.0).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn concurrent_picks_split_exactly() {
        let s = std::sync::Arc::new(WeightedSequence::new(&[3, 1]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut c = [0usize; 2];
                    for _ in 0..1000 {
                        c[s.next().unwrap()] += 1;
                    }
                    c
                })
            })
            .collect();
        let mut total = [0usize; 2];
        for t in threads {
            let c = t.join().unwrap();
            total[0] += c[0];
            total[1] += c[1];
        }
        assert_eq!(total, [3000, 1000]);
    }
}
