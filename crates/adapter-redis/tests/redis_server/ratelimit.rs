//! The shared rate limiter against a real `redis-server`: the GCRA
//! arithmetic, run by the script with time moved by hand (`check_at`),
//! the bucket's expiry, and two instances under load holding one limit
//! together on Redis's own clock.

use std::{num::NonZeroU32, time::Duration};

use adapter_redis::{RateDecision, Redis, RedisConfig, RedisRateLimiter};
use domain::CustomerId;
use tokio::time::Instant;

use super::{raw_connection, url};

/// A limiter with buckets of its own (a fresh key prefix) on its own
/// connection, as another instance would have.
fn limiter(prefix: &str) -> RedisRateLimiter {
    RedisRateLimiter::new(Redis::new(&RedisConfig::new(url())).unwrap()).with_key_prefix(prefix)
}

fn fresh_prefix() -> String {
    format!("maestro-test-ratelimit:{}:", uuid::Uuid::new_v4().simple())
}

fn acme() -> CustomerId {
    CustomerId::parse("acme").unwrap()
}

/// A quota of `per_minute` with `burst`, as the service passes it: one
/// token every `60 s / per_minute` (in whole nanoseconds, as the local
/// limiter counts it).
fn quota(per_minute: u32, burst: u32) -> (Duration, NonZeroU32) {
    (
        Duration::from_secs(60) / per_minute,
        NonZeroU32::new(burst).unwrap(),
    )
}

/// A limiter at a moment of its own, moved by hand.
struct Manual {
    limiter: RedisRateLimiter,
    quota: (Duration, NonZeroU32),
    /// Since the Unix epoch: 2026-11-29T09:00:00Z, then as moved.
    now: Duration,
}

impl Manual {
    fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            limiter: limiter(&fresh_prefix()),
            quota: quota(per_minute, burst),
            now: Duration::from_secs(1_795_942_800),
        }
    }

    async fn check(&self, customer: &CustomerId) -> RateDecision {
        let (interval, burst) = self.quota;
        self.limiter
            .check_at(customer, interval, burst, self.now)
            .await
            .unwrap()
    }

    /// How many checks in a row pass, up to `max`.
    async fn allowed_in_a_row(&self, max: u32) -> u32 {
        let mut allowed = 0;
        while allowed < max && self.check(&acme()).await == RateDecision::Allowed {
            allowed += 1;
        }
        allowed
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }
}

fn refused(wait: Duration) -> RateDecision {
    RateDecision::Refused { retry_after: wait }
}

#[tokio::test]
async fn the_burst_is_allowed_then_refused_with_the_time_until_the_next_token() {
    let limiter = Manual::new(60, 5);
    for _ in 0..5 {
        assert_eq!(limiter.check(&acme()).await, RateDecision::Allowed);
    }
    assert_eq!(
        limiter.check(&acme()).await,
        refused(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn the_wait_shrinks_as_time_passes_and_waiting_as_told_is_enough() {
    // 7 a minute: one token every 8.571428571 s, advised rounded up to the
    // microsecond.
    let mut limiter = Manual::new(7, 1);
    assert_eq!(limiter.check(&acme()).await, RateDecision::Allowed);
    assert_eq!(
        limiter.check(&acme()).await,
        refused(Duration::from_micros(8_571_429))
    );

    limiter.advance(Duration::from_secs(8));
    assert_eq!(
        limiter.check(&acme()).await,
        refused(Duration::from_micros(571_429))
    );
    limiter.advance(Duration::from_micros(571_429));
    assert_eq!(limiter.check(&acme()).await, RateDecision::Allowed);
}

#[tokio::test]
async fn the_bucket_refills_at_exactly_per_minute_over_sixty_per_second() {
    // 120 a minute: one token every 500 ms. The same steps as the local
    // limiter's test of the same name, with the same counts.
    let mut limiter = Manual::new(120, 10);
    assert_eq!(limiter.allowed_in_a_row(100).await, 10);

    limiter.advance(Duration::from_secs(1));
    assert_eq!(limiter.allowed_in_a_row(100).await, 2);

    limiter.advance(Duration::from_millis(499));
    assert_eq!(limiter.allowed_in_a_row(100).await, 0);
    limiter.advance(Duration::from_millis(1));
    assert_eq!(limiter.allowed_in_a_row(100).await, 1);

    limiter.advance(Duration::from_secs(3));
    assert_eq!(limiter.allowed_in_a_row(100).await, 6);

    // A long quiet period refills the bucket, never beyond the burst.
    limiter.advance(Duration::from_secs(3600));
    assert_eq!(limiter.allowed_in_a_row(100).await, 10);
}

#[tokio::test]
async fn refused_requests_do_not_push_the_next_allowed_one_further_away() {
    let mut limiter = Manual::new(60, 2);
    assert_eq!(limiter.allowed_in_a_row(10).await, 2);
    for _ in 0..200 {
        assert_eq!(
            limiter.check(&acme()).await,
            refused(Duration::from_secs(1))
        );
    }
    limiter.advance(Duration::from_secs(1));
    assert_eq!(limiter.check(&acme()).await, RateDecision::Allowed);
}

#[tokio::test]
async fn one_customers_flood_leaves_another_customers_bucket_untouched() {
    let limiter = Manual::new(60, 3);
    assert_eq!(limiter.allowed_in_a_row(10).await, 3);
    let bob = CustomerId::parse("bob").unwrap();
    for _ in 0..3 {
        assert_eq!(limiter.check(&bob).await, RateDecision::Allowed);
    }
    assert_eq!(limiter.check(&bob).await, refused(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_bucket_is_kept_until_it_has_refilled_and_no_longer() {
    let prefix = fresh_prefix();
    let limiter = limiter(&prefix);
    let (interval, burst) = quota(60, 5);
    for _ in 0..3 {
        let decision = limiter.check(&acme(), interval, burst).await.unwrap();
        assert_eq!(decision, RateDecision::Allowed);
    }
    let mut raw = raw_connection().await;
    let key = format!("{prefix}61636d65");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    // Three tokens spent, one a second: full again in 3 s, less the few
    // milliseconds Redis's clock moved meanwhile.
    assert!((2_500..=3_000).contains(&ttl), "PTTL {ttl}");
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(stored.parse::<f64>().is_ok(), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_under_load_hold_the_configured_limit_together_not_twice_it() {
    // 60 a minute with a burst of 50, on Redis's own clock: two instances
    // of 4 busy clients each, 400 requests in all, as fast as they go.
    let prefix = fresh_prefix();
    let instances = [limiter(&prefix), limiter(&prefix)];
    let (interval, burst) = quota(60, 50);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for instance in &instances {
        for _ in 0..4 {
            let instance = instance.clone();
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0_u32;
                for _ in 0..50 {
                    let decision = instance.check(&acme(), interval, burst).await.unwrap();
                    if decision == RateDecision::Allowed {
                        allowed += 1;
                    }
                }
                allowed
            }));
        }
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    let took = started.elapsed();

    // The burst, plus one token a second for as long as the load lasted.
    let refilled = u32::try_from(took.as_secs()).unwrap() + 1;
    println!("two instances: {allowed} of 400 allowed in {took:?}");
    assert!(allowed >= 50, "{allowed} allowed");
    assert!(
        allowed <= 50 + refilled,
        "{allowed} allowed in {took:?}: more than the one limit"
    );
}
