//! Logs and metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use palisade::secret_store::redact::Redactor;
use tracing_subscriber::EnvFilter;

/// Install the process's `tracing` subscriber: `RUST_LOG` (default `info`), one line per
/// event, every line passed through `redactor` so no loaded secret value (and nothing shaped
/// like an API key) reaches the output. A second call does nothing (tests start many apps in
/// one process).
pub fn init_logs(redactor: &Redactor) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or collector gets plain `key=value` text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(redactor.make_writer(std::io::stdout))
        .try_init();
}

/// The process-wide Prometheus recorder, installed on first use. `metrics` has one global
/// recorder per process, so every app built in one process shares it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder in this process")
        })
        .clone()
}
