//! Sticky assignment, the pure core: a key hashed to a point of a fixed space, and the
//! points mapped onto backends from the live weights so that the mapping is monotonic.
//!
//! - [`point`] hashes a key with a fixed seed (the same point in every process and every
//!   replica, across restarts) to `0..SPACE`.
//! - [`backend_for`] lays the backends out on the space: the first backend (the base,
//!   `stable`) takes the bottom, every other backend a range taken *from the top*, in
//!   backend order. With two backends a canary of weight `w` out of `total` owns
//!   `[SPACE - SPACE·w/total, SPACE)`: when its weight rises its range grows downwards and
//!   every point already on it stays; when it falls only the points of the excess go back
//!   to the base. With more canaries, the first canary's range is monotonic the same way
//!   and the next ones sit below it (a change of an earlier canary's weight shifts them).
//!
//! The share of distinct keys a backend gets is its share of the space: its weight, to
//! within `1 / SPACE`.

/// The size of the space keys are hashed into: points are `0..SPACE`.
pub const SPACE: u32 = 10_000;

/// The point of `key`: FNV-1a over the bytes with a fixed seed, then a 64-bit finalizer
/// (so similar keys spread out), scaled onto `0..SPACE`.
pub fn point(key: &[u8]) -> u32 {
    // The FNV-1a offset basis, xored with a fixed seed of our own.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ 0x5e1c_e5a1_7c0f_fee5;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The high bits of h × SPACE: uniform over 0..SPACE without a modulo bias.
    ((u128::from(h) * u128::from(SPACE)) >> 64) as u32
}

/// The backend (index into `weights`) that owns `point` under these weights, `None`
/// when every weight is 0. See the module doc for the layout.
pub fn backend_for(point: u32, weights: &[u32]) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let space = u64::from(SPACE);
    let p = u64::from(point.min(SPACE - 1));
    // Walk down from the top: backend i (i ≥ 1) owns
    // [SPACE - top(i), SPACE - top(i - 1)), where top(i) is the space the canaries 1..=i
    // take together, rounded down once (so the ranges tile the space exactly).
    let mut cum: u64 = 0;
    for (i, &w) in weights.iter().enumerate().skip(1) {
        let upper = space - cum * space / total;
        cum += u64::from(w);
        let lower = space - cum * space / total;
        if p >= lower && p < upper {
            return Some(i);
        }
    }
    // Below every canary: the base, if it has weight; else the lowest canary with some.
    if weights.first().is_some_and(|&w| w > 0) {
        return Some(0);
    }
    weights.iter().position(|&w| w > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn share_of_points(weights: &[u32], backend: usize) -> u32 {
        (0..SPACE)
            .filter(|&p| backend_for(p, weights) == Some(backend))
            .count() as u32
    }

    #[test]
    fn points_are_fixed_and_spread_evenly() {
        // Fixed seed: the same key gives the same point in every process.
        assert_eq!(point(b"alice"), point(b"alice"));
        assert_ne!(point(b"alice"), point(b"alicf"));
        let mut buckets = [0u32; 10];
        for i in 0..100_000u32 {
            let p = point(format!("user-{i}").as_bytes());
            assert!(p < SPACE);
            buckets[(p / 1_000) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..=10_500).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn each_backend_owns_its_weight_of_the_space() {
        assert_eq!(share_of_points(&[90, 10], 1), 1_000);
        assert_eq!(share_of_points(&[90, 10], 0), 9_000);
        assert_eq!(share_of_points(&[1, 2], 1), 6_666);
        assert_eq!(share_of_points(&[50, 25, 25], 2), 2_500);
        assert_eq!(share_of_points(&[0, 1], 1), SPACE);
        assert_eq!(share_of_points(&[1, 0], 0), SPACE);
        assert_eq!(backend_for(5, &[0, 0]), None);
        // A zero-weight base with a canary below another: the canaries tile the space.
        assert_eq!(
            share_of_points(&[0, 1, 1], 1) + share_of_points(&[0, 1, 1], 2),
            SPACE
        );
    }

    #[test]
    fn a_rising_canary_keeps_every_point_it_had_and_a_falling_one_gives_back_only_the_excess() {
        let steps = [0u32, 1, 5, 10, 25, 33, 50, 75, 99, 100];
        for pair in steps.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            let before = [100 - lo, lo];
            let after = [100 - hi, hi];
            for p in 0..SPACE {
                let (b, a) = (backend_for(p, &before), backend_for(p, &after));
                if b == Some(1) {
                    assert_eq!(a, Some(1), "point {p} left the canary going {lo}% -> {hi}%");
                }
                // Falling back from `after` to `before`: a point that moves goes to the
                // base, and only the excess moves.
                if a == Some(0) {
                    assert_eq!(b, Some(0), "point {p} left the base going {lo}% -> {hi}%");
                }
            }
            let moved = (0..SPACE)
                .filter(|&p| backend_for(p, &before) != backend_for(p, &after))
                .count() as u32;
            assert_eq!(moved, share_of_points(&after, 1) - share_of_points(&before, 1));
        }
    }
}
