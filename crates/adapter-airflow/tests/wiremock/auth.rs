//! Authentication to Airflow: the credentials exchanged at `/auth/token`,
//! the token cached and renewed, one renewal for all the requests that need
//! it, and a fixed token used as it is.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use adapter_airflow::{AirflowBackend, AirflowConfig};
use domain::{BackendErrorKind, Clock, GetPipelineError, ManualClock, PipelineRepository};

use serde_json::json;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::common::{
    ACME_DAG, CALLS, Endpoint, FIXED_TOKEN, Fake, Op, Outcome, PASSWORD, backend, backend_with,
    backend_with_credentials, clock, credentials, ctx, id, jwt_expiring_in, on_clock, perform,
};

/// Makes Airflow refuse `token` on every API route, ahead of other mocks.
async fn refuse(fake: &Fake, token: &str, response: ResponseTemplate) {
    Mock::given(path_regex("^/api/v2/"))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(response)
        .with_priority(1)
        .mount(&fake.server)
        .await;
}

#[tokio::test]
async fn the_credentials_are_exchanged_once_and_the_token_is_reused() {
    let fake = Fake::happy().await;
    let issued = fake.mount_token_sequence(Duration::ZERO).await;
    let backend = backend_with_credentials(&fake.uri());

    for (op, _) in CALLS {
        assert_eq!(perform(&backend, op).await, Outcome::Done, "{op:?}");
    }

    assert_eq!(issued.load(Ordering::SeqCst), 1);
    let exchange = &fake.requests(Endpoint::Token).await[0];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&exchange.body).unwrap(),
        json!({"username": "admin", "password": PASSWORD})
    );
    for request in fake.requests(Endpoint::DagDetails).await {
        assert_eq!(request.headers["authorization"], "Bearer token-1");
    }
}

#[tokio::test]
async fn every_call_renews_a_rejected_token_once_and_retries() {
    for (op, endpoints) in CALLS {
        if op == Op::Health {
            continue;
        }
        let fake = Fake::happy().await;
        let issued = fake.mount_token_sequence(Duration::ZERO).await;
        refuse(
            &fake,
            "token-1",
            ResponseTemplate::new(401).set_body_json(json!({"detail": "Token Expired"})),
        )
        .await;

        assert_eq!(
            perform(&backend_with_credentials(&fake.uri()), op).await,
            Outcome::Done,
            "{op:?}"
        );

        assert_eq!(issued.load(Ordering::SeqCst), 2, "{op:?}");
        for endpoint in endpoints.iter().copied() {
            let sent = fake.requests(endpoint).await;
            assert_eq!(
                sent.last().unwrap().headers["authorization"],
                "Bearer token-2",
                "{op:?} {endpoint:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_403_for_an_invalid_jwt_renews_the_token_but_a_plain_403_does_not() {
    let fake = Fake::happy().await;
    let issued = fake.mount_token_sequence(Duration::ZERO).await;
    refuse(
        &fake,
        "token-1",
        ResponseTemplate::new(403).set_body_json(json!({"detail": "Invalid JWT token"})),
    )
    .await;
    assert_eq!(
        perform(&backend_with_credentials(&fake.uri()), Op::Get).await,
        Outcome::Done
    );
    assert_eq!(issued.load(Ordering::SeqCst), 2);

    let forbidden = Fake::happy().await;
    let issued = forbidden.mount_token_sequence(Duration::ZERO).await;
    refuse(
        &forbidden,
        "token-1",
        ResponseTemplate::new(403).set_body_json(json!({"detail": "Forbidden"})),
    )
    .await;
    let backend = backend_with_credentials(&forbidden.uri());
    for _ in 0..3 {
        assert_eq!(
            perform(&backend, Op::Get).await,
            Outcome::Failed(BackendErrorKind::Upstream)
        );
    }
    assert_eq!(issued.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_token_rejected_right_after_renewal_is_an_upstream_error_not_a_loop() {
    let fake = Fake::happy().await;
    let issued = fake.mount_token_sequence(Duration::ZERO).await;
    for token in ["token-1", "token-2", "token-3"] {
        refuse(&fake, token, ResponseTemplate::new(401)).await;
    }
    assert_eq!(
        perform(&backend_with_credentials(&fake.uri()), Op::Get).await,
        Outcome::Failed(BackendErrorKind::Upstream)
    );
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    assert_eq!(fake.requests(Endpoint::DagDetails).await.len(), 2);
}

#[tokio::test]
async fn a_fixed_token_is_sent_as_it_is_and_a_401_is_an_upstream_error() {
    let fake = Fake::happy().await;
    let issued = fake.mount_token_sequence(Duration::ZERO).await;
    refuse(&fake, FIXED_TOKEN, ResponseTemplate::new(401)).await;

    assert_eq!(
        perform(&backend(&fake.uri()), Op::Get).await,
        Outcome::Failed(BackendErrorKind::Upstream)
    );
    assert_eq!(issued.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn refused_credentials_are_an_upstream_error_and_each_request_tries_again() {
    let fake = Fake::happy().await;
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"detail": "Invalid credentials"})),
        )
        .mount(&fake.server)
        .await;
    let backend = backend_with_credentials(&fake.uri());

    for _ in 0..2 {
        let err = backend.get(&ctx("acme"), &id(ACME_DAG)).await.unwrap_err();
        let GetPipelineError::Backend(err) = err else {
            panic!("{err:?}")
        };
        assert_eq!(err.kind(), BackendErrorKind::Upstream);
        assert!(!format!("{err:?}").contains(PASSWORD));
    }
    assert_eq!(fake.requests(Endpoint::Token).await.len(), 2);
    assert!(fake.requests(Endpoint::DagDetails).await.is_empty());
}

#[tokio::test]
async fn a_token_that_expires_soon_is_renewed_before_it_is_used_again() {
    for (lifetime, exchanges) in [(0, 2), (30, 1), (3600, 1)] {
        let fake = Fake::happy().await;
        let clock = clock();
        let token = jwt_expiring_in(&clock, lifetime);
        Mock::given(method("POST"))
            .and(path("/auth/token"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"access_token": token})))
            .mount(&fake.server)
            .await;
        let backend = on_clock(AirflowConfig::new(fake.uri(), credentials()), &clock);

        perform(&backend, Op::Get).await;
        perform(&backend, Op::Get).await;

        assert_eq!(
            fake.requests(Endpoint::Token).await.len(),
            exchanges,
            "a token living {lifetime} s"
        );
    }
}

/// A fake whose `/auth/token` hands out a token living `lifetime` seconds
/// from what `clock` shows when it is asked, by the JWT's `exp` or by
/// `expires_in`.
async fn fake_issuing(clock: &ManualClock, lifetime: i64, by_exp: bool) -> Fake {
    let fake = Fake::happy().await;
    let clock = clock.clone();
    Mock::given(method("POST"))
        .and(path("/auth/token"))
        .respond_with(move |_: &wiremock::Request| {
            let answer = if by_exp {
                json!({"access_token": jwt_expiring_in(&clock, lifetime)})
            } else {
                json!({"access_token": "opaque-token", "expires_in": lifetime})
            };
            ResponseTemplate::new(201).set_body_json(answer)
        })
        .mount(&fake.server)
        .await;
    fake
}

#[tokio::test]
async fn a_token_is_renewed_when_the_clock_reaches_a_minute_before_its_expiry() {
    for by_exp in [true, false] {
        let clock = clock();
        let fake = fake_issuing(&clock, 3600, by_exp).await;
        let backend = on_clock(AirflowConfig::new(fake.uri(), credentials()), &clock);
        let exchanges = || async { fake.requests(Endpoint::Token).await.len() };

        assert_eq!(perform(&backend, Op::Get).await, Outcome::Done);
        clock.advance(Duration::from_secs(3600 - 60 - 1));
        assert_eq!(perform(&backend, Op::Get).await, Outcome::Done);
        assert_eq!(exchanges().await, 1, "by exp: {by_exp}");

        clock.advance(Duration::from_secs(1));
        assert_eq!(perform(&backend, Op::Get).await, Outcome::Done);
        assert_eq!(exchanges().await, 2, "by exp: {by_exp}");
    }
}

#[tokio::test]
async fn a_token_cached_before_the_clock_was_stepped_back_is_renewed() {
    let clock = clock();
    let fake = fake_issuing(&clock, 3600, true).await;
    let backend = on_clock(AirflowConfig::new(fake.uri(), credentials()), &clock);
    assert_eq!(perform(&backend, Op::Get).await, Outcome::Done);

    // The token's stamp now lies in the future: its age is unknown.
    clock.set(clock.now() - chrono::TimeDelta::seconds(1));
    assert_eq!(perform(&backend, Op::Get).await, Outcome::Done);

    assert_eq!(fake.requests(Endpoint::Token).await.len(), 2);
}

/// A backend exchanging the credentials with `fake`, with a generous
/// timeout: a thousand requests through wiremock take seconds on a busy
/// machine, and timing is not what is tested here.
fn patient_backend(fake: &Fake) -> Arc<AirflowBackend> {
    Arc::new(backend_with(
        &fake.uri(),
        credentials(),
        Duration::from_secs(60),
    ))
}

/// Performs `count` reads at once through `backend`, asserting that each is
/// done.
async fn all_done_at_once(backend: &Arc<AirflowBackend>, count: usize) {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let backend = Arc::clone(backend);
            tokio::spawn(async move { perform(&backend, Op::Get).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Outcome::Done);
    }
}

#[tokio::test]
async fn a_thousand_concurrent_requests_share_one_token_exchange() {
    let fake = Fake::happy().await;
    let issued = fake.mount_token_sequence(Duration::from_millis(200)).await;
    let backend = patient_backend(&fake);

    all_done_at_once(&backend, 1000).await;

    assert_eq!(issued.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_thousand_concurrent_requests_refused_together_share_one_renewal() {
    let fake = Fake::happy().await;
    let issued = fake.mount_token_sequence(Duration::from_millis(100)).await;
    let backend = patient_backend(&fake);
    // Every request starts with token-1 in the cache...
    assert_eq!(perform(&backend, Op::Get).await, Outcome::Done);
    // ...which Airflow then stops accepting.
    refuse(&fake, "token-1", ResponseTemplate::new(401)).await;

    all_done_at_once(&backend, 1000).await;

    assert_eq!(issued.load(Ordering::SeqCst), 2);
}
