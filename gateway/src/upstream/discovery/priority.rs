//! Priority failover (Envoy's priority levels), as a pure function.
//!
//! Each level's health score is `min(100, healthy% × overprovisioning factor)`, with
//! `healthy%` the integer percent of its endpoints that are healthy (active health ok and
//! not ejected). Level 0 takes its score in percent of the traffic, level 1 takes its
//! score of what is left, and so on. When the scores add up to less than 100 they are
//! normalised so the loads still add up to 100 (the rounding remainder goes to the first
//! level with any health). With no healthy endpoint anywhere, level 0 takes everything.

/// Per-level traffic shares in percent, parallel to `levels`, which gives each level's
/// `(healthy, total)` endpoint counts in priority order. The shares add up to 100.
pub fn priority_load(levels: &[(usize, usize)], overprovisioning: f64) -> Vec<u32> {
    let health: Vec<u32> = levels
        .iter()
        .map(|&(healthy, total)| {
            if total == 0 {
                return 0;
            }
            let percent = (healthy * 100 / total) as f64;
            (percent * overprovisioning).floor().min(100.0) as u32
        })
        .collect();
    let mut load = vec![0; levels.len()];
    let total_health = health.iter().sum::<u32>().min(100);
    if total_health == 0 {
        if let Some(first) = load.first_mut() {
            *first = 100;
        }
        return load;
    }
    let mut left = 100u32;
    for (l, h) in load.iter_mut().zip(&health) {
        *l = left.min(h * 100 / total_health);
        left -= *l;
    }
    if left > 0 {
        if let Some(i) = health.iter().position(|&h| h > 0) {
            load[i] += left;
        }
    }
    load
}

/// The level a draw in `0..100` falls in, given [`priority_load`]'s shares.
pub fn level_for(load: &[u32], draw: u32) -> usize {
    let mut acc = 0;
    for (i, l) in load.iter().enumerate() {
        acc += l;
        if draw < acc {
            return i;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's documented table for two levels, P=1 100% healthy (100 endpoints each, so
    /// the healthy count is the percentage).
    #[test]
    fn follows_envoys_two_level_table() {
        for (p0_healthy, p0, p1) in [
            (100, 100, 0),
            (72, 100, 0),
            (71, 99, 1),
            (50, 70, 30),
            (25, 35, 65),
            (0, 0, 100),
        ] {
            assert_eq!(
                priority_load(&[(p0_healthy, 100), (100, 100)], 1.4),
                [p0, p1],
                "P=0 {p0_healthy}% healthy"
            );
        }
    }

    #[test]
    fn spills_over_three_levels_and_normalises_when_health_is_short() {
        assert_eq!(
            priority_load(&[(25, 100), (25, 100), (100, 100)], 1.4),
            [35, 35, 30]
        );
        // 35 + 35 + 28 = 98 < 100: normalised, the remainder to the first healthy level.
        assert_eq!(
            priority_load(&[(25, 100), (25, 100), (20, 100)], 1.4),
            [37, 35, 28]
        );
        assert_eq!(
            priority_load(&[(1, 4), (0, 4)], 1.4),
            [100, 0],
            "35 normalised to 100"
        );
    }

    #[test]
    fn nothing_healthy_sends_everything_to_level_zero() {
        assert_eq!(priority_load(&[(0, 2), (0, 1)], 1.4), [100, 0]);
        assert_eq!(priority_load(&[], 1.4), Vec::<u32>::new());
    }

    #[test]
    fn the_factor_sets_when_spilling_starts() {
        // Two local endpoints, one of them down: 50% × 1.4 = 70% stays local.
        assert_eq!(priority_load(&[(1, 2), (1, 1)], 1.4), [70, 30]);
        assert_eq!(priority_load(&[(1, 2), (1, 1)], 2.0), [100, 0]);
        assert_eq!(priority_load(&[(1, 2), (1, 1)], 1.0), [50, 50]);
    }

    #[test]
    fn draws_map_onto_levels_by_share() {
        let load = [70, 30];
        let hits = (0..100).filter(|&d| level_for(&load, d) == 1).count();
        assert_eq!(hits, 30);
        assert_eq!(level_for(&[100, 0], 99), 0);
    }
}
