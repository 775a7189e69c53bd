//! The run lifecycle on the memory backend, through the ports: parameters
//! kept on the run, cancels, and waiting for a run to change (woken by the
//! change itself, on tokio's paused clock).

use std::sync::Arc;
use std::time::Duration;

use adapter_memory::{
    ACME_CUSTOMER, ACME_PIPELINE_ID, DEMO_CUSTOMER, DEMO_PIPELINE_ID, MemoryBackend, MemoryConfig,
};
use chrono::TimeDelta;
use domain::{
    Caller, CancelRunError, Clock, CustomerId, GetRunError, Orchestrator, PipelineId,
    PipelineRepository, PipelineService, RequestContext, Run, RunConf, RunId, RunQuery, RunStatus,
    RunWatch, TriggerRequest,
};
use runtime::TokioClock;
use serde_json::json;
use tokio::time::{Instant, advance, sleep};

use RunStatus::{Failed, Queued, Running, Success};

fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()))
}

fn demo() -> RequestContext {
    ctx(DEMO_CUSTOMER)
}

fn pipeline() -> PipelineId {
    PipelineId::parse(DEMO_PIPELINE_ID).unwrap()
}

fn backend(run_seconds: u64) -> MemoryBackend {
    MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(run_seconds),
        ..MemoryConfig::default()
    })
}

/// A backend on a clock the test reads too, for the exact instants of
/// cancels and unpauses (those of runs' creation are cut to the
/// microsecond).
fn backend_and_clock(run_seconds: u64) -> (MemoryBackend, Arc<TokioClock>) {
    let clock = Arc::new(TokioClock::start());
    (backend(run_seconds).with_clock(clock.clone()), clock)
}

async fn trigger(backend: &MemoryBackend) -> Run {
    backend
        .trigger(&demo(), &TriggerRequest::new(pipeline()))
        .await
        .unwrap()
}

async fn get(backend: &MemoryBackend, run_id: &RunId) -> Run {
    backend.get_run(&demo(), &pipeline(), run_id).await.unwrap()
}

async fn cancel(backend: &MemoryBackend, run_id: &RunId) -> Result<Run, CancelRunError> {
    backend.cancel_run(&demo(), &pipeline(), run_id).await
}

async fn set_paused(backend: &MemoryBackend, paused: bool) {
    backend
        .set_paused(&demo(), &pipeline(), paused)
        .await
        .unwrap();
}

/// Waits until `count` waiters are registered: the readiness signal of
/// spawned waits.
async fn until_waiters(backend: &MemoryBackend, count: usize) {
    while backend.waiters() != count {
        tokio::task::yield_now().await;
    }
}

/// A wait for `run` to change, spawned.
fn spawn_wait(
    backend: &MemoryBackend,
    run: &Run,
) -> tokio::task::JoinHandle<Result<Run, GetRunError>> {
    let backend = backend.clone();
    let run = run.clone();
    tokio::spawn(async move { backend.changed(&demo(), &run).await })
}

#[tokio::test(start_paused = true)]
async fn the_conf_is_kept_on_the_run_and_read_back_by_trigger_get_and_list() {
    let backend = backend(10);
    let conf = RunConf::parse(json!({"date": "2024-12-18", "full_refresh": true})).unwrap();
    let with_conf = backend
        .trigger(
            &demo(),
            &TriggerRequest::new(pipeline()).with_conf(conf.clone()),
        )
        .await
        .unwrap();
    let without = trigger(&backend).await;
    assert_eq!(with_conf.conf, conf);
    assert!(without.conf.is_empty());

    advance(Duration::from_secs(15)).await;
    assert_eq!(get(&backend, &with_conf.id).await.conf, conf);
    let page = backend
        .list_runs(&demo(), &pipeline(), &RunQuery::default())
        .await
        .unwrap();
    assert_eq!(page.runs[1].conf, conf);
    assert!(page.runs[0].conf.is_empty());
    let succeeded = backend
        .list_runs(
            &demo(),
            &pipeline(),
            &RunQuery::new(None, None, Some(Success)).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(succeeded.runs[0].conf, conf);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_queued_run_fails_at_once_and_never_starts() {
    let (backend, clock) = backend_and_clock(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    let third = trigger(&backend).await;
    advance(Duration::from_secs(3)).await;

    let cancel_at = clock.now();
    let cancelled = cancel(&backend, &second.id).await.unwrap();
    assert_eq!(cancelled.status, Failed);
    assert_eq!(cancelled.trace.as_deref(), Some(Run::CANCELLED_TRACE));
    assert_eq!(cancelled.updated_at, cancel_at);

    // The third starts when the first ends, past the cancelled second.
    advance(Duration::from_secs(7)).await;
    let third_now = get(&backend, &third.id).await;
    assert_eq!(third_now.status, Running);
    assert_eq!(
        third_now.updated_at,
        first.created_at + TimeDelta::seconds(10)
    );
    advance(Duration::from_secs(60)).await;
    assert_eq!(get(&backend, &second.id).await, cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_running_run_lets_the_next_start_at_the_cancel_instant() {
    let backend = backend(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    advance(Duration::from_millis(4_321)).await;

    let cancelled = cancel(&backend, &first.id).await.unwrap();
    assert_eq!(cancelled.status, Failed);
    assert_eq!(cancelled.trace.as_deref(), Some(Run::CANCELLED_TRACE));
    let next = get(&backend, &second.id).await;
    assert_eq!(
        (next.status, next.updated_at),
        (Running, cancelled.updated_at)
    );

    advance(Duration::from_secs(10)).await;
    let next = get(&backend, &second.id).await;
    assert_eq!(next.status, Success);
    assert_eq!(
        next.updated_at,
        cancelled.updated_at + TimeDelta::seconds(10)
    );
}

#[tokio::test(start_paused = true)]
async fn a_finished_run_is_already_finished_with_its_status() {
    let backend = backend(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    cancel(&backend, &second.id).await.unwrap();
    advance(Duration::from_secs(10)).await;
    for (run, status) in [(&first, Success), (&second, Failed)] {
        match cancel(&backend, &run.id).await {
            Err(CancelRunError::AlreadyFinished {
                pipeline_id,
                run_id,
                status: found,
            }) => assert_eq!(
                (pipeline_id, run_id, found),
                (pipeline(), run.id.clone(), status)
            ),
            other => panic!("expected AlreadyFinished, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_run_or_another_customers_pipeline_is_not_found() {
    let backend = backend(10);
    let run = trigger(&backend).await;
    let unknown = RunId::parse("manual__2000-01-01T00:00:00.000000+00:00").unwrap();
    assert!(matches!(
        cancel(&backend, &unknown).await,
        Err(CancelRunError::RunNotFound { run_id, .. }) if run_id == unknown
    ));

    let acme = ctx(ACME_CUSTOMER);
    let acme_pipeline = PipelineId::parse(ACME_PIPELINE_ID).unwrap();
    let acme_run = backend
        .trigger(&acme, &TriggerRequest::new(acme_pipeline.clone()))
        .await
        .unwrap();
    assert!(matches!(
        backend.cancel_run(&demo(), &acme_pipeline, &acme_run.id).await,
        Err(CancelRunError::PipelineNotFound(id)) if id == acme_pipeline
    ));
    assert!(matches!(
        backend.cancel_run(&acme, &pipeline(), &run.id).await,
        Err(CancelRunError::PipelineNotFound(_))
    ));
    // Neither run changed.
    assert_eq!(get(&backend, &run.id).await.status, Running);
    let acme_now = backend
        .get_run(&acme, &acme_pipeline, &acme_run.id)
        .await
        .unwrap();
    assert_eq!(acme_now.status, Running);
}

#[tokio::test(start_paused = true)]
async fn on_a_paused_pipeline_a_cancelled_run_fails_and_the_next_waits_for_the_unpause() {
    let (backend, clock) = backend_and_clock(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    let third = trigger(&backend).await;
    set_paused(&backend, true).await;

    assert_eq!(cancel(&backend, &second.id).await.unwrap().status, Failed);
    advance(Duration::from_secs(60)).await;
    assert_eq!(get(&backend, &first.id).await.status, Success);
    assert_eq!(get(&backend, &third.id).await.status, Queued);

    let unpaused_at = clock.now();
    set_paused(&backend, false).await;
    let third_now = get(&backend, &third.id).await;
    assert_eq!(
        (third_now.status, third_now.updated_at),
        (Running, unpaused_at)
    );

    // The running run of a paused pipeline, too: nothing starts after it.
    let fourth = trigger(&backend).await;
    set_paused(&backend, true).await;
    assert_eq!(cancel(&backend, &third.id).await.unwrap().status, Failed);
    advance(Duration::from_secs(60)).await;
    assert_eq!(get(&backend, &fourth.id).await.status, Queued);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_of_a_running_run_wakes_exactly_at_its_end() {
    let backend = backend(10);
    let run = trigger(&backend).await;
    let start = Instant::now();
    let changed = backend.changed(&demo(), &run).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(changed.status, Success);
    assert_eq!(changed.updated_at, run.updated_at + TimeDelta::seconds(10));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_of_a_queued_run_sees_it_run_at_its_turn_then_succeed() {
    let backend = backend(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    let start = Instant::now();

    let running = backend.changed(&demo(), &second).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(running.status, Running);
    assert_eq!(
        running.updated_at,
        first.created_at + TimeDelta::seconds(10)
    );

    let succeeded = backend.changed(&demo(), &running).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(20));
    assert_eq!(succeeded.status, Success);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_wakes_a_waiter_at_once() {
    let backend = backend(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    let start = Instant::now();
    let running_waiter = spawn_wait(&backend, &first);
    let queued_waiter = spawn_wait(&backend, &second);
    until_waiters(&backend, 2).await;

    let cancelled = cancel(&backend, &first.id).await.unwrap();
    assert_eq!(running_waiter.await.unwrap().unwrap(), cancelled);
    // The cancel started the queued run at that very instant.
    let started = queued_waiter.await.unwrap().unwrap();
    assert_eq!(
        (started.status, started.updated_at),
        (Running, cancelled.updated_at)
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_unpause_wakes_the_waiter_of_a_queued_run_at_once() {
    let (backend, clock) = backend_and_clock(10);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    set_paused(&backend, true).await;
    // Paused: the queued run's turn will not come by itself.
    let waiter = spawn_wait(&backend, &second);
    until_waiters(&backend, 1).await;
    advance(Duration::from_secs(30)).await;
    assert!(!waiter.is_finished());
    assert_eq!(get(&backend, &first.id).await.status, Success);

    let unpaused_at = clock.now();
    set_paused(&backend, false).await;
    let started = waiter.await.unwrap().unwrap();
    assert_eq!((started.status, started.updated_at), (Running, unpaused_at));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_waiters_of_one_run_all_wake_at_its_end() {
    const WAITERS: usize = 1000;
    let backend = backend(10);
    let run = trigger(&backend).await;
    let start = Instant::now();
    let waiters: Vec<_> = (0..WAITERS).map(|_| spawn_wait(&backend, &run)).collect();
    until_waiters(&backend, WAITERS).await;

    for waiter in waiters {
        let changed = waiter.await.unwrap().unwrap();
        assert_eq!(changed.status, Success);
    }
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(backend.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_nothing_behind() {
    let backend = backend(10);
    let run = trigger(&backend).await;
    let waiter = spawn_wait(&backend, &run);
    until_waiters(&backend, 1).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(backend.waiters(), 0);

    // A wait cut short by its deadline, likewise.
    let ctx = demo();
    let bounded = tokio::time::timeout(Duration::from_secs(1), backend.changed(&ctx, &run));
    assert!(bounded.await.is_err());
    assert_eq!(backend.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_of_a_run_forgotten_from_the_history_is_told_it_is_not_found() {
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(10),
        history_limit: 0,
        ..MemoryConfig::default()
    });
    let run = trigger(&backend).await;
    let start = Instant::now();
    assert!(matches!(
        backend.changed(&demo(), &run).await,
        Err(GetRunError::RunNotFound { run_id, .. }) if run_id == run.id
    ));
    assert_eq!(start.elapsed(), Duration::from_secs(10));

    // A finished run waited on goes when a newer one finishes.
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(10),
        history_limit: 1,
        ..MemoryConfig::default()
    });
    let old = trigger(&backend).await;
    advance(Duration::from_secs(10)).await;
    let old = get(&backend, &old.id).await;
    trigger(&backend).await;
    let start = Instant::now();
    assert!(matches!(
        backend.changed(&demo(), &old).await,
        Err(GetRunError::RunNotFound { .. })
    ));
    assert_eq!(start.elapsed(), Duration::from_secs(10));

    // A trigger whose run finishes at once pushes the oldest out, and
    // wakes its waiter then.
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::ZERO,
        history_limit: 1,
        ..MemoryConfig::default()
    });
    let old = trigger(&backend).await;
    let waiter = spawn_wait(&backend, &old);
    until_waiters(&backend, 1).await;
    let start = Instant::now();
    trigger(&backend).await;
    assert!(matches!(
        waiter.await.unwrap(),
        Err(GetRunError::RunNotFound { .. })
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_of_another_customers_pipeline_is_told_it_is_not_found() {
    let backend = backend(10);
    let run = trigger(&backend).await;
    assert!(matches!(
        backend.changed(&ctx(ACME_CUSTOMER), &run).await,
        Err(GetRunError::PipelineNotFound(_))
    ));
    assert_eq!(backend.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_service_waits_for_a_run_over_the_memory_backend() {
    let backend = backend(10);
    let shared = Arc::new(backend.clone());
    let service = PipelineService::new(shared.clone(), shared.clone()).with_run_watch(shared);
    let first = trigger(&backend).await;
    let second = trigger(&backend).await;
    let start = Instant::now();

    // Until the deadline: the queued run, running by then.
    let at_deadline = service
        .wait_for_run(
            &demo(),
            &pipeline(),
            &second.id,
            sleep(Duration::from_secs(15)),
        )
        .await
        .unwrap();
    assert_eq!(at_deadline.status, Running);
    assert_eq!(start.elapsed(), Duration::from_secs(15));

    // Until it finishes, at 20 s.
    let finished = service
        .wait_for_run(
            &demo(),
            &pipeline(),
            &second.id,
            sleep(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(finished.status, Success);
    assert_eq!(
        finished.updated_at,
        first.created_at + TimeDelta::seconds(20)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(20));
}
