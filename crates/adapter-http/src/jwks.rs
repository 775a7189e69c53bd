//! Verification keys from a JWKS endpoint, selected by `kid`, cached and refreshed.
