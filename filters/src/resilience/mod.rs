//! Resilience cores.
