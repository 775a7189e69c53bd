//! Cancel over a fake Airflow that keeps one run as Airflow 3.3.2 does: a
//! GET answers its state, and a PATCH with `state` and `note` sets both at
//! once (Airflow fails a run whatever state it is in, finished or not, so
//! the backend must read first). The cancel note reads back as the trace.

use std::sync::{Arc, Mutex};

use domain::{BackendErrorKind, CancelRunError, Orchestrator, PipelineId, Run, RunId, RunStatus};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::common::{
    self, ACME_DAG, Endpoint, Fake, Outcome, backend, cancel_outcome, ctx, dag_run, id, in_path,
};

/// The run the tests cancel.
const RUN: &str = "manual__2026-11-29T08:57:18.539852+00:00";

fn run() -> RunId {
    RunId::parse(RUN).unwrap()
}

fn acme() -> PipelineId {
    id(ACME_DAG)
}

/// A fake Airflow with Acme's DAG and one run of it in `state`, which a
/// PATCH changes.
struct LiveRun {
    fake: Fake,
    run: Arc<Mutex<Value>>,
}

impl LiveRun {
    async fn start(state: &str) -> Self {
        Self::racing(state, None).await
    }

    /// The same, but every PATCH moves the run to the given state (someone
    /// else's change racing the cancel) and gets the given answer.
    async fn racing(state: &str, race: Option<(&'static str, ResponseTemplate)>) -> Self {
        let fake = Fake::start().await;
        fake.mount_dag(common::acme_dag()).await;
        let run = Arc::new(Mutex::new(dag_run(ACME_DAG, RUN, state, json!({}))));
        let route = format!("/api/v2/dags/{ACME_DAG}/dagRuns/{}", in_path(RUN));
        let read = Arc::clone(&run);
        Mock::given(method("GET"))
            .and(path(route.clone()))
            .respond_with(move |_: &Request| {
                ResponseTemplate::new(200).set_body_json(read.lock().unwrap().clone())
            })
            .mount(&fake.server)
            .await;
        let write = Arc::clone(&run);
        Mock::given(method("PATCH"))
            .and(path(route))
            .respond_with(move |request: &Request| {
                let mut run = write.lock().unwrap();
                if let Some((moved_to, answer)) = &race {
                    run["state"] = json!(moved_to);
                    return answer.clone();
                }
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                run["state"] = body["state"].clone();
                run["note"] = body["note"].clone();
                run["end_date"] = json!("2026-11-29T08:58:00.000000Z");
                ResponseTemplate::new(200).set_body_json(run.clone())
            })
            .mount(&fake.server)
            .await;
        Self { fake, run }
    }

    async fn cancel(&self) -> Result<Run, CancelRunError> {
        backend(&self.fake.uri())
            .cancel_run(&ctx("acme"), &acme(), &run())
            .await
    }

    async fn patches(&self) -> Vec<Request> {
        self.fake.requests(Endpoint::RunPatch).await
    }
}

#[tokio::test]
async fn a_queued_or_running_run_is_patched_to_failed_with_the_cancel_note_in_one_request() {
    for state in ["queued", "running"] {
        let live = LiveRun::start(state).await;

        let cancelled = live.cancel().await.unwrap();

        assert_eq!(cancelled.id, run());
        assert_eq!(cancelled.status, RunStatus::Failed);
        assert_eq!(cancelled.trace.as_deref(), Some(Run::CANCELLED_TRACE));
        let patches = live.patches().await;
        assert_eq!(patches.len(), 1, "{state}");
        let sent: Value = serde_json::from_slice(&patches[0].body).unwrap();
        assert_eq!(
            sent,
            json!({"state": "failed", "note": "Cancelled through the API"})
        );
        assert_eq!(patches[0].url.query(), None);
        assert_eq!(patches[0].headers["x-request-id"], "req-42");
        // Read back later, the run still says why it failed.
        let read = backend(&live.fake.uri())
            .get_run(&ctx("acme"), &acme(), &run())
            .await
            .unwrap();
        assert_eq!(read.status, RunStatus::Failed);
        assert_eq!(read.trace.as_deref(), Some(Run::CANCELLED_TRACE));
        assert_eq!(live.run.lock().unwrap()["state"], "failed");
    }
}

#[tokio::test]
async fn a_finished_run_is_already_finished_with_its_status_and_is_not_patched() {
    for (state, status) in [
        ("success", RunStatus::Success),
        ("failed", RunStatus::Failed),
    ] {
        let live = LiveRun::start(state).await;

        let err = live.cancel().await.unwrap_err();

        assert!(
            matches!(
                &err,
                CancelRunError::AlreadyFinished { pipeline_id, run_id, status: finished }
                    if pipeline_id == &acme() && run_id == &run() && *finished == status
            ),
            "{err:?}"
        );
        assert!(live.patches().await.is_empty());
        assert_eq!(live.run.lock().unwrap()["state"], state);
    }
}

#[tokio::test]
async fn an_unknown_run_is_run_not_found_and_nothing_is_patched() {
    let live = LiveRun::start("running").await;
    let backend = backend(&live.fake.uri());
    for unknown in ["manual__2020-01-01T00:00:00.000000+00:00", ".", ".."] {
        let unknown = RunId::parse(unknown).unwrap();
        assert_eq!(
            cancel_outcome(&backend, &ctx("acme"), &acme(), &unknown)
                .await
                .0,
            Outcome::RunNotFound
        );
    }
    assert!(live.patches().await.is_empty());
}

#[tokio::test]
async fn another_customers_run_is_pipeline_not_found_and_nothing_is_patched() {
    let live = LiveRun::start("running").await;

    let outcome = cancel_outcome(&backend(&live.fake.uri()), &ctx("globex"), &acme(), &run())
        .await
        .0;

    assert_eq!(outcome, Outcome::NotFound);
    assert!(live.patches().await.is_empty());
    assert_eq!(live.run.lock().unwrap()["state"], "running");
}

#[tokio::test]
async fn a_409_or_400_from_a_run_that_finished_meanwhile_is_already_finished_with_the_new_status() {
    for status in [409, 400] {
        let live = LiveRun::racing(
            "running",
            Some((
                "success",
                ResponseTemplate::new(status).set_body_json(json!({"detail": "finished"})),
            )),
        )
        .await;

        let err = live.cancel().await.unwrap_err();

        assert!(
            matches!(
                &err,
                CancelRunError::AlreadyFinished {
                    status: RunStatus::Success,
                    ..
                }
            ),
            "{status}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_409_for_a_run_still_running_is_an_upstream_error_that_quotes_nothing() {
    let live = LiveRun::racing(
        "running",
        Some((
            "running",
            ResponseTemplate::new(409).set_body_json(json!({"detail": "locked: secret stuff"})),
        )),
    )
    .await;

    let err = live.cancel().await.unwrap_err();

    let CancelRunError::Backend(err) = err else {
        panic!("{err:?}");
    };
    assert_eq!(err.kind(), BackendErrorKind::Upstream);
    assert!(!format!("{err} {err:?}").contains("secret stuff"));
}

#[tokio::test]
async fn a_run_gone_before_the_patch_is_run_not_found() {
    let live = LiveRun::racing(
        "queued",
        Some((
            "queued",
            ResponseTemplate::new(404).set_body_json(json!({"detail": "not found"})),
        )),
    )
    .await;

    assert!(matches!(
        live.cancel().await,
        Err(CancelRunError::RunNotFound { .. })
    ));
}

#[tokio::test]
async fn only_a_failed_run_shows_its_note_as_trace_and_other_failed_runs_keep_the_fixed_trace() {
    let fake = Fake::start().await;
    fake.mount_dag(common::acme_dag()).await;
    let cancelled = "manual__2026-11-29T08:50:00.000000+00:00";
    let failed = "manual__2026-11-29T08:51:00.000000+00:00";
    let noted_success = "manual__2026-11-29T08:52:00.000000+00:00";
    let mut runs = Vec::new();
    for (run_id, state, note) in [
        (cancelled, "failed", Some(Run::CANCELLED_TRACE)),
        (failed, "failed", None),
        (noted_success, "success", Some(Run::CANCELLED_TRACE)),
    ] {
        let mut run = dag_run(ACME_DAG, run_id, state, json!({}));
        run["note"] = json!(note);
        fake.mount_run(ACME_DAG, run.clone()).await;
        runs.push(run);
    }
    let backend = backend(&fake.uri());
    let trace = |run_id: &'static str| {
        let backend = &backend;
        async move {
            backend
                .get_run(&ctx("acme"), &acme(), &RunId::parse(run_id).unwrap())
                .await
                .unwrap()
                .trace
        }
    };

    assert_eq!(
        trace(cancelled).await.as_deref(),
        Some(Run::CANCELLED_TRACE)
    );
    let fixed = trace(failed).await.unwrap();
    assert_ne!(fixed, Run::CANCELLED_TRACE);
    assert!(fixed.contains("task instance logs"), "{fixed}");
    assert_eq!(trace(noted_success).await, None);
}
