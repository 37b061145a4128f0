//! Reading what a `metrics_util::debugging::DebuggingRecorder` captured, as text a test can
//! compare.

use metrics_util::debugging::{DebugValue, Snapshotter};

/// Every metric captured so far as one line `name{label=value,…} value`, labels sorted by
/// name, lines sorted: counters and gauges give their value, histograms their number of
/// samples.
///
/// ```
/// let recorder = metrics_util::debugging::DebuggingRecorder::new();
/// let snapshotter = recorder.snapshotter();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("requests_total", "outcome" => "ok").increment(2);
/// });
/// assert_eq!(palisade_testkit::metric_lines(&snapshotter), ["requests_total{outcome=ok} 2"]);
/// ```
pub fn metric_lines(snapshotter: &Snapshotter) -> Vec<String> {
    let mut lines: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let k = key.key();
            let mut labels: Vec<String> = k
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let v = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            format!("{}{{{}}} {v}", k.name(), labels.join(","))
        })
        .collect();
    lines.sort();
    lines
}

/// Runs the future `run` makes to completion on a current-thread runtime of its own, with a
/// recorder of its own, and returns what it recorded as [`metric_lines`]. Metrics recorded
/// by tests running beside it, or by tasks spawned onto other runtimes, are not captured.
///
/// ```
/// let lines = palisade_testkit::record_metrics(|| async {
///     metrics::counter!("requests_total", "outcome" => "ok").increment(1);
/// });
/// assert_eq!(lines, ["requests_total{outcome=ok} 1"]);
/// ```
pub fn record_metrics<F: std::future::Future<Output = ()>>(run: impl FnOnce() -> F) -> Vec<String> {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(run());
    });
    metric_lines(&snapshotter)
}
