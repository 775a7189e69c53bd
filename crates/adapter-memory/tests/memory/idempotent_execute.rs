//! The execute use case under an idempotency key, over the memory backend
//! and the in-memory idempotency store, on tokio's paused clock: replays,
//! reused keys, requests in flight, expiry, failures that are not kept, and
//! many concurrent requests with one key.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use adapter_memory::{
    ACME_CUSTOMER, ACME_PIPELINE_ID, DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, DEMO_PIPELINE_ID,
    MemoryBackend, MemoryConfig, MemoryIdempotencyStore,
};
use async_trait::async_trait;
use domain::{
    BackendError, Caller, CancelRunError, CustomerId, ExecuteError, GetRunError, Idempotency,
    IdempotencyConfig, IdempotencyError, IdempotencyKey, Idempotent, ListRunsError, Orchestrator,
    PipelineId, PipelineService, RequestContext, Run, RunId, RunPage, RunQuery, TriggerRequest,
};
use runtime::TokioClock;
use tokio::sync::Semaphore;

const IN_FLIGHT: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The memory backend, with triggers that can be held at a gate and made
/// to fail, to stand for a slow or failing upstream.
struct Upstream {
    backend: MemoryBackend,
    /// Triggers wait for a permit; each takes one and gives it back.
    gate: Semaphore,
    /// This many next triggers fail as a timeout, before reaching the
    /// backend.
    failures: AtomicUsize,
    triggers: AtomicUsize,
}

#[async_trait]
impl Orchestrator for Upstream {
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        self.triggers.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await.expect("the gate is never closed");
        drop(permit);
        // Another task's turn, so that concurrent requests overlap.
        tokio::task::yield_now().await;
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(BackendError::timeout("upstream took too long").into());
        }
        self.backend.trigger(ctx, request).await
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        self.backend.list_runs(ctx, id, query).await
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        self.backend.get_run(ctx, id, run_id).await
    }

    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        self.backend.cancel_run(ctx, id, run_id).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.backend.health().await
    }
}

struct World {
    upstream: Arc<Upstream>,
    service: PipelineService,
    idempotency: Idempotency,
    store: MemoryIdempotencyStore,
}

impl World {
    fn new(open: bool) -> Self {
        let backend = MemoryBackend::demo(MemoryConfig {
            run_duration: Duration::from_secs(3600),
            ..MemoryConfig::default()
        });
        let upstream = Arc::new(Upstream {
            backend: backend.clone(),
            gate: Semaphore::new(usize::from(open)),
            failures: AtomicUsize::new(0),
            triggers: AtomicUsize::new(0),
        });
        let service = PipelineService::new(Arc::new(backend), upstream.clone());
        let store = MemoryIdempotencyStore::default();
        let mut config = IdempotencyConfig::default();
        config.retention = RETENTION;
        config.in_flight = IN_FLIGHT;
        let idempotency = Idempotency::new(
            Arc::new(store.clone()),
            config,
            Arc::new(TokioClock::start()),
        );
        Self {
            upstream,
            service,
            idempotency,
            store,
        }
    }

    async fn execute(
        &self,
        customer: &str,
        pipeline: &str,
        key: &str,
    ) -> Result<Idempotent, IdempotencyError> {
        let ctx = ctx(customer);
        let id = PipelineId::parse(pipeline).unwrap();
        let key = IdempotencyKey::parse(key).unwrap();
        self.idempotency
            .execute(&self.service, &ctx, &key, TriggerRequest::new(id))
            .await
    }

    /// How many runs the backend holds for the pipeline.
    async fn runs(&self, customer: &str, pipeline: &str) -> u64 {
        let id = PipelineId::parse(pipeline).unwrap();
        self.upstream
            .backend
            .list_runs(&ctx(customer), &id, &RunQuery::default())
            .await
            .unwrap()
            .total
    }
}

fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()))
}

/// What an execute answered, in short: the run it made, or the refusal
/// with the pipeline it names.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Run(Run),
    NotFound(PipelineId),
    Paused(PipelineId),
    QueueFull,
    Backend,
}

impl Answer {
    fn of(outcome: Result<Run, ExecuteError>) -> Self {
        match outcome {
            Ok(run) => Self::Run(run),
            Err(ExecuteError::NotFound(id)) => Self::NotFound(id),
            Err(ExecuteError::Paused(id)) => Self::Paused(id),
            Err(ExecuteError::QueueFull { .. }) => Self::QueueFull,
            Err(ExecuteError::Backend(_)) => Self::Backend,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }

    fn is_run(&self) -> bool {
        matches!(self, Self::Run(_))
    }
}

fn ran(answer: Result<Idempotent, IdempotencyError>) -> Answer {
    match answer {
        Ok(Idempotent::Ran {
            outcome,
            record_error: None,
        }) => Answer::of(outcome),
        other => panic!("expected a fresh run, got {other:?}"),
    }
}

fn replayed(answer: Result<Idempotent, IdempotencyError>) -> Answer {
    match answer {
        Ok(Idempotent::Replayed(outcome)) => Answer::of(outcome),
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_repeat_gets_the_first_answer_again_and_starts_no_run() {
    let world = World::new(true);
    let first = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    assert!(first.is_run());

    let again = replayed(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    assert_eq!(again, first);
    assert_eq!(world.runs(DEMO_CUSTOMER, DEMO_PIPELINE_ID).await, 1);
    assert_eq!(world.upstream.triggers.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_same_id_in_another_form_is_the_same_request() {
    let world = World::new(true);
    let first = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    let hyphenated = DEMO_PIPELINE_ID.replace('_', "-").to_uppercase();
    let again = replayed(world.execute(DEMO_CUSTOMER, &hyphenated, "k1").await);
    assert_eq!(again, first);
}

#[tokio::test(start_paused = true)]
async fn a_new_key_starts_a_new_run() {
    let world = World::new(true);
    let first = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    let second = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k2").await);
    assert_ne!(first, second);
    assert_eq!(world.runs(DEMO_CUSTOMER, DEMO_PIPELINE_ID).await, 2);
}

#[tokio::test(start_paused = true)]
async fn the_same_key_with_another_pipeline_is_refused_as_reused() {
    let world = World::new(true);
    ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);

    let other = world
        .execute(DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, "k1")
        .await;
    assert!(
        matches!(other, Err(IdempotencyError::KeyReused)),
        "{other:?}"
    );
    assert_eq!(world.upstream.triggers.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_same_key_of_another_customer_is_another_request() {
    let world = World::new(true);
    ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    let acme = ran(world.execute(ACME_CUSTOMER, ACME_PIPELINE_ID, "k1").await);
    assert!(acme.is_run());
    assert_eq!(world.runs(ACME_CUSTOMER, ACME_PIPELINE_ID).await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_repeat_while_the_first_is_in_flight_is_refused_and_starts_nothing() {
    let world = Arc::new(World::new(false));
    let first = tokio::spawn({
        let world = world.clone();
        async move { world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await }
    });
    while world.upstream.triggers.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }

    let repeat = world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await;
    assert!(
        matches!(repeat, Err(IdempotencyError::InFlight)),
        "{repeat:?}"
    );
    let reused = world
        .execute(DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, "k1")
        .await;
    assert!(
        matches!(reused, Err(IdempotencyError::KeyReused)),
        "{reused:?}"
    );

    world.upstream.gate.add_permits(1);
    let first = ran(first.await.unwrap());
    assert!(first.is_run());
    assert_eq!(world.upstream.triggers.load(Ordering::SeqCst), 1);
    assert_eq!(
        replayed(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await),
        first
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_replayed_for_the_retention_and_then_the_key_runs_again() {
    let world = World::new(true);
    let first = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);

    tokio::time::advance(RETENTION - Duration::from_secs(1)).await;
    assert_eq!(
        replayed(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await),
        first
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    let later = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    assert!(later.is_run());
    assert_ne!(later, first);
    assert_eq!(world.runs(DEMO_CUSTOMER, DEMO_PIPELINE_ID).await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_claim_whose_request_was_lost_expires_and_the_retry_runs() {
    let world = Arc::new(World::new(false));
    // The first request is lost with its process: it never finishes.
    let lost = tokio::spawn({
        let world = world.clone();
        async move { world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await }
    });
    while world.upstream.triggers.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    lost.abort();

    tokio::time::advance(IN_FLIGHT - Duration::from_secs(1)).await;
    let early = world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await;
    assert!(
        matches!(early, Err(IdempotencyError::InFlight)),
        "{early:?}"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    world.upstream.gate.add_permits(1);
    let retry = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    assert!(retry.is_run());
}

#[tokio::test(start_paused = true)]
async fn a_backend_failure_is_not_kept_so_the_retry_runs() {
    let world = World::new(true);
    world.upstream.failures.store(1, Ordering::SeqCst);
    let failed = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    assert_eq!(failed, Answer::Backend);
    assert_eq!(
        world.store.len(),
        1,
        "the claim was released, and the failed attempt noted in its place"
    );

    let retry = ran(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await);
    assert!(retry.is_run());
    assert_eq!(world.runs(DEMO_CUSTOMER, DEMO_PIPELINE_ID).await, 1);
    assert_eq!(
        replayed(world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await),
        retry
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_not_kept_so_the_retry_runs_once_there_is_room() {
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(10),
        queue_limit: 0,
        ..MemoryConfig::default()
    });
    let service = PipelineService::new(Arc::new(backend.clone()), Arc::new(backend));
    let idempotency = Idempotency::new(
        Arc::new(MemoryIdempotencyStore::default()),
        IdempotencyConfig::default(),
        Arc::new(TokioClock::start()),
    );
    let ctx = ctx(DEMO_CUSTOMER);
    let request = || TriggerRequest::new(PipelineId::parse(DEMO_PIPELINE_ID).unwrap());
    let key = |raw| IdempotencyKey::parse(raw).unwrap();

    ran(idempotency
        .execute(&service, &ctx, &key("k1"), request())
        .await);
    let full = ran(idempotency
        .execute(&service, &ctx, &key("k2"), request())
        .await);
    assert_eq!(full, Answer::QueueFull);

    tokio::time::advance(Duration::from_secs(10)).await;
    let retry = ran(idempotency
        .execute(&service, &ctx, &key("k2"), request())
        .await);
    assert!(retry.is_run());
}

#[tokio::test(start_paused = true)]
async fn refusals_of_a_missing_or_paused_pipeline_are_kept() {
    let world = World::new(true);
    let paused = ran(world
        .execute(DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, "k1")
        .await);
    assert_eq!(
        paused,
        Answer::Paused(PipelineId::parse(DEMO_PAUSED_PIPELINE_ID).unwrap())
    );
    assert_eq!(
        replayed(
            world
                .execute(DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, "k1")
                .await
        ),
        paused
    );

    // Another customer's pipeline is answered as missing, and kept so.
    let missing = ran(world.execute(DEMO_CUSTOMER, ACME_PIPELINE_ID, "k2").await);
    assert_eq!(
        missing,
        Answer::NotFound(PipelineId::parse(ACME_PIPELINE_ID).unwrap())
    );
    assert_eq!(
        replayed(world.execute(DEMO_CUSTOMER, ACME_PIPELINE_ID, "k2").await),
        missing
    );
    assert_eq!(world.upstream.triggers.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_with_one_key_start_exactly_one_run() {
    let world = Arc::new(World::new(true));
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let world = world.clone();
            tokio::spawn(async move { world.execute(DEMO_CUSTOMER, DEMO_PIPELINE_ID, "k1").await })
        })
        .collect();

    let mut fresh = Vec::new();
    let mut replays = Vec::new();
    let mut in_flight = 0;
    for request in requests {
        match request.await.unwrap() {
            Ok(Idempotent::Ran {
                outcome,
                record_error: None,
            }) => fresh.push(outcome),
            Ok(Idempotent::Replayed(outcome)) => replays.push(outcome),
            Err(IdempotencyError::InFlight) => in_flight += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one request ran");
    assert_eq!(1 + replays.len() + in_flight, 200);
    let fresh = Answer::of(fresh.remove(0));
    assert!(fresh.is_run());
    assert!(
        replays
            .into_iter()
            .map(Answer::of)
            .all(|replay| replay == fresh)
    );
    assert_eq!(world.upstream.triggers.load(Ordering::SeqCst), 1);
    assert_eq!(world.runs(DEMO_CUSTOMER, DEMO_PIPELINE_ID).await, 1);
}
