//! Log set-up: `tracing` to standard error, as text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt};

use crate::LogFormat;

/// Installs the global log subscriber. `RUST_LOG` filters (default `info`).
/// Tokens never reach a log line: the HTTP layer logs only the route,
/// status, latency and ids, never headers.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (in tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
