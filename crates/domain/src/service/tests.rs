//! Unit tests of the use cases against mocks of the ports.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use mockall::predicate::{always, eq};

use super::*;
use crate::{
    Caller, CustomerId, MockOrchestrator, MockPipelineRepository, PipelineStatus, RunStatus,
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
    Pipeline {
        id: PipelineId::parse(id).unwrap(),
        customer_id: CustomerId::parse(customer).unwrap(),
        name: format!("pipeline {id}"),
        description: String::new(),
        cron: None,
        status: PipelineStatus::Active,
        created_at: at(),
        updated_at: at(),
        jobs: Vec::new(),
    }
}

fn run(pipeline: &str, status: RunStatus) -> Run {
    Run {
        id: RunId::manual(&at()),
        pipeline_id: PipelineId::parse(pipeline).unwrap(),
        status,
        created_at: at(),
        updated_at: at(),
        trace: None,
    }
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
async fn execute_triggers_a_run_scoped_to_the_callers_customer() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger_with()
        .withf(|ctx, pipeline, options| {
            ctx.customer().as_str() == "acme"
                && pipeline.as_str() == ID
                && *options == TriggerOptions::default()
        })
        .times(1)
        .returning(|_, _, _| Ok(run(ID, RunStatus::Running)));

    let run = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &id())
        .await
        .unwrap();

    assert_eq!(run.id.as_str(), "manual__2024-12-18T10:30:00.000000+00:00");
}

#[tokio::test]
async fn execute_reports_each_refusal_with_the_contract_text() {
    type Case = (fn() -> TriggerError, &'static str);
    let cases: [Case; 3] = [
        (
            || TriggerError::NotFound,
            "Pipeline with id 1b33ad2f_33d3_4837_9eeb_83c82c8b909d not found",
        ),
        (
            || TriggerError::Paused,
            "Cannot execute paused pipeline. Use /pipeline/unpause first.",
        ),
        (
            || TriggerError::QueueFull { limit: 3 },
            "Pipeline queue is full (3 runs waiting). Retry when earlier runs have finished.",
        ),
    ];
    for (error, text) in cases {
        let mut orchestrator = MockOrchestrator::new();
        orchestrator
            .expect_trigger_with()
            .returning(move |_, _, _| Err(error()));
        let err = with_orchestrator(orchestrator)
            .execute(&ctx("acme"), &id())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), text);
    }
}

#[tokio::test]
async fn execute_passes_backend_failures_through_with_their_kind() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger_with()
        .returning(|_, _, _| Err(BackendError::timeout("slow").into()));
    let err = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &id())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecuteError::Backend(e) if e.kind() == crate::BackendErrorKind::Timeout)
    );
}

#[tokio::test]
async fn execute_refuses_a_run_of_another_pipeline_from_a_faulty_backend() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger_with()
        .returning(|_, _, _| Ok(run(OTHER_ID, RunStatus::Queued)));
    let err = with_orchestrator(orchestrator)
        .execute(&ctx("acme"), &id())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::Backend(_)));
}

#[tokio::test]
async fn pause_sets_paused_and_maps_an_unchanged_pipeline_to_already_paused() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_set_paused()
        .with(always(), eq(id()), eq(true))
        .times(1)
        .returning(|_, _, _| Ok(()));
    with_repo(repo).pause(&ctx("acme"), &id()).await.unwrap();

    let mut repo = MockPipelineRepository::new();
    repo.expect_set_paused()
        .returning(|_, _, _| Err(SetPausedError::Unchanged));
    let err = with_repo(repo)
        .pause(&ctx("acme"), &id())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Pipeline is already paused");
}

#[tokio::test]
async fn unpause_clears_paused_and_maps_an_unchanged_pipeline_to_not_paused() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_set_paused()
        .with(always(), eq(id()), eq(false))
        .times(1)
        .returning(|_, _, _| Ok(()));
    with_repo(repo).unpause(&ctx("acme"), &id()).await.unwrap();

    let mut repo = MockPipelineRepository::new();
    repo.expect_set_paused()
        .returning(|_, _, _| Err(SetPausedError::Unchanged));
    let err = with_repo(repo)
        .unpause(&ctx("acme"), &id())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Pipeline is not paused");
}

#[tokio::test]
async fn pause_and_unpause_of_an_invisible_pipeline_are_not_found() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_set_paused()
        .returning(|_, _, _| Err(SetPausedError::NotFound));
    let service = with_repo(repo);
    assert!(
        matches!(service.pause(&ctx("acme"), &id()).await, Err(PauseError::NotFound(p)) if p == id())
    );
    assert!(
        matches!(service.unpause(&ctx("acme"), &id()).await, Err(UnpauseError::NotFound(p)) if p == id())
    );
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
    assert_eq!(err.to_string(), format!("Pipeline with id {ID} not found"));
}

#[tokio::test]
async fn get_pipeline_maps_not_found_and_backend_failures() {
    let mut repo = MockPipelineRepository::new();
    repo.expect_get()
        .returning(|_, _| Err(LookupError::NotFound));
    assert!(matches!(
        with_repo(repo).get_pipeline(&ctx("acme"), &id()).await,
        Err(GetPipelineError::NotFound(_))
    ));

    let mut repo = MockPipelineRepository::new();
    repo.expect_get()
        .returning(|_, _| Err(BackendError::unavailable("down").into()));
    assert!(matches!(
        with_repo(repo).get_pipeline(&ctx("acme"), &id()).await,
        Err(GetPipelineError::Backend(_))
    ));
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
            .map(|pipeline| PipelineSummary {
                pipeline,
                last_status: None,
            })
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
        .returning(|_, _, _| {
            Ok(RunPage {
                runs: vec![run(ID, RunStatus::Success)],
                total: 7,
            })
        });
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
        Ok(RunPage {
            runs: vec![
                run(OTHER_ID, RunStatus::Running),
                run(ID, RunStatus::Running),
                run(ID, RunStatus::Success),
            ],
            total: 2,
        })
    });
    let page = with_orchestrator(orchestrator)
        .list_runs(&ctx("acme"), &id(), &query)
        .await
        .unwrap();
    assert_eq!(page.runs, vec![run(ID, RunStatus::Running)]);
}

#[tokio::test]
async fn list_runs_of_an_invisible_pipeline_is_not_found() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_list_runs()
        .returning(|_, _, _| Err(RunsError::NotFound));
    let err = with_orchestrator(orchestrator)
        .list_runs(&ctx("acme"), &id(), &RunQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("Pipeline with id {ID} not found"));
}

#[tokio::test]
async fn get_run_returns_the_run_and_tells_a_missing_run_from_a_missing_pipeline() {
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
        .returning(|_, _, _| Err(RunLookupError::RunNotFound));
    let err = with_orchestrator(orchestrator)
        .get_run(&ctx("acme"), &id(), &wanted)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Pipeline run with id {wanted} not found for pipeline {ID}")
    );

    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_get_run()
        .returning(|_, _, _| Err(RunLookupError::PipelineNotFound));
    let err = with_orchestrator(orchestrator)
        .get_run(&ctx("acme"), &id(), &wanted)
        .await
        .unwrap_err();
    assert!(matches!(err, GetRunError::PipelineNotFound(_)));
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
async fn ready_asks_the_orchestrator() {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_health()
        .times(1)
        .returning(|| Err(BackendError::unavailable("down")));
    assert!(with_orchestrator(orchestrator).ready().await.is_err());
}
