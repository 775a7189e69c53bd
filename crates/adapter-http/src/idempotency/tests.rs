//! `Idempotency-Key` on execute through a real axum router: the execute
//! route as the handler wires it, over a counting orchestrator and a small
//! in-process store.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use chrono::{TimeZone, Utc};
use domain::{
    BackendError, Caller, CancelRunError, Claim, ClaimTerms, CustomerId, ExecuteError, GetRunError,
    Idempotency, IdempotencyConfig, IdempotencyStore, Lease, ListRunsError, ManualClock,
    MockAuthContext, MockPipelineRepository, Orchestrator, PipelineId, PipelineService, Run, RunId,
    RunPage, RunQuery, RunStatus, StoreError,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use super::*;
use crate::Metrics;

const PIPELINE: &str = "1b33ad2f-33d3-4837-9eeb-83c82c8b909d";
const OTHER_PIPELINE: &str = "00000000-0000-4000-8000-000000000000";

/// What the next triggers answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Run,
    NotFound,
    Timeout,
}

/// Counts triggers, answers as told, and holds them at a gate while asked
/// to, to keep a request in flight.
struct Upstream {
    triggers: AtomicUsize,
    answers: Mutex<Vec<Answer>>,
    gate: Semaphore,
}

impl Upstream {
    fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            triggers: AtomicUsize::new(0),
            answers: Mutex::new(Vec::new()),
            gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
        })
    }

    /// The next triggers answer these, in order; then they run.
    fn answer(&self, answers: &[Answer]) {
        let mut queue = self.answers.lock().unwrap();
        queue.extend(answers.iter().rev());
    }

    fn triggers(&self) -> usize {
        self.triggers.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Orchestrator for Upstream {
    async fn trigger(
        &self,
        _ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        let id = request.pipeline_id();
        // Each run its own instant, so that two runs never look alike.
        let n = self.triggers.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.acquire().await.unwrap());
        tokio::task::yield_now().await;
        let answer = self.answers.lock().unwrap().pop().unwrap_or(Answer::Run);
        match answer {
            Answer::Run => {
                let at = Utc
                    .timestamp_opt(1_734_517_800 + i64::try_from(n).unwrap(), 0)
                    .unwrap();
                Ok(Run::new(
                    RunId::manual(&at),
                    id.clone(),
                    RunStatus::Running,
                    at,
                ))
            }
            Answer::NotFound => Err(ExecuteError::NotFound(id.clone())),
            Answer::Timeout => {
                Err(BackendError::timeout("http://10.1.2.3/secret did not answer").into())
            }
        }
    }

    async fn list_runs(
        &self,
        _: &RequestContext,
        id: &PipelineId,
        _: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        Err(ListRunsError::NotFound(id.clone()))
    }

    async fn get_run(
        &self,
        _: &RequestContext,
        id: &PipelineId,
        _: &RunId,
    ) -> Result<Run, GetRunError> {
        Err(GetRunError::PipelineNotFound(id.clone()))
    }

    async fn cancel_run(
        &self,
        _: &RequestContext,
        id: &PipelineId,
        _: &RunId,
    ) -> Result<Run, CancelRunError> {
        Err(CancelRunError::PipelineNotFound(id.clone()))
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A fingerprint, and the kept outcome or the claim's lease.
type Entry = (String, Result<Vec<u8>, Lease>);

/// A store without expiry, enough to drive the HTTP glue; the real
/// stores' expiry and bounds are tested with them.
#[derive(Default)]
struct Store {
    entries: Mutex<HashMap<(CustomerId, IdempotencyKey), Entry>>,
    leases: AtomicUsize,
    failing: AtomicBool,
}

#[async_trait]
impl IdempotencyStore for Store {
    async fn claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        _terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::failed("connection refused by 10.1.2.3"));
        }
        let mut entries = self.entries.lock().unwrap();
        let scope = (scope.clone(), key.clone());
        Ok(match entries.get(&scope) {
            Some((held, _)) if held != fingerprint => Claim::Mismatch,
            Some((_, Ok(outcome))) => Claim::Done(outcome.clone()),
            Some((_, Err(_))) => Claim::InFlight,
            None => {
                let lease = Lease::new(self.leases.fetch_add(1, Ordering::SeqCst).to_string());
                entries.insert(scope, (fingerprint.to_owned(), Err(lease.clone())));
                Claim::Acquired(lease)
            }
        })
    }

    async fn complete(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        record: &[u8],
        _retention: Duration,
    ) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get_mut(&(scope.clone(), key.clone())) {
            Some((_, held)) if held.as_ref().err() == Some(lease) => {
                *held = Ok(record.to_vec());
                Ok(())
            }
            _ => Err(StoreError::ClaimLost),
        }
    }

    async fn release(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        _retention: Duration,
    ) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap();
        let scope = (scope.clone(), key.clone());
        match entries.get(&scope) {
            Some((_, Err(held))) if held == lease => {
                entries.remove(&scope);
                Ok(())
            }
            _ => Err(StoreError::ClaimLost),
        }
    }
}

struct World {
    upstream: Arc<Upstream>,
    store: Arc<Store>,
    router: Router,
}

impl World {
    fn new(open: bool) -> Self {
        let upstream = Upstream::new(open);
        let store = Arc::new(Store::default());
        let mut auth = MockAuthContext::new();
        auth.expect_authenticate()
            .returning(|token| Ok(Caller::new(CustomerId::parse(token).unwrap())));
        let service =
            PipelineService::new(Arc::new(MockPipelineRepository::new()), upstream.clone());
        let idempotency = Idempotency::new(
            store.clone(),
            IdempotencyConfig::default(),
            Arc::new(ManualClock::at_epoch_seconds(1_734_517_800)),
        );
        let state = AppState::new(
            service,
            Arc::new(auth),
            "mock",
            Metrics::default(),
            idempotency,
        );
        let router = crate::router(state);
        Self {
            upstream,
            store,
            router,
        }
    }

    async fn execute(&self, customer: &str, pipeline: &str, keys: &[&[u8]]) -> Answered {
        let mut request = Request::post("/platform/pipeline/execute")
            .header("authorization", format!("Bearer {customer}"))
            .header("content-type", "application/json");
        for key in keys {
            request = request.header("idempotency-key", *key);
        }
        let request = request
            .body(Body::from(json!({ "pipeline_id": pipeline }).to_string()))
            .unwrap();
        Answered::from(self.router.clone().oneshot(request).await.unwrap()).await
    }
}

/// A response, read.
#[derive(Debug)]
struct Answered {
    status: StatusCode,
    replayed: Option<String>,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: Value,
}

impl Answered {
    async fn from(response: Response) -> Self {
        let headers = response.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        let (replayed, retry_after, content_type) = (
            header("idempotent-replayed"),
            header("retry-after"),
            header("content-type"),
        );
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains("10.1.2.3"), "leak: {text}");
        Self {
            status,
            replayed,
            retry_after,
            content_type,
            body: serde_json::from_str(&text).unwrap(),
        }
    }

    fn exception_type(&self) -> &str {
        self.body["detail"]["exception_type"]
            .as_str()
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn invalid_keys_are_refused_with_400_before_anything_runs() {
    let world = World::new(true);
    let long = "k".repeat(256);
    let cases: [&[&[u8]]; 6] = [
        &[b""],
        &[long.as_bytes()],
        &[b"two words"],
        &[b"caf\xc3\xa9"],
        &[b"tab\there"],
        &[b"one", b"two"],
    ];
    for keys in cases {
        let answer = world.execute("acme", PIPELINE, keys).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{keys:?}");
        assert_eq!(
            answer.body,
            json!({"detail": {
                "status": false,
                "exception_type": "InvalidIdempotencyKey",
                "traceback": "Idempotency-Key must be 1 to 255 visible ASCII characters",
                "data": null,
            }}),
            "{keys:?}"
        );
    }
    assert_eq!(world.upstream.triggers(), 0);
}

#[tokio::test]
async fn a_key_of_255_visible_characters_is_accepted() {
    let world = World::new(true);
    let longest = "~".repeat(255);
    let answer = world.execute("acme", PIPELINE, &[longest.as_bytes()]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_repeat_gets_the_first_answer_again_marked_replayed_and_starts_no_run() {
    let world = World::new(true);
    let first = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.replayed, None);
    assert_eq!(
        first.body["data"]["message"],
        "Pipeline execution triggered successfully"
    );
    assert_eq!(
        first.body["data"]["pipeline_id"],
        PIPELINE.replace('-', "_")
    );

    let again = world
        .execute("acme", &PIPELINE.to_uppercase(), &[b"k1"])
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(again.content_type.as_deref(), Some("application/json"));
    assert_eq!(again.body, first.body);
    assert_eq!(world.upstream.triggers(), 1);
}

#[tokio::test]
async fn the_answer_with_a_key_is_the_answer_without_one() {
    let world = World::new(true);
    let with_key = world.execute("acme", PIPELINE, &[b"k1"]).await;
    let without = world.execute("acme", PIPELINE, &[]).await;
    assert_eq!(with_key.status, without.status);
    assert_eq!(with_key.content_type, without.content_type);
    assert_eq!(
        with_key.body["data"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        without.body["data"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn requests_without_a_key_each_run() {
    let world = World::new(true);
    world.execute("acme", PIPELINE, &[]).await;
    world.execute("acme", PIPELINE, &[]).await;
    assert_eq!(world.upstream.triggers(), 2);
}

#[tokio::test]
async fn the_same_key_with_another_pipeline_is_422() {
    let world = World::new(true);
    world.execute("acme", PIPELINE, &[b"k1"]).await;
    let other = world.execute("acme", OTHER_PIPELINE, &[b"k1"]).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.exception_type(), "IdempotencyKeyReused");
    assert_eq!(
        other.body["detail"]["traceback"],
        "This Idempotency-Key was already used for another pipeline. Use a new key."
    );
    assert_eq!(world.upstream.triggers(), 1);
}

#[tokio::test]
async fn the_same_key_of_another_customer_runs_on_its_own() {
    let world = World::new(true);
    world.execute("acme", PIPELINE, &[b"k1"]).await;
    let globex = world.execute("globex", OTHER_PIPELINE, &[b"k1"]).await;
    assert_eq!(globex.status, StatusCode::OK);
    assert_eq!(globex.replayed, None);
    assert_eq!(world.upstream.triggers(), 2);
}

#[tokio::test]
async fn a_repeat_while_the_first_is_in_flight_is_409_with_retry_after() {
    let world = Arc::new(World::new(false));
    let first = tokio::spawn({
        let world = world.clone();
        async move { world.execute("acme", PIPELINE, &[b"k1"]).await }
    });
    while world.upstream.triggers() == 0 {
        tokio::task::yield_now().await;
    }

    let repeat = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(repeat.status, StatusCode::CONFLICT);
    assert_eq!(repeat.exception_type(), "IdempotencyKeyInProgress");
    assert_eq!(repeat.retry_after.as_deref(), Some("1"));
    assert_eq!(
        repeat.body["detail"]["traceback"],
        "A request with this Idempotency-Key is still in progress. Retry later."
    );

    world.upstream.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(world.upstream.triggers(), 1);
}

#[tokio::test]
async fn an_upstream_failure_is_not_kept_so_the_retry_runs() {
    let world = World::new(true);
    world.upstream.answer(&[Answer::Timeout]);
    let failed = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(failed.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(failed.exception_type(), "UpstreamTimeout");

    let retry = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.replayed, None);
    let again = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(again.body, retry.body);
    assert_eq!(world.upstream.triggers(), 2);
}

#[tokio::test]
async fn a_domain_refusal_is_kept_and_replayed() {
    let world = World::new(true);
    world.upstream.answer(&[Answer::NotFound]);
    let missing = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.exception_type(), "PipelineNotFound");

    let again = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(again.body, missing.body);
    assert_eq!(world.upstream.triggers(), 1);
}

#[tokio::test]
async fn a_failing_store_is_503_and_runs_nothing() {
    let world = World::new(true);
    world.store.failing.store(true, Ordering::SeqCst);
    let answer = world.execute("acme", PIPELINE, &[b"k1"]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.exception_type(), "IdempotencyStoreUnavailable");
    assert_eq!(world.upstream.triggers(), 0);
}

#[tokio::test]
async fn a_run_whose_client_gave_up_still_finishes_and_its_answer_is_replayed() {
    let world = Arc::new(World::new(false));
    let gave_up = tokio::spawn({
        let world = world.clone();
        async move { world.execute("acme", PIPELINE, &[b"k1"]).await }
    });
    while world.upstream.triggers() == 0 {
        tokio::task::yield_now().await;
    }
    // The connection closes: axum drops the handler's future.
    gave_up.abort();
    assert!(gave_up.await.unwrap_err().is_cancelled());

    world.upstream.gate.add_permits(Semaphore::MAX_PERMITS);
    let mut retry = world.execute("acme", PIPELINE, &[b"k1"]).await;
    for _ in 0..1000 {
        if retry.status != StatusCode::CONFLICT {
            break;
        }
        tokio::task::yield_now().await;
        retry = world.execute("acme", PIPELINE, &[b"k1"]).await;
    }
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.replayed.as_deref(), Some("true"));
    assert_eq!(world.upstream.triggers(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_with_one_key_run_once_and_answer_200_or_409() {
    let world = Arc::new(World::new(true));
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let world = world.clone();
            tokio::spawn(async move { world.execute("acme", PIPELINE, &[b"k1"]).await })
        })
        .collect();

    let mut bodies = Vec::new();
    let mut conflicts = 0;
    for request in requests {
        let answer = request.await.unwrap();
        match answer.status {
            StatusCode::OK => bodies.push(answer.body),
            StatusCode::CONFLICT => {
                assert_eq!(answer.exception_type(), "IdempotencyKeyInProgress");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert_eq!(world.upstream.triggers(), 1, "exactly one run");
    assert_eq!(bodies.len() + conflicts, 200);
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "one stored 200"
    );
}

#[tokio::test]
async fn a_task_ready_at_once_or_later_gives_its_output_and_one_that_panics_gives_none() {
    assert_eq!(super::to_the_end(async { 7 }).await, Some(7));
    assert_eq!(
        super::to_the_end(async { panic!("at its first poll") }).await,
        None::<()>
    );

    let (send, receive) = tokio::sync::oneshot::channel::<u32>();
    let waiting = tokio::spawn(super::to_the_end(async move { receive.await.ok() }));
    tokio::task::yield_now().await;
    send.send(8).unwrap();
    assert_eq!(waiting.await.unwrap(), Some(Some(8)));

    let (send, receive) = tokio::sync::oneshot::channel::<()>();
    let panicking = tokio::spawn(super::to_the_end(async move {
        receive.await.ok();
        panic!("after waiting")
    }));
    tokio::task::yield_now().await;
    send.send(()).unwrap();
    assert_eq!(panicking.await.unwrap(), None::<()>);
}
