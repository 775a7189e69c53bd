//! The bare axum baseline: the execute route parsing the same JSON body as
//! the service and answering a body of the same shape, with no auth, no
//! state and no middleware. It measures what axum, hyper and serde cost on
//! this machine, so the service's figures can be read as a ratio of it.

use axum::{
    Json, Router,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The path the service and the baseline both serve.
pub(crate) const EXECUTE_PATH: &str = "/platform/pipeline/execute";

/// The execute body, as the service reads it.
#[derive(Debug, Deserialize)]
struct ExecuteBody {
    pipeline_id: String,
}

/// The service's success answer, field for field.
#[derive(Debug, Serialize)]
struct ExecuteAnswer {
    status: bool,
    data: ExecuteData,
}

#[derive(Debug, Serialize)]
struct ExecuteData {
    message: &'static str,
    pipeline_id: String,
    run_id: &'static str,
}

async fn execute(Json(body): Json<ExecuteBody>) -> Json<ExecuteAnswer> {
    // The id is echoed back, as the service does after normalizing it; the
    // run id is fixed, since the baseline has no runs.
    Json(ExecuteAnswer {
        status: true,
        data: ExecuteData {
            message: "Pipeline execution triggered successfully",
            pipeline_id: body.pipeline_id,
            run_id: "manual__2024-12-18T10:30:00+00:00",
        },
    })
}

/// The baseline's routes: execute, and `/health` so that it is waited for
/// exactly like the service.
pub(crate) fn router() -> Router {
    Router::new()
        .route(EXECUTE_PATH, post(execute))
        .route("/health", get(|| async { "ok" }))
}

/// Serves the baseline on `listener` until the process ends.
///
/// # Errors
/// When accepting connections fails.
pub(crate) async fn serve(listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        http::{self, RequestTemplate},
        load::{self, LoadSpec},
    };
    use bytes::Bytes;
    use hyper::{Method, header::CONTENT_TYPE, http::HeaderValue};

    async fn start() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(serve(listener));
        addr
    }

    fn execute_with_body(body: &'static [u8]) -> RequestTemplate {
        let mut request = RequestTemplate::new(Method::POST, EXECUTE_PATH);
        request
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request.body = Bytes::from_static(body);
        request
    }

    #[tokio::test]
    async fn the_load_generator_gets_every_request_answered_2xx_by_the_baseline() {
        let addr = start().await;
        let spec = LoadSpec {
            addr,
            connections: 2,
            requests: 400,
            warmup: 20,
            request: execute_with_body(
                br#"{"pipeline_id": "1b33ad2f-33d3-4837-9eeb-83c82c8b909d"}"#,
            ),
        };
        let report = load::run(&spec).await.expect("the run completes");
        assert_eq!(report.successes, 400, "{report:?}");
        assert_eq!(report.answered(), 400, "one latency per measured answer");
        assert_eq!(report.non_2xx(), 0);
        assert_eq!(
            report.transport_errors, 0,
            "{:?}",
            report.first_transport_error
        );
        assert!(report.latency.max() > 0);
        assert!(report.requests_per_second() > 0.0);
    }

    #[tokio::test]
    async fn answers_to_a_body_the_baseline_refuses_count_as_non_2xx() {
        let addr = start().await;
        let spec = LoadSpec {
            addr,
            connections: 2,
            requests: 10,
            warmup: 0,
            request: execute_with_body(br#"{"pipeline_id": 5}"#),
        };
        let report = load::run(&spec).await.expect("the run completes");
        assert_eq!(report.successes, 0);
        assert_eq!(report.non_2xx(), 10);
        assert_eq!(
            report
                .failures_by_status
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [422]
        );
        assert_eq!(report.answered(), 10);
    }

    #[tokio::test]
    async fn the_baseline_answers_the_services_success_shape() {
        let addr = start().await;
        let request = execute_with_body(br#"{"pipeline_id": "abc"}"#);
        let answer = http::send_once(addr, &request, http::REQUEST_TIMEOUT)
            .await
            .expect("answer");
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.json(),
            serde_json::json!({"status": true, "data": {
                "message": "Pipeline execution triggered successfully",
                "pipeline_id": "abc",
                "run_id": "manual__2024-12-18T10:30:00+00:00",
            }})
        );
    }
}
