//! The embedded default's conveniences: a random development secret with a
//! ready token and curl line, and `maestro token`.
//!
//! Minting tokens lives here, in the binary, rather than next to the
//! verifiers: it is a development tool, and a production gateway has no
//! business signing anything.

use std::{net::SocketAddr, time::Duration};

use adapter_auth::static_key::MIN_HS256_SECRET_BYTES;
use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use domain::{Clock, CustomerId, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

use crate::TokenArgs;

/// How long the development banner's token is valid.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A fresh random secret for a service started without a key. It lives only
/// in this process: restarting invalidates every token minted for it.
pub(crate) fn random_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
}

/// What the embedded default prints at start: a token for the demo customer
/// and a request that works with it.
#[derive(Debug)]
pub(crate) struct DevBanner {
    pub(crate) token: String,
    pub(crate) customer: String,
    pub(crate) pipeline_id: Option<String>,
}

impl DevBanner {
    pub(crate) fn new(
        secret: &SecretString,
        customer: &CustomerId,
        pipeline_id: Option<String>,
        clock: &dyn Clock,
    ) -> anyhow::Result<Self> {
        let mut claims = TokenClaims::new(customer.clone(), clock.now(), DEV_TOKEN_TTL);
        claims.subject = Some("maestro-dev".to_owned());
        let token = mint_hs256(secret.expose_secret().as_bytes(), &claims)?;
        Ok(Self {
            token,
            customer: customer.to_string(),
            pipeline_id,
        })
    }

    /// Prints the banner to standard output (never to the log, which must
    /// hold no token).
    pub(crate) fn print(&self, addr: SocketAddr) {
        let Self {
            token,
            customer,
            pipeline_id,
        } = self;
        println!();
        println!("Maestro is running on its embedded default, with a random development secret.");
        println!(
            "It listens on loopback only. A token for customer `{customer}`, valid for 24 hours:"
        );
        println!();
        println!("  export TOKEN={token}");
        println!();
        if let Some(pipeline_id) = pipeline_id {
            println!("Trigger a demo pipeline:");
            println!();
            println!(
                "  curl -s -X POST http://{addr}/platform/pipeline/execute -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"pipeline_id\": \"{pipeline_id}\"}}'"
            );
            println!();
        }
        println!("List your pipelines:");
        println!();
        println!("  curl -s http://{addr}/platform/pipelines -H \"Authorization: Bearer $TOKEN\"");
        println!();
        println!("Interactive API docs: http://{addr}/docs");
        println!();
    }
}

/// The token `maestro token` prints.
///
/// # Errors
/// When no secret is configured, the customer id is unusable, or the secret
/// is too short.
pub fn mint_token(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = args.jwt_hs256_secret.as_ref().context(
        "no secret configured: set MAESTRO_JWT_HS256_SECRET (or --jwt-hs256-secret) to the secret the service verifies with",
    )?;
    let customer = CustomerId::parse(&args.customer)?;
    // The clock the service would use, so that a token minted here and the
    // service agree on the time.
    let now = runtime::TokioClock::start().now();
    let mut claims = TokenClaims::new(customer, now, Duration::from_secs(args.ttl_seconds));
    claims
        .customer_claim
        .clone_from(&args.claims.jwt_customer_claim);
    claims.subject.clone_from(&args.subject);
    claims.issuer.clone_from(&args.claims.jwt_issuer);
    claims.audience.clone_from(&args.claims.jwt_audience);
    Ok(mint_hs256(secret.expose_secret().as_bytes(), &claims)?)
}

/// The claims of a token minted for a customer: the customer claim, and
/// `sub`, `iss`, `aud` when set, `iat` and `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    /// The name of the claim holding the customer.
    pub(crate) customer_claim: String,
    /// The customer the token acts for.
    pub(crate) customer: CustomerId,
    /// `sub`, who acts.
    pub(crate) subject: Option<String>,
    /// `iss`.
    pub(crate) issuer: Option<String>,
    /// `aud`.
    pub(crate) audience: Option<String>,
    /// `iat`, seconds since the Unix epoch.
    pub(crate) issued_at: u64,
    /// `exp`, seconds since the Unix epoch.
    pub(crate) expires_at: u64,
}

impl TokenClaims {
    /// Claims for `customer` under the default claim name, issued at `now`
    /// and valid for `ttl`.
    pub(crate) fn new(customer: CustomerId, now: Timestamp, ttl: Duration) -> Self {
        // Before the Unix epoch only a broken clock says; stamp the epoch.
        let now = u64::try_from(now.timestamp()).unwrap_or(0);
        Self {
            customer_claim: adapter_auth::claims::DEFAULT_CUSTOMER_CLAIM.to_owned(),
            customer,
            subject: None,
            issuer: None,
            audience: None,
            issued_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
        }
    }

    /// The claims as a JSON object. A customer claim named like a
    /// registered claim wins over it, so the token never carries the same
    /// key twice.
    fn to_json(&self) -> Value {
        let mut claims = serde_json::Map::new();
        let text = |value: &Option<String>| value.clone().map(Value::String);
        for (name, value) in [
            ("sub", text(&self.subject)),
            ("iss", text(&self.issuer)),
            ("aud", text(&self.audience)),
            ("iat", Some(Value::from(self.issued_at))),
            ("exp", Some(Value::from(self.expires_at))),
        ] {
            if let Some(value) = value {
                claims.insert(name.to_owned(), value);
            }
        }
        claims.insert(
            self.customer_claim.clone(),
            Value::String(self.customer.to_string()),
        );
        Value::Object(claims)
    }
}

/// A token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MintError {
    /// The secret is too short for HS256.
    #[error("the HS256 secret must be at least {min} bytes long")]
    SecretTooShort {
        /// The shortest length accepted, in bytes.
        min: usize,
    },
    /// Encoding or signing failed.
    #[error("could not sign the token: {0}")]
    Signing(String),
}

/// Mints an HS256 token over `claims`, for `maestro token` and the
/// development banner.
fn mint_hs256(secret: &[u8], claims: &TokenClaims) -> Result<String, MintError> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(MintError::SecretTooShort {
            min: MIN_HS256_SECRET_BYTES,
        });
    }
    let key =
        EncodingKey::from_secret(secret).map_err(|err| MintError::Signing(err.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims.to_json(), &key)
        .map_err(|err| MintError::Signing(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use adapter_auth::{ClaimsConfig, StaticKey, StaticKeyVerifier};
    use domain::{AuthContext as _, AuthError, Caller, ManualClock};

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    /// 2024-12-18T10:30:00Z: the minting and verifying time of these tests.
    fn clock() -> ManualClock {
        ManualClock::at_epoch_seconds(1_734_517_800)
    }

    fn claims(ttl: Duration) -> TokenClaims {
        TokenClaims::new(acme(), clock().now(), ttl)
    }

    fn acme() -> CustomerId {
        CustomerId::parse("acme").expect("valid id")
    }

    fn verifier(claims: ClaimsConfig) -> StaticKeyVerifier {
        StaticKeyVerifier::new(
            StaticKey::Hs256(SecretString::from(SECRET)),
            claims,
            Arc::new(clock()),
        )
        .expect("valid configuration")
    }

    #[tokio::test]
    async fn minted_token_claims_round_trip_through_the_verifier() {
        let mut minted = claims(Duration::from_secs(600));
        minted.subject = Some("ops".to_owned());
        minted.issuer = Some("https://issuer.example".to_owned());
        minted.audience = Some("maestro".to_owned());
        let token = mint_hs256(SECRET.as_bytes(), &minted).unwrap();
        let strict = verifier(ClaimsConfig {
            issuer: Some("https://issuer.example".to_owned()),
            audience: Some("maestro".to_owned()),
            ..ClaimsConfig::new()
        });
        let caller = strict.authenticate(&token).await;
        assert_eq!(caller, Ok(Caller::new(acme()).with_subject("ops")));

        let tenant_claims = TokenClaims {
            customer_claim: "tenant".to_owned(),
            ..claims(Duration::from_secs(600))
        };
        let tenant = verifier(ClaimsConfig {
            customer_claim: "tenant".to_owned(),
            ..ClaimsConfig::new()
        });
        let token = mint_hs256(SECRET.as_bytes(), &tenant_claims).unwrap();
        assert!(tenant.authenticate(&token).await.is_ok());
    }

    #[tokio::test]
    async fn minted_claims_expire_after_their_ttl() {
        let minted = claims(Duration::from_secs(600));
        assert_eq!(minted.expires_at - minted.issued_at, 600);
        let stale = TokenClaims {
            expires_at: minted.issued_at - 3600,
            ..minted
        };
        let token = mint_hs256(SECRET.as_bytes(), &stale).unwrap();
        assert_eq!(
            verifier(ClaimsConfig::new()).authenticate(&token).await,
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_customer_claim_named_sub_is_written_once() {
        let minted = TokenClaims {
            customer_claim: "sub".to_owned(),
            subject: Some("ignored".to_owned()),
            ..claims(Duration::from_secs(60))
        };
        let json = minted.to_json().to_string();
        assert_eq!(json.matches("\"sub\"").count(), 1, "{json}");
        assert!(json.contains("\"sub\":\"acme\""), "{json}");
    }

    #[test]
    fn minting_refuses_a_short_secret() {
        assert_eq!(
            mint_hs256(b"short", &claims(Duration::from_secs(60))),
            Err(MintError::SecretTooShort {
                min: MIN_HS256_SECRET_BYTES
            })
        );
    }
}
