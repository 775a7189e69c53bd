//! Maestro's domain: pipelines and their runs, the use cases that act on
//! them, and the ports through which the use cases reach a backend.
//!
//! The crate does no I/O and knows no web framework, HTTP client or async
//! runtime; its only dependencies are data crates (`chrono`, `serde`,
//! `serde_json`, `sha2`, `thiserror`, `unicode-properties`) and
//! `async-trait`.
//! Adapters implement the ports ([`PipelineRepository`], [`Orchestrator`],
//! [`AuthContext`], [`IdempotencyStore`], [`Clock`]); [`PipelineService`]
//! and [`Idempotency`] hold them as trait objects, so that the backend is
//! chosen at run time. `docs/domain.md` says what other teams may rely on
//! and how changes are versioned.
//!
//! # Ids in one normal form
//!
//! ```
//! use domain::PipelineId;
//!
//! let id = PipelineId::parse("1B33AD2F-33D3-4837-9EEB-83C82C8B909D")?;
//! assert_eq!(id.as_str(), "1b33ad2f_33d3_4837_9eeb_83c82c8b909d");
//! # Ok::<(), domain::InvalidPipelineId>(())
//! ```
//!
//! # A use case over the in-memory backend
//!
//! `adapter-memory` implements the ports in process; it is the backend the
//! `maestro` binary runs with by default, and a faithful fake for tests.
//!
//! ```
//! use std::sync::Arc;
//!
//! use adapter_memory::{DEMO_CUSTOMER, DEMO_PIPELINE_ID, MemoryBackend, MemoryConfig};
//! use domain::{
//!     Caller, CustomerId, ExecuteError, PipelineId, PipelineService, RequestContext, RunStatus,
//!     TriggerRequest,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = Arc::new(MemoryBackend::demo(MemoryConfig::default()));
//! let service = PipelineService::new(backend.clone(), backend);
//! let ctx = RequestContext::new(Caller::new(CustomerId::parse(DEMO_CUSTOMER)?));
//! let pipeline = PipelineId::parse(DEMO_PIPELINE_ID)?;
//!
//! // One run at a time: the second waits behind the first.
//! let first = service.execute(&ctx, &TriggerRequest::new(pipeline.clone())).await?;
//! let second = service.execute(&ctx, &TriggerRequest::new(pipeline.clone())).await?;
//! assert_eq!((first.status, second.status), (RunStatus::Running, RunStatus::Queued));
//!
//! // A paused pipeline refuses, and says which pipeline it was.
//! service.pause(&ctx, &pipeline).await?;
//! match service.execute(&ctx, &TriggerRequest::new(pipeline.clone())).await {
//!     Err(ExecuteError::Paused(id)) => assert_eq!(id, pipeline),
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//!
//! // Another customer cannot tell the pipeline exists.
//! let intruder = RequestContext::new(Caller::new(CustomerId::parse("someone-else")?));
//! assert!(service.get_pipeline(&intruder, &pipeline).await.is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Implementing a port
//!
//! A port is an `async_trait` trait, `Send + Sync`, held as `Arc<dyn _>`.
//! Here a team authenticates callers by API key instead of by JWT; the rest
//! of Maestro does not change.
//!
//! ```
//! use std::collections::HashMap;
//!
//! use async_trait::async_trait;
//! use domain::{AuthContext, AuthError, Caller, CustomerId};
//!
//! /// Callers named by API keys, each key one customer's.
//! #[derive(Debug)]
//! struct ApiKeys(HashMap<String, CustomerId>);
//!
//! #[async_trait]
//! impl AuthContext for ApiKeys {
//!     async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
//!         self.0
//!             .get(bearer_token)
//!             .map(|customer| Caller::new(customer.clone()))
//!             .ok_or(AuthError::BadSignature)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = ApiKeys(HashMap::from([("k-123".to_owned(), CustomerId::parse("acme")?)]));
//! let caller = keys.authenticate("k-123").await?;
//! assert_eq!(caller.customer().as_str(), "acme");
//! assert_eq!(keys.authenticate("k-999").await, Err(AuthError::BadSignature));
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `mock`: mockall mocks of the ports (`MockOrchestrator`, ...), for
//!   other crates' tests.
//! - `testkit`: `domain::idempotency_testkit`, the scenarios every
//!   [`IdempotencyStore`] must pass, and `domain::feed_testkit`, those of
//!   every [`EventLog`], [`Listeners`], [`WebhookStore`] and
//!   [`DeliveryQueue`].

#![warn(missing_docs)]

mod auth;
mod clock;
mod conf;
mod error;
mod feed;
#[cfg(feature = "testkit")]
pub mod feed_testkit;
mod idempotency;
#[cfg(feature = "testkit")]
pub mod idempotency_testkit;
mod pipeline;
mod ports;
mod run;
mod service;
mod trace;
mod webhooks;

pub use auth::{AuthContext, AuthError, Caller, CustomerId, InvalidCustomerId, RequestContext};
pub use clock::{Clock, ManualClock, SystemClock};
pub use conf::{InvalidConf, RunConf, RunConfSeed};
pub use error::{
    BackendError, BackendErrorKind, CancelRunError, ExecuteError, GetPipelineError, GetRunError,
    ListRunsError, SetPausedError,
};
pub use feed::{
    CustomerRead, EventFilter, EventId, EventLog, Events, FeedRead, InvalidEventId,
    InvalidRunEventType, Listeners, MIN_EVENT_RETENTION, RunChange, RunChangeSource, RunEvent,
    RunEventType, SourceCursor, StorageError,
};
pub use idempotency::{
    Attempt, Claim, ClaimTerms, Idempotency, IdempotencyConfig, IdempotencyError, IdempotencyKey,
    IdempotencyStore, Idempotent, InvalidIdempotencyKey, Lease, StoreError,
};
pub use pipeline::{InvalidPipelineId, Pipeline, PipelineId, PipelineStatus, PipelineSummary};
pub use ports::{Orchestrator, PipelineRepository, RunWatch, TriggerRequest};
pub use run::{
    InvalidRunId, InvalidRunQuery, InvalidRunStatus, ManualRunClock, Run, RunId, RunPage, RunQuery,
    RunStatus, Timestamp, TimestampText, format_timestamp, timestamp_text,
};
pub use service::PipelineService;
pub use trace::{HexId, MAX_TRACE_STATE_LEN, SpanId, TraceContext, TraceId, TraceParent};
pub use webhooks::{
    DELIVERY_RETRY_WINDOW, Delivery, DeliveryId, DeliveryQueue, InvalidWebhookId,
    InvalidWebhookUrl, MAX_WEBHOOKS_PER_CUSTOMER, NewWebhook, RegisterWebhookError, SendOutcome,
    Webhook, WebhookId, WebhookSecret, WebhookSender, WebhookStore, WebhookUrl, Webhooks,
    next_attempt,
};

#[cfg(any(test, feature = "mock"))]
pub use auth::MockAuthContext;
#[cfg(any(test, feature = "mock"))]
pub use feed::{MockEventLog, MockListeners, MockRunChangeSource};
#[cfg(any(test, feature = "mock"))]
pub use idempotency::MockIdempotencyStore;
#[cfg(any(test, feature = "mock"))]
pub use ports::{MockOrchestrator, MockPipelineRepository, MockRunWatch};
#[cfg(any(test, feature = "mock"))]
pub use webhooks::{MockDeliveryQueue, MockWebhookSender, MockWebhookStore};
