//! The memory backend through its ports, as one test binary: the
//! simulation and tenancy (`backend`), the run lifecycle: parameters,
//! cancel and waiting (`lifecycle`), the simulation as the feed's source
//! of run changes (`feed`), the cost of listing runs with a full history
//! (`list_timing`), and the execute use case under idempotency keys over
//! the in-memory store (`idempotent_execute`).

mod backend;
mod feed;
mod idempotent_execute;
mod lifecycle;
mod list_timing;
