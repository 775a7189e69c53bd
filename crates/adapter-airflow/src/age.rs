//! How old something stamped with the backend's clock is, for the caches
//! that trust what they saw for a while (the DAG reads of `triggerable`,
//! the tokens of `token`).

use std::time::Duration;

use domain::Timestamp;

/// Whether something stamped `at` is younger than `span` at `now`.
///
/// A stamp later than `now` means the clock was stepped back since: how old
/// the entry really is cannot be told, so it counts as expired rather than
/// trusted for longer than it was meant to be.
pub(crate) fn younger_than(at: Timestamp, now: Timestamp, span: Duration) -> bool {
    now.signed_duration_since(at)
        .to_std()
        .is_ok_and(|age| age < span)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta};

    use super::*;

    #[test]
    fn an_entry_is_young_from_its_stamp_until_the_span_has_passed() {
        let at = DateTime::from_timestamp(1_000, 0).unwrap();
        let span = Duration::from_secs(1);
        assert!(younger_than(at, at, span));
        assert!(younger_than(at, at + TimeDelta::milliseconds(999), span));
        assert!(!younger_than(at, at + TimeDelta::seconds(1), span));
        assert!(!younger_than(at, at, Duration::ZERO));
    }

    #[test]
    fn an_entry_stamped_after_now_is_expired() {
        let at = DateTime::from_timestamp(1_000, 0).unwrap();
        assert!(!younger_than(
            at,
            at - TimeDelta::microseconds(1),
            Duration::from_secs(3600)
        ));
    }
}
