//! The fields of text log lines, written exactly as `tracing-subscriber`'s
//! default field formatter writes them (`name=value`, a string quoted and
//! escaped as `{:?}` would, numbers as they are), but without passing
//! through `core::fmt` and the colour styles for the common values.
//!
//! Every request's span is made with seven fields and is given three more
//! as the handlers learn them, and its access-log line has two of its own:
//! with the default formatter, writing them was about a tenth of a request's
//! CPU time. The message is escaped as the default escapes it, a stretch
//! of text at a time; floats are written by ryu where it and `{:?}` agree
//! (see `shortest_decimal`). What is rare or subtle (errors, with their
//! sources; raw identifiers; a message that is not text; every field when
//! colours are on) is still written by the default formatter.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
};

use adapter_http::{RequestLog, request_log::LogValue};
use tracing::{
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    field::{RecordFields, VisitOutput},
    fmt::{
        FormatFields, FormattedFields,
        format::{DefaultVisitor, Writer},
    },
};

/// The field formatter of text lines; see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TextFields;

thread_local! {
    /// Where a set of fields, or the request's part of a line, is written
    /// before it is handed on in one piece: a span's fields are kept in a
    /// string that would otherwise grow five times as they are written.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The most a thread's scratch keeps between uses.
const SCRATCH_KEPT: usize = 4096;

/// The room a span's text is given when a field is recorded into it and
/// less than [`FIELD_ROOM`] is left: enough for the rest of a request's,
/// whose customer, pipeline and run are recorded one at a time.
const RECORDED_ROOM: usize = 160;

/// The room one recorded field takes, most often.
const FIELD_ROOM: usize = 64;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // The scratch's writer neither colours nor leaves terminal
        // sequences as they are: for those, write in place.
        if writer.has_ansi_escapes() || !writer.sanitizes_ansi_escapes() {
            return TextVisitor::new(writer).visit(&fields);
        }
        through_scratch(
            &mut writer,
            |text| TextVisitor::new(Writer::new(text)).visit(&fields),
            |writer| TextVisitor::new(writer.by_ref()).visit(&fields),
        )
    }

    /// As the default: a space after the fields already there, then the
    /// new ones, written in place into room made once rather than each
    /// time a field is recorded.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> fmt::Result {
        let text = &mut current.fields;
        if text.capacity() - text.len() < FIELD_ROOM {
            text.reserve(RECORDED_ROOM);
        }
        if !text.is_empty() {
            text.push(' ');
        }
        TextVisitor::new(current.as_writer()).visit(fields)
    }
}

/// Writes one set of fields, as [`DefaultVisitor`] would.
pub(crate) struct TextVisitor<'a> {
    writer: Writer<'a>,
    /// No field is written yet: the next one needs no space before it.
    is_empty: bool,
    result: fmt::Result,
}

impl<'a> TextVisitor<'a> {
    fn new(writer: Writer<'a>) -> Self {
        Self {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

impl TextVisitor<'_> {
    /// Starts writing `field` as `name=` when this visitor writes it itself,
    /// and says so; returns `false` for a field that is skipped (the
    /// metadata of a `log` record, which the line already shows) or that
    /// the default formatter writes.
    fn start(&mut self, field: &Field) -> Option<bool> {
        if self.result.is_err() {
            return None;
        }
        let name = field.name();
        // The default formatter skips these (`tracing-log` is on).
        if name.starts_with("log.") {
            return None;
        }
        // A message that is not text is rare: the default writes it.
        if self.writer.has_ansi_escapes() || name == "message" || name.starts_with("r#") {
            return Some(false);
        }
        self.result = self.pad().and_then(|()| {
            self.writer.write_str(name)?;
            self.writer.write_char('=')
        });
        Some(true)
    }

    fn pad(&mut self) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    /// Has the default formatter write a field this visitor leaves to it.
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut default);
        self.result = default.finish();
        self.is_empty = false;
    }

    /// Writes what `start` began: `write` for a field of this visitor's,
    /// `record` through the default formatter otherwise.
    fn field(
        &mut self,
        field: &Field,
        write: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
        record: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        match self.start(field) {
            Some(true) if self.result.is_ok() => self.result = write(&mut self.writer),
            Some(false) => self.by_default(record),
            Some(true) | None => {}
        }
    }
}

/// `value` as `{:?}` writes it, by ryu, where the two are known to agree:
/// a decimal (not `1e-7`) of a few figures before the point (latencies in
/// milliseconds), of at most 15 significant figures. Those are the only
/// shortest digits that round back to `value`; with 16 or 17 there may be
/// two, and the two round the last one apart (`1833882.6860351562`
/// against `...563`). `None` otherwise.
fn shortest_decimal(buffer: &mut ryu::Buffer, value: f64) -> Option<&str> {
    if value != 0.0 && !(1e-3..1e7).contains(&value.abs()) {
        return None;
    }
    let text = buffer.format_finite(value);
    let figures = text
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|digit| *digit == b'0')
        .count();
    (figures <= 15).then_some(text)
}

/// Writes `value` as `{:?}` writes it, and as serde_json does, when it is
/// a whole number of millionths from 0.001 to 10^7 (a latency in
/// milliseconds, to the nanosecond): as that decimal, which rounds back to
/// `value` and has at most 13 figures, so that no other decimal of 15
/// figures or fewer does, and it is the shortest. Integer arithmetic, where
/// ryu's search for the shortest digits was most of the line's float.
/// `None` otherwise.
pub(crate) fn write_millionths(writer: &mut impl fmt::Write, value: f64) -> Option<fmt::Result> {
    if !(1e-3..1e7).contains(&value) {
        return None;
    }
    let millionths = (value * 1e6).round();
    if millionths / 1e6 != value {
        return None;
    }
    // Below 10^13, so exact as an integer.
    let millionths = millionths as u64;
    let mut fraction = [b'0'; 6];
    let mut rest = millionths % 1_000_000;
    for digit in fraction.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // `{:?}` keeps one figure after the point: `1500.0`.
    let figures = fraction
        .iter()
        .rposition(|digit| *digit != b'0')
        .map_or(1, |last| last + 1);
    let fraction = str::from_utf8(&fraction[..figures]).unwrap_or("0");
    Some((|| {
        writer.write_str(itoa::Buffer::new().format(millionths / 1_000_000))?;
        writer.write_char('.')?;
        writer.write_str(fraction)
    })())
}

/// Writes the request being answered as the default formatter writes its
/// span, `request{method=POST route="/platform/..." ...}:`, with these
/// fields' formats.
pub(crate) fn write_request(writer: &mut Writer<'_>, request: &RequestLog) -> fmt::Result {
    through_scratch(
        writer,
        |text| request_text(text, request),
        |writer| request_text(writer, request),
    )
}

/// Writes what `write` writes into the thread's scratch, then hands it to
/// `writer` in one piece; has `in_place` write straight to `writer` when
/// the scratch is taken (a field's own formatting logs).
pub(crate) fn through_scratch(
    writer: &mut Writer<'_>,
    write: impl FnOnce(&mut String) -> fmt::Result,
    in_place: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
) -> fmt::Result {
    SCRATCH.with(|scratch| {
        let Ok(mut text) = scratch.try_borrow_mut() else {
            return in_place(writer);
        };
        text.clear();
        let written = write(&mut text).and_then(|()| writer.write_str(&text));
        if text.capacity() > SCRATCH_KEPT {
            *text = String::new();
        }
        written
    })
}

fn request_text(writer: &mut impl fmt::Write, request: &RequestLog) -> fmt::Result {
    writer.write_str(RequestLog::NAME)?;
    writer.write_char('{')?;
    let mut first = true;
    request.fields(|name, value| {
        if !std::mem::take(&mut first) {
            writer.write_char(' ')?;
        }
        writer.write_str(name)?;
        writer.write_char('=')?;
        match value {
            LogValue::Bare(value) => writer.write_str(value),
            LogValue::Text(value) => write_quoted(writer, value),
        }
    })?;
    writer.write_str("}:")
}

/// Writes `value` as `{:?}` writes a string: as it is, in quotes, when it
/// is printable ASCII without a quote or a backslash (ids, routes, names);
/// escaped by `core::fmt` otherwise.
fn write_quoted(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if is_plain(value) {
        writer.write_char('"')?;
        writer.write_str(value)?;
        writer.write_char('"')
    } else {
        write!(writer, "{value:?}")
    }
}

/// Whether `{:?}` writes `value` as it is: printable ASCII without a quote
/// or a backslash.
fn is_plain(value: &str) -> bool {
    every_byte(value, |byte| {
        matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\'
    })
}

/// Whether every byte of `text` is `kept`. (Looked at sixteen bytes at a
/// time, without stopping early inside them, which the compiler turns into
/// vector instructions; the last sixteen, which may overlap the ones
/// before, close it.)
pub(crate) fn every_byte(text: &str, kept: impl Fn(u8) -> bool) -> bool {
    let all = |bytes: &[u8]| bytes.iter().fold(true, |all, &byte| all & kept(byte));
    let bytes = text.as_bytes();
    match bytes.len().checked_sub(16) {
        None => all(bytes),
        Some(last) => bytes.chunks_exact(16).all(all) && all(&bytes[last..]),
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message(&format_args!("{value}"));
            return;
        }
        self.field(
            field,
            |writer| write_quoted(writer, value),
            |default| default.record_str(field, value),
        );
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(
            field,
            |writer| writer.write_str(itoa::Buffer::new().format(value)),
            |default| default.record_u64(field, value),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(
            field,
            |writer| writer.write_str(itoa::Buffer::new().format(value)),
            |default| default.record_i64(field, value),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(
            field,
            |writer| writer.write_str(if value { "true" } else { "false" }),
            |default| default.record_bool(field, value),
        );
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Errors keep the default's escaping and list of sources.
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.by_default(|default| default.record_error(field, value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(
            field,
            |writer| {
                if let Some(written) = write_millionths(writer, value) {
                    return written;
                }
                match shortest_decimal(&mut ryu::Buffer::new(), value) {
                    Some(text) => writer.write_str(text),
                    None => write!(writer, "{value:?}"),
                }
            },
            |default| default.record_f64(field, value),
        );
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message(value);
            return;
        }
        self.field(
            field,
            |writer| write!(writer, "{value:?}"),
            |default| default.record_debug(field, value),
        );
    }
}

impl TextVisitor<'_> {
    /// Writes the message as the default formatter does, unquoted, with
    /// the terminal's control characters escaped when the writer says to,
    /// but a stretch of text at a time rather than a character at a time.
    fn message(&mut self, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = self.pad();
        if self.result.is_ok() {
            self.result = if self.writer.sanitizes_ansi_escapes() {
                write!(Sanitized(&mut self.writer), "{value:?}")
            } else {
                write!(self.writer, "{value:?}")
            };
        }
    }
}

/// A writer that escapes what could steer a terminal, as the default
/// formatter escapes a message: ESC, BEL, BS, FF and DEL as `\x1b` and the
/// like, the C1 controls as `\u{9b}` and the like.
struct Sanitized<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Sanitized<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let steers = |c: char| {
            matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            )
        };
        let mut rest = text;
        while let Some(at) = rest.find(steers) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;
    use crate::log_test::captured;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach it: \"{0}\"")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("refused\tat once")]
    struct Inner;

    /// A request's span as the HTTP layer makes and fills it, and events of
    /// every kind of field in it, with `text` as the strings' values.
    fn log(text: &str, number: i64) {
        let span = tracing::info_span!(
            "request",
            method = %"POST",
            route = text,
            request_id = "d8759046-1884-4715-ae52-02b1b8d44ec4",
            trace_id = tracing::field::display(number),
            customer = tracing::field::Empty,
            run_id = tracing::field::Empty,
            r#type = text,
        );
        span.record("customer", text);
        span.record("run_id", number);
        let _entered = span.enter();
        tracing::info!(
            status = 200_u16,
            latency_ms = 0.037_126_000_000_000_006,
            "answered"
        );
        tracing::warn!(
            text,
            number,
            unsigned = number.unsigned_abs(),
            flag = number > 0,
            debug = ?(text, number),
            error = &Outer(Inner) as &(dyn std::error::Error + 'static),
            "the {text} as a message"
        );
        tracing::error!(message = text, r#loop = text);
    }

    /// What `logs` writes through `fields`, without the instants, with
    /// colours when `ansi` says, and terminal sequences in messages escaped.
    fn through<N>(fields: N, ansi: bool, logs: impl FnOnce()) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        through_sanitizing(fields, ansi, true, logs)
    }

    /// As [`through`], escaping terminal sequences in messages only when
    /// `sanitize` says.
    fn through_sanitizing<N>(fields: N, ansi: bool, sanitize: bool, logs: impl FnOnce()) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        let subscriber = |lines| {
            tracing_subscriber::fmt()
                .fmt_fields(fields)
                .without_time()
                .with_ansi(ansi)
                .with_ansi_sanitization(sanitize)
                .with_writer(lines)
                .finish()
        };
        captured(subscriber, logs)
    }

    /// What `log` writes through `fields`, without the instants.
    fn written<N>(fields: N, ansi: bool, text: &str, number: i64) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        through(fields, ansi, || log(text, number))
    }

    #[test]
    fn lines_are_written_as_the_default_formatter_writes_them() {
        for (text, number) in [
            ("/platform/pipeline/execute", 42),
            ("with \"quotes\" and a \\ backslash", -7),
            ("", 0),
            (
                "tab\tnew line\n escape\u{1b}[31m red\u{7f} é ✓ \u{9b}",
                i64::MIN,
            ),
        ] {
            for ansi in [false, true] {
                let fast = written(TextFields, ansi, text, number);
                assert_eq!(fast, written(DefaultFields::new(), ansi, text, number));
                // Three lines, whatever new lines the messages hold.
                assert_eq!(fast.matches("app::log_fields::tests").count(), 3, "{fast}");
            }
        }
    }

    #[test]
    fn messages_are_left_unescaped_as_by_default_when_the_writer_does_not_sanitize() {
        let text = "red \u{1b}[31m bell \u{7} \u{9b}";
        for sanitize in [true, false] {
            let fast = through_sanitizing(TextFields, false, sanitize, || log(text, 1));
            let default =
                through_sanitizing(DefaultFields::new(), false, sanitize, || log(text, 1));
            assert_eq!(fast, default);
            assert_eq!(fast.contains("\u{1b}[31m"), !sanitize, "{fast}");
        }
    }

    #[test]
    fn a_plain_value_is_quoted_as_it_is() {
        let line = written(TextFields, false, "/platform/pipelines", 1);
        assert!(
            line.starts_with(
                " INFO request{method=POST route=\"/platform/pipelines\" \
                 request_id=\"d8759046-1884-4715-ae52-02b1b8d44ec4\" trace_id=1 \
                 type=\"/platform/pipelines\" customer=\"/platform/pipelines\" run_id=1}: "
            ),
            "{line}"
        );
    }

    /// A value that logs while it is written.
    struct Chatty;

    impl fmt::Debug for Chatty {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            tracing::info!(inner = "from inside", "written while writing");
            f.write_str("chatty")
        }
    }

    #[test]
    fn a_value_that_logs_while_it_is_written_is_written_as_by_default() {
        let log = || tracing::info!(value = ?Chatty, other = "after", "outer");
        let builder = |lines| {
            tracing_subscriber::fmt()
                .without_time()
                .with_ansi(false)
                .with_writer(lines)
        };
        let fast = captured(|lines| builder(lines).fmt_fields(TextFields).finish(), log);
        assert_eq!(fast, captured(|lines| builder(lines).finish(), log));
        assert!(fast.contains("value=chatty other=\"after\""), "{fast}");
    }

    /// What a line with the float `value` reads, through `fields`.
    fn float<N>(fields: N, value: f64) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        through(fields, false, || tracing::info!(latency_ms = value, "m"))
    }

    #[test]
    fn floats_at_the_edges_of_decimal_writing_are_written_as_by_default() {
        for value in [
            0.0,
            -0.0,
            1e-3,
            0.000_999_999_999,
            1e7,
            9_999_999.999_999_999,
            // Ryu and `{:?}` round the last of 16 or 17 figures apart.
            1_833_882.686_035_156_3,
            628_619_340_682_481.3,
            0.275_251,
            1e15,
            999_999_999_999_999.9,
            1e-4,
            1e16,
            0.1,
            1.0,
            -2.5,
            0.037_126_000_000_000_006,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
        ] {
            assert_eq!(float(TextFields, value), float(DefaultFields::new(), value));
        }
        assert!(float(TextFields, 0.25).ends_with("m latency_ms=0.25\n"));
    }

    #[test]
    fn one_byte_not_kept_is_found_at_any_place_of_any_length() {
        let kept = |byte: u8| byte != b'"';
        for length in 0..50 {
            let plain = "a".repeat(length);
            assert!(every_byte(&plain, kept), "{length}");
            for at in 0..length {
                let mut odd = plain.clone().into_bytes();
                odd[at] = b'"';
                let odd = String::from_utf8(odd).unwrap();
                assert!(!every_byte(&odd, kept), "{odd}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_096))]
        #[test]
        fn any_float_is_written_as_the_default_formatter_writes_it(
            value in prop_oneof![any::<f64>(), 1e-4..1e16_f64, 1e-3..1e7_f64, 0.0..10_000.0_f64],
        ) {
            prop_assert_eq!(float(TextFields, value), float(DefaultFields::new(), value));
        }

        #[test]
        fn a_value_is_plain_when_each_byte_is_and_then_debug_only_quotes_it(
            text in "[ -~\"\\\\\\x00-\\x1f\\x7f\u{80}-\u{10ffff}]{0,70}|[a-z0-9_/{}.-]{0,70}",
        ) {
            let bytewise = text
                .bytes()
                .all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\');
            prop_assert_eq!(is_plain(&text), bytewise);
            if bytewise {
                prop_assert_eq!(format!("{text:?}"), format!("\"{text}\""));
            }
        }

        #[test]
        fn a_latency_to_the_nanosecond_is_written_as_the_default_formatter_writes_it(
            nanos in prop_oneof![0..10_000_000_u64, 0..100_000_000_000_u64, 0..20_000_000_000_000_u64],
        ) {
            let value = nanos as f64 / 1e6;
            prop_assert_eq!(float(TextFields, value), float(DefaultFields::new(), value));
        }

        #[test]
        fn any_value_is_written_as_the_default_formatter_writes_it(
            text in any::<String>(),
            number in any::<i64>(),
        ) {
            prop_assert_eq!(
                written(TextFields, false, &text, number),
                written(DefaultFields::new(), false, &text, number)
            );
        }
    }
}
