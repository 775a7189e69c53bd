//! Webhooks and their pending deliveries in Redis, shared by every
//! instance: a customer's bound on webhooks counted atomically with the
//! insert, and deliveries taken by one worker at a time, for a lease.
//!
//! # Keys (under the feed prefix)
//!
//! - `webhooks:<customer in hex>`: a hash, webhook id → the webhook as
//!   JSON, its signing secret with it (its 32 bytes in base64). Redis holds
//!   every webhook's secret: protect it as the secrets themselves.
//! - `webhook-customers`: the set of customers with at least one webhook,
//!   kept by the same scripts that add and delete webhooks.
//! - `deliveries`: a hash, delivery id → what the delivery tells (the
//!   webhook, the customer, the event, when it was first due) as JSON;
//!   `deliveries:attempts`, a hash, delivery id → attempts made;
//!   `deliveries:scheduled`, a hash, delivery id → when its next attempt
//!   is due, as the enqueue or the last retry said.
//! - `deliveries:due`: a sorted set of delivery ids by when each may be
//!   taken: when it is scheduled, or, once taken, when its lease ends;
//!   `deliveries:first-due`, the same by when each was first due, for the
//!   age of the oldest. Times are microseconds since the Unix epoch (exact
//!   in a double until the year 2255).
//! - `deliveries:dispatched`: the last event turned into deliveries.
//!
//! Times are the callers' (`now`, `due`, from the service's clock), not
//! Redis's: the retry schedule is the domain's.

use std::{fmt, sync::LazyLock, time::Duration};

use async_trait::async_trait;
use chrono::DateTime;
use domain::{
    CustomerId, Delivery, DeliveryId, DeliveryQueue, EventId, RegisterWebhookError, StorageError,
    Timestamp, Webhook, WebhookId, WebhookStore,
};
use redis::Script;

use crate::{
    connection::{Failure, Redis, hex},
    form::{delivery_json, read_customer, read_delivery, read_webhook, webhook_json},
};

/// KEYS: the customer's webhooks, the customers with webhooks. ARGV: the
/// id, the webhook, the bound, the customer. Adds the webhook unless the
/// customer has the bound already (-1); replaces one with the same id.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
",
    )
});

/// KEYS: as [`CREATE`]. ARGV: the id, the customer. Deletes the webhook;
/// the customer leaves the set with its last one. 1 when there was one.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local deleted = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return deleted
",
    )
});

/// KEYS: the deliveries, their attempts, when scheduled, by due, by first
/// due, the dispatched event. ARGV: the event dispatched up to, then per
/// delivery its id, JSON, attempts, due and first due (µs). Adds the
/// deliveries not known yet, and sets how far dispatching went.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 2, #ARGV, 5 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 3])
    redis.call('ZADD', KEYS[4], ARGV[i + 3], ARGV[i])
    redis.call('ZADD', KEYS[5], ARGV[i + 4], ARGV[i])
  end
end
redis.call('SET', KEYS[6], ARGV[1])
return 1
",
    )
});

/// KEYS: the deliveries, their attempts, when scheduled, by due, by first
/// due. ARGV: now, how many at most, the end of the lease (µs). Takes the
/// deliveries due by now, soonest first, and makes each due again at the
/// lease's end, so that one whose worker dies comes back then. Returns per
/// delivery its id, JSON, attempts and when it was scheduled. A delivery
/// missing from the hash (deleted by hand) leaves the indexes.
static TAKE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local taken = {}
for i = 1, #due, 2 do
  local id = due[i]
  local delivery = redis.call('HGET', KEYS[1], id)
  if delivery then
    redis.call('ZADD', KEYS[4], ARGV[3], id)
    local attempts = redis.call('HGET', KEYS[2], id) or '0'
    local scheduled = redis.call('HGET', KEYS[3], id) or due[i + 1]
    taken[#taken + 1] = {id, delivery, attempts, scheduled}
  else
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
  end
end
return taken
",
    )
});

/// KEYS: as [`TAKE_DUE`]. ARGV: the id. Forgets the delivery.
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
",
    )
});

/// KEYS: as [`TAKE_DUE`]. ARGV: the id, the attempts, the next due (µs).
/// Only for a delivery still pending (not made or dropped meanwhile by
/// another worker).
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
",
    )
});

/// KEYS: by due, by first due. How many wait, and the oldest first due.
static PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return {redis.call('ZCARD', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')}
",
    )
});

/// Microseconds since the Unix epoch: a sorted set's score.
fn micros(at: &Timestamp) -> i64 {
    at.timestamp_micros()
}

/// A time read back, in microseconds: as written, or as Redis writes a
/// score.
fn instant_of(stored: &str) -> Result<Timestamp, Failure> {
    let invalid = || Failure::new(format!("Redis gave {stored:?} for a time"));
    let micros = match stored.parse::<i64>() {
        Ok(micros) => micros,
        Err(_) => {
            let micros: f64 = stored.parse().map_err(|_| invalid())?;
            // Whole microseconds, within i64, as written.
            micros.round() as i64
        }
    };
    DateTime::from_timestamp_micros(micros).ok_or_else(invalid)
}

/// Webhooks in Redis (see the module's documentation for the keys).
///
/// Cheap to clone: clones share the [`Redis`] handle's connection.
#[derive(Clone)]
pub struct RedisWebhookStore {
    redis: Redis,
    prefix: String,
    customers: String,
}

impl fmt::Debug for RedisWebhookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisWebhookStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisWebhookStore {
    /// The store on `redis`, under its
    /// [`crate::RedisConfig::feed_key_prefix`].
    pub fn new(redis: &Redis) -> Self {
        let prefix = redis.feed_key_prefix().to_owned();
        Self {
            redis: redis.clone(),
            customers: format!("{prefix}webhook-customers"),
            prefix,
        }
    }

    /// The hash of `customer`'s webhooks: the customer in hex, so that no
    /// customer id can name another key.
    fn webhooks(&self, customer: &CustomerId) -> String {
        format!("{}webhooks:{}", self.prefix, hex(customer.as_str()))
    }
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    async fn create(&self, webhook: &Webhook, limit: usize) -> Result<(), RegisterWebhookError> {
        let created: i64 = self
            .redis
            .within::<_, StorageError>("create webhook", async {
                let mut connection = self.redis.connection().await?;
                Ok(CREATE
                    .key(self.webhooks(&webhook.customer))
                    .key(&self.customers)
                    .arg(webhook.id.as_str())
                    .arg(webhook_json(webhook))
                    .arg(limit)
                    .arg(webhook.customer.as_str())
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA create webhook", err))?)
            })
            .await?;
        if created == 1 {
            Ok(())
        } else {
            Err(RegisterWebhookError::TooMany { limit })
        }
    }

    async fn list(&self, customer: &CustomerId) -> Result<Vec<Webhook>, StorageError> {
        self.redis
            .within("list webhooks", async {
                let mut connection = self.redis.connection().await?;
                let stored: Vec<String> = redis::cmd("HVALS")
                    .arg(self.webhooks(customer))
                    .query_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("HVALS", err))?;
                let mut webhooks = stored
                    .iter()
                    .map(|json| read_webhook(json))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| Failure::unreadable("webhook", err))?;
                webhooks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                Ok(webhooks)
            })
            .await
    }

    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError> {
        self.redis
            .within("webhook customers", async {
                let mut connection = self.redis.connection().await?;
                let stored: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(&self.customers)
                    .query_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("SMEMBERS", err))?;
                let mut customers = stored
                    .iter()
                    .map(|customer| read_customer(customer))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| Failure::unreadable("webhook customer", err))?;
                customers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
                Ok(customers)
            })
            .await
    }

    async fn delete(&self, customer: &CustomerId, id: &WebhookId) -> Result<bool, StorageError> {
        self.redis
            .within("delete webhook", async {
                let mut connection = self.redis.connection().await?;
                let deleted: i64 = DELETE
                    .key(self.webhooks(customer))
                    .key(&self.customers)
                    .arg(id.as_str())
                    .arg(customer.as_str())
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA delete webhook", err))?;
                Ok(deleted == 1)
            })
            .await
    }
}

/// Pending deliveries in Redis (see the module's documentation for the
/// keys).
///
/// Cheap to clone: clones share the [`Redis`] handle's connection.
#[derive(Clone)]
pub struct RedisDeliveryQueue {
    redis: Redis,
    keys: QueueKeys,
}

#[derive(Debug, Clone)]
struct QueueKeys {
    deliveries: String,
    attempts: String,
    scheduled: String,
    due: String,
    first_due: String,
    dispatched: String,
}

impl fmt::Debug for RedisDeliveryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDeliveryQueue")
            .field("deliveries", &self.keys.deliveries)
            .finish_non_exhaustive()
    }
}

impl RedisDeliveryQueue {
    /// The queue on `redis`, under its
    /// [`crate::RedisConfig::feed_key_prefix`].
    pub fn new(redis: &Redis) -> Self {
        let prefix = redis.feed_key_prefix();
        Self {
            redis: redis.clone(),
            keys: QueueKeys {
                deliveries: format!("{prefix}deliveries"),
                attempts: format!("{prefix}deliveries:attempts"),
                scheduled: format!("{prefix}deliveries:scheduled"),
                due: format!("{prefix}deliveries:due"),
                first_due: format!("{prefix}deliveries:first-due"),
                dispatched: format!("{prefix}deliveries:dispatched"),
            },
        }
    }

    /// Runs `script` on the five keys of the deliveries with `args`.
    async fn on_deliveries<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: &Script,
        args: &[String],
    ) -> Result<T, StorageError> {
        self.redis
            .within(what, async {
                let mut connection = self.redis.connection().await?;
                let mut invocation = script.key(&self.keys.deliveries);
                invocation
                    .key(&self.keys.attempts)
                    .key(&self.keys.scheduled)
                    .key(&self.keys.due)
                    .key(&self.keys.first_due);
                for arg in args {
                    invocation.arg(arg);
                }
                Ok(invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis(&format!("EVALSHA {what}"), err))?)
            })
            .await
    }
}

/// A delivery as [`TAKE_DUE`] gives it: id, JSON, attempts, when
/// scheduled.
type Taken = (String, String, String, String);

fn delivery_of((id, json, attempts, due): Taken) -> Result<Delivery, Failure> {
    let what = || format!("delivery {id}");
    let mut delivery = read_delivery(&json).map_err(|err| Failure::unreadable(what(), err))?;
    delivery.attempts = attempts
        .parse()
        .map_err(|err| Failure::unreadable(what(), err))?;
    delivery.due = instant_of(&due)?;
    delivery.id = DeliveryId::from_stored(id);
    Ok(delivery)
}

#[async_trait]
impl DeliveryQueue for RedisDeliveryQueue {
    async fn dispatched(&self) -> Result<Option<EventId>, StorageError> {
        self.redis
            .within("GET dispatched", async {
                let mut connection = self.redis.connection().await?;
                let dispatched: Option<String> = redis::cmd("GET")
                    .arg(&self.keys.dispatched)
                    .query_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("GET", err))?;
                Ok(dispatched
                    .map(|id| EventId::parse(&id))
                    .transpose()
                    .map_err(|err| Failure::unreadable("dispatched event id", err))?)
            })
            .await
    }

    async fn enqueue(&self, deliveries: &[Delivery], up_to: &EventId) -> Result<(), StorageError> {
        self.redis
            .within("enqueue", async {
                let mut connection = self.redis.connection().await?;
                let mut invocation = ENQUEUE.key(&self.keys.deliveries);
                invocation
                    .key(&self.keys.attempts)
                    .key(&self.keys.scheduled)
                    .key(&self.keys.due)
                    .key(&self.keys.first_due)
                    .key(&self.keys.dispatched)
                    .arg(up_to.as_str());
                for delivery in deliveries {
                    invocation
                        .arg(delivery.id.as_str())
                        .arg(delivery_json(delivery))
                        .arg(delivery.attempts)
                        .arg(micros(&delivery.due))
                        .arg(micros(&delivery.first_due));
                }
                let _: i64 = invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA enqueue", err))?;
                Ok(())
            })
            .await
    }

    async fn take_due(
        &self,
        now: Timestamp,
        limit: usize,
        _worker: &str,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StorageError> {
        let lease = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        let until = micros(&now).saturating_add(lease);
        let taken: Vec<Taken> = self
            .on_deliveries(
                "take due",
                &TAKE_DUE,
                &[
                    micros(&now).to_string(),
                    limit.to_string(),
                    until.to_string(),
                ],
            )
            .await?;
        // One unreadable delivery (written by hand, or by a later version
        // that changed the form) stays where it is, taken again and again
        // after each lease, and counted as pending; it does not hold up
        // the others.
        Ok(taken
            .into_iter()
            .filter_map(|taken| delivery_of(taken).ok())
            .collect())
    }

    async fn done(&self, id: &DeliveryId) -> Result<(), StorageError> {
        let _: i64 = self
            .on_deliveries("done", &FORGET, &[id.as_str().to_owned()])
            .await?;
        Ok(())
    }

    async fn retry(
        &self,
        id: &DeliveryId,
        attempts: u32,
        due: Timestamp,
    ) -> Result<(), StorageError> {
        let args = [
            id.as_str().to_owned(),
            attempts.to_string(),
            micros(&due).to_string(),
        ];
        let _: i64 = self.on_deliveries("retry", &RETRY, &args).await?;
        Ok(())
    }

    async fn give_up(&self, id: &DeliveryId) -> Result<(), StorageError> {
        let _: i64 = self
            .on_deliveries("give up", &FORGET, &[id.as_str().to_owned()])
            .await?;
        Ok(())
    }

    async fn pending(&self) -> Result<(usize, Option<Timestamp>), StorageError> {
        self.redis
            .within("pending", async {
                let mut connection = self.redis.connection().await?;
                let (count, oldest): (usize, Vec<String>) = PENDING
                    .key(&self.keys.due)
                    .key(&self.keys.first_due)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA pending", err))?;
                let oldest = match oldest.get(1) {
                    Some(score) => Some(instant_of(score)?),
                    None => None,
                };
                Ok((count, oldest))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn times_are_kept_to_the_microsecond() {
        let at = Utc.timestamp_opt(1_734_517_800, 123_456_000).unwrap();
        assert_eq!(micros(&at), 1_734_517_800_123_456);
        // As Redis writes a score back.
        assert_eq!(instant_of("1734517800123456").unwrap(), at);
        assert_eq!(instant_of("1.734517800123456e+15").unwrap(), at);
        assert!(instant_of("soon").is_err());
    }
}
