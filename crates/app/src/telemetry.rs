//! Log set-up: `tracing` to standard error, as text or JSON lines; and,
//! when an OTLP endpoint is configured, the spans of requests and backend
//! calls exported over OTLP/HTTP.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::filter_fn, fmt, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use crate::{LogFormat, TracingArgs};

/// What [`init_tracing`] set up that must be stopped on the way out: the
/// span exporter, when there is one.
#[derive(Debug)]
#[must_use = "shut it down after serving, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans not sent yet and stops the exporter. Blocks until
    /// the collector answers or the export times out
    /// (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "the last spans may not have been exported");
        }
    }
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
    let Some(url) = tracing.traces_url() else {
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
        return Ok(Telemetry { provider: None });
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
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
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
    })
}
