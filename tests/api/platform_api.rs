//! What only the Platform-API backend can do: an upstream that is down, slow,
//! failing or refusing the service token, the request id travelling
//! upstream, and the gateway's logs and metrics. No answer ever carries the
//! upstream's URL, its body or the service token.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use reqwest::Response;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, ResponseTemplate, matchers::any};

use crate::{
    fake_platform::SERVICE_TOKEN,
    helpers::{ACME, ACTIVE, PAUSED, TestApp, json_of, token},
};

/// What a misbehaving upstream writes in its bodies; it must never reach a
/// client.
const UPSTREAM_SECRET_TEXT: &str = "upstream-internal-diagnostic-7c1e";

/// The timeout of the gateways that face a slow upstream.
const TIMEOUT: Duration = Duration::from_millis(300);

/// One route that reaches the backend, its answer, and how long it took.
struct Call {
    route: &'static str,
    took: Duration,
    response: Response,
}

async fn timed(route: &'static str, call: impl Future<Output = Response>) -> Call {
    let started = Instant::now();
    let response = call.await;
    Call {
        route,
        took: started.elapsed(),
        response,
    }
}

/// Calls every route that reaches the backend at once, as `acme`.
async fn every_backend_route(app: &TestApp) -> [Call; 7] {
    let (execute, pause, unpause, pipeline, pipelines, runs, run) = tokio::join!(
        timed("execute", app.execute(ACME, ACTIVE)),
        timed("pause", app.pause(ACME, ACTIVE)),
        timed("unpause", app.unpause(ACME, PAUSED)),
        timed("get pipeline", app.get_pipeline(ACME, ACTIVE)),
        timed("list pipelines", app.list_pipelines(ACME)),
        timed("list runs", app.list_runs(ACME, ACTIVE, "?limit=5")),
        timed(
            "get run",
            app.get_run(ACME, ACTIVE, "manual__2024-12-18T10:30:00+00:00")
        ),
    );
    [execute, pause, unpause, pipeline, pipelines, runs, run]
}

/// The status and JSON body of an answer, after checking that neither the
/// body nor a header holds any of `secrets`.
async fn without(response: Response, secrets: &[&str], what: &str) -> (u16, Value) {
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        for secret in secrets {
            assert!(
                !value.contains(secret),
                "{what}: header {name} holds {secret:?}"
            );
        }
    }
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what}: the answer holds {secret:?}: {text}"
        );
    }
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{what}: not JSON ({err}): {text}"));
    (status, body)
}

/// Checks that every backend route answers 502 `UpstreamError`, without
/// `secrets`.
async fn assert_every_route_is_an_upstream_error(app: &TestApp, secrets: &[&str]) {
    for call in every_backend_route(app).await {
        let (status, body) = without(call.response, secrets, call.route).await;
        assert_eq!(status, 502, "{}: {body}", call.route);
        assert_eq!(
            body["detail"]["exception_type"], "UpstreamError",
            "{}",
            call.route
        );
    }
}

/// Checks that every backend route answers `status` and `exception_type`
/// in the error envelope, and `/ready` 503, all without `secrets`; returns
/// how long the slowest route took.
async fn assert_every_route_fails(
    app: &TestApp,
    status: u16,
    exception_type: &str,
    secrets: &[&str],
) -> Duration {
    let mut slowest = Duration::ZERO;
    for call in every_backend_route(app).await {
        let (got, body) = without(call.response, secrets, call.route).await;
        assert_eq!(got, status, "{}: {body}", call.route);
        assert_eq!(
            body["detail"]["exception_type"], exception_type,
            "{}",
            call.route
        );
        assert_eq!(body["detail"]["status"], false, "{}", call.route);
        assert_eq!(body["detail"]["data"], Value::Null, "{}", call.route);
        slowest = slowest.max(call.took);
    }
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    let (got, _) = without(ready, secrets, "/ready").await;
    assert_eq!(got, 503, "/ready");
    slowest
}

/// A gateway with these extra settings to an upstream at `url`.
async fn gateway(url: &str, env: &[(&'static str, &str)]) -> TestApp {
    let env = env
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    TestApp::gateway(url.to_owned(), Vec::new(), env).await
}

/// An upstream that gives every request this answer.
async fn upstream_answering(answer: impl wiremock::Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any()).respond_with(answer).mount(&server).await;
    server
}

#[tokio::test]
async fn an_unreachable_upstream_is_503_upstream_unavailable_and_not_ready() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/api/v1");
    let app = gateway(&url, &[]).await;

    let secrets = [&closed.to_string(), url.as_str(), SERVICE_TOKEN];
    assert_every_route_fails(&app, 503, "UpstreamUnavailable", &secrets).await;
    // Liveness does not depend on the upstream.
    let (status, _) = json_of(app.client.get(app.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_slow_upstream_is_504_upstream_timeout_within_about_the_timeout() {
    let slow = ResponseTemplate::new(200)
        .set_body_json(json!({"status": true, "data": {"status": "ok"}}))
        .set_delay(TIMEOUT * 10);
    let upstream = upstream_answering(slow).await;
    let timeout_ms = TIMEOUT.as_millis().to_string();
    let app = gateway(
        &upstream.uri(),
        &[("MAESTRO_UPSTREAM_TIMEOUT_MS", &timeout_ms)],
    )
    .await;

    let secrets = [
        upstream.uri(),
        upstream.address().to_string(),
        SERVICE_TOKEN.to_owned(),
    ];
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let slowest = assert_every_route_fails(&app, 504, "UpstreamTimeout", &secrets).await;
    assert!(
        slowest >= TIMEOUT,
        "answered after {slowest:?}, before the timeout"
    );
    assert!(
        slowest < TIMEOUT + Duration::from_millis(700),
        "answered after {slowest:?}"
    );
}

#[tokio::test]
async fn an_upstream_5xx_or_garbage_is_502_upstream_error_without_its_body() {
    let failures = [
        ResponseTemplate::new(500).set_body_string(format!("Traceback: {UPSTREAM_SECRET_TEXT}")),
        ResponseTemplate::new(200)
            .set_body_raw(format!("<html>{UPSTREAM_SECRET_TEXT}</html>"), "text/html"),
        ResponseTemplate::new(404).set_body_json(json!({"detail": UPSTREAM_SECRET_TEXT})),
    ];
    for failure in failures {
        let upstream = upstream_answering(failure).await;
        let app = gateway(&upstream.uri(), &[]).await;
        let secrets = [
            UPSTREAM_SECRET_TEXT,
            &upstream.uri(),
            &upstream.address().to_string(),
            SERVICE_TOKEN,
        ]
        .map(str::to_owned);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_every_route_is_an_upstream_error(&app, &secrets).await;
    }
}

#[tokio::test]
async fn a_refused_service_token_is_502_and_the_token_reaches_no_answer_and_no_log() {
    // An upstream careless enough to quote the credentials it refuses.
    let echo = |request: &Request| {
        let authorization = request
            .headers
            .get("authorization")
            .map(|value| value.to_str().unwrap().to_owned());
        ResponseTemplate::new(401)
            .set_body_json(json!({"detail": format!("bad credentials {authorization:?}")}))
    };
    let upstream = upstream_answering(echo).await;
    let mut app = gateway(&upstream.uri(), &[]).await;

    let secrets = [SERVICE_TOKEN, &upstream.uri()];
    assert_every_route_is_an_upstream_error(&app, &secrets).await;
    let sent = upstream.received_requests().await.unwrap();
    assert!(
        sent.iter().all(|request| request.headers["authorization"]
            == format!("Bearer {SERVICE_TOKEN}").as_str())
    );

    let logs = app.stop();
    assert!(logs.contains("refused the service token"), "{logs}");
    assert!(
        !logs.contains(SERVICE_TOKEN),
        "the service token reached the logs"
    );
}

#[tokio::test]
async fn the_clients_request_id_reaches_the_upstream_and_comes_back() {
    let app = TestApp::spawn_platform_api(&[]).await;
    let response = app
        .client
        .post(app.url("/platform/pipeline/execute"))
        .bearer_auth(token(ACME))
        .header("x-request-id", "trace-4f2a-from-the-client")
        .json(&json!({"pipeline_id": ACTIVE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-request-id"],
        "trace-4f2a-from-the-client"
    );

    // Without one, the generated id is the one the upstream gets.
    let response = app.get_pipeline(ACME, ACTIVE).await;
    assert_eq!(response.status(), 200);
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let requests = app.upstream().requests().await;
    let request_id = |path: &str| {
        let request = requests
            .iter()
            .find(|request| request.url.path() == path)
            .unwrap_or_else(|| panic!("no request to {path}"));
        request.headers["x-request-id"].to_str().unwrap().to_owned()
    };
    assert_eq!(
        request_id("/api/v1/pipeline/execute"),
        "trace-4f2a-from-the-client"
    );
    assert_eq!(request_id(&format!("/api/v1/pipeline/{ACTIVE}")), generated);
}

#[tokio::test]
async fn the_gateway_logs_each_request_without_any_token_and_counts_its_runs() {
    let mut app = TestApp::spawn_platform_api(&[]).await;
    let client_token = token(ACME);
    let response = app
        .client
        .post(app.url("/platform/pipeline/execute"))
        .bearer_auth(&client_token)
        .json(&json!({"pipeline_id": ACTIVE}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    let run_id = body["data"]["run_id"].as_str().unwrap().to_owned();

    let metrics = app.text("/metrics").await;
    assert!(
        metrics.contains(r#"maestro_runs_triggered_total{backend="platform-api"} 1"#),
        "{metrics}"
    );

    let logs = app.stop();
    assert!(
        !logs.contains(&client_token),
        "a client token reached the logs"
    );
    assert!(
        !logs.contains(SERVICE_TOKEN),
        "the service token reached the logs"
    );
    let access = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| {
            event["message"] == "answered" && event["span"]["route"] == "/platform/pipeline/execute"
        })
        .unwrap_or_else(|| panic!("no access line: {logs}"));
    assert_eq!(access["status"], 200);
    assert_eq!(access["span"]["customer"], ACME);
    assert_eq!(access["span"]["pipeline_id"], ACTIVE);
    assert_eq!(access["span"]["run_id"], run_id.as_str());
}
