//! Maestro's HTTP API: the axum router, JWT authentication, error mapping,
//! metrics and the OpenAPI document.

pub mod jwt;
