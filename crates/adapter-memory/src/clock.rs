//! The memory backend's clock: wall-clock instants that tests can stop and
//! move with `tokio::time::pause()` and `tokio::time::advance()`.

use chrono::{TimeDelta, Utc};
use domain::Timestamp;
use tokio::time::Instant;

/// Reads "now" as the wall-clock time at construction plus the time elapsed
/// since on tokio's clock.
///
/// Why not `Utc::now()` on every read: tokio's clock is monotonic, so a
/// wall-clock step (NTP, a changed time zone setting) can neither reorder
/// runs nor stretch or shrink a simulated run; and under
/// `tokio::time::pause()` it stands still until a test advances it, which
/// makes every timing of the simulation exact and testable without sleeping.
/// Responses still carry real, recent UTC instants thanks to the wall-clock
/// base.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_base: Timestamp,
    instant_base: Instant,
}

impl Clock {
    /// A clock starting at the current wall-clock time.
    pub(crate) fn start() -> Self {
        Self {
            wall_base: Utc::now(),
            instant_base: Instant::now(),
        }
    }

    /// The current instant.
    pub(crate) fn now(&self) -> Timestamp {
        let elapsed = Instant::now().saturating_duration_since(self.instant_base);
        // Only an uptime of some 292,000 years overflows; stand still then
        // rather than panic or go back.
        TimeDelta::from_std(elapsed)
            .ok()
            .and_then(|elapsed| self.wall_base.checked_add_signed(elapsed))
            .unwrap_or(Timestamp::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_stands_still_while_tokio_time_is_paused() {
        let clock = Clock::start();
        let first = clock.now();
        tokio::task::yield_now().await;
        assert_eq!(clock.now(), first);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_moves_exactly_as_far_as_tokio_time_is_advanced() {
        let clock = Clock::start();
        let first = clock.now();
        tokio::time::advance(Duration::from_millis(10_250)).await;
        assert_eq!(clock.now() - first, TimeDelta::milliseconds(10_250));
    }

    #[test]
    fn the_clock_starts_near_the_wall_clock() {
        let before = Utc::now();
        let now = Clock::start().now();
        let after = Utc::now();
        assert!(before <= now && now <= after);
    }
}
