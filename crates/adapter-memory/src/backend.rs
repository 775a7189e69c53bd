//! [`MemoryBackend`]: the ports over a fixed set of pipelines, each behind
//! its own lock, with a change signal that wakes the waiters of its runs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    BackendError, CancelRunError, Clock, CustomerId, ExecuteError, GetPipelineError, GetRunError,
    ListRunsError, Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary,
    RequestContext, Run, RunId, RunPage, RunQuery, RunWatch, SetPausedError, Timestamp,
    TriggerRequest,
};
use runtime::TokioClock;
use tokio::sync::watch;

use crate::state::{Change, Limits, PipelineState};
use crate::{FixtureError, MemoryConfig, demo_pipelines, load_fixture};

/// The embedded backend: pipelines held in memory, runs simulated.
///
/// Cheap to clone: clones share the same pipelines and runs.
///
/// Every operation is scoped to the caller's customer; another customer's
/// pipeline is exactly as not found as a missing one. The set of pipelines
/// is fixed at construction; their state (paused or not, runs) changes.
///
/// It is its own [`RunWatch`]: a waiter is woken by the change it waits
/// for, with no polling (see its [`RunWatch`] implementation).
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

/// A pipeline id's text, held in the map itself: a lookup reads no string
/// elsewhere in memory, which with 100,000 pipelines is a cache miss on
/// every request.
type IdKey = [u8; 36];

/// `id`'s text as a key. Every pipeline id is 36 bytes (a UUID in its one
/// normal form), so this is `None` for none.
fn id_key(id: &PipelineId) -> Option<IdKey> {
    id.as_str().as_bytes().try_into().ok()
}

struct Inner {
    config: MemoryConfig,
    /// The pipelines, by their number. Never changes after construction,
    /// so it needs no lock: only each pipeline's state does.
    slots: Vec<Slot>,
    /// Each pipeline's number, by its id's text ([`id_key`]). Hashed with
    /// foldhash rather than SipHash: the ids are the fixture's, so no
    /// client can choose them to collide, and the hash is on every
    /// request's path.
    numbers: HashMap<IdKey, u32, foldhash::fast::RandomState>,
    /// The customers, by their number.
    customers: Vec<CustomerId>,
    /// Each customer's number and pipelines' numbers, in the order they
    /// were given.
    by_customer: HashMap<CustomerId, Vec<u32>>,
    /// Bumped after every change made through the backend, on any
    /// pipeline: what wakes the feeds ([`crate::MemoryChanges`]). Apart
    /// from the pipelines' own signals, so that [`MemoryBackend::waiters`]
    /// counts the waiters of runs only.
    any_change: watch::Sender<()>,
    /// The feeds reading the backend: where each read from last, and which
    /// pipelines each has to read next.
    feeds: Mutex<Feeds>,
    /// The latest instant any pipeline was brought to or dated an
    /// operation at, in nanoseconds since the epoch (see
    /// [`MemoryBackend::feed_now`]); `far` when one was beyond what that
    /// can hold.
    latest: AtomicI64,
    far: AtomicBool,
}

/// The feeds reading the backend.
///
/// A feed reads only the pipelines that may have changed since its last
/// read, not every pipeline: those changed through the backend since
/// (`touched`) and those that will change by themselves or still hold
/// changes it may need (`live`), so that a read costs what changed, not
/// how many pipelines there are. Its first read reads them all.
///
/// **Closing.** Every read closes the instants up to the time it read at
/// (`closed`) for every pipeline, read or not: an operation on a pipeline
/// first takes this lock, notes the pipeline as touched for every feed,
/// and reads `closed`, which its changes are dated after. Both happen in
/// one critical section, as does a read's taking its touched pipelines
/// and moving `closed` on: so either the operation's pipeline is among
/// those the read takes (and the read waits on the pipeline's lock for the
/// operation to end), or the operation is dated after the read.
#[derive(Debug, Default)]
struct Feeds {
    next: u64,
    readers: HashMap<u64, Reader>,
    /// The latest instant a feed read at; `None` before the first read.
    closed: Option<Timestamp>,
}

/// One feed's position and the pipelines it has to read.
#[derive(Debug)]
struct Reader {
    /// Where it last read from, or when it was made, before its first read.
    from: Timestamp,
    /// Whether its next read reads every pipeline: its first does.
    all: bool,
    /// The pipelines changed through the backend since its last read.
    touched: Vec<u32>,
    /// Whether each pipeline is in `touched`.
    marked: Vec<bool>,
    /// The pipelines its last read found to change by themselves later, or
    /// to still hold changes.
    live: Vec<u32>,
}

/// One pipeline: its owner's number, readable without the lock since it
/// never changes, its state, and the signal of changes to it.
///
/// A std [`Mutex`] rather than tokio's: the state is only ever touched in
/// short, synchronous sections (no `.await` while it is held, there being no
/// I/O), and std's lock is cheaper and cannot be held across an `.await` by
/// mistake (its guard is not `Send`), as tokio's own guidance and
/// mini-redis's `db.rs` explain. One lock per pipeline, not one for the
/// whole backend, so that executes of different pipelines never wait on
/// each other.
struct Slot {
    customer: u32,
    state: Mutex<PipelineState>,
    /// Bumped after every change made to the state (trigger, pause,
    /// unpause, cancel); waiters subscribe under the state's lock, so none
    /// misses a change made after it looked. The changes the simulation
    /// makes by itself need no signal: each waiter knows when the next one
    /// is due. A tokio `watch` rather than a `Notify`: a receiver is
    /// counted, so that [`MemoryBackend::waiters`] can tell that none is
    /// left behind. Made by the first waiter: most pipelines never have
    /// one, and a signal is some hundreds of bytes. A change made before
    /// it exists has nobody to wake; one made after is seen, the signal
    /// being made under the state's lock.
    changes: OnceLock<watch::Sender<()>>,
}

impl Slot {
    /// Locks the pipeline's state.
    fn lock(&self) -> MutexGuard<'_, PipelineState> {
        lock(&self.state)
    }

    /// Wakes the pipeline's waiters: its state changed.
    fn changed(&self) {
        if let Some(changes) = self.changes.get() {
            wake(changes);
        }
    }

    /// A receiver of the pipeline's changes; call it under the state's
    /// lock.
    fn subscribe(&self) -> watch::Receiver<()> {
        self.changes
            .get_or_init(|| watch::Sender::new(()))
            .subscribe()
    }
}

impl MemoryBackend {
    /// A backend over these pipelines, with no runs yet, on the service's
    /// clock ([`TokioClock`]: tests drive it with `tokio::time::pause()` and
    /// `tokio::time::advance()`).
    ///
    /// Ids are expected to be unique, as [`load_fixture`] makes sure; a
    /// pipeline whose id was already given is ignored.
    pub fn new(config: MemoryConfig, pipelines: Vec<Pipeline>) -> Self {
        let limits = Limits {
            // A duration too long for chrono is one no run ever outlives.
            run_duration: TimeDelta::from_std(config.run_duration).ok(),
            queue_limit: config.queue_limit,
            history_limit: config.history_limit,
        };
        let mut slots = Vec::with_capacity(pipelines.len());
        let mut numbers = HashMap::with_capacity_and_hasher(
            pipelines.len(),
            foldhash::fast::RandomState::default(),
        );
        let mut customers: Vec<CustomerId> = Vec::new();
        let mut by_customer: HashMap<CustomerId, (u32, Vec<u32>)> = HashMap::new();
        for pipeline in pipelines {
            let Some(key) = id_key(&pipeline.id) else {
                continue;
            };
            if numbers.contains_key(&key) {
                continue;
            }
            let Ok(number) = u32::try_from(slots.len()) else {
                break;
            };
            let next_customer = u32::try_from(customers.len()).unwrap_or(u32::MAX);
            let (customer, owned) = by_customer
                .entry(pipeline.customer_id.clone())
                .or_insert_with(|| {
                    customers.push(pipeline.customer_id.clone());
                    (next_customer, Vec::new())
                });
            owned.push(number);
            numbers.insert(key, number);
            slots.push(Slot {
                customer: *customer,
                state: Mutex::new(PipelineState::new(pipeline, limits)),
                changes: OnceLock::new(),
            });
        }
        let by_customer = by_customer
            .into_iter()
            .map(|(customer, (_, mut owned))| {
                owned.shrink_to_fit();
                (customer, owned)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                config,
                slots,
                numbers,
                customers,
                by_customer,
                any_change: watch::Sender::new(()),
                feeds: Mutex::new(Feeds::default()),
                latest: AtomicI64::new(i64::MIN),
                far: AtomicBool::new(false),
            }),
            clock: Arc::new(TokioClock::start()),
        }
    }

    /// The same backend, reading the time from `clock`. Call it before the
    /// backend is cloned: clones made earlier keep the clock they had.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A backend over the built-in demo set ([`demo_pipelines`]).
    pub fn demo(config: MemoryConfig) -> Self {
        Self::new(config, demo_pipelines())
    }

    /// A backend over the pipelines of a fixture file, those without
    /// instants created now.
    ///
    /// # Errors
    /// Every error of [`load_fixture`].
    pub fn from_fixture(config: MemoryConfig, path: &Path) -> Result<Self, FixtureError> {
        let backend = Self::new(config, Vec::new());
        let pipelines = load_fixture(path, backend.clock.now())?;
        Ok(Self::new(config, pipelines))
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// How many waiters ([`RunWatch::changed`]) wait now, on every
    /// pipeline: none is left behind once its wait is over or dropped.
    pub fn waiters(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter_map(|slot| slot.changes.get())
            .map(watch::Sender::receiver_count)
            .sum()
    }

    /// Wakes the waiters of `slot`'s runs and the feeds: its state
    /// changed.
    fn changed(&self, slot: &Slot) {
        slot.changed();
        wake(&self.inner.any_change);
    }

    /// The instant a feed reads the pipelines at: the clock's now, or the
    /// latest instant a pipeline dated an operation, when that is later.
    /// Operations are dated strictly after the last read of their pipeline,
    /// so with a clock that stands still (or runs behind the run ids a
    /// burst of triggers hands out) they would otherwise stay ahead of every
    /// read until the clock passed them.
    pub fn feed_now(&self) -> Timestamp {
        let now = self.clock.now();
        if self.inner.far.load(Ordering::SeqCst) {
            // An instant beyond the nanosecond counter: ask every pipeline.
            return self
                .inner
                .slots
                .iter()
                .map(|slot| slot.lock().latest())
                .fold(now, Timestamp::max);
        }
        match self.inner.latest.load(Ordering::SeqCst) {
            i64::MIN => now,
            nanos => now.max(Timestamp::from_timestamp_nanos(nanos)),
        }
    }

    /// Notes the instant `state` was brought to, for [`Self::feed_now`];
    /// call it under the state's lock, after every section that may have
    /// moved it.
    fn publish(&self, state: &PipelineState) {
        self.publish_instant(state.latest());
    }

    /// [`Self::publish`] of an instant a pipeline was brought to.
    fn publish_instant(&self, latest: Timestamp) {
        match latest.timestamp_nanos_opt() {
            Some(nanos) => {
                self.inner.latest.fetch_max(nanos, Ordering::SeqCst);
            }
            None if latest > Timestamp::UNIX_EPOCH => self.inner.far.store(true, Ordering::SeqCst),
            // Before 1677: earlier than anything a clock reads.
            None => {}
        }
    }

    /// Notes, under pipeline `number`'s lock and before an operation
    /// changes it, that the feeds have it to read, and closes its instants
    /// up to the latest a feed read at (see [`Feeds`]); with no feed, it
    /// writes nothing down any more.
    fn touch(&self, number: u32, state: &mut PipelineState) {
        let mut feeds = lock_feeds(&self.inner.feeds);
        if feeds.readers.is_empty() {
            drop(feeds);
            state.stop_journal();
            return;
        }
        let index = number as usize;
        for reader in feeds.readers.values_mut() {
            if !reader.all && reader.marked.get(index) == Some(&false) {
                reader.marked[index] = true;
                reader.touched.push(number);
            }
        }
        let closed = feeds.closed;
        drop(feeds);
        state.catch_up(closed);
    }

    /// A receiver woken by the next change made through the backend, on
    /// any pipeline.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.inner.any_change.subscribe()
    }

    /// Counts a new feed among the readers, holding the changes from now
    /// on until it reads; answers its number. Its first read reads every
    /// pipeline.
    pub(crate) fn add_reader(&self) -> u64 {
        let now = self.clock.now();
        let mut feeds = lock_feeds(&self.inner.feeds);
        let id = feeds.next;
        feeds.next += 1;
        feeds.readers.insert(
            id,
            Reader {
                from: now,
                all: true,
                touched: Vec::new(),
                marked: vec![false; self.inner.slots.len()],
                live: Vec::new(),
            },
        );
        id
    }

    /// Forgets feed `id`; when it was the last, the pipelines stop writing
    /// changes down.
    pub(crate) fn remove_reader(&self, id: u64) {
        let last = {
            let mut feeds = lock_feeds(&self.inner.feeds);
            feeds.readers.remove(&id);
            feeds.readers.is_empty()
        };
        if last {
            // A pipeline's lock, then the feeds', as operations take them;
            // a feed counted meanwhile finds the journals kept.
            for slot in &self.inner.slots {
                let mut state = slot.lock();
                if lock_feeds(&self.inner.feeds).readers.is_empty() {
                    state.stop_journal();
                }
            }
        }
    }

    /// How many feeds wait for a change now.
    pub(crate) fn feeds_waiting(&self) -> usize {
        self.inner.any_change.receiver_count()
    }

    /// One read by feed `reader` (see [`PipelineState::feed`]) of the
    /// pipelines that may have changed since its last (all of them, the
    /// first time), at [`Self::feed_now`]: adds to `out` the changes from
    /// `from` (now, when `None`) to now with their customer, and answers
    /// now and the first instant after it at which a pipeline will change
    /// by itself.
    pub(crate) fn read(
        &self,
        reader: u64,
        from: Option<Timestamp>,
        out: &mut Vec<(CustomerId, Change)>,
    ) -> (Timestamp, Option<Timestamp>) {
        let now = self.feed_now();
        let from = from.unwrap_or(now);
        let (numbers, keep_from) = {
            let mut feeds = lock_feeds(&self.inner.feeds);
            feeds.closed = Some(feeds.closed.map_or(now, |closed| closed.max(now)));
            let Some(position) = feeds.readers.get_mut(&reader) else {
                return (now, None);
            };
            position.from = from;
            let numbers: Vec<u32> = if std::mem::take(&mut position.all) {
                position.touched.clear();
                position.live.clear();
                position.marked.fill(false);
                (0..self.inner.slots.len())
                    .filter_map(|index| u32::try_from(index).ok())
                    .collect()
            } else {
                let mut numbers = std::mem::take(&mut position.touched);
                for number in &numbers {
                    if let Some(marked) = position.marked.get_mut(*number as usize) {
                        *marked = false;
                    }
                }
                numbers.append(&mut position.live);
                numbers.sort_unstable();
                numbers.dedup();
                numbers
            };
            let keep_from = feeds.readers.values().map(|reader| reader.from).min();
            (numbers, keep_from)
        };
        let mut next: Option<Timestamp> = None;
        let mut live = Vec::new();
        let mut changes = Vec::new();
        for number in numbers {
            let Some(slot) = self.inner.slots.get(number as usize) else {
                continue;
            };
            let (ahead, holds) = {
                let mut state = slot.lock();
                let ahead = state.feed(now, from, keep_from, &mut changes);
                self.publish(&state);
                (ahead, state.holds_changes())
            };
            if ahead.is_some() || holds {
                live.push(number);
            }
            next = match (next, ahead) {
                (Some(next), Some(ahead)) => Some(next.min(ahead)),
                (next, ahead) => next.or(ahead),
            };
            if !changes.is_empty() {
                let customer = self.customer_of(slot);
                out.extend(changes.drain(..).map(|change| (customer.clone(), change)));
            }
        }
        if !live.is_empty() {
            let mut feeds = lock_feeds(&self.inner.feeds);
            if let Some(position) = feeds.readers.get_mut(&reader) {
                position.live.append(&mut live);
            }
        }
        (now, next)
    }

    /// The owner of `slot`.
    fn customer_of(&self, slot: &Slot) -> &CustomerId {
        &self.inner.customers[slot.customer as usize]
    }

    /// The caller's pipeline with this id, and its number; `None` when it
    /// is missing or another customer's.
    fn slot(&self, ctx: &RequestContext, id: &PipelineId) -> Option<(u32, &Slot)> {
        let number = *self.inner.numbers.get(&id_key(id)?)?;
        let slot = self.inner.slots.get(number as usize)?;
        (self.customer_of(slot) == ctx.customer()).then_some((number, slot))
    }

    /// The caller's pipeline with this id, locked; `None` when it is missing
    /// or another customer's.
    fn visible(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Option<MutexGuard<'_, PipelineState>> {
        self.slot(ctx, id).map(|(_, slot)| slot.lock())
    }
}

/// Locks the feeds; as with the pipelines, a poisoned lock is taken over
/// (nothing under it panics).
fn lock_feeds(feeds: &Mutex<Feeds>) -> MutexGuard<'_, Feeds> {
    feeds.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a pipeline's state. A poisoned lock is taken over: the sections
/// under it have no panicking path, and serving the state beats failing the
/// pipeline until a restart.
fn lock(state: &Mutex<PipelineState>) -> MutexGuard<'_, PipelineState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.inner.config)
            .field("pipelines", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

// The time is read after the lock is taken, so that each pipeline sees its
// instants in order even when callers race for the lock.

#[async_trait]
impl PipelineRepository for MemoryBackend {
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError> {
        let state = self
            .visible(ctx, id)
            .ok_or_else(|| GetPipelineError::NotFound(id.clone()))?;
        Ok(state.pipeline().clone())
    }

    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError> {
        let Some(numbers) = self.inner.by_customer.get(ctx.customer()) else {
            return Ok(Vec::new());
        };
        let now = self.clock.now();
        let mut latest = now;
        let summaries = numbers
            .iter()
            .filter_map(|number| self.inner.slots.get(*number as usize))
            .map(|slot| {
                let mut state = slot.lock();
                let last_status = state.last_status(now);
                latest = latest.max(state.latest());
                PipelineSummary::new(state.pipeline().clone(), last_status)
            })
            .collect();
        self.publish_instant(latest);
        Ok(summaries)
    }

    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let (number, slot) = self
            .slot(ctx, id)
            .ok_or_else(|| SetPausedError::NotFound(id.clone()))?;
        let mut state = slot.lock();
        self.touch(number, &mut state);
        let done = state.set_paused(paused, self.clock.now());
        self.publish(&state);
        drop(state);
        done?;
        self.changed(slot);
        Ok(())
    }
}

#[async_trait]
impl Orchestrator for MemoryBackend {
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        // Visibility, the paused check, the queue bound and the new run all
        // happen under one lock, so no pause or other trigger slips between.
        // An idempotency key needs nothing here: a trigger either answers or
        // fails before it made a run, so a retry has no lost run to find.
        let id = request.pipeline_id();
        let (number, slot) = self
            .slot(ctx, id)
            .ok_or_else(|| ExecuteError::NotFound(id.clone()))?;
        let mut state = slot.lock();
        self.touch(number, &mut state);
        let run = state.trigger(request.conf(), self.clock.now());
        self.publish(&state);
        drop(state);
        let run = run?;
        self.changed(slot);
        Ok(run)
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        let mut state = self
            .visible(ctx, id)
            .ok_or_else(|| ListRunsError::NotFound(id.clone()))?;
        let page = state.list_runs(query, self.clock.now());
        self.publish(&state);
        Ok(page)
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        let mut state = self
            .visible(ctx, id)
            .ok_or_else(|| GetRunError::PipelineNotFound(id.clone()))?;
        let run = state.get_run(run_id, self.clock.now());
        self.publish(&state);
        run.ok_or_else(|| GetRunError::run_not_found(id, run_id))
    }

    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        let (number, slot) = self
            .slot(ctx, id)
            .ok_or_else(|| CancelRunError::PipelineNotFound(id.clone()))?;
        let mut state = slot.lock();
        self.touch(number, &mut state);
        let run = state.cancel(run_id, self.clock.now());
        self.publish(&state);
        drop(state);
        let run = run?;
        self.changed(slot);
        Ok(run)
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Waits are woken by the change itself: by the pipeline's change signal
/// when a trigger, pause, unpause or cancel changes its state, and by a
/// timer set to the next instant the simulation changes the run by itself
/// (the end of a running run, the start of a queued one behind a run whose
/// end is known, or the instant a finished run is forgotten). Nothing is
/// polled. A waiter costs a signal receiver and a timer, and leaves nothing
/// behind when its wait is over or dropped.
///
/// The timer runs on tokio's time, which the default clock ([`TokioClock`])
/// follows, so that under paused time a waiter wakes exactly at the
/// transition. With a clock that does not follow tokio's time (a
/// [`domain::ManualClock`]) changes made through the backend still wake
/// waiters at once, and a waiter re-reads the run whenever its timer fires.
#[async_trait]
impl RunWatch for MemoryBackend {
    async fn changed(&self, ctx: &RequestContext, seen: &Run) -> Result<Run, GetRunError> {
        let id = &seen.pipeline_id;
        let (_, slot) = self
            .slot(ctx, id)
            .ok_or_else(|| GetRunError::PipelineNotFound(id.clone()))?;
        loop {
            let (mut changes, next_change) = {
                let mut state = slot.lock();
                let now = self.clock.now();
                let watched = state.watch(&seen.id, now);
                self.publish(&state);
                let watched = watched.ok_or_else(|| GetRunError::run_not_found(id, &seen.id))?;
                if differs(&watched.run, seen) {
                    return Ok(watched.run);
                }
                // Subscribed under the lock: every change after this read is
                // one this receiver has not seen yet.
                let changes = slot.subscribe();
                let next_change = watched
                    .next_change
                    .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO));
                (changes, next_change)
            };
            // The lock is released: the wait holds nothing but the receiver
            // and the timer.
            tokio::select! {
                _ = changes.changed() => {}
                () = sleep_for(next_change) => {}
            }
        }
    }
}

/// Sleeps for `duration`, or for ever when there is none.
async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Whether the run read differs from the one seen: another status, or a
/// later `updated_at`.
fn differs(run: &Run, seen: &Run) -> bool {
    run.status != seen.status || run.updated_at > seen.updated_at
}

/// Wakes the receivers of `signal`, if it has any: with none, the send
/// (which locks each of the channel's wait lists) is skipped, as most of
/// them are under load, while the feed lets changes gather.
///
/// Nothing is missed: a receiver subscribes before it reads the state it
/// waits on, under the lock that the change was made under (a pipeline's,
/// or the feed's section), so either it reads the change, or its
/// subscription happened before the change's count of receivers and is
/// counted.
fn wake(signal: &watch::Sender<()>) {
    if signal.receiver_count() > 0 {
        signal.send_replace(());
    }
}

#[cfg(test)]
mod tests {
    //! What a feed reads: the cost of a read follows what changed, not
    //! how many pipelines there are. What it tells is tested through
    //! [`crate::MemoryChanges`] in `tests/memory/feed.rs`.

    use domain::{Caller, Pipeline, TriggerRequest};

    use super::*;

    impl MemoryBackend {
        /// How many pipelines feed `reader`'s next read reads; `None`
        /// for all of them.
        fn to_read(&self, reader: u64) -> Option<usize> {
            let feeds = lock_feeds(&self.inner.feeds);
            let position = feeds.readers.get(&reader)?;
            if position.all {
                return None;
            }
            let mut numbers: Vec<u32> = position
                .touched
                .iter()
                .chain(&position.live)
                .copied()
                .collect();
            numbers.sort_unstable();
            numbers.dedup();
            Some(numbers.len())
        }
    }

    fn pipeline_id(index: usize) -> PipelineId {
        PipelineId::parse(&format!("00000000-0000-4000-8000-{index:012}")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn after_its_first_read_a_feed_reads_only_the_pipelines_that_changed() {
        let customer = CustomerId::parse("acme").unwrap();
        let pipelines = (0..1_000)
            .map(|index| {
                Pipeline::new(
                    pipeline_id(index),
                    customer.clone(),
                    format!("p{index}"),
                    Timestamp::UNIX_EPOCH,
                )
            })
            .collect();
        let config = MemoryConfig {
            run_duration: Duration::ZERO,
            ..MemoryConfig::default()
        };
        let backend = MemoryBackend::new(config, pipelines);
        let reader = backend.add_reader();
        assert_eq!(backend.to_read(reader), None, "the first read reads all");
        let mut out = Vec::new();
        let (mut now, _) = backend.read(reader, None, &mut out);
        assert_eq!(backend.to_read(reader), Some(0));

        let ctx = RequestContext::new(Caller::new(customer.clone()));
        let run = backend
            .trigger(&ctx, &TriggerRequest::new(pipeline_id(7)))
            .await
            .unwrap();
        assert_eq!(backend.to_read(reader), Some(1));
        (now, _) = backend.read(reader, Some(now), &mut out);
        assert_eq!(
            out.iter()
                .map(|(owner, change)| (owner, &change.run.id))
                .collect::<Vec<_>>(),
            [(&customer, &run.id)]
        );

        // The pipeline is read again only until its change is forgotten.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(1)).await;
            (now, _) = backend.read(reader, Some(now), &mut out);
        }
        assert_eq!(backend.to_read(reader), Some(0));
        // A read tells its `from` instant again; the cursor of
        // `MemoryChanges` skips what it told.
        assert!(out.iter().all(|(_, change)| change.run.id == run.id));
    }
}
