//! `GET /platform/pipeline/{id}` and `GET /platform/pipelines`.

use serde_json::json;

use crate::helpers::{
    ACME, ACTIVE, Backend, GLOBEX, GLOBEX_PIPELINE, MISSING, PAUSED, SCHEDULED, TestApp, json_of,
    not_found, on_each_backend, shouted,
};

on_each_backend!(get_pipeline_answers_every_field_of_pipeline);
async fn get_pipeline_answers_every_field_of_pipeline(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, body) = json_of(app.get_pipeline(ACME, &shouted(ACTIVE)).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": true, "data": {
            "id": ACTIVE,
            "name": "Load orders",
            "description": "Loads the day's orders",
            "cron": null,
            "customer_id": ACME,
            "status": "active",
            "created_at": "2024-12-01T09:00:00.000000+00:00",
            "updated_at": "2024-12-02T09:00:00.000000+00:00",
            "jobs": [{"name": "extract", "type": "sql"}],
        }})
    );
}

on_each_backend!(get_pipeline_of_another_customer_or_a_missing_one_is_404);
async fn get_pipeline_of_another_customer_or_a_missing_one_is_404(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for id in [GLOBEX_PIPELINE, MISSING] {
        let (status, body) = json_of(app.get_pipeline(ACME, id).await).await;
        assert_eq!(status, 404);
        assert_eq!(body, not_found(id));
    }
    let (status, body) = json_of(app.get_pipeline(ACME, "nope").await).await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["exception_type"], "InvalidPipelineId");
}

on_each_backend!(list_pipelines_is_a_bare_array_of_the_callers_pipelines_only);
async fn list_pipelines_is_a_bare_array_of_the_callers_pipelines_only(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    assert!(!run_id.is_empty());

    let (status, body) = json_of(app.list_pipelines(ACME).await).await;
    assert_eq!(status, 200);
    let pipelines = body.as_array().unwrap();
    let ids: Vec<&str> = pipelines
        .iter()
        .map(|p| p["pipeline_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ACTIVE, SCHEDULED, PAUSED], "ordered by name");
    assert_eq!(
        pipelines[0],
        json!({
            "pipeline_id": ACTIVE,
            "customer_id": ACME,
            "name": "Load orders",
            "description": "Loads the day's orders",
            "cron": null,
            "last_status": "RUNNING",
            "jobs": [{"name": "extract", "type": "sql"}],
        })
    );
    assert_eq!(pipelines[1]["cron"], "0 3 * * *");
    assert_eq!(pipelines[1]["last_status"], serde_json::Value::Null);

    let (_, body) = json_of(app.list_pipelines(GLOBEX).await).await;
    let ids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pipeline_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [GLOBEX_PIPELINE]);

    let (_, body) = json_of(app.list_pipelines("nobody").await).await;
    assert_eq!(body, json!([]));
}
