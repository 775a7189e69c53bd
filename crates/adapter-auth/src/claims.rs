//! The claim rules every verifier applies, whatever its key: issuer,
//! audience, the claim naming the customer, and token lifetime.
//!
//! [`ClaimsConfig`] is the one place these are set: the `maestro` binary
//! fills it once from its settings and hands it to whichever verifier it
//! builds.

use std::time::Duration;

use domain::{AuthError, Caller, CustomerId};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

/// The claim that names the customer unless configured otherwise.
pub const DEFAULT_CUSTOMER_CLAIM: &str = "customer_id";

/// How far `exp` and `nbf` may be off by clock skew unless configured
/// otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The longest leeway accepted. Beyond an hour it no longer absorbs clock
/// skew but extends every token's life, and the clock arithmetic stays far
/// from overflowing.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// What a verified token's claims must say, for every verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsConfig {
    /// When set, `iss` is required and must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` is required and must name it. When unset, `aud` is
    /// not looked at.
    pub audience: Option<String>,
    /// The claim holding the customer id.
    pub customer_claim: String,
    /// How far `exp` and `nbf` may be off, for clock skew. Whole seconds.
    pub leeway: Duration,
}

impl ClaimsConfig {
    /// No issuer or audience check, the default customer claim and the
    /// default leeway.
    pub fn new() -> Self {
        Self {
            issuer: None,
            audience: None,
            customer_claim: DEFAULT_CUSTOMER_CLAIM.to_owned(),
            leeway: DEFAULT_LEEWAY,
        }
    }
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The claim settings cannot be used. Raised at start-up so that a bad
/// setting fails loudly once instead of refusing every request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsConfigError {
    /// A setting that must name something is empty.
    #[error("the JWT {0} must not be empty")]
    Empty(&'static str),
    /// The leeway is longer than [`MAX_LEEWAY`].
    #[error("the JWT leeway of {}s is longer than the {}s allowed", .0.as_secs(), MAX_LEEWAY.as_secs())]
    LeewayTooLong(Duration),
}

/// A checked [`ClaimsConfig`], ready to judge claims.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    issuer: Option<String>,
    audience: Option<String>,
    customer_claim: String,
    leeway: Duration,
}

impl ClaimRules {
    /// Checks the settings: no empty name, no leeway over [`MAX_LEEWAY`].
    pub(crate) fn new(config: ClaimsConfig) -> Result<Self, ClaimsConfigError> {
        if config.customer_claim.is_empty() {
            return Err(ClaimsConfigError::Empty("customer claim"));
        }
        if config.issuer.as_deref() == Some("") {
            return Err(ClaimsConfigError::Empty("issuer"));
        }
        if config.audience.as_deref() == Some("") {
            return Err(ClaimsConfigError::Empty("audience"));
        }
        if config.leeway > MAX_LEEWAY {
            return Err(ClaimsConfigError::LeewayTooLong(config.leeway));
        }
        Ok(Self {
            issuer: config.issuer,
            audience: config.audience,
            customer_claim: config.customer_claim,
            leeway: config.leeway,
        })
    }

    /// The validation that pins `algorithm`: `exp` required, `exp` and
    /// `nbf` checked with the leeway, and `iss` and `aud` required and
    /// checked when configured.
    pub(crate) fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        let mut required = vec!["exp"];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // jsonwebtoken refuses any token carrying `aud` when no audience
            // is expected; with none configured the claim is simply not ours
            // to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The caller verified claims name: the customer from the customer
    /// claim, the subject from `sub`.
    pub(crate) fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, AuthError> {
        let customer = match claims.get(&self.customer_claim) {
            Some(Value::String(raw)) => {
                CustomerId::parse(raw).map_err(|_| AuthError::MissingCustomer)?
            }
            _ => return Err(AuthError::MissingCustomer),
        };
        let caller = Caller::new(customer);
        Ok(match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => caller.with_subject(sub.clone()),
            _ => caller,
        })
    }

    /// The configured issuer, for `Debug` output.
    pub(crate) fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The configured audience, for `Debug` output and start-up warnings.
    pub(crate) fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The claim naming the customer, for `Debug` output.
    pub(crate) fn customer_claim(&self) -> &str {
        &self.customer_claim
    }

    /// The leeway in whole seconds, for `Debug` output.
    pub(crate) fn leeway_seconds(&self) -> u64 {
        self.leeway.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_names_and_an_overlong_leeway_are_refused() {
        let cases = [
            (
                ClaimsConfig {
                    customer_claim: String::new(),
                    ..ClaimsConfig::new()
                },
                ClaimsConfigError::Empty("customer claim"),
            ),
            (
                ClaimsConfig {
                    issuer: Some(String::new()),
                    ..ClaimsConfig::new()
                },
                ClaimsConfigError::Empty("issuer"),
            ),
            (
                ClaimsConfig {
                    audience: Some(String::new()),
                    ..ClaimsConfig::new()
                },
                ClaimsConfigError::Empty("audience"),
            ),
            (
                ClaimsConfig {
                    leeway: Duration::MAX,
                    ..ClaimsConfig::new()
                },
                ClaimsConfigError::LeewayTooLong(Duration::MAX),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(ClaimRules::new(config).err(), Some(expected));
        }
        assert!(
            ClaimRules::new(ClaimsConfig {
                leeway: MAX_LEEWAY,
                ..ClaimsConfig::new()
            })
            .is_ok()
        );
    }
}
