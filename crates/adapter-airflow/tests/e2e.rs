//! End-to-end tests of the Airflow backend against a real Apache Airflow 3,
//! checked through Airflow's own API.
//!
//! They need the Airflow that `cargo xtask e2e-airflow` starts with the
//! DAGs of `tests/airflow/dags/`, and read where it is from the
//! environment:
//! - `MAESTRO_E2E_AIRFLOW_URL`, `MAESTRO_E2E_AIRFLOW_USERNAME`,
//!   `MAESTRO_E2E_AIRFLOW_PASSWORD`;
//! - `MAESTRO_E2E_AIRFLOW_PGID`, the process group of `airflow standalone`,
//!   which the last test freezes and then kills.
//!
//! The DAG ids and the client of Airflow's API come from the
//! `airflow-test-support` crate, which the binary's e2e tests share.
//!
//! They are built only with the crate's `e2e` feature, so a plain
//! `cargo test` neither builds nor runs them. The harness runs them one at
//! a time, and `airflow_stopped_mid_test_gives_timeouts_then_unavailable`
//! on its own after the others, since it leaves no Airflow behind:
//!
//! ```text
//! cargo test -p adapter-airflow --features e2e --test e2e -- --test-threads=1 \
//!     --skip airflow_stopped_mid_test_gives_timeouts_then_unavailable
//! cargo test -p adapter-airflow --features e2e --test e2e -- --test-threads=1 \
//!     --exact airflow_stopped_mid_test_gives_timeouts_then_unavailable
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_airflow::{AirflowAuth, AirflowBackend, AirflowChanges, AirflowConfig};
use airflow_test_support::{
    ACME_NIGHTLY, ACME_ORDERS, ACME_TOGGLE, Airflow, ECHO_TASK, GLOBEX_FAILING, GLOBEX_OK,
    HYPHENATED, NOT_A_UUID, RUN_DEADLINE, SLEEP_TASK, TWO_CUSTOMERS, UNTAGGED, VANDELAY_PARAMS,
    VANDELAY_SLEEPER, dag_run_ids, env, signal_airflow,
};
use domain::{
    BackendErrorKind, Caller, CancelRunError, Clock, CustomerId, ExecuteError, GetPipelineError,
    GetRunError, IdempotencyKey, ListRunsError, Orchestrator, PipelineId, PipelineRepository,
    PipelineStatus, RequestContext, Run, RunChangeSource, RunConf, RunId, RunQuery, RunStatus,
    RunWatch, SetPausedError, SystemClock, Timestamp, TriggerRequest,
};
use runtime::PollingRunWatch;
use serde_json::{Value, json};

/// What a call may take over the timeout: scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(500);

fn backend_with_timeout(timeout: Duration) -> AirflowBackend {
    let mut config = AirflowConfig::new(
        env("MAESTRO_E2E_AIRFLOW_URL"),
        AirflowAuth::Credentials {
            username: env("MAESTRO_E2E_AIRFLOW_USERNAME"),
            password: env("MAESTRO_E2E_AIRFLOW_PASSWORD").into(),
        },
    );
    config.timeout = timeout;
    AirflowBackend::new(config).unwrap()
}

/// A backend with a generous timeout: `airflow standalone` on SQLite can
/// stall for half a minute while a task starts on a busy machine, and
/// these tests are about what Airflow does, not how fast.
fn backend() -> AirflowBackend {
    backend_with_timeout(Duration::from_secs(90))
}

fn ctx(customer: &str) -> RequestContext {
    RequestContext::new(
        Caller::new(CustomerId::parse(customer).unwrap()).with_subject(format!("{customer}-user")),
    )
    .with_request_id("e2e-request")
}

fn id(raw: &str) -> PipelineId {
    PipelineId::parse(raw).unwrap()
}

/// A trigger of `pipeline` with nothing else asked.
fn trigger_of(pipeline: &PipelineId) -> TriggerRequest {
    TriggerRequest::new(pipeline.clone())
}

#[tokio::test]
async fn each_customer_lists_exactly_its_dags() {
    let airflow = Airflow::connect().await;
    let backend = backend();

    let listed = |customer: &'static str| {
        let backend = &backend;
        async move {
            let mut ids: Vec<String> = backend
                .list(&ctx(customer))
                .await
                .unwrap()
                .into_iter()
                .map(|summary| summary.pipeline.id.as_str().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut acme = vec![ACME_ORDERS, ACME_NIGHTLY, ACME_TOGGLE];
    acme.sort_unstable();
    let mut globex = vec![GLOBEX_FAILING, GLOBEX_OK];
    globex.sort_unstable();
    assert_eq!(listed("acme").await, acme);
    assert_eq!(listed("globex").await, globex);
    let mut vandelay = vec![VANDELAY_PARAMS, VANDELAY_SLEEPER];
    vandelay.sort_unstable();
    assert_eq!(listed("vandelay").await, vandelay);
    assert!(listed("initech").await.is_empty());

    // Airflow itself has more DAGs tagged for acme: the ones Maestro must
    // not show.
    let tagged = airflow.tagged("acme").await;
    for hidden in [TWO_CUSTOMERS, NOT_A_UUID, HYPHENATED] {
        assert!(tagged.contains(hidden), "{hidden} should exist in Airflow");
    }

    let nightly = backend.get(&ctx("acme"), &id(ACME_NIGHTLY)).await.unwrap();
    assert_eq!(nightly.cron.as_deref(), Some("0 3 * * *"));
    assert_eq!(nightly.description, "Acme: the nightly report");
    assert_eq!(nightly.customer_id.as_str(), "acme");
    let orders = backend.get(&ctx("acme"), &id(ACME_ORDERS)).await.unwrap();
    assert_eq!(orders.cron, None);
}

#[tokio::test]
async fn other_customers_untagged_doubly_tagged_and_missing_dags_are_all_not_found() {
    let _airflow = Airflow::connect().await;
    let backend = backend();
    let acme = ctx("acme");

    for (customer, dag) in [
        ("globex", ACME_ORDERS),
        ("acme", GLOBEX_OK),
        ("acme", UNTAGGED),
        ("acme", TWO_CUSTOMERS),
        ("globex", TWO_CUSTOMERS),
        ("acme", HYPHENATED),
        ("acme", "00000000_0000_4000_8000_000000000000"),
    ] {
        let ctx = ctx(customer);
        let pipeline = id(dag);
        assert!(
            matches!(
                backend.get(&ctx, &pipeline).await,
                Err(GetPipelineError::NotFound(ref named)) if named == &pipeline
            ),
            "get {dag} as {customer}"
        );
        assert!(matches!(
            backend.trigger(&ctx, &trigger_of(&pipeline)).await,
            Err(ExecuteError::NotFound(_))
        ));
        assert!(matches!(
            backend.set_paused(&ctx, &pipeline, false).await,
            Err(SetPausedError::NotFound(_))
        ));
        assert!(matches!(
            backend
                .list_runs(&ctx, &pipeline, &RunQuery::default())
                .await,
            Err(ListRunsError::NotFound(_))
        ));
        let run = RunId::parse("manual__2024-12-18T10:30:00+00:00").unwrap();
        assert!(matches!(
            backend.get_run(&ctx, &pipeline, &run).await,
            Err(GetRunError::PipelineNotFound(_))
        ));
    }
    assert!(backend.get(&acme, &id(ACME_ORDERS)).await.is_ok());
}

#[tokio::test]
async fn a_paused_pipeline_is_refused_and_no_run_reaches_airflow() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    airflow.set_paused(ACME_NIGHTLY, true).await;
    let before = airflow.run_count(ACME_NIGHTLY).await;

    let result = backend
        .trigger(&ctx("acme"), &trigger_of(&id(ACME_NIGHTLY)))
        .await;

    assert!(matches!(result, Err(ExecuteError::Paused(_))), "{result:?}");
    assert_eq!(airflow.run_count(ACME_NIGHTLY).await, before);
}

#[tokio::test]
async fn pause_and_unpause_reach_airflow() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let acme = ctx("acme");
    let toggle = id(ACME_TOGGLE);
    airflow.set_paused(ACME_TOGGLE, true).await;

    backend.set_paused(&acme, &toggle, false).await.unwrap();
    assert!(!airflow.is_paused(ACME_TOGGLE).await);
    assert_eq!(
        backend.get(&acme, &toggle).await.unwrap().status,
        PipelineStatus::Active
    );
    assert!(matches!(
        backend.set_paused(&acme, &toggle, false).await,
        Err(SetPausedError::NotPaused(_))
    ));

    backend.set_paused(&acme, &toggle, true).await.unwrap();
    assert!(airflow.is_paused(ACME_TOGGLE).await);
    assert_eq!(
        backend.get(&acme, &toggle).await.unwrap().status,
        PipelineStatus::Paused
    );
    assert!(matches!(
        backend.set_paused(&acme, &toggle, true).await,
        Err(SetPausedError::AlreadyPaused(_))
    ));

    // Another customer's pause does not reach Airflow.
    assert!(matches!(
        backend.set_paused(&ctx("globex"), &toggle, false).await,
        Err(SetPausedError::NotFound(_))
    ));
    assert!(airflow.is_paused(ACME_TOGGLE).await);
}

#[tokio::test]
async fn three_executes_give_three_dag_runs_with_the_returned_ids_that_succeed_in_order() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let acme = ctx("acme");
    let orders = id(ACME_ORDERS);
    airflow.set_paused(ACME_ORDERS, false).await;
    let before: HashSet<String> = dag_run_ids(&airflow.runs(ACME_ORDERS).await)
        .into_iter()
        .collect();

    let mut triggered = Vec::new();
    for _ in 0..3 {
        let run = backend.trigger(&acme, &trigger_of(&orders)).await.unwrap();
        assert!(matches!(run.status, RunStatus::Queued | RunStatus::Running));
        assert!(run.id.as_str().starts_with("manual__") && run.id.as_str().ends_with("+00:00"));
        triggered.push(run.id);
    }
    assert!(triggered.windows(2).all(|pair| pair[0] < pair[1]));

    // Airflow has exactly these three new runs, with the caller in conf.
    let new: Vec<String> = dag_run_ids(&airflow.runs(ACME_ORDERS).await)
        .into_iter()
        .filter(|run| !before.contains(run))
        .collect();
    let returned: Vec<String> = triggered.iter().map(|id| id.as_str().to_owned()).collect();
    assert_eq!(new, returned);

    let mut finished = Vec::new();
    for run_id in &triggered {
        let run = airflow
            .wait_until_finished(ACME_ORDERS, run_id.as_str())
            .await;
        assert_eq!(run["state"], "success", "{run}");
        assert_eq!(run["conf"]["maestro"]["customer_id"], "acme");
        assert_eq!(run["conf"]["maestro"]["sub"], "acme-user");
        assert!(run["logical_date"].is_null());
        finished.push(run);
    }
    // max_active_runs=1: each run started after the one before it ended.
    for pair in finished.windows(2) {
        let ended = pair[0]["end_date"].as_str().unwrap();
        let started = pair[1]["start_date"].as_str().unwrap();
        assert!(ended <= started, "{ended} then {started}");
    }
    for run_id in &triggered {
        let run = backend.get_run(&acme, &orders, run_id).await.unwrap();
        assert_eq!(run.status, RunStatus::Success);
        assert_eq!(run.trace, None);
    }
    airflow.set_paused(ACME_ORDERS, true).await;
}

#[tokio::test]
async fn a_failing_dag_shows_failed_with_a_trace() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let globex = ctx("globex");
    let failing = id(GLOBEX_FAILING);
    airflow.set_paused(GLOBEX_FAILING, false).await;

    let run = backend
        .trigger(&globex, &trigger_of(&failing))
        .await
        .unwrap();
    let seen = airflow
        .wait_until_finished(GLOBEX_FAILING, run.id.as_str())
        .await;

    assert_eq!(seen["state"], "failed");
    let run = backend.get_run(&globex, &failing, &run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.trace.is_some());
    let listed = backend.list(&globex).await.unwrap();
    let summary = listed
        .iter()
        .find(|summary| summary.pipeline.id == failing)
        .unwrap();
    assert_eq!(summary.last_status, Some(RunStatus::Failed));
    airflow.set_paused(GLOBEX_FAILING, true).await;
}

#[tokio::test]
async fn runs_are_listed_newest_first_paginated_filtered_and_fetched_by_id() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let globex = ctx("globex");
    let pipeline = id(GLOBEX_OK);
    airflow.set_paused(GLOBEX_OK, false).await;

    let mut triggered = Vec::new();
    for _ in 0..3 {
        triggered.push(
            backend
                .trigger(&globex, &trigger_of(&pipeline))
                .await
                .unwrap()
                .id,
        );
    }
    for run_id in &triggered {
        airflow
            .wait_until_finished(GLOBEX_OK, run_id.as_str())
            .await;
    }
    let total = airflow.run_count(GLOBEX_OK).await;
    let newest_first: Vec<RunId> = triggered.iter().rev().cloned().collect();

    let first = backend
        .list_runs(
            &globex,
            &pipeline,
            &RunQuery::new(Some(2), None, None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.total, total);
    let first_ids: Vec<RunId> = first.runs.iter().map(|run| run.id.clone()).collect();
    assert_eq!(first_ids, newest_first[..2]);

    let second = backend
        .list_runs(
            &globex,
            &pipeline,
            &RunQuery::new(Some(2), Some(2), None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(second.runs[0].id, newest_first[2]);
    assert_eq!(second.total, total);

    let succeeded = backend
        .list_runs(
            &globex,
            &pipeline,
            &RunQuery::new(Some(1000), None, Some(RunStatus::Success)).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        succeeded
            .runs
            .iter()
            .all(|run| run.status == RunStatus::Success)
    );
    assert_eq!(succeeded.total, total);
    let failed = backend
        .list_runs(
            &globex,
            &pipeline,
            &RunQuery::new(None, None, Some(RunStatus::Failed)).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(failed.total, 0);
    assert!(failed.runs.is_empty());

    // The id holds ':' and '+', which travel percent-encoded.
    let fetched = backend
        .get_run(&globex, &pipeline, &triggered[1])
        .await
        .unwrap();
    assert_eq!(fetched.id, triggered[1]);
    assert_eq!(fetched.status, RunStatus::Success);
    let unknown = RunId::parse("manual__1999-01-01T00:00:00.000000+00:00").unwrap();
    assert!(matches!(
        backend.get_run(&globex, &pipeline, &unknown).await,
        Err(GetRunError::RunNotFound { .. })
    ));

    let listed = backend.list(&globex).await.unwrap();
    let summary = listed
        .iter()
        .find(|summary| summary.pipeline.id == pipeline)
        .unwrap();
    assert_eq!(summary.last_status, Some(RunStatus::Success));
    airflow.set_paused(GLOBEX_OK, true).await;
}

#[tokio::test]
async fn a_retry_with_an_idempotency_key_finds_the_run_of_the_failed_attempt_by_its_mark() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let globex = ctx("globex");
    let pipeline = id(GLOBEX_OK);
    airflow.set_paused(GLOBEX_OK, false).await;
    let before = airflow.run_count(GLOBEX_OK).await;
    // Airflow stamps runs with the wall clock, so the retry's window is
    // measured from it too.
    let keyed = |key: &IdempotencyKey, retry: bool| {
        let request = trigger_of(&pipeline).with_idempotency_key(key.clone());
        if retry {
            request.retrying_since(SystemClock.now() - chrono::TimeDelta::hours(24))
        } else {
            request
        }
    };
    let key = IdempotencyKey::parse(&format!("e2e-{}", uuid::Uuid::new_v4())).unwrap();
    let other = IdempotencyKey::parse(&format!("e2e-{}", uuid::Uuid::new_v4())).unwrap();

    let first = backend.trigger(&globex, &keyed(&key, false)).await.unwrap();
    // As if the first answer had been lost: the retry is told that an
    // attempt failed, and Airflow's `conf_contains` finds that attempt's run.
    let retried = backend.trigger(&globex, &keyed(&key, true)).await.unwrap();
    assert_eq!(retried.id, first.id);
    assert_eq!(airflow.run_count(GLOBEX_OK).await, before + 1);

    // Another key's retry finds nothing of it, and makes its own run.
    let fresh = backend
        .trigger(&globex, &keyed(&other, true))
        .await
        .unwrap();
    assert_ne!(fresh.id, first.id);
    assert_eq!(airflow.run_count(GLOBEX_OK).await, before + 2);
    let mark = |run: serde_json::Value| run["conf"]["maestro"]["trigger_id"].clone();
    let first_mark = mark(airflow.run(GLOBEX_OK, first.id.as_str()).await);
    let fresh_mark = mark(airflow.run(GLOBEX_OK, fresh.id.as_str()).await);
    assert!(first_mark.is_string(), "{first_mark}");
    assert_ne!(first_mark, fresh_mark);

    for run_id in [&first.id, &fresh.id] {
        airflow
            .wait_until_finished(GLOBEX_OK, run_id.as_str())
            .await;
    }
    airflow.set_paused(GLOBEX_OK, true).await;
}

fn conf(value: Value) -> RunConf {
    RunConf::parse(value).unwrap()
}

#[tokio::test]
async fn a_parameter_value_the_dags_params_reject_is_refused_naming_it_and_makes_no_run() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let vandelay = ctx("vandelay");
    let pipeline = id(VANDELAY_PARAMS);
    airflow.set_paused(VANDELAY_PARAMS, false).await;
    let before = airflow.run_count(VANDELAY_PARAMS).await;

    for (parameters, name, keyword) in [
        (json!({"date": "2024-13-45"}), "date", "format"),
        (json!({"date": 20241218}), "date", "type"),
        (json!({"full_refresh": "yes"}), "full_refresh", "type"),
    ] {
        let err = backend
            .trigger(
                &vandelay,
                &trigger_of(&pipeline).with_conf(conf(parameters.clone())),
            )
            .await
            .unwrap_err();
        let ExecuteError::ConfRefused {
            pipeline_id,
            parameter,
            reason,
        } = &err
        else {
            panic!("{parameters}: {err:?}");
        };
        assert_eq!(pipeline_id, &pipeline);
        assert_eq!(parameter.as_deref(), Some(name), "{parameters}");
        assert!(reason.contains(keyword), "{parameters}: {reason}");
        assert!(reason.len() <= 200);
        let text = format!("{err} {err:?}");
        for quoted in [
            "2024-13-45",
            "yes",
            "Failed validating",
            "On instance",
            "127.0.0.1",
        ] {
            assert!(!text.contains(quoted), "{text}");
        }
    }
    assert_eq!(airflow.run_count(VANDELAY_PARAMS).await, before);
    airflow.set_paused(VANDELAY_PARAMS, true).await;
}

#[tokio::test]
async fn a_good_conf_reaches_the_task_beside_the_audit_block_and_the_run_reads_it_back() {
    let airflow = Airflow::connect().await;
    let backend = backend();
    let vandelay = ctx("vandelay");
    let pipeline = id(VANDELAY_PARAMS);
    airflow.set_paused(VANDELAY_PARAMS, false).await;
    let parameters = json!({"date": "2024-12-18", "full_refresh": true, "tables": ["orders"]});

    let run = backend
        .trigger(
            &vandelay,
            &trigger_of(&pipeline).with_conf(conf(parameters.clone())),
        )
        .await
        .unwrap();
    assert_eq!(Value::Object(run.conf.clone().into_map()), parameters);
    let seen = airflow
        .wait_until_finished(VANDELAY_PARAMS, run.id.as_str())
        .await;
    assert_eq!(seen["state"], "success", "{seen}");

    // What the task was given: the client's conf and Maestro's block beside
    // it, and the declared params resolved from the conf.
    let returned = airflow
        .returned(VANDELAY_PARAMS, run.id.as_str(), ECHO_TASK)
        .await;
    let mut given = returned["conf"].clone();
    assert_eq!(given["maestro"]["customer_id"], "vandelay");
    assert!(given["maestro"]["trigger_id"].is_string(), "{returned}");
    given.as_object_mut().unwrap().remove("maestro");
    assert_eq!(given, parameters);
    assert_eq!(
        returned["params"],
        json!({"date": "2024-12-18", "full_refresh": true})
    );

    let read = backend
        .get_run(&vandelay, &pipeline, &run.id)
        .await
        .unwrap();
    assert_eq!(read.status, RunStatus::Success);
    assert_eq!(Value::Object(read.conf.into_map()), parameters);
    let listed = backend
        .list_runs(&vandelay, &pipeline, &RunQuery::default())
        .await
        .unwrap();
    let listed = listed
        .runs
        .iter()
        .find(|listed| listed.id == run.id)
        .unwrap();
    assert_eq!(Value::Object(listed.conf.clone().into_map()), parameters);
    airflow.set_paused(VANDELAY_PARAMS, true).await;
}

#[tokio::test]
async fn a_polling_run_watch_over_the_backend_sees_a_short_run_reach_success() {
    let airflow = Airflow::connect().await;
    let backend: Arc<dyn Orchestrator> = Arc::new(backend());
    let vandelay = ctx("vandelay");
    let pipeline = id(VANDELAY_PARAMS);
    airflow.set_paused(VANDELAY_PARAMS, false).await;
    let watch = PollingRunWatch::new(Arc::clone(&backend), Duration::from_millis(500));

    let run = backend
        .trigger(&vandelay, &trigger_of(&pipeline))
        .await
        .unwrap();
    let mut seen = vec![run.status];
    let mut last = run;
    let finished = tokio::time::timeout(RUN_DEADLINE, async {
        while !last.status.is_finished() {
            last = watch.changed(&vandelay, &last).await.unwrap();
            seen.push(last.status);
        }
        last
    })
    .await
    .expect("the run did not finish in time");

    assert_eq!(finished.status, RunStatus::Success, "{seen:?}");
    assert!(finished.conf.is_empty());
    // The DAG's defaults, since the conf gave none.
    let returned = airflow
        .returned(VANDELAY_PARAMS, finished.id.as_str(), ECHO_TASK)
        .await;
    assert_eq!(
        returned["params"],
        json!({"date": "2024-01-01", "full_refresh": false})
    );
    assert_eq!(watch.watched_runs(), 0);
    airflow.set_paused(VANDELAY_PARAMS, true).await;
}

/// The instant Airflow says the run's `status` began.
fn began(run: &Value, status: RunStatus) -> Timestamp {
    let field = match status {
        RunStatus::Queued => "queued_at",
        RunStatus::Running => "start_date",
        RunStatus::Success | RunStatus::Failed => "end_date",
    };
    let raw = run[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} of {run}"));
    chrono::DateTime::parse_from_rfc3339(raw)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn runs_triggered_in_airflow_and_through_the_backend_reach_the_feed_within_two_polls() {
    const POLL: Duration = Duration::from_secs(2);
    let airflow = Airflow::connect().await;
    let backend = Arc::new(backend());
    airflow.set_paused(ACME_ORDERS, false).await;
    let source = AirflowChanges::new(Arc::clone(&backend), POLL);

    // From now: whatever earlier tests left is not told.
    let (past, mut cursor) = source.changes(None).await.unwrap();
    assert!(past.is_empty(), "{past:?}");
    let (told, mut feed) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            let (changes, next) = source.changes(Some(cursor)).await.unwrap();
            let at = SystemClock.now();
            for change in changes {
                told.send((change, at)).unwrap();
            }
            cursor = next;
        }
    });

    // One run behind Maestro's back, one through it, and one of a DAG
    // visible to no one.
    let direct = airflow
        .trigger(ACME_ORDERS, json!({"origin": "airflow"}))
        .await;
    let direct = direct["dag_run_id"].as_str().unwrap().to_owned();
    let through = backend
        .trigger(&ctx("acme"), &trigger_of(&id(ACME_ORDERS)))
        .await
        .unwrap();
    let through = through.id.as_str().to_owned();
    let hidden = airflow.trigger(UNTAGGED, json!({})).await;
    let hidden = hidden["dag_run_id"].as_str().unwrap().to_owned();

    let mut seen: Vec<(domain::RunChange, Timestamp)> = Vec::new();
    let finished = |seen: &[(domain::RunChange, Timestamp)], run_id: &str| {
        seen.iter()
            .any(|(change, _)| change.run.id.as_str() == run_id && change.run.status.is_finished())
    };
    tokio::time::timeout(RUN_DEADLINE, async {
        while !(finished(&seen, &direct) && finished(&seen, &through)) {
            seen.push(feed.recv().await.expect("the poller stopped"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("both runs were not told finished: {seen:?}"));
    poller.abort();
    airflow.set_paused(ACME_ORDERS, true).await;

    assert!(
        seen.iter()
            .all(|(change, _)| change.run.id.as_str() != hidden),
        "a run of a DAG visible to no one was told"
    );
    let life = [RunStatus::Queued, RunStatus::Running, RunStatus::Success];
    for run_id in [&direct, &through] {
        let in_airflow = airflow.run(ACME_ORDERS, run_id).await;
        let changes: Vec<&(domain::RunChange, Timestamp)> = seen
            .iter()
            .filter(|(change, _)| change.run.id.as_str() == run_id.as_str())
            .collect();
        let statuses: Vec<RunStatus> = changes.iter().map(|(c, _)| c.run.status).collect();
        // Each status once, in the order of a run's life, ending SUCCESS
        // (a status shorter than a poll may be passed over).
        assert_eq!(
            statuses.last(),
            Some(&RunStatus::Success),
            "{run_id}: {statuses:?}"
        );
        let mut order = statuses
            .iter()
            .map(|s| life.iter().position(|l| l == s).unwrap());
        let mut previous = order.next().unwrap();
        for next in order {
            assert!(next > previous, "{run_id}: {statuses:?}");
            previous = next;
        }
        for (change, at) in changes {
            assert_eq!(change.customer.as_str(), "acme");
            assert_eq!(change.run.pipeline_id.as_str(), ACME_ORDERS);
            let late = (*at - began(&in_airflow, change.run.status))
                .to_std()
                .unwrap_or_default();
            eprintln!(
                "{run_id} {:?} told {late:?} after it happened",
                change.run.status
            );
            assert!(
                late <= 2 * POLL,
                "{run_id} {:?} was told {late:?} after it happened",
                change.run.status
            );
        }
        let last = &seen
            .iter()
            .rfind(|(change, _)| change.run.id.as_str() == run_id.as_str())
            .unwrap()
            .0
            .run;
        let expected = if *run_id == direct {
            json!({"origin": "airflow"})
        } else {
            json!({})
        };
        assert_eq!(Value::Object(last.conf.as_map().clone()), expected);
    }
}

/// Reads the run through the backend until it is in `status`.
async fn wait_for_status(
    backend: &AirflowBackend,
    ctx: &RequestContext,
    run: &Run,
    status: RunStatus,
) {
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        let now = backend
            .get_run(ctx, &run.pipeline_id, &run.id)
            .await
            .unwrap();
        if now.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} is {:?}, not {status:?}",
            run.id,
            now.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_cancelled_running_run_ends_failed_with_the_cancel_trace_and_the_next_queued_run_starts()
{
    let airflow = Airflow::connect().await;
    let backend = backend();
    let vandelay = ctx("vandelay");
    let pipeline = id(VANDELAY_SLEEPER);
    airflow.set_paused(VANDELAY_SLEEPER, false).await;

    let running = backend
        .trigger(&vandelay, &trigger_of(&pipeline))
        .await
        .unwrap();
    let next = backend
        .trigger(&vandelay, &trigger_of(&pipeline))
        .await
        .unwrap();
    let last = backend
        .trigger(&vandelay, &trigger_of(&pipeline))
        .await
        .unwrap();
    airflow
        .wait_for_task_state(VANDELAY_SLEEPER, running.id.as_str(), SLEEP_TASK, "running")
        .await;
    assert_eq!(
        backend
            .get_run(&vandelay, &pipeline, &last.id)
            .await
            .unwrap()
            .status,
        RunStatus::Queued
    );

    // A queued run: failed at once, and it never starts.
    let cancelled = backend
        .cancel_run(&vandelay, &pipeline, &last.id)
        .await
        .unwrap();
    assert_eq!(cancelled.status, RunStatus::Failed);
    assert_eq!(cancelled.trace.as_deref(), Some(Run::CANCELLED_TRACE));

    // The running one: failed with the cancel trace, its task stopped, and
    // the queued run behind it starts.
    let started = Instant::now();
    let cancelled = backend
        .cancel_run(&vandelay, &pipeline, &running.id)
        .await
        .unwrap();
    assert_eq!(cancelled.id, running.id);
    assert_eq!(cancelled.status, RunStatus::Failed);
    assert_eq!(cancelled.trace.as_deref(), Some(Run::CANCELLED_TRACE));
    let seen = airflow.run(VANDELAY_SLEEPER, running.id.as_str()).await;
    assert_eq!(seen["state"], "failed");
    assert_eq!(seen["note"], Run::CANCELLED_TRACE);
    assert_eq!(
        airflow
            .task_state(VANDELAY_SLEEPER, running.id.as_str(), SLEEP_TASK)
            .await
            .as_deref(),
        Some("failed")
    );
    wait_for_status(&backend, &vandelay, &next, RunStatus::Running).await;
    println!(
        "the next run started {:?} after the cancel",
        started.elapsed()
    );
    let read = backend
        .get_run(&vandelay, &pipeline, &running.id)
        .await
        .unwrap();
    assert_eq!(read.status, RunStatus::Failed);
    assert_eq!(read.trace.as_deref(), Some(Run::CANCELLED_TRACE));

    // Finished runs are not changed again; unknown runs and other
    // customers are refused.
    let err = backend
        .cancel_run(&vandelay, &pipeline, &running.id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CancelRunError::AlreadyFinished {
                status: RunStatus::Failed,
                ..
            }
        ),
        "{err:?}"
    );
    let unknown = RunId::parse("manual__2020-01-01T00:00:00.000000+00:00").unwrap();
    assert!(matches!(
        backend.cancel_run(&vandelay, &pipeline, &unknown).await,
        Err(CancelRunError::RunNotFound { .. })
    ));
    assert!(matches!(
        backend.cancel_run(&ctx("acme"), &pipeline, &next.id).await,
        Err(CancelRunError::PipelineNotFound(_))
    ));

    // The run that started is cancelled too, so that nothing is left
    // sleeping; the queued run cancelled first never ran.
    let cancelled = backend
        .cancel_run(&vandelay, &pipeline, &next.id)
        .await
        .unwrap();
    assert_eq!(cancelled.status, RunStatus::Failed);
    let never = airflow.run(VANDELAY_SLEEPER, last.id.as_str()).await;
    assert_eq!(never["state"], "failed");
    assert!(never["start_date"].is_null(), "{never}");
    // Airflow skips the tasks of a run failed before they ran.
    assert_eq!(
        airflow
            .task_state(VANDELAY_SLEEPER, last.id.as_str(), SLEEP_TASK)
            .await
            .as_deref(),
        Some("skipped")
    );
    airflow.set_paused(VANDELAY_SLEEPER, true).await;
}

/// Runs `call`, and returns the kind of its backend failure (`None` for a
/// success) and how long it took.
async fn timed<T, E>(
    call: impl Future<Output = Result<T, E>>,
    kind: impl Fn(E) -> Option<BackendErrorKind>,
) -> (Option<BackendErrorKind>, Duration) {
    let started = Instant::now();
    let result = call.await;
    (result.err().and_then(kind), started.elapsed())
}

/// Every port call, with the kind of its failure and how long it took.
async fn failures(
    backend: &AirflowBackend,
) -> Vec<(&'static str, Option<BackendErrorKind>, Duration)> {
    let acme = ctx("acme");
    let orders = id(ACME_ORDERS);
    let run = RunId::parse("manual__2024-12-18T10:30:00+00:00").unwrap();
    let mut failures = Vec::new();
    let (kind, took) = timed(backend.get(&acme, &orders), |err| match err {
        GetPipelineError::Backend(err) => Some(err.kind()),
        _ => None,
    })
    .await;
    failures.push(("get", kind, took));
    let (kind, took) = timed(backend.list(&acme), |err| Some(err.kind())).await;
    failures.push(("list", kind, took));
    let (kind, took) = timed(backend.set_paused(&acme, &orders, true), |err| match err {
        SetPausedError::Backend(err) => Some(err.kind()),
        _ => None,
    })
    .await;
    failures.push(("pause", kind, took));
    let (kind, took) = timed(
        backend.trigger(&acme, &trigger_of(&orders)),
        |err| match err {
            ExecuteError::Backend(err) => Some(err.kind()),
            _ => None,
        },
    )
    .await;
    failures.push(("trigger", kind, took));
    let (kind, took) = timed(
        backend.list_runs(&acme, &orders, &RunQuery::default()),
        |err| match err {
            ListRunsError::Backend(err) => Some(err.kind()),
            _ => None,
        },
    )
    .await;
    failures.push(("list runs", kind, took));
    let (kind, took) = timed(backend.get_run(&acme, &orders, &run), |err| match err {
        GetRunError::Backend(err) => Some(err.kind()),
        _ => None,
    })
    .await;
    failures.push(("get run", kind, took));
    let (kind, took) = timed(backend.cancel_run(&acme, &orders, &run), |err| match err {
        CancelRunError::Backend(err) => Some(err.kind()),
        _ => None,
    })
    .await;
    failures.push(("cancel run", kind, took));
    let (kind, took) = timed(backend.health(), |err| Some(err.kind())).await;
    failures.push(("health", kind, took));
    failures
}

#[tokio::test]
async fn airflow_stopped_mid_test_gives_timeouts_then_unavailable() {
    let _airflow = Airflow::connect().await;
    let timeout = Duration::from_secs(1);
    let backend = backend_with_timeout(timeout);
    backend.health().await.unwrap();
    backend.get(&ctx("acme"), &id(ACME_ORDERS)).await.unwrap();

    // Frozen: connections are accepted by the kernel, and nothing answers.
    signal_airflow("-STOP");
    for (call, kind, took) in failures(&backend).await {
        assert_eq!(kind, Some(BackendErrorKind::Timeout), "{call}");
        assert!(took < timeout + SLACK, "{call} took {took:?}");
    }

    // Gone: connections are refused.
    signal_airflow("-KILL");
    let url = env("MAESTRO_E2E_AIRFLOW_URL");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/api/v2/version")).await.is_ok() {
        assert!(Instant::now() < deadline, "Airflow still answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (call, kind, took) in failures(&backend).await {
        assert_eq!(kind, Some(BackendErrorKind::Unavailable), "{call}");
        assert!(took < timeout + SLACK, "{call} took {took:?}");
    }
}
