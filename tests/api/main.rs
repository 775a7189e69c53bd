//! Black-box tests of the whole service: the HTTP contract on the memory
//! backend, through the router served in process on port 0, and through
//! the real `maestro` binary.

mod auth;
mod binary;
mod errors;
mod execute;
mod helpers;
mod operations;
mod pause;
mod pipelines;
mod runs;
