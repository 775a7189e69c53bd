//! Maestro's embedded in-memory backend: the default backend, to try
//! Maestro out with nothing else running, and the fake that tests use.
//!
//! [`MemoryBackend`] implements [`domain::PipelineRepository`],
//! [`domain::Orchestrator`] and [`domain::RunWatch`]. Its pipelines come
//! from a JSON fixture ([`load_fixture`]) or the built-in demo set
//! ([`demo_pipelines`]); its runs are simulated truthfully: one `RUNNING`
//! run per pipeline for [`MemoryConfig::run_duration`], the others `QUEUED`
//! in order behind it, then `SUCCESS`. A run keeps the parameters it was
//! triggered with (`Run::conf`). The simulation is lazy (no background
//! task, no timer) and reads the time from a [`domain::Clock`], by default
//! the service's [`runtime::TokioClock`], so tests drive it with
//! `tokio::time::pause()` and `tokio::time::advance()`.
//!
//! **Cancel.** A cancelled run ends `FAILED` at the cancel's instant, with
//! the trace [`domain::Run::CANCELLED_TRACE`]: a queued one never starts; a
//! running one frees the pipeline, and the next queued run starts at that
//! very instant (unless the pipeline is paused: its queued runs still wait
//! for the unpause). Cancels are the only way a run fails here. A finished
//! run is refused as `AlreadyFinished`, with its status.
//!
//! **Waiting.** [`domain::RunWatch::changed`] is woken by the change
//! itself, never by polling: each pipeline has a change signal that every
//! trigger, pause, unpause and cancel bumps, and a waiter also sets a timer
//! for the next instant the simulation will change its run by itself (the
//! end of a running run, the start of a queued one, the instant a finished
//! one leaves the history). It then reads the run again, and answers once
//! it differs from the run it saw; a run gone from the history is
//! `RunNotFound`. A waiter holds a signal receiver and a timer, no lock and
//! no task, and leaves nothing behind ([`MemoryBackend::waiters`]).
//!
//! **The feed.** [`MemoryChanges`] tells every change of every run, from
//! the simulation itself, at the instant it happens (the feed's
//! [`domain::RunChangeSource`]); [`MemoryEventLog`] keeps the feed's events
//! and its listeners, [`MemoryWebhookStore`] the webhooks and
//! [`MemoryDeliveryQueue`] their pending deliveries, all in this process:
//! the embedded default for one Maestro instance.
//!
//! ```
//! use std::time::Duration;
//!
//! use adapter_memory::{DEMO_CUSTOMER, DEMO_PIPELINE_ID, MemoryBackend, MemoryConfig};
//! use domain::{
//!     Caller, CustomerId, Orchestrator, PipelineId, RequestContext, RunStatus, RunWatch,
//!     TriggerRequest,
//! };
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = MemoryConfig { run_duration: Duration::from_secs(10), ..MemoryConfig::default() };
//! let backend = MemoryBackend::demo(config);
//! let ctx = RequestContext::new(Caller::new(CustomerId::parse(DEMO_CUSTOMER)?));
//! let pipeline = PipelineId::parse(DEMO_PIPELINE_ID)?;
//!
//! let first = backend.trigger(&ctx, &TriggerRequest::new(pipeline.clone())).await?;
//! let second = backend.trigger(&ctx, &TriggerRequest::new(pipeline.clone())).await?;
//! assert_eq!((first.status, second.status), (RunStatus::Running, RunStatus::Queued));
//!
//! // Cancelling the running run lets the queued one start at once...
//! let cancelled = backend.cancel_run(&ctx, &pipeline, &first.id).await?;
//! assert_eq!(cancelled.status, RunStatus::Failed);
//! let second = backend.get_run(&ctx, &pipeline, &second.id).await?;
//! assert_eq!((second.status, second.updated_at), (RunStatus::Running, cancelled.updated_at));
//!
//! // ...and a waiter wakes when it ends, 10 s later (tokio's time is paused).
//! let finished = backend.changed(&ctx, &second).await?;
//! assert_eq!(finished.status, RunStatus::Success);
//! # Ok(())
//! # }
//! ```

mod backend;
mod demo;
mod feed;
mod fixture;
mod idempotency;
mod source;
mod state;
mod webhooks;

use std::time::Duration;

pub use backend::MemoryBackend;
pub use demo::{
    ACME_CUSTOMER, ACME_PIPELINE_ID, DEMO_CUSTOMER, DEMO_PAUSED_PIPELINE_ID, DEMO_PIPELINE_ID,
    DEMO_SCHEDULED_PIPELINE_ID, demo_pipelines,
};
pub use feed::MemoryEventLog;
pub use fixture::{FixtureError, PipelineAt, load_fixture, parse_fixture};
pub use idempotency::MemoryIdempotencyStore;
pub use source::MemoryChanges;
pub use webhooks::{MemoryDeliveryQueue, MemoryWebhookStore};

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
    /// The most finished runs (succeeded or cancelled) kept per pipeline;
    /// the oldest are forgotten first, so memory stays flat however many
    /// runs are triggered. Queued and running runs are never dropped.
    /// Default 10 000.
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
