//! Load-balancing algorithms, as pure code over endpoint indexes.
//!
//! Every algorithm takes a `usable` predicate (not yet tried by this request, not
//! ejected, not failing health checks, weight above zero) and never returns an index
//! for which it is false.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use sluice_config::model::LoadBalancing;
use sluice_core::weighted::WeightedSequence;

/// Virtual nodes on the consistent-hash ring per unit of weight.
const VNODES_PER_WEIGHT: u32 = 64;

/// A compiled load balancer for one endpoint set. Every variant picks without a lock.
#[derive(Debug)]
pub enum Balancer {
    /// Each usable endpoint in turn.
    RoundRobin(AtomicUsize),
    /// Smooth weighted round robin: the precomputed nginx order for the set's weights,
    /// walked by an atomic cursor.
    Weighted(WeightedSequence),
    /// Power of two random choices by requests in flight.
    LeastRequest,
    /// Ring of (hash, endpoint index), sorted by hash. A point's hash comes from the
    /// endpoint's address alone, so an endpoint that stays in a changed set keeps its
    /// points (and its keys).
    ConsistentHash(Vec<(u64, usize)>),
}

/// A 64-bit hash of a key, stable across processes (SipHash with fixed keys).
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl Balancer {
    /// Builds a balancer for endpoints with these `(address, weight)` pairs.
    pub fn new(algorithm: &LoadBalancing, endpoints: &[(&str, u32)]) -> Balancer {
        match algorithm {
            LoadBalancing::RoundRobin => Balancer::RoundRobin(AtomicUsize::new(0)),
            LoadBalancing::WeightedRoundRobin => {
                let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
                Balancer::Weighted(WeightedSequence::new(&weights))
            }
            LoadBalancing::LeastRequest => Balancer::LeastRequest,
            LoadBalancing::ConsistentHash(_) => {
                let mut ring = Vec::new();
                for (i, (addr, weight)) in endpoints.iter().enumerate() {
                    for v in 0..weight.saturating_mul(VNODES_PER_WEIGHT) {
                        ring.push((hash_key(format!("{addr}#{v}").as_bytes()), i));
                    }
                }
                ring.sort_unstable();
                Balancer::ConsistentHash(ring)
            }
        }
    }

    /// Picks one of `n` endpoints. `inflight(i)` is endpoint i's requests in flight,
    /// `key` the consistent-hash key.
    pub fn pick(
        &self,
        n: usize,
        usable: impl Fn(usize) -> bool,
        inflight: impl Fn(usize) -> usize,
        key: Option<u64>,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Balancer::RoundRobin(next) => {
                // Take a fresh turn for every skipped endpoint, so an unusable endpoint's
                // share spreads evenly instead of going to its neighbour.
                (0..n)
                    .map(|_| next.fetch_add(1, Ordering::Relaxed) % n)
                    .find(|&i| usable(i))
            }
            Balancer::Weighted(seq) => seq.pick(usable),
            Balancer::LeastRequest => {
                let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let mut rng = rand::rng();
                        let a = candidates[rng.random_range(0..len)];
                        let mut b = candidates[rng.random_range(0..len - 1)];
                        if b == a {
                            b = candidates[len - 1];
                        }
                        Some(if inflight(b) < inflight(a) { b } else { a })
                    }
                }
            }
            Balancer::ConsistentHash(ring) => {
                if ring.is_empty() {
                    return None;
                }
                let key = key.unwrap_or_else(|| rand::rng().random());
                let start = ring.partition_point(|(h, _)| *h < key);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|&i| usable(i))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_config::model::HashOn;

    fn counts(
        b: &Balancer,
        weights: &[u32],
        rounds: usize,
        usable: impl Fn(usize) -> bool + Copy,
    ) -> Vec<usize> {
        let mut c = vec![0; weights.len()];
        for _ in 0..rounds {
            c[b.pick(weights.len(), usable, |_| 0, None).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_interleaved() {
        let w = [5, 1, 1];
        let b = Balancer::new(
            &LoadBalancing::WeightedRoundRobin,
            &[("a", 5), ("b", 1), ("c", 1)],
        );
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(w.len(), |_| true, |_| 0, None).unwrap())
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, &w, 700, |_| true), [500, 100, 100]);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let b = Balancer::new(&LoadBalancing::RoundRobin, &[("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(counts(&b, &[1, 1, 1], 300, |i| i != 1), [150, 0, 150]);
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let b = Balancer::new(&LoadBalancing::LeastRequest, &[("a", 1), ("b", 1)]);
        for _ in 0..100 {
            assert_eq!(
                b.pick(2, |_| true, |i| if i == 0 { 10 } else { 0 }, None),
                Some(1)
            );
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_little() {
        let eps = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
        let b = Balancer::new(&LoadBalancing::ConsistentHash(HashOn::ClientIp), &eps);
        let keys: Vec<u64> = (0..3000u32).map(|k| hash_key(&k.to_be_bytes())).collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(3, |_| true, |_| 0, Some(*k)).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(3, |_| true, |_| 0, Some(*k)).unwrap())
            .collect();
        assert_eq!(first, again);
        let without: Vec<usize> = keys
            .iter()
            .map(|k| b.pick(3, |i| i != 2, |_| 0, Some(*k)).unwrap())
            .collect();
        let moved = first.iter().zip(&without).filter(|(a, b)| a != b).count();
        let on_removed = first.iter().filter(|&&i| i == 2).count();
        assert_eq!(moved, on_removed, "only keys of the removed endpoint move");
        for share in (0..3).map(|i| first.iter().filter(|&&x| x == i).count()) {
            assert!((700..=1300).contains(&share), "share {share} of 3000");
        }
    }
}
