//! The JSON log line, exactly as `tracing-subscriber`'s JSON format writes
//! it (flattened event, the current span, no span list), with the request
//! being answered written as that span would be from its
//! [`adapter_http::RequestLog`].
//!
//! The library's format writes a line's `span` from the current span, and
//! reads that span's fields back from their JSON text for every line. A
//! line logged while a request is answered, with no span of its own, is
//! written by the library's format and given the request's `span` object:
//! its fields as the library orders a span's (by name, then `name`), each
//! value escaped by serde_json as the library's is.

use std::{cell::RefCell, fmt};

use adapter_http::{
    RequestLog,
    request_log::{self, LogValue},
};
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Format, Json, Writer},
        time::FormatTime,
    },
    registry::LookupSpan,
};

use crate::log_time::LogTime;

/// The JSON line's format; see the module's documentation.
#[derive(Debug, Clone)]
pub(crate) struct JsonLine<T = LogTime> {
    library: Format<Json, T>,
}

impl Default for JsonLine {
    fn default() -> Self {
        Self::with_timer(LogTime)
    }
}

impl<T: FormatTime> JsonLine<T> {
    /// Lines whose `timestamp` is the instant `timer` writes.
    pub(crate) fn with_timer(timer: T) -> Self {
        Self {
            library: library_format(timer),
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

thread_local! {
    /// The request's fields, each written as a JSON string, before they
    /// are put in order.
    static FIELDS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The request as the library writes a span: `{"customer":"acme",...,
/// "name":"request"}`, its fields by name, each value a JSON string
/// escaped by serde_json.
fn write_request(writer: &mut Writer<'_>, request: &RequestLog) -> fmt::Result {
    FIELDS.with(|text| {
        let Ok(mut text) = text.try_borrow_mut() else {
            return Err(fmt::Error);
        };
        text.clear();
        // Seven fields at most: the request's four and the three learned.
        let mut fields = [("", 0, 0); 8];
        let mut count = 0;
        request.fields(|name, value| {
            let (LogValue::Bare(value) | LogValue::Text(value)) = value;
            let start = text.len();
            serde_json::to_writer(&mut *text, value).map_err(|_| fmt::Error)?;
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
            writer.write_str(str::from_utf8(&text[start..end]).map_err(|_| fmt::Error)?)?;
            writer.write_char(',')?;
        }
        writer.write_str("\"name\":\"")?;
        writer.write_str(RequestLog::NAME)?;
        writer.write_str("\"}")
    })
}
