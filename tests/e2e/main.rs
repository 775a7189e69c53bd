//! End-to-end tests against real servers, built only with the `e2e`
//! feature: the `maestro` binary on a real Apache Airflow 3 (`airflow`),
//! and instances sharing a real Redis (`redis`); `events` reads event
//! streams and receives webhooks for both. `cargo xtask e2e-airflow`
//! starts both and runs them; `.ci/run` runs `redis::` after starting a
//! Redis server.
//!
//! The harness modules of the black-box suite (`tests/api`) are shared, so
//! not every helper is used here.
#![allow(dead_code, unused_imports, unused_macros)]

#[path = "../api/fake_airflow.rs"]
mod fake_airflow;
#[path = "../api/fake_platform.rs"]
mod fake_platform;
#[path = "../api/feed.rs"]
mod feed;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/maestro.rs"]
mod maestro;

mod airflow;
mod events;
mod redis;
