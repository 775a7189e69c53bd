//! The Platform-API backend: a forwarding client that implements Maestro's
//! ports by calling an upstream pipeline platform over HTTP.
//!
//! The upstream contract it speaks is `docs/backends/platform-api.md`. In
//! short: the public request with the normalized pipeline id and the caller's
//! customer id added, a bearer service token, the request id passed on, and
//! the same `{"status", "data"}` and `{"detail": {...}}` envelopes back.
//!
//! Execute forwards the run's parameters (`conf`, `{}` when none), and runs
//! read back the parameters the upstream recorded (none when an older
//! upstream leaves `conf` out). Cancel posts to the run's own route.
//!
//! Upstream refusals keep their meaning (`PipelineNotFound` stays not-found,
//! `InvalidConf` names the refused parameter with a bounded reason, and so
//! on); anything else the upstream does becomes a
//! [`domain::BackendError`] of the right kind, whose context is for the log
//! and never holds the service token. Reads are retried on connection
//! failures and 502/503; writes never are. Every call, retries included, is
//! bounded by the configured timeout.
//!
//! A run id is percent-encoded into its path segment. The ids `.` and `..`
//! never go into a path, since URL normalisation would turn them into
//! another route: for a read or a cancel of such a run, the backend reads
//! the pipeline instead, and answers that the run is not found (or that the
//! pipeline is not). Any other path that
//! the URL library would rewrite is refused before it is sent.
//!
//! "Now" is read from a [`domain::Clock`]: [`runtime::TokioClock`] unless
//! [`PlatformApiBackend::with_clock`] gives another. Waits (the backoff
//! between retries, the deadline of a call) are tokio timers, so tests run
//! them on tokio's paused clock.
//!
//! [`PlatformApiChanges`] over the backend is the feed's
//! [`domain::RunChangeSource`]: it polls the runs of the pipelines of the
//! customers someone listens to ([`WatchedCustomers`]), with the same
//! routes.
//!
//! One backend serves both ports:
//!
//! ```
//! use std::sync::Arc;
//!
//! use adapter_platform_api::{PlatformApiBackend, PlatformApiConfig};
//!
//! let backend = Arc::new(PlatformApiBackend::new(PlatformApiConfig {
//!     base_url: "https://platform.internal".to_owned(),
//!     token: "s3rv1ce-t0ken".into(),
//!     timeout: PlatformApiConfig::DEFAULT_TIMEOUT,
//! })?);
//! let service = domain::PipelineService::new(backend.clone(), backend);
//! # let _ = service;
//! # Ok::<(), adapter_platform_api::ConfigError>(())
//! ```

mod backend;
mod changes;
mod client;
mod config;
mod retry;
mod wire;

pub use backend::PlatformApiBackend;
pub use changes::{DEFAULT_POLL_INTERVAL, MAX_PAGES, PlatformApiChanges, WINDOW, WatchedCustomers};
pub use config::{ConfigError, PlatformApiConfig};
