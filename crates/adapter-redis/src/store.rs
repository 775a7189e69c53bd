//! The idempotency store over Redis: an atomic `SET NX PX` claim, and
//! outcomes and failed attempts recorded only by the request that holds
//! the claim. A failed attempt is taken over by its retry with the same
//! compare-and-set, so that exactly one retry wins it.

use std::{fmt, future::Future, sync::LazyLock, time::Duration};

use async_trait::async_trait;
use domain::{Claim, CustomerId, IdempotencyKey, IdempotencyStore, Lease, StoreError};
use redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{ConnectError, RedisConfig, record::Record};

/// Replaces the value with ARGV[2], kept ARGV[3] ms, only while it is still
/// exactly ARGV[1]. Returns 1 if it did, 0 if not. The one compare-and-set
/// behind every write after the claim: a claim replaced by its outcome
/// (complete) or by the note of its failure (release), and that note
/// replaced by the claim of its retry (takeover).
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
            return 1
          end
          return 0",
    )
});

/// How often the connection is tried again, after the first attempt, before
/// a reconnection gives up (the next request starts another). Few, and
/// soon: requests wait for a reconnection, within the operation timeout.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// How often a claim tries again when the key changes between a refused
/// `SET NX` and what follows: it vanished before the `GET` (it expired),
/// or the failed attempt that the `GET` read was gone before the takeover
/// (another retry took it over, or it expired). Past that the key is
/// contended: in flight.
const CLAIM_ATTEMPTS: usize = 3;

/// Claims, outcomes and failed attempts of idempotency keys in Redis, shared
/// by every Maestro instance that uses the same server and key prefix.
///
/// Cheap to clone: clones share one multiplexed connection, which
/// reconnects on its own after a failure (the command that saw the failure
/// fails, and its request is answered 503).
#[derive(Clone)]
pub struct RedisIdempotencyStore {
    connection: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisIdempotencyStore {
    // The connection's own Debug output could show the URL, and with it a
    // password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisIdempotencyStore {
    /// Connects to the server of `config`, and fails if it does not answer,
    /// so that a wrong URL shows at startup.
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] or [`ConnectError::TlsUnsupported`] for
    /// a URL this store cannot use; [`ConnectError::Connect`] when the server
    /// does not answer within the connect timeout.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let url = config.url();
        if url.starts_with("rediss://") || url.starts_with("valkeys://") {
            return Err(ConnectError::TlsUnsupported);
        }
        let client = Client::open(url).map_err(|_| ConnectError::InvalidUrl)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let connection = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(ConnectError::Connect)?;
        Ok(Self {
            connection,
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
        })
    }

    /// Whether Redis answers, for readiness checks.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        self.within("PING", async {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .map_err(|err| failed("PING", err))
        })
        .await
    }

    fn redis_key(&self, scope: &CustomerId, key: &IdempotencyKey) -> String {
        redis_key(&self.key_prefix, scope, key)
    }

    /// Runs one store operation within the timeout. The connection's own
    /// response timeout covers one command, but not the wait for a
    /// reconnection, which retries with backoff.
    async fn within<T>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, operation)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::failed(format!(
                    "Redis {what} took longer than {:?}",
                    self.timeout
                )))
            })
    }
}

/// The Redis key of `key` of `scope`: the prefix, the customer in hex, a
/// colon, the key. Hex never holds a colon, so the first colon after the
/// prefix ends the customer, and no two customers' keys can meet.
fn redis_key(prefix: &str, scope: &CustomerId, key: &IdempotencyKey) -> String {
    let customer = scope.as_str();
    let mut redis_key =
        String::with_capacity(prefix.len() + 2 * customer.len() + 1 + key.as_str().len());
    redis_key.push_str(prefix);
    for byte in customer.bytes() {
        redis_key.push(char::from(HEX[usize::from(byte >> 4)]));
        redis_key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    redis_key.push(':');
    redis_key.push_str(key.as_str());
    redis_key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The longest ttl sent, some 100 years: Redis refuses an expiry that
/// overflows its clock.
const MAX_TTL_MILLIS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

/// Milliseconds for `PX`, which refuses 0 and overflowing expiries.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MILLIS)
        .clamp(1, MAX_TTL_MILLIS)
}

fn failed(command: &str, err: redis::RedisError) -> StoreError {
    StoreError::failed(format!("Redis {command} failed")).with_source(err)
}

impl RedisIdempotencyStore {
    async fn try_claim(
        &self,
        redis_key: &str,
        fingerprint: &str,
        in_flight: Duration,
    ) -> Result<Claim, StoreError> {
        let mut connection = self.connection.clone();
        for _ in 0..CLAIM_ATTEMPTS {
            let claim = Record::claim(fingerprint).encode();
            let set: Option<String> = redis::cmd("SET")
                .arg(redis_key)
                .arg(&claim)
                .arg("NX")
                .arg("PX")
                .arg(millis(in_flight))
                .query_async(&mut connection)
                .await
                .map_err(|err| failed("SET NX", err))?;
            if set.is_some() {
                return Ok(Claim::Acquired(Lease::new(claim)));
            }
            let current: Option<String> = redis::cmd("GET")
                .arg(redis_key)
                .query_async(&mut connection)
                .await
                .map_err(|err| failed("GET", err))?;
            let Some(current) = current else {
                // Gone between the two commands: it expired. Try to claim
                // it again.
                continue;
            };
            let unreadable =
                |err| StoreError::failed(format!("reading {redis_key}")).with_source(err);
            let record = Record::decode(&current).map_err(unreadable)?;
            if record.fingerprint() != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let Some(kept) = record.kept().map_err(unreadable)? {
                return Ok(Claim::Done(kept));
            }
            if !matches!(record, Record::Failed { .. }) {
                return Ok(Claim::InFlight);
            }
            // A failed attempt: replace exactly the note read with this
            // claim, so that of concurrent retries only one wins it.
            if self
                .replace("EVALSHA takeover", redis_key, &current, &claim, in_flight)
                .await?
            {
                return Ok(Claim::Retry(Lease::new(claim)));
            }
            // Someone else's retry took it over, or it expired: look again.
        }
        Ok(Claim::InFlight)
    }

    /// Sets the key to `new`, kept `ttl`, only while it holds exactly
    /// `expected`; whether it did.
    async fn replace(
        &self,
        what: &str,
        redis_key: &str,
        expected: &str,
        new: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = REPLACE.key(redis_key);
        invocation.arg(expected).arg(new).arg(millis(ttl));
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
        redis_key: &str,
        lease: &Lease,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self
            .replace(what, redis_key, lease.as_str(), &record.encode(), ttl)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::ClaimLost)
        }
    }
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
        in_flight: Duration,
    ) -> Result<Claim, StoreError> {
        let redis_key = self.redis_key(scope, key);
        self.within("claim", self.try_claim(&redis_key, fingerprint, in_flight))
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
        let redis_key = self.redis_key(scope, key);
        self.within(
            "complete",
            self.replace_claim("EVALSHA complete", &redis_key, lease, &done, retention),
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
        let redis_key = self.redis_key(scope, key);
        self.within(
            "release",
            self.replace_claim("EVALSHA release", &redis_key, lease, &failed, retention),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(customer: &str, key: &str) -> String {
        redis_key(
            "maestro:idempotency:",
            &CustomerId::parse(customer).unwrap(),
            &IdempotencyKey::parse(key).unwrap(),
        )
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

    #[test]
    fn ttls_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(86_400)), 86_400_000);
        assert_eq!(millis(Duration::MAX), MAX_TTL_MILLIS);
    }
}
