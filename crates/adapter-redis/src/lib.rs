//! Maestro's Redis adapter: the idempotency store that several Maestro
//! instances behind one load balancer share (`MAESTRO_REDIS_URL`).
//!
//! [`RedisIdempotencyStore`] implements [`domain::IdempotencyStore`]. A claim
//! is one `SET key claim NX PX in_flight`: Redis lets exactly one of many
//! concurrent claims through, whichever instance sends it, and the claim
//! expires on its own if the instance dies before it records an outcome.
//! Recording an outcome (`complete`) and noting a failed attempt
//! (`release`) replace the claim with one small Lua compare-and-set that
//! acts only while the key still holds this request's claim, so a request
//! that outlived its claim never overwrites the request that claimed the
//! key after it. A claim refused by the note of a failed attempt with its
//! fingerprint takes the key over with the same compare-and-set, from
//! exactly the note it read, so that of concurrent retries exactly one
//! wins and is told that an earlier attempt failed.
//!
//! Keys are `<prefix><customer in hex>:<key>`: the customer is hex-encoded
//! so that no customer id can forge another customer's keys, and so that
//! no character of it means anything to Redis.
//!
//! Only plain `redis://` and `unix://` connections are supported; `rediss://`
//! (TLS) is refused at startup rather than failing on the first request.
//!
//! # What a key holds
//!
//! A small JSON document that `redis-cli GET` shows: the state, the
//! fingerprint, and the claim's random token
//! (`{"state":"in_flight","fingerprint":"...","token":"..."}`), the note of
//! a failed attempt (`{"state":"failed","fingerprint":"..."}`), or the record
//! the domain kept of a finished request, byte for byte in base64
//! (`{"state":"done","fingerprint":"...","record":"..."}`). The store never
//! reads the record's bytes.
//!
//! Records written before they were opaque bytes (`"status"` and `"body"`
//! in place of `"record"`) are not read: the domain keeps its records in a
//! form of its own, which the old status and body cannot be turned into
//! here. A repeat that finds one gets [`domain::StoreError::Failed`] (the
//! client gets 503 and may retry) until the old record's retention ends;
//! nothing is run twice and nothing is misread. Likewise an instance of the
//! old version finds the new done records unreadable, so a rolling upgrade
//! turns repeats of keys completed on the other version into 503s for the
//! retention, and no more. Claims and failed-attempt notes have the same
//! shape in both versions and are read by either.
//!
//! # Tests
//!
//! The tests that need a real `redis-server` are a test target of their own,
//! built only with the `redis-server` feature:
//!
//! ```text
//! export MAESTRO_TEST_REDIS_URL="$(scripts/redis-test-server.sh)"
//! cargo test -p adapter-redis --features redis-server --test redis_server
//! scripts/redis-test-server.sh stop
//! ```

mod record;
mod store;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use store::RedisIdempotencyStore;

/// Where Redis is and how to talk to it. `app` fills it from the
/// environment (or the same flags on `maestro serve`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server (`MAESTRO_REDIS_URL`): `redis://[user:password@]host[:port][/db]`
    /// or `unix:///path/to/socket`. A secret, since it may hold a password.
    pub url: SecretString,
    /// Put before every key, so that Maestro's keys stand apart in a shared
    /// Redis. Default [`Self::DEFAULT_KEY_PREFIX`].
    pub key_prefix: String,
    /// The longest one store operation may take, waiting for a reconnection
    /// included, before it fails and its request is answered 503 rather
    /// than left hanging. Default [`Self::DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// The longest one connection attempt may take. Default
    /// [`Self::DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
}

impl RedisConfig {
    /// The default [`RedisConfig::key_prefix`].
    pub const DEFAULT_KEY_PREFIX: &'static str = "maestro:idempotency:";
    /// The default [`RedisConfig::timeout`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// The default [`RedisConfig::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    /// The settings for the server at `url` (a `String` or a
    /// [`SecretString`]), with every default.
    pub fn new(url: impl Into<SecretString>) -> Self {
        Self {
            url: url.into(),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// The store could not be set up. The messages name the setting but never
/// echo the URL, which may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse as a Redis URL.
    #[error(
        "MAESTRO_REDIS_URL is not a Redis URL (redis://[user:password@]host[:port][/db] or unix:///path)"
    )]
    InvalidUrl,
    /// The URL asks for TLS, which this build does not speak.
    #[error(
        "MAESTRO_REDIS_URL asks for TLS (rediss://), which is not supported; use redis:// over a trusted network"
    )]
    TlsUnsupported,
    /// Redis did not answer.
    #[error("cannot connect to Redis at MAESTRO_REDIS_URL")]
    Connect(#[source] redis::RedisError),
}
