//! The operational routes: health, readiness, metrics, the OpenAPI
//! document, the offline docs, and request ids.

use serde_json::Value;

use crate::helpers::{ACME, ACTIVE, Backend, TestApp, json_of, on_each_backend};

on_each_backend!(health_and_ready_answer_200_without_a_token);
async fn health_and_ready_answer_200_without_a_token(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for path in ["/health", "/ready"] {
        let (status, _) = json_of(app.client.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}");
    }
}

// Memory only: the run counter is labelled with the backend's name;
// `platform_api.rs` checks the same counter on that backend.
#[tokio::test]
async fn metrics_count_requests_by_route_template_and_runs_triggered() {
    let app = TestApp::spawn().await;
    app.run_id_of_execute(ACME, ACTIVE).await;
    app.get_pipeline(ACME, ACTIVE).await;
    app.get_pipeline(ACME, "not-an-id").await;
    app.client
        .get(app.url("/platform/pipeline/1/2/3/4"))
        .send()
        .await
        .unwrap();

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"maestro_http_requests_total{route="/platform/pipeline/execute",method="POST",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"maestro_http_requests_total{route="/platform/pipeline/{pipeline_id}",method="GET",status="200"} 1"#));
    assert!(text.contains(r#"maestro_http_requests_total{route="/platform/pipeline/{pipeline_id}",method="GET",status="400"} 1"#));
    assert!(text.contains(r#"route="unmatched""#));
    assert!(!text.contains(ACTIVE), "raw paths must not become labels");
    assert!(text.contains(r#"maestro_runs_triggered_total{backend="memory"} 1"#));
    assert!(text.contains("maestro_http_request_duration_seconds_bucket"));
}

on_each_backend!(metrics_count_refused_credentials_by_reason);
async fn metrics_count_refused_credentials_by_reason(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    app.client
        .get(app.url("/platform/pipelines"))
        .send()
        .await
        .unwrap();
    app.client
        .get(app.url("/platform/pipelines"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    let text = app.text("/metrics").await;
    assert!(
        text.contains(r#"maestro_auth_rejected_total{reason="missing"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"maestro_auth_rejected_total{reason="malformed"} 1"#),
        "{text}"
    );
}

on_each_backend!(the_openapi_document_describes_every_route);
async fn the_openapi_document_describes_every_route(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, doc) = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/platform/pipeline/execute",
        "/platform/pipeline/pause",
        "/platform/pipeline/unpause",
        "/platform/pipeline/{pipeline_id}",
        "/platform/pipelines",
        "/platform/pipeline/{pipeline_id}/pipeline_run",
        "/platform/pipeline/{pipeline_id}/pipeline_run/{run_id}",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

on_each_backend!(the_docs_page_and_its_assets_are_served_locally);
async fn the_docs_page_and_its_assets_are_served_locally(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let text = response.text().await.unwrap();
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/openapi.json"), "{text}");
        }
    }
    for src in html
        .split("src=\"")
        .skip(1)
        .chain(html.split("href=\"").skip(1))
    {
        assert!(
            !src.starts_with("http"),
            "external asset in the docs page: {src}"
        );
    }
}

on_each_backend!(every_answer_carries_a_request_id_and_a_given_one_is_echoed);
async fn every_answer_carries_a_request_id_and_a_given_one_is_echoed(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let id = uuid::Uuid::parse_str(&generated).unwrap();
    assert_eq!(id.get_version(), Some(uuid::Version::Random), "{generated}");
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{generated}");
    let another = app.client.get(app.url("/health")).send().await.unwrap();
    assert_ne!(another.headers()["x-request-id"], generated.as_str());

    let response = app
        .client
        .get(app.url("/nowhere"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");

    let unusable = "x".repeat(500);
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", &unusable)
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-request-id"], unusable.as_str());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}
