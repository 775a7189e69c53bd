//! The HS256 tokens the harnesses send `maestro`, signed with the secret
//! they start it with.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs())
}

/// The claims of a harness's token.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    customer_id: &'a str,
    sub: &'a str,
    exp: u64,
}

/// An HS256 token for `customer` that expires at `exp` (Unix seconds).
pub(crate) fn mint(secret: &str, customer: &str, exp: u64) -> anyhow::Result<String> {
    let claims = Claims {
        customer_id: customer,
        sub: customer,
        exp,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .context("the secret is not an HS256 key")?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .context("cannot sign a token")
}
