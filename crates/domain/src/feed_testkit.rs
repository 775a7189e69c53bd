//! A conformance suite for the stores of the feed and of webhooks
//! ([`EventLog`], [`Listeners`], [`WebhookStore`], [`DeliveryQueue`]): the
//! behaviour every implementation must show, written once, run by each
//! implementation's own tests, so that the service behaves alike on every
//! store.
//!
//! As in [`idempotency_testkit`](crate::idempotency_testkit), each scenario
//! is a `pub async fn` that drives a store through its port and panics,
//! saying what went wrong, when the store misbehaves; the scenarios that
//! let time pass take a [`Wait`]. Each scenario expects a store of its own,
//! empty (on a shared server: keys of its own), and a [`Setup`] whose
//! prefix sets apart the names it uses (holders, customers), so that
//! scenarios running at once on one server never meet.
//!
//! Rules the scenarios hold stores to, beyond each method's documentation:
//! - an [`EventLog`]'s event ids are `<milliseconds>-<sequence>` (two
//!   decimal numbers), later events having greater ids by that pair, so
//!   that clients see one form whatever the store; an id in that form newer
//!   than the head reads as nothing yet, and an id in no such form reads as
//!   a [`FeedRead::Gap`];
//! - the lease goes to the first holder, is renewed by its holder, and is
//!   taken over by another only once its ttl has passed since it was last
//!   taken or renewed; an append of no changes records the cursor;
//! - a [`DeliveryQueue`] keeps no time of its own: a lease counts from the
//!   `now` given to [`DeliveryQueue::take_due`], and deliveries are taken
//!   earliest due first.
//!
//! Enable the `testkit` feature in the store crate's dev-dependencies and
//! write one test per scenario with the macros
//! [`event_log_conformance_tests!`](crate::event_log_conformance_tests),
//! [`listeners_conformance_tests!`](crate::listeners_conformance_tests),
//! [`webhook_store_conformance_tests!`](crate::webhook_store_conformance_tests)
//! and [`delivery_queue_conformance_tests!`](crate::delivery_queue_conformance_tests):
//!
//! ```text
//! use domain::feed_testkit::Setup;
//!
//! domain::event_log_conformance_tests! {
//!     #[tokio::test(start_paused = true)]
//!     |scenario| {
//!         scenario(&MyLog::default(), &Setup::paused_clock("")).await;
//!     }
//!     |scenario| {
//!         scenario(&MyLog::default(), &Setup::paused_clock(""), tokio::time::advance).await;
//!     }
//! }
//!
//! domain::delivery_queue_conformance_tests! {
//!     #[tokio::test]
//!     |scenario| {
//!         scenario(&MyQueue::default(), &Setup::paused_clock("")).await;
//!     }
//! }
//! ```
//!
//! Several scenarios run futures at once (a read and an append, creates
//! racing for the last places) without a runtime to spawn on: they poll
//! them together in one task, as a server's store would be called by
//! requests in flight together.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    task::Poll,
    time::Duration,
};

use chrono::{TimeDelta, TimeZone, Utc};

pub use crate::idempotency_testkit::Wait;
use crate::{
    CustomerId, Delivery, DeliveryId, DeliveryQueue, EventId, EventLog, FeedRead, Listeners,
    PipelineId, RegisterWebhookError, Run, RunChange, RunConf, RunEvent, RunEventType, RunId,
    RunStatus, SourceCursor, Timestamp, Webhook, WebhookId, WebhookSecret, WebhookStore,
    WebhookUrl,
};

/// The names and lifetimes the scenarios use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Put before every holder and customer name a scenario uses.
    pub prefix: String,
    /// A time no scenario outlasts: how long a read woken by an append
    /// may wait, and the lease of a holder that must keep it.
    pub long: Duration,
    /// The ttl of the lease or listener whose end a scenario lets pass.
    /// More than twice [`Setup::margin`].
    pub short: Duration,
    /// How far before [`Setup::short`] a scenario expects the lease or
    /// listener still there, and how far after it gone; also how long a
    /// read with nothing to find waits. With a real clock it must cover
    /// the store's round trips.
    pub margin: Duration,
}

impl Setup {
    /// Lifetimes for a store on a clock that the test moves by hand (such
    /// as tokio's, paused): a day, ten seconds, and a millisecond either
    /// side.
    pub fn paused_clock(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            long: Duration::from_secs(24 * 60 * 60),
            short: Duration::from_secs(10),
            margin: Duration::from_millis(1),
        }
    }

    /// Lifetimes for a store that keeps real time itself (such as a
    /// server), short enough to wait for: a minute, 600 ms, and 150 ms
    /// either side.
    pub fn real_clock(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            long: Duration::from_secs(60),
            short: Duration::from_millis(600),
            margin: Duration::from_millis(150),
        }
    }

    fn holder(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn customer(&self, name: &str) -> CustomerId {
        let raw = format!("{}{name}", self.prefix);
        CustomerId::parse(&raw)
            .unwrap_or_else(|_| panic!("the prefix {:?} makes no customer id", self.prefix))
    }

    /// Keeps the customers of this setup's scenarios only.
    fn own(&self, customers: Vec<CustomerId>) -> Vec<CustomerId> {
        customers
            .into_iter()
            .filter(|customer| customer.as_str().starts_with(&self.prefix))
            .collect()
    }

    /// Just before the short lifetime ends.
    fn before_short(&self) -> Duration {
        self.short.saturating_sub(self.margin)
    }

    /// A webhook id of its own for every `n` and prefix.
    fn webhook_id(&self, n: u8) -> WebhookId {
        // FNV-1a of the prefix, so that scenarios with other prefixes on
        // one server use other ids.
        let hash = self
            .prefix
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        let mut random = [n; 16];
        random[..8].copy_from_slice(&hash.to_be_bytes());
        WebhookId::new(random)
    }
}

/// The pipeline every change of the scenarios is of.
const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

/// An instant `seconds` after 2024-12-18T10:30:00Z: whole seconds, which
/// every store keeps exactly.
fn at(seconds: i64) -> Timestamp {
    Utc.timestamp_opt(1_734_517_800, 0)
        .single()
        .and_then(|start| start.checked_add_signed(TimeDelta::seconds(seconds)))
        .unwrap_or_else(|| panic!("{seconds} s from the scenarios' start is an instant"))
}

fn pipeline() -> PipelineId {
    PipelineId::parse(PIPELINE).unwrap_or_else(|_| panic!("{PIPELINE} is a pipeline id"))
}

/// The `n`th change of the scenarios, of `customer`: a run made at `n`
/// seconds, with parameters, in the status `n` picks.
fn change(customer: &CustomerId, n: i64) -> RunChange {
    let status = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Success,
        RunStatus::Failed,
    ][usize::try_from(n.rem_euclid(4)).unwrap_or(0)];
    let mut run = Run::new(RunId::manual(&at(n)), pipeline(), status, at(n));
    run.updated_at = at(n + 1);
    run.conf = RunConf::parse(serde_json::json!({"n": n, "date": "2024-12-18"}))
        .unwrap_or_else(|err| panic!("a scenario's parameters are valid: {err}"));
    if status == RunStatus::Failed {
        run.trace = Some(Run::CANCELLED_TRACE.to_owned());
    }
    RunChange::new(customer.clone(), run)
}

fn changes(setup: &Setup, numbers: std::ops::Range<i64>) -> Vec<RunChange> {
    let acme = setup.customer("acme");
    numbers.map(|n| change(&acme, n)).collect()
}

fn cursor(text: &str) -> SourceCursor {
    SourceCursor::new(text)
}

/// The id's `(milliseconds, sequence)`, panicking when it is not in the
/// log's form.
fn log_id(id: &EventId) -> (u64, u64) {
    id.as_str()
        .split_once('-')
        .and_then(|(millis, seq)| Some((millis.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or_else(|| panic!("event id {id} is not <milliseconds>-<sequence>"))
}

fn assert_increasing(ids: &[EventId], why: &str) {
    for pair in ids.windows(2) {
        assert!(
            log_id(&pair[0]) < log_id(&pair[1]),
            "{why}: event id {} comes after {} but is not greater",
            pair[1],
            pair[0]
        );
    }
}

/// Takes the lease for `holder`, for the whole scenario, panicking when
/// it is not granted.
async fn take_lease(log: &dyn EventLog, setup: &Setup, holder: &str) {
    let granted = log
        .lease(holder, setup.long)
        .await
        .unwrap_or_else(|err| panic!("the lease for {holder} failed: {err}"));
    assert!(granted, "the lease went to {holder}, its first holder");
}

async fn lease(log: &dyn EventLog, holder: &str, ttl: Duration) -> bool {
    log.lease(holder, ttl)
        .await
        .unwrap_or_else(|err| panic!("the lease for {holder} failed: {err}"))
}

/// Appends as `holder`, which must hold the lease; answers the new ids.
async fn append(
    log: &dyn EventLog,
    holder: &str,
    changes: &[RunChange],
    at: &SourceCursor,
) -> Vec<EventId> {
    let ids = log
        .append(holder, changes, at)
        .await
        .unwrap_or_else(|err| panic!("the append of {holder} failed: {err}"))
        .unwrap_or_else(|| panic!("the append of {holder}, which holds the lease, wrote nothing"));
    assert_eq!(
        ids.len(),
        changes.len(),
        "an append answers one id per change"
    );
    ids
}

async fn read(
    log: &dyn EventLog,
    after: Option<&EventId>,
    limit: usize,
    wait: Duration,
) -> FeedRead {
    log.read(after.cloned(), limit, wait)
        .await
        .unwrap_or_else(|err| panic!("the read after {after:?} failed: {err}"))
}

/// Reads expecting events, not a gap.
async fn read_events(
    log: &dyn EventLog,
    after: Option<&EventId>,
    limit: usize,
    wait: Duration,
    why: &str,
) -> Vec<RunEvent> {
    match read(log, after, limit, wait).await {
        FeedRead::Events(events) => events,
        FeedRead::Gap => panic!("{why}: the read after {after:?} answered a gap"),
    }
}

async fn head(log: &dyn EventLog) -> Option<EventId> {
    log.head()
        .await
        .unwrap_or_else(|err| panic!("the head failed: {err}"))
}

async fn source_cursor(log: &dyn EventLog) -> Option<SourceCursor> {
    log.source_cursor()
        .await
        .unwrap_or_else(|err| panic!("reading the source's cursor failed: {err}"))
}

fn ids_of(events: &[RunEvent]) -> Vec<EventId> {
    events.iter().map(|event| event.id.clone()).collect()
}

fn changes_of(events: &[RunEvent]) -> Vec<RunChange> {
    events.iter().map(|event| event.change.clone()).collect()
}

/// An empty log has no head, no cursor and no event, and a read of it
/// answers none (no gap).
pub async fn an_empty_log_has_no_head_no_cursor_and_no_events(log: &dyn EventLog, setup: &Setup) {
    let _ = setup;
    assert_eq!(head(log).await, None, "the head of an empty log");
    assert_eq!(source_cursor(log).await, None, "the cursor of an empty log");
    let events = read_events(log, None, 10, Duration::ZERO, "an empty log").await;
    assert_eq!(events, [], "the events of an empty log");
}

/// Appended changes come back in order, as they were given, with ids in
/// the log's form that increase, across appends too; the head is the
/// newest id and the cursor the last one appended.
pub async fn appended_changes_are_read_back_in_order_with_increasing_ids(
    log: &dyn EventLog,
    setup: &Setup,
) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    let first = changes(setup, 0..3);
    let mut ids = append(log, &pump, &first, &cursor("c1")).await;
    let second = changes(setup, 3..5);
    ids.extend(append(log, &pump, &second, &cursor("c2")).await);
    assert_increasing(&ids, "ids of appended changes");

    let events = read_events(log, None, 100, Duration::ZERO, "from the oldest").await;
    assert_eq!(ids_of(&events), ids, "the ids read back are those appended");
    let all: Vec<RunChange> = first.into_iter().chain(second).collect();
    assert_eq!(changes_of(&events), all, "the changes read back, in order");
    assert_eq!(
        head(log).await.as_ref(),
        ids.last(),
        "the head is the newest"
    );
    assert_eq!(
        source_cursor(log).await,
        Some(cursor("c2")),
        "the cursor of the last append"
    );
}

/// A read after an id answers the events after it, oldest first, at most
/// `limit`; after the newest, none.
pub async fn a_read_after_an_id_answers_the_later_events_at_most_limit(
    log: &dyn EventLog,
    setup: &Setup,
) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    let ids = append(log, &pump, &changes(setup, 0..5), &cursor("c1")).await;

    let page = read_events(log, Some(&ids[1]), 2, Duration::ZERO, "a page").await;
    assert_eq!(ids_of(&page), &ids[2..4], "the two events after the second");
    let first = read_events(log, None, 2, Duration::ZERO, "from the oldest").await;
    assert_eq!(ids_of(&first), &ids[..2], "the two oldest events");
    let rest = read_events(log, Some(&ids[3]), 10, Duration::ZERO, "the rest").await;
    assert_eq!(ids_of(&rest), &ids[4..], "the events after the fourth");
    let none = read_events(log, Some(&ids[4]), 10, Duration::ZERO, "after the newest").await;
    assert_eq!(none, [], "nothing after the newest event");
}

/// The lease goes to the first holder, which renews it, and to no one
/// else meanwhile; an append by anyone else writes nothing.
pub async fn the_lease_goes_to_its_first_holder_who_may_renew_it(
    log: &dyn EventLog,
    setup: &Setup,
) {
    let (a, b) = (setup.holder("pump-a"), setup.holder("pump-b"));
    assert!(lease(log, &a, setup.long).await, "the first holder gets it");
    assert!(!lease(log, &b, setup.long).await, "another does not");
    assert!(lease(log, &a, setup.long).await, "the holder renews it");
    assert!(!lease(log, &b, setup.long).await, "another still does not");

    let refused = log
        .append(&b, &changes(setup, 0..1), &cursor("from-b"))
        .await
        .unwrap_or_else(|err| panic!("the append of {b} failed: {err}"));
    assert_eq!(refused, None, "an append without the lease is refused");
    assert_eq!(head(log).await, None, "and wrote no event");
    assert_eq!(source_cursor(log).await, None, "and no cursor");
    append(log, &a, &changes(setup, 0..1), &cursor("from-a")).await;
    assert_eq!(source_cursor(log).await, Some(cursor("from-a")));
}

/// With no holder at all, an append writes nothing: the lease is taken,
/// never assumed.
pub async fn an_append_without_any_lease_writes_nothing(log: &dyn EventLog, setup: &Setup) {
    let a = setup.holder("pump-a");
    let refused = log
        .append(&a, &changes(setup, 0..2), &cursor("c1"))
        .await
        .unwrap_or_else(|err| panic!("the append of {a} failed: {err}"));
    assert_eq!(
        refused, None,
        "an append by a holder that never took the lease"
    );
    assert_eq!(head(log).await, None, "no event was written");
    assert_eq!(source_cursor(log).await, None, "no cursor was written");
}

/// An append of no changes records the cursor, and adds no event.
pub async fn an_append_of_no_changes_records_the_cursor(log: &dyn EventLog, setup: &Setup) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    let ids = append(log, &pump, &[], &cursor("quiet")).await;
    assert_eq!(ids, [], "no change, no id");
    assert_eq!(source_cursor(log).await, Some(cursor("quiet")));
    assert_eq!(head(log).await, None, "no event");
}

/// A read waiting for events after the head answers the events of an
/// append made while it waits, without waiting out its wait.
pub async fn a_waiting_read_is_woken_by_an_append(log: &dyn EventLog, setup: &Setup) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    let first = append(log, &pump, &changes(setup, 0..1), &cursor("c1")).await;
    let later = changes(setup, 1..3);
    let (read, appended) = join(read(log, first.last(), 10, setup.long), async {
        // The read goes first, and waits.
        yield_once().await;
        append(log, &pump, &later, &cursor("c2")).await
    })
    .await;
    let FeedRead::Events(events) = read else {
        panic!("a read after the head answered a gap");
    };
    assert_eq!(ids_of(&events), appended, "the waiting read got the append");
    assert_eq!(changes_of(&events), later);
}

/// A read with nothing after its id answers nothing once its wait is
/// over.
pub async fn a_read_with_nothing_new_answers_nothing_once_its_wait_is_over(
    log: &dyn EventLog,
    setup: &Setup,
) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    let ids = append(log, &pump, &changes(setup, 0..1), &cursor("c1")).await;
    let events = read_events(log, ids.last(), 10, setup.margin, "after the head").await;
    assert_eq!(events, [], "nothing after the head");
    let events = read_events(log, ids.last(), 10, Duration::ZERO, "without waiting").await;
    assert_eq!(events, [], "nothing after the head, at once");
}

/// An id in the log's form that is newer than the head (the log never
/// gave it) reads as nothing yet, not as a gap.
pub async fn a_read_after_an_id_newer_than_the_head_answers_nothing_yet(
    log: &dyn EventLog,
    setup: &Setup,
) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    let ids = append(log, &pump, &changes(setup, 0..2), &cursor("c1")).await;
    let (millis, seq) = log_id(&ids[1]);
    for newer in [
        format!("{millis}-{}", seq + 1),
        format!("{}-0", millis + 60_000),
    ] {
        let newer = EventId::parse(&newer).unwrap_or_else(|_| panic!("{newer} is an event id"));
        let events = read_events(log, Some(&newer), 10, Duration::ZERO, "a newer id").await;
        assert_eq!(events, [], "nothing yet after {newer}");
    }
}

/// An id in no form the log gives reads as a gap: the reader goes on from
/// the head.
pub async fn an_id_not_in_the_logs_form_reads_as_a_gap(log: &dyn EventLog, setup: &Setup) {
    let pump = setup.holder("pump-a");
    take_lease(log, setup, &pump).await;
    append(log, &pump, &changes(setup, 0..1), &cursor("c1")).await;
    for foreign in ["not-an-id", "17x", "-"] {
        let id = EventId::parse(foreign).unwrap_or_else(|_| panic!("{foreign} is an event id"));
        assert_eq!(
            read(log, Some(&id), 10, Duration::ZERO).await,
            FeedRead::Gap,
            "the read after {foreign:?}"
        );
    }
}

/// The lease is the holder's until its ttl has passed, and then another
/// takes it over: the old holder's appends write nothing from then on.
pub async fn a_lease_is_taken_over_once_its_ttl_has_passed(
    log: &dyn EventLog,
    setup: &Setup,
    wait: impl Wait,
) {
    let (a, b) = (setup.holder("pump-a"), setup.holder("pump-b"));
    assert!(
        lease(log, &a, setup.short).await,
        "the first holder gets it"
    );
    wait.wait(setup.before_short()).await;
    assert!(
        !lease(log, &b, setup.long).await,
        "another, just before the ttl ends"
    );
    wait.wait(setup.margin * 2).await;
    assert!(
        lease(log, &b, setup.long).await,
        "another, just after the ttl ended"
    );
    let late = log
        .append(&a, &changes(setup, 0..1), &cursor("late"))
        .await
        .unwrap_or_else(|err| panic!("the append of {a} failed: {err}"));
    assert_eq!(late, None, "the old holder's append after the takeover");
    assert!(
        !lease(log, &a, setup.long).await,
        "the old holder cannot take it back"
    );
    assert_eq!(head(log).await, None, "the late append wrote no event");
    assert_eq!(source_cursor(log).await, None, "nor a cursor");
}

/// A renewal starts the ttl again.
pub async fn a_renewed_lease_lasts_its_ttl_from_the_renewal(
    log: &dyn EventLog,
    setup: &Setup,
    wait: impl Wait,
) {
    let (a, b) = (setup.holder("pump-a"), setup.holder("pump-b"));
    assert!(
        lease(log, &a, setup.short).await,
        "the first holder gets it"
    );
    wait.wait(setup.before_short()).await;
    assert!(lease(log, &a, setup.short).await, "the holder renews it");
    wait.wait(setup.margin * 2).await;
    assert!(
        !lease(log, &b, setup.long).await,
        "another, past the first ttl but within the renewed one"
    );
    append(log, &a, &changes(setup, 0..1), &cursor("c1")).await;
}

async fn listening(listeners: &dyn Listeners, setup: &Setup) -> Vec<CustomerId> {
    let customers = listeners
        .listening()
        .await
        .unwrap_or_else(|err| panic!("reading the listeners failed: {err}"));
    let mut own = setup.own(customers);
    own.sort_unstable();
    own
}

async fn listen(listeners: &dyn Listeners, customer: &CustomerId, ttl: Duration) {
    listeners
        .listen(customer, ttl)
        .await
        .unwrap_or_else(|err| panic!("{customer:?} listening failed: {err}"));
}

/// A customer listens from its call until its ttl has passed, each
/// customer on its own.
pub async fn a_customer_listens_until_its_ttl_has_passed(
    listeners: &dyn Listeners,
    setup: &Setup,
    wait: impl Wait,
) {
    let (acme, globex) = (setup.customer("acme"), setup.customer("globex"));
    assert_eq!(listening(listeners, setup).await, [], "no one listens yet");
    listen(listeners, &acme, setup.short).await;
    listen(listeners, &globex, setup.long).await;
    // Twice: one customer is listed once.
    listen(listeners, &globex, setup.long).await;
    assert_eq!(
        listening(listeners, setup).await,
        [acme.clone(), globex.clone()]
    );
    wait.wait(setup.before_short()).await;
    assert_eq!(
        listening(listeners, setup).await,
        [acme, globex.clone()],
        "just before the short ttl ends"
    );
    wait.wait(setup.margin * 2).await;
    assert_eq!(
        listening(listeners, setup).await,
        [globex],
        "just after the short ttl ended"
    );
}

/// A customer that listens again keeps listening for the new ttl.
pub async fn a_customer_that_listens_again_keeps_listening(
    listeners: &dyn Listeners,
    setup: &Setup,
    wait: impl Wait,
) {
    let acme = setup.customer("acme");
    listen(listeners, &acme, setup.short).await;
    wait.wait(setup.before_short()).await;
    listen(listeners, &acme, setup.short).await;
    wait.wait(setup.margin * 2).await;
    assert_eq!(
        listening(listeners, setup).await,
        [acme],
        "past the first ttl, within the renewed one"
    );
}

/// A webhook of the scenarios: `n` sets its id and secret, `at` when it
/// was made.
fn webhook(setup: &Setup, customer: &CustomerId, n: u8, made: i64) -> Webhook {
    let url = format!("https://hooks.example/maestro/{n}");
    Webhook {
        id: setup.webhook_id(n),
        customer: customer.clone(),
        url: WebhookUrl::parse(&url, false).unwrap_or_else(|err| panic!("{url}: {err}")),
        events: vec![RunEventType::Succeeded, RunEventType::Failed],
        pipeline_ids: vec![pipeline()],
        secret: WebhookSecret::new([n.wrapping_add(1); 32]),
        created_at: at(made),
    }
}

async fn create(
    store: &dyn WebhookStore,
    webhook: &Webhook,
    limit: usize,
) -> Result<(), RegisterWebhookError> {
    store.create(webhook, limit).await
}

async fn list(store: &dyn WebhookStore, customer: &CustomerId) -> Vec<Webhook> {
    store
        .list(customer)
        .await
        .unwrap_or_else(|err| panic!("listing the webhooks of {customer:?} failed: {err}"))
}

async fn customers(store: &dyn WebhookStore, setup: &Setup) -> Vec<CustomerId> {
    let customers = store
        .customers()
        .await
        .unwrap_or_else(|err| panic!("listing the customers with webhooks failed: {err}"));
    let mut own = setup.own(customers);
    own.sort_unstable();
    own
}

async fn delete(store: &dyn WebhookStore, customer: &CustomerId, id: &WebhookId) -> bool {
    store
        .delete(customer, id)
        .await
        .unwrap_or_else(|err| panic!("deleting {id} of {customer:?} failed: {err}"))
}

fn expect_created(result: Result<(), RegisterWebhookError>, why: &str) {
    if let Err(err) = result {
        panic!("{why}: the webhook was refused: {err}");
    }
}

fn expect_too_many(result: Result<(), RegisterWebhookError>, limit: usize, why: &str) {
    match result {
        Err(RegisterWebhookError::TooMany { limit: told }) if told == limit => {}
        other => panic!("{why}: expected TooMany {{ limit: {limit} }}, got {other:?}"),
    }
}

/// A webhook is listed exactly as it was created, secret and all, and
/// its customer is among those with webhooks.
pub async fn a_created_webhook_is_listed_exactly_as_given(store: &dyn WebhookStore, setup: &Setup) {
    let acme = setup.customer("acme");
    assert_eq!(list(store, &acme).await, [], "no webhook yet");
    assert_eq!(customers(store, setup).await, [], "no customer yet");
    let made = webhook(setup, &acme, 1, 0);
    expect_created(create(store, &made, 10).await, "the first webhook");
    assert_eq!(list(store, &acme).await, [made], "listed as created");
    assert_eq!(customers(store, setup).await, [acme]);
}

/// Each customer's webhooks are listed oldest first, and only its own.
pub async fn webhooks_are_listed_oldest_first_and_only_to_their_customer(
    store: &dyn WebhookStore,
    setup: &Setup,
) {
    let (acme, globex) = (setup.customer("acme"), setup.customer("globex"));
    let acme_first = webhook(setup, &acme, 1, 0);
    let globex_only = webhook(setup, &globex, 2, 1);
    let acme_second = webhook(setup, &acme, 3, 2);
    for made in [&acme_first, &globex_only, &acme_second] {
        expect_created(create(store, made, 10).await, "a webhook under the limit");
    }
    assert_eq!(list(store, &acme).await, [acme_first, acme_second]);
    assert_eq!(list(store, &globex).await, [globex_only]);
    assert_eq!(customers(store, setup).await, [acme, globex]);
}

/// A customer with `limit` webhooks is refused another, with the limit
/// told; another customer is not; a deletion makes room.
pub async fn a_customer_at_the_limit_is_refused_and_no_other_is(
    store: &dyn WebhookStore,
    setup: &Setup,
) {
    const LIMIT: usize = 3;
    let (acme, globex) = (setup.customer("acme"), setup.customer("globex"));
    for n in 0..3 {
        let made = webhook(setup, &acme, n, i64::from(n));
        expect_created(create(store, &made, LIMIT).await, "under the limit");
    }
    let over = webhook(setup, &acme, 3, 3);
    expect_too_many(create(store, &over, LIMIT).await, LIMIT, "at the limit");
    assert_eq!(
        list(store, &acme).await.len(),
        LIMIT,
        "the refused one is not kept"
    );
    let neighbour = webhook(setup, &globex, 4, 4);
    expect_created(create(store, &neighbour, LIMIT).await, "another customer");

    assert!(delete(store, &acme, &setup.webhook_id(0)).await);
    expect_created(create(store, &over, LIMIT).await, "after a deletion");
    assert_eq!(list(store, &acme).await.len(), LIMIT);
}

/// Creates racing for the last places stop exactly at the limit: the count
/// and the insert are one step.
pub async fn concurrent_creates_stop_exactly_at_the_limit(store: &dyn WebhookStore, setup: &Setup) {
    const LIMIT: usize = 3;
    let acme = setup.customer("acme");
    let made: Vec<Webhook> = (0..8).map(|n| webhook(setup, &acme, n, 0)).collect();
    let results = join_all(made.iter().map(|webhook| create(store, webhook, LIMIT))).await;
    let mut created = 0;
    for result in results {
        match result {
            Ok(()) => created += 1,
            other => expect_too_many(other, LIMIT, "a create past the limit"),
        }
    }
    assert_eq!(
        created, LIMIT,
        "of 8 creates at once, exactly the limit made it"
    );
    assert_eq!(list(store, &acme).await.len(), LIMIT);
}

/// A webhook is deleted by its customer only, once.
pub async fn a_webhook_is_deleted_only_by_its_customer(store: &dyn WebhookStore, setup: &Setup) {
    let (acme, globex) = (setup.customer("acme"), setup.customer("globex"));
    let made = webhook(setup, &acme, 1, 0);
    expect_created(create(store, &made, 10).await, "a webhook");
    assert!(
        !delete(store, &globex, &made.id).await,
        "another customer deletes nothing"
    );
    assert_eq!(
        list(store, &acme).await,
        std::slice::from_ref(&made),
        "still there"
    );
    assert!(
        delete(store, &acme, &made.id).await,
        "its customer deletes it"
    );
    assert!(!delete(store, &acme, &made.id).await, "only once");
    assert_eq!(list(store, &acme).await, []);
    assert_eq!(
        customers(store, setup).await,
        [],
        "no customer with webhooks left"
    );
}

/// The scenarios' delivery `n`: of event `n`, first due and due at `due`
/// seconds.
fn delivery(setup: &Setup, n: u8, due: i64) -> Delivery {
    let acme = setup.customer("acme");
    let hook = webhook(setup, &acme, 0, 0);
    let id = format!("{}-{n}", 1_734_517_800_000_u64 + u64::from(n));
    let id = EventId::parse(&id).unwrap_or_else(|_| panic!("{id} is an event id"));
    let event = RunEvent::new(id, change(&acme, i64::from(n)));
    Delivery::new(&hook, event, at(due))
}

fn delivery_ids(deliveries: &[Delivery]) -> Vec<DeliveryId> {
    deliveries
        .iter()
        .map(|delivery| delivery.id.clone())
        .collect()
}

async fn enqueue(queue: &dyn DeliveryQueue, deliveries: &[Delivery], up_to: &EventId) {
    queue
        .enqueue(deliveries, up_to)
        .await
        .unwrap_or_else(|err| panic!("enqueueing up to {up_to} failed: {err}"));
}

async fn take(
    queue: &dyn DeliveryQueue,
    now: Timestamp,
    limit: usize,
    worker: &str,
    lease: Duration,
) -> Vec<Delivery> {
    queue
        .take_due(now, limit, worker, lease)
        .await
        .unwrap_or_else(|err| panic!("taking due deliveries at {now} failed: {err}"))
}

async fn pending(queue: &dyn DeliveryQueue) -> (usize, Option<Timestamp>) {
    queue
        .pending()
        .await
        .unwrap_or_else(|err| panic!("counting pending deliveries failed: {err}"))
}

/// The lease of taken deliveries in the scenarios.
const LEASE: Duration = Duration::from_secs(30);

/// An empty queue has nothing pending, due or dispatched.
pub async fn an_empty_queue_has_nothing_pending_due_or_dispatched(
    queue: &dyn DeliveryQueue,
    setup: &Setup,
) {
    let worker = setup.holder("worker-a");
    let dispatched = queue
        .dispatched()
        .await
        .unwrap_or_else(|err| panic!("reading where dispatching resumes failed: {err}"));
    assert_eq!(dispatched, None, "nothing dispatched yet");
    assert_eq!(pending(queue).await, (0, None));
    assert_eq!(take(queue, at(1_000), 10, &worker, LEASE).await, []);
}

/// An enqueue records where dispatching resumes, and adds each delivery
/// once however often it is enqueued; deliveries come back as they went
/// in.
pub async fn an_enqueue_records_the_dispatched_event_and_adds_each_delivery_once(
    queue: &dyn DeliveryQueue,
    setup: &Setup,
) {
    let worker = setup.holder("worker-a");
    let all: Vec<Delivery> = (0..3).map(|n| delivery(setup, n, i64::from(n))).collect();
    enqueue(queue, &all[..2], &all[1].event.id).await;
    let dispatched = queue
        .dispatched()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(dispatched.as_ref(), Some(&all[1].event.id));
    // Again, overlapping: the second delivery is known already.
    enqueue(queue, &all[1..], &all[2].event.id).await;
    let dispatched = queue
        .dispatched()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(dispatched.as_ref(), Some(&all[2].event.id));
    assert_eq!(pending(queue).await.0, 3, "each delivery once");

    let taken = take(queue, at(1_000), 10, &worker, LEASE).await;
    assert_eq!(taken, all, "the deliveries, as they were enqueued");
}

/// Due deliveries are taken earliest due first, at most `limit`, and
/// those not yet due are not.
pub async fn due_deliveries_are_taken_earliest_first_at_most_limit(
    queue: &dyn DeliveryQueue,
    setup: &Setup,
) {
    let worker = setup.holder("worker-a");
    let (early, late, middle) = (
        delivery(setup, 0, 0),
        delivery(setup, 1, 10),
        delivery(setup, 2, 5),
    );
    let all = [early.clone(), late.clone(), middle.clone()];
    enqueue(queue, &all, &middle.event.id).await;
    assert_eq!(
        take(queue, at(-1), 10, &worker, LEASE).await,
        [],
        "none due yet"
    );
    let taken = take(queue, at(5), 10, &worker, LEASE).await;
    assert_eq!(
        delivery_ids(&taken),
        delivery_ids(&[early, middle]),
        "due by 5 s"
    );
    let taken = take(queue, at(20), 1, &worker, LEASE).await;
    assert_eq!(delivery_ids(&taken), delivery_ids(&[late]), "the last one");
}

/// A taken delivery is kept from every taker for its lease, and due again
/// once the lease has passed (its worker died): nothing is lost.
pub async fn a_taken_delivery_is_due_again_only_once_its_lease_has_passed(
    queue: &dyn DeliveryQueue,
    setup: &Setup,
) {
    let (a, b) = (setup.holder("worker-a"), setup.holder("worker-b"));
    let made = delivery(setup, 0, 0);
    enqueue(queue, std::slice::from_ref(&made), &made.event.id).await;
    assert_eq!(
        take(queue, at(0), 10, &a, LEASE).await,
        std::slice::from_ref(&made)
    );
    assert_eq!(take(queue, at(0), 10, &b, LEASE).await, [], "taken already");
    assert_eq!(
        take(queue, at(29), 10, &b, LEASE).await,
        [],
        "within the lease"
    );
    assert_eq!(pending(queue).await, (1, Some(at(0))), "still pending");
    assert_eq!(
        take(queue, at(31), 10, &b, LEASE).await,
        [made],
        "once the lease has passed"
    );
}

/// A retried delivery is due when told, with its attempts, its id and its
/// first due instant unchanged.
pub async fn a_retried_delivery_is_due_when_told_with_its_attempts(
    queue: &dyn DeliveryQueue,
    setup: &Setup,
) {
    let worker = setup.holder("worker-a");
    let made = delivery(setup, 0, 0);
    enqueue(queue, std::slice::from_ref(&made), &made.event.id).await;
    assert_eq!(take(queue, at(0), 10, &worker, LEASE).await.len(), 1);
    queue
        .retry(&made.id, 1, at(5))
        .await
        .unwrap_or_else(|err| panic!("the retry failed: {err}"));
    assert_eq!(
        take(queue, at(4), 10, &worker, LEASE).await,
        [],
        "not yet due"
    );
    let taken = take(queue, at(5), 10, &worker, LEASE).await;
    let mut expected = made;
    expected.attempts = 1;
    expected.due = at(5);
    assert_eq!(taken, [expected], "due again, one attempt made");
    assert_eq!(
        pending(queue).await,
        (1, Some(at(0))),
        "first due unchanged"
    );
}

/// A delivery done or given up is gone: never taken again, not pending.
pub async fn done_and_given_up_deliveries_are_gone(queue: &dyn DeliveryQueue, setup: &Setup) {
    let worker = setup.holder("worker-a");
    let all: Vec<Delivery> = (0..3).map(|n| delivery(setup, n, 0)).collect();
    enqueue(queue, &all, &all[2].event.id).await;
    assert_eq!(take(queue, at(0), 10, &worker, LEASE).await.len(), 3);
    queue
        .done(&all[0].id)
        .await
        .unwrap_or_else(|err| panic!("done failed: {err}"));
    queue
        .give_up(&all[1].id)
        .await
        .unwrap_or_else(|err| panic!("giving up failed: {err}"));
    assert_eq!(pending(queue).await.0, 1, "only the third is pending");
    let taken = take(queue, at(1_000), 10, &worker, LEASE).await;
    assert_eq!(
        delivery_ids(&taken),
        [all[2].id.clone()],
        "only the third is due again"
    );
}

/// `pending` counts the waiting deliveries, taken ones too, and finds the
/// earliest first due instant among them.
pub async fn pending_counts_the_deliveries_and_finds_the_oldest_first_due(
    queue: &dyn DeliveryQueue,
    setup: &Setup,
) {
    let worker = setup.holder("worker-a");
    let (later, earlier) = (delivery(setup, 0, 10), delivery(setup, 1, 3));
    enqueue(queue, &[later.clone(), earlier.clone()], &earlier.event.id).await;
    assert_eq!(pending(queue).await, (2, Some(at(3))));
    assert_eq!(
        take(queue, at(3), 1, &worker, LEASE).await,
        std::slice::from_ref(&earlier)
    );
    assert_eq!(
        pending(queue).await,
        (2, Some(at(3))),
        "a taken one is pending"
    );
    queue
        .done(&earlier.id)
        .await
        .unwrap_or_else(|err| panic!("done failed: {err}"));
    assert_eq!(pending(queue).await, (1, Some(at(10))));
}

/// Takers at once never share a delivery: each is taken by exactly one.
pub async fn concurrent_takers_never_share_a_delivery(queue: &dyn DeliveryQueue, setup: &Setup) {
    let all: Vec<Delivery> = (0..10).map(|n| delivery(setup, n, 0)).collect();
    enqueue(queue, &all, &all[9].event.id).await;
    let workers: Vec<String> = (0..5)
        .map(|n| setup.holder(&format!("worker-{n}")))
        .collect();
    let taken = join_all(
        workers
            .iter()
            .map(|worker| take(queue, at(0), 3, worker, LEASE)),
    )
    .await;
    let mut ids: Vec<DeliveryId> = taken.iter().flat_map(|batch| delivery_ids(batch)).collect();
    ids.sort_unstable();
    let mut expected = delivery_ids(&all);
    expected.sort_unstable();
    assert_eq!(
        ids, expected,
        "5 takers of 3: every delivery taken exactly once"
    );
}

/// Polls both futures in this task until both are done.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut a_out, mut b_out) = (None, None);
    poll_fn(|cx| {
        if a_out.is_none()
            && let Poll::Ready(out) = a.as_mut().poll(cx)
        {
            a_out = Some(out);
        }
        if b_out.is_none()
            && let Poll::Ready(out) = b.as_mut().poll(cx)
        {
            b_out = Some(out);
        }
        if a_out.is_some() && b_out.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (a_out, b_out) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("both futures finished"),
    }
}

/// Polls every future in this task until all are done; their outputs, in
/// order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => *output = Some(out),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Lets the other futures of the task be polled once.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// Writes one test per scenario of [`feed_testkit`](crate::feed_testkit)
/// for an [`EventLog`](crate::EventLog), named after it. It takes the
/// tests' attribute and two bodies, each naming the scenario it runs: the
/// first runs the scenarios that need no time to pass (they take a log and
/// a [`Setup`](crate::feed_testkit::Setup)), the second those that let
/// time pass (they also take a [`Wait`](crate::feed_testkit::Wait)).
#[macro_export]
macro_rules! event_log_conformance_tests {
    (
        #[$test:meta]
        |$timeless:ident| $timeless_body:block
        |$timed:ident| $timed_body:block
    ) => {
        $crate::feed_conformance_each!(#[$test] |$timeless| $timeless_body [
            an_empty_log_has_no_head_no_cursor_and_no_events,
            appended_changes_are_read_back_in_order_with_increasing_ids,
            a_read_after_an_id_answers_the_later_events_at_most_limit,
            the_lease_goes_to_its_first_holder_who_may_renew_it,
            an_append_without_any_lease_writes_nothing,
            an_append_of_no_changes_records_the_cursor,
            a_waiting_read_is_woken_by_an_append,
            a_read_with_nothing_new_answers_nothing_once_its_wait_is_over,
            a_read_after_an_id_newer_than_the_head_answers_nothing_yet,
            an_id_not_in_the_logs_form_reads_as_a_gap,
        ]);
        $crate::feed_conformance_each!(#[$test] |$timed| $timed_body [
            a_lease_is_taken_over_once_its_ttl_has_passed,
            a_renewed_lease_lasts_its_ttl_from_the_renewal,
        ]);
    };
}

/// Writes one test per scenario of [`feed_testkit`](crate::feed_testkit)
/// for [`Listeners`](crate::Listeners): every one lets time pass, so it
/// takes the tests' attribute and one body, which names the scenario it
/// runs (each takes the listeners, a [`Setup`](crate::feed_testkit::Setup)
/// and a [`Wait`](crate::feed_testkit::Wait)).
#[macro_export]
macro_rules! listeners_conformance_tests {
    (#[$test:meta] |$timed:ident| $timed_body:block) => {
        $crate::feed_conformance_each!(#[$test] |$timed| $timed_body [
            a_customer_listens_until_its_ttl_has_passed,
            a_customer_that_listens_again_keeps_listening,
        ]);
    };
}

/// Writes one test per scenario of [`feed_testkit`](crate::feed_testkit)
/// for a [`WebhookStore`](crate::WebhookStore): it takes the tests'
/// attribute and one body, which names the scenario it runs (each takes
/// the store and a [`Setup`](crate::feed_testkit::Setup)).
#[macro_export]
macro_rules! webhook_store_conformance_tests {
    (#[$test:meta] |$scenario:ident| $body:block) => {
        $crate::feed_conformance_each!(#[$test] |$scenario| $body [
            a_created_webhook_is_listed_exactly_as_given,
            webhooks_are_listed_oldest_first_and_only_to_their_customer,
            a_customer_at_the_limit_is_refused_and_no_other_is,
            concurrent_creates_stop_exactly_at_the_limit,
            a_webhook_is_deleted_only_by_its_customer,
        ]);
    };
}

/// Writes one test per scenario of [`feed_testkit`](crate::feed_testkit)
/// for a [`DeliveryQueue`](crate::DeliveryQueue): it takes the tests'
/// attribute and one body, which names the scenario it runs (each takes
/// the queue and a [`Setup`](crate::feed_testkit::Setup); the queue keeps
/// no time, so none passes).
#[macro_export]
macro_rules! delivery_queue_conformance_tests {
    (#[$test:meta] |$scenario:ident| $body:block) => {
        $crate::feed_conformance_each!(#[$test] |$scenario| $body [
            an_empty_queue_has_nothing_pending_due_or_dispatched,
            an_enqueue_records_the_dispatched_event_and_adds_each_delivery_once,
            due_deliveries_are_taken_earliest_first_at_most_limit,
            a_taken_delivery_is_due_again_only_once_its_lease_has_passed,
            a_retried_delivery_is_due_when_told_with_its_attempts,
            done_and_given_up_deliveries_are_gone,
            pending_counts_the_deliveries_and_finds_the_oldest_first_due,
            concurrent_takers_never_share_a_delivery,
        ]);
    };
}

/// One test per named scenario of the feed's kit: the macros above share
/// it.
#[doc(hidden)]
#[macro_export]
macro_rules! feed_conformance_each {
    (#[$test:meta] |$scenario:ident| $body:block [$($name:ident),* $(,)?]) => {$(
        #[$test]
        async fn $name() {
            let $scenario = $crate::feed_testkit::$name;
            $body
        }
    )*};
}
