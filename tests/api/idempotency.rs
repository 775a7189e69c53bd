//! `Idempotency-Key` on execute: replays, reuse with another pipeline,
//! invalid keys and concurrency. Two instances sharing one Redis are in
//! the `e2e` test target, which needs a real server.

use std::sync::Arc;

use serde_json::json;

use crate::helpers::{
    ACME, ACTIVE, Backend, GLOBEX, GLOBEX_PIPELINE, MISSING, SCHEDULED, TestApp,
    concurrent_executes, json_of, on_each_backend, replayed, shouted, token,
};

on_each_backend!(a_repeat_with_the_same_key_gets_the_first_answer_and_starts_nothing);
async fn a_repeat_with_the_same_key_gets_the_first_answer_and_starts_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let first = app.execute_with_key(ACME, ACTIVE, "order-42").await;
    assert!(!replayed(&first));
    let (status, first) = json_of(first).await;
    assert_eq!(status, 200);

    // The same pipeline spelled another way is the same request.
    for spelling in [ACTIVE.to_owned(), shouted(ACTIVE)] {
        let again = app.execute_with_key(ACME, &spelling, "order-42").await;
        assert!(replayed(&again));
        let (status, body) = json_of(again).await;
        assert_eq!(status, 200);
        assert_eq!(body, first);
    }
    assert_eq!(app.run_count(ACME, ACTIVE).await, "1");

    // Without a key, execute runs again as always.
    app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(app.run_count(ACME, ACTIVE).await, "2");
}

on_each_backend!(the_same_key_for_another_pipeline_is_422_and_starts_nothing);
async fn the_same_key_for_another_pipeline_is_422_and_starts_nothing(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    assert_eq!(app.execute_with_key(ACME, ACTIVE, "k").await.status(), 200);
    let (status, body) = json_of(app.execute_with_key(ACME, SCHEDULED, "k").await).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"]["exception_type"], "IdempotencyKeyReused");
    assert_eq!(app.run_count(ACME, SCHEDULED).await, "0");
}

on_each_backend!(keys_are_scoped_to_the_customer);
async fn keys_are_scoped_to_the_customer(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    assert_eq!(
        app.execute_with_key(ACME, ACTIVE, "shared").await.status(),
        200
    );
    let response = app
        .execute_with_key(GLOBEX, GLOBEX_PIPELINE, "shared")
        .await;
    assert!(!replayed(&response));
    assert_eq!(response.status(), 200);
    assert_eq!(app.run_count(GLOBEX, GLOBEX_PIPELINE).await, "1");
}

on_each_backend!(a_final_refusal_is_kept_and_replayed);
async fn a_final_refusal_is_kept_and_replayed(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let (status, first) = json_of(app.execute_with_key(ACME, MISSING, "gone").await).await;
    assert_eq!(status, 404);
    let again = app.execute_with_key(ACME, MISSING, "gone").await;
    assert!(replayed(&again));
    let (status, body) = json_of(again).await;
    assert_eq!(status, 404);
    assert_eq!(body, first);
}

#[tokio::test]
async fn an_invalid_key_is_400_invalid_idempotency_key_and_starts_nothing() {
    let app = TestApp::spawn().await;
    let too_long = "k".repeat(256);
    for key in ["", " ", "with space", "caf\u{e9}", too_long.as_str()] {
        let response = app
            .client
            .post(app.url("/platform/pipeline/execute"))
            .bearer_auth(token(ACME))
            .header("Idempotency-Key", key.as_bytes())
            .json(&json!({"pipeline_id": ACTIVE}))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{key:?}");
        assert_eq!(
            body["detail"]["exception_type"], "InvalidIdempotencyKey",
            "{key:?}"
        );
    }
    assert_eq!(app.run_count(ACME, ACTIVE).await, "0");
    let longest = "k".repeat(255);
    assert_eq!(
        app.execute_with_key(ACME, ACTIVE, &longest).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_executes_with_one_key_start_exactly_one_run() {
    let app = Arc::new(TestApp::spawn().await);
    let run_ids = concurrent_executes(std::slice::from_ref(&app), "same-key", 200).await;
    assert_eq!(run_ids.len(), 1, "every 200 is the one stored answer");
    assert_eq!(app.run_count(ACME, ACTIVE).await, "1");
}

/// The per-customer bound the noisy-neighbour test runs with.
const BOUND: usize = 5;

#[tokio::test]
async fn one_customers_flood_of_keys_never_pushes_out_another_customers_answer() {
    let bound = BOUND.to_string();
    let app = TestApp::spawn_with(&["--idempotency-keys-per-customer", &bound]).await;
    let (status, theirs) = json_of(
        app.execute_with_key(GLOBEX, GLOBEX_PIPELINE, "nightly")
            .await,
    )
    .await;
    assert_eq!(status, 200);

    // Acme sends four times its bound of keys, each answered and kept.
    let flood: Vec<String> = (0..BOUND * 4).map(|n| format!("flood-{n}")).collect();
    let mut answers = Vec::new();
    for key in &flood {
        let (status, body) = json_of(app.execute_with_key(ACME, ACTIVE, key).await).await;
        assert_eq!(status, 200, "{key}: {body}");
        answers.push(body);
    }

    // Globex's answer is still kept.
    let again = app
        .execute_with_key(GLOBEX, GLOBEX_PIPELINE, "nightly")
        .await;
    assert!(replayed(&again), "globex's answer was pushed out");
    assert_eq!(json_of(again).await.1, theirs);
    assert_eq!(app.run_count(GLOBEX, GLOBEX_PIPELINE).await, "1");

    // Acme's newest key is kept; its oldest was forgotten to make room,
    // and runs again, as a first attempt.
    let newest = app
        .execute_with_key(ACME, ACTIVE, &flood[flood.len() - 1])
        .await;
    assert!(replayed(&newest));
    assert_eq!(json_of(newest).await.1, answers[answers.len() - 1]);
    let oldest = app.execute_with_key(ACME, ACTIVE, &flood[0]).await;
    assert!(
        !replayed(&oldest),
        "acme's oldest answer was kept beyond its bound"
    );
    let (status, body) = json_of(oldest).await;
    assert_eq!(status, 200);
    assert_ne!(body["data"]["run_id"], answers[0]["data"]["run_id"]);
    let runs = (BOUND * 4 + 1).to_string();
    assert_eq!(app.run_count(ACME, ACTIVE).await, runs);
}
