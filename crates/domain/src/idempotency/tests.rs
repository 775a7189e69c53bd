//! Unit tests of idempotent executes against mocks of the store and the
//! orchestrator, on a manual clock.

use std::sync::{Arc, Mutex};

use chrono::TimeZone;
use mockall::predicate::{always, eq};

use super::*;
use crate::{
    BackendError, Caller, ManualClock, MockOrchestrator, MockPipelineRepository, RunId, RunStatus,
};

const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

fn acme() -> CustomerId {
    CustomerId::parse("acme").unwrap()
}

fn ctx() -> RequestContext {
    RequestContext::new(Caller::new(acme()))
}

fn key() -> IdempotencyKey {
    IdempotencyKey::parse("order-42").unwrap()
}

fn pipeline() -> PipelineId {
    PipelineId::parse(PIPELINE).unwrap()
}

fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap()
}

fn a_run() -> Run {
    let mut run = Run::new(RunId::manual(&now()), pipeline(), RunStatus::Failed, now());
    run.updated_at = now() + TimeDelta::seconds(3);
    run.trace = Some("boom".to_owned());
    run
}

fn idempotency(store: MockIdempotencyStore) -> Idempotency {
    Idempotency::new(
        Arc::new(store),
        IdempotencyConfig::default(),
        Arc::new(ManualClock::new(now())),
    )
}

/// A service whose trigger answers `answer` once, recording the request.
fn service(
    answer: impl Fn(&TriggerRequest) -> Result<Run, ExecuteError> + Send + 'static,
) -> (PipelineService, Arc<Mutex<Vec<TriggerRequest>>>) {
    let seen: Arc<Mutex<Vec<TriggerRequest>>> = Arc::default();
    let record = Arc::clone(&seen);
    let mut orchestrator = MockOrchestrator::new();
    orchestrator
        .expect_trigger()
        .times(1)
        .returning(move |_, request| {
            record.lock().unwrap().push(request.clone());
            answer(request)
        });
    (
        PipelineService::new(
            Arc::new(MockPipelineRepository::new()),
            Arc::new(orchestrator),
        ),
        seen,
    )
}

/// Executes acme's `key()` through `service`, with claims in `store`.
async fn execute(
    store: MockIdempotencyStore,
    service: &PipelineService,
) -> Result<Idempotent, IdempotencyError> {
    idempotency(store)
        .execute(service, &ctx(), &key(), TriggerRequest::new(pipeline()))
        .await
}

/// A store whose claims find `record` kept.
fn replaying(record: Vec<u8>) -> MockIdempotencyStore {
    let mut store = MockIdempotencyStore::new();
    store
        .expect_claim()
        .returning(move |_, _, _, _| Ok(Claim::Done(record.clone())));
    store
}

/// Asserts that the execute ran and failed, and that its outcome was kept
/// or released without an error.
fn assert_ran_and_failed(ran: &Idempotent) {
    assert!(matches!(
        ran,
        Idempotent::Ran {
            outcome: Err(_),
            record_error: None
        }
    ));
}

/// A service that must not be asked to trigger.
fn untouched() -> PipelineService {
    let mut orchestrator = MockOrchestrator::new();
    orchestrator.expect_trigger().never();
    PipelineService::new(
        Arc::new(MockPipelineRepository::new()),
        Arc::new(orchestrator),
    )
}

fn acquired(store: &mut MockIdempotencyStore) {
    store
        .expect_claim()
        .with(
            eq(acme()),
            eq(key()),
            eq(PIPELINE),
            eq(ClaimTerms::new(
                IdempotencyConfig::DEFAULT_IN_FLIGHT,
                IdempotencyConfig::DEFAULT_RETENTION,
                IdempotencyConfig::DEFAULT_KEYS_PER_CUSTOMER,
            )),
        )
        .times(1)
        .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
}

#[test]
fn keys_of_visible_ascii_are_taken_as_they_are() {
    let key = IdempotencyKey::parse("Order-42_!~\"quoted\"").unwrap();
    assert_eq!(key.as_str(), "Order-42_!~\"quoted\"");
    assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
    assert!(IdempotencyKey::parse("x").is_ok());
}

#[test]
fn empty_overlong_spaced_control_and_non_ascii_keys_are_refused() {
    for raw in [
        String::new(),
        "k".repeat(256),
        "two words".to_owned(),
        "tab\there".to_owned(),
        "new\nline".to_owned(),
        "del\u{7f}".to_owned(),
        "café".to_owned(),
    ] {
        assert_eq!(
            IdempotencyKey::parse(&raw),
            Err(InvalidIdempotencyKey),
            "{raw:?}"
        );
    }
}

#[test]
fn leases_do_not_show_their_token_in_logs() {
    assert_eq!(format!("{:?}", Lease::new("secret-record")), "Lease(..)");
}

#[tokio::test]
async fn a_first_execute_carries_the_key_and_keeps_its_run_for_the_retention() {
    let kept: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut store = MockIdempotencyStore::new();
    acquired(&mut store);
    let record = Arc::clone(&kept);
    store
        .expect_complete()
        .with(
            eq(acme()),
            eq(key()),
            eq(Lease::new("l1")),
            always(),
            eq(IdempotencyConfig::DEFAULT_RETENTION),
        )
        .times(1)
        .returning(move |_, _, _, bytes, _| {
            *record.lock().unwrap() = bytes.to_vec();
            Ok(())
        });
    store.expect_release().never();
    let (service, seen) = service(|_| Ok(a_run()));

    let ran = execute(store, &service).await.unwrap();

    assert!(
        matches!(ran, Idempotent::Ran { outcome: Ok(run), record_error: None } if run == a_run())
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].idempotency_key(), Some(&key()));
    assert_eq!(seen[0].retry_since(), None);
    // What was kept reads back as the very same run.
    assert_eq!(
        Kept::decode(&kept.lock().unwrap()).unwrap().unwrap(),
        a_run()
    );
}

#[tokio::test]
async fn a_retry_after_a_failed_attempt_looks_back_exactly_one_retention_from_now() {
    let mut store = MockIdempotencyStore::new();
    store
        .expect_claim()
        .returning(|_, _, _, _| Ok(Claim::Retry(Lease::new("l1"))));
    store.expect_complete().returning(|_, _, _, _, _| Ok(()));
    let (service, seen) = service(|_| Ok(a_run()));

    execute(store, &service).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].idempotency_key(), Some(&key()));
    assert_eq!(seen[0].retry_since(), Some(now() - TimeDelta::hours(24)));
}

#[tokio::test]
async fn a_missing_pipeline_is_kept_briefly_and_a_paused_one_for_the_retention() {
    type Refusal = fn() -> ExecuteError;
    let cases: [(Refusal, Duration); 2] = [
        (
            || ExecuteError::NotFound(pipeline()),
            IdempotencyConfig::DEFAULT_NOT_FOUND_RETENTION,
        ),
        (
            || ExecuteError::Paused(pipeline()),
            IdempotencyConfig::DEFAULT_RETENTION,
        ),
    ];
    for (refusal, retention) in cases {
        let mut store = MockIdempotencyStore::new();
        acquired(&mut store);
        store
            .expect_complete()
            .with(always(), always(), always(), always(), eq(retention))
            .times(1)
            .returning(|_, _, _, _, _| Ok(()));
        store.expect_release().never();
        let (service, _) = service(move |_| Err(refusal()));

        let ran = execute(store, &service).await.unwrap();
        assert_ran_and_failed(&ran);
    }
}

#[tokio::test]
async fn a_full_queue_and_a_backend_failure_are_released_not_kept() {
    type Failure = fn() -> ExecuteError;
    let cases: [Failure; 2] = [
        || ExecuteError::QueueFull {
            pipeline_id: pipeline(),
            limit: 1,
        },
        || BackendError::timeout("slow").into(),
    ];
    for failure in cases {
        let mut store = MockIdempotencyStore::new();
        acquired(&mut store);
        store.expect_complete().never();
        store
            .expect_release()
            .with(
                eq(acme()),
                eq(key()),
                eq(Lease::new("l1")),
                eq(IdempotencyConfig::DEFAULT_RETENTION),
            )
            .times(1)
            .returning(|_, _, _, _| Ok(()));
        let (service, _) = service(move |_| Err(failure()));

        let ran = execute(store, &service).await.unwrap();
        assert_ran_and_failed(&ran);
    }
}

#[tokio::test]
async fn a_kept_outcome_is_given_again_without_running_anything() {
    let outcomes: [fn() -> Result<Run, ExecuteError>; 3] = [
        || Ok(a_run()),
        || Err(ExecuteError::NotFound(pipeline())),
        || Err(ExecuteError::Paused(pipeline())),
    ];
    for outcome in outcomes {
        let record = Kept::of(&outcome()).unwrap().encode();
        let store = replaying(record);

        let replayed = execute(store, &untouched()).await.unwrap();
        let Idempotent::Replayed(again) = replayed else {
            panic!("expected a replay, got {replayed:?}");
        };
        match (again, outcome()) {
            (Ok(again), Ok(first)) => assert_eq!(again, first),
            (Err(ExecuteError::NotFound(a)), Err(ExecuteError::NotFound(b)))
            | (Err(ExecuteError::Paused(a)), Err(ExecuteError::Paused(b))) => assert_eq!(a, b),
            (again, first) => panic!("{again:?} given again for {first:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreadable_record_is_a_store_failure_and_runs_nothing() {
    for record in [
        b"not json".to_vec(),
        br#"{"kept":"paused","pipeline_id":"nope"}"#.to_vec(),
    ] {
        let store = replaying(record);
        let err = execute(store, &untouched()).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::Store(_)), "{err:?}");
    }
}

#[tokio::test]
async fn in_flight_mismatched_and_failing_claims_run_nothing() {
    for (claim, expected) in [
        (Ok(Claim::InFlight), "InFlight"),
        (Ok(Claim::Mismatch), "KeyReused"),
        (Err(()), "Store"),
    ] {
        let mut store = MockIdempotencyStore::new();
        store.expect_claim().times(1).returning(move |_, _, _, _| {
            claim
                .clone()
                .map_err(|()| StoreError::failed("connection refused"))
        });
        store.expect_complete().never();
        store.expect_release().never();

        let err = execute(store, &untouched()).await.unwrap_err();
        let name = match err {
            IdempotencyError::InFlight => "InFlight",
            IdempotencyError::KeyReused => "KeyReused",
            IdempotencyError::Store(_) => "Store",
        };
        assert_eq!(name, expected);
    }
}

#[tokio::test]
async fn a_lost_claim_still_answers_with_the_executes_own_outcome() {
    let mut store = MockIdempotencyStore::new();
    acquired(&mut store);
    store
        .expect_complete()
        .returning(|_, _, _, _, _| Err(StoreError::ClaimLost));
    let (service, _) = service(|_| Ok(a_run()));

    let ran = execute(store, &service).await.unwrap();
    assert!(matches!(
        ran,
        Idempotent::Ran { outcome: Ok(run), record_error: Some(StoreError::ClaimLost) } if run == a_run()
    ));
}

/// A kept run of any texts: ids, statuses and instants as a store could
/// hold them, quotes, backslashes, controls and non-ASCII included.
fn any_kept_run() -> impl proptest::strategy::Strategy<Value = KeptRun> {
    use proptest::prelude::*;
    let text = || {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9_:.+-]{1,40}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é✓ a]{0,12}",
        ]
    };
    let conf = proptest::collection::btree_map(
        text(),
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ],
        0..4,
    );
    (
        (text(), text(), text()),
        (text(), text()),
        proptest::option::of(text()),
        conf,
    )
        .prop_map(
            |((id, pipeline_id, status), (created_at, updated_at), trace, conf)| KeptRun {
                id,
                pipeline_id,
                status,
                created_at,
                updated_at,
                trace,
                conf: conf.into_iter().collect(),
            },
        )
}

proptest::proptest! {
    #[test]
    fn a_kept_run_is_encoded_as_its_derived_serialization(run in any_kept_run()) {
        let kept = Kept::Run(run);
        let derived = serde_json::to_vec(&kept).unwrap();
        proptest::prop_assert_eq!(
            String::from_utf8(kept.encode()).unwrap(),
            String::from_utf8(derived).unwrap()
        );
    }
}

#[test]
fn a_kept_run_of_a_real_run_is_encoded_as_its_derived_serialization() {
    let mut with_conf = a_run();
    with_conf.conf =
        RunConf::parse(serde_json::json!({"b": [1, "x\"y"], "a": {"z": null}})).unwrap();
    for run in [a_run(), with_conf] {
        let kept = Kept::of(&Ok(run.clone())).unwrap();
        assert_eq!(kept.encode(), serde_json::to_vec(&kept).unwrap());
        assert_eq!(Kept::decode(&kept.encode()).unwrap().unwrap(), run);
    }
}
