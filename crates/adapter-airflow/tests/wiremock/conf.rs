//! Run parameters over a fake Airflow: the client's conf goes to Airflow
//! beside Maestro's audit block, comes back without it, and a refusal by
//! the DAG's declared `params` (Airflow's `ParamValidationError`, with the
//! body Airflow 3.3.2 answers) becomes `ConfRefused` naming the parameter
//! and quoting nothing of Airflow's.

use domain::{BackendErrorKind, ExecuteError, Orchestrator, RunConf, RunQuery};
use serde_json::{Value, json};
use wiremock::ResponseTemplate;

use crate::common::{
    ACME_DAG, Endpoint, Fake, RUN_ID, backend, ctx, dag_run, id, run_id, trigger_of,
};

fn conf(value: Value) -> RunConf {
    RunConf::parse(value).unwrap()
}

fn body(request: &wiremock::Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

/// What Airflow 3.3.2 answers (400) to a trigger whose `date` parameter,
/// declared `{"type": "string", "format": "date"}`, is given `2024-13-45`.
const DATE_REFUSED: &str = "Invalid input for param date: '2024-13-45' is not a 'date'\n\nFailed validating 'format' in schema:\n    {'type': 'string', 'format': 'date'}\n\nOn instance:\n    '2024-13-45'";

/// The same for a `full_refresh` declared boolean and given `"yes"`.
const FLAG_REFUSED: &str = "Invalid input for param full_refresh: 'yes' is not of type 'boolean'\n\nFailed validating 'type' in schema:\n    {'type': 'boolean'}\n\nOn instance:\n    'yes'";

#[tokio::test]
async fn the_conf_is_sent_beside_the_audit_block_and_the_run_answers_it_without_the_block() {
    let fake = Fake::happy().await;
    let parameters = json!({"date": "2024-12-18", "full_refresh": true, "tables": ["a", "b"]});

    let run = backend(&fake.uri())
        .trigger(
            &ctx("acme"),
            &trigger_of(ACME_DAG).with_conf(conf(parameters.clone())),
        )
        .await
        .unwrap();

    let sent = body(&fake.requests(Endpoint::RunPost).await[0]);
    let mut expected = parameters.clone();
    expected["maestro"] = sent["conf"]["maestro"].clone();
    assert_eq!(sent["conf"], expected);
    assert_eq!(sent["conf"]["maestro"]["customer_id"], "acme");
    assert!(sent["conf"]["maestro"]["trigger_id"].is_string());
    assert_eq!(Value::Object(run.conf.into_map()), parameters);
}

#[tokio::test]
async fn a_trigger_without_conf_sends_only_the_audit_block_and_answers_an_empty_conf() {
    let fake = Fake::happy().await;

    let run = backend(&fake.uri())
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap();

    let sent = body(&fake.requests(Endpoint::RunPost).await[0]);
    let keys: Vec<&String> = sent["conf"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["maestro"]);
    assert!(run.conf.is_empty());
}

#[tokio::test]
async fn runs_read_back_carry_their_conf_without_the_audit_block() {
    let fake = Fake::start().await;
    fake.mount_dag(crate::common::acme_dag()).await;
    let stored = json!({
        "date": "2024-12-18",
        "maestro": {"customer_id": "acme", "trigger_id": "t-1"},
    });
    let run = dag_run(ACME_DAG, RUN_ID, "success", stored.clone());
    // A run triggered elsewhere with no conf at all reads as an empty one.
    let bare = dag_run(
        ACME_DAG,
        "scheduled__2024-12-18T03:00:00+00:00",
        "success",
        Value::Null,
    );
    fake.mount_run(ACME_DAG, run.clone()).await;
    fake.mount_runs(ACME_DAG, vec![bare, run]).await;
    let backend = backend(&fake.uri());

    let one = backend
        .get_run(&ctx("acme"), &id(ACME_DAG), &run_id())
        .await
        .unwrap();
    let page = backend
        .list_runs(&ctx("acme"), &id(ACME_DAG), &RunQuery::default())
        .await
        .unwrap();

    assert_eq!(
        Value::Object(one.conf.into_map()),
        json!({"date": "2024-12-18"})
    );
    assert!(page.runs[0].conf.is_empty());
    assert_eq!(
        Value::Object(page.runs[1].conf.clone().into_map()),
        json!({"date": "2024-12-18"})
    );
}

/// Triggers Acme's pipeline with `parameters` against a fake whose trigger
/// answers 400 with `detail`.
async fn refused_with(detail: &str, parameters: Value) -> ExecuteError {
    let fake = Fake::happy().await;
    fake.fail(
        Endpoint::RunPost,
        ResponseTemplate::new(400).set_body_json(json!({ "detail": detail })),
    )
    .await;
    let err = backend(&fake.uri())
        .trigger(
            &ctx("acme"),
            &trigger_of(ACME_DAG).with_conf(conf(parameters)),
        )
        .await
        .unwrap_err();
    // Refused once: a 400 is not sent again.
    assert_eq!(fake.requests(Endpoint::RunPost).await.len(), 1);
    let text = format!("{err} {err:?}");
    for quoted in [
        "2024-13-45",
        "'yes'",
        "Failed validating",
        "On instance",
        "schema:",
        "{'type'",
        &fake.uri(),
    ] {
        assert!(!text.contains(quoted), "{text}");
    }
    err
}

#[tokio::test]
async fn a_param_validation_refusal_is_conf_refused_naming_the_parameter_in_a_few_words() {
    let err = refused_with(DATE_REFUSED, json!({"date": "2024-13-45"})).await;
    let ExecuteError::ConfRefused {
        pipeline_id,
        parameter,
        reason,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(pipeline_id, id(ACME_DAG));
    assert_eq!(parameter.as_deref(), Some("date"));
    assert_eq!(reason, "the value fails the parameter's \"format\" check");

    let err = refused_with(FLAG_REFUSED, json!({"full_refresh": "yes"})).await;
    let ExecuteError::ConfRefused {
        parameter, reason, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(parameter.as_deref(), Some("full_refresh"));
    assert_eq!(reason, "the value fails the parameter's \"type\" check");
}

#[tokio::test]
async fn a_missing_required_parameter_is_conf_refused_naming_it() {
    let err = refused_with("Invalid input for param date: No value passed", json!({})).await;
    let ExecuteError::ConfRefused {
        parameter, reason, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(parameter.as_deref(), Some("date"));
    assert_eq!(reason, "the parameter needs a value and has no default");
}

#[tokio::test]
async fn a_parameter_name_unfit_to_repeat_is_left_out_and_the_reason_stays_short() {
    let long = "p".repeat(500);
    let detail = format!("Invalid input for param {long}: {}", "x".repeat(10_000));
    let err = refused_with(&detail, json!({})).await;
    let ExecuteError::ConfRefused {
        parameter, reason, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(parameter, None);
    assert_eq!(reason, "the value does not match the parameter's schema");
    assert!(reason.len() <= 200);
}

#[tokio::test]
async fn other_400s_of_the_trigger_stay_upstream_errors() {
    for detail in [
        format!("Dag with dag_id: '{ACME_DAG}' has import errors and cannot be triggered"),
        format!("Dag with dag_id: '{ACME_DAG}' does not allow manual runs"),
    ] {
        let err = refused_with(&detail, json!({"date": "2024-12-18"})).await;
        let ExecuteError::Backend(err) = err else {
            panic!("{err:?}");
        };
        assert_eq!(err.kind(), BackendErrorKind::Upstream);
        assert!(!err.to_string().contains("import errors"), "{err}");
    }
    let fake = Fake::happy().await;
    fake.fail(
        Endpoint::RunPost,
        ResponseTemplate::new(400).set_body_string("not json"),
    )
    .await;
    let err = backend(&fake.uri())
        .trigger(&ctx("acme"), &trigger_of(ACME_DAG))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExecuteError::Backend(err) if err.kind() == BackendErrorKind::Upstream),
        "{err:?}"
    );
}
