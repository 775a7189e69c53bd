//! One Redis server as every store of this crate talks to it: a shared
//! multiplexed connection made on first use, the operation timeout, and
//! dedicated connections for the commands that block.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use domain::{StorageError, StoreError};
use redis::{
    AsyncConnectionConfig, Client,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};
use tokio::sync::OnceCell;

use crate::{ConnectError, RedisConfig};

/// How often the connection is tried again, after the first attempt, before
/// a reconnection gives up (the next request starts another). Few, and
/// soon: requests wait for a reconnection, within the operation timeout.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A handle to one Redis server, shared by the stores built on it
/// ([`crate::RedisIdempotencyStore::on`], [`crate::RedisEventLog::new`],
/// [`crate::RedisWebhookStore::new`], [`crate::RedisDeliveryQueue::new`]).
///
/// Cheap to clone: clones share one multiplexed connection, made on first
/// use (so that the service starts, and says it is not ready, while Redis
/// is down), which reconnects on its own after a failure (the command that
/// saw the failure fails). Commands that block the connection (`XREAD
/// BLOCK`) never go through it: they get a connection of their own
/// ([`crate::RedisEventLog`] keeps one per log).
#[derive(Clone)]
pub struct Redis {
    shared: Arc<OnceCell<ConnectionManager>>,
    client: Client,
    manager_config: ConnectionManagerConfig,
    timeout: Duration,
    connect_timeout: Duration,
    key_prefix: String,
    feed_key_prefix: String,
}

impl fmt::Debug for Redis {
    // The client's own Debug output could show the URL, and with it a
    // password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("key_prefix", &self.key_prefix)
            .field("feed_key_prefix", &self.feed_key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A handle on the server of `config`, which connects on first use
    /// (and tries again on each use until it answers).
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] or [`ConnectError::TlsUnsupported`] for
    /// a URL this crate cannot use.
    pub fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
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
        Ok(Self {
            shared: Arc::new(OnceCell::new()),
            client,
            manager_config,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            key_prefix: config.key_prefix.clone(),
            feed_key_prefix: config.feed_key_prefix.clone(),
        })
    }

    /// Connects to the server of `config`, and fails if it does not answer,
    /// so that a wrong URL shows at once.
    ///
    /// # Errors
    /// As [`Redis::new`]; [`ConnectError::Connect`] when the server does
    /// not answer within the connect timeout.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let redis = Self::new(config)?;
        redis
            .shared
            .get_or_try_init(|| {
                redis
                    .client
                    .get_connection_manager_with_config(redis.manager_config.clone())
            })
            .await
            .map_err(ConnectError::Connect)?;
        Ok(redis)
    }

    /// Whether Redis answers a `PING` within the timeout, for readiness
    /// checks.
    ///
    /// # Errors
    /// [`StorageError`] when it does not.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.within("PING", async {
            let mut connection = self.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .map_err(|err| Failure::redis("PING", err).into())
        })
        .await
    }

    /// The shared connection, made now if it was not yet.
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, Failure> {
        self.shared
            .get_or_try_init(|| {
                self.client
                    .get_connection_manager_with_config(self.manager_config.clone())
            })
            .await
            .cloned()
            .map_err(|err| Failure::redis("connecting", err))
    }

    /// A connection of its own, for a command that holds it while it
    /// blocks (`XREAD BLOCK`): on the shared, multiplexed connection it
    /// would hold up every command behind it. `response_timeout` must
    /// outlast the longest block.
    pub(crate) async fn dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, redis::RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The longest one store operation may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What is put before every idempotency key.
    pub(crate) fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// What is put before every key of the feed and of webhooks.
    pub(crate) fn feed_key_prefix(&self) -> &str {
        &self.feed_key_prefix
    }

    /// Runs one store operation within the timeout. The connection's own
    /// response timeout covers one command, but not the wait for a
    /// reconnection, which retries with backoff.
    pub(crate) async fn within<T, E: From<Failure>>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::time::timeout(self.timeout, operation)
            .await
            .unwrap_or_else(|_| {
                Err(
                    Failure::new(format!("Redis {what} took longer than {:?}", self.timeout))
                        .into(),
                )
            })
    }
}

/// Why an operation on Redis failed, before it becomes the error of the
/// port it served.
#[derive(Debug)]
pub(crate) struct Failure {
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    pub(crate) fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    /// A command that failed.
    pub(crate) fn redis(command: &str, err: redis::RedisError) -> Self {
        Self::new(format!("Redis {command} failed")).with_source(err)
    }

    /// Something read from Redis that this crate cannot read.
    pub(crate) fn unreadable(what: impl fmt::Display, err: impl Into<BoxError>) -> Self {
        Self::new(format!("unreadable {what} in Redis")).with_source(err)
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        let err = StoreError::failed(failure.context);
        match failure.source {
            Some(source) => err.with_source(source),
            None => err,
        }
    }
}

impl From<Failure> for StorageError {
    fn from(failure: Failure) -> Self {
        let err = StorageError::new(failure.context);
        match failure.source {
            Some(source) => err.with_source(source),
            None => err,
        }
    }
}

/// The longest ttl sent, some 100 years: Redis refuses an expiry that
/// overflows its clock.
const MAX_TTL_MILLIS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

/// Milliseconds for `PX`, which refuses 0 and overflowing expiries.
pub(crate) fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MILLIS)
        .clamp(1, MAX_TTL_MILLIS)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `text`'s bytes in lower-case hex: a customer id in a key name, so that
/// no customer id can forge another's keys, and no character of it means
/// anything to Redis.
pub(crate) fn hex(text: &str) -> String {
    let mut out = String::with_capacity(2 * text.len());
    for byte in text.bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// The script prelude that reads Redis's own clock, the one every instance
/// shares: `now_ms()`.
pub(crate) const NOW_MS: &str = r"
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(86_400)), 86_400_000);
        assert_eq!(millis(Duration::MAX), MAX_TTL_MILLIS);
    }

    #[test]
    fn hex_spells_every_byte() {
        assert_eq!(hex("acme"), "61636d65");
        assert_eq!(hex("é {x}"), "c3a9207b787d");
        assert_eq!(hex(""), "");
    }

    #[test]
    fn failures_become_either_ports_error_with_their_cause() {
        let failure = || Failure::new("Redis GET failed").with_source("refused");
        let store = StoreError::from(failure());
        assert_eq!(
            store.to_string(),
            "idempotency store failed: Redis GET failed"
        );
        assert!(std::error::Error::source(&store).is_some());
        let storage = StorageError::from(failure());
        assert_eq!(storage.to_string(), "Redis GET failed");
        assert!(std::error::Error::source(&storage).is_some());
    }
}
