//! Black-box tests of the whole service: the HTTP contract on the memory
//! backend, through the router served in process on port 0, and the same
//! contract through the real `maestro` binary on the Platform-API backend,
//! in front of a faithful fake upstream (and a fake Airflow and an OTLP
//! receiver, for tracing). The tests that need real servers
//! (Airflow, Redis) are the `e2e` target (`tests/e2e`).

mod airflow_retry;
mod auth;
mod binary;
mod edge;
mod errors;
mod events;
mod execute;
mod fake_airflow;
mod fake_platform;
mod feed;
mod helpers;
mod idempotency;
mod jwks;
mod lifecycle;
mod maestro;
mod operations;
mod pause;
mod pipelines;
mod platform_api;
mod runs;
mod shared_rate_limit;
mod tracing;
mod trigger_retry;
mod webhooks;
