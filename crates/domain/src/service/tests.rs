//! Unit tests of the use cases against mocks of the ports.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use mockall::predicate::{always, eq};

use super::*;
use crate::{
    BackendErrorKind, Caller, CustomerId, MockOrchestrator, MockPipelineRepository, RunStatus,
    Timestamp,
};

const ID: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
const OTHER_ID: &str = "00000000_0000_4000_8000_000000000000";

fn id() -> PipelineId {
    PipelineId::parse(ID).unwrap()
}

fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()))
}

fn at() -> Timestamp {
    Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap()
}

fn pipeline(customer: &str, id: &str) -> Pipeline {
    Pipeline::new(
        PipelineId::parse(id).unwrap(),
        CustomerId::parse(customer).unwrap(),
        format!("pipeline {id}"),
        at(),
    )
}

fn run(pipeline: &str, status: RunStatus) -> Run {
    Run::new(
        RunId::manual(&at()),
        PipelineId::parse(pipeline).unwrap(),
        status,
        at(),
    )
}

fn trigger() -> TriggerRequest {
    TriggerRequest::new(id())
}

fn service(repo: MockPipelineRepository, orchestrator: MockOrchestrator) -> PipelineService {
    PipelineService::new(Arc::new(repo), Arc::new(orchestrator))
}

fn with_orchestrator(orchestrator: MockOrchestrator) -> PipelineService {
    service(MockPipelineRepository::new(), orchestrator)
}

fn with_repo(repo: MockPipelineRepository) -> PipelineService {
    service(repo, MockOrchestrator::new())
}

#[tokio::test]
async fn execute_hands_the_whole_request_to_the_trigger_scoped_to_the_callers_customer() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger()
        .withf(|ctx, request| ctx.customer().as_str() == "acme" && *request == trigger())
        .times(1)
        .returning(|_, _| Ok(run(ID, RunStatus::Running)));

    let run = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &trigger())
        .await
        .unwrap();

    assert_eq!(run.id.as_str(), "manual__2024-12-18T10:30:00.000000+00:00");
}

#[tokio::test]
async fn execute_passes_each_refusal_through_with_its_data() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_trigger().returning(|_, request| {
        Err(ExecuteError::QueueFull {
            pipeline_id: request.pipeline_id().clone(),
            limit: 3,
        })
    });
    let err = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &trigger())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExecuteError::QueueFull { pipeline_id, limit: 3 } if *pipeline_id == id())
    );
    assert_eq!(
        err.to_string(),
        format!("pipeline {ID} already has 3 runs waiting, its most")
    );
}

#[tokio::test]
async fn execute_passes_backend_failures_through_with_their_kind() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger()
        .returning(|_, _| Err(BackendError::timeout("slow").into()));
    let err = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &trigger())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::Backend(e) if e.kind() == BackendErrorKind::Timeout));
}

#[tokio::test]
async fn execute_refuses_a_run_of_another_pipeline_from_a_faulty_backend() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger()
        .returning(|_, _| Ok(run(OTHER_ID, RunStatus::Queued)));
    let err = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &trigger())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::Backend(_)));
}

#[tokio::test]
async fn pause_and_unpause_ask_for_the_state_and_pass_an_unchanged_pipeline_through() {
    for paused in [true, false] {
        let mut repo = MockPipelineRepository::new();
        repo.expect_set_paused()
            .with(always(), eq(id()), eq(paused))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let service = with_repo(repo);
        let done = if paused {
            service.pause(&ctx("acme"), &id()).await
        } else {
            service.unpause(&ctx("acme"), &id()).await
        };
        done.unwrap();
    }

    let mut repo = MockPipelineRepository::new();
    repo.expect_set_paused()
        .returning(|_, id, paused| Err(SetPausedError::unchanged(id.clone(), paused)));
    let service = with_repo(repo);
    assert!(matches!(
        service.pause(&ctx("acme"), &id()).await,
        Err(SetPausedError::AlreadyPaused(p)) if p == id()
    ));
    assert!(matches!(
        service.unpause(&ctx("acme"), &id()).await,
        Err(SetPausedError::NotPaused(p)) if p == id()
    ));
}

#[tokio::test]
async fn get_pipeline_returns_the_callers_pipeline() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_get()
        .withf(|ctx, pipeline| ctx.customer().as_str() == "acme" && pipeline.as_str() == ID)
        .returning(|_, _| Ok(pipeline("acme", ID)));
    let found = with_repo(repo)
        .get_pipeline(&ctx("acme"), &id())
        .await
        .unwrap();
    assert_eq!(found, pipeline("acme", ID));
}

#[tokio::test]
async fn get_pipeline_hides_another_customers_pipeline_even_from_a_faulty_backend() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_get()
        .returning(|_, _| Ok(pipeline("globex", ID)));
    let err = with_repo(repo)
        .get_pipeline(&ctx("acme"), &id())
        .await
        .unwrap_err();
    assert!(matches!(err, GetPipelineError::NotFound(p) if p == id()));
}

#[tokio::test]
async fn list_pipelines_keeps_only_the_callers_and_orders_them_by_name() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_list().returning(|_| {
        let mut b = pipeline("acme", ID);
        b.name = "b".into();
        let mut a = pipeline("acme", OTHER_ID);
        a.name = "a".into();
        let foreign = pipeline("globex", "11111111_1111_4111_8111_111111111111");
        Ok([b, foreign, a]
            .into_iter()
            .map(|pipeline| PipelineSummary::new(pipeline, None))
            .collect())
    });
    let names: Vec<String> = with_repo(repo)
        .list_pipelines(&ctx("acme"))
        .await
        .unwrap()
        .into_iter()
        .map(|summary| summary.pipeline.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test]
async fn list_runs_passes_the_query_and_returns_the_page() {
    let query = RunQuery::new(Some(2), Some(1), Some(RunStatus::Success)).unwrap();
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_list_runs()
        .with(always(), eq(id()), eq(query))
        .returning(|_, _, _| Ok(RunPage::new(vec![run(ID, RunStatus::Success)], 7)));
    let page = with_orchestrator(orchestrator)
        .list_runs(&ctx("acme"), &id(), &query)
        .await
        .unwrap();
    assert_eq!(page.total, 7);
    assert_eq!(page.runs.len(), 1);
}

#[tokio::test]
async fn list_runs_never_returns_more_than_the_limit_nor_foreign_runs() {
    let query = RunQuery::new(Some(1), None, None).unwrap();
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_list_runs().returning(|_, _, _| {
        Ok(RunPage::new(
            vec![
                run(OTHER_ID, RunStatus::Running),
                run(ID, RunStatus::Running),
                run(ID, RunStatus::Success),
            ],
            2,
        ))
    });
    let page = with_orchestrator(orchestrator)
        .list_runs(&ctx("acme"), &id(), &query)
        .await
        .unwrap();
    assert_eq!(page.runs, vec![run(ID, RunStatus::Running)]);
}

#[tokio::test]
async fn get_run_returns_the_run_and_passes_a_missing_run_or_pipeline_through() {
    let wanted = RunId::manual(&at());

    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .with(always(), eq(id()), eq(wanted.clone()))
        .returning(|_, _, _| Ok(run(ID, RunStatus::Success)));
    let found = with_orchestrator(orchestrator)
        .get_run(&ctx("acme"), &id(), &wanted)
        .await
        .unwrap();
    assert_eq!(found.status, RunStatus::Success);

    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .returning(|_, id, run_id| Err(GetRunError::run_not_found(id, run_id)));
    let err = with_orchestrator(orchestrator)
        .get_run(&ctx("acme"), &id(), &wanted)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GetRunError::RunNotFound { pipeline_id, run_id } if pipeline_id == id() && run_id == wanted)
    );
}

#[tokio::test]
async fn get_run_hides_a_run_of_another_pipeline_from_a_faulty_backend() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .returning(|_, _, _| Ok(run(OTHER_ID, RunStatus::Success)));
    let err = with_orchestrator(orchestrator)
        .get_run(&ctx("acme"), &id(), &RunId::manual(&at()))
        .await
        .unwrap_err();
    assert!(matches!(err, GetRunError::RunNotFound { .. }));
}

#[tokio::test]
async fn dot_run_ids_never_reach_the_orchestrator_and_are_not_found() {
    for raw in [".", ".."] {
        let run_id = RunId::parse(raw).unwrap();
        // The caller's pipeline: the run is not found.
        let mut repo = MockPipelineRepository::new();
        repo.expect_get().returning(|_, _| Ok(pipeline("acme", ID)));
        let mut orchestrator = MockOrchestrator::new();
        orchestrator.expect_get_run().never();
        let err = service(repo, orchestrator)
            .get_run(&ctx("acme"), &id(), &run_id)
            .await
            .unwrap_err();
        assert!(matches!(err, GetRunError::RunNotFound { .. }), "{raw}");

        // Another customer's pipeline: the pipeline is not found.
        let mut repo = MockPipelineRepository::new();
        repo.expect_get()
            .returning(|_, id| Err(GetPipelineError::NotFound(id.clone())));
        let err = service(repo, MockOrchestrator::new())
            .get_run(&ctx("globex"), &id(), &run_id)
            .await
            .unwrap_err();
        assert!(matches!(err, GetRunError::PipelineNotFound(_)), "{raw}");
    }
}

#[tokio::test]
async fn ready_asks_the_orchestrator() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_health()
        .times(1)
        .returning(|| Err(BackendError::unavailable("down")));
    assert!(with_orchestrator(orchestrator).ready().await.is_err());
}

#[tokio::test]
async fn cancel_passes_the_run_and_each_refusal_through() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_cancel_run()
        .with(always(), eq(id()), eq(RunId::manual(&at())))
        .times(1)
        .returning(|_, _, _| {
            let mut run = run(ID, RunStatus::Failed);
            run.trace = Some(Run::CANCELLED_TRACE.to_owned());
            Ok(run)
        });
    let cancelled = with_orchestrator(orchestrator)
        .cancel_run(&ctx("acme"), &id(), &RunId::manual(&at()))
        .await
        .unwrap();
    assert_eq!(
        cancelled.trace.as_deref(),
        Some("Cancelled through the API")
    );

    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_cancel_run().returning(|_, id, run_id| {
        Err(CancelRunError::AlreadyFinished {
            pipeline_id: id.clone(),
            run_id: run_id.clone(),
            status: RunStatus::Success,
        })
    });
    let err = with_orchestrator(orchestrator)
        .cancel_run(&ctx("acme"), &id(), &RunId::manual(&at()))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CancelRunError::AlreadyFinished {
            status: RunStatus::Success,
            ..
        }
    ));
}

#[tokio::test]
async fn cancel_refuses_another_runs_answer_and_never_sends_dot_ids() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_cancel_run()
        .returning(|_, _, _| Ok(run(OTHER_ID, RunStatus::Failed)));
    let err = with_orchestrator(orchestrator)
        .cancel_run(&ctx("acme"), &id(), &RunId::manual(&at()))
        .await
        .unwrap_err();
    assert!(matches!(err, CancelRunError::Backend(_)));

    let mut repo = MockPipelineRepository::new();
    repo.expect_get().returning(|_, _| Ok(pipeline("acme", ID)));
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_cancel_run().never();
    let err = service(repo, orchestrator)
        .cancel_run(&ctx("acme"), &id(), &RunId::parse("..").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, CancelRunError::RunNotFound { .. }));
}

/// A watch that answers each `changed` with the next of `runs`, then
/// never again.
fn watching(runs: Vec<Run>) -> Arc<dyn RunWatch> {
    let runs = std::sync::Mutex::new(runs.into_iter());
    let mut watch = crate::MockRunWatch::new();
    watch.expect_changed().returning(move |_, _| {
        runs.lock()
            .unwrap()
            .next()
            .map_or_else(|| panic!("asked after the last change"), Ok)
    });
    Arc::new(watch)
}

#[tokio::test]
async fn a_wait_reads_the_run_once_then_follows_the_watch_to_the_finish() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .times(1)
        .returning(|_, _, _| Ok(run(ID, RunStatus::Queued)));
    let service = with_orchestrator(orchestrator).with_run_watch(watching(vec![
        run(ID, RunStatus::Running),
        run(ID, RunStatus::Success),
    ]));

    let finished = service
        .wait_for_run(
            &ctx("acme"),
            &id(),
            &RunId::manual(&at()),
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(finished.status, RunStatus::Success);
}

/// A watch that never hears of a change.
struct Silent;

#[async_trait::async_trait]
impl RunWatch for Silent {
    async fn changed(&self, _: &RequestContext, _: &Run) -> Result<Run, GetRunError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_wait_answers_the_run_as_it_is_when_the_deadline_comes() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .times(1)
        .returning(|_, _, _| Ok(run(ID, RunStatus::Running)));
    let service = with_orchestrator(orchestrator).with_run_watch(Arc::new(Silent));

    let as_is = service
        .wait_for_run(
            &ctx("acme"),
            &id(),
            &RunId::manual(&at()),
            std::future::ready(()),
        )
        .await
        .unwrap();
    assert_eq!(as_is.status, RunStatus::Running);
}

#[tokio::test]
async fn a_wait_refuses_a_change_of_another_run_from_a_faulty_watch() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .returning(|_, _, _| Ok(run(ID, RunStatus::Running)));
    let service = with_orchestrator(orchestrator)
        .with_run_watch(watching(vec![run(OTHER_ID, RunStatus::Success)]));
    let err = service
        .wait_for_run(
            &ctx("acme"),
            &id(),
            &RunId::manual(&at()),
            std::future::pending(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GetRunError::RunNotFound { .. }));
}

#[tokio::test]
async fn a_wait_without_a_watch_answers_at_once_and_a_finished_run_needs_no_watch() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .returning(|_, _, _| Ok(run(ID, RunStatus::Running)));
    let at_once = with_orchestrator(orchestrator)
        .wait_for_run(
            &ctx("acme"),
            &id(),
            &RunId::manual(&at()),
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(at_once.status, RunStatus::Running);

    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .returning(|_, _, _| Ok(run(ID, RunStatus::Failed)));
    let mut watch = crate::MockRunWatch::new();
    watch.expect_changed().never();
    let finished = with_orchestrator(orchestrator)
        .with_run_watch(Arc::new(watch))
        .wait_for_run(
            &ctx("acme"),
            &id(),
            &RunId::manual(&at()),
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(finished.status, RunStatus::Failed);
}
