//! `GET /platform/pipeline/{id}/pipeline_run` and `.../pipeline_run/{run_id}`.

use serde_json::json;

use crate::helpers::{
    ACME, ACTIVE, Backend, GLOBEX, GLOBEX_PIPELINE, TestApp, envelope, json_of, not_found,
    on_each_backend,
};

on_each_backend!(a_run_is_fetched_by_its_percent_encoded_id_with_every_field);
async fn a_run_is_fetched_by_its_percent_encoded_id_with_every_field(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    let (status, run) = json_of(app.get_run(ACME, ACTIVE, &run_id).await).await;
    assert_eq!(status, 200);
    let created_at = run["created_at"].as_str().unwrap().to_owned();
    assert_eq!(
        run,
        json!({
            "pipeline_run_id": run_id,
            "pipeline_id": ACTIVE,
            "last_status": "RUNNING",
            "created_at": created_at,
            "updated_at": run["updated_at"],
            "trace": null,
            "conf": {},
        })
    );
    assert!(created_at.ends_with("+00:00"));
    assert!(chrono::DateTime::parse_from_rfc3339(&created_at).is_ok());
    assert_eq!(run_id, format!("manual__{created_at}"));
}

on_each_backend!(a_run_id_sent_without_encoding_is_found_too);
async fn a_run_id_sent_without_encoding_is_found_too(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    let response = app
        .get(
            &format!("/platform/pipeline/{ACTIVE}/pipeline_run/{run_id}"),
            ACME,
        )
        .await;
    let (status, run) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(run["pipeline_run_id"], run_id.as_str());
}

on_each_backend!(an_unknown_run_is_404_pipeline_run_not_found);
async fn an_unknown_run_is_404_pipeline_run_not_found(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, body) = json_of(
        app.get_run(ACME, ACTIVE, "manual__2020-01-01T00:00:00+00:00")
            .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        envelope(
            "PipelineRunNotFound",
            &format!(
                "Pipeline run with id manual__2020-01-01T00:00:00+00:00 not found for pipeline {ACTIVE}"
            )
        )
    );
}

on_each_backend!(runs_of_another_customers_pipeline_are_404);
async fn runs_of_another_customers_pipeline_are_404(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let run_id = app.run_id_of_execute(GLOBEX, GLOBEX_PIPELINE).await;
    let (status, body) = json_of(app.list_runs(ACME, GLOBEX_PIPELINE, "").await).await;
    assert_eq!(status, 404);
    assert_eq!(body, not_found(GLOBEX_PIPELINE));
    let (status, body) = json_of(app.get_run(ACME, GLOBEX_PIPELINE, &run_id).await).await;
    assert_eq!(status, 404);
    assert_eq!(body, not_found(GLOBEX_PIPELINE));
}

on_each_backend!(run_lists_page_newest_first_with_the_total_in_a_header);
async fn run_lists_page_newest_first_with_the_total_in_a_header(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.run_id_of_execute(ACME, ACTIVE).await);
    }
    ids.reverse(); // newest first

    let response = app.list_runs(ACME, ACTIVE, "?limit=2&offset=1").await;
    assert_eq!(response.headers()["x-total-count"], "5");
    let (_, page) = json_of(response).await;
    let listed: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pipeline_run_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].as_str(), ids[2].as_str()]);

    let response = app.list_runs(ACME, ACTIVE, "?status=running").await;
    assert_eq!(response.headers()["x-total-count"], "1");
    let (_, page) = json_of(response).await;
    assert_eq!(page[0]["pipeline_run_id"], ids[4].as_str());

    let response = app.list_runs(ACME, ACTIVE, "?status=QUEUED&offset=3").await;
    assert_eq!(response.headers()["x-total-count"], "4");
    let (_, page) = json_of(response).await;
    assert_eq!(page.as_array().unwrap().len(), 1);

    let response = app.list_runs(ACME, ACTIVE, "?offset=99").await;
    assert_eq!(response.headers()["x-total-count"], "5");
    let (_, page) = json_of(response).await;
    assert_eq!(page, json!([]));
}

on_each_backend!(bad_run_list_parameters_are_400_invalid_query_parameter);
async fn bad_run_list_parameters_are_400_invalid_query_parameter(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?limit=-1",
        "?offset=-1",
        "?offset=x",
        "?offset=2147483648",
        "?offset=18446744073709551615",
        "?offset=18446744073709551616",
        "?status=DONE",
    ] {
        let (status, body) = json_of(app.list_runs(ACME, ACTIVE, query).await).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(
            body["detail"]["exception_type"], "InvalidQueryParameter",
            "{query}"
        );
    }
    let (status, _) = json_of(
        app.list_runs(ACME, ACTIVE, "?limit=1000&offset=0&status=success")
            .await,
    )
    .await;
    assert_eq!(status, 200);
    // The largest offset is an empty page, not a backend's error.
    let (status, body) = json_of(app.list_runs(ACME, ACTIVE, "?offset=2147483647").await).await;
    assert_eq!((status, body), (200, json!([])));
}

on_each_backend!(the_run_ids_dot_and_dot_dot_are_404_and_never_reach_the_backend);
async fn the_run_ids_dot_and_dot_dot_are_404_and_never_reach_the_backend(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    // Percent-encoded, so that they reach the service as a run id.
    for encoded in ["%2E", "%2e", "%2E%2E", "%2e%2E"] {
        let path = format!("/platform/pipeline/{ACTIVE}/pipeline_run/{encoded}");
        let (status, body) = app.get_raw(&path, ACME).await;
        assert_eq!(status, 404, "{encoded}");
        assert_eq!(
            body["detail"]["exception_type"], "PipelineRunNotFound",
            "{encoded}"
        );
        // Another customer's pipeline is not found, whatever the run id.
        let (status, body) = app.get_raw(&path, GLOBEX).await;
        assert_eq!(status, 404, "{encoded}");
        assert_eq!(
            body["detail"]["exception_type"], "PipelineNotFound",
            "{encoded}"
        );
    }
    if let Some(upstream) = app.platform_upstream() {
        let leaked: Vec<String> = upstream
            .requests()
            .await
            .iter()
            .map(|request| request.url.path().to_owned())
            .filter(|path| path.contains("/pipeline_run"))
            .collect();
        assert!(
            leaked.is_empty(),
            "run paths reached the upstream: {leaked:?}"
        );
    }
}
