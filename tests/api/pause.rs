//! `POST /platform/pipeline/pause` and `/unpause`.

use serde_json::json;

use crate::helpers::{
    ACME, ACTIVE, Backend, GLOBEX_PIPELINE, PAUSED, TestApp, envelope, json_of, not_found,
    on_each_backend, shouted,
};

on_each_backend!(pause_then_unpause_round_trips_with_the_contract_bodies);
async fn pause_then_unpause_round_trips_with_the_contract_bodies(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, body) = json_of(app.pause(ACME, &shouted(ACTIVE)).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": true, "data": {"message": "Pipeline paused successfully", "pipeline_id": ACTIVE}})
    );
    let (_, pipeline) = json_of(app.get_pipeline(ACME, ACTIVE).await).await;
    assert_eq!(pipeline["data"]["status"], "paused");

    let (status, body) = json_of(app.execute(ACME, ACTIVE).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["exception_type"], "PipelinePaused");

    let (status, body) = json_of(app.unpause(ACME, ACTIVE).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": true, "data": {"message": "Pipeline unpaused successfully", "pipeline_id": ACTIVE}})
    );
    let (status, _) = json_of(app.execute(ACME, ACTIVE).await).await;
    assert_eq!(status, 200);
}

on_each_backend!(pausing_a_paused_pipeline_is_400_already_paused);
async fn pausing_a_paused_pipeline_is_400_already_paused(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, body) = json_of(app.pause(ACME, PAUSED).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        envelope("PipelineAlreadyPaused", "Pipeline is already paused")
    );
}

on_each_backend!(unpausing_an_active_pipeline_is_400_not_paused);
async fn unpausing_an_active_pipeline_is_400_not_paused(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, body) = json_of(app.unpause(ACME, ACTIVE).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        envelope("PipelineNotPaused", "Pipeline is not paused")
    );
}

on_each_backend!(pause_keeps_the_running_run_running);
async fn pause_keeps_the_running_run_running(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(app.pause(ACME, ACTIVE).await.status(), 200);
    let (_, run) = json_of(app.get_run(ACME, ACTIVE, &run_id).await).await;
    assert_eq!(run["last_status"], "RUNNING");
}

on_each_backend!(another_customers_pipeline_cannot_be_paused_or_unpaused);
async fn another_customers_pipeline_cannot_be_paused_or_unpaused(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for response in [
        app.pause(ACME, GLOBEX_PIPELINE).await,
        app.unpause(ACME, GLOBEX_PIPELINE).await,
    ] {
        let (status, body) = json_of(response).await;
        assert_eq!(status, 404);
        assert_eq!(body, not_found(GLOBEX_PIPELINE));
    }
    let (_, pipeline) = json_of(
        app.get_pipeline(crate::helpers::GLOBEX, GLOBEX_PIPELINE)
            .await,
    )
    .await;
    assert_eq!(pipeline["data"]["status"], "active");
}
