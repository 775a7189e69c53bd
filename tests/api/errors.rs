//! Rejections of malformed requests: always JSON, in the contract's shapes,
//! and never a change of state.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::{ACME, ACTIVE, Backend, TestApp, json_of, on_each_backend, token};

const WRITE_ROUTES: [&str; 3] = [
    "/platform/pipeline/execute",
    "/platform/pipeline/pause",
    "/platform/pipeline/unpause",
];

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .bearer_auth(token(ACME))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    request.send().await.unwrap()
}

async fn assert_no_runs(app: &TestApp) {
    let response = app.list_runs(ACME, ACTIVE, "").await;
    assert_eq!(response.headers()["x-total-count"], "0");
    let (_, pipeline) = json_of(app.get_pipeline(ACME, ACTIVE).await).await;
    assert_eq!(pipeline["data"]["status"], "active");
}

on_each_backend!(malformed_bodies_are_400_invalid_request_body);
async fn malformed_bodies_are_400_invalid_request_body(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let cases: [&str; 7] = [
        "{",
        "{\"pipeline_id\": }",
        "[\"1b33ad2f_33d3_4837_9eeb_83c82c8b909d\"]",
        "\"1b33ad2f_33d3_4837_9eeb_83c82c8b909d\"",
        "{\"pipeline_id\": 42}",
        "{\"pipeline_id\": [\"1b33ad2f_33d3_4837_9eeb_83c82c8b909d\"]}",
        "",
    ];
    for path in WRITE_ROUTES {
        for body in cases {
            let (status, answer) =
                json_of(post_raw(&app, path, Some("application/json"), body).await).await;
            assert_eq!(status, 400, "{path} {body:?}");
            assert_eq!(
                answer["detail"]["exception_type"], "InvalidRequestBody",
                "{path} {body:?}: {answer}"
            );
            assert_eq!(answer["detail"]["status"], false);
        }
    }
    assert_no_runs(&app).await;
}

on_each_backend!(a_body_that_is_not_json_is_415_in_json);
async fn a_body_that_is_not_json_is_415_in_json(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let body = json!({"pipeline_id": ACTIVE}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, answer) =
            json_of(post_raw(&app, WRITE_ROUTES[0], content_type, body.clone()).await).await;
        assert_eq!(status, 415, "{content_type:?}");
        assert_eq!(answer["detail"]["exception_type"], "UnsupportedMediaType");
    }
    let (status, _) = json_of(
        post_raw(
            &app,
            WRITE_ROUTES[0],
            Some("application/json; charset=utf-8"),
            body,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
}

on_each_backend!(a_body_over_64_kib_is_413_in_json);
async fn a_body_over_64_kib_is_413_in_json(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let padding = "x".repeat(70 * 1024);
    let body = json!({"pipeline_id": ACTIVE, "padding": padding}).to_string();
    for path in WRITE_ROUTES {
        let (status, answer) =
            json_of(post_raw(&app, path, Some("application/json"), body.clone()).await).await;
        assert_eq!(status, 413, "{path}");
        assert_eq!(answer["detail"]["exception_type"], "PayloadTooLarge");
    }
    assert_no_runs(&app).await;

    // Just under the limit is fine.
    let padding = "x".repeat(60 * 1024);
    let body = json!({"pipeline_id": ACTIVE, "padding": padding}).to_string();
    let (status, _) =
        json_of(post_raw(&app, WRITE_ROUTES[0], Some("application/json"), body).await).await;
    assert_eq!(status, 200);
}

on_each_backend!(an_unknown_route_is_404_not_found_in_json);
async fn an_unknown_route_is_404_not_found_in_json(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    for path in [
        "/",
        "/platform",
        "/platform/pipeline",
        "/platform/pipelines/extra",
        "/nowhere?x=1",
    ] {
        let response = app.get(path, ACME).await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body, json!({"detail": "Not Found"}), "{path}");
    }
}

on_each_backend!(a_wrong_method_is_405_in_json);
async fn a_wrong_method_is_405_in_json(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let cases = [
        ("GET", "/platform/pipeline/execute"),
        ("PUT", "/platform/pipeline/pause"),
        (
            "DELETE",
            "/platform/pipeline/1b33ad2f_33d3_4837_9eeb_83c82c8b909d",
        ),
        ("POST", "/platform/pipelines"),
        ("POST", "/health"),
    ];
    for (method, path) in cases {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(token(ACME))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(
            body,
            json!({"detail": "Method Not Allowed"}),
            "{method} {path}"
        );
    }
}

on_each_backend!(an_undecodable_path_is_400_in_json);
async fn an_undecodable_path_is_400_in_json(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let response = app
        .get(
            &format!("/platform/pipeline/{ACTIVE}/pipeline_run/%FF%FE"),
            ACME,
        )
        .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["exception_type"], "InvalidPath");
}

on_each_backend!(no_error_answer_leaks_internals);
async fn no_error_answer_leaks_internals(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let responses = [
        post_raw(&app, WRITE_ROUTES[0], Some("application/json"), "{").await,
        app.get("/platform/pipeline/nope", ACME).await,
        app.get("/nowhere", ACME).await,
    ];
    for response in responses {
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        for needle in ["src/", ".rs", "panicked", "http://", "Bearer"] {
            assert!(!text.contains(needle), "{needle} in {body}");
        }
    }
}
