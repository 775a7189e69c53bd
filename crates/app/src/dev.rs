//! The embedded default's conveniences: a random development secret with a
//! ready token and curl line, and `maestro token`.

use std::{net::SocketAddr, time::Duration};

use adapter_http::jwt::{TokenClaims, mint_hs256};
use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use domain::CustomerId;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

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
    ) -> anyhow::Result<Self> {
        let mut claims = TokenClaims::new(customer.clone(), DEV_TOKEN_TTL);
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
    let mut claims = TokenClaims::new(customer, Duration::from_secs(args.ttl_seconds));
    claims.customer_claim.clone_from(&args.jwt_customer_claim);
    claims.subject.clone_from(&args.subject);
    claims.issuer.clone_from(&args.jwt_issuer);
    claims.audience.clone_from(&args.jwt_audience);
    Ok(mint_hs256(secret.expose_secret().as_bytes(), &claims)?)
}
