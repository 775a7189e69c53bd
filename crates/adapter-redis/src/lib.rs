//! Maestro's Redis adapter: what several Maestro instances behind one load
//! balancer share (`MAESTRO_REDIS_URL`): the idempotency store, the rate
//! limits, the feed of run changes, webhooks and their pending deliveries.
//!
//! Every store talks to Redis through a [`Redis`] handle: one multiplexed
//! connection made on first use, shared by the stores built on the same
//! handle, and one operation timeout. Every operation that writes is one
//! Lua script, atomic in Redis whichever instance sends it.
//!
//! - [`RedisIdempotencyStore`] ([`domain::IdempotencyStore`]), under
//!   [`RedisConfig::key_prefix`]; described below.
//! - [`RedisRateLimiter`]: each customer's GCRA bucket in one key, checked
//!   by one atomic script on Redis's clock (see its module).
//! - [`RedisEventLog`] ([`domain::EventLog`] and [`domain::Listeners`]):
//!   the feed in a Redis Stream, read by every instance through one
//!   blocking reader per instance (see its documentation).
//! - [`RedisWebhookStore`] ([`domain::WebhookStore`]) and
//!   [`RedisDeliveryQueue`] ([`domain::DeliveryQueue`]): webhooks, their
//!   signing secrets, and the deliveries waiting to be made. Redis holds
//!   the secrets in the clear (base64): it must be protected as the
//!   secrets are (a password, no access from outside the service's network,
//!   snapshots kept as secrets).
//!
//! The feed's and the webhooks' keys are under
//! [`RedisConfig::feed_key_prefix`]:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `events` | stream | the feed: `customer`, `run` (JSON) per entry |
//! | `events:trimmed` | string | the newest id trimmed away |
//! | `events:lease` | string | who watches the engine, with a ttl |
//! | `events:cursor` | string | where the engine's source resumes |
//! | `listeners` | sorted set | customers with an open stream, by expiry |
//! | `webhooks:<customer hex>` | hash | webhook id → webhook (JSON) |
//! | `webhook-customers` | set | customers with a webhook |
//! | `deliveries` | hash | delivery id → delivery (JSON) |
//! | `deliveries:attempts` | hash | delivery id → attempts made |
//! | `deliveries:scheduled` | hash | delivery id → when its next attempt is due (µs) |
//! | `deliveries:due` | sorted set | delivery id by when it may be taken (µs) |
//! | `deliveries:first-due` | sorted set | delivery id by first due time (µs) |
//! | `deliveries:dispatched` | string | the last event turned into deliveries |
//!
//! These need Redis 6.2 or later (`XTRIM MINID`, `ZADD GT`), or Valkey;
//! like the idempotency store, a single Redis (or a primary with
//! replicas), not a Redis Cluster.
//!
//! # The idempotency store
//!
//! [`RedisIdempotencyStore`] implements [`domain::IdempotencyStore`]. Every
//! operation is one Lua script, atomic in Redis whichever instance sends
//! it. A claim sets a free key to the claim, kept for the claim's time in
//! flight and its retention after; a claim found past its deadline (its
//! instance died, or its request outlived it) reads as a failed attempt.
//! Recording an outcome (`complete`) and noting a failed attempt
//! (`release`) replace the claim with a compare-and-set that acts only
//! while the key still holds this request's claim, so a request that lost
//! its claim to a retry never overwrites that retry. A claim refused by
//! the note of a failed attempt with its fingerprint, or by a claim past
//! its deadline, takes the key over with the same compare-and-set, from
//! exactly the value it read, so that of concurrent retries exactly one
//! wins and is told that an earlier attempt failed.
//!
//! Keys are `<prefix><customer in hex>:<key>`: the customer is hex-encoded
//! so that no customer id can forge another customer's keys, and so that
//! no character of it means anything to Redis.
//!
//! # Time
//!
//! No instance's clock is read: every instance sees the same deadlines,
//! however their clocks drift. A claim's deadline is kept in the claim as
//! the part of the key's lifetime left when it passes (`deadline_pttl`, the
//! retention), and compared with the key's `PTTL`, on Redis's own clock,
//! the one that expires keys; so the deadline lives in the value, which
//! never changes while it is a lease. The indexes below are scored with
//! Redis's `TIME`, read inside the scripts. This needs Redis 5 or later
//! (scripts that read `TIME` before they write), or Valkey.
//!
//! # The bound on a customer's keys
//!
//! Each customer has two sorted sets of its keys, kept by the same
//! scripts: `<prefix>in-flight:<customer in hex>`, its claims in flight by
//! deadline, and `<prefix>forgettable:<customer in hex>`, its kept
//! records, failed attempts and claims past their deadline, by expiry.
//! Neither name can be a key: what follows the prefix is not hex and a
//! colon. A new key counts both; at the bound, the customer's forgettable
//! key closest to its expiry is deleted (never another customer's, never a
//! claim in flight), and with none the claim fails. Claims found past their
//! deadline move from one set to the other, each once, a hundred at most
//! per claim so that no script holds Redis up for long; the sets expire
//! with the last key they name. Should they ever disagree with the keys
//! (a key deleted by hand, or evicted under `maxmemory`), the scripts mend
//! them as they go: a set member whose key is gone is dropped when met.
//! The scripts touch several keys of one customer, so this store is for a
//! single Redis (or a primary with replicas), not a Redis Cluster.
//!
//! Only plain `redis://` and `unix://` connections are supported; `rediss://`
//! (TLS) is refused at startup rather than failing on the first request.
//!
//! # What a key holds
//!
//! A small JSON document that `redis-cli GET` shows: the state, the
//! fingerprint, the claim's random token and its deadline
//! (`{"state":"in_flight","fingerprint":"...","token":"...","deadline_pttl":86400000}`),
//! the note of a failed attempt (`{"state":"failed","fingerprint":"..."}`),
//! or the record the domain kept of a finished request, byte for byte in
//! base64 (`{"state":"done","fingerprint":"...","record":"..."}`). The store
//! never reads the record's bytes.
//!
//! Claims written before claims had deadlines (no `deadline_pttl`) are in
//! flight until they expire, as they were then. An instance of that earlier
//! version reads today's claims as in flight until they expire, the
//! retention after their deadline: during a rolling upgrade, a key whose
//! instance died is refused with 409 on the old instances for that long,
//! while the new ones take it over as a retry.
//!
//! Records written before they were opaque bytes (`"status"` and `"body"`
//! in place of `"record"`) are not read: the domain keeps its records in a
//! form of its own, which the old status and body cannot be turned into
//! here. A repeat that finds one gets [`domain::StoreError::Failed`] (the
//! client gets 503 and may retry) until the old record's retention ends;
//! nothing is run twice and nothing is misread. Likewise an instance of the
//! old version finds the new done records unreadable, so a rolling upgrade
//! turns repeats of keys completed on the other version into 503s for the
//! retention, and no more. Claims (as said above) and failed-attempt
//! notes are read by either version.
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

mod connection;
mod events;
mod form;
mod ratelimit;
mod record;
mod store;
mod webhooks;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use connection::Redis;
pub use events::RedisEventLog;
pub use ratelimit::{RateDecision, RateLimitError, RedisRateLimiter};
pub use store::RedisIdempotencyStore;
pub use webhooks::{RedisDeliveryQueue, RedisWebhookStore};

/// Where Redis is and how to talk to it. `app` fills it from the
/// environment (or the same flags on `maestro serve`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server (`MAESTRO_REDIS_URL`): `redis://[user:password@]host[:port][/db]`
    /// or `unix:///path/to/socket`. A secret, since it may hold a password.
    pub url: SecretString,
    /// Put before every idempotency key, so that Maestro's keys stand
    /// apart in a shared Redis. Default [`Self::DEFAULT_KEY_PREFIX`].
    pub key_prefix: String,
    /// Put before every key of the feed of run changes, webhooks and
    /// deliveries. Default [`Self::DEFAULT_FEED_KEY_PREFIX`].
    pub feed_key_prefix: String,
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
    /// The default [`RedisConfig::feed_key_prefix`].
    pub const DEFAULT_FEED_KEY_PREFIX: &'static str = "maestro:feed:";
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
            feed_key_prefix: Self::DEFAULT_FEED_KEY_PREFIX.to_owned(),
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
