//! `POST /platform/pipeline/execute`: the seed page's examples, tenancy,
//! paused pipelines, queueing and concurrency.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{
    ACME, ACTIVE, Backend, GLOBEX, GLOBEX_PIPELINE, MISSING, PAUSED, TestApp, envelope, json_of,
    not_found, on_each_backend, shouted,
};

fn is_manual_run_id(run_id: &str) -> bool {
    run_id
        .strip_prefix("manual__")
        .and_then(|at| at.strip_suffix("+00:00"))
        .is_some_and(|at| chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S%.f").is_ok())
}

on_each_backend!(execute_answers_the_seed_pages_body_with_the_normalized_id);
async fn execute_answers_the_seed_pages_body_with_the_normalized_id(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for spelling in [shouted(ACTIVE), ACTIVE.to_owned(), ACTIVE.replace('_', "-")] {
        let (status, body) = json_of(app.execute(ACME, &spelling).await).await;
        assert_eq!(status, 200, "{spelling}");
        let run_id = body["data"]["run_id"].as_str().unwrap().to_owned();
        assert!(is_manual_run_id(&run_id), "{run_id}");
        assert_eq!(
            body,
            json!({"status": true, "data": {
                "message": "Pipeline execution triggered successfully",
                "pipeline_id": ACTIVE,
                "run_id": run_id,
            }})
        );
    }
}

on_each_backend!(a_missing_null_or_empty_pipeline_id_is_the_bare_required_detail);
async fn a_missing_null_or_empty_pipeline_id_is_the_bare_required_detail(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for body in [
        json!({}),
        json!({"pipeline_id": null}),
        json!({"pipeline_id": ""}),
        json!({"other": 1}),
    ] {
        for path in [
            "/platform/pipeline/execute",
            "/platform/pipeline/pause",
            "/platform/pipeline/unpause",
        ] {
            let (status, answer) = json_of(app.post_json(path, ACME, &body).await).await;
            assert_eq!(status, 400, "{path} {body}");
            assert_eq!(
                answer,
                json!({"detail": "pipeline_id is required"}),
                "{path} {body}"
            );
        }
    }
}

on_each_backend!(an_invalid_pipeline_id_is_400_invalid_pipeline_id);
async fn an_invalid_pipeline_id_is_400_invalid_pipeline_id(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for raw in [
        "not-a-uuid",
        " 1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
        "{1b33ad2f-33d3-4837-9eeb-83c82c8b909d}",
        "urn:uuid:1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
        "1b33ad2f33d348379eeb83c82c8b909d",
    ] {
        let (status, body) = json_of(app.execute(ACME, raw).await).await;
        assert_eq!(status, 400, "{raw}");
        assert_eq!(
            body["detail"]["exception_type"], "InvalidPipelineId",
            "{raw}"
        );
        assert_eq!(body["detail"]["status"], false);
        assert_eq!(body["detail"]["data"], Value::Null);
    }
}

on_each_backend!(another_customers_pipeline_is_exactly_like_a_missing_one);
async fn another_customers_pipeline_is_exactly_like_a_missing_one(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, foreign) = json_of(app.execute(ACME, &shouted(GLOBEX_PIPELINE)).await).await;
    assert_eq!(status, 404);
    assert_eq!(foreign, not_found(GLOBEX_PIPELINE));
    let (status, missing) = json_of(app.execute(ACME, MISSING).await).await;
    assert_eq!(status, 404);
    assert_eq!(missing, not_found(MISSING));
    // And globex's pipeline did not run.
    let (_, runs) = json_of(app.list_runs(GLOBEX, GLOBEX_PIPELINE, "").await).await;
    assert_eq!(runs, json!([]));
}

on_each_backend!(a_customer_id_in_the_body_is_ignored);
async fn a_customer_id_in_the_body_is_ignored(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let path = "/platform/pipeline/execute";
    let (status, body) = json_of(
        app.post_json(
            path,
            ACME,
            &json!({"pipeline_id": GLOBEX_PIPELINE, "customer_id": GLOBEX}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, not_found(GLOBEX_PIPELINE));

    let (status, _) = json_of(
        app.post_json(
            path,
            ACME,
            &json!({"pipeline_id": ACTIVE, "customer_id": GLOBEX}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (_, runs) = json_of(app.list_runs(ACME, ACTIVE, "").await).await;
    assert_eq!(runs.as_array().unwrap().len(), 1);
}

on_each_backend!(a_paused_pipeline_is_refused_and_starts_nothing);
async fn a_paused_pipeline_is_refused_and_starts_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, body) = json_of(app.execute(ACME, PAUSED).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        envelope(
            "PipelinePaused",
            "Cannot execute paused pipeline. Use /pipeline/unpause first."
        )
    );
    let (_, runs) = json_of(app.list_runs(ACME, PAUSED, "").await).await;
    assert_eq!(runs, json!([]));
}

on_each_backend!(runs_queue_behind_the_running_one_in_order);
async fn runs_queue_behind_the_running_one_in_order(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.run_id_of_execute(ACME, ACTIVE).await);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "run ids increase with trigger order");

    let (_, runs) = json_of(app.list_runs(ACME, ACTIVE, "").await).await;
    let listed: Vec<(&str, &str)> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["pipeline_run_id"].as_str().unwrap(),
                run["last_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (ids[2].as_str(), "QUEUED"),
            (ids[1].as_str(), "QUEUED"),
            (ids[0].as_str(), "RUNNING"),
        ]
    );
}

on_each_backend!(a_full_queue_answers_429_and_starts_nothing);
async fn a_full_queue_answers_429_and_starts_nothing(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, &["--memory-queue-limit", "2"]).await;
    for _ in 0..3 {
        app.run_id_of_execute(ACME, ACTIVE).await; // one running, two queued
    }
    let (status, body) = json_of(app.execute(ACME, ACTIVE).await).await;
    assert_eq!(status, 429);
    assert_eq!(body["detail"]["exception_type"], "PipelineQueueFull");
    assert_eq!(body["detail"]["status"], false);
    let response = app.list_runs(ACME, ACTIVE, "").await;
    assert_eq!(response.headers()["x-total-count"], "3");
}

on_each_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    four_hundred_concurrent_executes_give_four_hundred_distinct_listed_runs_and_one_running
);
async fn four_hundred_concurrent_executes_give_four_hundred_distinct_listed_runs_and_one_running(
    backend: Backend,
) {
    let app = std::sync::Arc::new(TestApp::spawn_on(backend).await);
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.run_id_of_execute(ACME, ACTIVE).await })
        })
        .collect();
    let mut returned = HashSet::new();
    for task in tasks {
        assert!(
            returned.insert(task.await.unwrap()),
            "a run id was returned twice"
        );
    }
    assert_eq!(returned.len(), 400);

    let response = app.list_runs(ACME, ACTIVE, "?limit=1000").await;
    assert_eq!(response.headers()["x-total-count"], "400");
    let (_, runs) = json_of(response).await;
    let runs = runs.as_array().unwrap();
    let listed: HashSet<String> = runs
        .iter()
        .map(|run| run["pipeline_run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, returned);
    let running = runs
        .iter()
        .filter(|run| run["last_status"] == "RUNNING")
        .count();
    assert_eq!(running, 1);
    assert_eq!(
        runs.len() - running,
        runs.iter()
            .filter(|run| run["last_status"] == "QUEUED")
            .count()
    );
}
