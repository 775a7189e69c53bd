//! Maestro's embedded in-memory backend: the default backend, to try
//! Maestro out with nothing else running, and the fake that tests use.
//!
//! [`MemoryBackend`] implements both [`domain::PipelineRepository`] and
//! [`domain::Orchestrator`]. Its pipelines come from a JSON fixture
//! ([`load_fixture`]) or the built-in demo set ([`demo_pipelines`]); its runs
//! are simulated truthfully: one `RUNNING` run per pipeline for
//! [`MemoryConfig::run_duration`], the others `QUEUED` in order behind it,
//! then `SUCCESS`. The simulation is lazy (no background task, no timer) and
//! reads the time from a [`domain::Clock`], by default the service's
//! [`runtime::TokioClock`], so tests drive it with `tokio::time::pause()`
//! and `tokio::time::advance()`.
//!
//! ```
//! use std::time::Duration;
//!
//! use adapter_memory::{DEMO_CUSTOMER, DEMO_PIPELINE_ID, MemoryBackend, MemoryConfig};
//! use domain::{
//!     Caller, CustomerId, Orchestrator, PipelineId, RequestContext, RunStatus, TriggerRequest,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = MemoryConfig { run_duration: Duration::from_secs(10), ..MemoryConfig::default() };
//! let backend = MemoryBackend::demo(config);
//! let ctx = RequestContext::new(Caller::new(CustomerId::parse(DEMO_CUSTOMER)?));
//! let pipeline = PipelineId::parse(DEMO_PIPELINE_ID)?;
//!
//! let first = backend.trigger(&ctx, &TriggerRequest::new(pipeline.clone())).await?;
//! let second = backend.trigger(&ctx, &TriggerRequest::new(pipeline)).await?;
//! assert_eq!((first.status, second.status), (RunStatus::Running, RunStatus::Queued));
//! # Ok(())
//! # }
//! ```

mod backend;
mod demo;
mod fixture;
mod idempotency;
mod state;

use std::time::Duration;

pub use backend::MemoryBackend;
pub use demo::{
    ACME_CUSTOMER, ACME_PIPELINE_ID, DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, DEMO_PIPELINE_ID,
    DEMO_SCHEDULED_PIPELINE_ID, demo_pipelines,
};
pub use fixture::{FixtureError, PipelineAt, load_fixture, parse_fixture};
pub use idempotency::MemoryIdempotencyStore;

/// How the memory backend simulates runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// How long a run stays `RUNNING` before it is `SUCCESS`. Zero finishes
    /// runs at once: execute returns them already `SUCCESS`. Default 10 s,
    /// long enough to see runs run and queue by hand.
    pub run_duration: Duration,
    /// The most runs one pipeline may have waiting `QUEUED`; an execute
    /// that would queue one more is refused with `QueueFull` and starts
    /// nothing. Only waiting runs count, so 0 still lets an idle pipeline
    /// run. Default 1000.
    pub queue_limit: usize,
    /// The most finished runs kept per pipeline; the oldest are forgotten
    /// first, so memory stays flat however many runs are triggered. Queued
    /// and running runs are never dropped. Default 10 000.
    pub history_limit: usize,
}

impl MemoryConfig {
    /// The default [`MemoryConfig::run_duration`].
    pub const DEFAULT_RUN_DURATION: Duration = Duration::from_secs(10);
    /// The default [`MemoryConfig::queue_limit`].
    pub const DEFAULT_QUEUE_LIMIT: usize = 1000;
    /// The default [`MemoryConfig::history_limit`].
    pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            run_duration: Self::DEFAULT_RUN_DURATION,
            queue_limit: Self::DEFAULT_QUEUE_LIMIT,
            history_limit: Self::DEFAULT_HISTORY_LIMIT,
        }
    }
}
