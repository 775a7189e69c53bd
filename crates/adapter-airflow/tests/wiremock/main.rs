//! The Airflow backend over a fake Airflow on wiremock: one test binary,
//! one module per suite, sharing the fake in `common`.
//!
//! Every backend in it reads the time from a `domain::ManualClock` that the
//! test moves: no test sleeps, and none depends on today's date.

mod auth;
mod cancel;
mod changes;
mod common;
mod conf;
mod failures;
mod idempotent_trigger;
mod pipelines;
mod runs;
mod trigger_checks;
mod trigger_retry;
