//! The feed of run changes in a Redis Stream, which every instance reads,
//! and the customers listening to it.
//!
//! # Keys (under the feed prefix)
//!
//! - `events`: the stream. One entry per change, with two fields:
//!   `customer` (the customer id as it is) and `run` (the run as this
//!   crate's JSON, [`crate::form`]). An event's id is its entry's id,
//!   `<ms>-<seq>`, the same on every instance.
//! - `events:lease`: the holder watching the engine, with a ttl.
//! - `events:cursor`: where the engine's source resumes.
//! - `events:trimmed`: the newest id trimmed away, kept by the append
//!   script itself (not XINFO's `max-deleted-entry-id`, which Redis 7
//!   added, and which also counts entries deleted by hand): a read after
//!   an id older than it is told of the gap. A read after an id in another
//!   form is told of a gap too; after an id newer than the head, it gets
//!   nothing yet.
//! - `listeners`: a sorted set of customers by when their listening ends,
//!   on Redis's clock.
//!
//! # Appending
//!
//! One script checks that the caller holds the lease, `XADD`s every
//! change, sets the cursor and trims the stream: all or nothing, whichever
//! instance sends it (Redis runs one script at a time, and a script that
//! wrote once is not stopped by `maxmemory`). Trimming keeps the
//! retention ([`MIN_EVENT_RETENTION`]) on Redis's clock: the script reads
//! `TIME` and trims with `XTRIM MINID`, after noting the newest id it
//! trims in `events:trimmed`.

use std::{
    fmt,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use domain::{
    CustomerId, EventId, EventLog, FeedRead, Listeners, MIN_EVENT_RETENTION, RunChange, RunEvent,
    SourceCursor, StorageError,
};
use redis::{Script, aio::MultiplexedConnection};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    connection::{Failure, NOW_MS, Redis, millis},
    form::{read_customer, read_run, run_json},
};

/// Takes the lease for ARGV[1], for ARGV[2] ms, when it is free, or
/// renews it when ARGV[1] holds it; 1 when ARGV[1] holds it now.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: the stream, the lease, the cursor, the newest trimmed id. ARGV:
/// the holder, the cursor, the retention (ms), then each change's customer
/// and run.
///
/// Unless ARGV[1] holds the lease, writes nothing and returns `{0, {}}`.
/// Otherwise adds every change, sets the cursor, trims what is older than
/// the retention on Redis's clock (noting the newest id trimmed), and
/// returns `{1, ids}`.
///
/// Whether anything is older is asked first, of the oldest entry
/// (`XRANGE - (min COUNT 1`, which stops at the first entry): an
/// `XREVRANGE` from an id older than every entry finds no node to start
/// from, starts from the newest and walks the whole stream backwards, some
/// 600 µs at 25,000 entries, on every append while the stream is younger
/// than the retention. Once something is older, `XREVRANGE` starts from
/// the node that holds it.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {0, {}}
end
local ids = {}
for i = 4, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'customer', ARGV[i], 'run', ARGV[i + 1])
end
redis.call('SET', KEYS[3], ARGV[2])
local min_id = string.format('%d-0', now_ms() - tonumber(ARGV[3]))
if #redis.call('XRANGE', KEYS[1], '-', '(' .. min_id, 'COUNT', 1) == 0 then
  return {1, ids}
end
local older = redis.call('XREVRANGE', KEYS[1], '(' .. min_id, '-', 'COUNT', 1)
if #older > 0 then
  redis.call('SET', KEYS[4], older[1][1])
  redis.call('XTRIM', KEYS[1], 'MINID', min_id)
end
return {1, ids}
"
    ))
});

/// KEYS: the stream, the newest trimmed id. ARGV: the first id to read
/// (`-`: the oldest), how many at most. Returns the newest trimmed id
/// (`''` when none) and the entries: one consistent view, to tell a gap
/// from a read.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local trimmed = redis.call('GET', KEYS[2]) or ''
return {trimmed, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
",
    )
});

/// KEYS: the stream, the newest trimmed id. Returns the newest entry's id,
/// or when every entry was trimmed the newest trimmed, or nil.
static HEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then
  return newest[1][1]
end
return redis.call('GET', KEYS[2])
",
    )
});

/// KEYS: the listeners. ARGV: the customer, for how long (ms). Forgets the
/// listeners whose time is up; keeps the later end of the customer's.
static LISTEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r"
local now, ttl = now_ms(), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], 'GT', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"
    ))
});

/// KEYS: the listeners. The customers whose listening has not ended.
static LISTENING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r"
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')
"
    ))
});

/// How long the tail's `XREAD` blocks before it looks again whether anyone
/// still waits.
const TAIL_BLOCK: Duration = Duration::from_secs(5);
/// The most entries one batch of the tail holds.
const TAIL_COUNT: usize = 1000;
/// How long the tail waits before it reconnects after a failure, at first
/// and at most.
const TAIL_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The position of a stream entry, `<ms>-<seq>`, ordered as Redis orders
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// Before every entry.
    const ZERO: Self = Self { ms: 0, seq: 0 };

    /// Reads `<ms>-<seq>`, both in decimal digits; `None` for anything
    /// else (an id this log never gave).
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.split_once('-')?;
        let number = |digits: &str| {
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().ok())
                .flatten()
        };
        Some(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }

    /// The first position after this one; `None` after the very last.
    fn next(self) -> Option<Self> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(Self { seq, ..self }),
            None => Some(Self {
                ms: self.ms.checked_add(1)?,
                seq: 0,
            }),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An id Redis gave, or `''` for none.
fn stream_id(raw: &str) -> Result<Option<StreamId>, Failure> {
    if raw.is_empty() {
        return Ok(None);
    }
    StreamId::parse(raw)
        .map(Some)
        .ok_or_else(|| Failure::new(format!("Redis gave {raw:?} for a stream id")))
}

/// One stream entry as Redis gives it: its id and its fields, flat.
type Entry = (String, Vec<String>);

/// The event an entry tells, with its position.
fn event_of((id, fields): Entry) -> Result<(StreamId, RunEvent), Failure> {
    let position = stream_id(&id)?.ok_or_else(|| Failure::new("a stream entry without an id"))?;
    let field = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str())
            .ok_or_else(|| Failure::new(format!("the event {id} in Redis has no {name}")))
    };
    let what = || format!("event {id}");
    let customer =
        read_customer(field("customer")?).map_err(|err| Failure::unreadable(what(), err))?;
    let run = read_run(field("run")?).map_err(|err| Failure::unreadable(what(), err))?;
    let id = EventId::parse(&id).map_err(|err| Failure::unreadable(what(), err))?;
    Ok((position, RunEvent::new(id, RunChange::new(customer, run))))
}

/// New events the tail read: every entry after `from` up to `to`, in
/// order.
#[derive(Debug)]
struct Batch {
    from: StreamId,
    to: StreamId,
    events: Vec<(StreamId, RunEvent)>,
}

impl Batch {
    /// No event, from `at`: the tail is there.
    fn empty(at: StreamId) -> Self {
        Self {
            from: at,
            to: at,
            events: Vec::new(),
        }
    }
}

/// What the tail shares with the readers waiting on it.
#[derive(Debug)]
struct Fanout {
    /// The newest batch; a reader holds a receiver while it waits.
    batches: watch::Sender<Option<Arc<Batch>>>,
    /// Wakes a parked tail when a reader starts waiting.
    wake: Notify,
}

#[derive(Debug)]
struct Keys {
    stream: String,
    trimmed: String,
    lease: String,
    cursor: String,
    listeners: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}events"),
            trimmed: format!("{prefix}events:trimmed"),
            lease: format!("{prefix}events:lease"),
            cursor: format!("{prefix}events:cursor"),
            listeners: format!("{prefix}listeners"),
        }
    }
}

struct Inner {
    redis: Redis,
    keys: Keys,
    retention: Duration,
    fanout: Arc<Fanout>,
    /// The tail task, started by the first reader that waits.
    tail: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tail = self.tail.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(tail) = tail.take() {
            tail.abort();
        }
    }
}

/// The feed's [`EventLog`] and its [`Listeners`] in Redis, shared by every
/// instance on the same server and feed prefix (the keys are listed in
/// the crate's documentation).
///
/// Cheap to clone: clones share the connection and the one blocking
/// reader. Make one per instance.
///
/// # Blocking reads: one reader per instance
///
/// `XREAD BLOCK` holds its connection until an entry comes: on the shared
/// multiplexed connection it would hold up every other command, and a
/// connection per waiting stream would cost Redis one connection per open
/// SSE stream in the cluster (a thousand streams, a thousand connections).
/// So a log has one tail: a task with a connection of its own that
/// blocks on `XREAD` from the newest id it saw, and publishes each batch
/// of new events in process (a `watch` channel) to every waiting reader.
/// A reader first reads the stream with a script (no blocking); when
/// there is nothing after its position it waits for the tail's next batch
/// and takes what follows its position from it, without asking Redis,
/// when the batch starts at or before its position; otherwise (it missed
/// a batch, or the tail started after it) it reads the stream again. When
/// the wait ends with nothing, it reads the stream once more, so a tail
/// that lost its connection costs latency, never an event.
///
/// Share one `RedisEventLog` (clones share the tail) per instance: each
/// separately made log has a tail of its own, and so a connection of its
/// own while someone waits. The tail runs while someone waits on it, and
/// parks (its connection kept, idle) when no one does; it ends when the
/// last clone of the log is dropped. A batch wakes every waiting reader of
/// the instance, which filter it in memory: a thousand streams on one
/// instance cost one `XREAD` per batch, not a thousand.
#[derive(Clone)]
pub struct RedisEventLog {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisEventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEventLog")
            .field("stream", &self.inner.keys.stream)
            .field("retention", &self.inner.retention)
            .finish_non_exhaustive()
    }
}

impl RedisEventLog {
    /// The log on `redis`, under its [`crate::RedisConfig::feed_key_prefix`],
    /// keeping events [`MIN_EVENT_RETENTION`].
    pub fn new(redis: &Redis) -> Self {
        let (batches, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                keys: Keys::new(redis.feed_key_prefix()),
                redis: redis.clone(),
                retention: MIN_EVENT_RETENTION,
                fanout: Arc::new(Fanout {
                    batches,
                    wake: Notify::new(),
                }),
                tail: Mutex::new(None),
            }),
        }
    }

    fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Reads the stream after `after`, without waiting.
    async fn read_now(
        &self,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<FeedRead, StorageError> {
        let start = match after {
            None => "-".to_owned(),
            Some(after) => match after.next() {
                Some(start) => start.to_string(),
                // Nothing can ever come after the very last id.
                None => return Ok(FeedRead::Events(Vec::new())),
            },
        };
        self.redis()
            .within("read", async {
                let mut connection = self.redis().connection().await?;
                let (trimmed, entries): (String, Vec<Entry>) = READ
                    .key(&self.keys().stream)
                    .key(&self.keys().trimmed)
                    .arg(start)
                    .arg(limit)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA read", err))?;
                // Entries after it were trimmed. (An id past the head is
                // no gap: nothing came after it yet.)
                if let (Some(after), Some(trimmed)) = (after, stream_id(&trimmed)?)
                    && trimmed > after
                {
                    return Ok(FeedRead::Gap);
                }
                let events = entries
                    .into_iter()
                    .map(|entry| event_of(entry).map(|(_, event)| event))
                    .collect::<Result<_, _>>()?;
                Ok(FeedRead::Events(events))
            })
            .await
    }

    /// Starts waiting on the tail: subscribes first, so that no batch
    /// published after the reader's own read is missed.
    fn watch(&self) -> watch::Receiver<Option<Arc<Batch>>> {
        let receiver = self.inner.fanout.batches.subscribe();
        let mut tail = self
            .inner
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tail.as_ref().is_none_or(JoinHandle::is_finished) {
            *tail = Some(tokio::spawn(run_tail(
                self.inner.redis.clone(),
                self.inner.keys.stream.clone(),
                self.inner.fanout.clone(),
            )));
        }
        // Not held across an await: the spawn above does not wait.
        drop(tail);
        self.inner.fanout.wake.notify_one();
        receiver
    }

    /// Waits up to `wait` for events after `after`, which the stream did
    /// not hold when `batches` was subscribed.
    async fn wait_for(
        &self,
        after: Option<StreamId>,
        limit: usize,
        wait: Duration,
        mut batches: watch::Receiver<Option<Arc<Batch>>>,
    ) -> Result<FeedRead, StorageError> {
        let deadline = Instant::now() + wait;
        let position = after.unwrap_or(StreamId::ZERO);
        loop {
            let changed = tokio::time::timeout_at(deadline, batches.changed()).await;
            let Ok(Ok(())) = changed else {
                // The wait is over (or the tail is gone): one last look,
                // in case the tail missed something.
                return self.read_now(after, limit).await;
            };
            let batch = batches.borrow_and_update().clone();
            match batch {
                Some(batch) if batch.from <= position => {
                    if batch.to > position {
                        let events: Vec<_> = batch
                            .events
                            .iter()
                            .filter(|(id, _)| *id > position)
                            .take(limit)
                            .map(|(_, event)| event.clone())
                            .collect();
                        return Ok(FeedRead::Events(events));
                    }
                }
                // A batch that starts after the reader's position (it
                // missed one, or the tail started after its read): what
                // lies between is in the stream, not in the batch.
                _ => match self.read_now(after, limit).await? {
                    FeedRead::Events(events) if events.is_empty() => {}
                    read => return Ok(read),
                },
            }
        }
    }
}

/// The tail: while someone waits, blocks on `XREAD` on a connection of its
/// own and publishes what comes; parks while no one waits.
async fn run_tail(redis: Redis, stream: String, fanout: Arc<Fanout>) {
    let mut connection = None;
    let mut position = None;
    let mut backoff = TAIL_BACKOFF.0;
    loop {
        if fanout.batches.receiver_count() == 0 {
            // Read from the head again when someone waits: what came
            // meanwhile, readers read from the stream.
            position = None;
            fanout.wake.notified().await;
            continue;
        }
        match tail_once(&redis, &stream, &mut connection, &mut position).await {
            Ok(batch) => {
                backoff = TAIL_BACKOFF.0;
                if let Some(batch) = batch {
                    fanout.batches.send_replace(Some(Arc::new(batch)));
                }
            }
            Err(_) => {
                // The readers see Redis fail on their own reads; the tail
                // reconnects, and goes on from where it was.
                connection = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(TAIL_BACKOFF.1);
            }
        }
    }
}

/// One step of the tail. Where it has no position yet (it just started,
/// or woke), it takes the newest entry's, and says so with a batch of no
/// event from there: a reader whose position is older (an entry came
/// between its own read and the tail's start) reads the stream rather than
/// wait for a batch that will never hold that entry. Otherwise, one
/// blocking read: the batch after its position, if any came. A batch with
/// an unreadable entry is told as a batch of no event from its end, so
/// that the readers read the stream and are told what is wrong.
async fn tail_once(
    redis: &Redis,
    stream: &str,
    connection: &mut Option<MultiplexedConnection>,
    position: &mut Option<StreamId>,
) -> Result<Option<Batch>, Failure> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(
            redis
                .dedicated(TAIL_BLOCK + redis.timeout())
                .await
                .map_err(|err| Failure::redis("connecting", err))?,
        ),
    };
    let Some(from) = *position else {
        let newest: Vec<Entry> = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(connection)
            .await
            .map_err(|err| Failure::redis("XREVRANGE", err))?;
        let start = match newest.first() {
            Some((id, _)) => stream_id(id)?.unwrap_or(StreamId::ZERO),
            None => StreamId::ZERO,
        };
        *position = Some(start);
        return Ok(Some(Batch::empty(start)));
    };
    let reply: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(TAIL_COUNT)
        .arg("BLOCK")
        .arg(millis(TAIL_BLOCK))
        .arg("STREAMS")
        .arg(stream)
        .arg(from.to_string())
        .query_async(connection)
        .await
        .map_err(|err| Failure::redis("XREAD", err))?;
    let entries: Vec<Entry> = reply
        .into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .collect();
    let Some(last) = entries.last() else {
        return Ok(None);
    };
    let to = stream_id(&last.0)?.unwrap_or(from);
    *position = Some(to);
    let events = entries.into_iter().map(event_of).collect::<Result<_, _>>();
    Ok(Some(match events {
        Ok(events) => Batch { from, to, events },
        Err(_) => Batch::empty(to),
    }))
}

#[async_trait]
impl EventLog for RedisEventLog {
    async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, StorageError> {
        self.redis()
            .within("lease", async {
                let mut connection = self.redis().connection().await?;
                let held: i64 = LEASE
                    .key(&self.keys().lease)
                    .arg(holder)
                    .arg(millis(ttl))
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA lease", err))?;
                Ok(held == 1)
            })
            .await
    }

    async fn source_cursor(&self) -> Result<Option<SourceCursor>, StorageError> {
        self.redis()
            .within("GET cursor", async {
                let mut connection = self.redis().connection().await?;
                let cursor: Option<String> = redis::cmd("GET")
                    .arg(&self.keys().cursor)
                    .query_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("GET", err))?;
                Ok(cursor.map(SourceCursor::new))
            })
            .await
    }

    async fn append(
        &self,
        holder: &str,
        changes: &[RunChange],
        cursor: &SourceCursor,
    ) -> Result<Option<Vec<EventId>>, StorageError> {
        let mut invocation = APPEND.key(&self.keys().stream);
        invocation
            .key(&self.keys().lease)
            .key(&self.keys().cursor)
            .key(&self.keys().trimmed)
            .arg(holder)
            .arg(cursor.as_str())
            .arg(millis(self.inner.retention));
        for change in changes {
            invocation
                .arg(change.customer.as_str())
                .arg(run_json(&change.run));
        }
        self.redis()
            .within("append", async {
                let mut connection = self.redis().connection().await?;
                let (held, ids): (i64, Vec<String>) = invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA append", err))?;
                if held != 1 {
                    return Ok(None);
                }
                let ids = ids
                    .iter()
                    .map(|id| EventId::parse(id))
                    .collect::<Result<_, _>>()
                    .map_err(|err| Failure::unreadable("stream id", err))?;
                Ok(Some(ids))
            })
            .await
    }

    async fn head(&self) -> Result<Option<EventId>, StorageError> {
        self.redis()
            .within("head", async {
                let mut connection = self.redis().connection().await?;
                let head: Option<String> = HEAD
                    .key(&self.keys().stream)
                    .key(&self.keys().trimmed)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA head", err))?;
                Ok(head
                    .map(|id| EventId::parse(&id))
                    .transpose()
                    .map_err(|err| Failure::unreadable("stream id", err))?)
            })
            .await
    }

    async fn read(
        &self,
        after: Option<EventId>,
        limit: usize,
        wait: Duration,
    ) -> Result<FeedRead, StorageError> {
        let after = match after {
            None => None,
            // An id in no form this log gives: where it was is unknown.
            Some(id) => match StreamId::parse(id.as_str()) {
                Some(after) => Some(after),
                None => return Ok(FeedRead::Gap),
            },
        };
        let batches = (!wait.is_zero() && limit > 0).then(|| self.watch());
        let read = self.read_now(after, limit).await?;
        match (read, batches) {
            (FeedRead::Events(events), Some(batches)) if events.is_empty() => {
                self.wait_for(after, limit, wait, batches).await
            }
            (read, _) => Ok(read),
        }
    }
}

#[async_trait]
impl Listeners for RedisEventLog {
    async fn listen(&self, customer: &CustomerId, ttl: Duration) -> Result<(), StorageError> {
        self.redis()
            .within("listen", async {
                let mut connection = self.redis().connection().await?;
                let _: i64 = LISTEN
                    .key(&self.keys().listeners)
                    .arg(customer.as_str())
                    .arg(millis(ttl))
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA listen", err))?;
                Ok(())
            })
            .await
    }

    async fn listening(&self) -> Result<Vec<CustomerId>, StorageError> {
        self.redis()
            .within("listening", async {
                let mut connection = self.redis().connection().await?;
                let customers: Vec<String> = LISTENING
                    .key(&self.keys().listeners)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|err| Failure::redis("EVALSHA listening", err))?;
                let mut customers = customers
                    .iter()
                    .map(|customer| read_customer(customer))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| Failure::unreadable("listener", err))?;
                customers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
                Ok(customers)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_read_as_redis_writes_them_and_order_as_it_does() {
        let id = StreamId::parse("1734517800000-12").unwrap();
        assert_eq!(id.to_string(), "1734517800000-12");
        assert!(StreamId::parse("1734517800000-2").unwrap() < id);
        assert!(id < StreamId::parse("1734517800001-0").unwrap());
        for raw in [
            "", "17", "17-", "-1", "+1-0", "1-+0", "1-0-0", "a-1", "1 -0",
        ] {
            assert_eq!(StreamId::parse(raw), None, "{raw:?}");
        }
        assert_eq!(StreamId::parse("18446744073709551616-0"), None, "past u64");
    }

    #[test]
    fn the_position_after_an_id_is_its_next_sequence_number() {
        fn id(raw: &str) -> StreamId {
            StreamId::parse(raw).unwrap()
        }
        assert_eq!(id("5-1").next(), Some(id("5-2")));
        assert_eq!(id(&format!("5-{}", u64::MAX)).next(), Some(id("6-0")));
        assert_eq!(id(&format!("{0}-{0}", u64::MAX)).next(), None);
    }

    #[test]
    fn an_entry_tells_its_change() {
        let run = domain::Run::new(
            domain::RunId::parse("r1").unwrap(),
            domain::PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap(),
            domain::RunStatus::Running,
            chrono::DateTime::from_timestamp(1_734_517_800, 0).unwrap(),
        );
        let entry = (
            "7-1".to_owned(),
            vec![
                "customer".to_owned(),
                "acme".to_owned(),
                "run".to_owned(),
                run_json(&run),
            ],
        );
        let (position, event) = event_of(entry).unwrap();
        assert_eq!(position, StreamId { ms: 7, seq: 1 });
        assert_eq!(event.id.as_str(), "7-1");
        assert_eq!(event.change.customer.as_str(), "acme");
        assert_eq!(event.change.run, run);
        let without_run = (
            "7-2".to_owned(),
            vec!["customer".to_owned(), "acme".to_owned()],
        );
        let err = StorageError::from(event_of(without_run).unwrap_err());
        assert_eq!(err.to_string(), "the event 7-2 in Redis has no run");
    }
}
