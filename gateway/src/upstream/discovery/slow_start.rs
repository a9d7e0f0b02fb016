//! Slow start (Envoy's `slow_start_config` semantics), as a pure function of the time
//! an endpoint has been in its ramp.
//!
//! How it is applied: the balancer's order is precomputed, so instead of rebuilding it
//! while weights ramp, each pick asks a ramping endpoint for admission with probability
//! [`factor`] (one clock read and one atomic RNG step; endpoints not ramping cost
//! nothing). A refused turn passes to the next endpoint the balancer offers, so over many
//! picks a ramping endpoint gets `factor` of its normal share. Consistent hashing does not
//! ramp (a key must keep its endpoint).

use std::time::Duration;

use sluice_config::model::SlowStartConfig;

/// The share of its weight that an endpoint `elapsed` into its ramp gets, in `(0, 1]`:
/// `max(min_weight_percent / 100, (elapsed / window) ^ (1 / aggression))`, and `1` once
/// the window has passed.
pub fn factor(config: &SlowStartConfig, elapsed: Duration) -> f64 {
    if elapsed >= config.window || config.window.is_zero() {
        return 1.0;
    }
    let time = elapsed.max(Duration::from_millis(1)).as_secs_f64() / config.window.as_secs_f64();
    let ramp = time.powf(1.0 / config.aggression);
    ramp.max(config.min_weight_percent / 100.0).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: u64, aggression: f64, min: f64) -> SlowStartConfig {
        SlowStartConfig {
            window: Duration::from_secs(window),
            aggression,
            min_weight_percent: min,
        }
    }

    #[test]
    fn linear_ramp_from_the_floor_to_full_weight() {
        let c = cfg(30, 1.0, 10.0);
        assert_eq!(factor(&c, Duration::ZERO), 0.1, "the floor at the start");
        assert_eq!(factor(&c, Duration::from_secs(1)), 0.1, "1/30 is below the floor");
        assert!((factor(&c, Duration::from_secs(15)) - 0.5).abs() < 1e-9);
        assert!((factor(&c, Duration::from_secs(27)) - 0.9).abs() < 1e-9);
        assert_eq!(factor(&c, Duration::from_secs(30)), 1.0);
        assert_eq!(factor(&c, Duration::from_secs(300)), 1.0);
    }

    #[test]
    fn aggression_bends_the_curve() {
        let fast = cfg(100, 2.0, 0.0);
        assert!(
            (factor(&fast, Duration::from_secs(25)) - 0.5).abs() < 1e-9,
            "sqrt(0.25)"
        );
        let slow = cfg(100, 0.5, 0.0);
        assert!(
            (factor(&slow, Duration::from_secs(50)) - 0.25).abs() < 1e-9,
            "0.5^2"
        );
    }
}
