//! Per-customer rate limits that every instance shares: GCRA (the generic
//! cell rate algorithm), one atomic Lua script per check, on Redis's own
//! clock.
//!
//! A customer's bucket is one key holding its "theoretical arrival time"
//! (TAT): the instant, in microseconds of Redis's `TIME`, at which the
//! customer's bucket is full again. A request at `now` is allowed when
//! `now >= TAT - tolerance`, where the tolerance is `interval × (burst − 1)`
//! and the interval is the time one request's token takes to come back;
//! it then moves the TAT to `max(TAT, now) + interval`. A refused request
//! changes nothing, and is told to wait `TAT - tolerance - now`. This is
//! the arithmetic of the per-instance limiter (`governor`), so that the
//! same settings allow the same requests and advise the same waits,
//! shared or not. The key expires when its TAT passes, since a bucket that
//! has refilled is the same as no bucket: Redis holds only the customers
//! active within one refill period.

use std::{num::NonZeroU32, sync::LazyLock, time::Duration};

use domain::CustomerId;
use redis::Script;

use crate::{Redis, connection::hex};

/// The GCRA check of one request.
///
/// KEYS[1]: the customer's bucket. ARGV[1]: the interval, ARGV[2]: the
/// tolerance, both in microseconds (with fractions); ARGV[3]: "now" in
/// microseconds since the Unix epoch, or empty to read Redis's `TIME`
/// (always, but in this crate's tests of the arithmetic).
///
/// Returns `{1, 0}` when the request is allowed (and counted), `{0, wait}`
/// when it is refused, `wait` in whole microseconds, rounded up.
///
/// Times are Lua numbers (doubles): microseconds since the epoch are
/// exact in them until the year 2255, and the TAT is written with 17
/// significant digits, which read back to the same double.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then
  tat = now
end
local earliest = tat - tolerance
if now < earliest then
  return {0, math.ceil(earliest - now)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
return {1, 0}
",
    )
});

/// What the shared limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Allowed, and counted against the customer's quota.
    Allowed,
    /// Refused: the customer's next request would be allowed after this
    /// wait (rounded up to whole microseconds). Nothing was counted.
    Refused {
        /// The time until the customer's next request would be allowed.
        retry_after: Duration,
    },
}

/// Redis did not answer a rate-limit check. The message names what failed,
/// never the URL.
#[derive(Debug, thiserror::Error)]
#[error("Redis rate-limit check failed: {what}")]
pub struct RateLimitError {
    what: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Per-customer GCRA limits kept in Redis, shared by every instance that
/// uses the same server and key prefix. Cheap to clone.
///
/// Each check is one `EVALSHA` of one key, so it works on a single Redis,
/// a primary with replicas, or a Redis Cluster (the key names one slot).
/// It needs Redis 5 or later (a script that reads `TIME` before it
/// writes), or Valkey. The caller bounds how long it waits; see
/// `docs/decisions/0013-retries-and-shared-rate-limits.md` for what the
/// service does when Redis does not answer.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    redis: Redis,
    key_prefix: String,
}

impl RedisRateLimiter {
    /// The default key prefix: a customer's bucket is this and the
    /// customer id in hex.
    pub const DEFAULT_KEY_PREFIX: &'static str = "maestro:ratelimit:";

    /// A limiter over `redis` with [`Self::DEFAULT_KEY_PREFIX`].
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// The same limiter with its buckets under `prefix`.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Counts one request of `customer` against a quota of one request
    /// every `interval`, with `burst` allowed at once after a quiet period,
    /// on Redis's clock.
    ///
    /// # Errors
    /// [`RateLimitError`] when Redis cannot be reached or the script fails.
    pub async fn check(
        &self,
        customer: &CustomerId,
        interval: Duration,
        burst: NonZeroU32,
    ) -> Result<RateDecision, RateLimitError> {
        self.run(customer, interval, burst, None).await
    }

    /// [`Self::check`] at `now` (since the Unix epoch) instead of Redis's
    /// time: only with the `redis-server` feature, for the tests of the
    /// arithmetic, which move time by hand.
    ///
    /// # Errors
    /// As [`Self::check`].
    #[cfg(feature = "redis-server")]
    pub async fn check_at(
        &self,
        customer: &CustomerId,
        interval: Duration,
        burst: NonZeroU32,
        now: Duration,
    ) -> Result<RateDecision, RateLimitError> {
        self.run(customer, interval, burst, Some(now)).await
    }

    async fn run(
        &self,
        customer: &CustomerId,
        interval: Duration,
        burst: NonZeroU32,
        now: Option<Duration>,
    ) -> Result<RateDecision, RateLimitError> {
        let mut connection = self
            .redis
            .connection()
            .await
            .map_err(|failure| RateLimitError {
                what: "connecting",
                source: Box::new(domain::StorageError::from(failure)),
            })?;
        let interval_ns = interval.as_nanos().max(1);
        let tolerance_ns = interval_ns.saturating_mul(u128::from(burst.get() - 1));
        let mut invocation = CHECK.key(self.key(customer));
        invocation
            .arg(micros(interval_ns))
            .arg(micros(tolerance_ns))
            .arg(now.map_or_else(String::new, |now| micros(now.as_nanos())));
        let (allowed, wait): (i64, i64) =
            invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|source| RateLimitError {
                    what: "EVALSHA",
                    source: Box::new(source),
                })?;
        Ok(if allowed == 1 {
            RateDecision::Allowed
        } else {
            RateDecision::Refused {
                retry_after: Duration::from_micros(u64::try_from(wait).unwrap_or(0)),
            }
        })
    }

    /// The customer's bucket: the prefix and the customer id in hex, so
    /// that no character of the id means anything to Redis.
    fn key(&self, customer: &CustomerId) -> String {
        format!("{}{}", self.key_prefix, hex(customer.as_str()))
    }
}

/// Nanoseconds as decimal microseconds with three decimals, exact.
fn micros(nanos: u128) -> String {
    format!("{}.{:03}", nanos / 1000, nanos % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisConfig;

    #[test]
    fn durations_travel_as_exact_decimal_microseconds() {
        assert_eq!(micros(8_571_428_571), "8571428.571");
        assert_eq!(micros(1), "0.001");
        assert_eq!(micros(60_000_000_000), "60000000.000");
    }

    #[test]
    fn a_customers_bucket_is_the_prefix_and_the_customer_in_hex() {
        let redis = Redis::new(&RedisConfig::new("redis://127.0.0.1:1")).unwrap();
        let limiter = RedisRateLimiter::new(redis);
        assert_eq!(
            limiter.key(&CustomerId::parse("acme").unwrap()),
            "maestro:ratelimit:61636d65"
        );
        assert_eq!(
            limiter.key(&CustomerId::parse("é {x}").unwrap()),
            "maestro:ratelimit:c3a9207b787d"
        );
    }
}
