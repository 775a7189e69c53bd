//! The feed's source over a fake Airflow that keeps its DAG runs as
//! Airflow's database does: each with an `updated_at` that the answers do
//! not show, moved by every write (a status change, the scheduler's
//! bookkeeping, a note), and served by `GET /api/v2/dags/~/dagRuns` with
//! `updated_at_gte`, `order_by=updated_at` and keyset `cursor` pages, as
//! Airflow 3.3 serves them.
//!
//! The fake's clock is its own (Airflow's), moved by the tests; the
//! source's poll interval is zero, so no test waits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapter_airflow::AirflowChanges;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use domain::{RunChange, RunChangeSource, RunStatus, SourceCursor};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::common::{ACME_DAG, Fake, GLOBEX_DAG, UNTAGGED_DAG, acme_dag, backend, dag, query};

/// A DAG tagged for two customers.
const TWO_CUSTOMERS_DAG: &str = "4e66d05c_66a6_4b6a_8bbe_b6fb5fbc2c30";
/// A DAG of acme's whose id is not a UUID.
const NOT_A_UUID_DAG: &str = "acme_nightly_export";

/// Airflow's DAG runs as its database has them.
#[derive(Debug)]
struct Db {
    /// Airflow's clock.
    now: DateTime<Utc>,
    /// Each run, with its `updated_at`, in the order they were made.
    runs: Vec<(Value, DateTime<Utc>)>,
    /// The most runs a page holds (`[api] maximum_page_limit`).
    page_cap: usize,
    /// Whether Airflow is down (every request answered 503).
    down: bool,
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw)
        .unwrap()
        .with_timezone(&Utc)
}

/// The fake: Airflow's runs, served as Airflow serves them.
struct Airflow {
    fake: Fake,
    db: Arc<Mutex<Db>>,
}

impl Airflow {
    /// Airflow at 2026-11-29T09:00:00Z with the DAGs of acme, globex, one
    /// untagged, one tagged twice and one whose id is no UUID.
    async fn start() -> Self {
        let fake = Fake::start().await;
        for dag in [
            acme_dag(),
            dag(GLOBEX_DAG, &["customer:globex"], false),
            dag(UNTAGGED_DAG, &[], false),
            dag(
                TWO_CUSTOMERS_DAG,
                &["customer:acme", "customer:globex"],
                false,
            ),
            dag(NOT_A_UUID_DAG, &["customer:acme"], false),
        ] {
            fake.mount_dag(dag).await;
        }
        let db = Arc::new(Mutex::new(Db {
            now: parse("2026-11-29T09:00:00Z"),
            runs: Vec::new(),
            page_cap: 100,
            down: false,
        }));
        let served = Arc::clone(&db);
        Mock::given(method("GET"))
            .and(path("/api/v2/dags/~/dagRuns"))
            .respond_with(move |request: &Request| serve_runs(&served.lock().unwrap(), request))
            .with_priority(2)
            .mount(&fake.server)
            .await;
        Self { fake, db }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap()
    }

    /// Moves Airflow's clock.
    fn advance(&self, seconds: f64) {
        let mut db = self.db();
        db.now += TimeDelta::microseconds((seconds * 1e6) as i64);
    }

    /// A run made now, queued, with `conf`.
    fn trigger(&self, dag_id: &str, run_id: &str, conf: Value) {
        let mut db = self.db();
        let now = db.now;
        let run = json!({
            "dag_run_id": run_id,
            "dag_id": dag_id,
            "logical_date": null,
            "queued_at": stamp(now),
            "start_date": null,
            "end_date": null,
            "run_after": stamp(now),
            "last_scheduling_decision": null,
            "run_type": "manual",
            "state": "queued",
            "conf": conf,
            "note": null,
        });
        db.runs.push((run, now));
    }

    /// Changes one run with `change`, which moves its `updated_at` to now.
    fn write(&self, run_id: &str, change: impl FnOnce(&mut Value, String)) {
        let mut db = self.db();
        let now = db.now;
        let (run, updated_at) = db
            .runs
            .iter_mut()
            .find(|(run, _)| run["dag_run_id"] == run_id)
            .unwrap();
        change(run, stamp(now));
        *updated_at = now;
    }

    /// The scheduler starts the run.
    fn start_run(&self, run_id: &str) {
        self.write(run_id, |run, now| {
            run["state"] = json!("running");
            run["start_date"] = json!(now);
            run["last_scheduling_decision"] = json!(now);
        });
    }

    /// The scheduler's loop looks at the run: nothing but its bookkeeping.
    fn schedule(&self, run_id: &str) {
        self.write(run_id, |run, now| {
            run["last_scheduling_decision"] = json!(now);
        });
    }

    /// The run ends in `state`.
    fn finish(&self, run_id: &str, state: &str) {
        self.write(run_id, |run, now| {
            run["state"] = json!(state);
            run["end_date"] = json!(now);
        });
    }

    /// Someone writes a note on the run.
    fn note(&self, run_id: &str) {
        self.write(run_id, |run, _| run["note"] = json!("looked at"));
    }

    /// The `~/dagRuns` requests received.
    async fn run_requests(&self) -> Vec<Request> {
        self.fake
            .server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|request| request.url.path() == "/api/v2/dags/~/dagRuns")
            .collect()
    }

    /// The requests for one DAG.
    async fn dag_reads(&self) -> usize {
        self.fake
            .server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|request| {
                request.url.path().starts_with("/api/v2/dags/")
                    && !request.url.path().contains("dagRuns")
            })
            .count()
    }

    fn source(&self) -> AirflowChanges {
        AirflowChanges::new(Arc::new(backend(&self.fake.uri())), Duration::ZERO)
    }
}

/// `GET /api/v2/dags/~/dagRuns` as Airflow 3.3 answers it: filtered on
/// `updated_at_gte`, ordered on `updated_at` (then the row id), paged by
/// `limit` and `offset` or, with `cursor`, by keyset tokens (here the
/// position, which only the fake reads).
fn serve_runs(db: &Db, request: &Request) -> ResponseTemplate {
    if db.down {
        return ResponseTemplate::new(503).set_body_string("Service Unavailable");
    }
    let low = query(request, "updated_at_gte").map(|raw| parse(&raw));
    let mut rows: Vec<(usize, &Value, DateTime<Utc>)> = db
        .runs
        .iter()
        .enumerate()
        .filter(|(_, (_, updated_at))| low.is_none_or(|low| *updated_at >= low))
        .map(|(id, (run, updated_at))| (id, run, *updated_at))
        .collect();
    rows.sort_by_key(|(id, _, updated_at)| (*updated_at, *id));
    match query(request, "order_by").as_deref() {
        Some("updated_at") => {}
        Some("-updated_at") => rows.reverse(),
        other => panic!("the source asked for the order {other:?}"),
    }
    let limit: usize = query(request, "limit").map_or(50, |limit| limit.parse().unwrap());
    let limit = limit.min(db.page_cap);
    let cursor = query(request, "cursor");
    let start = match cursor.as_deref() {
        None | Some("") => 0,
        Some(token) => token.strip_prefix("at-").unwrap().parse().unwrap(),
    };
    let page: Vec<&Value> = rows
        .iter()
        .skip(start)
        .take(limit)
        .map(|row| row.1)
        .collect();
    let next = start + page.len();
    let next_cursor = (cursor.is_some() && next < rows.len()).then(|| format!("at-{next}"));
    ResponseTemplate::new(200).set_body_json(json!({
        "dag_runs": page,
        "total_entries": rows.len(),
        "total_entries_limit": cursor.as_ref().map(|_| 50_000),
        "next_cursor": next_cursor,
        "previous_cursor": null,
    }))
}

/// What a poll told: (customer, pipeline, run, status).
fn told(changes: &[RunChange]) -> Vec<(String, String, String, RunStatus)> {
    changes
        .iter()
        .map(|change| {
            (
                change.customer.as_str().to_owned(),
                change.run.pipeline_id.as_str().to_owned(),
                change.run.id.as_str().to_owned(),
                change.run.status,
            )
        })
        .collect()
}

fn acme(run: &str, status: RunStatus) -> (String, String, String, RunStatus) {
    (
        "acme".to_owned(),
        ACME_DAG.to_owned(),
        run.to_owned(),
        status,
    )
}

const R1: &str = "manual__2026-11-29T09:00:00.000000+00:00";
const R2: &str = "manual__2026-11-29T09:00:05.000000+00:00";
const R3: &str = "manual__2026-11-29T09:00:09.000000+00:00";

/// One poll from `cursor`, its changes as [`told`] reads them.
async fn poll(
    source: &AirflowChanges,
    cursor: Option<SourceCursor>,
) -> (Vec<(String, String, String, RunStatus)>, SourceCursor) {
    let (changes, cursor) = source.changes(cursor).await.unwrap();
    (told(&changes), cursor)
}

#[tokio::test]
async fn without_a_cursor_the_source_starts_from_now_and_tells_nothing_of_the_past() {
    let airflow = Airflow::start().await;
    airflow.trigger(ACME_DAG, R1, json!({}));
    airflow.advance(1.0);
    airflow.start_run(R1);
    airflow.advance(1.0);
    airflow.trigger(ACME_DAG, R2, json!({}));
    airflow.advance(1.0);
    let source = airflow.source();

    let (first, cursor) = poll(&source, None).await;
    assert_eq!(first, []);

    // The scheduler looks at the past's runs: still nothing to tell.
    airflow.advance(1.0);
    airflow.schedule(R1);
    let (second, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(second, []);

    // What happens from now on is told.
    airflow.advance(1.0);
    airflow.finish(R1, "success");
    airflow.trigger(ACME_DAG, R3, json!({}));
    let (third, _) = poll(&source, Some(cursor)).await;
    assert_eq!(
        third,
        [acme(R1, RunStatus::Success), acme(R3, RunStatus::Queued)]
    );
}

#[tokio::test]
async fn an_airflow_without_runs_tells_every_run_made_after_the_first_poll() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (first, cursor) = poll(&source, None).await;
    assert_eq!(first, []);
    airflow.advance(1.0);
    airflow.trigger(ACME_DAG, R1, json!({}));
    let (second, _) = poll(&source, Some(cursor)).await;
    assert_eq!(second, [acme(R1, RunStatus::Queued)]);
}

#[tokio::test]
async fn runs_appearing_and_changing_across_polls_are_told_once_per_status() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;

    airflow.advance(1.0);
    airflow.trigger(
        ACME_DAG,
        R1,
        json!({"date": "2024-12-18", "maestro": {"trigger_id": "t-1"}}),
    );
    let (changes, cursor) = source.changes(Some(cursor)).await.unwrap();
    assert_eq!(told(&changes), [acme(R1, RunStatus::Queued)]);
    // The run as `get_run` maps it: the conf without Maestro's block.
    let run = &changes[0].run;
    assert_eq!(
        Value::Object(run.conf.as_map().clone()),
        json!({"date": "2024-12-18"})
    );
    assert_eq!(stamp(run.created_at), "2026-11-29T09:00:01.000000Z");

    // Nothing happened: nothing told.
    let (quiet, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(quiet, []);

    airflow.advance(1.0);
    airflow.start_run(R1);
    let (started, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(started, [acme(R1, RunStatus::Running)]);

    // The scheduler's loops move `updated_at` but not the status.
    for _ in 0..3 {
        airflow.advance(1.0);
        airflow.schedule(R1);
    }
    let (bookkeeping, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(bookkeeping, []);

    airflow.advance(1.0);
    airflow.finish(R1, "success");
    airflow.advance(1.0);
    airflow.trigger(GLOBEX_DAG, R2, json!({}));
    let (finished, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(
        finished,
        [
            acme(R1, RunStatus::Success),
            (
                "globex".to_owned(),
                GLOBEX_DAG.to_owned(),
                R2.to_owned(),
                RunStatus::Queued
            ),
        ]
    );

    // A note on the finished run, now and long after: not a change.
    airflow.advance(1.0);
    airflow.note(R1);
    let (noted, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(noted, []);
    airflow.advance(3600.0);
    airflow.trigger(GLOBEX_DAG, R3, json!({}));
    airflow.note(R1);
    let (later, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].2, R3);
    // Once the window has moved past it, the note is still no change.
    airflow.advance(1.0);
    airflow.note(R1);
    let (forgotten, _) = poll(&source, Some(cursor)).await;
    assert_eq!(forgotten, []);
}

#[tokio::test]
async fn runs_of_dags_visible_to_no_one_are_left_out() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;
    airflow.advance(1.0);
    for (i, dag_id) in [UNTAGGED_DAG, TWO_CUSTOMERS_DAG, NOT_A_UUID_DAG, ACME_DAG]
        .into_iter()
        .enumerate()
    {
        airflow.trigger(dag_id, &format!("manual__run-{i}"), json!({}));
    }
    let (changes, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(changes, [acme("manual__run-3", RunStatus::Queued)]);

    // Each DAG's owner was read once, and is not read again on the next
    // poll that sees its runs.
    let reads = airflow.dag_reads().await;
    assert_eq!(reads, 4);
    airflow.advance(1.0);
    airflow.start_run("manual__run-0");
    airflow.start_run("manual__run-3");
    let (changes, _) = poll(&source, Some(cursor)).await;
    assert_eq!(changes, [acme("manual__run-3", RunStatus::Running)]);
    assert_eq!(airflow.dag_reads().await, reads);
}

#[tokio::test]
async fn one_poll_follows_airflows_pages_to_the_end() {
    let airflow = Airflow::start().await;
    airflow.db().page_cap = 2;
    airflow.trigger(ACME_DAG, R1, json!({}));
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;
    let before = airflow.run_requests().await.len();

    let ids: Vec<String> = (0..5).map(|i| format!("manual__run-{i}")).collect();
    for id in &ids {
        airflow.advance(0.5);
        airflow.trigger(ACME_DAG, id, json!({}));
    }
    let (changes, _) = poll(&source, Some(cursor)).await;
    let expected: Vec<_> = ids.iter().map(|id| acme(id, RunStatus::Queued)).collect();
    assert_eq!(changes, expected);

    // Three pages of two (R1, older, still within the overlap), the first asked with an empty cursor and each
    // next one with the token the page before gave.
    let requests = airflow.run_requests().await.split_off(before);
    let cursors: Vec<Option<String>> = requests.iter().map(|r| query(r, "cursor")).collect();
    assert_eq!(
        cursors,
        [
            Some(String::new()),
            Some("at-2".to_owned()),
            Some("at-4".to_owned())
        ]
    );
    for request in &requests {
        assert_eq!(query(request, "order_by").as_deref(), Some("updated_at"));
        assert!(query(request, "updated_at_gte").is_some());
    }
}

#[tokio::test]
async fn a_source_restarted_from_the_cursor_repeats_nothing_and_misses_nothing() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;
    airflow.advance(1.0);
    airflow.trigger(ACME_DAG, R1, json!({}));
    airflow.trigger(ACME_DAG, R2, json!({}));
    let (told_first, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(told_first.len(), 2);
    drop(source);

    // Another process takes over with the cursor the log kept.
    airflow.advance(1.0);
    airflow.start_run(R1);
    let restarted = airflow.source();
    let (after_restart, cursor) = poll(&restarted, Some(cursor)).await;
    assert_eq!(after_restart, [acme(R1, RunStatus::Running)]);
    let (again, _) = poll(&restarted, Some(cursor.clone())).await;
    assert_eq!(again, []);

    // The same cursor given twice (an append that was lost) gives the same
    // changes again: the cursor alone decides.
    let third = airflow.source();
    let (same, _) = poll(&third, Some(cursor)).await;
    assert_eq!(same, []);
}

#[tokio::test]
async fn an_airflow_outage_then_recovery_loses_nothing_and_repeats_nothing() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;
    airflow.advance(1.0);
    airflow.trigger(ACME_DAG, R1, json!({}));
    let (queued, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(queued, [acme(R1, RunStatus::Queued)]);

    airflow.db().down = true;
    let err = source.changes(Some(cursor.clone())).await.unwrap_err();
    assert_eq!(err.kind(), domain::BackendErrorKind::Upstream);
    // While Maestro cannot see it, Airflow goes on.
    airflow.advance(1.0);
    airflow.start_run(R1);
    airflow.advance(30.0);
    airflow.finish(R1, "failed");
    airflow.trigger(ACME_DAG, R2, json!({}));
    assert!(source.changes(Some(cursor.clone())).await.is_err());
    airflow.db().down = false;

    // The holder asks again with the cursor it had.
    let (recovered, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(
        recovered,
        [acme(R1, RunStatus::Failed), acme(R2, RunStatus::Queued)]
    );
    let (again, _) = poll(&source, Some(cursor)).await;
    assert_eq!(again, []);
}

#[tokio::test]
async fn a_change_committed_late_within_the_overlap_is_still_told() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;
    airflow.advance(10.0);
    airflow.trigger(ACME_DAG, R1, json!({}));
    let (_, cursor) = poll(&source, Some(cursor)).await;

    // A run whose transaction began 20 s before the newest instant seen,
    // committed only now (or stamped by a scheduler whose clock is 20 s
    // behind).
    let late = {
        let mut db = airflow.db();
        db.now -= TimeDelta::seconds(20);
        db.now
    };
    airflow.trigger(ACME_DAG, R2, json!({}));
    airflow.db().now = late + TimeDelta::seconds(20);
    let (changes, _) = poll(&source, Some(cursor)).await;
    assert_eq!(changes, [acme(R2, RunStatus::Queued)]);
}

#[tokio::test]
async fn a_run_cleared_and_run_again_is_told_each_time() {
    let airflow = Airflow::start().await;
    let source = airflow.source();
    let (_, cursor) = poll(&source, None).await;
    airflow.advance(1.0);
    airflow.trigger(ACME_DAG, R1, json!({}));
    airflow.advance(1.0);
    airflow.start_run(R1);
    airflow.advance(1.0);
    airflow.finish(R1, "success");
    let (first, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(first, [acme(R1, RunStatus::Success)]);

    // Cleared in Airflow's UI: queued again, then it succeeds again.
    airflow.advance(1.0);
    airflow.write(R1, |run, now| {
        run["state"] = json!("queued");
        run["queued_at"] = json!(now);
        run["start_date"] = Value::Null;
        run["end_date"] = Value::Null;
    });
    let (cleared, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(cleared, [acme(R1, RunStatus::Queued)]);
    airflow.advance(1.0);
    airflow.start_run(R1);
    airflow.advance(1.0);
    airflow.finish(R1, "success");
    let (again, _) = poll(&source, Some(cursor)).await;
    assert_eq!(again, [acme(R1, RunStatus::Success)]);
}
