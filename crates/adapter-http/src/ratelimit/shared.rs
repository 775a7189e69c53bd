//! Limits shared by every instance through a store (Redis, in the
//! service), with this instance's own limiter as the fallback when the
//! store does not answer in time.
//!
//! The store is asked first, within a short timeout. Its answer is the
//! decision, with its `Retry-After`; a request it allows is counted by the
//! local limiter too, so that a fallback starts from this instance's recent
//! use rather than from a full burst. When it fails or is too slow, the
//! local limiter decides, the fallback is counted in
//! `maestro_rate_limit_fallbacks_total{reason}`, and the store is left
//! alone for [`RETRY_STORE_AFTER`], so that an outage costs requests no
//! wait. The log says so at most once per [`LOG_EVERY`], with the number
//! of checks that fell back since its last line, and once more when the
//! store answers again.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use domain::CustomerId;

use super::{RateLimitConfig, RetryAfter};
use crate::Metrics;

/// How long the store is left alone after it failed: checks meanwhile are
/// decided locally at once.
pub const RETRY_STORE_AFTER: Duration = Duration::from_secs(1);

/// At most one log line about fallbacks per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate-limit state that every instance of the service shares.
///
/// `app` implements it over Redis (`adapter_redis::RedisRateLimiter`); the
/// arithmetic must be the local limiter's (GCRA with the interval
/// [`RateLimitConfig::interval`] and the burst), so that a request is
/// decided alike whichever limiter decides it.
#[async_trait]
pub trait SharedRateLimitStore: Send + Sync + fmt::Debug {
    /// Counts one request of `customer` against `config`, on the store's
    /// own clock: `Ok(())` when it is allowed (and counted), the wait until
    /// the customer's next request would be allowed when it is refused
    /// (and nothing is counted).
    ///
    /// # Errors
    /// [`SharedStoreError`] when the store cannot answer; the request is
    /// then decided by this instance's own limiter.
    async fn check(
        &self,
        customer: &CustomerId,
        config: RateLimitConfig,
    ) -> Result<Result<(), RetryAfter>, SharedStoreError>;
}

/// The shared store could not answer a check.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SharedStoreError(Box<dyn std::error::Error + Send + Sync>);

impl SharedStoreError {
    /// Wraps the store's own error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

/// The store, how long it may take, and what is remembered of its
/// failures.
pub(super) struct Shared {
    store: Arc<dyn SharedRateLimitStore>,
    timeout: Duration,
    metrics: Metrics,
    /// Before this instant (nanoseconds since the epoch on the service's
    /// clock) the store is not asked: it failed moments ago.
    resume_at: AtomicI64,
    /// Whether the store's last answer was a failure, for the one line
    /// that says when it answers again.
    failing: AtomicBool,
    /// A std mutex: held only to count a fallback and decide whether to
    /// log it, never across an `.await`.
    log: Mutex<FallbackLog>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a check was decided locally: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// The store answered with an error (it cannot be reached).
    Error,
    /// The store did not answer within the timeout.
    Timeout,
    /// The store failed less than [`RETRY_STORE_AFTER`] ago and was not
    /// asked.
    Resting,
}

impl Fallback {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Resting => "store_resting",
        }
    }
}

/// How many fallbacks went unlogged, and when the last line was written.
#[derive(Debug, Default)]
struct FallbackLog {
    last_line: Option<i64>,
    unlogged: u64,
}

impl FallbackLog {
    /// Counts one fallback at `now` (nanoseconds); when no line was written
    /// within [`LOG_EVERY`], the number of fallbacks the line to write now
    /// should report (this one included).
    fn record(&mut self, now: i64) -> Option<u64> {
        self.unlogged += 1;
        let every = i64::try_from(LOG_EVERY.as_nanos()).unwrap_or(i64::MAX);
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_sub(last) >= every);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Shared {
    pub(super) fn new(
        store: Arc<dyn SharedRateLimitStore>,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            timeout,
            metrics,
            resume_at: AtomicI64::new(i64::MIN),
            failing: AtomicBool::new(false),
            log: Mutex::new(FallbackLog::default()),
        }
    }

    /// The store's decision about one request of `customer` at `now`
    /// (nanoseconds since the epoch on the service's clock), or `None`
    /// when it was not asked or did not answer in time: the caller then
    /// decides locally. The fallback is counted and logged here.
    pub(super) async fn ask(
        &self,
        customer: &CustomerId,
        config: RateLimitConfig,
        now: i64,
    ) -> Option<Result<(), RetryAfter>> {
        if now < self.resume_at.load(Ordering::Relaxed) {
            self.fell_back(Fallback::Resting, now, None);
            return None;
        }
        let answer = tokio::time::timeout(self.timeout, self.store.check(customer, config)).await;
        let (fallback, error) = match answer {
            Ok(Ok(decision)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "the shared rate-limit store answers again; rate limits are shared by every instance again"
                    );
                }
                return Some(decision);
            }
            Ok(Err(error)) => (Fallback::Error, Some(error)),
            Err(_) => (Fallback::Timeout, None),
        };
        let rest = i64::try_from(RETRY_STORE_AFTER.as_nanos()).unwrap_or(i64::MAX);
        self.resume_at
            .store(now.saturating_add(rest), Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
        self.fell_back(fallback, now, error.as_ref());
        None
    }

    fn fell_back(&self, fallback: Fallback, now: i64, error: Option<&SharedStoreError>) {
        self.metrics.rate_limit_fallback(fallback.label());
        let line = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(now);
        if let Some(fallbacks) = line {
            tracing::warn!(
                reason = fallback.label(),
                error = error.map(tracing::field::display),
                timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                fallbacks,
                "the shared rate-limit store (Redis) did not answer; this instance limits on its own until it does (at most one such line per {} s)",
                LOG_EVERY.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::time::{Instant, advance, pause};

    use super::*;
    use crate::ratelimit::RateLimiter;

    const SECOND: i64 = 1_000_000_000;
    const TIMEOUT: Duration = Duration::from_millis(50);

    /// What the fake store does with a check.
    #[derive(Debug, Clone, Copy)]
    enum Store {
        Allow,
        Refuse(Duration),
        Fail,
        Hang,
    }

    /// A store that does what it is set to, and counts the checks asked.
    #[derive(Debug)]
    struct Fake {
        does: Mutex<Store>,
        asked: AtomicUsize,
    }

    impl Fake {
        fn new(does: Store) -> Arc<Self> {
            Arc::new(Self {
                does: Mutex::new(does),
                asked: AtomicUsize::new(0),
            })
        }

        fn set(&self, does: Store) {
            *self.does.lock().unwrap() = does;
        }

        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl SharedRateLimitStore for Fake {
        async fn check(
            &self,
            _: &CustomerId,
            _: RateLimitConfig,
        ) -> Result<Result<(), RetryAfter>, SharedStoreError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let does = *self.does.lock().unwrap();
            match does {
                Store::Allow => Ok(Ok(())),
                Store::Refuse(wait) => Ok(Err(RetryAfter::new(wait))),
                Store::Fail => Err(SharedStoreError::new("connection refused")),
                Store::Hang => std::future::pending().await,
            }
        }
    }

    fn alice() -> CustomerId {
        CustomerId::parse("alice").unwrap()
    }

    /// A limiter of 60 a minute with a burst of `burst`, shared through
    /// `store`, and the metrics it counts fallbacks in.
    fn shared(burst: u32, store: &Arc<Fake>) -> (RateLimiter, Metrics) {
        let metrics = Metrics::default();
        let limiter = RateLimiter::new(
            RateLimitConfig::new(60, Some(burst)).unwrap(),
            Arc::new(runtime::TokioClock::start()),
        )
        .sharing(store.clone(), TIMEOUT, metrics.clone());
        (limiter, metrics)
    }

    fn fallbacks(metrics: &Metrics, reason: &str) -> u64 {
        let rendered = metrics.render();
        let series = format!("maestro_rate_limit_fallbacks_total{{reason=\"{reason}\"}} ");
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |count| count.parse().unwrap())
    }

    #[tokio::test]
    async fn the_stores_decision_is_the_answer_and_its_wait_the_retry_after() {
        pause();
        let store = Fake::new(Store::Refuse(Duration::from_millis(6_500)));
        let (limiter, metrics) = shared(100, &store);

        // This instance alone would allow it: the store saw the others.
        let refused = limiter.acquire(&alice()).await.unwrap_err();
        assert_eq!(refused.wait(), Duration::from_millis(6_500));
        assert_eq!(refused.as_secs(), 7);

        store.set(Store::Allow);
        assert_eq!(limiter.acquire(&alice()).await, Ok(()));
        assert_eq!(store.asked(), 2);
        assert_eq!(fallbacks(&metrics, "error"), 0);
    }

    #[tokio::test]
    async fn a_failing_store_hands_over_to_the_local_limiter_which_knows_the_recent_requests() {
        pause();
        let store = Fake::new(Store::Allow);
        let (limiter, metrics) = shared(3, &store);
        // Two requests allowed by the store are counted here too.
        assert_eq!(limiter.acquire(&alice()).await, Ok(()));
        assert_eq!(limiter.acquire(&alice()).await, Ok(()));

        store.set(Store::Fail);
        // One token is left of the burst of three, not a full burst.
        assert_eq!(limiter.acquire(&alice()).await, Ok(()));
        let refused = limiter.acquire(&alice()).await.unwrap_err();
        assert_eq!(refused.as_secs(), 1, "the local limiter's own 429");

        assert_eq!(fallbacks(&metrics, "error"), 1);
        assert_eq!(fallbacks(&metrics, "store_resting"), 1);
        assert_eq!(store.asked(), 3, "left alone after it failed");
    }

    #[tokio::test]
    async fn a_store_that_failed_is_asked_again_after_a_second_and_decides_again() {
        pause();
        let store = Fake::new(Store::Fail);
        let (limiter, metrics) = shared(100, &store);
        for _ in 0..10 {
            assert_eq!(limiter.acquire(&alice()).await, Ok(()));
        }
        assert_eq!(store.asked(), 1);
        assert_eq!(fallbacks(&metrics, "store_resting"), 9);

        store.set(Store::Refuse(Duration::from_secs(2)));
        advance(RETRY_STORE_AFTER).await;
        let refused = limiter.acquire(&alice()).await.unwrap_err();
        assert_eq!(refused.as_secs(), 2, "the store decides again");
        assert_eq!(store.asked(), 2);
    }

    #[tokio::test]
    async fn a_store_that_does_not_answer_is_given_up_at_the_timeout() {
        pause();
        let store = Fake::new(Store::Hang);
        let (limiter, metrics) = shared(1, &store);

        let started = Instant::now();
        assert_eq!(limiter.acquire(&alice()).await, Ok(()));
        // Tokio's timers tick in whole milliseconds.
        let took = started.elapsed();
        assert!(
            (TIMEOUT..=TIMEOUT + Duration::from_millis(1)).contains(&took),
            "{took:?}"
        );
        // Meanwhile the store is not asked, and costs no wait.
        let started = Instant::now();
        assert!(limiter.acquire(&alice()).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO);

        assert_eq!(fallbacks(&metrics, "timeout"), 1);
        assert_eq!(fallbacks(&metrics, "store_resting"), 1);
        assert_eq!(store.asked(), 1);
    }

    #[test]
    fn the_first_fallback_is_logged_then_at_most_one_line_per_period_with_the_count() {
        let mut log = FallbackLog::default();
        assert_eq!(log.record(0), Some(1));
        for i in 1..=99 {
            assert_eq!(log.record(i * SECOND / 10), None);
        }
        // Ten seconds after the last line: a line for the 100 since it.
        assert_eq!(log.record(10 * SECOND), Some(100));
        assert_eq!(log.record(10 * SECOND + 1), None);
        assert_eq!(log.record(30 * SECOND), Some(2));
    }
}
