//! The readiness checks only the binary can make, because each needs an
//! adapter other than adapter-http: whether the token verifier has its keys
//! (adapter-auth) and whether Redis answers (adapter-redis).

use std::sync::Arc;

use adapter_auth::KeyReadiness;
use adapter_http::{CheckError, ReadinessCheck};

use async_trait::async_trait;

/// The token verifier has its keys: at once for a static key, once the key
/// set is fetched for a JWKS endpoint or OIDC discovery.
#[derive(Debug)]
pub(crate) struct AuthKeys(pub(crate) Arc<dyn KeyReadiness>);

#[async_trait]
impl ReadinessCheck for AuthKeys {
    fn name(&self) -> &'static str {
        "auth_keys"
    }

    async fn check(&self) -> Result<(), CheckError> {
        if self.0.keys_loaded() {
            Ok(())
        } else {
            Err("the token verification keys are not loaded yet".into())
        }
    }
}

/// Redis, where `Idempotency-Key` answers, events and webhooks are kept,
/// answers a `PING`.
#[derive(Debug)]
pub(crate) struct Redis(pub(crate) adapter_redis::Redis);

#[async_trait]
impl ReadinessCheck for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), CheckError> {
        self.0.ping().await.map_err(Into::into)
    }
}
