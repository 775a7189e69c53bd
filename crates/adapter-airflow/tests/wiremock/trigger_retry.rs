//! A trigger that fails in a way that may pass (a 5xx, no connection, no
//! answer within its share of the timeout) is sent once more with the same
//! run id, within the one timeout of the call; a 409 then means the first
//! attempt made the run, which is read back and answered. Never a third
//! attempt, and each retry is told to the backend's observer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapter_airflow::{AirflowAuth, AirflowBackend, RetryOutcome};
use domain::{BackendErrorKind, ExecuteError, Orchestrator, Run, RunStatus};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::common::{
    self, ACME_DAG, Endpoint, FIXED_TOKEN, Fake, backend_with, ctx, dag_run, trigger_of,
};

/// The timeout of the backends here: the first attempt of a trigger gets
/// about half of it.
const TIMEOUT: Duration = Duration::from_millis(600);

/// Longer than any test waits: a post answered after it has stalled.
const STALL: Duration = Duration::from_secs(30);

/// What the fake Airflow does with one post.
#[derive(Debug, Clone, Copy)]
enum Post {
    /// Makes the run and answers 200 (409 when the id is taken).
    Ok,
    /// Makes the run, then answers this status anyway (a proxy's 502 after
    /// Airflow committed, a 500 from a busy database after the commit).
    MadeThen(u16),
    /// Makes nothing and answers this status, whatever the run id (a
    /// proxy's answer, or a failure before anything was written).
    Fail(u16),
    /// Makes the run, but its answer comes only after [`STALL`].
    StallMade,
    /// Makes nothing and answers only after [`STALL`].
    Stall,
}

/// A fake Airflow with acme's DAG whose trigger endpoint does, post after
/// post, what `script` says (the last step again once it runs out), and,
/// as Airflow does, refuses a taken run id with 409 where it would write
/// the run; the runs it made can be read back one by one.
struct Scripted {
    fake: Fake,
    runs: Arc<Mutex<Vec<Value>>>,
}

impl Scripted {
    async fn start(script: &[Post]) -> Self {
        let fake = Fake::start().await;
        fake.mount_dag(common::acme_dag()).await;
        let runs: Arc<Mutex<Vec<Value>>> = Arc::default();
        let script = script.to_vec();
        let made = Arc::clone(&runs);
        let posts = Mutex::new(0_usize);
        Mock::given(method("POST"))
            .and(path(format!("/api/v2/dags/{ACME_DAG}/dagRuns")))
            .respond_with(move |request: &Request| {
                let sent: Value = serde_json::from_slice(&request.body).unwrap();
                let step = {
                    let mut posts = posts.lock().unwrap();
                    *posts += 1;
                    script[(*posts - 1).min(script.len() - 1)]
                };
                if let Post::Fail(status) = step {
                    return ResponseTemplate::new(status).set_body_string("Service Unavailable");
                }
                let mut runs = made.lock().unwrap();
                let run_id = sent["dag_run_id"].as_str().unwrap();
                if runs.iter().any(|run| run["dag_run_id"] == run_id) {
                    return ResponseTemplate::new(409).set_body_json(json!({
                        "detail": {"reason": "Unique constraint violation"}
                    }));
                }
                let run = dag_run(ACME_DAG, run_id, "queued", sent["conf"].clone());
                if matches!(step, Post::Ok | Post::MadeThen(_) | Post::StallMade) {
                    runs.push(run.clone());
                }
                match step {
                    Post::Ok => ResponseTemplate::new(200).set_body_json(run),
                    Post::MadeThen(status) | Post::Fail(status) => {
                        ResponseTemplate::new(status).set_body_string("Internal Server Error")
                    }
                    Post::StallMade | Post::Stall => ResponseTemplate::new(200)
                        .set_body_json(run)
                        .set_delay(STALL),
                }
            })
            .mount(&fake.server)
            .await;
        let kept = Arc::clone(&runs);
        Mock::given(method("GET"))
            .and(path_regex(format!("^/api/v2/dags/{ACME_DAG}/dagRuns/.+$")))
            .respond_with(move |request: &Request| {
                let wanted = request.url.path().rsplit('/').next().unwrap();
                let wanted = wanted.replace("%3A", ":").replace("%2B", "+");
                let runs = kept.lock().unwrap();
                match runs.iter().find(|run| run["dag_run_id"] == wanted.as_str()) {
                    Some(run) => ResponseTemplate::new(200).set_body_json(run.clone()),
                    None => ResponseTemplate::new(404).set_body_json(json!({"detail": "nope"})),
                }
            })
            .mount(&fake.server)
            .await;
        Self { fake, runs }
    }

    /// The run ids of the posts received, in order.
    async fn posted_ids(&self) -> Vec<String> {
        self.fake
            .requests(Endpoint::RunPost)
            .await
            .iter()
            .map(|request| {
                let sent: Value = serde_json::from_slice(&request.body).unwrap();
                sent["dag_run_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    fn made(&self) -> Vec<Value> {
        self.runs.lock().unwrap().clone()
    }
}

/// A backend on `uri` with [`TIMEOUT`] whose retries are written down.
fn observed(uri: &str) -> (AirflowBackend, Arc<Mutex<Vec<RetryOutcome>>>) {
    let seen: Arc<Mutex<Vec<RetryOutcome>>> = Arc::default();
    let told = Arc::clone(&seen);
    let backend = backend_with(uri, AirflowAuth::Token(FIXED_TOKEN.into()), TIMEOUT)
        .with_retry_observer(move |outcome| told.lock().unwrap().push(outcome));
    (backend, seen)
}

fn failure_kind(result: Result<Run, ExecuteError>) -> BackendErrorKind {
    match result {
        Err(ExecuteError::Backend(err)) => err.kind(),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_503_then_a_200_makes_the_run_on_the_retry_with_the_same_run_id() {
    let airflow = Scripted::start(&[Post::Fail(503), Post::Ok]).await;
    let (backend, retries) = observed(&airflow.fake.uri());

    let run = backend
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let posted = airflow.posted_ids().await;
    assert_eq!(posted.len(), 2);
    assert_eq!(posted[0], posted[1], "the retry carries the same run id");
    assert_eq!(run.id.as_str(), posted[0]);
    assert_eq!(airflow.made().len(), 1);
    assert_eq!(*retries.lock().unwrap(), [RetryOutcome::Succeeded]);
}

#[tokio::test]
async fn a_500_after_airflow_made_the_run_then_a_409_answers_with_that_run_read_back() {
    let airflow = Scripted::start(&[Post::MadeThen(500), Post::Ok]).await;
    let (backend, retries) = observed(&airflow.fake.uri());

    let run = backend
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let made = airflow.made();
    assert_eq!(made.len(), 1, "no second run");
    assert_eq!(run.id.as_str(), made[0]["dag_run_id"]);
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(airflow.posted_ids().await.len(), 2);
    assert_eq!(
        airflow.fake.requests(Endpoint::RunGet).await.len(),
        1,
        "the run is read back once"
    );
    assert_eq!(*retries.lock().unwrap(), [RetryOutcome::Conflict]);
}

#[tokio::test]
async fn a_first_attempt_that_stalls_past_its_share_of_the_timeout_is_sent_again_in_time() {
    for (first, outcome) in [
        (Post::StallMade, RetryOutcome::Conflict),
        (Post::Stall, RetryOutcome::Succeeded),
    ] {
        let airflow = Scripted::start(&[first, Post::Ok]).await;
        let (backend, retries) = observed(&airflow.fake.uri());

        let started = Instant::now();
        let run = backend
            .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
            .await
            .unwrap();
        let took = started.elapsed();

        assert!(
            took >= TIMEOUT / 3,
            "{first:?}: the first attempt was given its share ({took:?})"
        );
        assert!(
            took < TIMEOUT,
            "{first:?}: answered within the timeout ({took:?})"
        );
        let made = airflow.made();
        assert_eq!(made.len(), 1, "{first:?}: one run");
        assert_eq!(run.id.as_str(), made[0]["dag_run_id"]);
        assert_eq!(airflow.posted_ids().await.len(), 2);
        assert_eq!(*retries.lock().unwrap(), [outcome], "{first:?}");
    }
}

#[tokio::test]
async fn two_failures_keep_their_502_503_504_kinds_and_there_is_never_a_third_attempt() {
    for (script, kind) in [
        (
            [Post::Fail(500), Post::Fail(500)],
            BackendErrorKind::Upstream,
        ),
        (
            [Post::Fail(503), Post::Fail(502)],
            BackendErrorKind::Upstream,
        ),
        ([Post::Stall, Post::Stall], BackendErrorKind::Timeout),
        ([Post::Fail(503), Post::Stall], BackendErrorKind::Timeout),
    ] {
        let airflow = Scripted::start(&script).await;
        let (backend, retries) = observed(&airflow.fake.uri());

        let started = Instant::now();
        let result = backend.trigger(&ctx("acme"), &trigger_of(ACME_DAG)).await;
        let took = started.elapsed();

        assert_eq!(failure_kind(result), kind, "{script:?}");
        assert!(
            took < TIMEOUT + Duration::from_millis(300),
            "{script:?} took {took:?}"
        );
        let posted = airflow.posted_ids().await;
        assert_eq!(posted.len(), 2, "{script:?}: exactly one retry");
        assert_eq!(posted[0], posted[1]);
        assert!(airflow.made().is_empty());
        assert_eq!(
            *retries.lock().unwrap(),
            [RetryOutcome::Failed],
            "{script:?}"
        );
    }
}

#[tokio::test]
async fn a_refusal_or_a_success_at_the_first_attempt_is_not_sent_again() {
    for (first, posts) in [(Post::Ok, 1), (Post::Fail(400), 1), (Post::Fail(422), 1)] {
        let airflow = Scripted::start(&[first, Post::Ok]).await;
        let (backend, retries) = observed(&airflow.fake.uri());

        let _ = backend.trigger(&ctx("acme"), &trigger_of(ACME_DAG)).await;

        assert_eq!(airflow.posted_ids().await.len(), posts, "{first:?}");
        assert!(retries.lock().unwrap().is_empty(), "{first:?}");
    }
}

#[tokio::test]
async fn a_retry_answered_409_for_another_triggers_run_takes_the_next_id() {
    // The first post fails with 503 and makes nothing; meanwhile another
    // trigger took the id (a run with another mark): the retry's 409 is
    // not this trigger's run, so the next id is posted.
    let airflow = Scripted::start(&[Post::Fail(503), Post::Ok]).await;
    let (backend, retries) = observed(&airflow.fake.uri());
    // The backend's run ids start at the clock's instant; plant a foreign
    // run there.
    let taken = "manual__2026-11-29T09:00:00.000000+00:00";
    airflow.runs.lock().unwrap().push(dag_run(
        ACME_DAG,
        taken,
        "queued",
        json!({"maestro": {"trigger_id": "someone-else"}}),
    ));

    let run = backend
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let posted = airflow.posted_ids().await;
    assert_eq!(posted[..2], [taken, taken]);
    assert!(run.id.as_str() > taken);
    assert_eq!(posted.last().unwrap(), run.id.as_str());
    assert_eq!(retries.lock().unwrap()[0], RetryOutcome::Conflict);
}
