//! Every call of the backend against every way Airflow can fail: a 404, a
//! 5xx, an unknown status, malformed JSON, no answer in time, a refused
//! connection. Each call is tried with the failure on each endpoint it
//! reaches.

use std::time::{Duration, Instant};

use adapter_airflow::AirflowAuth;
use domain::{BackendErrorKind, PipelineRepository};
use wiremock::ResponseTemplate;

use crate::common::{
    self, CALLS, Endpoint, FIXED_TOKEN, Fake, Op, Outcome, backend, backend_with, closed_port_uri,
    credentials, perform,
};

/// Runs every call with `response` on each endpoint it reaches, and
/// returns what `expected` says for the pair next to what happened.
async fn each_call_with(
    response: impl Fn() -> ResponseTemplate,
    timeout: Duration,
    expected: impl Fn(Op, Endpoint) -> Outcome,
) {
    for (op, endpoints) in CALLS {
        for endpoint in endpoints.iter().copied() {
            let fake = Fake::happy().await;
            fake.fail(endpoint, response()).await;
            let backend =
                backend_with(&fake.uri(), AirflowAuth::Token(FIXED_TOKEN.into()), timeout);
            let started = Instant::now();
            let outcome = perform(&backend, op).await;
            assert_eq!(
                outcome,
                expected(op, endpoint),
                "{op:?} with the failure on {endpoint:?}"
            );
            assert!(
                started.elapsed() < timeout + Duration::from_millis(500),
                "{op:?} took {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test]
async fn every_call_succeeds_against_a_healthy_airflow() {
    let fake = Fake::happy().await;
    let backend = backend(&fake.uri());
    for (op, _) in CALLS {
        assert_eq!(perform(&backend, op).await, Outcome::Done, "{op:?}");
    }
}

#[tokio::test]
async fn a_404_means_not_found_where_a_dag_or_run_is_asked_for_and_an_upstream_error_elsewhere() {
    each_call_with(
        || ResponseTemplate::new(404).set_body_json(serde_json::json!({"detail": "not found"})),
        Duration::from_secs(5),
        |op, endpoint| match (op, endpoint) {
            (Op::List | Op::Health, _) => Outcome::Failed(BackendErrorKind::Upstream),
            (Op::GetRun, Endpoint::RunGet)
            | (Op::Cancel, Endpoint::RunGet | Endpoint::RunPatch) => Outcome::RunNotFound,
            _ => Outcome::NotFound,
        },
    )
    .await;
}

#[tokio::test]
async fn every_call_turns_a_5xx_into_an_upstream_error() {
    each_call_with(
        || ResponseTemplate::new(500).set_body_string("Internal Server Error"),
        Duration::from_secs(5),
        |_, _| Outcome::Failed(BackendErrorKind::Upstream),
    )
    .await;
}

#[tokio::test]
async fn every_call_turns_an_unexpected_status_into_an_upstream_error() {
    each_call_with(
        || ResponseTemplate::new(422).set_body_json(serde_json::json!({"detail": []})),
        Duration::from_secs(5),
        |_, _| Outcome::Failed(BackendErrorKind::Upstream),
    )
    .await;
}

#[tokio::test]
async fn every_call_turns_malformed_json_into_an_upstream_error() {
    each_call_with(
        || {
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string("{\"dags\": [")
        },
        Duration::from_secs(5),
        |_, _| Outcome::Failed(BackendErrorKind::Upstream),
    )
    .await;
}

#[tokio::test]
async fn every_call_turns_json_of_the_wrong_shape_into_an_upstream_error() {
    each_call_with(
        || ResponseTemplate::new(200).set_body_json(serde_json::json!({"unexpected": true})),
        Duration::from_secs(5),
        |_, _| Outcome::Failed(BackendErrorKind::Upstream),
    )
    .await;
}

#[tokio::test]
async fn every_call_times_out_within_the_timeout() {
    each_call_with(
        || ResponseTemplate::new(200).set_delay(Duration::from_secs(10)),
        Duration::from_millis(300),
        |_, _| Outcome::Failed(BackendErrorKind::Timeout),
    )
    .await;
}

#[tokio::test]
async fn every_call_reports_a_refused_connection_as_unavailable() {
    let uri = closed_port_uri();
    for auth in [AirflowAuth::Token(FIXED_TOKEN.into()), credentials()] {
        let backend = backend_with(&uri, auth, Duration::from_secs(5));
        for (op, _) in CALLS {
            let started = Instant::now();
            assert_eq!(
                perform(&backend, op).await,
                Outcome::Failed(BackendErrorKind::Unavailable),
                "{op:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
}

#[tokio::test]
async fn a_failed_call_names_neither_token_nor_password_nor_the_upstream_body() {
    let fake = Fake::happy().await;
    fake.fail(
        Endpoint::DagDetails,
        ResponseTemplate::new(500).set_body_string("Traceback: secret stuff"),
    )
    .await;
    fake.fail(
        Endpoint::Token,
        ResponseTemplate::new(422).set_body_json(serde_json::json!({
            "detail": [{"input": {"password": common::PASSWORD}}]
        })),
    )
    .await;
    for backend in [
        backend(&fake.uri()),
        common::backend_with_credentials(&fake.uri()),
    ] {
        let err = backend
            .get(&common::ctx("acme"), &common::id(common::ACME_DAG))
            .await
            .unwrap_err();
        let mut chain = format!("{err:?} {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain.push_str(&format!(" {cause} {cause:?}"));
            source = cause.source();
        }
        for secret in [FIXED_TOKEN, common::PASSWORD, "secret stuff"] {
            assert!(!chain.contains(secret), "{chain}");
        }
    }
}

#[tokio::test]
async fn every_call_answers_a_redirect_as_an_upstream_error_without_following_it() {
    each_call_with(
        || ResponseTemplate::new(307).insert_header("location", "/api/v2/monitor/health"),
        Duration::from_secs(5),
        |_, _| Outcome::Failed(BackendErrorKind::Upstream),
    )
    .await;
}

#[tokio::test]
async fn an_answer_over_32_mib_is_refused() {
    let fake = Fake::happy().await;
    let huge = format!("{{\"padding\": \"{}\"}}", "x".repeat(33 * 1024 * 1024));
    fake.fail(
        Endpoint::DagDetails,
        ResponseTemplate::new(200).set_body_string(huge),
    )
    .await;
    assert_eq!(
        perform(&backend(&fake.uri()), Op::Get).await,
        Outcome::Failed(BackendErrorKind::Upstream)
    );
}
