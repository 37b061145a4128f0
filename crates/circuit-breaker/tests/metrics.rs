//! The documented metric names are the ones emitted.

use metrics_util::debugging::DebuggingRecorder;
use palisade_circuit_breaker::{CircuitBreaker, Outcome};

#[test]
fn counters_and_gauge_have_the_documented_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let b = CircuitBreaker::builder("metered")
            .consecutive_failures(2)
            .build()
            .unwrap();
        b.try_acquire().unwrap().record(Outcome::Success);
        b.try_acquire().unwrap().record(Outcome::Ignored);
        b.try_acquire().unwrap().record(Outcome::Failure);
        b.try_acquire().unwrap().record(Outcome::Failure);
        assert!(b.try_acquire().is_err());
    });
    // The breaker records no histograms, so every line is a counter or the state gauge.
    let seen = palisade_testkit::metric_lines(&snapshotter);
    let expected = [
        "palisade_circuit_breaker_calls_total{name=metered,outcome=failure} 2",
        "palisade_circuit_breaker_calls_total{name=metered,outcome=ignored} 1",
        "palisade_circuit_breaker_calls_total{name=metered,outcome=success} 1",
        "palisade_circuit_breaker_calls_total{name=metered,outcome=timeout} 0",
        "palisade_circuit_breaker_rejected_total{name=metered} 1",
        "palisade_circuit_breaker_slow_calls_total{name=metered} 0",
        "palisade_circuit_breaker_state{name=metered} 1",
        "palisade_circuit_breaker_transitions_total{from=closed,name=metered,to=open} 1",
    ];
    assert_eq!(seen, expected);
}
