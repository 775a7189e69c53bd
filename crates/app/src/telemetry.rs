//! Log set-up: `tracing` to standard error, as text or JSON lines, written
//! off the request path; and, when an OTLP endpoint is configured, the
//! spans of requests and backend calls exported over OTLP/HTTP.
//!
//! A request formats its log line and appends it to a buffer; one thread
//! writes the waiting lines to standard error in batches, a few
//! milliseconds after the first of them (see [`crate::log_writer`]), so
//! that no request waits on a write or wakes a thread. When the writer falls behind by
//! [`LOG_BUFFER_LINES`] lines, the newest lines are dropped rather than
//! stalling requests, and counted (`maestro_log_lines_dropped_total`).

use std::{io::IsTerminal as _, sync::OnceLock};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::filter_fn,
    fmt::{self, format::JsonFields},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use crate::{
    LogFormat, TracingArgs,
    log_fields::TextFields,
    log_json::JsonLine,
    log_line::TextLine,
    log_time::LogTime,
    log_writer::{LogGuard, LogWriter, log_writer},
};

/// How many log lines may wait for the writer before new ones are
/// dropped: some seconds of the busiest traffic.
pub(crate) const LOG_BUFFER_LINES: usize = 128 * 1024;

/// The log lines the writer of [`init_tracing`] dropped so far; 0 before
/// it is installed.
pub(crate) fn log_lines_dropped() -> u64 {
    DROPPED.get().map_or(0, LogWriter::dropped_lines)
}

/// The installed log writer, for its count of dropped lines.
static DROPPED: OnceLock<LogWriter> = OnceLock::new();

/// What [`init_tracing`] set up that must be stopped on the way out: the
/// log writer's thread, and the span exporter, when there is one.
#[derive(Debug)]
#[must_use = "shut it down after serving, or the last lines and spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    writer: LogGuard,
}

impl Telemetry {
    /// Exports the spans not sent yet and stops the exporter, then writes
    /// the log lines still waiting. Blocks until the collector answers or
    /// the export times out (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "the last spans may not have been exported");
        }
        // Dropping the guard writes what waits and ends the thread.
        drop(self.writer);
    }
}

/// The process's log writer, to standard error; its dropped lines count in
/// [`log_lines_dropped`].
fn stderr_writer() -> (LogWriter, LogGuard) {
    let (writer, guard) = log_writer(std::io::stderr(), LOG_BUFFER_LINES);
    let _ = DROPPED.set(writer.clone());
    (writer, guard)
}

/// Installs the global log subscriber. `RUST_LOG` filters the log lines
/// (default `info`). Tokens never reach a log line: the HTTP layer logs
/// only the route, status, latency and ids, never headers.
///
/// With an OTLP endpoint in `tracing`, the spans of requests and of
/// backend calls (and only those: log lines are not exported) also go to
/// it in batches, whatever `RUST_LOG` says; the standard `OTEL_*` variables
/// of the exporter, the batch processor and the sampler apply. Without one,
/// the subscriber is exactly the log writer: no exporter, no extra layer.
///
/// # Errors
/// When the span exporter cannot be built.
pub fn init_tracing(format: LogFormat, tracing: &TracingArgs) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = stderr_writer();
    let Some(url) = tracing.traces_url() else {
        let builder = fmt::fmt()
            .with_env_filter(filter)
            .with_timer(LogTime)
            .with_writer(writer)
            .with_ansi(colours());
        // A second initialisation (in tests) keeps the first subscriber.
        let _ = match format {
            LogFormat::Text => builder
                .fmt_fields(TextFields)
                .event_format(TextLine::default())
                .try_init(),
            LogFormat::Json => builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine::default())
                .try_init(),
        };
        return Ok(Telemetry {
            provider: None,
            writer: guard,
        });
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .context("cannot set up the OTLP span exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(tracing.service_name().to_owned())
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("maestro"))
        .with_location(false)
        .with_threads(false)
        // Maestro's own spans: each request's and each backend call's.
        .with_filter(filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("adapter_http")
        }));
    let logs = fmt::layer()
        .with_timer(LogTime)
        .with_writer(writer)
        .with_ansi(colours());
    let logs = match format {
        LogFormat::Text => logs
            .fmt_fields(TextFields)
            .event_format(TextLine::default())
            .boxed(),
        LogFormat::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine::default())
            .boxed(),
    };
    // `RUST_LOG` filters the lines only, so that spans are exported even
    // when the log keeps to warnings.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init();
    tracing::info!(
        service_name = tracing.service_name(),
        "exporting spans over OTLP/HTTP"
    );
    Ok(Telemetry {
        provider: Some(provider),
        writer: guard,
    })
}

/// Whether the lines of `format` read each request's context from a span
/// of its own ([`adapter_http::AppState::with_request_spans`]): coloured
/// text lines, which the library writes. Plain text lines ([`TextLine`])
/// and JSON lines ([`JsonLine`]) read it from [`adapter_http::request_log`].
pub(crate) fn request_spans(format: LogFormat) -> bool {
    matches!(format, LogFormat::Text) && colours()
}

/// Whether text lines are coloured: only for a person at a terminal, never
/// in a file or a log collector.
fn colours() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use std::{
        io::{self, Write},
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::fmt::MakeWriter as _;

    use super::*;

    /// What the writer's thread wrote, and a gate that holds it back.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// One line, written at once as the log's formatter writes an event.
    fn line(writer: &LogWriter, n: usize) {
        writer
            .make_writer()
            .write_all(format!("line {n}\n").as_bytes())
            .unwrap();
    }

    #[test]
    fn every_line_is_written_in_order_once_the_guard_is_dropped() {
        let sink = Sink::default();
        let (writer, guard) = log_writer(sink.clone(), 1024);
        for n in 0..500 {
            line(&writer, n);
        }
        drop(guard);
        let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        let expected: String = (0..500).map(|n| format!("line {n}\n")).collect();
        assert_eq!(written, expected);
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn lines_beyond_the_limit_are_dropped_and_counted_never_waited_for() {
        let sink = Sink::default();
        // The writer's thread is stuck: the output does not take lines.
        let held = sink.gate.lock().unwrap();
        let (writer, guard) = log_writer(sink.clone(), 8);
        for n in 0..100 {
            line(&writer, n);
        }
        // At most the limit wait, and as many more may be in the thread's
        // hands (a batch taken before the output stuck).
        let dropped = writer.dropped_lines();
        assert!((100 - 16..=100 - 8).contains(&dropped), "dropped {dropped}");
        drop(held);
        drop(guard);
        let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count() as u64 + dropped, 100);
        assert!(written.starts_with("line 0\n"), "the oldest lines are kept");
    }
}
