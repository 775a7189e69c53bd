//! The memory backend through the ports, as the service uses it: tenancy,
//! pausing, queueing over (paused) time, bounds, paging and concurrency.

use std::collections::HashSet;
use std::time::Duration;

use adapter_memory::{
    ACME_CUSTOMER, ACME_PIPELINE_ID, DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, DEMO_PIPELINE_ID,
    DEMO_SCHEDULED_PIPELINE_ID, MemoryBackend, MemoryConfig,
};
use chrono::TimeDelta;
use domain::{
    Caller, CustomerId, ExecuteError, GetPipelineError, GetRunError, ListRunsError, Orchestrator,
    PipelineId, PipelineRepository, PipelineStatus, RequestContext, Run, RunId, RunQuery,
    RunStatus, SetPausedError, TriggerRequest,
};
use tokio::time::advance;

use RunStatus::{Queued, Running, Success};

fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()))
}

fn id(raw: &str) -> PipelineId {
    PipelineId::parse(raw).unwrap()
}

fn backend(run_seconds: u64) -> MemoryBackend {
    MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(run_seconds),
        ..MemoryConfig::default()
    })
}

fn all() -> RunQuery {
    RunQuery::new(Some(RunQuery::MAX_LIMIT), None, None).unwrap()
}

/// Every run of the demo pipeline, oldest first.
async fn runs(backend: &MemoryBackend) -> Vec<Run> {
    let mut runs = backend
        .list_runs(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID), &all())
        .await
        .unwrap()
        .runs;
    runs.reverse();
    runs
}

async fn statuses(backend: &MemoryBackend) -> Vec<RunStatus> {
    runs(backend)
        .await
        .into_iter()
        .map(|run| run.status)
        .collect()
}

async fn trigger(backend: &MemoryBackend) -> Result<Run, ExecuteError> {
    backend
        .trigger(&ctx(DEMO_CUSTOMER), &request(DEMO_PIPELINE_ID))
        .await
}

fn request(raw: &str) -> TriggerRequest {
    TriggerRequest::new(id(raw))
}

async fn set_paused(backend: &MemoryBackend, paused: bool) -> Result<(), SetPausedError> {
    backend
        .set_paused(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID), paused)
        .await
}

#[tokio::test]
async fn another_customers_pipeline_is_not_found_by_any_operation() {
    let backend = backend(10);
    let demo = ctx(DEMO_CUSTOMER);
    let acme_pipeline = id(ACME_PIPELINE_ID);
    let run = backend
        .trigger(
            &ctx(ACME_CUSTOMER),
            &TriggerRequest::new(acme_pipeline.clone()),
        )
        .await
        .unwrap();

    assert!(matches!(
        backend.get(&demo, &acme_pipeline).await,
        Err(GetPipelineError::NotFound(_))
    ));
    assert!(matches!(
        backend.set_paused(&demo, &acme_pipeline, true).await,
        Err(SetPausedError::NotFound(_))
    ));
    assert!(matches!(
        backend
            .trigger(&demo, &TriggerRequest::new(acme_pipeline.clone()))
            .await,
        Err(ExecuteError::NotFound(_))
    ));
    assert!(matches!(
        backend.list_runs(&demo, &acme_pipeline, &all()).await,
        Err(ListRunsError::NotFound(_))
    ));
    assert!(matches!(
        backend.get_run(&demo, &acme_pipeline, &run.id).await,
        Err(GetRunError::PipelineNotFound(_))
    ));

    // Nothing the demo customer tried changed acme's pipeline.
    let acme_view = backend
        .get(&ctx(ACME_CUSTOMER), &acme_pipeline)
        .await
        .unwrap();
    assert_eq!(acme_view.status, PipelineStatus::Active);
    let page = backend
        .list_runs(&ctx(ACME_CUSTOMER), &acme_pipeline, &all())
        .await
        .unwrap();
    assert_eq!(page.total, 1);
}

#[tokio::test]
async fn a_missing_pipeline_is_not_found() {
    let backend = backend(10);
    let missing = id("00000000-0000-4000-8000-000000000000");
    assert!(matches!(
        backend.get(&ctx(DEMO_CUSTOMER), &missing).await,
        Err(GetPipelineError::NotFound(_))
    ));
    assert!(matches!(
        backend
            .trigger(&ctx(DEMO_CUSTOMER), &TriggerRequest::new(missing.clone()))
            .await,
        Err(ExecuteError::NotFound(_))
    ));
}

#[tokio::test]
async fn each_customer_lists_only_its_own_pipelines() {
    let backend = backend(10);
    let names = |summaries: Vec<domain::PipelineSummary>| {
        summaries
            .into_iter()
            .map(|summary| summary.pipeline.id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(backend.list(&ctx(DEMO_CUSTOMER)).await.unwrap()),
        [
            DEMO_PIPELINE_ID,
            DEMO_SCHEDULED_PIPELINE_ID,
            DEMO_PAUSED_PIPELINE_ID
        ]
    );
    assert_eq!(
        names(backend.list(&ctx(ACME_CUSTOMER)).await.unwrap()),
        [ACME_PIPELINE_ID]
    );
    assert!(backend.list(&ctx("nobody")).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_listing_shows_the_newest_runs_status_as_time_passes() {
    let backend = backend(10);
    let last_status = |summaries: &[domain::PipelineSummary], wanted: &str| {
        summaries
            .iter()
            .find(|summary| summary.pipeline.id.as_str() == wanted)
            .unwrap()
            .last_status
    };
    let listing = backend.list(&ctx(DEMO_CUSTOMER)).await.unwrap();
    assert_eq!(last_status(&listing, DEMO_PIPELINE_ID), None);

    trigger(&backend).await.unwrap();
    trigger(&backend).await.unwrap();
    let listing = backend.list(&ctx(DEMO_CUSTOMER)).await.unwrap();
    assert_eq!(last_status(&listing, DEMO_PIPELINE_ID), Some(Queued));
    assert_eq!(last_status(&listing, DEMO_SCHEDULED_PIPELINE_ID), None);

    advance(Duration::from_secs(10)).await;
    let listing = backend.list(&ctx(DEMO_CUSTOMER)).await.unwrap();
    assert_eq!(last_status(&listing, DEMO_PIPELINE_ID), Some(Running));

    advance(Duration::from_secs(10)).await;
    let listing = backend.list(&ctx(DEMO_CUSTOMER)).await.unwrap();
    assert_eq!(last_status(&listing, DEMO_PIPELINE_ID), Some(Success));
}

#[tokio::test]
async fn a_paused_pipeline_refuses_executions_and_starts_nothing() {
    let backend = backend(10);
    let result = backend
        .trigger(&ctx(DEMO_CUSTOMER), &request(DEMO_PAUSED_PIPELINE_ID))
        .await;
    assert!(matches!(result, Err(ExecuteError::Paused(_))));
    let page = backend
        .list_runs(&ctx(DEMO_CUSTOMER), &id(DEMO_PAUSED_PIPELINE_ID), &all())
        .await
        .unwrap();
    assert_eq!(page.total, 0);
}

#[tokio::test(start_paused = true)]
async fn pausing_twice_or_unpausing_an_active_pipeline_is_unchanged() {
    let backend = backend(10);
    let before = backend
        .get(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID))
        .await
        .unwrap();
    assert!(matches!(
        set_paused(&backend, false).await,
        Err(SetPausedError::NotPaused(_))
    ));

    advance(Duration::from_secs(3)).await;
    set_paused(&backend, true).await.unwrap();
    let paused = backend
        .get(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID))
        .await
        .unwrap();
    assert_eq!(paused.status, PipelineStatus::Paused);
    assert!(paused.updated_at > before.updated_at);
    assert!(matches!(
        set_paused(&backend, true).await,
        Err(SetPausedError::AlreadyPaused(_))
    ));
    assert!(matches!(
        trigger(&backend).await,
        Err(ExecuteError::Paused(_))
    ));

    advance(Duration::from_secs(3)).await;
    set_paused(&backend, false).await.unwrap();
    let unpaused = backend
        .get(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID))
        .await
        .unwrap();
    assert_eq!(unpaused.status, PipelineStatus::Active);
    assert_eq!(
        unpaused.updated_at - paused.updated_at,
        TimeDelta::seconds(3)
    );
    assert!(matches!(
        set_paused(&backend, false).await,
        Err(SetPausedError::NotPaused(_))
    ));
    assert_eq!(trigger(&backend).await.unwrap().status, Running);
}

#[tokio::test(start_paused = true)]
async fn runs_queue_in_order_and_each_runs_for_run_duration() {
    let backend = backend(10);
    let triggered: Vec<RunStatus> = [
        trigger(&backend).await.unwrap(),
        trigger(&backend).await.unwrap(),
        trigger(&backend).await.unwrap(),
    ]
    .iter()
    .map(|run| run.status)
    .collect();
    assert_eq!(triggered, [Running, Queued, Queued]);
    assert_eq!(statuses(&backend).await, [Running, Queued, Queued]);

    advance(Duration::from_millis(9_999)).await;
    assert_eq!(statuses(&backend).await, [Running, Queued, Queued]);
    advance(Duration::from_millis(1)).await;
    assert_eq!(statuses(&backend).await, [Success, Running, Queued]);
    advance(Duration::from_secs(10)).await;
    assert_eq!(statuses(&backend).await, [Success, Success, Running]);
    advance(Duration::from_secs(10)).await;
    assert_eq!(statuses(&backend).await, [Success, Success, Success]);

    // Each ended exactly run_duration after it started, the next starting
    // at that instant.
    let runs = runs(&backend).await;
    let first_created = runs[0].created_at;
    for (index, run) in (1..).zip(&runs) {
        assert_eq!(
            run.updated_at,
            first_created + TimeDelta::seconds(10 * index)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_pause_lets_the_running_run_finish_and_holds_the_queue_until_unpause() {
    let backend = backend(10);
    trigger(&backend).await.unwrap();
    trigger(&backend).await.unwrap();
    advance(Duration::from_secs(4)).await;
    set_paused(&backend, true).await.unwrap();

    advance(Duration::from_secs(6)).await;
    assert_eq!(statuses(&backend).await, [Success, Queued]);
    advance(Duration::from_secs(60)).await;
    assert_eq!(statuses(&backend).await, [Success, Queued]);

    set_paused(&backend, false).await.unwrap();
    let unpaused_at = backend
        .get(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID))
        .await
        .unwrap()
        .updated_at;
    let runs_now = runs(&backend).await;
    assert_eq!(runs_now[1].status, Running);
    assert_eq!(runs_now[1].updated_at, unpaused_at);

    advance(Duration::from_secs(10)).await;
    assert_eq!(statuses(&backend).await, [Success, Success]);
}

#[tokio::test(start_paused = true)]
async fn a_zero_run_duration_finishes_runs_at_once() {
    let backend = backend(0);
    for _ in 0..3 {
        let run = trigger(&backend).await.unwrap();
        assert_eq!(run.status, Success);
        assert_eq!(run.updated_at, run.created_at);
    }
    assert_eq!(statuses(&backend).await, [Success, Success, Success]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_executions_and_creates_nothing() {
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(10),
        queue_limit: 3,
        ..MemoryConfig::default()
    });
    for _ in 0..4 {
        trigger(&backend).await.unwrap();
    }
    assert!(matches!(
        trigger(&backend).await,
        Err(ExecuteError::QueueFull { limit: 3, .. })
    ));
    assert!(matches!(
        trigger(&backend).await,
        Err(ExecuteError::QueueFull { limit: 3, .. })
    ));
    assert_eq!(statuses(&backend).await, [Running, Queued, Queued, Queued]);

    // Once a run finishes there is room for exactly one more.
    advance(Duration::from_secs(10)).await;
    trigger(&backend).await.unwrap();
    assert!(matches!(
        trigger(&backend).await,
        Err(ExecuteError::QueueFull { limit: 3, .. })
    ));
    assert_eq!(
        statuses(&backend).await,
        [Success, Running, Queued, Queued, Queued]
    );
}

#[tokio::test(start_paused = true)]
async fn only_history_limit_finished_runs_are_kept() {
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(1),
        queue_limit: 100,
        history_limit: 5,
    });
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(trigger(&backend).await.unwrap().id);
    }
    advance(Duration::from_millis(45_500)).await;

    let runs = runs(&backend).await;
    let kept: Vec<&RunId> = runs.iter().map(|run| &run.id).collect();
    // The 5 newest finished, the running one, and all 4 still queued.
    assert_eq!(kept, ids[40..].iter().collect::<Vec<_>>());
    let statuses: Vec<RunStatus> = runs.iter().map(|run| run.status).collect();
    assert_eq!(
        statuses,
        [[Success; 5].as_slice(), &[Running], &[Queued; 4]].concat()
    );
    assert!(matches!(
        backend
            .get_run(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID), &ids[39])
            .await,
        Err(GetRunError::RunNotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn run_listings_page_newest_first_filter_by_status_and_count_the_matches() {
    let backend = backend(10);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(trigger(&backend).await.unwrap().id);
        advance(Duration::from_secs(10)).await;
    }
    for _ in 0..3 {
        ids.push(trigger(&backend).await.unwrap().id);
    }
    // Runs 0-3 succeeded, 4 runs, 5 and 6 wait.
    let page = |limit, offset, status| {
        let backend = backend.clone();
        async move {
            let query = RunQuery::new(Some(limit), Some(offset), status).unwrap();
            let page = backend
                .list_runs(&ctx(DEMO_CUSTOMER), &id(DEMO_PIPELINE_ID), &query)
                .await
                .unwrap();
            let ids: Vec<RunId> = page.runs.into_iter().map(|run| run.id).collect();
            (ids, page.total)
        }
    };

    assert_eq!(
        page(3, 0, None).await,
        (vec![ids[6].clone(), ids[5].clone(), ids[4].clone()], 7)
    );
    assert_eq!(
        page(3, 5, None).await,
        (vec![ids[1].clone(), ids[0].clone()], 7)
    );
    assert_eq!(page(3, 7, None).await, (vec![], 7));
    assert_eq!(page(3, RunQuery::MAX_OFFSET, None).await, (vec![], 7));
    assert_eq!(
        page(2, 1, Some(Success)).await,
        (vec![ids[2].clone(), ids[1].clone()], 4)
    );
    assert_eq!(page(10, 0, Some(Running)).await, (vec![ids[4].clone()], 1));
    assert_eq!(
        page(10, 0, Some(Queued)).await,
        (vec![ids[6].clone(), ids[5].clone()], 2)
    );
    assert_eq!(page(10, 0, Some(RunStatus::Failed)).await, (vec![], 0));
}

#[tokio::test(start_paused = true)]
async fn get_run_finds_a_run_by_its_id_with_its_current_status() {
    let backend = backend(10);
    let first = trigger(&backend).await.unwrap();
    let second = trigger(&backend).await.unwrap();
    advance(Duration::from_secs(10)).await;

    let demo = ctx(DEMO_CUSTOMER);
    let pipeline = id(DEMO_PIPELINE_ID);
    let found = backend.get_run(&demo, &pipeline, &first.id).await.unwrap();
    assert_eq!((found.id, found.status), (first.id.clone(), Success));
    let found = backend.get_run(&demo, &pipeline, &second.id).await.unwrap();
    assert_eq!(
        (found.pipeline_id, found.status),
        (pipeline.clone(), Running)
    );

    let unknown = RunId::parse("manual__2000-01-01T00:00:00.000000+00:00").unwrap();
    assert!(matches!(
        backend.get_run(&demo, &pipeline, &unknown).await,
        Err(GetRunError::RunNotFound { .. })
    ));
    // A run of one pipeline is not a run of another.
    assert!(matches!(
        backend
            .get_run(&demo, &id(DEMO_SCHEDULED_PIPELINE_ID), &first.id)
            .await,
        Err(GetRunError::RunNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_triggers_all_get_distinct_runs_and_one_runs_at_a_time() {
    const TASKS: usize = 40;
    const PER_TASK: usize = 10;
    let backend = backend(3600);

    // A watcher keeps listing while the triggers race.
    let watcher = {
        let backend = backend.clone();
        tokio::spawn(async move {
            let mut most_running = 0;
            for _ in 0..200 {
                let running = statuses(&backend)
                    .await
                    .into_iter()
                    .filter(|status| *status == Running)
                    .count();
                most_running = most_running.max(running);
                tokio::task::yield_now().await;
            }
            most_running
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..PER_TASK {
                    ids.push(trigger(&backend).await.unwrap().id);
                }
                ids
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    assert!(watcher.await.unwrap() <= 1);

    assert_eq!(ids.len(), TASKS * PER_TASK);
    let runs = runs(&backend).await;
    assert_eq!(runs.len(), TASKS * PER_TASK);
    assert!(runs.iter().all(|run| ids.contains(&run.id)));
    assert_eq!(runs.iter().filter(|run| run.status == Running).count(), 1);
    assert_eq!(runs[0].status, Running);
}

#[tokio::test]
async fn the_backend_is_healthy_and_built_from_the_given_pipelines() {
    let backend = backend(10);
    assert!(backend.health().await.is_ok());
    let pipelines = adapter_memory::demo_pipelines();
    let mut twice = pipelines.clone();
    let mut renamed = pipelines[0].clone();
    renamed.name = "a duplicate".to_owned();
    twice.push(renamed);
    let backend = MemoryBackend::new(MemoryConfig::default(), twice);
    let listed = backend.list(&ctx(DEMO_CUSTOMER)).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].pipeline, pipelines[0]);
}
