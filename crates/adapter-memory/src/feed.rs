//! [`MemoryEventLog`]: the feed's log and its listeners, in this process,
//! for a single Maestro instance.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    Clock, CustomerId, EventId, EventLog, FeedRead, Listeners, MIN_EVENT_RETENTION, RunChange,
    RunEvent, SourceCursor, StorageError, Timestamp,
};
use runtime::TokioClock;
use tokio::sync::watch;
use tokio::time::Instant;

/// The feed's events in a ring in memory, with the lease of the one
/// watcher of the engine, the source's cursor, and who listens.
///
/// **Ids** are `<milliseconds since the epoch>-<sequence>`, the form of a
/// Redis stream entry's id, so that clients see one form whichever log
/// the service runs with: the milliseconds of the append on the log's
/// clock (never less than the last id's), the sequence counting from 0
/// within one millisecond. Later events have greater ids.
///
/// **Bounds.** Events are kept for [`MemoryEventLog::retention`] (by
/// default [`MIN_EVENT_RETENTION`], the contract's hour) and at most
/// [`MemoryEventLog::max_events`] (by default 100,000, some tens of
/// megabytes): past either, the oldest go first, and a reader still
/// behind them is told [`FeedRead::Gap`]. So under more than 100,000
/// changes an hour, history is shorter than the hour.
///
/// **Reads.** [`EventLog::read`] answers the events after an id, oldest
/// first; with none yet it waits for an append on a signal (no polling),
/// up to its `wait`. An id before the oldest kept event's predecessor is
/// a gap; so is one older than the log itself (from an earlier process,
/// whose events are gone) and one not in the log's form. An id in the
/// log's form newer than the head reads as nothing yet.
///
/// **Lease.** Granted to the first holder, renewed by the holder, taken
/// over by another once its ttl passed; an append by anyone but the holder
/// writes nothing. The same rules as the Redis log, so the feed's pump
/// behaves alike on both.
///
/// Cheap to clone: clones share the log. Instances do not.
#[derive(Clone)]
pub struct MemoryEventLog {
    state: Arc<Mutex<LogState>>,
    /// Bumped after every append that added events: what wakes readers.
    appended: Arc<watch::Sender<()>>,
    clock: Arc<dyn Clock>,
    max_events: usize,
    retention: Duration,
}

#[derive(Debug)]
struct LogState {
    /// Oldest first; ids increase.
    events: VecDeque<Kept>,
    /// The last id given, kept or not.
    last: Option<LogId>,
    /// A read after an id before this one missed events: the newest
    /// dropped event's id, or the log's beginning.
    gap_before: LogId,
    lease: Option<Held>,
    cursor: Option<SourceCursor>,
    /// When each listening customer stops listening.
    listeners: HashMap<CustomerId, Timestamp>,
}

#[derive(Debug)]
struct Kept {
    id: LogId,
    /// When it was appended, on the log's clock.
    at: Timestamp,
    event: RunEvent,
}

#[derive(Debug)]
struct Held {
    holder: String,
    until: Timestamp,
}

/// An event id in the log's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LogId {
    millis: u64,
    seq: u64,
}

impl LogId {
    fn parse(id: &str) -> Option<Self> {
        let (millis, seq) = id.split_once('-')?;
        let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits(millis) || !digits(seq) {
            return None;
        }
        Some(Self {
            millis: millis.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// `<millis>-<seq>`, written on the stack: every change appended
    /// gets one.
    fn to_event_id(self) -> EventId {
        let (mut millis, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (millis, seq) = (millis.format(self.millis), seq.format(self.seq));
        // Two numbers of at most 20 digits and a dash: always an event id.
        let mut text = [b'-'; 41];
        let len = millis.len() + 1 + seq.len();
        text[..millis.len()].copy_from_slice(millis.as_bytes());
        text[millis.len() + 1..len].copy_from_slice(seq.as_bytes());
        str::from_utf8(&text[..len])
            .ok()
            .and_then(|text| EventId::parse(text).ok())
            .unwrap_or_else(|| unreachable!("a log id is a valid event id"))
    }
}

/// The milliseconds since the epoch of `at`; 0 before it.
fn millis(at: Timestamp) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// `at` plus `by`, saturating at the end of time.
fn later(at: Timestamp, by: Duration) -> Timestamp {
    TimeDelta::from_std(by)
        .ok()
        .and_then(|by| at.checked_add_signed(by))
        .unwrap_or(Timestamp::MAX_UTC)
}

impl MemoryEventLog {
    /// The default [`MemoryEventLog::max_events`].
    pub const DEFAULT_MAX_EVENTS: usize = 100_000;

    /// An empty log keeping at most `max_events` events (at least one),
    /// for [`MIN_EVENT_RETENTION`], on the service's clock
    /// ([`TokioClock`]).
    pub fn new(max_events: usize) -> Self {
        Self::build(max_events, Arc::new(TokioClock::start()))
    }

    /// The same log, empty, reading the time from `clock` (its beginning
    /// is `clock`'s now).
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self::build(self.max_events, clock).with_retention(self.retention)
    }

    /// The same log, keeping events for `retention` rather than
    /// [`MIN_EVENT_RETENTION`] (shorter only in tests: the contract
    /// promises the hour).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    fn build(max_events: usize, clock: Arc<dyn Clock>) -> Self {
        let begins = LogId {
            millis: millis(clock.now()),
            seq: 0,
        };
        Self {
            state: Arc::new(Mutex::new(LogState {
                events: VecDeque::new(),
                last: None,
                gap_before: begins,
                lease: None,
                cursor: None,
                listeners: HashMap::new(),
            })),
            appended: Arc::new(watch::Sender::new(())),
            clock,
            max_events: max_events.max(1),
            retention: MIN_EVENT_RETENTION,
        }
    }

    /// The most events kept.
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// How long events are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// How many events are kept now.
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        let mut state = self.lock();
        self.trim(&mut state, now);
        state.events.len()
    }

    /// Whether no event is kept now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many reads wait for an append now: the readiness signal a test
    /// waits on before it appends.
    pub fn readers_waiting(&self) -> usize {
        self.appended.receiver_count()
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A std mutex, not tokio's: no method awaits while holding it, and
        // each critical section is a few deque operations. Nothing under it
        // panics, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the events past the retention or the bound, oldest first.
    fn trim(&self, state: &mut LogState, now: Timestamp) {
        while let Some(oldest) = state.events.front() {
            let expired = later(oldest.at, self.retention) < now;
            if !expired && state.events.len() <= self.max_events {
                break;
            }
            state.gap_before = state.gap_before.max(oldest.id);
            state.events.pop_front();
        }
    }

    /// The events after `after`, at most `limit`; `None` for a gap.
    fn after(&self, after: Option<&EventId>, limit: usize) -> Option<Vec<RunEvent>> {
        let now = self.clock.now();
        let mut state = self.lock();
        self.trim(&mut state, now);
        let start = match after {
            None => 0,
            Some(after) => {
                let after = LogId::parse(after.as_str())?;
                if after < state.gap_before {
                    return None;
                }
                state.events.partition_point(|kept| kept.id <= after)
            }
        };
        Some(
            state
                .events
                .range(start..)
                .take(limit)
                .map(|kept| kept.event.clone())
                .collect(),
        )
    }

    /// Whether `holder` holds the lease at `now`.
    fn holds(state: &LogState, holder: &str, now: Timestamp) -> bool {
        state
            .lease
            .as_ref()
            .is_some_and(|held| held.holder == holder && now < held.until)
    }
}

impl Default for MemoryEventLog {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_EVENTS)
    }
}

impl fmt::Debug for MemoryEventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryEventLog")
            .field("max_events", &self.max_events)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, StorageError> {
        let now = self.clock.now();
        let mut state = self.lock();
        let free = state
            .lease
            .as_ref()
            .is_none_or(|held| held.holder == holder || held.until <= now);
        if free {
            state.lease = Some(Held {
                holder: holder.to_owned(),
                until: later(now, ttl),
            });
        }
        Ok(free)
    }

    async fn source_cursor(&self) -> Result<Option<SourceCursor>, StorageError> {
        Ok(self.lock().cursor.clone())
    }

    async fn append(
        &self,
        holder: &str,
        changes: &[RunChange],
        cursor: &SourceCursor,
    ) -> Result<Option<Vec<EventId>>, StorageError> {
        let now = self.clock.now();
        let mut state = self.lock();
        if !Self::holds(&state, holder, now) {
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(changes.len());
        for change in changes {
            let millis = millis(now);
            let id = match state.last {
                Some(last) if millis <= last.millis => LogId {
                    millis: last.millis,
                    seq: last.seq + 1,
                },
                _ => LogId { millis, seq: 0 },
            };
            state.last = Some(id);
            let event = RunEvent::new(id.to_event_id(), change.clone());
            ids.push(event.id.clone());
            state.events.push_back(Kept { id, at: now, event });
        }
        state.cursor = Some(cursor.clone());
        self.trim(&mut state, now);
        drop(state);
        if !ids.is_empty() {
            self.appended.send_replace(());
        }
        Ok(Some(ids))
    }

    async fn head(&self) -> Result<Option<EventId>, StorageError> {
        let now = self.clock.now();
        let mut state = self.lock();
        self.trim(&mut state, now);
        Ok(state.events.back().map(|kept| kept.event.id.clone()))
    }

    async fn read(
        &self,
        after: Option<EventId>,
        limit: usize,
        wait: Duration,
    ) -> Result<FeedRead, StorageError> {
        let deadline = Instant::now() + wait;
        loop {
            // Subscribed before the log is read: an append after the read
            // bumps the signal after this point.
            let mut appended = self.appended.subscribe();
            let Some(events) = self.after(after.as_ref(), limit) else {
                return Ok(FeedRead::Gap);
            };
            if !events.is_empty() || limit == 0 || Instant::now() >= deadline {
                return Ok(FeedRead::Events(events));
            }
            tokio::select! {
                // Never an error: the sender lives as long as the log.
                _ = appended.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

#[async_trait]
impl Listeners for MemoryEventLog {
    async fn listen(&self, customer: &CustomerId, ttl: Duration) -> Result<(), StorageError> {
        let now = self.clock.now();
        let until = later(now, ttl);
        let mut state = self.lock();
        state
            .listeners
            .retain(|_, listens_until| *listens_until > now);
        let entry = state.listeners.entry(customer.clone()).or_insert(until);
        *entry = (*entry).max(until);
        Ok(())
    }

    async fn listening(&self) -> Result<Vec<CustomerId>, StorageError> {
        let now = self.clock.now();
        let mut state = self.lock();
        state
            .listeners
            .retain(|_, listens_until| *listens_until > now);
        let mut customers: Vec<CustomerId> = state.listeners.keys().cloned().collect();
        customers.sort_unstable();
        Ok(customers)
    }
}

#[cfg(test)]
mod tests {
    //! The port's rules run from `domain::feed_testkit` under a paused
    //! clock; what is this log's own (its bounds, the form and order of its
    //! ids, how soon a read wakes) is tested here.

    use domain::feed_testkit::Setup;
    use domain::{PipelineId, Run, RunId, RunStatus};
    use tokio::time::advance;

    use super::*;

    domain::event_log_conformance_tests! {
        #[tokio::test(start_paused = true)]
        |scenario| {
            scenario(&MemoryEventLog::default(), &Setup::paused_clock("")).await;
        }
        |scenario| {
            scenario(&MemoryEventLog::default(), &Setup::paused_clock(""), advance).await;
        }
    }

    domain::listeners_conformance_tests! {
        #[tokio::test(start_paused = true)]
        |scenario| {
            scenario(&MemoryEventLog::default(), &Setup::paused_clock(""), advance).await;
        }
    }

    const HOUR: Duration = Duration::from_secs(60 * 60);
    const PUMP: &str = "pump";

    fn change(n: u32) -> RunChange {
        let at = chrono::DateTime::from_timestamp(1_734_517_800 + i64::from(n), 0).unwrap();
        RunChange::new(
            CustomerId::parse("acme").unwrap(),
            Run::new(
                RunId::manual(&at),
                PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap(),
                RunStatus::Running,
                at,
            ),
        )
    }

    fn changes(count: u32) -> Vec<RunChange> {
        (0..count).map(change).collect()
    }

    /// A log whose pump holds the lease for good.
    async fn log(max_events: usize) -> MemoryEventLog {
        let log = MemoryEventLog::new(max_events);
        assert!(log.lease(PUMP, HOUR * 48).await.unwrap());
        log
    }

    async fn append(log: &MemoryEventLog, count: u32) -> Vec<EventId> {
        log.append(PUMP, &changes(count), &SourceCursor::new("c"))
            .await
            .unwrap()
            .unwrap()
    }

    async fn read(log: &MemoryEventLog, after: Option<&EventId>) -> FeedRead {
        log.read(after.cloned(), 1000, Duration::ZERO)
            .await
            .unwrap()
    }

    fn parts(id: &EventId) -> (u64, u64) {
        let parsed = LogId::parse(id.as_str()).unwrap();
        (parsed.millis, parsed.seq)
    }

    proptest::proptest! {
        #[test]
        fn a_log_id_is_written_as_its_two_numbers_and_reads_back(
            millis in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let id = LogId { millis, seq };
            let event = id.to_event_id();
            proptest::prop_assert_eq!(event.as_str(), format!("{millis}-{seq}"));
            proptest::prop_assert_eq!(LogId::parse(event.as_str()), Some(id));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ids_are_the_milliseconds_of_the_append_and_a_sequence_within_one() {
        let log = log(100).await;
        let start = millis(log.clock.now());
        let first = append(&log, 3).await;
        assert_eq!(
            first.iter().map(parts).collect::<Vec<_>>(),
            [(start, 0), (start, 1), (start, 2)]
        );
        advance(Duration::from_millis(5)).await;
        let second = append(&log, 1).await;
        assert_eq!(parts(&second[0]), (start + 5, 0));
        assert_eq!(second[0].as_str(), format!("{}-0", start + 5));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_never_go_back_when_the_clock_does() {
        let clock = domain::ManualClock::at_epoch_seconds(1_734_517_800);
        let log = MemoryEventLog::default().with_clock(Arc::new(clock.clone()));
        assert!(log.lease(PUMP, HOUR).await.unwrap());
        let before = append(&log, 1).await;
        clock.advance(Duration::from_millis(10));
        let middle = append(&log, 1).await;
        clock.set(chrono::DateTime::from_timestamp(1_734_517_700, 0).unwrap());
        let after = append(&log, 1).await;
        assert!(parts(&before[0]) < parts(&middle[0]));
        assert!(parts(&middle[0]) < parts(&after[0]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_wakes_in_the_same_tick_as_the_append() {
        let log = log(100).await;
        let head = append(&log, 1).await.pop();
        let reader = {
            let log = log.clone();
            let head = head.clone();
            tokio::spawn(async move {
                let read = log.read(head, 10, HOUR).await.unwrap();
                (read, Instant::now())
            })
        };
        while log.readers_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let appended_at = Instant::now();
        let ids = append(&log, 2).await;
        let (read, woke_at) = reader.await.unwrap();
        let FeedRead::Events(events) = read else {
            panic!("no gap here");
        };
        assert_eq!(events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(woke_at, appended_at, "no time passed: woken by the append");
        assert_eq!(log.readers_waiting(), 0, "the reader left nothing behind");
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_kept_for_the_hour_and_a_reader_behind_them_gets_a_gap() {
        let log = log(100).await;
        let old = append(&log, 2).await;
        advance(HOUR / 2).await;
        let newer = append(&log, 1).await;
        advance(HOUR / 2).await;
        // An hour after the first append: still kept.
        assert_eq!(log.len(), 3);
        assert!(matches!(read(&log, Some(&old[0])).await, FeedRead::Events(e) if e.len() == 2));
        advance(Duration::from_millis(1)).await;
        // Past the hour: the first two are gone.
        assert_eq!(log.len(), 1);
        assert_eq!(read(&log, Some(&old[0])).await, FeedRead::Gap);
        // After the newest dropped event nothing was missed.
        let FeedRead::Events(events) = read(&log, Some(&old[1])).await else {
            panic!("nothing missed after the last dropped event");
        };
        assert_eq!(events[0].id, newer[0]);
        assert_eq!(log.head().await.unwrap(), Some(newer[0].clone()));
        advance(HOUR).await;
        assert_eq!(log.head().await.unwrap(), None, "nothing kept");
        assert_eq!(read(&log, Some(&newer[0])).await, FeedRead::Events(vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_the_oldest_events_go_and_readers_behind_get_a_gap() {
        let log = log(3).await;
        let ids = append(&log, 5).await;
        assert_eq!(log.len(), 3);
        assert_eq!(read(&log, Some(&ids[0])).await, FeedRead::Gap);
        let FeedRead::Events(events) = read(&log, Some(&ids[1])).await else {
            panic!("the reader of the last dropped event missed nothing");
        };
        assert_eq!(events.len(), 3);
        let FeedRead::Events(events) = read(&log, None).await else {
            panic!("from the oldest kept, never a gap");
        };
        assert_eq!(events[0].id, ids[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_id_from_before_the_log_began_is_a_gap() {
        // The events of an earlier process are gone: its ids are older.
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::start());
        let earlier = MemoryEventLog::default().with_clock(clock.clone());
        assert!(earlier.lease(PUMP, HOUR).await.unwrap());
        let old = earlier
            .append(PUMP, &changes(1), &SourceCursor::new("c"))
            .await
            .unwrap()
            .unwrap();
        advance(Duration::from_secs(5)).await;
        let log = MemoryEventLog::default().with_clock(clock);
        assert!(log.lease(PUMP, HOUR).await.unwrap());
        assert_eq!(read(&log, Some(&old[0])).await, FeedRead::Gap);
        append(&log, 1).await;
        assert_eq!(read(&log, Some(&old[0])).await, FeedRead::Gap);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_its_wait_when_nothing_comes() {
        let log = log(100).await;
        let head = append(&log, 1).await.pop();
        let start = Instant::now();
        let read = log.read(head, 10, Duration::from_secs(7)).await.unwrap();
        assert_eq!(read, FeedRead::Events(vec![]));
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
        assert_eq!(log.readers_waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn listeners_past_their_ttl_are_forgotten() {
        let log = MemoryEventLog::default();
        for n in 0..50 {
            let customer = CustomerId::parse(&format!("c{n}")).unwrap();
            log.listen(&customer, Duration::from_secs(1)).await.unwrap();
        }
        advance(Duration::from_secs(2)).await;
        log.listen(&CustomerId::parse("acme").unwrap(), HOUR)
            .await
            .unwrap();
        assert_eq!(log.lock().listeners.len(), 1, "the expired were dropped");
    }
}
