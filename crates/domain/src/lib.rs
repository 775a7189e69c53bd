//! Maestro's domain: pipelines and their runs, the use cases that act on
//! them, and the ports through which the use cases reach a backend.
//!
//! The crate does no I/O and knows no web framework, HTTP client or async
//! runtime. Adapters implement the ports ([`PipelineRepository`],
//! [`Orchestrator`], [`AuthContext`]); [`PipelineService`] holds them as trait
//! objects so that the backend is chosen at run time.
//!
//! ```
//! use domain::PipelineId;
//!
//! let id = PipelineId::parse("1B33AD2F-33D3-4837-9EEB-83C82C8B909D")?;
//! assert_eq!(id.as_str(), "1b33ad2f_33d3_4837_9eeb_83c82c8b909d");
//! # Ok::<(), domain::InvalidPipelineId>(())
//! ```

mod auth;
mod clock;
mod error;
mod idempotency;
#[cfg(feature = "testkit")]
pub mod idempotency_testkit;
mod pipeline;
mod ports;
mod run;
mod service;

pub use auth::{AuthContext, AuthError, Caller, CustomerId, InvalidCustomerId, RequestContext};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BackendError, BackendErrorKind};
pub use idempotency::{
    Attempt, Claim, Completion, Idempotency, IdempotencyConfig, IdempotencyError, IdempotencyKey,
    IdempotencyStore, Idempotent, InvalidIdempotencyKey, Lease, StoreError, StoredOutcome,
};
pub use pipeline::{InvalidPipelineId, Pipeline, PipelineId, PipelineStatus, PipelineSummary};
pub use ports::{
    LookupError, Orchestrator, PipelineRepository, RunLookupError, RunsError, SetPausedError,
    TriggerError, TriggerOptions,
};
pub use run::{
    InvalidRunId, InvalidRunQuery, InvalidRunStatus, ManualRunClock, Run, RunId, RunPage, RunQuery,
    RunStatus, Timestamp, format_timestamp,
};
pub use service::{
    ExecuteError, GetPipelineError, GetRunError, ListPipelinesError, ListRunsError, PauseError,
    PipelineService, UnpauseError,
};

#[cfg(any(test, feature = "mock"))]
pub use auth::MockAuthContext;
#[cfg(any(test, feature = "mock"))]
pub use idempotency::MockIdempotencyStore;
#[cfg(any(test, feature = "mock"))]
pub use ports::{MockOrchestrator, MockPipelineRepository};
