//! The read of the DAG before a trigger, over a fake Airflow: when a
//! trigger may skip it (the DAG was read unpaused and the caller's moments
//! ago), and when it may not (refusals, another customer, a pause through
//! the backend, a zero time to live).
//!
//! The entries' ages are read from a `ManualClock` the tests move: time
//! passes without waiting for it.

use std::time::Duration;

use chrono::TimeDelta;
use domain::{Clock, ExecuteError, ManualClock, Orchestrator, PipelineRepository};
use serde_json::json;
use wiremock::ResponseTemplate;

use crate::common::{
    ACME_DAG, Endpoint, Fake, backend_with_dag_cache, clock, ctx, dag, id, trigger_of,
};

/// Longer than any test moves its clock: an entry never expires within
/// one.
const LONG: Duration = Duration::from_secs(3600);

/// The time to live of the tests that let entries expire.
const TTL: Duration = Duration::from_secs(1);

/// A fake with Acme's DAG, unpaused, whose state the test can change, and
/// a trigger endpoint that creates every run it is sent.
async fn fake_with_live_dag(
    paused: bool,
) -> (Fake, std::sync::Arc<std::sync::Mutex<serde_json::Value>>) {
    let fake = Fake::start().await;
    let live = fake
        .mount_live_dag(dag(ACME_DAG, &["customer:acme"], paused))
        .await;
    fake.mount_trigger_echo(ACME_DAG).await;
    (fake, live)
}

async fn count(fake: &Fake, endpoint: Endpoint) -> usize {
    fake.requests(endpoint).await.len()
}

#[tokio::test]
async fn a_second_trigger_within_the_time_to_live_posts_without_reading_the_dag_again() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());

    for _ in 0..3 {
        backend
            .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
            .await
            .unwrap();
    }

    assert_eq!(count(&fake, Endpoint::DagGet).await, 1);
    assert_eq!(count(&fake, Endpoint::RunPost).await, 3);
}

#[tokio::test]
async fn with_a_zero_time_to_live_every_trigger_reads_the_dag_first() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let backend = backend_with_dag_cache(&fake.uri(), Duration::ZERO, &clock());

    for _ in 0..3 {
        backend
            .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
            .await
            .unwrap();
    }

    assert_eq!(count(&fake, Endpoint::DagGet).await, 3);
    assert_eq!(count(&fake, Endpoint::RunPost).await, 3);
}

#[tokio::test]
async fn an_entry_admits_until_its_time_to_live_has_passed_on_the_backends_clock() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let clock = clock();
    let backend = backend_with_dag_cache(&fake.uri(), TTL, &clock);
    let acme = ctx("acme");

    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    clock.advance(TTL - Duration::from_millis(1));
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    assert_eq!(count(&fake, Endpoint::DagGet).await, 1);

    clock.advance(Duration::from_millis(1));
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    assert_eq!(count(&fake, Endpoint::DagGet).await, 2);
    assert_eq!(count(&fake, Endpoint::RunPost).await, 3);
}

#[tokio::test]
async fn a_trigger_that_used_the_entry_does_not_renew_it() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let clock = clock();
    let backend = backend_with_dag_cache(&fake.uri(), TTL, &clock);
    let acme = ctx("acme");

    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    for _ in 0..4 {
        clock.advance(TTL / 4);
        backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    }

    // Read at 0 s, trusted at 0.25, 0.5 and 0.75 s, read again at 1 s.
    assert_eq!(count(&fake, Endpoint::DagGet).await, 2);
}

#[tokio::test]
async fn an_entry_stamped_in_the_future_of_a_clock_stepped_back_has_expired() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let clock: ManualClock = clock();
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock);
    let acme = ctx("acme");
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();

    clock.set(clock.now() - TimeDelta::seconds(1));
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();

    assert_eq!(count(&fake, Endpoint::DagGet).await, 2);
}

#[tokio::test]
async fn a_pause_through_the_backend_is_refused_by_the_very_next_trigger() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());
    let acme = ctx("acme");
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();

    backend
        .set_paused(&acme, &id(ACME_DAG), true)
        .await
        .unwrap();
    let refused = backend.trigger(&acme, &trigger_of(ACME_DAG)).await;

    assert!(
        matches!(refused, Err(ExecuteError::Paused(_))),
        "{refused:?}"
    );
    assert_eq!(count(&fake, Endpoint::RunPost).await, 1);
}

#[tokio::test]
async fn an_unpause_through_the_backend_lets_the_next_trigger_post_at_once() {
    let (fake, _live) = fake_with_live_dag(true).await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());
    let acme = ctx("acme");

    backend
        .set_paused(&acme, &id(ACME_DAG), false)
        .await
        .unwrap();
    let reads_before = count(&fake, Endpoint::DagGet).await;
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();

    assert_eq!(count(&fake, Endpoint::DagGet).await, reads_before);
    assert_eq!(count(&fake, Endpoint::RunPost).await, 1);
}

#[tokio::test]
async fn a_dag_read_paused_is_read_again_so_an_unpause_elsewhere_is_seen_at_once() {
    let (fake, live) = fake_with_live_dag(true).await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());
    let acme = ctx("acme");
    assert!(matches!(
        backend.trigger(&acme, &trigger_of(ACME_DAG)).await,
        Err(ExecuteError::Paused(_))
    ));

    live.lock().unwrap()["is_paused"] = json!(false);

    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    assert_eq!(count(&fake, Endpoint::DagGet).await, 2);
    assert_eq!(count(&fake, Endpoint::RunPost).await, 1);
}

#[tokio::test]
async fn a_pause_elsewhere_is_seen_by_any_read_of_the_dag_through_the_backend() {
    let (fake, live) = fake_with_live_dag(false).await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());
    let acme = ctx("acme");
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();

    live.lock().unwrap()["is_paused"] = json!(true);
    // Any read of the DAG renews what the backend knows, such as a client
    // looking at the pipeline.
    backend.get(&acme, &id(ACME_DAG)).await.unwrap();

    assert!(matches!(
        backend.trigger(&acme, &trigger_of(ACME_DAG)).await,
        Err(ExecuteError::Paused(_))
    ));
    assert_eq!(count(&fake, Endpoint::RunPost).await, 1);
}

#[tokio::test]
async fn another_customer_is_never_let_through_by_an_owners_entry() {
    let (fake, _live) = fake_with_live_dag(false).await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());
    backend
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let refused = backend.trigger(&ctx("globex"), &trigger_of(ACME_DAG)).await;

    assert!(
        matches!(refused, Err(ExecuteError::NotFound(_))),
        "{refused:?}"
    );
    assert_eq!(count(&fake, Endpoint::RunPost).await, 1);
    assert_eq!(count(&fake, Endpoint::DagGet).await, 2);
}

#[tokio::test]
async fn a_dag_gone_from_airflow_is_not_found_and_read_again_next_time() {
    let fake = Fake::start().await;
    fake.mount_dag(dag(ACME_DAG, &["customer:acme"], false))
        .await;
    // Airflow removed the DAG after it was read: the trigger answers 404.
    fake.fail(Endpoint::RunPost, ResponseTemplate::new(404))
        .await;
    let backend = backend_with_dag_cache(&fake.uri(), LONG, &clock());
    let acme = ctx("acme");

    for _ in 0..2 {
        let result = backend.trigger(&acme, &trigger_of(ACME_DAG)).await;
        assert!(
            matches!(result, Err(ExecuteError::NotFound(_))),
            "{result:?}"
        );
    }

    assert_eq!(count(&fake, Endpoint::DagGet).await, 2);
}
