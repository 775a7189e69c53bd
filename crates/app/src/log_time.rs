//! The instant at the head of each log line, as `tracing-subscriber`'s
//! default timer writes it (`2026-12-02T01:11:34.783912Z`: UTC, to the
//! microsecond), with its date and time of day written once a second by
//! each thread rather than figure by figure on every line.

use std::{
    cell::Cell,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

/// The log's timer; see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogTime;

/// `YYYY-MM-DDTHH:MM:SS`, the part of an instant that changes once a
/// second.
type Second = [u8; 19];

thread_local! {
    /// The last second this thread wrote, and its text.
    static LAST_SECOND: Cell<Option<(u64, Second)>> = const { Cell::new(None) };
}

impl FormatTime for LogTime {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        write_instant(writer, SystemTime::now())
    }
}

/// Writes `instant` as the default timer would.
fn write_instant(writer: &mut impl fmt::Write, instant: SystemTime) -> fmt::Result {
    let Ok(since_epoch) = instant.duration_since(UNIX_EPOCH) else {
        // Before 1970: a broken clock, written the long way.
        return write!(
            writer,
            "{}",
            chrono::DateTime::<chrono::Utc>::from(instant).format("%Y-%m-%dT%H:%M:%S%.6fZ")
        );
    };
    let seconds = since_epoch.as_secs();
    let second = match LAST_SECOND.get() {
        Some((last, text)) if last == seconds => text,
        _ => {
            let text = second_text(seconds)?;
            LAST_SECOND.set(Some((seconds, text)));
            text
        }
    };
    let mut micros = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut left = since_epoch.subsec_micros();
    for digit in micros[1..7].iter_mut().rev() {
        *digit = b'0' + u8::try_from(left % 10).expect("a digit");
        left /= 10;
    }
    writer.write_str(str::from_utf8(&second).map_err(|_| fmt::Error)?)?;
    writer.write_str(str::from_utf8(&micros).map_err(|_| fmt::Error)?)
}

/// The text of the second `seconds` after the epoch, or an error for one
/// that does not fit the format (past the year 9999).
fn second_text(seconds: u64) -> Result<Second, fmt::Error> {
    let instant = i64::try_from(seconds)
        .ok()
        .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .ok_or(fmt::Error)?;
    let mut text = String::with_capacity(19);
    fmt::Write::write_fmt(
        &mut text,
        format_args!("{}", instant.format("%Y-%m-%dT%H:%M:%S")),
    )?;
    text.into_bytes().try_into().map_err(|_| fmt::Error)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
