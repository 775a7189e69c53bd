//! Pipelines over a fake Airflow: get, list and pause/unpause, what they
//! send and how they read the answers.

use domain::{PipelineRepository, PipelineStatus, RunStatus};
use serde_json::json;
use wiremock::ResponseTemplate;

use crate::common::{
    self, ACME_DAG, Endpoint, Fake, GLOBEX_DAG, Op, Outcome, UNTAGGED_DAG, acme_dag, backend, ctx,
    dag, id, perform, perform_on, query,
};

#[tokio::test]
async fn get_maps_the_dag_details_to_the_pipeline() {
    let fake = Fake::happy().await;

    let pipeline = backend(&fake.uri())
        .get(&ctx("acme"), &id(ACME_DAG))
        .await
        .unwrap();

    assert_eq!(pipeline.id.as_str(), ACME_DAG);
    assert_eq!(pipeline.customer_id.as_str(), "acme");
    assert_eq!(pipeline.name, format!("DAG {ACME_DAG}"));
    assert_eq!(pipeline.description, "Loads the orders");
    assert_eq!(pipeline.cron.as_deref(), Some("0 3 * * *"));
    assert_eq!(pipeline.status, PipelineStatus::Active);
    assert_eq!(
        domain::format_timestamp(&pipeline.created_at),
        "2024-01-01T00:00:00.000000+00:00"
    );
    assert_eq!(
        domain::format_timestamp(&pipeline.updated_at),
        "2026-11-29T08:56:32.071165+00:00"
    );
    assert!(pipeline.jobs.is_empty());
}

#[tokio::test]
async fn get_sends_the_token_and_the_request_id() {
    let fake = Fake::happy().await;
    backend(&fake.uri())
        .get(&ctx("acme"), &id(ACME_DAG))
        .await
        .unwrap();

    let requests = fake.requests(Endpoint::DagDetails).await;
    assert_eq!(requests.len(), 1);
    let headers = &requests[0].headers;
    assert_eq!(
        headers["authorization"].to_str().unwrap(),
        format!("Bearer {}", common::FIXED_TOKEN)
    );
    assert_eq!(headers["x-request-id"].to_str().unwrap(), "req-42");
}

#[tokio::test]
async fn another_customers_dag_and_an_untagged_dag_look_exactly_like_a_missing_one() {
    let fake = Fake::happy().await;
    let backend = backend(&fake.uri());
    let missing = "00000000_0000_4000_8000_000000000000";
    for op in [
        Op::Get,
        Op::Pause,
        Op::Unpause,
        Op::Trigger,
        Op::ListRuns,
        Op::GetRun,
        Op::Cancel,
    ] {
        for (customer, pipeline) in [
            ("globex", ACME_DAG),
            ("acme", GLOBEX_DAG),
            ("acme", UNTAGGED_DAG),
            ("acme", missing),
        ] {
            assert_eq!(
                perform_on(&backend, op, customer, pipeline).await,
                Outcome::NotFound,
                "{op:?} of {pipeline} as {customer}"
            );
        }
    }
    // Nothing was changed, triggered or cancelled in Airflow.
    assert!(fake.requests(Endpoint::DagPatch).await.is_empty());
    assert!(fake.requests(Endpoint::RunPost).await.is_empty());
    let patched_runs = fake.server.received_requests().await.unwrap();
    assert!(
        !patched_runs
            .iter()
            .any(|request| request.method.as_str() == "PATCH"
                && request.url.path().contains("/dagRuns/"))
    );
}

#[tokio::test]
async fn a_dag_with_two_customer_tags_or_a_stale_dag_is_visible_to_no_one() {
    let fake = Fake::start().await;
    let mut stale = dag(GLOBEX_DAG, &["customer:acme"], false);
    stale["is_stale"] = json!(true);
    fake.mount_dag(dag(ACME_DAG, &["customer:acme", "customer:globex"], false))
        .await;
    fake.mount_dag(stale).await;
    let backend = backend(&fake.uri());
    for customer in ["acme", "globex"] {
        for pipeline in [ACME_DAG, GLOBEX_DAG] {
            assert_eq!(
                perform_on(&backend, Op::Get, customer, pipeline).await,
                Outcome::NotFound
            );
        }
    }
}

#[tokio::test]
async fn list_uses_the_tag_filter_and_keeps_only_the_callers_pipelines() {
    let fake = Fake::happy().await;

    let listed = backend(&fake.uri()).list(&ctx("acme")).await.unwrap();

    let ids: Vec<&str> = listed
        .iter()
        .map(|summary| summary.pipeline.id.as_str())
        .collect();
    assert_eq!(ids, [ACME_DAG]);
    assert_eq!(listed[0].last_status, Some(RunStatus::Success));
    let requests = fake.requests(Endpoint::DagList).await;
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(query(request, "tags").as_deref(), Some("customer:acme"));
    }
}

#[tokio::test]
async fn list_follows_the_pages_so_a_customer_with_1000_dags_is_listed_in_full() {
    let fake = Fake::start().await;
    let states = [
        None,
        Some("queued"),
        Some("running"),
        Some("success"),
        Some("failed"),
    ];
    let dags: Vec<_> = (0..1000)
        .map(|n| {
            let dag_id = format!("00000000_0000_4000_8000_{n:012}");
            (dag(&dag_id, &["customer:acme"], n % 2 == 0), states[n % 5])
        })
        .collect();
    fake.mount_dag_list(dags).await;

    let listed = backend(&fake.uri()).list(&ctx("acme")).await.unwrap();

    assert_eq!(listed.len(), 1000);
    for (n, summary) in listed.iter().enumerate() {
        assert_eq!(
            summary.pipeline.id.as_str(),
            format!("00000000_0000_4000_8000_{n:012}")
        );
        let expected = states[n % 5].map(|state| RunStatus::parse(state).unwrap());
        assert_eq!(summary.last_status, expected, "{n}");
        assert_eq!(summary.pipeline.status.is_paused(), n % 2 == 0);
    }
    // Ten pages of everything, and two pages for each of the four states:
    // a fixed number of requests per page, not one per DAG.
    assert_eq!(fake.requests(Endpoint::DagList).await.len(), 10 + 4 * 2);
}

#[tokio::test]
async fn list_of_a_customer_without_dags_is_empty() {
    let fake = Fake::happy().await;
    assert!(
        backend(&fake.uri())
            .list(&ctx("initech"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn pause_sends_is_paused_true_to_airflow() {
    let fake = Fake::happy().await;

    assert_eq!(
        perform(&backend(&fake.uri()), Op::Pause).await,
        Outcome::Done
    );

    let patches = fake.requests(Endpoint::DagPatch).await;
    assert_eq!(patches.len(), 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&patches[0].body).unwrap(),
        json!({"is_paused": true})
    );
    assert_eq!(
        query(&patches[0], "update_mask").as_deref(),
        Some("is_paused")
    );
}

#[tokio::test]
async fn unpause_sends_is_paused_false_to_airflow() {
    let fake = Fake::start().await;
    let paused = dag(ACME_DAG, &["customer:acme"], true);
    fake.mount_dag(paused.clone()).await;
    fake.mount_patch_echo(paused).await;

    assert_eq!(
        perform(&backend(&fake.uri()), Op::Unpause).await,
        Outcome::Done
    );

    let patches = fake.requests(Endpoint::DagPatch).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&patches[0].body).unwrap(),
        json!({"is_paused": false})
    );
}

#[tokio::test]
async fn pausing_a_paused_or_unpausing_an_active_pipeline_changes_nothing() {
    let fake = Fake::happy().await;
    let backend = backend(&fake.uri());
    assert_eq!(perform(&backend, Op::Unpause).await, Outcome::Unchanged);

    let paused = Fake::start().await;
    paused
        .mount_dag(dag(ACME_DAG, &["customer:acme"], true))
        .await;
    assert_eq!(
        perform(&common::backend(&paused.uri()), Op::Pause).await,
        Outcome::Unchanged
    );

    assert!(fake.requests(Endpoint::DagPatch).await.is_empty());
    assert!(paused.requests(Endpoint::DagPatch).await.is_empty());
}

#[tokio::test]
async fn a_patch_that_airflow_did_not_apply_is_an_upstream_error() {
    let fake = Fake::happy().await;
    fake.fail(
        Endpoint::DagPatch,
        ResponseTemplate::new(200).set_body_json(acme_dag()),
    )
    .await;
    assert_eq!(
        perform(&backend(&fake.uri()), Op::Pause).await,
        Outcome::Failed(domain::BackendErrorKind::Upstream)
    );
}

#[tokio::test]
async fn a_dag_that_does_not_import_is_in_error() {
    let fake = Fake::start().await;
    let mut broken = acme_dag();
    broken["has_import_errors"] = json!(true);
    broken["timetable_summary"] = json!(null);
    fake.mount_dag(broken).await;

    let pipeline = backend(&fake.uri())
        .get(&ctx("acme"), &id(ACME_DAG))
        .await
        .unwrap();

    assert_eq!(pipeline.status, PipelineStatus::Error);
    assert_eq!(pipeline.cron, None);
}
