//! Maestro's token verification: the [`domain::AuthContext`] port over
//! signed JWTs.
//!
//! Two verifiers, one set of claim rules:
//! - [`StaticKeyVerifier`] checks every token with one configured key, an
//!   HS256 secret or a PEM RS256/ES256 public key ([`static_key`]);
//! - [`JwksVerifier`] checks RS256 and ES256 tokens with the keys an
//!   identity provider publishes at a JWKS endpoint, found directly or by
//!   OIDC discovery, refreshed in the background ([`jwks`]).
//!
//! Both apply the same [`ClaimsConfig`] (issuer, audience, customer claim,
//! leeway; [`claims`]), and both say through [`KeyReadiness`] whether they
//! have keys to verify with, which is what a readiness probe asks.
//!
//! This crate only verifies. Minting tokens is a development tool of the
//! `maestro` binary, and the HTTP side (reading the `Authorization` header,
//! answering 401) is `adapter-http`'s.

mod cache;
pub mod claims;
pub mod jwks;
pub mod static_key;
mod verify;

pub use claims::{ClaimsConfig, ClaimsConfigError};
pub use jwks::{JwksConfig, JwksConfigError, JwksFetchError, JwksSource, JwksVerifier};
pub use static_key::{StaticKey, StaticKeyError, StaticKeyVerifier};
pub use verify::{MAX_TOKEN_BYTES, MIN_RSA_BITS};

/// Whether a verifier has keys to verify tokens with.
///
/// A service should not be reported ready before its verifier is: until
/// then it refuses every token.
pub trait KeyReadiness: Send + Sync + std::fmt::Debug {
    /// Whether a key set is loaded: always for a static key, and for a JWKS
    /// endpoint once a fetch of the set has succeeded. Cheap enough to call
    /// on every probe.
    fn keys_loaded(&self) -> bool;
}
