//! Runs over a fake Airflow: trigger (with its retry and conflict rules),
//! listing and fetching runs, and health.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use domain::{BackendErrorKind, Orchestrator, RunId, RunQuery, RunStatus};

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::common::{
    self, ACME_DAG, Endpoint, Fake, Op, Outcome, RUN_ID, RUN_ID_IN_PATH, backend, ctx, dag,
    dag_run, get_run_outcome, id, perform, query, run_id, trigger_of,
};

fn body(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

#[tokio::test]
async fn trigger_posts_our_run_id_with_no_logical_date_and_the_caller_in_conf() {
    let fake = Fake::happy().await;

    let run = backend(&fake.uri())
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.pipeline_id.as_str(), ACME_DAG);
    let posts = fake.requests(Endpoint::RunPost).await;
    assert_eq!(posts.len(), 1);
    let sent = body(&posts[0]);
    assert_eq!(sent["dag_run_id"], run.id.as_str());
    assert!(sent["logical_date"].is_null());
    assert!(sent.as_object().unwrap().contains_key("logical_date"));
    assert_eq!(sent["conf"]["maestro"]["customer_id"], "acme");
    assert_eq!(sent["conf"]["maestro"]["sub"], "alice");
    assert_eq!(sent["conf"]["maestro"]["request_id"], "req-42");
    assert!(sent["conf"]["maestro"]["trigger_id"].is_string());

    let text = run.id.as_str();
    let instant = text.strip_prefix("manual__").unwrap();
    assert!(instant.ends_with("+00:00"), "{text}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(instant).is_ok(),
        "{text}"
    );
}

#[tokio::test]
async fn triggers_at_the_same_moment_get_distinct_increasing_run_ids() {
    let fake = Fake::happy().await;
    let backend = Arc::new(backend(&fake.uri()));

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                backend
                    .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
                    .await
                    .unwrap()
                    .id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }

    let distinct: HashSet<&RunId> = ids.iter().collect();
    assert_eq!(distinct.len(), 50);
    let mut posted: Vec<String> = fake
        .requests(Endpoint::RunPost)
        .await
        .iter()
        .map(|request| body(request)["dag_run_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = posted.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 50);
    posted.sort();
    let mut returned: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
    returned.sort();
    assert_eq!(posted, returned);
}

#[tokio::test]
async fn a_paused_pipeline_is_refused_before_anything_is_sent() {
    let fake = Fake::start().await;
    fake.mount_dag(dag(ACME_DAG, &["customer:acme"], true))
        .await;
    fake.mount_trigger_echo(ACME_DAG).await;

    assert_eq!(
        perform(&backend(&fake.uri()), Op::Trigger).await,
        Outcome::Paused
    );
    assert!(fake.requests(Endpoint::RunPost).await.is_empty());
}

/// Mounts on `fake` acme's trigger endpoint, answering each post's body
/// with `post`, and the lookup of any of its runs, answering with `lookup`:
/// both see the state they share, which starts empty and is returned.
async fn mount_trigger_and_lookup<T: Send + 'static>(
    fake: &Fake,
    post: impl Fn(&Value, &mut Option<T>) -> ResponseTemplate + Send + Sync + 'static,
    lookup: impl Fn(&Option<T>) -> ResponseTemplate + Send + Sync + 'static,
) -> Arc<Mutex<Option<T>>> {
    let state: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let posted = Arc::clone(&state);
    Mock::given(method("POST"))
        .and(path(format!("/api/v2/dags/{ACME_DAG}/dagRuns")))
        .respond_with(move |request: &Request| post(&body(request), &mut posted.lock().unwrap()))
        .mount(&fake.server)
        .await;
    let looked_up = Arc::clone(&state);
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(format!(
            "^/api/v2/dags/{ACME_DAG}/dagRuns/.+$"
        )))
        .respond_with(move |_: &Request| lookup(&looked_up.lock().unwrap()))
        .mount(&fake.server)
        .await;
    state
}

/// A trigger endpoint whose first answer is lost (a proxy answers 502 after
/// Airflow created the run), and which answers 409 to the same id after.
#[tokio::test]
async fn a_retry_after_a_lost_answer_gets_409_for_our_own_id_and_succeeds_with_one_run() {
    let fake = Fake::start().await;
    fake.mount_dag(common::acme_dag()).await;
    mount_trigger_and_lookup(
        &fake,
        |sent, created: &mut Option<Value>| match created.as_ref() {
            None => {
                *created = Some(dag_run(
                    ACME_DAG,
                    sent["dag_run_id"].as_str().unwrap(),
                    "running",
                    sent["conf"].clone(),
                ));
                ResponseTemplate::new(502).set_body_string("Bad Gateway")
            }
            Some(_) => ResponseTemplate::new(409).set_body_json(json!({
                "detail": {"reason": "Unique constraint violation", "statement": "hidden"}
            })),
        },
        |created| match created {
            Some(run) => ResponseTemplate::new(200).set_body_json(run.clone()),
            None => ResponseTemplate::new(404),
        },
    )
    .await;

    let run = backend(&fake.uri())
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let posts = fake.requests(Endpoint::RunPost).await;
    assert_eq!(posts.len(), 2);
    assert_eq!(body(&posts[0])["dag_run_id"], body(&posts[1])["dag_run_id"]);
    assert_eq!(body(&posts[0])["dag_run_id"], run.id.as_str());
    assert_eq!(run.status, RunStatus::Running);
}

#[tokio::test]
async fn a_409_for_another_triggers_run_takes_the_next_id_instead_of_claiming_that_run() {
    let fake = Fake::start().await;
    fake.mount_dag(common::acme_dag()).await;
    let taken = mount_trigger_and_lookup(
        &fake,
        |sent, taken: &mut Option<String>| {
            if taken.is_none() {
                *taken = Some(sent["dag_run_id"].as_str().unwrap().to_owned());
                return ResponseTemplate::new(409).set_body_json(json!({"detail": "conflict"}));
            }
            ResponseTemplate::new(200).set_body_json(dag_run(
                ACME_DAG,
                sent["dag_run_id"].as_str().unwrap(),
                "queued",
                sent["conf"].clone(),
            ))
        },
        |taken| {
            let id = taken.clone().unwrap();
            ResponseTemplate::new(200).set_body_json(dag_run(
                ACME_DAG,
                &id,
                "success",
                json!({"maestro": {"trigger_id": "someone-else"}}),
            ))
        },
    )
    .await;

    let run = backend(&fake.uri())
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let first = taken.lock().unwrap().clone().unwrap();
    assert_ne!(run.id.as_str(), first);
    assert!(run.id.as_str() > first.as_str());
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(fake.requests(Endpoint::RunPost).await.len(), 2);
}

#[tokio::test]
async fn list_runs_pushes_limit_offset_order_and_status_down_to_airflow() {
    let fake = Fake::happy().await;
    let query_ = RunQuery::new(Some(2), Some(1), Some(RunStatus::Failed)).unwrap();

    let page = backend(&fake.uri())
        .list_runs(&ctx("acme"), &id(ACME_DAG), &query_)
        .await
        .unwrap();

    assert_eq!(page.total, 1);
    assert!(page.runs.is_empty());
    let requests = fake.requests(Endpoint::RunList).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(query(request, "limit").as_deref(), Some("2"));
    assert_eq!(query(request, "offset").as_deref(), Some("1"));
    assert_eq!(query(request, "order_by").as_deref(), Some("-id"));
    assert_eq!(query(request, "state").as_deref(), Some("failed"));
}

#[tokio::test]
async fn list_runs_maps_the_runs_newest_first_with_the_total() {
    let fake = Fake::happy().await;

    let page = backend(&fake.uri())
        .list_runs(&ctx("acme"), &id(ACME_DAG), &RunQuery::default())
        .await
        .unwrap();

    assert_eq!(page.total, 3);
    let statuses: Vec<RunStatus> = page.runs.iter().map(|run| run.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Running, RunStatus::Failed, RunStatus::Success]
    );
    assert_eq!(page.runs[2].id.as_str(), RUN_ID);
    assert!(page.runs[1].trace.is_some());
    assert!(page.runs[0].trace.is_none());
}

#[tokio::test]
async fn a_page_larger_than_airflows_cap_is_filled_from_several_airflow_pages() {
    let fake = Fake::start().await;
    fake.mount_dag(common::acme_dag()).await;
    let runs: Vec<Value> = (0..260)
        .rev()
        .map(|n| {
            dag_run(
                ACME_DAG,
                &format!("scheduled__{n:04}"),
                "success",
                json!({}),
            )
        })
        .collect();
    fake.mount_runs(ACME_DAG, runs).await;

    let page = backend(&fake.uri())
        .list_runs(
            &ctx("acme"),
            &id(ACME_DAG),
            &RunQuery::new(Some(250), Some(5), None).unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(page.total, 260);
    assert_eq!(page.runs.len(), 250);
    assert_eq!(page.runs[0].id.as_str(), "scheduled__0254");
    assert_eq!(page.runs[249].id.as_str(), "scheduled__0005");
    let offsets: Vec<String> = fake
        .requests(Endpoint::RunList)
        .await
        .iter()
        .map(|request| query(request, "offset").unwrap())
        .collect();
    assert_eq!(offsets, ["5", "105", "205"]);
}

#[tokio::test]
async fn a_page_past_the_end_is_empty_with_the_total() {
    let fake = Fake::happy().await;
    let page = backend(&fake.uri())
        .list_runs(
            &ctx("acme"),
            &id(ACME_DAG),
            &RunQuery::new(Some(10), Some(50), None).unwrap(),
        )
        .await
        .unwrap();
    assert!(page.runs.is_empty());
    assert_eq!(page.total, 3);
}

#[tokio::test]
async fn get_run_asks_for_the_percent_encoded_id() {
    let fake = Fake::happy().await;

    let run = backend(&fake.uri())
        .get_run(&ctx("acme"), &id(ACME_DAG), &run_id())
        .await
        .unwrap();

    assert_eq!(run.id.as_str(), RUN_ID);
    assert_eq!(run.status, RunStatus::Success);
    assert_eq!(
        domain::format_timestamp(&run.created_at),
        "2026-11-29T08:57:18.539852+00:00"
    );
    assert_eq!(
        domain::format_timestamp(&run.updated_at),
        "2026-11-29T08:57:33.000000+00:00"
    );
    let requests = fake.requests(Endpoint::RunGet).await;
    assert_eq!(
        requests[0].url.path(),
        format!("/api/v2/dags/{ACME_DAG}/dagRuns/{RUN_ID_IN_PATH}")
    );
}

#[tokio::test]
async fn an_unknown_run_of_a_visible_pipeline_is_run_not_found() {
    let fake = Fake::happy().await;
    let unknown = RunId::parse("manual__1999-01-01T00:00:00+00:00").unwrap();
    let outcome =
        get_run_outcome(&backend(&fake.uri()), &ctx("acme"), &id(ACME_DAG), &unknown).await;
    assert_eq!(outcome, Outcome::RunNotFound);
}

#[tokio::test]
async fn the_run_ids_dot_and_dot_dot_are_never_put_in_a_path_and_are_not_found() {
    let fake = Fake::happy().await;
    let backend = backend(&fake.uri());
    let dots = [".", ".."].map(|raw| RunId::parse(raw).unwrap());

    for run in &dots {
        let mine = get_run_outcome(&backend, &ctx("acme"), &id(ACME_DAG), run).await;
        assert_eq!(mine, Outcome::RunNotFound, "{run}");
        let theirs = get_run_outcome(&backend, &ctx("globex"), &id(ACME_DAG), run).await;
        assert_eq!(theirs, Outcome::NotFound, "{run}");
    }

    // Only the visibility reads reached Airflow, one per call: nothing
    // under dagRuns, and nothing that a dot segment normalised into
    // another address (the run list, the DAG, its parent).
    let paths: Vec<String> = fake
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|request| format!("{} {}", request.method, request.url.path()))
        .collect();
    assert_eq!(
        paths,
        vec![format!("GET /api/v2/dags/{ACME_DAG}"); 2 * dots.len()]
    );
}

#[tokio::test]
async fn a_run_of_another_customers_pipeline_is_pipeline_not_found_even_when_it_exists() {
    let fake = Fake::happy().await;
    let outcome = get_run_outcome(
        &backend(&fake.uri()),
        &ctx("globex"),
        &id(ACME_DAG),
        &run_id(),
    )
    .await;
    assert_eq!(outcome, Outcome::NotFound);
}

#[tokio::test]
async fn an_unknown_run_state_is_an_upstream_error() {
    let fake = Fake::happy().await;
    fake.fail(
        Endpoint::RunGet,
        ResponseTemplate::new(200).set_body_json(dag_run(
            ACME_DAG,
            RUN_ID,
            "up_for_retry",
            json!({}),
        )),
    )
    .await;
    assert_eq!(
        perform(&backend(&fake.uri()), Op::GetRun).await,
        Outcome::Failed(BackendErrorKind::Upstream)
    );
}

#[tokio::test]
async fn health_needs_no_token_and_fails_when_the_metadata_database_is_unhealthy() {
    let fake = Fake::happy().await;
    assert_eq!(
        perform(&backend(&fake.uri()), Op::Health).await,
        Outcome::Done
    );
    let requests = fake.requests(Endpoint::Health).await;
    assert!(!requests[0].headers.contains_key("authorization"));

    let sick = Fake::start().await;
    sick.mount_health("unhealthy").await;
    assert_eq!(
        perform(&backend(&sick.uri()), Op::Health).await,
        Outcome::Failed(BackendErrorKind::Upstream)
    );
}
