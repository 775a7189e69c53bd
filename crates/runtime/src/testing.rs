//! Small in-test implementations of the feed's and webhooks' ports, each
//! observable and able to fail on demand, for the loops' tests.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{TimeDelta, TimeZone, Utc};
use domain::{
    BackendError, Caller, CustomerId, Delivery, DeliveryId, DeliveryQueue, EventId, EventLog,
    FeedRead, NewWebhook, PipelineId, RegisterWebhookError, RequestContext, Run, RunChange,
    RunChangeSource, RunEvent, RunEventType, RunId, RunStatus, SendOutcome, SourceCursor,
    StorageError, Timestamp, Webhook, WebhookId, WebhookSender, WebhookStore, Webhooks,
};
use tokio::{sync::watch, time::Instant};

use crate::metrics::{DeliveryOutcome, WebhookMetrics};

pub(crate) const PIPELINE_A: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
pub(crate) const PIPELINE_B: &str = "2c44be3a_44e4_4948_8ffc_94d93d9ca1ae";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fixed instant, so that no result depends on today's date.
pub(crate) fn at(seconds: i64) -> Timestamp {
    Utc.timestamp_opt(1_734_517_800 + seconds, 0).unwrap()
}

/// The `n`th change: run `run-<n>` of `customer`'s `pipeline`, now in
/// `status`.
pub(crate) fn change(customer: &str, pipeline: &str, status: RunStatus, n: usize) -> RunChange {
    RunChange::new(
        CustomerId::parse(customer).unwrap(),
        Run::new(
            RunId::parse(&format!("run-{n}")).unwrap(),
            PipelineId::parse(pipeline).unwrap(),
            status,
            at(0),
        ),
    )
}

/// Waits, in paused time, until `done` holds, looking every 10 ms; panics
/// after `within`. Answers how long it took.
pub(crate) async fn until(within: Duration, done: impl FnMut() -> bool) -> Duration {
    until_every(Duration::from_millis(10), within, done).await
}

/// [`until`], looking every `step`.
pub(crate) async fn until_every(
    step: Duration,
    within: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() <= within, "not within {within:?}");
        tokio::time::sleep(step).await;
    }
    start.elapsed()
}

/// An engine: every change in order; a cursor is how many were told.
/// Answers after its poll interval, and holds its answers while its gate
/// is closed.
#[derive(Debug)]
pub(crate) struct FakeSource {
    state: Mutex<SourceState>,
    interval: Duration,
    gate: watch::Sender<bool>,
    at_gate: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct SourceState {
    history: Vec<RunChange>,
    failures: usize,
    asked: Vec<(Option<String>, Instant)>,
}

impl FakeSource {
    pub(crate) fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            interval,
            gate: watch::channel(false).0,
            at_gate: watch::channel(0).0,
        })
    }

    /// A change happens on the engine.
    pub(crate) fn push(&self, change: RunChange) {
        lock(&self.state).history.push(change);
    }

    /// The next `n` answers are failures.
    pub(crate) fn fail_next(&self, n: usize) {
        lock(&self.state).failures = n;
    }

    /// The cursors asked with, and when.
    pub(crate) fn asked(&self) -> Vec<(Option<String>, Instant)> {
        lock(&self.state).asked.clone()
    }

    /// Answers wait, after their interval, until the gate opens.
    pub(crate) fn close_gate(&self) {
        self.gate.send_replace(true);
    }

    pub(crate) fn open_gate(&self) {
        self.gate.send_replace(false);
    }

    /// Waits until `n` answers in all have reached the closed gate.
    pub(crate) async fn reached_gate(&self, n: usize) {
        let _ = self.at_gate.subscribe().wait_for(|at| *at >= n).await;
    }
}

#[async_trait]
impl RunChangeSource for FakeSource {
    async fn changes(
        &self,
        cursor: Option<SourceCursor>,
    ) -> Result<(Vec<RunChange>, SourceCursor), BackendError> {
        lock(&self.state).asked.push((
            cursor.as_ref().map(|c| c.as_str().to_owned()),
            Instant::now(),
        ));
        tokio::time::sleep(self.interval).await;
        if *self.gate.borrow() {
            self.at_gate.send_modify(|at| *at += 1);
            let _ = self.gate.subscribe().wait_for(|closed| !*closed).await;
        }
        let mut state = lock(&self.state);
        if state.failures > 0 {
            state.failures -= 1;
            return Err(BackendError::unavailable("the engine is down"));
        }
        let told = match cursor {
            Some(cursor) => cursor.as_str().parse().unwrap(),
            None => state.history.len(),
        };
        Ok((
            state.history[told..].to_vec(),
            SourceCursor::new(state.history.len().to_string()),
        ))
    }
}

/// Failures to come, per call.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Failures {
    pub(crate) lease: usize,
    pub(crate) cursor: usize,
    pub(crate) append: usize,
    pub(crate) read: usize,
}

fn fail(count: &mut usize, what: &str) -> Result<(), StorageError> {
    if *count > 0 {
        *count -= 1;
        return Err(StorageError::new(format!("the store failed to {what}")));
    }
    Ok(())
}

/// An event log with a lease timed by tokio's clock; event ids are their
/// sequence numbers from 1.
#[derive(Debug)]
pub(crate) struct FakeLog {
    state: Mutex<LogState>,
    appended: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct LogState {
    lease: Option<(String, Instant)>,
    events: Vec<(u64, RunEvent)>,
    last_seq: u64,
    dropped_through: u64,
    cursor: Option<SourceCursor>,
    fenced: usize,
    failures: Failures,
}

impl FakeLog {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            appended: watch::channel(0).0,
        })
    }

    pub(crate) fn fail(&self, failures: Failures) {
        lock(&self.state).failures = failures;
    }

    /// The changes in the log, in order.
    pub(crate) fn changes(&self) -> Vec<RunChange> {
        lock(&self.state)
            .events
            .iter()
            .map(|(_, event)| event.change.clone())
            .collect()
    }

    /// Appends without the lease (for readers' tests); answers the id.
    pub(crate) fn push(&self, change: RunChange) -> EventId {
        let mut state = lock(&self.state);
        let id = state.add(change);
        self.appended.send_replace(state.last_seq);
        id
    }

    /// Drops the events up to sequence number `seq`, as retention does.
    pub(crate) fn drop_through(&self, seq: u64) {
        let mut state = lock(&self.state);
        state.events.retain(|(s, _)| *s > seq);
        state.dropped_through = state.dropped_through.max(seq);
    }

    /// Who holds the lease now, if unexpired.
    pub(crate) fn holder(&self) -> Option<String> {
        let state = lock(&self.state);
        state
            .lease
            .as_ref()
            .filter(|(_, until)| *until > Instant::now())
            .map(|(holder, _)| holder.clone())
    }

    /// Gives the lease to `holder` whoever holds it (a holder that paused
    /// past its ttl while another took over).
    pub(crate) fn give_lease(&self, holder: &str, ttl: Duration) {
        lock(&self.state).lease = Some((holder.to_owned(), Instant::now() + ttl));
    }

    /// Appends refused for want of the lease.
    pub(crate) fn fenced(&self) -> usize {
        lock(&self.state).fenced
    }

    pub(crate) fn cursor(&self) -> Option<String> {
        lock(&self.state)
            .cursor
            .as_ref()
            .map(|c| c.as_str().to_owned())
    }
}

impl LogState {
    fn add(&mut self, change: RunChange) -> EventId {
        self.last_seq += 1;
        let id = EventId::parse(&self.last_seq.to_string()).unwrap();
        self.events
            .push((self.last_seq, RunEvent::new(id.clone(), change)));
        id
    }

    fn holds(&self, holder: &str) -> bool {
        matches!(&self.lease, Some((h, until)) if h == holder && *until > Instant::now())
    }

    fn read(&self, after: Option<&EventId>, limit: usize) -> FeedRead {
        let after: u64 = after.map_or(0, |id| id.as_str().parse().unwrap());
        if after < self.dropped_through {
            return FeedRead::Gap;
        }
        FeedRead::Events(
            self.events
                .iter()
                .filter(|(seq, _)| *seq > after)
                .take(limit)
                .map(|(_, event)| event.clone())
                .collect(),
        )
    }
}

#[async_trait]
impl EventLog for FakeLog {
    async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, StorageError> {
        let mut state = lock(&self.state);
        fail(&mut state.failures.lease, "lease")?;
        let free = match &state.lease {
            Some((other, until)) => other == holder || *until <= Instant::now(),
            None => true,
        };
        if free {
            state.lease = Some((holder.to_owned(), Instant::now() + ttl));
        }
        Ok(free)
    }

    async fn source_cursor(&self) -> Result<Option<SourceCursor>, StorageError> {
        let mut state = lock(&self.state);
        fail(&mut state.failures.cursor, "read the cursor")?;
        Ok(state.cursor.clone())
    }

    async fn append(
        &self,
        holder: &str,
        changes: &[RunChange],
        cursor: &SourceCursor,
    ) -> Result<Option<Vec<EventId>>, StorageError> {
        let mut state = lock(&self.state);
        fail(&mut state.failures.append, "append")?;
        if !state.holds(holder) {
            state.fenced += 1;
            return Ok(None);
        }
        let ids = changes
            .iter()
            .map(|change| state.add(change.clone()))
            .collect();
        state.cursor = Some(cursor.clone());
        self.appended.send_replace(state.last_seq);
        Ok(Some(ids))
    }

    async fn head(&self) -> Result<Option<EventId>, StorageError> {
        Ok(lock(&self.state)
            .events
            .last()
            .map(|(_, event)| event.id.clone()))
    }

    async fn read(
        &self,
        after: Option<EventId>,
        limit: usize,
        wait: Duration,
    ) -> Result<FeedRead, StorageError> {
        let mut appended = self.appended.subscribe();
        {
            let mut state = lock(&self.state);
            fail(&mut state.failures.read, "read")?;
            match state.read(after.as_ref(), limit) {
                FeedRead::Events(events) if events.is_empty() => {}
                found => return Ok(found),
            }
        }
        let _ = tokio::time::timeout(wait, appended.changed()).await;
        Ok(lock(&self.state).read(after.as_ref(), limit))
    }
}

/// Webhooks in memory; registers through the domain's use case.
#[derive(Debug, Default)]
pub(crate) struct FakeStore {
    webhooks: Mutex<Vec<Webhook>>,
    list_failures: Mutex<usize>,
}

impl FakeStore {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Registers a webhook of `customer` for `events` (none: all) of
    /// `pipelines` (none: all); `n` makes its id and secret.
    pub(crate) async fn register(
        self: &Arc<Self>,
        customer: &str,
        events: &[RunEventType],
        pipelines: &[&str],
        n: u8,
    ) -> Webhook {
        let mut new = NewWebhook::new(format!("https://hooks.example/{n}"));
        new.events = events.to_vec();
        new.pipeline_ids = pipelines
            .iter()
            .map(|p| PipelineId::parse(p).unwrap())
            .collect();
        let ctx = RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()));
        Webhooks::new(Arc::clone(self) as Arc<dyn WebhookStore>, false)
            .register(&ctx, new, ([n; 16], [n; 32]), at(0))
            .await
            .unwrap()
    }

    pub(crate) fn fail_lists(&self, n: usize) {
        *lock(&self.list_failures) = n;
    }
}

#[async_trait]
impl WebhookStore for FakeStore {
    async fn create(&self, webhook: &Webhook, limit: usize) -> Result<(), RegisterWebhookError> {
        let mut webhooks = lock(&self.webhooks);
        if webhooks
            .iter()
            .filter(|w| w.customer == webhook.customer)
            .count()
            >= limit
        {
            return Err(RegisterWebhookError::TooMany { limit });
        }
        webhooks.push(webhook.clone());
        Ok(())
    }

    async fn list(&self, customer: &CustomerId) -> Result<Vec<Webhook>, StorageError> {
        fail(&mut lock(&self.list_failures), "list webhooks")?;
        Ok(lock(&self.webhooks)
            .iter()
            .filter(|w| w.customer == *customer)
            .cloned()
            .collect())
    }

    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError> {
        let mut customers: Vec<_> = lock(&self.webhooks)
            .iter()
            .map(|w| w.customer.clone())
            .collect();
        customers.sort();
        customers.dedup();
        Ok(customers)
    }

    async fn delete(&self, customer: &CustomerId, id: &WebhookId) -> Result<bool, StorageError> {
        let mut webhooks = lock(&self.webhooks);
        let before = webhooks.len();
        webhooks.retain(|w| !(w.customer == *customer && w.id == *id));
        Ok(webhooks.len() < before)
    }
}

/// Deliveries in memory, leased by due time as the real queues do.
#[derive(Debug, Default)]
pub(crate) struct FakeQueue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    dispatched: Option<EventId>,
    waiting: BTreeMap<DeliveryId, (Delivery, Option<Timestamp>)>,
    enqueues: usize,
    done: Vec<DeliveryId>,
    given_up: Vec<DeliveryId>,
    take_failures: usize,
    takes: usize,
}

impl FakeQueue {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    pub(crate) fn set_dispatched(&self, id: EventId) {
        lock(&self.state).dispatched = Some(id);
    }

    pub(crate) fn dispatched_now(&self) -> Option<String> {
        lock(&self.state)
            .dispatched
            .as_ref()
            .map(|id| id.as_str().to_owned())
    }

    /// The deliveries waiting: (webhook, event id, attempts).
    pub(crate) fn waiting(&self) -> Vec<(WebhookId, String, u32)> {
        lock(&self.state)
            .waiting
            .values()
            .map(|(d, _)| {
                (
                    d.webhook.clone(),
                    d.event.id.as_str().to_owned(),
                    d.attempts,
                )
            })
            .collect()
    }

    pub(crate) fn enqueues(&self) -> usize {
        lock(&self.state).enqueues
    }

    /// How many times a worker asked for due deliveries.
    pub(crate) fn takes(&self) -> usize {
        lock(&self.state).takes
    }

    pub(crate) fn done(&self) -> Vec<DeliveryId> {
        lock(&self.state).done.clone()
    }

    pub(crate) fn given_up(&self) -> Vec<DeliveryId> {
        lock(&self.state).given_up.clone()
    }

    pub(crate) fn fail_takes(&self, n: usize) {
        lock(&self.state).take_failures = n;
    }
}

#[async_trait]
impl DeliveryQueue for FakeQueue {
    async fn dispatched(&self) -> Result<Option<EventId>, StorageError> {
        Ok(lock(&self.state).dispatched.clone())
    }

    async fn enqueue(&self, deliveries: &[Delivery], up_to: &EventId) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        for delivery in deliveries {
            state
                .waiting
                .entry(delivery.id.clone())
                .or_insert_with(|| (delivery.clone(), None));
        }
        state.dispatched = Some(up_to.clone());
        state.enqueues += 1;
        Ok(())
    }

    async fn take_due(
        &self,
        now: Timestamp,
        limit: usize,
        _worker: &str,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StorageError> {
        let mut state = lock(&self.state);
        state.takes += 1;
        fail(&mut state.take_failures, "take due deliveries")?;
        let until = now + TimeDelta::from_std(lease).unwrap();
        let mut due: Vec<_> = state
            .waiting
            .values_mut()
            .filter(|(d, leased)| d.due <= now && leased.is_none_or(|l| l <= now))
            .collect();
        due.sort_by_key(|(d, _)| d.due);
        Ok(due
            .into_iter()
            .take(limit)
            .map(|(d, leased)| {
                *leased = Some(until);
                d.clone()
            })
            .collect())
    }

    async fn done(&self, id: &DeliveryId) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.waiting.remove(id);
        state.done.push(id.clone());
        Ok(())
    }

    async fn retry(
        &self,
        id: &DeliveryId,
        attempts: u32,
        due: Timestamp,
    ) -> Result<(), StorageError> {
        if let Some((d, leased)) = lock(&self.state).waiting.get_mut(id) {
            d.attempts = attempts;
            d.due = due;
            *leased = None;
        }
        Ok(())
    }

    async fn give_up(&self, id: &DeliveryId) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        state.waiting.remove(id);
        state.given_up.push(id.clone());
        Ok(())
    }

    async fn pending(&self) -> Result<(usize, Option<Timestamp>), StorageError> {
        let state = lock(&self.state);
        let oldest = state.waiting.values().map(|(d, _)| d.first_due).min();
        Ok((state.waiting.len(), oldest))
    }
}

/// A sender that answers as told (delivered once its script is used up),
/// after `delay`, counting the attempts under way.
#[derive(Debug, Default)]
pub(crate) struct FakeSender {
    script: Mutex<VecDeque<SendOutcome>>,
    refuse_all: Mutex<bool>,
    sent: Mutex<Vec<(DeliveryId, Timestamp)>>,
    delay: Duration,
    under_way: AtomicUsize,
    most_under_way: AtomicUsize,
}

impl FakeSender {
    pub(crate) fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            ..Self::default()
        })
    }

    pub(crate) fn answer(&self, outcomes: impl IntoIterator<Item = SendOutcome>) {
        lock(&self.script).extend(outcomes);
    }

    /// Every attempt fails, whatever the script says.
    pub(crate) fn fail_all(&self) {
        *lock(&self.refuse_all) = true;
    }

    /// The attempts made: which delivery, signed at what time.
    pub(crate) fn sent(&self) -> Vec<(DeliveryId, Timestamp)> {
        lock(&self.sent).clone()
    }

    pub(crate) fn most_under_way(&self) -> usize {
        self.most_under_way.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl WebhookSender for FakeSender {
    async fn send(&self, _: &Webhook, delivery: &Delivery, now: Timestamp) -> SendOutcome {
        lock(&self.sent).push((delivery.id.clone(), now));
        let under_way = self.under_way.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_under_way.fetch_max(under_way, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.under_way.fetch_sub(1, Ordering::SeqCst);
        if *lock(&self.refuse_all) {
            return SendOutcome::Failed("500 Internal Server Error".to_owned());
        }
        lock(&self.script)
            .pop_front()
            .unwrap_or(SendOutcome::Delivered)
    }
}

/// Metrics kept for the test to read.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    outcomes: Mutex<Vec<DeliveryOutcome>>,
    pending: Mutex<Option<(usize, Option<Duration>)>>,
    gaps: AtomicUsize,
}

impl Recorder {
    pub(crate) fn outcomes(&self) -> Vec<DeliveryOutcome> {
        lock(&self.outcomes).clone()
    }

    pub(crate) fn pending_seen(&self) -> Option<(usize, Option<Duration>)> {
        *lock(&self.pending)
    }

    pub(crate) fn gaps(&self) -> usize {
        self.gaps.load(Ordering::SeqCst)
    }
}

impl WebhookMetrics for Recorder {
    fn delivery(&self, outcome: DeliveryOutcome) {
        lock(&self.outcomes).push(outcome);
    }

    fn pending(&self, count: usize, oldest_age: Option<Duration>) {
        *lock(&self.pending) = Some((count, oldest_age));
    }

    fn dispatch_gap(&self) {
        self.gaps.fetch_add(1, Ordering::SeqCst);
    }
}
