//! Per-customer rate limits: a GCRA limiter per [`CustomerId`], on the
//! service's clock so that tests drive it with paused time; and, with a
//! [`SharedRateLimitStore`] (Redis), the same limits shared by every
//! instance, this instance's limiter deciding when the store does not
//! answer ([`shared`]).
//!
//! Off by default: the state holds an `Option<RateLimiter>`, and with `None`
//! no request is ever counted. See `docs/decisions/0006-rate-limits.md` and
//! `docs/decisions/0013-retries-and-shared-rate-limits.md`.

pub mod shared;

use std::{
    fmt,
    num::NonZeroU32,
    ops::Add,
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::Metrics;
use domain::CustomerId;
use governor::{
    Quota,
    clock::{Clock, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::keyed::DashMapStateStore,
};
pub use shared::{SharedRateLimitStore, SharedStoreError};

/// How many requests a customer may make: a steady rate per minute, and a
/// burst that may be spent at once after a quiet period.
///
/// Build it with [`RateLimitConfig::new`] or [`RateLimitConfig::from_settings`],
/// which check the values; the fields are public so that a test or a
/// caller with already-checked values can write one directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests per minute a customer may make in the long run; the bucket
    /// refills one request every `60 / per_minute` seconds.
    pub per_minute: NonZeroU32,
    /// Requests a customer may make at once, after being quiet long enough
    /// for the bucket to refill. At most [`RateLimitConfig::MAX_BURST`].
    pub burst: NonZeroU32,
}

/// The rate-limit settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRateLimit {
    /// A limit of zero would refuse every request; leaving the limit unset
    /// is how rate limits are turned off.
    #[error(
        "the rate limit per minute must be at least 1 (leave it unset to turn rate limits off)"
    )]
    ZeroPerMinute,
    /// A burst of zero would refuse every request.
    #[error("the rate-limit burst must be at least 1")]
    ZeroBurst,
    /// The burst is larger than the limiter can represent sensibly.
    #[error("the rate-limit burst must be at most {max}, got {burst}")]
    BurstTooLarge {
        /// The burst asked for.
        burst: u32,
        /// The largest burst accepted.
        max: u32,
    },
    /// A burst was given with no limit per minute: most likely a typo in the
    /// limit's setting, which would leave the service unprotected.
    #[error("a rate-limit burst is set but no rate limit per minute")]
    BurstWithoutLimit,
}

impl RateLimitConfig {
    /// The largest burst accepted. A bucket's depth is kept in nanoseconds
    /// in a `u64`; at one request per minute, a million requests of burst
    /// is about 694 days, well inside it, and far beyond any sensible use.
    pub const MAX_BURST: u32 = 1_000_000;

    /// A limit of `per_minute` requests per minute with a burst of `burst`;
    /// without a burst, one minute's worth of requests (capped at
    /// [`Self::MAX_BURST`]).
    ///
    /// # Errors
    /// [`InvalidRateLimit`] for a zero limit or burst, or a burst over
    /// [`Self::MAX_BURST`].
    pub fn new(per_minute: u32, burst: Option<u32>) -> Result<Self, InvalidRateLimit> {
        let per_minute = NonZeroU32::new(per_minute).ok_or(InvalidRateLimit::ZeroPerMinute)?;
        let burst = match burst {
            Some(burst) if burst > Self::MAX_BURST => {
                return Err(InvalidRateLimit::BurstTooLarge {
                    burst,
                    max: Self::MAX_BURST,
                });
            }
            Some(burst) => NonZeroU32::new(burst).ok_or(InvalidRateLimit::ZeroBurst)?,
            None => per_minute.min(Self::max_burst()),
        };
        Ok(Self { per_minute, burst })
    }

    /// The configuration from the service's settings, as read from the
    /// environment: no limit per minute means rate limits are off (`None`).
    ///
    /// # Errors
    /// [`InvalidRateLimit`] as for [`Self::new`], and
    /// [`InvalidRateLimit::BurstWithoutLimit`] for a burst with no limit.
    pub fn from_settings(
        per_minute: Option<u32>,
        burst: Option<u32>,
    ) -> Result<Option<Self>, InvalidRateLimit> {
        match (per_minute, burst) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(InvalidRateLimit::BurstWithoutLimit),
            (Some(per_minute), burst) => Self::new(per_minute, burst).map(Some),
        }
    }

    /// The time one request's token takes to come back: a minute divided
    /// by the limit, in whole nanoseconds (as the local limiter counts it).
    pub fn interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.get()
    }

    fn max_burst() -> NonZeroU32 {
        NonZeroU32::MIN.saturating_add(Self::MAX_BURST - 1)
    }

    fn quota(self) -> Quota {
        // A hand-built config skips `new`'s check; clamping here keeps the
        // limiter's arithmetic in range rather than panicking at startup.
        Quota::per_minute(self.per_minute).allow_burst(self.burst.min(Self::max_burst()))
    }
}

/// A request refused by the rate limiter, and how long the customer should
/// wait before the next one would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry after {} s", self.as_secs())]
pub struct RetryAfter(Duration);

impl RetryAfter {
    /// A refusal whose next request would be allowed after `wait`: for a
    /// [`SharedRateLimitStore`] to answer with.
    pub fn new(wait: Duration) -> Self {
        Self(wait)
    }

    /// The exact time until the next request would be allowed.
    pub fn wait(self) -> Duration {
        self.0
    }

    /// The wait in whole seconds for the `Retry-After` header: rounded up,
    /// so that a client that waits as told is allowed, and at least 1, since
    /// `Retry-After: 0` invites an immediate retry that would be refused.
    pub fn as_secs(self) -> u64 {
        let whole = self.0.as_secs();
        let rounded = if self.0.subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        };
        rounded.max(1)
    }
}

/// governor's view of the service's [`domain::Clock`].
///
/// governor's own clocks read the system's monotonic time, which neither
/// `tokio::time::pause()` nor a test's manual clock moves; this one reads
/// the one clock the rest of the service reads, so production and tests
/// run the same code.
#[derive(Debug, Clone)]
struct ServiceClock(Arc<dyn domain::Clock>);

/// A reading of [`ServiceClock`]: nanoseconds since the Unix epoch, which
/// an `i64` holds until the year 2262.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ClockInstant(i64);

impl Clock for ServiceClock {
    type Instant = ClockInstant;

    fn now(&self) -> ClockInstant {
        let now = self.0.now();
        ClockInstant(now.timestamp_nanos_opt().unwrap_or(i64::MAX))
    }
}

impl Add<Nanos> for ClockInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        let nanos = i64::try_from(other.as_u64()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}

impl Reference for ClockInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        // governor requires a saturating difference.
        let nanos = self.0.saturating_sub(earlier.0).max(0);
        Nanos::from(u64::try_from(nanos).unwrap_or(0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        let nanos = i64::try_from(duration.as_u64()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(nanos))
    }
}

impl ClockInstant {
    fn since(self, earlier: Self) -> Duration {
        Duration::from_nanos(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

type Keyed = governor::RateLimiter<
    CustomerId,
    DashMapStateStore<CustomerId>,
    ServiceClock,
    NoOpMiddleware<ClockInstant>,
>;

/// Every how many checks the limiter forgets the customers whose bucket is
/// full again. It bounds the number of customers held between two sweeps;
/// a sweep visits every held customer, so this is also what spreads its
/// cost over that many requests.
const SWEEP_EVERY: u64 = 1024;

/// Per-customer rate limits. Cheap to clone: clones share the customers'
/// buckets.
///
/// [`check`](Self::check) is synchronous and never waits: it reads the
/// customer's bucket under a shared read lock of one of the map's shards
/// and updates it with one atomic compare-and-swap, so one customer's flood
/// neither blocks nor slows the checks of another. Only a customer's first
/// request after being forgotten takes a shard's write lock, briefly, to
/// insert its bucket.
///
/// Memory stays bounded: every 1,024 checks (`SWEEP_EVERY`), the check that hits
/// the mark forgets every customer whose bucket has refilled (which is
/// indistinguishable from never having called), and gives memory back when
/// the map has shrunk to half of its peak. The number of customers held is
/// therefore at most those active within one refill period plus the
/// sweep interval, whatever the number of customers ever seen. No timer is
/// needed; [`retain_recent`](Self::retain_recent) may also be called on one.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
    /// The store shared with the other instances, if any: it decides, and
    /// `inner` only when it does not answer.
    shared: Option<Arc<shared::Shared>>,
}

struct Inner {
    limiter: Keyed,
    clock: ServiceClock,
    config: RateLimitConfig,
    checks: AtomicU64,
    sweep_every: u64,
    /// Held while sweeping, so that sweeps do not run twice at once, with
    /// the number of customers held at the largest point since memory was
    /// last given back.
    sweep: Mutex<usize>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.inner.config)
            .field("tracked_customers", &self.tracked_customers())
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter applying `config` to each customer separately, on `clock`.
    pub fn new(config: RateLimitConfig, clock: Arc<dyn domain::Clock>) -> Self {
        Self::with_sweep_every(config, clock, SWEEP_EVERY)
    }

    fn with_sweep_every(
        config: RateLimitConfig,
        clock: Arc<dyn domain::Clock>,
        sweep_every: u64,
    ) -> Self {
        let clock = ServiceClock(clock);
        Self {
            inner: Arc::new(Inner {
                limiter: governor::RateLimiter::dashmap_with_clock(config.quota(), clock.clone()),
                clock,
                config,
                checks: AtomicU64::new(0),
                sweep_every: sweep_every.max(1),
                sweep: Mutex::new(0),
            }),
            shared: None,
        }
    }

    /// The same limits, shared by every instance through `store`: each
    /// check asks the store first, and this limiter decides when the store
    /// has not answered within `timeout` (or failed moments ago), counting
    /// the fallback in `metrics`. See [`shared`].
    #[must_use]
    pub fn sharing(
        mut self,
        store: Arc<dyn SharedRateLimitStore>,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        self.shared = Some(Arc::new(shared::Shared::new(store, timeout, metrics)));
        self
    }

    /// The configuration the limiter applies.
    pub fn config(&self) -> RateLimitConfig {
        self.inner.config
    }

    /// Counts one request of `customer` against every instance's requests
    /// when the limits are shared ([`Self::sharing`]), and against this
    /// instance's alone otherwise, or when the shared store does not
    /// answer in time.
    ///
    /// # Errors
    /// [`RetryAfter`] when `customer` has spent its quota, with the time
    /// until its next request would be allowed.
    pub async fn acquire(&self, customer: &CustomerId) -> Result<(), RetryAfter> {
        let Some(shared) = &self.shared else {
            return self.check(customer);
        };
        let now = self.inner.clock.now().0;
        match shared.ask(customer, self.inner.config, now).await {
            Some(Ok(())) => {
                // Counted here too, so that should the store stop
                // answering, this instance goes on from its own recent use
                // rather than from a full burst. Its verdict is the
                // store's: the store saw every instance's requests.
                let _ = self.check(customer);
                Ok(())
            }
            Some(Err(refused)) => Err(refused),
            None => self.check(customer),
        }
    }

    /// Counts one request of `customer` against this instance's requests
    /// alone, whether or not the limits are shared.
    ///
    /// A refused request is not counted, so a customer that keeps calling
    /// while refused is allowed again as soon as the wait has passed.
    ///
    /// # Errors
    /// [`RetryAfter`] when `customer` has spent its quota, with the time
    /// until its next request would be allowed.
    pub fn check(&self, customer: &CustomerId) -> Result<(), RetryAfter> {
        // Read before deciding, so that the wait is measured from no later
        // than the decision: the advertised wait is never too short.
        let before = self.inner.clock.now();
        let outcome = self.inner.limiter.check_key(customer);

        let checks = self
            .inner
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if checks.is_multiple_of(self.inner.sweep_every) {
            self.sweep();
        }

        outcome.map_err(|refused| RetryAfter(refused.earliest_possible().since(before)))
    }

    /// Forgets the customers whose bucket has refilled, and gives memory
    /// back when the map has shrunk to half of its peak or less.
    ///
    /// [`check`](Self::check) already does this every so many checks, which
    /// bounds memory on its own; calling it on a timer as well also frees
    /// the memory of a burst of customers once traffic stops.
    pub fn retain_recent(&self) {
        self.sweep();
    }

    /// How many customers the limiter currently holds a bucket for (an
    /// estimate while checks run concurrently).
    pub fn tracked_customers(&self) -> usize {
        self.inner.limiter.len()
    }

    fn sweep(&self) {
        let mut peak = match self.inner.sweep.try_lock() {
            Ok(peak) => peak,
            // Another sweep is running; it does this one's work.
            Err(TryLockError::WouldBlock) => return,
            // The peak is only a hint for shrinking; a panic while holding
            // it leaves nothing inconsistent.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        let limiter = &self.inner.limiter;
        // Customers are only forgotten here, so the count just before a
        // sweep is the largest since the previous one.
        let before = limiter.len();
        *peak = (*peak).max(before);
        limiter.retain_recent();
        let after = limiter.len();
        if after < before && after <= *peak / 2 {
            // Shrinking reallocates every shard; doing it only after a large
            // drop keeps a steady population from paying for it repeatedly.
            limiter.shrink_to_fit();
            *peak = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicBool, thread};

    use tokio::time::{advance, pause};

    use super::*;

    fn customer(id: &str) -> CustomerId {
        CustomerId::parse(id).expect("valid customer id")
    }

    fn clock() -> Arc<dyn domain::Clock> {
        Arc::new(runtime::TokioClock::start())
    }

    fn config(per_minute: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig::new(per_minute, Some(burst)).expect("valid rate-limit config")
    }

    /// How many checks in a row `customer` passes, up to `max`.
    fn allowed_in_a_row(limiter: &RateLimiter, customer: &CustomerId, max: u32) -> u32 {
        let mut allowed = 0;
        while allowed < max && limiter.check(customer).is_ok() {
            allowed += 1;
        }
        allowed
    }

    #[tokio::test]
    async fn the_burst_is_allowed_then_refused_with_the_time_until_the_next_token() {
        pause();
        // 60 a minute: one token a second.
        let limiter = RateLimiter::new(config(60, 5), clock());
        let alice = customer("alice");

        for _ in 0..5 {
            assert_eq!(limiter.check(&alice), Ok(()));
        }
        let refused = limiter
            .check(&alice)
            .expect_err("the sixth request is over the burst");
        assert_eq!(refused.wait(), Duration::from_secs(1));
        assert_eq!(refused.as_secs(), 1);
    }

    #[tokio::test]
    async fn retry_after_is_rounded_up_to_whole_seconds_and_shrinks_as_time_passes() {
        pause();
        // 7 a minute: one token every 8.571428571 s.
        let limiter = RateLimiter::new(config(7, 1), clock());
        let alice = customer("alice");
        assert_eq!(limiter.check(&alice), Ok(()));

        let refused = limiter.check(&alice).expect_err("the burst is one");
        assert_eq!(refused.wait(), Duration::from_nanos(8_571_428_571));
        assert_eq!(refused.as_secs(), 9);

        advance(Duration::from_secs(8)).await;
        let refused = limiter
            .check(&alice)
            .expect_err("the token is not back yet");
        assert_eq!(refused.wait(), Duration::from_nanos(571_428_571));
        assert_eq!(refused.as_secs(), 1, "a wait under a second is still 1");

        advance(Duration::from_nanos(571_428_571)).await;
        assert_eq!(limiter.check(&alice), Ok(()), "waiting as told is enough");
    }

    #[test]
    fn retry_after_is_never_zero() {
        assert_eq!(RetryAfter(Duration::ZERO).as_secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1)).as_secs(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(2)).as_secs(), 2);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).as_secs(), 3);
    }

    #[tokio::test]
    async fn the_bucket_refills_at_exactly_per_minute_over_sixty_per_second() {
        pause();
        // 120 a minute: two tokens a second, one every 500 ms.
        let limiter = RateLimiter::new(config(120, 10), clock());
        let alice = customer("alice");
        assert_eq!(allowed_in_a_row(&limiter, &alice, 100), 10);

        advance(Duration::from_secs(1)).await;
        assert_eq!(allowed_in_a_row(&limiter, &alice, 100), 2);

        advance(Duration::from_millis(499)).await;
        assert_eq!(allowed_in_a_row(&limiter, &alice, 100), 0);
        advance(Duration::from_millis(1)).await;
        assert_eq!(allowed_in_a_row(&limiter, &alice, 100), 1);

        advance(Duration::from_secs(3)).await;
        assert_eq!(allowed_in_a_row(&limiter, &alice, 100), 6);

        // A long quiet period refills the bucket, never beyond the burst.
        advance(Duration::from_secs(3600)).await;
        assert_eq!(allowed_in_a_row(&limiter, &alice, 100), 10);
    }

    #[tokio::test]
    async fn refused_requests_do_not_push_the_next_allowed_one_further_away() {
        pause();
        let limiter = RateLimiter::new(config(60, 2), clock());
        let alice = customer("alice");
        assert_eq!(allowed_in_a_row(&limiter, &alice, 10), 2);

        for _ in 0..1000 {
            let refused = limiter.check(&alice).expect_err("over the burst");
            assert_eq!(refused.wait(), Duration::from_secs(1));
        }
        advance(Duration::from_secs(1)).await;
        assert_eq!(limiter.check(&alice), Ok(()));
    }

    #[tokio::test]
    async fn one_customers_flood_leaves_another_customers_quota_untouched() {
        pause();
        let limiter = RateLimiter::new(config(60, 5), clock());
        let alice = customer("alice");
        let bob = customer("bob");

        assert_eq!(allowed_in_a_row(&limiter, &alice, 5), 5);
        for _ in 0..10_000 {
            assert!(limiter.check(&alice).is_err(), "alice stays refused");
        }

        // Bob gets his whole burst, then his own refusal with his own wait.
        for _ in 0..5 {
            assert_eq!(limiter.check(&bob), Ok(()));
        }
        let refused = limiter.check(&bob).expect_err("bob's burst is spent");
        assert_eq!(refused.wait(), Duration::from_secs(1));
    }

    #[test]
    fn a_concurrent_flood_from_one_customer_does_not_refuse_another() {
        // Real time, no tokio runtime: one token a minute, so nothing refills
        // while the test runs, and the outcome cannot depend on timing.
        let burst = 100_000;
        let limiter = RateLimiter::new(config(1, burst), clock());
        let alice = customer("alice");
        let bob = customer("bob");
        assert_eq!(allowed_in_a_row(&limiter, &alice, burst + 1), burst);
        let alice_refused = AtomicU64::new(0);
        let done = AtomicBool::new(false);

        let (bob_allowed, refused_meanwhile) = thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        if limiter.check(&alice).is_err() {
                            alice_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            // Bob starts only once the flood is under way.
            while alice_refused.load(Ordering::Relaxed) < 1000 {
                thread::yield_now();
            }
            let before = alice_refused.load(Ordering::Relaxed);
            let allowed = allowed_in_a_row(&limiter, &bob, burst + 1);
            let refused_meanwhile = alice_refused.load(Ordering::Relaxed) - before;
            done.store(true, Ordering::Relaxed);
            (allowed, refused_meanwhile)
        });

        assert_eq!(bob_allowed, burst);
        assert!(
            limiter.check(&bob).is_err(),
            "bob's own limit still applies"
        );
        assert!(limiter.check(&alice).is_err(), "alice stays refused");
        // Only informative: how many of alice's requests ran alongside bob's.
        println!("alice refused {refused_meanwhile} times during bob's checks");
    }

    #[tokio::test]
    async fn retain_recent_forgets_customers_once_their_bucket_has_refilled() {
        pause();
        // One token a second, burst 3: a customer that spent its whole
        // burst is full again 3 s later.
        let limiter = RateLimiter::new(config(60, 3), clock());
        let busy = customer("busy");
        assert_eq!(allowed_in_a_row(&limiter, &busy, 3), 3);
        for i in 0..500 {
            assert_eq!(limiter.check(&customer(&format!("customer-{i}"))), Ok(()));
        }
        assert_eq!(limiter.tracked_customers(), 501);

        // Not long enough for anyone to be indistinguishable from new.
        advance(Duration::from_millis(900)).await;
        limiter.retain_recent();
        assert_eq!(limiter.tracked_customers(), 501);

        // The one-request customers are full again; the busy one is not.
        advance(Duration::from_millis(1100)).await;
        limiter.retain_recent();
        assert_eq!(limiter.tracked_customers(), 1);
        assert_eq!(
            allowed_in_a_row(&limiter, &busy, 3),
            2,
            "busy keeps its state"
        );

        advance(Duration::from_secs(10)).await;
        limiter.retain_recent();
        assert_eq!(limiter.tracked_customers(), 0);
        // Forgetting a customer gives it exactly a fresh bucket.
        assert_eq!(allowed_in_a_row(&limiter, &busy, 10), 3);
    }

    #[tokio::test]
    async fn checks_alone_keep_the_number_of_customers_held_bounded() {
        pause();
        let sweep_every = 100;
        let limiter = RateLimiter::with_sweep_every(config(60, 1), clock(), sweep_every);

        // 5000 customers each call once, one every 100 ms: at most about 20
        // of them have a bucket that has not refilled at any time.
        let mut most_held = 0;
        for i in 0..5000 {
            assert_eq!(limiter.check(&customer(&format!("customer-{i}"))), Ok(()));
            most_held = most_held.max(limiter.tracked_customers());
            advance(Duration::from_millis(100)).await;
        }
        let bound = usize::try_from(sweep_every).expect("small") + 25;
        assert!(
            most_held <= bound,
            "held {most_held} customers, bound {bound}"
        );
        assert!(most_held > 50, "sweeps run only every {sweep_every} checks");
    }

    #[tokio::test]
    async fn the_limiter_is_shared_between_clones() {
        pause();
        let limiter = RateLimiter::new(config(60, 2), clock());
        let clone = limiter.clone();
        let alice = customer("alice");
        assert_eq!(limiter.check(&alice), Ok(()));
        assert_eq!(clone.check(&alice), Ok(()));
        assert!(limiter.check(&alice).is_err());
        assert_eq!(clone.config(), config(60, 2));
    }

    #[test]
    fn config_refuses_zero_limits_and_oversized_bursts() {
        assert_eq!(
            RateLimitConfig::new(0, None),
            Err(InvalidRateLimit::ZeroPerMinute)
        );
        assert_eq!(
            RateLimitConfig::new(0, Some(5)),
            Err(InvalidRateLimit::ZeroPerMinute)
        );
        assert_eq!(
            RateLimitConfig::new(60, Some(0)),
            Err(InvalidRateLimit::ZeroBurst)
        );
        assert_eq!(
            RateLimitConfig::new(60, Some(RateLimitConfig::MAX_BURST + 1)),
            Err(InvalidRateLimit::BurstTooLarge {
                burst: RateLimitConfig::MAX_BURST + 1,
                max: RateLimitConfig::MAX_BURST,
            })
        );
        let at_max = RateLimitConfig::new(1, Some(RateLimitConfig::MAX_BURST))
            .expect("the largest burst is accepted");
        assert_eq!(at_max.burst.get(), RateLimitConfig::MAX_BURST);
    }

    #[test]
    fn config_defaults_the_burst_to_one_minutes_worth_capped() {
        let config = RateLimitConfig::new(90, None).expect("valid");
        assert_eq!((config.per_minute.get(), config.burst.get()), (90, 90));
        let config = RateLimitConfig::new(u32::MAX, None).expect("valid");
        assert_eq!(config.burst.get(), RateLimitConfig::MAX_BURST);
    }

    #[test]
    fn config_from_settings_is_off_when_unset_and_refuses_a_lone_burst() {
        assert_eq!(RateLimitConfig::from_settings(None, None), Ok(None));
        assert_eq!(
            RateLimitConfig::from_settings(None, Some(10)),
            Err(InvalidRateLimit::BurstWithoutLimit)
        );
        assert_eq!(
            RateLimitConfig::from_settings(Some(30), Some(10)),
            Ok(Some(config(30, 10)))
        );
        assert_eq!(
            RateLimitConfig::from_settings(Some(0), None),
            Err(InvalidRateLimit::ZeroPerMinute)
        );
    }

    #[tokio::test]
    async fn a_hand_built_config_over_the_largest_burst_is_clamped_not_a_panic() {
        pause();
        let config = RateLimitConfig {
            per_minute: NonZeroU32::MIN,
            burst: NonZeroU32::MAX,
        };
        let limiter = RateLimiter::new(config, clock());
        let alice = customer("alice");
        assert_eq!(limiter.check(&alice), Ok(()));
    }
}
