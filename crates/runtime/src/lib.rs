//! What the adapters and the `maestro` binary share on the tokio runtime:
//! [`TokioClock`], the [`domain::Clock`] of the running service;
//! [`PollingRunWatch`], the [`domain::RunWatch`] of backends that must be
//! polled for changes; and the loops that move run changes and webhooks:
//! [`feed::FeedPump`] (the engine into the event log, on the lease holder),
//! [`dispatch::Dispatcher`] (the log into webhook deliveries, on the lease
//! holder) and [`deliver::DeliveryWorker`] (deliveries to endpoints, on
//! every instance).
//!
//! Each loop is a value built with its ports, started with `spawn(shutdown)`
//! on its own task, and ended by sending `true` on the
//! `tokio::sync::watch` channel whose receiver `shutdown` is (or by
//! dropping its sender); the task's handle completes when the loop is done.
//!
//! Not an adapter: it talks to nothing outside the process itself (the
//! loops work through the domain's ports), and depends only on `domain` and
//! tokio.

pub mod deliver;
pub mod dispatch;
pub mod feed;
pub mod metrics;
mod pace;
#[cfg(test)]
mod testing;
mod watch;

pub use watch::PollingRunWatch;

use chrono::{TimeDelta, Utc};
use domain::{Clock, Timestamp};
use tokio::time::Instant;

/// The service's clock: the wall-clock time read once, at construction,
/// plus the time elapsed since on tokio's monotonic clock.
///
/// Why not the wall clock on every read:
/// - tokio's clock is monotonic, so a step of the system clock (NTP, an
///   operator's `date -s`) can neither reorder runs nor stretch a simulated
///   one or a cache's lifetime;
/// - under `tokio::time::pause()` it stands still until a test advances it,
///   and it moves exactly as far as tokio's timers do, so a test drives
///   time, timers and "now" with one call and never sleeps.
///
/// The price: a step of the system clock is followed only by the next
/// process. The monotonic clock is slewed by NTP like the wall clock, so the
/// two stay close over a long uptime.
///
/// Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall_base: Timestamp,
    instant_base: Instant,
}

impl TokioClock {
    /// A clock starting at the current wall-clock time.
    pub fn start() -> Self {
        // The one reading of the wall clock in the service.
        Self::starting_at(Utc::now())
    }

    /// A clock that reads `wall_base` now and moves on with tokio's clock
    /// from there: for tests and simulations that must not depend on
    /// today's date, nor on the digits of the current time.
    pub fn starting_at(wall_base: Timestamp) -> Self {
        Self {
            wall_base,
            instant_base: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::start()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
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
        let clock = TokioClock::start();
        let first = clock.now();
        tokio::task::yield_now().await;
        assert_eq!(clock.now(), first);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_moves_exactly_as_far_as_tokio_time_is_advanced() {
        let clock = TokioClock::start();
        let first = clock.now();
        tokio::time::advance(Duration::from_millis(10_250)).await;
        assert_eq!(clock.now() - first, TimeDelta::milliseconds(10_250));
    }

    #[tokio::test]
    async fn the_clock_starts_near_the_wall_clock() {
        let before = Utc::now();
        let now = TokioClock::start().now();
        let after = Utc::now();
        assert!(before <= now && now <= after);
    }
}
