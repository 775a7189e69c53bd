//! Triggers with an idempotency key, over a fake Airflow that keeps its
//! runs: every attempt marks its run alike, and a retry after a failed
//! attempt answers with the run that attempt made instead of making a
//! second one.
//!
//! The fake stamps the runs it is posted with what the test's clock shows,
//! as Airflow stamps them with its own "now", and the backend reads the
//! same clock: a retry's window is relative to that clock, never to today.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapter_airflow::AirflowBackend;
use airflow_test_support::dag_runs_page;
use chrono::TimeDelta;
use domain::{
    Clock, ExecuteError, IdempotencyKey, ManualClock, Orchestrator, RunConf, TriggerRequest,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::common::{
    self, ACME_DAG, Endpoint, Fake, backend_on, ctx, dag, dag_run, query, trigger_of,
};

/// How the fake answers a post.
#[derive(Clone, Copy)]
enum Answer {
    /// Makes the run and answers with it (409 when the id is taken).
    Created,
    /// Makes the run and then fails to answer (a 500).
    FailedAfterCreating,
    /// Makes nothing and answers 503, as a proxy in front of an Airflow
    /// that is down.
    Unreachable,
}

/// A fake Airflow with Acme's DAG (`paused` as given) whose dagRuns
/// endpoint keeps the runs it is posted and lists them newest first,
/// filtered with `conf_contains` as Airflow does (on the conf's text).
struct Ledger {
    fake: Fake,
    /// The clock of the fake and of [`Ledger::backend`].
    clock: ManualClock,
    runs: Arc<Mutex<Vec<Value>>>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Ledger {
    async fn start(paused: bool) -> Self {
        let fake = Fake::start().await;
        let clock = common::clock();
        let stamps = clock.clone();
        fake.mount_dag(dag(ACME_DAG, &["customer:acme"], paused))
            .await;
        let runs: Arc<Mutex<Vec<Value>>> = Arc::default();
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let (kept, next) = (Arc::clone(&runs), Arc::clone(&answers));
        Mock::given(method("POST"))
            .and(path(format!("/api/v2/dags/{ACME_DAG}/dagRuns")))
            .respond_with(move |request: &Request| {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let answer = {
                    let mut next = next.lock().unwrap();
                    if next.is_empty() {
                        Answer::Created
                    } else {
                        next.remove(0)
                    }
                };
                if let Answer::Unreachable = answer {
                    return ResponseTemplate::new(503);
                }
                let mut kept = kept.lock().unwrap();
                if kept
                    .iter()
                    .any(|run| run["dag_run_id"] == body["dag_run_id"])
                {
                    return ResponseTemplate::new(409)
                        .set_body_json(json!({"detail": "Unique constraint violation"}));
                }
                let mut run = dag_run(
                    ACME_DAG,
                    body["dag_run_id"].as_str().unwrap(),
                    "queued",
                    body["conf"].clone(),
                );
                // Airflow stamps a triggered run with the moment it was
                // posted (a trigger without `run_after` runs "now"), and a
                // retry looks for runs made since a moment relative to now.
                let now = json!(stamps.now().to_rfc3339());
                run["run_after"] = now.clone();
                run["queued_at"] = now;
                kept.push(run.clone());
                match answer {
                    Answer::Created => ResponseTemplate::new(200).set_body_json(run),
                    Answer::FailedAfterCreating | Answer::Unreachable => ResponseTemplate::new(500)
                        .set_body_json(json!({"detail": "Internal Server Error"})),
                }
            })
            .mount(&fake.server)
            .await;
        let listed = Arc::clone(&runs);
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/dags/{ACME_DAG}/dagRuns")))
            .respond_with(move |request: &Request| {
                ResponseTemplate::new(200).set_body_json(dag_runs_page(
                    &listed.lock().unwrap(),
                    query(request, "conf_contains").as_deref(),
                    query(request, "limit").as_deref(),
                ))
            })
            .mount(&fake.server)
            .await;
        Self {
            fake,
            clock,
            runs,
            answers,
        }
    }

    /// A backend for the fake, on the fake's clock.
    fn backend(&self) -> AirflowBackend {
        backend_on(&self.fake.uri(), &self.clock)
    }

    /// What the clock shows, as Airflow writes it.
    fn now(&self) -> Value {
        json!(self.clock.now().to_rfc3339())
    }

    fn answer_next(&self, answer: Answer) {
        self.answers.lock().unwrap().push(answer);
    }

    /// The next trigger fails although Airflow made its run: its post makes
    /// the run and answers 500, and the post's one retry within the call
    /// meets an Airflow that cannot be reached.
    fn fail_next_trigger_after_making_its_run(&self) {
        self.answer_next(Answer::FailedAfterCreating);
        self.answer_next(Answer::Unreachable);
    }

    fn run_ids(&self) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|run| run["dag_run_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn marks(&self) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|run| {
                run["conf"]["maestro"]["trigger_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Puts a run into Airflow as if made before the retention of a
    /// [`retry`], with `conf`.
    fn add_old_run(&self, run_id: &str, conf: Value) {
        let mut run = dag_run(ACME_DAG, run_id, "success", conf);
        run["run_after"] = json!((self.clock.now() - TimeDelta::days(2)).to_rfc3339());
        self.runs.lock().unwrap().push(run);
    }
}

/// A trigger of Acme's pipeline with the idempotency key `key`.
fn keyed(key: &str) -> TriggerRequest {
    trigger_of(ACME_DAG).with_idempotency_key(IdempotencyKey::parse(key).unwrap())
}

/// A retry with `key` after a failed attempt, with a day's retention
/// before what `clock` shows.
fn retry(clock: &ManualClock, key: &str) -> TriggerRequest {
    keyed(key).retrying_since(clock.now() - TimeDelta::days(1))
}

#[tokio::test]
async fn every_trigger_with_a_key_carries_the_same_mark_and_other_keys_or_customers_another() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();
    let acme = ctx("acme");

    backend.trigger(&acme, &keyed("k1")).await.unwrap();
    backend.trigger(&acme, &keyed("k1")).await.unwrap();
    backend.trigger(&acme, &keyed("k2")).await.unwrap();
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();
    backend.trigger(&acme, &trigger_of(ACME_DAG)).await.unwrap();

    let marks = ledger.marks();
    assert_eq!(marks[0], marks[1]);
    assert_ne!(marks[0], marks[2]);
    assert_ne!(marks[3], marks[4]);
    assert!(!marks[3..].contains(&marks[0]));
    // The mark tells nothing of the key.
    assert!(!marks[0].contains("k1"));
    // Another customer's key of the same text has another mark: the mark
    // is what a retry looks for.
    assert_ne!(
        common::keyed_mark("acme", "k1"),
        common::keyed_mark("globex", "k1")
    );
    assert_eq!(common::keyed_mark("acme", "k1"), marks[0]);
}

#[tokio::test]
async fn a_retry_after_an_attempt_that_made_the_run_and_failed_answers_with_that_run() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();
    let acme = ctx("acme");
    ledger.fail_next_trigger_after_making_its_run();

    let failed = backend.trigger(&acme, &keyed("k1")).await;
    assert!(
        matches!(failed, Err(ExecuteError::Backend(_))),
        "{failed:?}"
    );
    assert_eq!(ledger.run_ids().len(), 1);

    // The client retries a little later.
    ledger.clock.advance(Duration::from_secs(30));
    let run = backend
        .trigger(&acme, &retry(&ledger.clock, "k1"))
        .await
        .unwrap();

    assert_eq!(ledger.run_ids(), vec![run.id.as_str().to_owned()]);
    assert_eq!(
        ledger.fake.requests(Endpoint::RunPost).await.len(),
        2,
        "the failed trigger's post and its retry; nothing from the client's retry"
    );
    let lookups = ledger.fake.requests(Endpoint::RunList).await;
    assert_eq!(lookups.len(), 1);
    assert_eq!(
        query(&lookups[0], "conf_contains").as_deref(),
        Some(ledger.marks()[0].as_str())
    );
}

#[tokio::test]
async fn a_retry_after_an_attempt_that_made_nothing_makes_the_run() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();

    let run = backend
        .trigger(&ctx("acme"), &retry(&ledger.clock, "k1"))
        .await
        .unwrap();

    assert_eq!(ledger.run_ids(), vec![run.id.as_str().to_owned()]);
}

#[tokio::test]
async fn a_run_of_an_earlier_use_of_the_key_past_the_retention_is_not_taken_for_it() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();
    let mark = common::keyed_mark("acme", "k1");
    ledger.add_old_run(
        "manual__2020-01-01T00:00:00.000000+00:00",
        json!({"maestro": {"trigger_id": mark}}),
    );

    let run = backend
        .trigger(&ctx("acme"), &retry(&ledger.clock, "k1"))
        .await
        .unwrap();

    assert_ne!(run.id.as_str(), "manual__2020-01-01T00:00:00.000000+00:00");
    assert_eq!(ledger.run_ids().len(), 2);
}

#[tokio::test]
async fn a_run_whose_conf_merely_contains_the_mark_elsewhere_is_not_taken_for_it() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();
    let mark = common::keyed_mark("acme", "k1");
    let mut planted = dag_run(
        ACME_DAG,
        "manual__2026-01-01T00:00:00.000000+00:00",
        "queued",
        json!({"note": mark, "maestro": {"trigger_id": "someone-else"}}),
    );
    planted["run_after"] = ledger.now();
    ledger.runs.lock().unwrap().push(planted);

    let run = backend
        .trigger(&ctx("acme"), &retry(&ledger.clock, "k1"))
        .await
        .unwrap();

    assert_ne!(run.id.as_str(), "manual__2026-01-01T00:00:00.000000+00:00");
    assert_eq!(ledger.run_ids().len(), 2);
}

#[tokio::test]
async fn a_keyed_trigger_with_parameters_is_found_by_its_mark_and_not_by_parameters_quoting_it() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();
    let mark = common::keyed_mark("acme", "k1");
    // Another run whose parameters quote the mark, as a client may.
    let quoting = RunConf::parse(json!({"ref": mark, "date": "2024-12-18"})).unwrap();
    let other = backend
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG).with_conf(quoting))
        .await
        .unwrap();
    let parameters = RunConf::parse(json!({"date": "2024-12-18"})).unwrap();
    ledger.fail_next_trigger_after_making_its_run();
    let failed = backend
        .trigger(&ctx("acme"), &keyed("k1").with_conf(parameters.clone()))
        .await;
    assert!(matches!(failed, Err(ExecuteError::Backend(_))));

    let run = backend
        .trigger(
            &ctx("acme"),
            &retry(&ledger.clock, "k1").with_conf(parameters.clone()),
        )
        .await
        .unwrap();

    assert_ne!(run.id, other.id);
    assert_eq!(run.conf, parameters);
    assert_eq!(ledger.run_ids().len(), 2);
    assert_eq!(ledger.marks()[1], mark);
}

#[tokio::test]
async fn a_retry_answers_with_the_earlier_run_even_if_the_dag_was_paused_since() {
    let ledger = Ledger::start(true).await;
    let backend = ledger.backend();
    let mark = common::keyed_mark("acme", "k1");
    let mut earlier = dag_run(
        ACME_DAG,
        "manual__2026-11-29T09:00:00.000000+00:00",
        "queued",
        json!({"maestro": {"customer_id": "acme", "trigger_id": mark}}),
    );
    earlier["run_after"] = ledger.now();
    ledger.runs.lock().unwrap().push(earlier);

    let run = backend
        .trigger(&ctx("acme"), &retry(&ledger.clock, "k1"))
        .await
        .unwrap();
    assert_eq!(run.id.as_str(), "manual__2026-11-29T09:00:00.000000+00:00");

    // Without a run to find, the paused DAG is refused as ever.
    let refused = backend
        .trigger(&ctx("acme"), &retry(&ledger.clock, "k2"))
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::Paused(_))),
        "{refused:?}"
    );
    assert!(ledger.fake.requests(Endpoint::RunPost).await.is_empty());
}

#[tokio::test]
async fn a_retry_by_another_customer_finds_nothing_of_the_owners() {
    let ledger = Ledger::start(false).await;
    let backend = ledger.backend();
    ledger.fail_next_trigger_after_making_its_run();
    let _ = backend.trigger(&ctx("acme"), &keyed("k1")).await;

    let refused = backend
        .trigger(&ctx("globex"), &retry(&ledger.clock, "k1"))
        .await;

    assert!(
        matches!(refused, Err(ExecuteError::NotFound(_))),
        "{refused:?}"
    );
    assert_eq!(ledger.run_ids().len(), 1);
}

#[tokio::test]
async fn a_lookup_that_fails_fails_the_retry_without_posting() {
    let fake = Fake::start().await;
    fake.mount_dag(dag(ACME_DAG, &["customer:acme"], false))
        .await;
    fake.mount_trigger_echo(ACME_DAG).await;
    fake.fail(
        Endpoint::RunList,
        ResponseTemplate::new(503).set_delay(Duration::ZERO),
    )
    .await;

    let clock = common::clock();
    let result = backend_on(&fake.uri(), &clock)
        .trigger(&ctx("acme"), &retry(&clock, "k1"))
        .await;

    assert!(
        matches!(result, Err(ExecuteError::Backend(_))),
        "{result:?}"
    );
    assert!(fake.requests(Endpoint::RunPost).await.is_empty());
}
