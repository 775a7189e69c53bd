//! The one source of "now": a port, so that every reading of the time can
//! be controlled by a test.
//!
//! Everything in Maestro that reads the wall clock (run instants, the
//! retention of idempotency keys, token expiry) asks a [`Clock`]. Production
//! code is given one that follows the runtime's clock; tests give a
//! [`ManualClock`] and move it, instead of sleeping or depending on today's
//! date.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};

use crate::Timestamp;

/// Tells the time.
///
/// Implementations must be cheap to call: the time is read on every
/// request.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant, in UTC.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock, read on every call.
///
/// For users of the domain alone. The `maestro` service uses a clock that
/// follows its runtime's (pausable) time instead, so that its tests can stop
/// and move time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // The one place in the domain that reads the wall clock.
        Utc::now()
    }
}

/// A clock that stands still until it is set or advanced: for tests.
///
/// Cheap to clone; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use domain::{Clock, ManualClock};
///
/// let clock = ManualClock::at_epoch_seconds(1_734_517_800);
/// let before = clock.now();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!((clock.now() - before).num_seconds(), 90);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(at)),
        }
    }

    /// A clock showing `seconds` after the Unix epoch (1970-01-01 UTC); out
    /// of chrono's range, the epoch itself.
    pub fn at_epoch_seconds(seconds: i64) -> Self {
        Self::new(DateTime::from_timestamp(seconds, 0).unwrap_or_default())
    }

    /// Moves the clock forward by `by` (saturating at the latest instant
    /// chrono can hold).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = TimeDelta::from_std(by)
            .ok()
            .and_then(|by| now.checked_add_signed(by))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }

    /// Sets the clock to `at`, forward or back.
    pub fn set(&self, at: Timestamp) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::at_epoch_seconds(1_000);
        let clone = clock.clone();
        assert_eq!(clock.now(), clone.now());
        clone.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now().timestamp_millis(), 1_001_500);
        clock.set(DateTime::from_timestamp(5, 0).unwrap());
        assert_eq!(clone.now().timestamp(), 5);
    }

    #[test]
    fn advancing_past_the_end_of_time_saturates() {
        let clock = ManualClock::new(DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(1));
        clock.advance(Duration::from_secs(u64::MAX));
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
    }
}
