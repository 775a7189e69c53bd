//! The simulation as the feed's source of run changes ([`MemoryChanges`]),
//! on tokio's paused clock: what is told, in which order, at which
//! instant, how soon, and that a cursor resumes exactly.

use std::sync::Arc;
use std::time::Duration;

use adapter_memory::{
    ACME_CUSTOMER, ACME_PIPELINE_ID, DEMO_CUSTOMER, DEMO_PIPELINE_ID, DEMO_SCHEDULED_PIPELINE_ID,
    MemoryBackend, MemoryChanges, MemoryConfig,
};
use chrono::{TimeDelta, TimeZone as _, Utc};
use domain::{
    Caller, Clock, CustomerId, Orchestrator, PipelineId, PipelineRepository, RequestContext, Run,
    RunChange, RunChangeSource, RunId, RunStatus, SourceCursor, Timestamp, TriggerRequest,
};
use proptest::prelude::*;
use runtime::TokioClock;
use tokio::time::{Instant, advance};

use RunStatus::{Failed, Queued, Running, Success};

const RUN: Duration = Duration::from_secs(10);

fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()))
}

fn id(pipeline: &str) -> PipelineId {
    PipelineId::parse(pipeline).unwrap()
}

/// The owner of each demo pipeline used here.
fn owner(pipeline: &str) -> &'static str {
    if pipeline == ACME_PIPELINE_ID {
        ACME_CUSTOMER
    } else {
        DEMO_CUSTOMER
    }
}

struct Harness {
    backend: MemoryBackend,
    clock: Arc<TokioClock>,
    source: MemoryChanges,
}

/// A fixed instant for the harness's clock to start at, `nanos` past a
/// whole second: what is told at which instant must not depend on the
/// digits of the time a test happens to run at.
fn anchor(nanos: u32) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + TimeDelta::nanoseconds(nanos.into())
}

impl Harness {
    fn new(run: Duration) -> Self {
        Self::starting_at(run, anchor(123_456_789))
    }

    fn starting_at(run: Duration, at: Timestamp) -> Self {
        let clock = Arc::new(TokioClock::starting_at(at));
        let backend = MemoryBackend::demo(MemoryConfig {
            run_duration: run,
            ..MemoryConfig::default()
        })
        .with_clock(clock.clone());
        let source = MemoryChanges::new(&backend);
        Self {
            backend,
            clock,
            source,
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A cursor from now, without waiting for the source's idle answer.
    async fn start(&self) -> SourceCursor {
        let at_once = MemoryChanges::new(&self.backend).with_idle(Duration::ZERO);
        let (told, cursor) = at_once.changes(None).await.unwrap();
        assert_eq!(told, [], "from now, nothing of the past");
        cursor
    }

    /// The next changes after `cursor`, waiting for them.
    async fn next(&self, cursor: &SourceCursor) -> (Vec<RunChange>, SourceCursor) {
        loop {
            let (told, next) = self.source.changes(Some(cursor.clone())).await.unwrap();
            if !told.is_empty() {
                return (told, next);
            }
        }
    }

    /// Every change after `cursor` up to now, without waiting.
    async fn all(&self, cursor: &SourceCursor) -> (Vec<RunChange>, SourceCursor) {
        let at_once = MemoryChanges::new(&self.backend).with_idle(Duration::ZERO);
        let mut cursor = cursor.clone();
        let mut all = Vec::new();
        loop {
            let (told, next) = at_once.changes(Some(cursor)).await.unwrap();
            cursor = next;
            if told.is_empty() {
                return (all, cursor);
            }
            all.extend(told);
        }
    }

    async fn trigger(&self, pipeline: &str) -> Run {
        self.backend
            .trigger(&ctx(owner(pipeline)), &TriggerRequest::new(id(pipeline)))
            .await
            .unwrap()
    }

    async fn cancel(&self, pipeline: &str, run: &RunId) -> Run {
        self.backend
            .cancel_run(&ctx(owner(pipeline)), &id(pipeline), run)
            .await
            .unwrap()
    }

    async fn set_paused(&self, pipeline: &str, paused: bool) {
        self.backend
            .set_paused(&ctx(owner(pipeline)), &id(pipeline), paused)
            .await
            .unwrap();
    }

    /// Waits until a call of the source waits for a change.
    async fn until_waiting(&self) {
        while self.source.waiting() == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// What a change says: which run, which status, since when.
fn told(changes: &[RunChange]) -> Vec<(RunId, RunStatus, Timestamp)> {
    changes
        .iter()
        .map(|change| {
            (
                change.run.id.clone(),
                change.run.status,
                change.run.updated_at,
            )
        })
        .collect()
}

fn seconds(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

#[tokio::test(start_paused = true)]
async fn a_queued_run_is_told_queued_running_then_succeeded_at_its_instants() {
    let feed = Harness::new(RUN);
    let cursor = feed.start().await;
    let first = feed.trigger(DEMO_PIPELINE_ID).await;
    let second = feed.trigger(DEMO_PIPELINE_ID).await;
    assert_eq!((first.status, second.status), (Running, Queued));

    let (changes, cursor) = feed.next(&cursor).await;
    assert_eq!(
        told(&changes),
        [
            (first.id.clone(), Running, first.created_at),
            (second.id.clone(), Queued, second.created_at),
        ]
    );
    assert!(changes.iter().all(|c| c.customer.as_str() == DEMO_CUSTOMER));

    // The first ends 10 s after it started, and the second starts then:
    // told at that instant, by the source's own timer.
    let end = first.created_at + seconds(10);
    let (changes, cursor) = feed.next(&cursor).await;
    assert_eq!(
        told(&changes),
        [
            (first.id.clone(), Success, end),
            (second.id.clone(), Running, end),
        ]
    );
    let late = feed.now() - end;
    assert!(
        late >= TimeDelta::zero() && late <= TimeDelta::milliseconds(1),
        "told {late} after it happened"
    );

    let (changes, _) = feed.next(&cursor).await;
    assert_eq!(
        told(&changes),
        [(second.id.clone(), Success, end + seconds(10))]
    );
    // Each change carries the run as it was right after it.
    assert_eq!(changes[0].run.conf, second.conf);
}

#[tokio::test(start_paused = true)]
async fn a_change_made_through_the_backend_is_told_in_the_same_tick() {
    let feed = Arc::new(Harness::new(RUN));
    let cursor = feed.start().await;
    let waiting = {
        let feed = feed.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move {
            let told = feed.source.changes(Some(cursor)).await.unwrap();
            (told, Instant::now())
        })
    };
    feed.until_waiting().await;
    // Past the instant the call read the pipelines at (see
    // `an_operation_in_the_instant_the_feed_read_is_told_a_tick_later`).
    advance(Duration::from_millis(1)).await;
    let triggered_at = Instant::now();
    let run = feed.trigger(DEMO_PIPELINE_ID).await;
    let ((changes, cursor), told_at) = waiting.await.unwrap();
    assert_eq!(told(&changes), [(run.id.clone(), Running, run.created_at)]);
    assert_eq!(told_at, triggered_at, "no time passed");

    // A cancel, the same.
    let waiting = {
        let feed = feed.clone();
        tokio::spawn(async move { feed.source.changes(Some(cursor)).await.unwrap() })
    };
    feed.until_waiting().await;
    advance(Duration::from_millis(1_500)).await;
    let cancelled = feed.cancel(DEMO_PIPELINE_ID, &run.id).await;
    let (changes, _) = waiting.await.unwrap();
    assert_eq!(told(&changes), [(run.id, Failed, cancelled.updated_at)]);
    assert_eq!(changes[0].run.trace.as_deref(), Some(Run::CANCELLED_TRACE));
    assert_eq!(feed.source.waiting(), 0, "a call leaves nothing behind");
}

#[tokio::test(start_paused = true)]
async fn a_time_driven_change_wakes_a_waiting_call_at_its_instant() {
    let feed = Arc::new(Harness::new(RUN));
    let run = feed.trigger(DEMO_PIPELINE_ID).await;
    let cursor = feed.start().await;
    let started = Instant::now();
    // Calls answer nothing every 2 s meanwhile.
    let (changes, _) = feed.next(&cursor).await;
    assert_eq!(
        told(&changes),
        [(run.id, Success, run.created_at + seconds(10))]
    );
    let waited = Instant::now() - started;
    assert!(
        waited >= RUN && waited <= RUN + Duration::from_millis(1),
        "woke after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancels_are_told_and_the_next_run_starts_at_the_cancel() {
    let feed = Harness::new(RUN);
    let first = feed.trigger(DEMO_PIPELINE_ID).await;
    let second = feed.trigger(DEMO_PIPELINE_ID).await;
    let third = feed.trigger(DEMO_PIPELINE_ID).await;
    let cursor = feed.start().await;
    advance(Duration::from_secs(2)).await;

    let dropped = feed.cancel(DEMO_PIPELINE_ID, &third.id).await;
    let stopped = feed.cancel(DEMO_PIPELINE_ID, &first.id).await;
    let (changes, cursor) = feed.all(&cursor).await;
    assert_eq!(
        told(&changes),
        [
            (first.id.clone(), Failed, stopped.updated_at),
            (second.id.clone(), Running, stopped.updated_at),
            // A queued run goes from QUEUED to FAILED, and never starts.
            (third.id.clone(), Failed, dropped.updated_at),
        ]
    );
    // In one instant (time stands still): by run.
    assert_eq!(dropped.updated_at, stopped.updated_at);
    advance(RUN).await;
    let (changes, _) = feed.all(&cursor).await;
    assert_eq!(
        told(&changes),
        [(second.id, Success, stopped.updated_at + seconds(10))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_pipeline_starts_nothing_until_the_unpause_which_is_told_through_its_runs() {
    let feed = Harness::new(RUN);
    let cursor = feed.start().await;
    let first = feed.trigger(DEMO_PIPELINE_ID).await;
    let second = feed.trigger(DEMO_PIPELINE_ID).await;
    feed.set_paused(DEMO_PIPELINE_ID, true).await;
    advance(Duration::from_secs(15)).await;
    let (changes, cursor) = feed.all(&cursor).await;
    assert_eq!(
        told(&changes),
        [
            (first.id.clone(), Running, first.created_at),
            (second.id.clone(), Queued, second.created_at),
            (first.id.clone(), Success, first.created_at + seconds(10)),
        ]
    );

    advance(Duration::from_secs(5)).await;
    let unpaused_at = feed.now();
    feed.set_paused(DEMO_PIPELINE_ID, false).await;
    let (changes, _) = feed.next(&cursor).await;
    assert_eq!(told(&changes), [(second.id, Running, unpaused_at)]);
}

#[tokio::test(start_paused = true)]
async fn a_run_of_zero_length_is_told_once_succeeded() {
    let feed = Harness::new(Duration::ZERO);
    let cursor = feed.start().await;
    let run = feed.trigger(DEMO_PIPELINE_ID).await;
    assert_eq!(run.status, Success);
    let (changes, _) = feed.next(&cursor).await;
    assert_eq!(told(&changes), [(run.id, Success, run.created_at)]);
}

#[tokio::test(start_paused = true)]
async fn from_now_nothing_of_the_past_is_told_and_what_follows_is() {
    let feed = Harness::new(RUN);
    let running = feed.trigger(DEMO_PIPELINE_ID).await;
    let queued = feed.trigger(DEMO_PIPELINE_ID).await;
    advance(Duration::from_secs(3)).await;
    let cursor = feed.start().await;
    let (changes, _) = feed.next(&cursor).await;
    let end = running.created_at + seconds(10);
    assert_eq!(
        told(&changes),
        [(running.id, Success, end), (queued.id, Running, end)]
    );
}

#[tokio::test(start_paused = true)]
async fn pipelines_interleave_in_instant_order_and_ties_go_by_pipeline_id() {
    let feed = Harness::new(RUN);
    let cursor = feed.start().await;
    // In the same instant: one run of each of three pipelines.
    let demo = feed.trigger(DEMO_PIPELINE_ID).await;
    let acme = feed.trigger(ACME_PIPELINE_ID).await;
    let scheduled = feed.trigger(DEMO_SCHEDULED_PIPELINE_ID).await;
    assert_eq!(demo.created_at, acme.created_at);
    advance(Duration::from_secs(3)).await;
    let later = feed.trigger(DEMO_SCHEDULED_PIPELINE_ID).await;
    advance(Duration::from_secs(60)).await;

    let (changes, _) = feed.all(&cursor).await;
    let t0 = demo.created_at;
    // Pipeline ids: 7d36 (acme) < a4cf (scheduled) < c714 (demo).
    assert_eq!(
        told(&changes),
        [
            (acme.id.clone(), Running, t0),
            (scheduled.id.clone(), Running, t0),
            (demo.id.clone(), Running, t0),
            (later.id.clone(), Queued, later.created_at),
            (acme.id.clone(), Success, t0 + seconds(10)),
            (scheduled.id.clone(), Success, t0 + seconds(10)),
            (later.id.clone(), Running, t0 + seconds(10)),
            (demo.id.clone(), Success, t0 + seconds(10)),
            (later.id.clone(), Success, t0 + seconds(20)),
        ]
    );
    assert_eq!(changes[0].customer.as_str(), ACME_CUSTOMER);
    assert_eq!(changes[1].customer.as_str(), DEMO_CUSTOMER);
}

#[tokio::test(start_paused = true)]
async fn a_cursor_resumes_within_an_instant_repeating_nothing_and_missing_nothing() {
    let feed = Harness::new(RUN);
    let cursor = feed.start().await;
    for pipeline in [
        DEMO_PIPELINE_ID,
        ACME_PIPELINE_ID,
        DEMO_SCHEDULED_PIPELINE_ID,
    ] {
        feed.trigger(pipeline).await;
        feed.trigger(pipeline).await;
    }
    advance(Duration::from_secs(25)).await;
    let (everything, _) = feed.all(&cursor).await;
    // 3 × (RUNNING, QUEUED) at one instant, 3 × (SUCCESS, RUNNING) at
    // another, 3 × SUCCESS at a third.
    assert_eq!(everything.len(), 15);

    // One change a call: each cursor lands within an instant.
    let one_by_one = MemoryChanges::new(&feed.backend)
        .with_batch_limit(1)
        .with_idle(Duration::ZERO);
    let mut cursors = vec![cursor.clone()];
    let mut read = Vec::new();
    loop {
        let last = cursors.last().unwrap().clone();
        let (told, next) = one_by_one.changes(Some(last)).await.unwrap();
        if told.is_empty() {
            break;
        }
        assert_eq!(told.len(), 1);
        read.extend(told);
        cursors.push(next);
    }
    assert_eq!(read, everything, "the same changes, in the same order");

    // Resuming from any cursor given (as after a failed append) tells
    // exactly the rest.
    for (index, cursor) in cursors.iter().enumerate().take(15) {
        let rest = MemoryChanges::new(&feed.backend).with_idle(Duration::ZERO);
        let (told, _) = rest.changes(Some(cursor.clone())).await.unwrap();
        let (told_once, _) = one_by_one.changes(Some(cursor.clone())).await.unwrap();
        assert_eq!(told, everything[index..], "from cursor {index}");
        assert_eq!(
            told_once,
            everything[index..=index],
            "one from cursor {index}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cursor_this_source_cannot_read_starts_from_now() {
    let feed = Harness::new(RUN);
    feed.trigger(DEMO_PIPELINE_ID).await;
    let at_once = MemoryChanges::new(&feed.backend).with_idle(Duration::ZERO);
    let (changes, cursor) = at_once
        .changes(Some(SourceCursor::new("not a cursor")))
        .await
        .unwrap();
    assert_eq!(changes, [], "nothing of the past");
    advance(RUN).await;
    let (changes, _) = at_once.changes(Some(cursor)).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].run.status, Success, "only what followed");
}

#[tokio::test(start_paused = true)]
async fn an_operation_in_the_instant_the_feed_read_is_told_a_tick_later() {
    // The clock's place within a microsecond decides whether the cancel's
    // instant, a nanosecond after the read, and the next run's, the next
    // whole microsecond, can meet: on the last nanosecond of one.
    for nanos in [0, 1, 500, 998, 999] {
        told_a_tick_later(Harness::starting_at(RUN, anchor(nanos))).await;
    }
}

async fn told_a_tick_later(feed: Harness) {
    let cursor = feed.start().await;
    advance(Duration::from_millis(1)).await;
    let first = feed.trigger(DEMO_PIPELINE_ID).await;
    let second = feed.trigger(DEMO_PIPELINE_ID).await;
    advance(Duration::from_millis(1)).await;
    let (told_first, cursor) = feed.all(&cursor).await;
    assert_eq!(told_first.len(), 2);
    // Time stands still: what is done now comes after what was told (a
    // nanosecond later, a microsecond for a run's instant, which is whole
    // microseconds), so that what was told of an instant never grows; and
    // the next read, at the latest instant dated, tells it at once.
    let cancelled = feed.cancel(DEMO_PIPELINE_ID, &second.id).await;
    let third = feed.trigger(DEMO_PIPELINE_ID).await;
    assert!(cancelled.updated_at > feed.now());
    assert!(cancelled.updated_at - feed.now() <= TimeDelta::microseconds(2));
    // The run is made after the cancel, or in the same instant when the
    // read fell on a microsecond's last nanosecond; changes of one instant
    // are told in the order of their runs' ids, so the cancel still comes
    // first (below).
    assert!(third.created_at >= cancelled.updated_at);
    assert!(third.created_at > first.created_at);
    let started = Instant::now();
    let (changes, _) = feed.all(&cursor).await;
    assert_eq!(Instant::now(), started, "no time passed");
    assert_eq!(
        told(&changes),
        [
            (second.id, Failed, cancelled.updated_at),
            (third.id, Queued, third.created_at)
        ]
    );
}

/// One step of the property test below.
#[derive(Debug, Clone)]
enum Step {
    Trigger(usize),
    /// Cancels the nth run triggered (of any pipeline), if there is one.
    Cancel(usize),
    Pause(usize),
    Unpause(usize),
    Advance(u64),
    /// Reads every change up to now, `usize` at a time.
    Read(usize),
}

const PIPELINES: [&str; 3] = [
    DEMO_PIPELINE_ID,
    ACME_PIPELINE_ID,
    DEMO_SCHEDULED_PIPELINE_ID,
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3_usize).prop_map(Step::Trigger),
        2 => (0..40_usize).prop_map(Step::Cancel),
        1 => (0..3_usize).prop_map(Step::Pause),
        1 => (0..3_usize).prop_map(Step::Unpause),
        4 => prop_oneof![Just(0_u64), 1..5_000_u64, Just(3_000)].prop_map(Step::Advance),
        2 => (1..6_usize).prop_map(Step::Read),
    ]
}

/// The stage of a run's life a change tells.
fn stage(status: RunStatus) -> u8 {
    match status {
        Queued => 0,
        Running => 1,
        Success | Failed => 2,
    }
}

/// Reads every change up to now with `reader`, checking that each was
/// made by now (the backend's own now, which is the clock's or the latest
/// instant an operation was dated, a few microseconds ahead of a clock
/// that stands still).
async fn read_all(
    feed: &Harness,
    reader: &MemoryChanges,
    cursor: &mut SourceCursor,
    into: &mut Vec<RunChange>,
) {
    loop {
        let (told, next) = reader.changes(Some(cursor.clone())).await.unwrap();
        *cursor = next;
        if told.is_empty() {
            return;
        }
        let now = feed.backend.feed_now();
        for change in &told {
            assert!(change.run.updated_at <= now, "told before it happened");
        }
        into.extend(told);
    }
}

async fn replay(steps: Vec<Step>) {
    let feed = Harness::new(Duration::from_secs(3));
    let mut cursor = feed.start().await;
    let mut runs: Vec<(usize, Run)> = Vec::new();
    let mut changes = Vec::new();
    let mut reader = MemoryChanges::new(&feed.backend).with_idle(Duration::ZERO);
    for step in steps {
        match step {
            Step::Trigger(p) => {
                let ctx = ctx(owner(PIPELINES[p]));
                let request = TriggerRequest::new(id(PIPELINES[p]));
                if let Ok(run) = feed.backend.trigger(&ctx, &request).await {
                    runs.push((p, run));
                }
            }
            Step::Cancel(n) => {
                if let Some((p, run)) = runs.get(n) {
                    let ctx = ctx(owner(PIPELINES[*p]));
                    let _ = feed
                        .backend
                        .cancel_run(&ctx, &id(PIPELINES[*p]), &run.id)
                        .await;
                }
            }
            Step::Pause(p) | Step::Unpause(p) => {
                let paused = matches!(step, Step::Pause(_));
                let ctx = ctx(owner(PIPELINES[p]));
                let _ = feed
                    .backend
                    .set_paused(&ctx, &id(PIPELINES[p]), paused)
                    .await;
            }
            Step::Advance(ms) => advance(Duration::from_millis(ms)).await,
            Step::Read(batch) => {
                reader = MemoryChanges::new(&feed.backend)
                    .with_batch_limit(batch)
                    .with_idle(Duration::ZERO);
                read_all(&feed, &reader, &mut cursor, &mut changes).await;
                // Everything up to now was told: each run's last change is
                // the run as it is now.
                for (p, run) in &runs {
                    let now = feed
                        .backend
                        .get_run(&ctx(owner(PIPELINES[*p])), &id(PIPELINES[*p]), &run.id)
                        .await
                        .unwrap();
                    if now.updated_at > feed.now() {
                        // Dated a moment ahead (made in the instant the
                        // feed read): told once the clock has passed it.
                        continue;
                    }
                    let last = changes
                        .iter()
                        .rev()
                        .find(|c| c.run.id == run.id && c.run.pipeline_id == run.pipeline_id);
                    assert_eq!(last.map(|c| &c.run), Some(&now), "run {}", run.id);
                }
            }
        }
    }
    // Let every run finish, and read the rest.
    for pipeline in PIPELINES {
        let _ = feed
            .backend
            .set_paused(&ctx(owner(pipeline)), &id(pipeline), false)
            .await;
    }
    advance(Duration::from_secs(3 * 40 + 1)).await;
    read_all(&feed, &reader, &mut cursor, &mut changes).await;

    // In order of instant, pipeline, run and stage, each change once.
    let keys: Vec<_> = changes
        .iter()
        .map(|c| {
            (
                c.run.updated_at,
                c.run.pipeline_id.clone(),
                c.run.id.clone(),
                stage(c.run.status),
            )
        })
        .collect();
    for pair in keys.windows(2) {
        assert!(pair[0] < pair[1], "out of order: {pair:?}");
    }
    // Every run: one appearance, statuses forward only, last finished,
    // told to its own customer.
    for (p, run) in &runs {
        let of_run: Vec<&RunChange> = changes
            .iter()
            .filter(|c| c.run.id == run.id && c.run.pipeline_id == run.pipeline_id)
            .collect();
        assert!(!of_run.is_empty(), "run {} never told", run.id);
        assert_eq!(
            of_run[0].run.updated_at, run.created_at,
            "appears when made"
        );
        assert!(matches!(
            of_run.last().unwrap().run.status,
            Success | Failed
        ));
        assert!(
            of_run
                .iter()
                .all(|c| c.customer.as_str() == owner(PIPELINES[*p])
                    && c.run.pipeline_id == id(PIPELINES[*p]))
        );
        let stages: Vec<u8> = of_run.iter().map(|c| stage(c.run.status)).collect();
        assert!(
            stages.windows(2).all(|pair| pair[0] < pair[1]),
            "{stages:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever is done, and however the changes are read, the source
    /// tells every change once, in order, at or after its instant, and
    /// what it last told of a run is the run as it is.
    #[test]
    fn the_source_tells_every_change_once_in_order(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(replay(steps));
    }
}
