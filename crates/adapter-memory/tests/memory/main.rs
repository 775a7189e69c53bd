//! The memory backend through its ports, as one test binary: the
//! simulation and tenancy (`backend`), and the execute use case under
//! idempotency keys over the in-memory store (`idempotent_execute`).

mod backend;
mod idempotent_execute;
