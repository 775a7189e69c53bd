//! The JSON log line, exactly as `tracing-subscriber`'s JSON format writes
//! it (flattened event, the current span, no span list), with the request
//! being answered written as that span would be from its
//! [`adapter_http::RequestLog`].
//!
//! A line with no span of its own (the access log's, and every line logged
//! while a request is answered) is written here, byte for byte as the
//! library's format would write it: the instant, the level, the event's
//! fields in the order they were recorded, the target, then the request's
//! `span` object, its fields as the library orders a span's (by name, then
//! `name`). Strings are escaped as serde_json escapes them, but a stretch
//! of text at a time: the library serializes each part through serde into
//! an adaptor that checks every piece is UTF-8 again, which made a JSON
//! line three times as costly as a text line. A line in a span of its own
//! (exported spans, coloured text's) is the library's, and so is a `log`
//! record's, given the request's `span` object.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
};

use adapter_http::{
    RequestLog,
    request_log::{self, LogValue},
};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Format, Json, Writer},
        time::FormatTime,
    },
    registry::LookupSpan,
};

use crate::{
    log_fields::{every_byte, through_scratch, write_millionths},
    log_time::LogTime,
};

/// The JSON line's format; see the module's documentation.
#[derive(Debug, Clone)]
pub(crate) struct JsonLine<T = LogTime> {
    timer: T,
    /// The format this one writes as, for the lines it leaves to it.
    library: Format<Json, T>,
}

impl Default for JsonLine {
    fn default() -> Self {
        Self::with_timer(LogTime)
    }
}

impl<T: FormatTime + Clone> JsonLine<T> {
    /// Lines whose `timestamp` is the instant `timer` writes.
    pub(crate) fn with_timer(timer: T) -> Self {
        Self {
            library: library_format(timer.clone()),
            timer,
        }
    }
}

/// The library's JSON format as Maestro writes its lines: the event's
/// fields at the top level, the current span, no list of spans.
pub(crate) fn library_format<T>(timer: T) -> Format<Json, T> {
    format::format()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_timer(timer)
}

thread_local! {
    /// Where the library's line is written before the request is added.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The most a thread's line keeps between lines.
const LINE_KEPT: usize = 4096;

impl<S, N, T> FormatEvent<S, N> for JsonLine<T>
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
        // A span of the line's own is written by the library, as always.
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if span.is_some() {
            return self.library.format_event(ctx, writer, event);
        }
        if !event.is_log() {
            return self.write_line(&mut writer, event);
        }
        let written = request_log::current(|request| {
            LINE.with(|line| {
                // Taken when a field's own formatting logs: no request.
                let Ok(mut line) = line.try_borrow_mut() else {
                    return None;
                };
                line.clear();
                let written = self
                    .library
                    .format_event(ctx, Writer::new(&mut *line), event)
                    .and_then(|()| {
                        // The library's line ends with its last entry's value,
                        // `}` and a newline: the request goes before them.
                        let end = line.strip_suffix("}\n").ok_or(fmt::Error)?;
                        writer.write_str(end)?;
                        writer.write_str(",\"span\":")?;
                        write_request(&mut writer, request)?;
                        writer.write_str("}\n")
                    });
                if line.capacity() > LINE_KEPT {
                    *line = String::new();
                }
                Some(written)
            })
        })
        .flatten();
        match written {
            Some(written) => written,
            None => self.library.format_event(ctx, writer, event),
        }
    }
}

impl<T: FormatTime> JsonLine<T> {
    /// Writes `event`, which has no span of its own, as the library's
    /// format writes it, with the request being answered as its `span`:
    /// into the thread's scratch, then to `writer` in one piece.
    fn write_line(&self, writer: &mut Writer<'_>, event: &Event<'_>) -> fmt::Result {
        through_scratch(
            writer,
            |line| self.line(line, event),
            |writer| self.line(writer, event),
        )
    }

    fn line(&self, out: &mut impl fmt::Write, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        out.write_str("{\"timestamp\":\"")?;
        // The library fails the line when the clock cannot be read: the
        // line's layer then writes nothing of what was written so far.
        self.timer
            .format_time(&mut Writer::new(&mut Escaped(&mut *out)))?;
        out.write_str("\",\"level\":\"")?;
        out.write_str(meta.level().as_str())?;
        out.write_char('"')?;
        let mut fields = JsonFieldsVisitor {
            out: &mut *out,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        out.write_str(",\"target\":")?;
        write_string(out, meta.target())?;
        request_log::current(|request| {
            out.write_str(",\"span\":")?;
            write_request(out, request)
        })
        .transpose()?;
        out.write_str("}\n")
    }
}

/// Writes an event's fields as entries of the line's object, each as the
/// library's visitor (`tracing_serde::SerdeMapVisitor`) serializes it. What
/// it leaves to `Visit`'s defaults (128-bit integers, errors, bytes) goes
/// to `record_debug`, there as here: a string of what `{:?}` writes.
struct JsonFieldsVisitor<'a, W> {
    out: &'a mut W,
    /// The first error stops the line, as it stops the library's.
    result: fmt::Result,
}

impl<W: fmt::Write> JsonFieldsVisitor<'_, W> {
    /// Writes `,"name":` and then what `value` writes.
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            let out = &mut *self.out;
            self.result = out
                .write_str(",\"")
                .and_then(|()| Escaped(&mut *out).write_str(field.name()))
                .and_then(|()| out.write_str("\":"))
                .and_then(|()| value(out));
        }
    }
}

impl<W: fmt::Write> Visit for JsonFieldsVisitor<'_, W> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |out| {
            // A latency in milliseconds by integer arithmetic; anything
            // else (and `null` for what is not finite) by serde_json.
            write_millionths(out, value)
                .unwrap_or_else(|| write!(out, "{}", serde_json::Value::from(value)))
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| write_string(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// Writes `text` as a JSON string, as serde_json writes it.
fn write_string(writer: &mut impl fmt::Write, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(&mut *writer).write_str(text)?;
    writer.write_char('"')
}

/// A writer of a JSON string's contents: what is written to it is escaped
/// as serde_json escapes a string (a quote, a backslash and the control
/// characters, nothing else) and handed on. Text with none of those, as
/// almost all is, is handed on as it is; other text is escaped by
/// serde_json itself, which escapes a character at a time, so that a piece
/// escaped alone reads as it would within the whole.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if every_byte(text, |byte| byte >= 0x20 && byte != b'"' && byte != b'\\') {
            return self.0.write_str(text);
        }
        let quoted = serde_json::to_string(text).map_err(|_| fmt::Error)?;
        let escaped = quoted
            .strip_prefix('"')
            .and_then(|quoted| quoted.strip_suffix('"'))
            .ok_or(fmt::Error)?;
        self.0.write_str(escaped)
    }
}

thread_local! {
    /// The request's fields, each written as a JSON string, before they
    /// are put in order.
    static FIELDS: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The request as the library writes a span: `{"customer":"acme",...,
/// "name":"request"}`, its fields by name, each value a JSON string
/// escaped as serde_json escapes it.
fn write_request(writer: &mut impl fmt::Write, request: &RequestLog) -> fmt::Result {
    FIELDS.with(|text| {
        let Ok(mut text) = text.try_borrow_mut() else {
            return Err(fmt::Error);
        };
        text.clear();
        // Seven fields at most: the request's four and the three learned.
        let mut fields = [("", 0, 0); 8];
        let mut count = 0;
        request.fields(|name, value| {
            let start = text.len();
            match value {
                // A method or a hexadecimal id: nothing to escape.
                LogValue::Bare(value) => {
                    text.push('"');
                    text.push_str(value);
                    text.push('"');
                }
                LogValue::Text(value) => write_string(&mut *text, value)?,
            }
            *fields.get_mut(count).ok_or(fmt::Error)? = (name, start, text.len());
            count += 1;
            Ok::<_, fmt::Error>(())
        })?;
        let fields = &mut fields[..count];
        fields.sort_unstable_by_key(|(name, _, _)| *name);
        writer.write_char('{')?;
        for &(name, start, end) in fields.iter() {
            writer.write_char('"')?;
            writer.write_str(name)?;
            writer.write_str("\":")?;
            writer.write_str(&text[start..end])?;
            writer.write_char(',')?;
        }
        writer.write_str("\"name\":\"")?;
        writer.write_str(RequestLog::NAME)?;
        writer.write_str("\"}")
    })
}

#[cfg(test)]
mod tests {
    use std::{io, time::Duration};

    use log::Log as _;
    use proptest::prelude::*;
    use tracing::Level;
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;
    use crate::log_test::{Broken, Fixed, captured};

    /// An instant that needs escaping, as no clock writes one.
    #[derive(Debug, Clone, Copy)]
    struct Odd;

    impl FormatTime for Odd {
        fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
            writer.write_str("\"then\"\n\\")
        }
    }

    /// What `logs` writes through `format`.
    fn through<E>(format: E, logs: impl FnOnce()) -> String
    where
        E: FormatEvent<tracing_subscriber::Registry, JsonFields> + Send + Sync + 'static,
    {
        let subscriber = |lines| {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(Level::TRACE)
                .fmt_fields(JsonFields::new())
                .event_format(format)
                .with_writer(lines)
                .finish()
        };
        captured(subscriber, logs)
    }

    /// What `logs` writes through this format and through the library's,
    /// each with `timer`.
    fn both<T>(timer: T, logs: impl Fn()) -> (String, String)
    where
        T: FormatTime + Clone + Send + Sync + 'static,
    {
        (
            through(JsonLine::with_timer(timer.clone()), &logs),
            through(library_format(timer), &logs),
        )
    }

    /// Events of every level and every kind of field, with what JSON must
    /// escape in names, values, messages and targets.
    fn log() {
        tracing::trace!("a message alone");
        tracing::debug!(n = 1, negative = -7_i64, yes = true, no = false);
        tracing::info!(status = 200_u16, latency_ms = 0.151_416, "answered");
        tracing::info!(
            whole = 1500.0,
            tiny = 1e-7,
            huge = 1e300,
            nan = f64::NAN,
            infinite = f64::NEG_INFINITY,
            zero = -0.0,
            sum = 0.1 + 0.2,
            nanosecond = 0.000_001,
            long = 1_833_882.686_035_156_2,
        );
        tracing::warn!(
            target: "adapter_airflow::\"client\"",
            text = "a \"quoted\" \\ path\nnew line\ttab \u{1} \u{1f} \u{7f} é ✓",
            shown = %"display \"me\"",
            debugged = ?("debug", '\n'),
            big = u128::MAX,
            small = i128::MIN,
            "the upstream said \"{}\"\r\n",
            "no\u{8}\u{c}"
        );
        let error = io::Error::other("refused \"now\"");
        tracing::error!(
            error = &error as &(dyn std::error::Error + 'static),
            "cannot reach it"
        );
        tracing::info!("odd name \"quoted\"" = 1, r#type = "raw", "names");
        tracing::info!(message = "a message as a field", then = 2);
        tracing::info!(twice = 1, twice = 2);
    }

    #[test]
    fn lines_without_a_span_are_written_as_the_library_writes_them() {
        let (ours, library) = both(Fixed, log);
        assert_eq!(ours, library);
        assert_eq!(ours.lines().count(), 9, "{ours}");
        let answered = ours.lines().nth(2).unwrap();
        assert_eq!(
            answered,
            "{\"timestamp\":\"2026-12-02T01:11:34.783912Z\",\"level\":\"INFO\",\
             \"message\":\"answered\",\"status\":200,\"latency_ms\":0.151416,\
             \"target\":\"app::log_json::tests\"}"
        );
    }

    #[test]
    fn an_instant_is_escaped_and_a_clock_that_fails_fails_the_line_as_the_library_does() {
        let (ours, library) = both(Odd, || tracing::info!("answered"));
        assert_eq!(ours, library);
        assert!(
            ours.starts_with(r#"{"timestamp":"\"then\"\n\\","#),
            "{ours}"
        );
        let (ours, library) = both(Broken, || tracing::info!("answered"));
        assert_eq!(ours, library);
        assert!(ours.starts_with("Unable to format"), "{ours}");
    }

    #[test]
    fn a_log_record_is_written_as_the_library_writes_it() {
        let (ours, library) = both(Fixed, || {
            tracing_log::LogTracer::new().log(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .target("hyper::proto")
                    .args(format_args!("connection \"reset\""))
                    .build(),
            );
        });
        assert_eq!(ours, library);
        assert!(
            ours.contains(r#""message":"connection \"reset\"""#),
            "{ours}"
        );
    }

    #[test]
    fn a_line_in_a_span_of_its_own_is_the_librarys() {
        let logs = || {
            let span = tracing::info_span!("backend", call = "trigger");
            span.in_scope(|| tracing::info!(attempt = 2, "retrying"));
        };
        let (ours, library) = both(Fixed, logs);
        assert_eq!(ours, library);
        assert!(
            ours.contains(r#""span":{"call":"trigger","name":"backend"}"#),
            "{ours}"
        );
    }

    /// Every control character, and what else serde_json escapes.
    #[test]
    fn every_character_below_128_is_escaped_as_serde_json_escapes_it() {
        for byte in 0..128_u8 {
            let text = format!("a{}b", char::from(byte));
            let mut ours = String::new();
            write_string(&mut ours, &text).unwrap();
            assert_eq!(ours, serde_json::to_string(&text).unwrap(), "{byte:#x}");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_escaped_as_serde_json_escapes_it(text in "\\PC*|[\\x00-\\x7f]*") {
            let mut ours = String::new();
            write_string(&mut ours, &text).unwrap();
            prop_assert_eq!(ours, serde_json::to_string(&text).unwrap());
        }

        #[test]
        fn any_field_is_written_as_the_library_writes_it(
            text in "\\PC*|[\\x00-\\x7f]*",
            message in "\\PC*|[\\x00-\\x7f]*",
            float in any::<f64>(),
            nanoseconds in 0_u64..20_000_000_000_000,
        ) {
            let latency_ms = Duration::from_nanos(nanoseconds).as_nanos() as f64 / 1e6;
            let (ours, library) = both(Fixed, || {
                tracing::info!(text, float, latency_ms, "{message}");
            });
            prop_assert_eq!(ours, library);
        }
    }
}
