//! The bare axum baseline: the execute route parsing the same JSON body as
//! the service and answering a body of the same shape, with no auth, no
//! state and no middleware. It measures what axum, hyper and serde cost on
//! this machine, so the service's figures can be read as a ratio of it.
//!
//! Beside it, for the waiting requests of `bench/lifecycle.rs`, a request
//! that is answered at an instant it names, the bare counterpart of a
//! request waiting on a run that ends then, and a count of those waiting.

use std::{
    borrow::Cow,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
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
pub(super) struct ExecuteAnswer {
    pub(super) status: bool,
    pub(super) data: ExecuteData,
}

#[derive(Debug, Serialize)]
pub(super) struct ExecuteData {
    pub(super) message: &'static str,
    pub(super) pipeline_id: String,
    /// Fixed here, made per run by the contract's floor.
    pub(super) run_id: Cow<'static, str>,
}

async fn execute(Json(body): Json<ExecuteBody>) -> Json<ExecuteAnswer> {
    // The id is echoed back, as the service does after normalizing it; the
    // run id is fixed, since the baseline has no runs.
    Json(ExecuteAnswer {
        status: true,
        data: ExecuteData {
            message: "Pipeline execution triggered successfully",
            pipeline_id: body.pipeline_id,
            run_id: Cow::Borrowed("manual__2024-12-18T10:30:00+00:00"),
        },
    })
}

/// Where a request waits until the instant that follows, in microseconds
/// since the Unix epoch (`/bench/wait/1764410403123456`).
pub(crate) const WAIT_PATH: &str = "/bench/wait";
/// How many requests wait at [`WAIT_PATH`] now, as a number.
pub(crate) const WAITING_PATH: &str = "/bench/waiting";

/// Requests waiting at [`WAIT_PATH`]. A static rather than router state, so
/// that execute's path is exactly what it was.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// What a wait answers: the instant it waited for.
#[derive(Debug, Serialize)]
struct WaitAnswer {
    due_unix_micros: u64,
}

/// Counts a waiting request while it lives.
struct Waiting;

impl Waiting {
    fn enter() -> Self {
        WAITING.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers once the wall clock reaches `due`: a timer and nothing else,
/// what waiting costs axum, hyper and tokio alone.
async fn wait(Path(due): Path<u64>) -> Json<WaitAnswer> {
    let _waiting = Waiting::enter();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_micros(due).saturating_sub(now);
    tokio::time::sleep(left).await;
    Json(WaitAnswer {
        due_unix_micros: due,
    })
}

/// Where a page of that many runs is answered (`/bench/runs/100`), for the
/// list-runs rows of `--scale`.
pub(crate) const RUNS_PATH: &str = "/bench/runs";
/// The most runs a page of [`RUNS_PATH`] holds: list runs' largest `limit`.
const MAX_PAGE: usize = 1_000;

/// A page of `count` runs shaped as the service writes them, as bytes
/// written the first time that page is asked for: the floor of what answering such a page costs any server
/// on this machine (the network and hyper alone, no JSON).
async fn runs_page(Path(count): Path<usize>) -> Response {
    static PAGES: [OnceLock<Bytes>; MAX_PAGE + 1] = [const { OnceLock::new() }; MAX_PAGE + 1];
    let Some(page) = PAGES.get(count) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let page = page.get_or_init(|| {
        let run = serde_json::json!({
            "pipeline_run_id": "manual__2024-12-18T10:30:00.000000+00:00",
            "pipeline_id": "0b6a3c5e_1f2d_4a7b_9c8d_7e6f5a4b3c2d",
            "last_status": "SUCCESS",
            "created_at": "2024-12-18T10:30:00.000000+00:00",
            "updated_at": "2024-12-18T10:30:00.000000+00:00",
            "trace": null,
            "conf": {},
        });
        Bytes::from(serde_json::to_vec(&vec![&run; count]).unwrap_or_default())
    });
    ([(header::CONTENT_TYPE, "application/json")], page.clone()).into_response()
}

/// The baseline's routes: execute, `/health` so that it is waited for
/// exactly like the service, the wait with its count, and the pages of
/// runs.
pub(crate) fn router() -> Router {
    Router::new()
        .route(EXECUTE_PATH, post(execute))
        .route(&format!("{RUNS_PATH}/{{count}}"), get(runs_page))
        .route("/health", get(|| async { "ok" }))
        .route(&format!("{WAIT_PATH}/{{due}}"), get(wait))
        .route(
            WAITING_PATH,
            get(|| async { WAITING.load(Ordering::SeqCst).to_string() }),
        )
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

    /// Requests waiting at `addr`, as the baseline counts them.
    #[tokio::test]
    async fn a_page_of_runs_holds_that_many_runs_shaped_as_the_services() {
        let addr = start().await;
        let page = |count: usize| {
            let request = RequestTemplate::get(format!("{RUNS_PATH}/{count}"));
            async move {
                http::send_once(addr, &request, http::REQUEST_TIMEOUT)
                    .await
                    .expect("answer")
            }
        };
        let answer = page(3).await;
        assert_eq!(answer.status, 200);
        let runs: Vec<serde_json::Value> = serde_json::from_slice(&answer.body).expect("JSON");
        assert_eq!(runs.len(), 3);
        let keys: Vec<&str> = runs[2]
            .as_object()
            .expect("a run")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "conf",
                "created_at",
                "last_status",
                "pipeline_id",
                "pipeline_run_id",
                "trace",
                "updated_at"
            ]
        );
        assert_eq!(&page(0).await.body[..], b"[]");
        assert_eq!(page(MAX_PAGE + 1).await.status, 404);
    }

    async fn waiting(addr: std::net::SocketAddr) -> usize {
        let request = RequestTemplate::get(WAITING_PATH);
        let answer = http::send_once(addr, &request, http::REQUEST_TIMEOUT)
            .await
            .expect("answer");
        String::from_utf8_lossy(&answer.body)
            .parse()
            .expect("a number")
    }

    fn unix_micros() -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        u64::try_from(now.as_micros()).expect("micros")
    }

    #[tokio::test]
    async fn a_wait_is_answered_at_its_instant_and_counted_until_then() {
        let addr = start().await;
        let due = unix_micros() + 300_000;
        let request = RequestTemplate::get(format!("{WAIT_PATH}/{due}"));
        let waiter =
            tokio::spawn(
                async move { http::send_once(addr, &request, http::REQUEST_TIMEOUT).await },
            );
        // Polling, not a test of timing: the count has no other signal.
        // Other tests of this process may wait too, so at least this one.
        let mut counted = waiting(addr).await;
        while counted == 0 && unix_micros() < due {
            tokio::time::sleep(Duration::from_millis(5)).await;
            counted = waiting(addr).await;
        }
        assert!(counted >= 1, "the wait is counted while it waits");
        let answer = waiter.await.expect("no panic").expect("answer");
        assert!(unix_micros() >= due, "not answered before its instant");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json(), serde_json::json!({"due_unix_micros": due}));
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
