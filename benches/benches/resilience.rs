//! Hot paths of the resilience cores: the circuit breaker's admission and recording, the
//! outlier detector's ejection check, and the retry budget.
//!
//! `cargo bench -p sluice-benches --bench resilience`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_config::resilience::{BreakerConfig, OutlierDetectionConfig, RetryBudgetConfig, WindowConfig};
use sluice_core::resilience::{
    Admission, CallOutcome, CircuitBreaker, OutlierDetector, RetryBudget, UpstreamOutcome,
};

/// A breaker that never trips under the load below (successes only).
fn breaker(window: WindowConfig, now: Instant) -> CircuitBreaker {
    CircuitBreaker::with_seed(
        &BreakerConfig {
            window,
            ..BreakerConfig::default()
        },
        now,
        1,
    )
}

/// One call through a closed breaker: `try_acquire` then `record`.
fn acquire_and_record(b: &CircuitBreaker, now: Instant) {
    if let Admission::Permitted(permit) = b.try_acquire(now).admission {
        black_box(b.record(permit, CallOutcome::success(Duration::from_millis(3)), now));
    }
}

fn breaker_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let start = Instant::now();

    let count = breaker(WindowConfig::Count(100), start);
    g.bench_function("record_success", |b| {
        b.iter(|| acquire_and_record(black_box(&count), start))
    });

    // Time moves forward 1 ms per call, so buckets roll over every thousand calls.
    let time = breaker(WindowConfig::Time(Duration::from_secs(60)), start);
    let mut now = start;
    g.bench_function("record_time_window", |b| {
        b.iter(|| {
            now += Duration::from_millis(1);
            acquire_and_record(black_box(&time), now)
        })
    });

    g.bench_function("try_acquire_closed", |b| {
        b.iter(|| {
            // The permit is dropped unrecorded: this measures admission alone. Consume a
            // bool rather than `black_box` the whole `Admission`, whose copy through
            // memory would cost more than the decision.
            let admission = black_box(&count).try_acquire(black_box(start)).admission;
            black_box(matches!(admission, Admission::Permitted(_)))
        })
    });
    g.finish();
}

fn outlier_benches(c: &mut Criterion) {
    let start = Instant::now();
    let detector = OutlierDetector::new(
        &OutlierDetectionConfig::default(),
        (0..16).map(|i| format!("10.0.0.{i}:8080")),
        start,
    );
    let mut idx = 0usize;
    c.bench_function("outlier/is_ejected", |b| {
        b.iter(|| {
            idx = (idx + 1) & 15;
            black_box(detector.is_ejected(black_box(idx), start))
        })
    });
    // A successful response recorded against each endpoint in turn: the per-try cost
    // of passive outlier detection when nothing is failing.
    let mut idx = 0usize;
    c.bench_function("outlier/record", |b| {
        b.iter(|| {
            idx = (idx + 1) & 15;
            black_box(detector.record(black_box(idx), UpstreamOutcome::Response(200), start))
        })
    });
}

fn retry_budget_benches(c: &mut Criterion) {
    let budget = RetryBudget::new(&RetryBudgetConfig::default());
    let _requests: Vec<_> = (0..100).map(|_| budget.request_started()).collect();
    c.bench_function("retry_budget/try_start", |b| {
        // Take a slot and give it back (the guard's drop).
        b.iter(|| black_box(black_box(&budget).try_start_retry()))
    });
}

criterion_group!(benches, breaker_benches, outlier_benches, retry_budget_benches);
criterion_main!(benches);
