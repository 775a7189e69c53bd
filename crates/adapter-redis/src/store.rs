//! The idempotency store over Redis: an atomic claim, and outcomes and
//! failed attempts recorded only by the request that holds the claim. A
//! failed attempt, or a claim past its deadline, is taken over by its
//! retry with the same compare-and-set, so that exactly one retry wins it.
//! Each customer's keys are indexed by deadline and expiry, so that a
//! customer at its bound makes room from its own keys alone.

use std::{fmt, sync::LazyLock, time::Duration};

use async_trait::async_trait;
use domain::{Claim, ClaimTerms, CustomerId, IdempotencyKey, IdempotencyStore, Lease, StoreError};
use redis::{Script, aio::ConnectionManager};

use crate::{
    ConnectError, RedisConfig,
    connection::{Failure, NOW_MS, Redis, hex, millis},
    record::Record,
};

/// What the scripts share: Redis's own clock, and the upkeep of the
/// indexes of one customer's keys.
///
/// Every script is given, as `KEYS`, the key, then the customer's two
/// indexes (sorted sets whose members are the customer's idempotency keys
/// as the client sent them): the claims in flight, scored by deadline,
/// and the entries that may be forgotten to make room (kept records,
/// failed attempts, claims past their deadline), scored by expiry. Scores
/// are milliseconds of Redis's `TIME`, the one clock every instance
/// shares; no instance's clock is read. The indexes live as long as the
/// longest-lived key they name.
const INDEXES: &str = r"
local function keep_index(index, ttl)
  if redis.call('PTTL', index) < ttl then
    redis.call('PEXPIRE', index, ttl)
  end
end
";

/// Claims a free key, or reports what holds it.
///
/// ARGV: the idempotency key (the indexes' member), the claim, its time in
/// flight (ms), its lifetime (ms: in flight, then the retention), the
/// customer's bound, and what is put before a member to make its key.
///
/// When the key holds something, returns `{0, value, PTTL}`: whether that
/// is a claim past its deadline is for the caller to read. Otherwise
/// makes room under the customer's bound, from the customer's own entries
/// that may be forgotten (the one closest to its expiry first), sets the
/// claim and returns `{1, "", 0}`; when there is nothing to forget, sets
/// nothing and returns `{-1, "", keys held}`. Claims found past their
/// deadline first move to the entries that may be forgotten, each once,
/// at most 100 a call, the soonest first, so that a script never blocks
/// Redis for long (10,000 at once take some 40 ms): what is counted is
/// right either way, and the claims left behind were due later.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{INDEXES}{}",
        r"
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local now = now_ms()
local in_flight, lifetime, bound = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[2], member)
  local left = redis.call('PTTL', ARGV[6] .. member)
  if left > 0 then
    redis.call('ZADD', KEYS[3], now + left, member)
    keep_index(KEYS[3], left)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local held = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
while held >= bound do
  local oldest = redis.call('ZPOPMIN', KEYS[3])[1]
  if not oldest then
    return {-1, '', held}
  end
  redis.call('DEL', ARGV[6] .. oldest)
  held = held - 1
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', lifetime)
redis.call('ZADD', KEYS[2], now + in_flight, ARGV[1])
keep_index(KEYS[2], lifetime)
return {1, '', 0}
"
    ))
});

/// What [`CLAIM`] answers first.
const FOUND: i64 = 0;
const ACQUIRED: i64 = 1;
const FULL: i64 = -1;

/// Replaces the value with ARGV[2], kept ARGV[3] ms, only while it is still
/// exactly ARGV[1], and files the key (member ARGV[4]) in the customer's
/// indexes: as a claim in flight for ARGV[5] ms, or, when that is 0, as an
/// entry that may be forgotten. Returns 1 if it did, 0 if not. The one
/// compare-and-set behind every write after the claim: a claim replaced by
/// its outcome (complete) or by the note of its failure (release), and
/// that note, or a claim past its deadline, replaced by the claim of its
/// retry (takeover).
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{INDEXES}{}",
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local now = now_ms()
local ttl, in_flight = tonumber(ARGV[3]), tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if in_flight > 0 then
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[2], now + in_flight, ARGV[4])
  keep_index(KEYS[2], ttl)
else
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
  keep_index(KEYS[3], ttl)
end
return 1
"
    ))
});

/// How often a claim tries again when the failed attempt (or the claim
/// past its deadline) that it read was gone before its takeover: another
/// retry took it over, the request that held the claim finished late, or
/// it expired. Past that the key is contended: in flight.
const CLAIM_ATTEMPTS: usize = 3;

/// Claims, outcomes and failed attempts of idempotency keys in Redis, shared
/// by every Maestro instance that uses the same server and key prefix.
///
/// Cheap to clone: clones share the [`Redis`] handle's multiplexed
/// connection, which reconnects on its own after a failure (the command
/// that saw the failure fails, and its request is answered 503).
#[derive(Clone)]
pub struct RedisIdempotencyStore {
    /// Connected on first use, and again after a failed first attempt, so
    /// that the service starts (and says it is not ready) while Redis is
    /// down.
    redis: Redis,
}

impl fmt::Debug for RedisIdempotencyStore {
    // The connection's own Debug output could show the URL, and with it a
    // password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("redis", &self.redis)
            .finish()
    }
}

impl RedisIdempotencyStore {
    /// A store for the server of `config`, which it connects to on first
    /// use (and tries again on each use until it answers): the service
    /// starts while Redis is down, and its readiness says so.
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] or [`ConnectError::TlsUnsupported`] for
    /// a URL this store cannot use.
    pub fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
        Redis::new(config).map(|redis| Self::on(&redis))
    }

    /// Connects to the server of `config`, and fails if it does not answer,
    /// so that a wrong URL shows at once.
    ///
    /// # Errors
    /// As [`RedisIdempotencyStore::new`]; [`ConnectError::Connect`] when the
    /// server does not answer within the connect timeout.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        Redis::connect(config).await.map(|redis| Self::on(&redis))
    }

    /// A store on `redis`'s connection, under its
    /// [`RedisConfig::key_prefix`].
    pub fn on(redis: &Redis) -> Self {
        Self {
            redis: redis.clone(),
        }
    }

    /// The handle this store talks to Redis through, to share with the
    /// other stores.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The connection, made now if it was not yet.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        Ok(self.redis.connection().await?)
    }

    /// Whether Redis answers, for readiness checks.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.redis
            .ping()
            .await
            .map_err(|err| StoreError::failed("Redis PING failed").with_source(err))
    }

    fn keys(&self, scope: &CustomerId, key: &IdempotencyKey) -> Keys {
        Keys::new(self.redis.key_prefix(), scope, key)
    }
}

/// The Redis keys that one customer's key involves.
struct Keys {
    /// What holds the key: the prefix, the customer in hex, a colon, the
    /// key. Hex never holds a colon, so the first colon after the prefix
    /// ends the customer, and no two customers' keys can meet.
    entry: String,
    /// The customer's claims in flight, by deadline: the prefix,
    /// `in-flight:`, the customer in hex. What follows the prefix does not
    /// start with hex and a colon, so it is no customer's key.
    in_flight: String,
    /// The customer's entries that may be forgotten, by expiry: the prefix,
    /// `forgettable:`, the customer in hex.
    forgettable: String,
    /// What is put before a key to make its [`Keys::entry`].
    customer_prefix: String,
    /// The key as the client sent it: its member in the indexes.
    member: String,
}

impl Keys {
    fn new(prefix: &str, scope: &CustomerId, key: &IdempotencyKey) -> Self {
        let customer = hex(scope.as_str());
        let customer_prefix = format!("{prefix}{customer}:");
        Self {
            entry: format!("{customer_prefix}{key}"),
            in_flight: format!("{prefix}in-flight:{customer}"),
            forgettable: format!("{prefix}forgettable:{customer}"),
            customer_prefix,
            member: key.as_str().to_owned(),
        }
    }
}

fn failed(command: &str, err: redis::RedisError) -> StoreError {
    Failure::redis(command, err).into()
}

impl RedisIdempotencyStore {
    async fn try_claim(
        &self,
        keys: &Keys,
        fingerprint: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let mut connection = self.connection().await?;
        let in_flight = millis(terms.in_flight);
        let retention = millis(terms.retention);
        let lifetime = in_flight.saturating_add(retention);
        for _ in 0..CLAIM_ATTEMPTS {
            let claim = Record::claim(fingerprint, retention).encode();
            let mut invocation = CLAIM.key(&keys.entry);
            invocation
                .key(&keys.in_flight)
                .key(&keys.forgettable)
                .arg(&keys.member)
                .arg(&claim)
                .arg(in_flight)
                .arg(lifetime)
                .arg(terms.keys_per_customer)
                .arg(&keys.customer_prefix);
            // What holds the key and its PTTL; or, at the bound with
            // nothing to forget, how many keys the customer holds.
            let (found, current, count): (i64, String, i64) = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|err| failed("EVALSHA claim", err))?;
            match found {
                ACQUIRED => return Ok(Claim::Acquired(Lease::new(claim))),
                FULL => {
                    return Err(StoreError::failed(format!(
                        "a customer holds {count} idempotency keys, its bound, all of them claims in flight"
                    )));
                }
                FOUND => {}
                other => {
                    return Err(StoreError::failed(format!(
                        "the Redis claim script answered {other}"
                    )));
                }
            }
            let unreadable =
                |err| StoreError::failed(format!("reading {}", keys.entry)).with_source(err);
            let record = Record::decode(&current).map_err(unreadable)?;
            if record.fingerprint() != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let Some(kept) = record.kept().map_err(unreadable)? {
                return Ok(Claim::Done(kept));
            }
            if record.in_flight(count) {
                return Ok(Claim::InFlight);
            }
            // A failed attempt, or a claim past its deadline: replace
            // exactly the value read with this claim, so that of concurrent
            // retries only one wins it, and a late answer of the lost
            // request wins over none.
            let takeover = Replacement {
                expected: &current,
                new: &claim,
                ttl: lifetime,
                in_flight,
            };
            if self.replace("EVALSHA takeover", keys, &takeover).await? {
                return Ok(Claim::Retry(Lease::new(claim)));
            }
            // Someone else took it over, the lost request finished, or it
            // expired: look again.
        }
        Ok(Claim::InFlight)
    }

    /// Sets the key as `replacement` says, only while it holds exactly
    /// what it expects; whether it did.
    async fn replace(
        &self,
        what: &str,
        keys: &Keys,
        replacement: &Replacement<'_>,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = REPLACE.key(&keys.entry);
        invocation
            .key(&keys.in_flight)
            .key(&keys.forgettable)
            .arg(replacement.expected)
            .arg(replacement.new)
            .arg(replacement.ttl)
            .arg(&keys.member)
            .arg(replacement.in_flight);
        let replaced: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|err| failed(what, err))?;
        Ok(replaced == 1)
    }

    /// Replaces the claim that `lease` proves with `record`, kept `ttl`;
    /// [`StoreError::ClaimLost`] when the key no longer holds that claim.
    async fn replace_claim(
        &self,
        what: &str,
        keys: &Keys,
        lease: &Lease,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let replacement = Replacement {
            expected: lease.as_str(),
            new: &record.encode(),
            ttl: millis(ttl),
            in_flight: 0,
        };
        if self.replace(what, keys, &replacement).await? {
            Ok(())
        } else {
            Err(StoreError::ClaimLost)
        }
    }
}

/// One compare-and-set of [`REPLACE`].
struct Replacement<'a> {
    /// The exact value the key must hold.
    expected: &'a str,
    /// Its new value.
    new: &'a str,
    /// The new value's lifetime, in milliseconds.
    ttl: u64,
    /// For a new claim, its time in flight, in milliseconds; 0 for a
    /// record or a failed attempt.
    in_flight: u64,
}

/// The claim a lease of this store holds: the claim as stored, which names
/// the fingerprint.
fn claim_of(lease: &Lease) -> Result<Record, StoreError> {
    Record::decode(lease.as_str())
        .map_err(|err| StoreError::failed("a lease of another store").with_source(err))
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let keys = self.keys(scope, key);
        self.redis
            .within("claim", self.try_claim(&keys, fingerprint, terms))
            .await
    }

    async fn complete(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), StoreError> {
        let done = Record::done(claim_of(lease)?.fingerprint(), record);
        let keys = self.keys(scope, key);
        self.redis
            .within(
                "complete",
                self.replace_claim("EVALSHA complete", &keys, lease, &done, retention),
            )
            .await
    }

    async fn release(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let failed = Record::failed(claim_of(lease)?.fingerprint());
        let keys = self.keys(scope, key);
        self.redis
            .within(
                "release",
                self.replace_claim("EVALSHA release", &keys, lease, &failed, retention),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(customer: &str, key: &str) -> Keys {
        Keys::new(
            "maestro:idempotency:",
            &CustomerId::parse(customer).unwrap(),
            &IdempotencyKey::parse(key).unwrap(),
        )
    }

    fn key_of(customer: &str, key: &str) -> String {
        keys_of(customer, key).entry
    }

    #[test]
    fn keys_carry_the_prefix_the_customer_in_hex_and_the_key() {
        assert_eq!(
            key_of("acme", "order-42"),
            "maestro:idempotency:61636d65:order-42"
        );
        assert_eq!(key_of("é {x}", "k"), "maestro:idempotency:c3a9207b787d:k");
    }

    #[test]
    fn a_customers_indexes_are_no_customers_key() {
        let keys = keys_of("acme", "order-42");
        assert_eq!(keys.in_flight, "maestro:idempotency:in-flight:61636d65");
        assert_eq!(keys.forgettable, "maestro:idempotency:forgettable:61636d65");
        assert_eq!(keys.customer_prefix, "maestro:idempotency:61636d65:");
        assert_eq!(keys.member, "order-42");
        // An index names no key: what follows the prefix is not hex and a
        // colon.
        for index in [keys.in_flight, keys.forgettable] {
            let rest = index.strip_prefix("maestro:idempotency:").unwrap();
            let (head, _) = rest.split_once(':').unwrap();
            assert!(!head.bytes().all(|b| b.is_ascii_hexdigit()), "{index}");
        }
    }

    #[test]
    fn a_customer_id_cannot_reach_another_customers_keys() {
        // Without the encoding, "a:b" + "c" and "a" + "b:c" would meet.
        assert_ne!(key_of("a:b", "c"), key_of("a", "b:c"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_does_not_answer_fails_at_connect_without_naming_it() {
        // Nothing listens on port 1; on the paused clock the reconnection's
        // backoff takes no real time.
        let mut config = RedisConfig::new("redis://127.0.0.1:1");
        config.connect_timeout = Duration::from_millis(300);
        let err = RedisIdempotencyStore::connect(&config).await.unwrap_err();
        assert!(matches!(err, ConnectError::Connect(_)), "{err:?}");
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    }

    #[tokio::test]
    async fn a_tls_or_malformed_url_is_refused_before_any_connection() {
        let err = RedisIdempotencyStore::connect(&RedisConfig::new("rediss://:hunter2@cache:6380"))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::TlsUnsupported), "{err:?}");
        let err = RedisIdempotencyStore::connect(&RedisConfig::new("http://:hunter2@cache"))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::InvalidUrl), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
    }
}
