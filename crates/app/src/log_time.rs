//! The instant at the head of each log line, as `tracing-subscriber`'s
//! default timer writes it (`2026-12-02T01:11:34.783912Z`: UTC, to the
//! microsecond), written on the stack by the domain's
//! [`timestamp_text`](domain::timestamp_text) rather than figure by figure
//! through `core::fmt` on every line.

use std::{fmt, time::SystemTime};

use chrono::{DateTime, Utc};
use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

/// The log's timer; see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogTime;

impl FormatTime for LogTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        write_instant(writer, SystemTime::now())
    }
}

/// Writes `instant` as the default timer would: the domain's text of it to
/// the microsecond, with `Z` for its `+00:00`.
fn write_instant(writer: &mut impl fmt::Write, instant: SystemTime) -> fmt::Result {
    let instant = DateTime::<Utc>::from(instant);
    match domain::timestamp_text(&instant) {
        Some(text) => {
            let text = text.as_str();
            writer.write_str(text.strip_suffix("+00:00").unwrap_or(text))?;
            writer.write_char('Z')
        }
        // A year past 9999 or a leap second: written the long way.
        None => write!(writer, "{}", instant.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;

    fn written(instant: SystemTime) -> String {
        let mut text = String::new();
        write_instant(&mut text, instant).unwrap();
        text
    }

    /// What the default timer writes for `instant`: chrono's text of it,
    /// to the microsecond.
    fn expected(instant: SystemTime) -> String {
        chrono::DateTime::<chrono::Utc>::from(instant)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    #[test]
    fn an_instant_is_written_to_the_microsecond_in_utc() {
        let instant = UNIX_EPOCH + Duration::new(1_796_173_894, 783_912_345);
        assert_eq!(written(instant), "2026-12-02T01:11:34.783912Z");
        // The same second again, from this thread's last one.
        let later = instant + Duration::from_micros(7);
        assert_eq!(written(later), "2026-12-02T01:11:34.783919Z");
        let next = UNIX_EPOCH + Duration::new(1_796_173_895, 0);
        assert_eq!(written(next), "2026-12-02T01:11:35.000000Z");
    }

    #[test]
    fn the_default_timer_writes_the_same_form() {
        let mut default = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut default))
            .unwrap();
        let mut ours = String::new();
        LogTime.format_time(&mut Writer::new(&mut ours)).unwrap();
        let shape = |text: &str| text.replace(|c: char| c.is_ascii_digit(), "0");
        assert_eq!(shape(&ours), shape(&default), "{ours} against {default}");
    }

    proptest! {
        #[test]
        fn any_instant_is_written_as_chrono_writes_it(
            seconds in 0_u64..253_402_300_800,
            nanos in 0_u32..1_000_000_000,
        ) {
            let instant = UNIX_EPOCH + Duration::new(seconds, nanos);
            prop_assert_eq!(written(instant), expected(instant));
        }
    }
}
