//! Per-customer rate limits.
