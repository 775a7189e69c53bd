//! The text log line, written exactly as `tracing-subscriber`'s default
//! (`Full`) format writes it without colours: the instant, the level, the
//! spans from the root with their fields, the target, then the event's
//! fields.
//!
//! The default writes each of those parts through `core::fmt`, styled with
//! an empty colour style when colours are off: on the access log's line
//! that was some 2,300 of the 16,000 instructions a request spent on its
//! log. This format writes the same bytes straight into the line. Lines
//! with colours on (a person at a terminal) are left to the default format.
//!
//! A line logged while a request is answered names the request first, from
//! its [`adapter_http::RequestLog`], as the default names a span.

use std::fmt;

use adapter_http::request_log;
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{self, Format, Full, Writer},
        time::FormatTime,
    },
    registry::LookupSpan,
};

use crate::{log_fields::write_request, log_time::LogTime};

/// The text line's format; see the module's documentation.
#[derive(Debug, Clone)]
pub(crate) struct TextLine<T = LogTime> {
    timer: T,
    /// The format this one writes as, for the lines it leaves to it.
    default: Format<Full, T>,
}

impl Default for TextLine {
    fn default() -> Self {
        Self::with_timer(LogTime)
    }
}

impl<T: FormatTime + Clone> TextLine<T> {
    /// Lines that start with the instant `timer` writes.
    pub(crate) fn with_timer(timer: T) -> Self {
        Self {
            default: format::format().with_timer(timer.clone()),
            timer,
        }
    }
}

/// The level as the default writes it with colours off: padded to five.
fn level_text(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

impl<S, N, T> FormatEvent<S, N> for TextLine<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record names its own target and level in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if writer.has_ansi_escapes() {
            return self.default.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_char(' ')?;
        writer.write_str(level_text(*meta.level()))?;
        writer.write_char(' ')?;
        // The request being answered, where a span of it would be: first.
        let mut seen = request_log::current(|request| write_request(&mut writer, request))
            .transpose()?
            .is_some();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
        }
        if seen {
            writer.write_char(' ')?;
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use log::Log as _;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;
    use crate::{
        log_fields::TextFields,
        log_test::{Broken, Fixed, captured},
    };

    /// What `logs` writes through `event` and `fields`, with colours when
    /// `ansi` says.
    fn through<E, N>(event: E, fields: N, ansi: bool, logs: impl FnOnce()) -> String
    where
        E: FormatEvent<tracing_subscriber::Registry, N> + Send + Sync + 'static,
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let subscriber = |lines| {
            tracing_subscriber::fmt()
                .with_ansi(ansi)
                .with_max_level(Level::TRACE)
                .fmt_fields(fields)
                .event_format(event)
                .with_writer(lines)
                .finish()
        };
        captured(subscriber, logs)
    }

    /// Lines of every level, outside spans, in spans with and without
    /// fields, nested, and with fields recorded later.
    fn log() {
        tracing::trace!(n = 1, "outside any span");
        tracing::debug!("a message alone");
        let request = tracing::info_span!(
            "request",
            method = %"POST",
            route = "/platform/pipeline/execute",
            customer = tracing::field::Empty,
        );
        request.in_scope(|| tracing::info!(status = 200_u16, "answered"));
        request.record("customer", "acme");
        let _request = request.enter();
        tracing::warn!(target: "adapter_airflow::client", retry = 2, "the upstream is slow");
        let bare = tracing::info_span!("backend");
        let _bare = bare.enter();
        tracing::error!(error = "refused", "cannot reach it");
        let inner = tracing::debug_span!("inner", depth = 3);
        inner.in_scope(|| tracing::info!(latency_ms = 0.25, "answered"));
    }

    #[test]
    fn lines_are_written_as_the_default_format_writes_them() {
        for ansi in [false, true] {
            let ours = through(TextLine::with_timer(Fixed), TextFields, ansi, log);
            let default = through(format::format().with_timer(Fixed), TextFields, ansi, log);
            assert_eq!(ours, default);
            assert_eq!(ours.lines().count(), 6, "{ours}");
        }
        // With the default fields too: spans are kept as they were written.
        let ours = through(
            TextLine::with_timer(Fixed),
            DefaultFields::new(),
            false,
            log,
        );
        let default = through(
            format::format().with_timer(Fixed),
            DefaultFields::new(),
            false,
            log,
        );
        assert_eq!(ours, default);
    }

    #[test]
    fn a_line_in_the_request_span_reads_as_before() {
        let ours = through(TextLine::with_timer(Fixed), TextFields, false, log);
        let line = ours.lines().nth(3).unwrap();
        assert_eq!(
            line,
            "2026-12-02T01:11:34.783912Z  WARN request{method=POST \
             route=\"/platform/pipeline/execute\" customer=\"acme\"}: \
             adapter_airflow::client: the upstream is slow retry=2"
        );
    }

    #[test]
    fn a_clock_that_cannot_be_read_is_written_as_the_default_writes_it() {
        let event = || tracing::info!("answered");
        let ours = through(TextLine::with_timer(Broken), TextFields, false, event);
        let default = through(
            format::format().with_timer(Broken),
            TextFields,
            false,
            event,
        );
        assert_eq!(ours, default);
        assert!(ours.starts_with("<unknown time>  INFO "), "{ours}");
    }

    #[test]
    fn a_log_record_is_written_as_the_default_format_writes_it() {
        let record = || {
            tracing_log::LogTracer::new().log(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .target("hyper::proto")
                    .args(format_args!("connection reset"))
                    .build(),
            );
        };
        let ours = through(TextLine::with_timer(Fixed), TextFields, false, record);
        let default = through(
            format::format().with_timer(Fixed),
            TextFields,
            false,
            record,
        );
        assert_eq!(ours, default);
        assert!(
            ours.contains(" WARN hyper::proto: connection reset"),
            "{ours}"
        );
    }
}
