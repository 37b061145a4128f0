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
