//! Idempotency keys: a client's retry of an execute it sent before gets the
//! first outcome again instead of a second run.
//!
//! The [`IdempotencyStore`] port keeps, per customer and key, either a claim
//! (an execute with this key is in flight), a note that an attempt failed,
//! or the record of the outcome of the execute that held the claim.
//! [`Idempotency::execute`] is the one place that decides what an execute
//! with a key does; `docs/idempotency.md` holds the table of its rules.
//!
//! What is kept, and for how long, in the domain's terms:
//! - a run, and the refusal of a paused pipeline, are final: a retry would
//!   get them again, so they are kept for [`IdempotencyConfig::retention`];
//! - the refusal of a pipeline that is not the caller's is kept only for
//!   [`IdempotencyConfig::not_found_retention`]: whoever sends keys for
//!   pipelines that do not exist should not fill the store for a day;
//! - a full queue and a backend failure invite a retry, and are not kept;
//!   what is kept is that an attempt failed, so that the retry can look for
//!   the run the failed attempt may have made (its answer was lost) rather
//!   than make a second one.
//!
//! A claim has a deadline, so an execute lost with its process never locks
//! a key for good: past it, the claim reads as a failed attempt, and the
//! retry is told to look for the run the lost execute may have made. Each
//! customer holds a bounded number of keys, so that one customer's keys
//! never push out another's. The store keeps records as bytes it never
//! reads; this module writes and reads them.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    Clock, CustomerId, ExecuteError, PipelineId, PipelineService, RequestContext, Run, RunConf,
    RunId, RunStatus, Timestamp, TriggerRequest, conf::write_json_string, format_timestamp,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client-chosen key naming one logical request, scoped to the caller's
/// customer: 1 to 255 visible ASCII characters (`!` to `~`), taken as they
/// are.
///
/// Shared, not copied, when cloned: a store files a key under several
/// indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

/// The text was not a usable idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key must be 1 to 255 visible ASCII characters")]
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
        Ok(Self(raw.into()))
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
#[non_exhaustive]
pub enum Claim {
    /// Nothing was there: the key is now claimed by this request, in flight
    /// until the claim's deadline.
    Acquired(Lease),
    /// An earlier request with the key and the same fingerprint failed in a
    /// way that invites a retry, or was lost (its claim passed its deadline
    /// unfinished): the key is now claimed by this request, which should
    /// look for what the earlier one may have done.
    Retry(Lease),
    /// A request with the key and the same fingerprint finished: its record,
    /// byte for byte as it was completed.
    Done(Vec<u8>),
    /// A request with the key and the same fingerprint holds the claim,
    /// before its deadline.
    InFlight,
    /// The key holds a claim, a failed attempt or a record of a request
    /// with another fingerprint.
    Mismatch,
}

/// Why the idempotency store did not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, failed, or holds something it
    /// cannot read; or a new key found its customer at its bound with
    /// nothing but claims in flight.
    #[error("idempotency store failed: {context}")]
    Failed {
        /// What was being done, for the log.
        context: String,
        /// The underlying cause, kept for the log's cause chain.
        #[source]
        source: Option<BoxError>,
    },
    /// The claim is no longer this request's (another request took the key
    /// over after the claim's deadline, or it was forgotten): nothing was
    /// written.
    #[error("the claim on the idempotency key was lost before it was completed")]
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

/// Where claims and records of idempotency keys live, scoped by customer.
///
/// Every method is atomic for one customer's key: of many concurrent
/// claims of a free key, exactly one is [`Claim::Acquired`]. The records
/// are bytes the store keeps as they are and never reads.
///
/// What a key holds, a claim, a record or a failed attempt, is live until
/// it expires; a customer holds at most [`ClaimTerms::keys_per_customer`]
/// live keys, so that no customer's keys can push out another's (see
/// [`IdempotencyStore::claim`]).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` of `scope` for a request whose `fingerprint` (what the
    /// request asks for, normalized) is given, or reports what holds it.
    ///
    /// A new claim is in flight until its deadline, [`ClaimTerms::in_flight`]
    /// from now, unless it is completed or released first; a claim with the
    /// same fingerprint meanwhile is [`Claim::InFlight`]. A claim still
    /// there past its deadline is the claim of a request that was lost
    /// (its process died, or it outlived its deadline): it reads exactly as
    /// a failed attempt, for [`ClaimTerms::retention`] after the deadline.
    /// The next claim with the same fingerprint takes it over as
    /// [`Claim::Retry`], so that the retry looks for what the lost request
    /// may have done, and one with another fingerprint is
    /// [`Claim::Mismatch`]. Until another request takes it over, the lost
    /// request may still complete or release its claim.
    ///
    /// A new key of a customer that holds [`ClaimTerms::keys_per_customer`]
    /// live keys makes room by forgetting one of that customer's own: the
    /// record or failed attempt (a claim past its deadline is one) closest
    /// to its expiry; never a claim in flight, never another customer's
    /// entry. Taking over a failed attempt, and answering with what holds
    /// the key, need no room.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when the store fails, or when the customer is
    /// at its bound with nothing but claims in flight; the caller must then
    /// not run the request, since it cannot know whether another one runs.
    async fn claim(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        fingerprint: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError>;

    /// Replaces the claim that `lease` proves with `record`, kept for
    /// `retention`. A claim past its deadline is still the lease's until
    /// another request takes the key over.
    ///
    /// # Errors
    /// [`StoreError::ClaimLost`] when the claim is no longer the lease's
    /// (another request took the key over after the claim's deadline, or
    /// the claim was forgotten); nothing was written then.
    /// [`StoreError::Failed`] when the store fails.
    async fn complete(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        record: &[u8],
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
    /// fails; the claim then reads as a failed attempt once past its
    /// deadline.
    async fn release(
        &self,
        scope: &CustomerId,
        key: &IdempotencyKey,
        lease: &Lease,
        retention: Duration,
    ) -> Result<(), StoreError>;
}

/// What a new claim is held to: the deadline of its request, how long it
/// is remembered past that deadline, and how many live keys its customer
/// may hold. [`IdempotencyConfig::claim_terms`] gives the service's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimTerms {
    /// How long the claim is in flight: a repeat meanwhile is refused. Its
    /// end is the claim's deadline.
    pub in_flight: Duration,
    /// How long a claim still there past its deadline reads as a failed
    /// attempt before the key is free.
    pub retention: Duration,
    /// The most live keys the claim's customer may hold, this one included
    /// (at least one).
    pub keys_per_customer: usize,
}

impl ClaimTerms {
    /// Claims in flight for `in_flight`, remembered as failed attempts for
    /// `retention` past their deadline, with at most `keys_per_customer`
    /// live keys a customer (at least one).
    pub fn new(in_flight: Duration, retention: Duration, keys_per_customer: usize) -> Self {
        Self {
            in_flight,
            retention,
            keys_per_customer: keys_per_customer.max(1),
        }
    }
}

/// Whether a request that holds a key's claim is the first to try it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// No earlier request with the key ran (within the retention).
    First,
    /// An earlier request with the key failed in a way that invited a
    /// retry, or was lost; it may have done part of its work.
    Retry,
}

/// How long claims and outcomes are kept, and how many keys a customer
/// may hold.
///
/// Start from [`IdempotencyConfig::default`] and set what differs; more
/// settings may come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// How long a final outcome is given again, and a failed attempt
    /// remembered. Default 24 h.
    pub retention: Duration,
    /// How long the refusal of a pipeline that is not the caller's is given
    /// again. Default 1 min: long enough for a client's quick retries, short
    /// enough that keys sent for pipelines that do not exist do not fill the
    /// store.
    pub not_found_retention: Duration,
    /// How long a claim is in flight before its deadline, so that a
    /// request lost with its process does not lock the key for good: past
    /// it, the claim reads as a failed attempt and the next request with
    /// the key runs as a retry. It must outlast the slowest request (the
    /// backend's timeout and a margin), or a retry could run alongside it.
    /// Default 30 s.
    pub in_flight: Duration,
    /// The most live keys one customer may hold in the store. At the bound,
    /// a new key makes room by forgetting the customer's own kept outcome
    /// or failed attempt closest to its expiry (a very late repeat of that
    /// key runs again, as a first attempt), and is refused when the
    /// customer holds nothing but claims in flight. Default
    /// [`Self::DEFAULT_KEYS_PER_CUSTOMER`].
    pub keys_per_customer: usize,
}

impl IdempotencyConfig {
    /// The default [`IdempotencyConfig::retention`].
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
    /// The default [`IdempotencyConfig::not_found_retention`].
    pub const DEFAULT_NOT_FOUND_RETENTION: Duration = Duration::from_secs(60);
    /// The default [`IdempotencyConfig::in_flight`].
    pub const DEFAULT_IN_FLIGHT: Duration = Duration::from_secs(30);
    /// The default [`IdempotencyConfig::keys_per_customer`]: one execute
    /// with a new key every 9 s, all day, for the default retention of a
    /// day, far beyond what a customer's schedulers and retries send;
    /// some 3 MB of a customer's records at most, so that the in-memory
    /// store's 100,000 entries hold ten customers at their bound.
    pub const DEFAULT_KEYS_PER_CUSTOMER: usize = 10_000;

    /// What a new claim is held to under these settings.
    pub fn claim_terms(&self) -> ClaimTerms {
        ClaimTerms::new(self.in_flight, self.retention, self.keys_per_customer)
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: Self::DEFAULT_RETENTION,
            not_found_retention: Self::DEFAULT_NOT_FOUND_RETENTION,
            in_flight: Self::DEFAULT_IN_FLIGHT,
            keys_per_customer: Self::DEFAULT_KEYS_PER_CUSTOMER,
        }
    }
}

/// What an execute with a key got.
#[derive(Debug)]
pub enum Idempotent {
    /// The execute ran, and this is its outcome.
    Ran {
        /// The execute's own outcome.
        outcome: Result<Run, ExecuteError>,
        /// Why the outcome could not be recorded or the claim released, if
        /// that failed; the outcome stands, and the claim reads as a failed
        /// attempt once past its deadline.
        record_error: Option<StoreError>,
    },
    /// An earlier execute with the key ran; this is its outcome, as it was
    /// then, and nothing ran now.
    Replayed(Result<Run, ExecuteError>),
}

/// Why an execute with a key did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// An earlier execute with the key is still in flight.
    #[error("an execute with this idempotency key is still in flight")]
    InFlight,
    /// The key was used for an execute that asked for something else.
    #[error("the idempotency key was used for another execute")]
    KeyReused,
    /// The store failed, so whether the execute already ran is unknown.
    #[error(transparent)]
    Store(StoreError),
}

/// Executes pipelines at most once per customer and key, over a store.
///
/// Cheap to clone: it holds the store and the clock behind [`Arc`]s.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    config: IdempotencyConfig,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Idempotent executes over `store`, with the given retentions, claim
    /// deadline and bound, reading the time from `clock`.
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        config: IdempotencyConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            config,
            clock,
        }
    }

    /// The retentions, claim deadline and bound in use.
    pub fn config(&self) -> IdempotencyConfig {
        self.config
    }

    /// Executes the caller's pipeline at most once for `key` (scoped to the
    /// caller's customer): the execute use case, unless an execute with the
    /// key ran or runs already. What the request asks for (the pipeline) is
    /// its fingerprint: a repeat must ask for the same.
    ///
    /// The trigger carries the key, and on a retry after a failed attempt
    /// says since when that attempt's run may exist (see
    /// [`TriggerRequest::retrying_since`]).
    ///
    /// The future should be run to its end: an execute dropped halfway keeps
    /// its claim until the claim's deadline, since whether it started a run
    /// is unknown; then the next request with the key runs as a retry.
    ///
    /// # Errors
    /// [`IdempotencyError::InFlight`] while an earlier execute with the key
    /// runs; [`IdempotencyError::KeyReused`] when the key was used with
    /// another fingerprint; [`IdempotencyError::Store`] when the store fails
    /// before anything ran. In none of these cases did anything run.
    pub async fn execute(
        &self,
        service: &PipelineService,
        ctx: &RequestContext,
        key: &IdempotencyKey,
        request: TriggerRequest,
    ) -> Result<Idempotent, IdempotencyError> {
        let scope = ctx.customer();
        let fingerprint = fingerprint(&request);
        let claim = self
            .store
            .claim(scope, key, &fingerprint, self.config.claim_terms())
            .await
            .map_err(IdempotencyError::Store)?;
        let (lease, attempt) = match claim {
            Claim::Acquired(lease) => (lease, Attempt::First),
            Claim::Retry(lease) => (lease, Attempt::Retry),
            Claim::Done(record) => {
                let outcome = Kept::decode(&record).map_err(IdempotencyError::Store)?;
                return Ok(Idempotent::Replayed(outcome));
            }
            Claim::InFlight => return Err(IdempotencyError::InFlight),
            Claim::Mismatch => return Err(IdempotencyError::KeyReused),
        };
        let mut request = request.with_idempotency_key(key.clone());
        if attempt == Attempt::Retry {
            request = request.retrying_since(self.retry_since());
        }
        let outcome = service.execute(ctx, &request).await;
        let recorded = match Kept::of(&outcome) {
            Some(kept) => {
                let retention = match kept {
                    Kept::NotFound { .. } => self.config.not_found_retention,
                    Kept::Run(_) | Kept::Paused { .. } | Kept::ConfRefused { .. } => {
                        self.config.retention
                    }
                };
                self.store
                    .complete(scope, key, &lease, &kept.encode(), retention)
                    .await
            }
            None => {
                self.store
                    .release(scope, key, &lease, self.config.retention)
                    .await
            }
        };
        Ok(Idempotent::Ran {
            outcome,
            record_error: recorded.err(),
        })
    }

    /// The earliest instant a failed attempt still noted in the store can
    /// have run: the retention back from now.
    fn retry_since(&self) -> Timestamp {
        let retention = TimeDelta::from_std(self.config.retention).unwrap_or(TimeDelta::MAX);
        self.clock
            .now()
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// What an execute asks for, normalized: two executes with the same key
/// must ask for the same pipeline with the same parameters. The parameters
/// count by a digest of their canonical form (key order does not matter),
/// so that a kept key costs the store the same few bytes whatever the
/// conf; without parameters the fingerprint is the pipeline id alone, as
/// it was before runs had parameters.
fn fingerprint(request: &TriggerRequest) -> String {
    let pipeline = request.pipeline_id().as_str();
    if request.conf().is_empty() {
        return pipeline.to_owned();
    }
    let digest = Sha256::digest(request.conf().fingerprint().as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{pipeline}:conf-sha256:{hex}")
}

/// The outcome of an execute, as kept: a run, or a final refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kept", rename_all = "snake_case")]
enum Kept {
    Run(KeptRun),
    NotFound {
        pipeline_id: String,
    },
    Paused {
        pipeline_id: String,
    },
    ConfRefused {
        pipeline_id: String,
        parameter: Option<String>,
        reason: String,
    },
}

/// The room a kept run's record is given at once: its keys, a `manual__`
/// run id, a pipeline id, a status, two instants and an empty `conf`
/// take some 230 bytes.
const KEPT_RUN_BYTES: usize = 256;

/// A run as kept; instants as RFC 3339 text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeptRun {
    id: String,
    pipeline_id: String,
    status: String,
    created_at: String,
    updated_at: String,
    trace: Option<String>,
    /// Absent in records of versions before run parameters.
    #[serde(default)]
    conf: serde_json::Map<String, serde_json::Value>,
}

impl Kept {
    /// What is kept of `outcome`: `None` for an outcome that invites a
    /// retry. No `_` arm: a new way for execute to fail must be placed on
    /// one side or the other.
    fn of(outcome: &Result<Run, ExecuteError>) -> Option<Self> {
        match outcome {
            Ok(run) => Some(Self::Run(KeptRun {
                id: run.id.as_str().to_owned(),
                pipeline_id: run.pipeline_id.as_str().to_owned(),
                status: run.status.as_str().to_owned(),
                created_at: format_timestamp(&run.created_at),
                updated_at: format_timestamp(&run.updated_at),
                trace: run.trace.clone(),
                conf: run.conf.as_map().clone(),
            })),
            Err(ExecuteError::NotFound(id)) => Some(Self::NotFound {
                pipeline_id: id.as_str().to_owned(),
            }),
            Err(ExecuteError::Paused(id)) => Some(Self::Paused {
                pipeline_id: id.as_str().to_owned(),
            }),
            // The same parameters would be refused again.
            Err(ExecuteError::ConfRefused {
                pipeline_id,
                parameter,
                reason,
            }) => Some(Self::ConfRefused {
                pipeline_id: pipeline_id.as_str().to_owned(),
                parameter: parameter.clone(),
                reason: reason.clone(),
            }),
            Err(ExecuteError::QueueFull { .. } | ExecuteError::Backend(_)) => None,
        }
    }

    /// The record, as the derived serialization writes it. A run, what
    /// nearly every record keeps, is written here, each string copied as it
    /// is when it needs no escape: serde_json escaping them a byte at a
    /// time was a twentieth of a keyed execute (a test holds the two to the
    /// same bytes).
    fn encode(&self) -> Vec<u8> {
        let Self::Run(run) = self else {
            // Serializing plain strings and options cannot fail.
            return serde_json::to_vec(self).unwrap_or_default();
        };
        let mut out =
            String::with_capacity(KEPT_RUN_BYTES + run.trace.as_ref().map_or(0, String::len));
        for (key, value) in [
            (r#"{"kept":"run","id":"#, &run.id),
            (r#","pipeline_id":"#, &run.pipeline_id),
            (r#","status":"#, &run.status),
            (r#","created_at":"#, &run.created_at),
            (r#","updated_at":"#, &run.updated_at),
        ] {
            out.push_str(key);
            write_json_string(&mut out, value);
        }
        out.push_str(r#","trace":"#);
        match &run.trace {
            Some(trace) => write_json_string(&mut out, trace),
            None => out.push_str("null"),
        }
        out.push_str(r#","conf":"#);
        if run.conf.is_empty() {
            out.push_str("{}");
        } else {
            // Serializing a map of JSON values cannot fail.
            out.push_str(&serde_json::to_string(&run.conf).unwrap_or_default());
        }
        out.push('}');
        out.into_bytes()
    }

    /// The outcome a record keeps.
    fn decode(record: &[u8]) -> Result<Result<Run, ExecuteError>, StoreError> {
        serde_json::from_slice::<Self>(record)
            .map_err(|err| err.to_string())
            .and_then(Self::into_outcome)
            .map_err(|detail| {
                StoreError::failed(format!("a kept idempotency record is unreadable: {detail}"))
            })
    }

    fn into_outcome(self) -> Result<Result<Run, ExecuteError>, String> {
        let pipeline = |raw: &str| PipelineId::parse(raw).map_err(|err| err.to_string());
        Ok(match self {
            Self::Run(kept) => {
                let mut run = Run::new(
                    RunId::parse(&kept.id).map_err(|err| err.to_string())?,
                    pipeline(&kept.pipeline_id)?,
                    RunStatus::parse(&kept.status).map_err(|err| err.to_string())?,
                    parse_instant(&kept.created_at)?,
                );
                run.updated_at = parse_instant(&kept.updated_at)?;
                run.trace = kept.trace;
                run.conf = RunConf::from_engine(kept.conf);
                Ok(run)
            }
            Self::NotFound { pipeline_id } => Err(ExecuteError::NotFound(pipeline(&pipeline_id)?)),
            Self::Paused { pipeline_id } => Err(ExecuteError::Paused(pipeline(&pipeline_id)?)),
            Self::ConfRefused {
                pipeline_id,
                parameter,
                reason,
            } => Err(ExecuteError::ConfRefused {
                pipeline_id: pipeline(&pipeline_id)?,
                parameter,
                reason,
            }),
        })
    }
}

fn parse_instant(raw: &str) -> Result<Timestamp, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| format!("{raw:?}: {err}"))
}

#[cfg(test)]
mod tests;
