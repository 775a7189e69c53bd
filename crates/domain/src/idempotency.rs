//! Idempotency keys: a client's retry of a request it sent before gets the
//! first answer again instead of running the request a second time.
//!
//! The [`IdempotencyStore`] port keeps, per customer and key, either a claim
//! (a request with this key is in flight) or the outcome of the request
//! that held the claim. [`Idempotency::run`] is the one place that decides
//! what a request with a key does:
//!
//! | the store holds for the customer and key | the request |
//! | --- | --- |
//! | nothing (or only something expired) | runs, and its final outcome is kept for the retention |
//! | a failure, same fingerprint | runs again, told that an earlier attempt failed ([`Attempt::Retry`]) |
//! | an outcome, same fingerprint | gets that outcome again, runs nothing |
//! | a claim, same fingerprint | is refused as in flight, runs nothing |
//! | anything, another fingerprint | is refused as a reused key, runs nothing |
//!
//! A transient outcome (one that tells the client to retry, such as a
//! backend failure) is not kept: the claim is released so that the retry
//! runs. What is kept instead is that an attempt failed, so that the retry
//! can look for what the failed attempt may have done (a run whose answer
//! was lost) rather than do it twice. Claims expire, so a process that dies
//! between the claim and the record never locks a key for good.
//!
//! Outcomes are opaque to the domain: a status and a body, which the
//! adapter facing clients writes and replays.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::{
    CustomerId, ExecuteError, PipelineId, PipelineService, RequestContext, Run, Timestamp,
    TriggerOptions,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client-chosen key naming one logical request, scoped to the caller's
/// customer: 1 to 255 visible ASCII characters (`!` to `~`), taken as they
/// are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

/// The text was not a usable idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    /// The longest key accepted, in characters.
    pub const MAX_LEN: usize = 255;

    /// Accepts 1 to 255 visible ASCII characters. Nothing is trimmed or
    /// case-folded: two keys are the same only when they are equal byte for
    /// byte, so a client's distinct keys never collide.
    ///
    /// # Errors
    /// [`InvalidIdempotencyKey`] for an empty or overlong key, or one holding
    /// a space, a control character or anything outside ASCII.
    pub fn parse(raw: &str) -> Result<Self, InvalidIdempotencyKey> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(InvalidIdempotencyKey);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer a request with a key gave, kept to be given again: a status
/// and a body, opaque to the domain but for one rule: a 5xx status is a
/// failure of the server, never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    /// The answer's status code, with HTTP's meaning.
    pub status: u16,
    /// The answer's body, byte for byte.
    pub body: Vec<u8>,
}

impl StoredOutcome {
    /// Whether the status says the server failed (5xx).
    pub fn is_server_error(&self) -> bool {
        (500..600).contains(&self.status)
    }
}

/// Proof that a request holds the claim on a key, handed out by
/// [`IdempotencyStore::claim`] and given back to
/// [`IdempotencyStore::complete`] or [`IdempotencyStore::release`].
///
/// Its text is the store's own business (a token, or the claim's stored
/// form); the store uses it to act only while the claim is still this
/// request's, and not after it expired and another request claimed the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Lease(String);

impl Lease {
    /// A lease with the store's token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The store's token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Lease {
    // The token may hold a stored record; the log needs only that there is
    // one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lease(..)")
    }
}

/// What [`IdempotencyStore::claim`] found for a customer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing was there: the key is now claimed by this request, until the
    /// claim is completed, released or expires.
    Acquired(Lease),
    /// An earlier request with the key and the same fingerprint failed in a
    /// way that invites a retry, and was released. The key is now claimed
    /// by this request, as with [`Claim::Acquired`]; the earlier request
    /// may have done part of its work.
    Retry(Lease),
    /// Another request with the key and the same fingerprint holds the
    /// claim.
    InFlight,
    /// A request with the key and the same fingerprint finished with this
    /// outcome, still within its retention.
    Done(StoredOutcome),
    /// The key is claimed or done for another fingerprint.
    Mismatch,
}

/// Why the idempotency store did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, failed, or holds something it
    /// cannot read.
    #[error("idempotency store failed: {context}")]
    Failed {
        /// What was being done, for the log.
        context: String,
        /// The underlying cause, kept for the log's cause chain.
        #[source]
        source: Option<BoxError>,
    },
    /// The claim had expired and the key is no longer this request's:
    /// nothing was written.
    #[error("the claim on the idempotency key expired before it was completed")]
    ClaimLost,
}

impl StoreError {
    /// A failure of the store, described for the log.
    pub fn failed(context: impl Into<String>) -> Self {
        Self::Failed {
            context: context.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause to a [`StoreError::Failed`]; any other
    /// error is returned as it is.
    #[must_use]
    pub fn with_source(self, cause: impl Into<BoxError>) -> Self {
        match self {
            Self::Failed { context, .. } => Self::Failed {
                context,
                source: Some(cause.into()),
            },
            other @ Self::ClaimLost => other,
        }
    }
}

/// Where claims and outcomes of idempotency keys live, scoped by customer.
///
/// Every method is atomic for one customer's key: of many concurrent
/// claims of a free key, exactly one is [`Claim::Acquired`].
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` of `scope` for a request whose `fingerprint` (what the
    /// request asks for, normalized) is given, or reports what holds it.
    /// A new claim expires after `in_flight` unless it is completed or
    /// released first.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when the store fails; the caller must then not
    /// run the request, since it cannot know whether another one runs.
    async fn claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        in_flight: Duration,
    ) -> Result<Claim, StoreError>;

    /// Replaces the claim that `lease` proves with `outcome`, kept for
    /// `retention`.
    ///
    /// # Errors
    /// [`StoreError::ClaimLost`] when the claim is no longer the lease's
    /// (it expired, and perhaps another request claimed the key); nothing
    /// was written then. [`StoreError::Failed`] when the store fails.
    async fn complete(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        outcome: &StoredOutcome,
        retention: Duration,
    ) -> Result<(), StoreError>;

    /// Gives up the claim that `lease` proves after an outcome that invites
    /// a retry, and notes for `retention` that an attempt failed: the next
    /// claim of the key with the same fingerprint is then [`Claim::Retry`],
    /// one with another fingerprint [`Claim::Mismatch`].
    ///
    /// # Errors
    /// [`StoreError::ClaimLost`] when the claim is no longer the lease's;
    /// nothing was removed then. [`StoreError::Failed`] when the store
    /// fails; the claim then lasts until it expires.
    async fn release(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        retention: Duration,
    ) -> Result<(), StoreError>;
}

/// Whether a request that holds a key's claim is the first to try it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// No earlier request with the key ran (within the retention).
    First,
    /// An earlier request with the key failed in a way that invited a
    /// retry; it may have done part of its work.
    Retry,
}

/// How long claims and outcomes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a final outcome is replayed. Default 24 h.
    pub retention: Duration,
    /// How long a claim holds before it expires, so that a request lost
    /// with its process does not lock the key for good. It must outlast the
    /// slowest request: the backend's timeout and a margin. Default 30 s.
    pub in_flight: Duration,
}

impl IdempotencyConfig {
    /// The default [`IdempotencyConfig::retention`].
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
    /// The default [`IdempotencyConfig::in_flight`].
    pub const DEFAULT_IN_FLIGHT: Duration = Duration::from_secs(30);
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: Self::DEFAULT_RETENTION,
            in_flight: Self::DEFAULT_IN_FLIGHT,
        }
    }
}

/// How a request that ran ended, as its work reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// A final answer (a success, or a refusal that a retry would get
    /// again): kept, and given again to repeats.
    Final(StoredOutcome),
    /// An answer that invites a retry (a backend failure, a full queue):
    /// not kept, so that a retry runs.
    Transient(StoredOutcome),
}

/// What a request with a key got.
#[derive(Debug)]
pub enum Idempotent {
    /// The request ran, and this is its outcome.
    Ran {
        /// The request's own answer.
        outcome: StoredOutcome,
        /// Why the outcome could not be recorded or the claim released, if
        /// that failed; the answer stands, and the claim expires on its own.
        record_error: Option<StoreError>,
    },
    /// An earlier request with the key ran; this is its outcome, and
    /// nothing ran now.
    Replayed(StoredOutcome),
}

/// Why a request with a key did not run.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// An earlier request with the key is still in flight.
    #[error("A request with this Idempotency-Key is still in progress. Retry later.")]
    InFlight,
    /// The key was used for a request that asked for something else.
    #[error("This Idempotency-Key was already used for another pipeline. Use a new key.")]
    KeyReused,
    /// The store failed, so whether the request already ran is unknown.
    #[error(transparent)]
    Store(StoreError),
}

/// Runs requests at most once per customer and key, over a store.
///
/// Cheap to clone: it holds the store behind an [`Arc`].
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    config: IdempotencyConfig,
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Idempotent requests over `store`, with the given retention and claim
    /// expiry.
    pub fn new(store: Arc<dyn IdempotencyStore>, config: IdempotencyConfig) -> Self {
        Self { store, config }
    }

    /// The retention and claim expiry in use.
    pub fn config(&self) -> IdempotencyConfig {
        self.config
    }

    /// The earliest instant a failed attempt still noted in the store can
    /// have run: the retention back from now.
    fn retry_since(&self) -> Timestamp {
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::MAX);
        Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Runs `work` for the request with `key` of `scope`, unless a request
    /// with the key ran or runs already. `fingerprint` says what the request
    /// asks for; a repeat must ask for the same.
    ///
    /// `work` is called, and polled, only when the claim is acquired, with
    /// whether an earlier attempt failed. It should be run to its end: a request dropped halfway keeps its claim until the claim
    /// expires, since whether it did anything is unknown.
    ///
    /// # Errors
    /// [`IdempotencyError::InFlight`] while an earlier request with the key
    /// runs; [`IdempotencyError::KeyReused`] when the key was used with
    /// another fingerprint; [`IdempotencyError::Store`] when the store fails
    /// before anything ran. In none of these cases did `work` run.
    pub async fn run<W, F>(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        work: W,
    ) -> Result<Idempotent, IdempotencyError>
    where
        W: FnOnce(Attempt) -> F,
        F: Future<Output = Completion>,
    {
        let claim = self
            .store
            .claim(scope, key, fingerprint, self.config.in_flight)
            .await
            .map_err(IdempotencyError::Store)?;
        let (lease, attempt) = match claim {
            Claim::Acquired(lease) => (lease, Attempt::First),
            Claim::Retry(lease) => (lease, Attempt::Retry),
            Claim::Done(outcome) => return Ok(Idempotent::Replayed(outcome)),
            Claim::InFlight => return Err(IdempotencyError::InFlight),
            Claim::Mismatch => return Err(IdempotencyError::KeyReused),
        };
        let (outcome, recorded) = match work(attempt).await {
            Completion::Final(outcome) => {
                let recorded = self
                    .store
                    .complete(scope, key, &lease, &outcome, self.config.retention)
                    .await;
                (outcome, recorded)
            }
            Completion::Transient(outcome) => {
                let released = self
                    .store
                    .release(scope, key, &lease, self.config.retention)
                    .await;
                (outcome, released)
            }
        };
        Ok(Idempotent::Ran {
            outcome,
            record_error: recorded.err(),
        })
    }

    /// Executes the caller's pipeline at most once for `key`: the execute
    /// use case under [`Idempotency::run`], scoped to the caller's customer,
    /// with the normalized pipeline id as the fingerprint. `render` turns
    /// the use case's result into the answer to keep and give.
    ///
    /// A run, a missing pipeline and a paused one are final and kept; a
    /// full queue and a backend failure invite a retry and are not, nor is
    /// any answer that `render` gives a 5xx status. The trigger carries the
    /// key, and on a retry says so, so that a backend that can find the run
    /// of a failed attempt answers with it instead of starting another
    /// (see [`crate::Orchestrator::trigger_with`]).
    ///
    /// # Errors
    /// As [`Idempotency::run`]; in every case nothing was executed.
    pub async fn execute<R, Fut>(
        &self,
        service: &PipelineService,
        ctx: &RequestContext,
        id: &PipelineId,
        key: &IdempotencyKey,
        render: R,
    ) -> Result<Idempotent, IdempotencyError>
    where
        R: FnOnce(Result<Run, ExecuteError>) -> Fut,
        Fut: Future<Output = StoredOutcome>,
    {
        self.run(ctx.customer(), key, id.as_str(), |attempt| async move {
            let options = TriggerOptions {
                idempotency_key: Some(key.clone()),
                retry_since: (attempt == Attempt::Retry).then(|| self.retry_since()),
            };
            let result = service.execute_with(ctx, id, &options).await;
            let last = is_final(&result);
            let outcome = render(result).await;
            // A render that failed may answer a run with a server error:
            // that answer invites a retry, and is never kept.
            if last && !outcome.is_server_error() {
                Completion::Final(outcome)
            } else {
                Completion::Transient(outcome)
            }
        })
        .await
    }
}

/// Whether a retry of an execute would get the same answer, so that the
/// answer is worth keeping. No `_` arm: a new way for execute to fail must
/// be placed on one side or the other.
fn is_final(result: &Result<Run, ExecuteError>) -> bool {
    match result {
        Ok(_) | Err(ExecuteError::NotFound(_) | ExecuteError::Paused) => true,
        Err(ExecuteError::QueueFull { .. } | ExecuteError::Backend(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::Utc;
    use mockall::predicate::{always, eq};

    use super::*;
    use crate::{
        BackendError, Caller, MockOrchestrator, MockPipelineRepository, RunId, RunStatus,
        TriggerError,
    };

    const PIPELINE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    fn acme() -> CustomerId {
        CustomerId::parse("acme").unwrap()
    }

    fn key() -> IdempotencyKey {
        IdempotencyKey::parse("order-42").unwrap()
    }

    fn outcome(status: u16) -> StoredOutcome {
        StoredOutcome {
            status,
            body: format!("{{\"status\":{status}}}").into_bytes(),
        }
    }

    fn idempotency(store: MockIdempotencyStore) -> Idempotency {
        Idempotency::new(Arc::new(store), IdempotencyConfig::default())
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
    fn the_invalid_key_message_names_the_rule() {
        assert_eq!(
            InvalidIdempotencyKey.to_string(),
            "Idempotency-Key must be 1 to 255 visible ASCII characters"
        );
    }

    #[test]
    fn leases_do_not_show_their_token_in_logs() {
        assert_eq!(format!("{:?}", Lease::new("secret-record")), "Lease(..)");
    }

    #[tokio::test]
    async fn an_acquired_claim_runs_the_work_and_keeps_a_final_outcome() {
        let mut store = MockIdempotencyStore::new();
        store
            .expect_claim()
            .with(
                eq(acme()),
                eq(key()),
                eq("p1"),
                eq(IdempotencyConfig::DEFAULT_IN_FLIGHT),
            )
            .times(1)
            .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
        store
            .expect_complete()
            .with(
                eq(acme()),
                eq(key()),
                eq(Lease::new("l1")),
                eq(outcome(200)),
                eq(IdempotencyConfig::DEFAULT_RETENTION),
            )
            .times(1)
            .returning(|_, _, _, _, _| Ok(()));
        store.expect_release().never();

        let ran = idempotency(store)
            .run(&acme(), &key(), "p1", |_| async {
                Completion::Final(outcome(200))
            })
            .await
            .unwrap();
        assert!(matches!(
            ran,
            Idempotent::Ran { outcome: o, record_error: None } if o == outcome(200)
        ));
    }

    #[tokio::test]
    async fn a_transient_outcome_releases_the_claim_instead_of_keeping_it() {
        let mut store = MockIdempotencyStore::new();
        store
            .expect_claim()
            .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
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

        let ran = idempotency(store)
            .run(&acme(), &key(), "p1", |_| async {
                Completion::Transient(outcome(503))
            })
            .await
            .unwrap();
        assert!(
            matches!(ran, Idempotent::Ran { outcome: o, record_error: None } if o.status == 503)
        );
    }

    #[tokio::test]
    async fn a_claim_after_a_failed_attempt_runs_the_work_told_so() {
        for (claim, expected) in [
            (Claim::Acquired(Lease::new("l1")), Attempt::First),
            (Claim::Retry(Lease::new("l1")), Attempt::Retry),
        ] {
            let mut store = MockIdempotencyStore::new();
            store
                .expect_claim()
                .times(1)
                .returning(move |_, _, _, _| Ok(claim.clone()));
            store
                .expect_complete()
                .with(always(), always(), eq(Lease::new("l1")), always(), always())
                .times(1)
                .returning(|_, _, _, _, _| Ok(()));
            let told = std::sync::Mutex::new(None);

            idempotency(store)
                .run(&acme(), &key(), "p1", |attempt| {
                    *told.lock().unwrap() = Some(attempt);
                    async { Completion::Final(outcome(200)) }
                })
                .await
                .unwrap();
            assert_eq!(*told.lock().unwrap(), Some(expected));
        }
    }

    #[tokio::test]
    async fn a_done_key_replays_its_outcome_without_running_the_work() {
        let mut store = MockIdempotencyStore::new();
        store
            .expect_claim()
            .returning(|_, _, _, _| Ok(Claim::Done(outcome(404))));
        let runs = AtomicUsize::new(0);

        let replayed = idempotency(store)
            .run(&acme(), &key(), "p1", |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Completion::Final(outcome(200))
            })
            .await
            .unwrap();
        assert!(matches!(replayed, Idempotent::Replayed(o) if o == outcome(404)));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
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
            let runs = AtomicUsize::new(0);

            let err = idempotency(store)
                .run(&acme(), &key(), "p1", |_| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Completion::Final(outcome(200))
                })
                .await
                .unwrap_err();
            let name = match err {
                IdempotencyError::InFlight => "InFlight",
                IdempotencyError::KeyReused => "KeyReused",
                IdempotencyError::Store(_) => "Store",
            };
            assert_eq!(name, expected);
            assert_eq!(runs.load(Ordering::SeqCst), 0);
        }
    }

    #[tokio::test]
    async fn a_lost_claim_still_answers_with_the_requests_own_outcome() {
        let mut store = MockIdempotencyStore::new();
        store
            .expect_claim()
            .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
        store
            .expect_complete()
            .with(always(), always(), always(), always(), always())
            .returning(|_, _, _, _, _| Err(StoreError::ClaimLost));

        let ran = idempotency(store)
            .run(&acme(), &key(), "p1", |_| async {
                Completion::Final(outcome(200))
            })
            .await
            .unwrap();
        assert!(matches!(
            ran,
            Idempotent::Ran { outcome: o, record_error: Some(StoreError::ClaimLost) } if o == outcome(200)
        ));
    }

    #[test]
    fn refusals_read_as_the_contract_means_them() {
        assert_eq!(
            IdempotencyError::InFlight.to_string(),
            "A request with this Idempotency-Key is still in progress. Retry later."
        );
        assert_eq!(
            IdempotencyError::KeyReused.to_string(),
            "This Idempotency-Key was already used for another pipeline. Use a new key."
        );
    }

    fn executing(
        trigger: impl Fn() -> Result<Run, TriggerError> + Send + 'static,
    ) -> PipelineService {
        let mut orchestrator = MockOrchestrator::new();
        orchestrator
            .expect_trigger_with()
            .times(1)
            .returning(move |_, _, _| trigger());
        PipelineService::new(
            Arc::new(MockPipelineRepository::new()),
            Arc::new(orchestrator),
        )
    }

    fn a_run() -> Run {
        let now = Utc::now();
        Run {
            id: RunId::manual(&now),
            pipeline_id: PipelineId::parse(PIPELINE).unwrap(),
            status: RunStatus::Running,
            created_at: now,
            updated_at: now,
            trace: None,
        }
    }

    /// Renders a result as its kind, to see which results are kept.
    async fn render(result: Result<Run, ExecuteError>) -> StoredOutcome {
        let status = match result {
            Ok(_) => 200,
            Err(ExecuteError::NotFound(_)) => 404,
            Err(ExecuteError::Paused) => 400,
            Err(ExecuteError::QueueFull { .. }) => 429,
            Err(ExecuteError::Backend(_)) => 503,
        };
        outcome(status)
    }

    #[tokio::test]
    async fn execute_is_scoped_to_the_callers_customer_and_fingerprinted_by_the_pipeline() {
        let mut store = MockIdempotencyStore::new();
        store
            .expect_claim()
            .with(eq(acme()), eq(key()), eq(PIPELINE), always())
            .times(1)
            .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
        store
            .expect_complete()
            .times(1)
            .returning(|_, _, _, _, _| Ok(()));
        let ctx = RequestContext::new(Caller::new(acme()));
        let id = PipelineId::parse(PIPELINE).unwrap();

        let ran = idempotency(store)
            .execute(&executing(|| Ok(a_run())), &ctx, &id, &key(), render)
            .await
            .unwrap();
        assert!(matches!(ran, Idempotent::Ran { outcome: o, .. } if o.status == 200));
    }

    #[tokio::test]
    async fn execute_gives_the_trigger_the_key_and_whether_an_attempt_failed_before() {
        let retention = IdempotencyConfig::DEFAULT_RETENTION;
        for (claim, retry) in [
            (Claim::Acquired(Lease::new("l1")), false),
            (Claim::Retry(Lease::new("l1")), true),
        ] {
            let before = Utc::now() - chrono::Duration::from_std(retention).unwrap();
            let mut store = MockIdempotencyStore::new();
            store
                .expect_claim()
                .returning(move |_, _, _, _| Ok(claim.clone()));
            store.expect_complete().returning(|_, _, _, _, _| Ok(()));
            let mut orchestrator = MockOrchestrator::new();
            orchestrator
                .expect_trigger_with()
                .withf(move |_, _, options| {
                    options.idempotency_key == Some(key())
                        && options.retry_since.is_some() == retry
                        && options.retry_since.is_none_or(|since| {
                            since >= before && since <= Utc::now() - chrono::Duration::hours(23)
                        })
                })
                .times(1)
                .returning(|_, _, _| Ok(a_run()));
            let service = PipelineService::new(
                Arc::new(MockPipelineRepository::new()),
                Arc::new(orchestrator),
            );
            let ctx = RequestContext::new(Caller::new(acme()));
            let id = PipelineId::parse(PIPELINE).unwrap();

            let ran = idempotency(store)
                .execute(&service, &ctx, &id, &key(), render)
                .await
                .unwrap();
            assert!(matches!(ran, Idempotent::Ran { outcome: o, .. } if o.status == 200));
        }
    }

    #[tokio::test]
    async fn a_run_rendered_as_a_server_error_is_not_kept() {
        let mut store = MockIdempotencyStore::new();
        store
            .expect_claim()
            .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
        store.expect_complete().never();
        store
            .expect_release()
            .times(1)
            .returning(|_, _, _, _| Ok(()));
        let ctx = RequestContext::new(Caller::new(acme()));
        let id = PipelineId::parse(PIPELINE).unwrap();

        let ran = idempotency(store)
            .execute(&executing(|| Ok(a_run())), &ctx, &id, &key(), |_| async {
                outcome(500)
            })
            .await
            .unwrap();
        assert!(matches!(ran, Idempotent::Ran { outcome: o, .. } if o.status == 500));
    }

    #[tokio::test]
    async fn runs_and_refusals_are_kept_while_full_queues_and_backend_failures_are_released() {
        type Trigger = fn() -> Result<Run, TriggerError>;
        let cases: [(Trigger, u16, bool); 5] = [
            (|| Ok(a_run()), 200, true),
            (|| Err(TriggerError::NotFound), 404, true),
            (|| Err(TriggerError::Paused), 400, true),
            (|| Err(TriggerError::QueueFull { limit: 1 }), 429, false),
            (
                || Err(TriggerError::Backend(BackendError::timeout("slow"))),
                503,
                false,
            ),
        ];
        for (trigger, status, kept) in cases {
            let mut store = MockIdempotencyStore::new();
            store
                .expect_claim()
                .returning(|_, _, _, _| Ok(Claim::Acquired(Lease::new("l1"))));
            store
                .expect_complete()
                .times(usize::from(kept))
                .returning(|_, _, _, _, _| Ok(()));
            store
                .expect_release()
                .times(usize::from(!kept))
                .returning(|_, _, _, _| Ok(()));
            let ctx = RequestContext::new(Caller::new(acme()));
            let id = PipelineId::parse(PIPELINE).unwrap();

            let ran = idempotency(store)
                .execute(&executing(trigger), &ctx, &id, &key(), render)
                .await
                .unwrap();
            assert!(matches!(ran, Idempotent::Ran { outcome: o, .. } if o.status == status));
        }
    }
}
