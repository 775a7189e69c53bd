//! The claim rules every verifier applies, whatever its key: issuer,
//! audience, the claim naming the customer, and token lifetime.
//!
//! [`ClaimsConfig`] is the one place these are set: the `maestro` binary
//! fills it once from its settings and hands it to whichever verifier it
//! builds.
//!
//! `exp` and `nbf` are judged here against the [`Clock`] the verifier is
//! given, not by jsonwebtoken, which would read the system clock: the
//! service has one clock, and tests set it rather than wait for it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::{AuthError, Caller, Clock, CustomerId};
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

/// A checked [`ClaimsConfig`] and the clock that tells the time, ready to
/// judge claims.
#[derive(Clone)]
pub(crate) struct ClaimRules {
    issuer: Option<String>,
    audience: Option<String>,
    customer_claim: String,
    leeway: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for ClaimRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimRules")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("customer_claim", &self.customer_claim)
            .field("leeway_seconds", &self.leeway.as_secs())
            .finish_non_exhaustive()
    }
}

impl ClaimRules {
    /// Checks the settings (no empty name, no leeway over [`MAX_LEEWAY`]);
    /// token lifetimes are then judged by `clock`.
    pub(crate) fn new(
        config: ClaimsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClaimsConfigError> {
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
            clock,
        })
    }

    /// The validation jsonwebtoken applies along with the signature: it
    /// pins `algorithm`, and requires and checks `iss` and `aud` when
    /// configured. Its own `exp` and `nbf` checks are off: they would read
    /// the system clock, and [`ClaimRules::admitted`] checks both instead.
    pub(crate) fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        let mut required = Vec::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
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

    /// What verified claims say, read once: the lifetime still to be judged
    /// on every use of the token, and the caller. Refused here only for a
    /// lifetime that can never hold, so that the reasons come in the same
    /// order as [`ClaimRules::admitted`] gives them.
    pub(crate) fn read(&self, claims: &Map<String, Value>) -> Result<Claimed, AuthError> {
        // A missing or unreadable `exp` is refused as expired: a token
        // without an end is never accepted.
        let exp = present(claims, "exp")
            .and_then(numeric_date)
            .ok_or(AuthError::Expired)?;
        let nbf = present(claims, "nbf").map(|nbf| numeric_date(nbf).ok_or(()));
        let customer = match claims.get(&self.customer_claim) {
            Some(Value::String(raw)) => CustomerId::parse(raw).map_err(|_| ()),
            _ => Err(()),
        };
        let caller = customer.map(|customer| {
            let caller = Caller::new(customer);
            match claims.get("sub") {
                Some(Value::String(sub)) if !sub.is_empty() => caller.with_subject(sub.clone()),
                _ => caller,
            }
        });
        Ok(Claimed { exp, nbf, caller })
    }

    /// The caller of `claimed` when its lifetime holds now: `exp`
    /// (required) and `nbf` (when present) are checked against the clock,
    /// each allowed the leeway for clock skew. As jsonwebtoken would have
    /// it, a token is expired once `exp + leeway` is in the past, and not
    /// yet valid while `nbf - leeway` is in the future.
    pub(crate) fn admitted(&self, claimed: &Claimed) -> Result<Caller, AuthError> {
        let now = i128::from(self.clock.now().timestamp());
        let leeway = i128::from(self.leeway.as_secs());
        if claimed.exp + leeway < now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claimed.nbf {
            let nbf =
                nbf.map_err(|()| AuthError::Malformed("claim nbf has the wrong type".to_owned()))?;
            if nbf - leeway > now {
                return Err(AuthError::NotYetValid);
            }
        }
        claimed
            .caller
            .clone()
            .map_err(|()| AuthError::MissingCustomer)
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

/// What a verified token's claims say, as [`ClaimRules::read`] found it:
/// kept by the verifiers' cache, and judged again by
/// [`ClaimRules::admitted`] on every use.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    /// `exp`, in seconds since the Unix epoch.
    exp: i128,
    /// `nbf` when present: its value, or `Err` when it is not a date.
    nbf: Option<Result<i128, ()>>,
    /// The caller, or `Err` when the customer claim is missing or invalid.
    caller: Result<Caller, ()>,
}

/// The claim `name`, unless it is absent or `null`.
fn present<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).filter(|value| !value.is_null())
}

/// A NumericDate (RFC 7519 section 2): seconds since the Unix epoch, which
/// may have a fraction (rounded here). Negative, non-finite and non-numeric
/// values are not dates.
fn numeric_date(value: &Value) -> Option<i128> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(seconds) = number.as_u64() {
        return Some(i128::from(seconds));
    }
    match number.as_f64() {
        // Rounded to whole seconds and within u64's range, so the cast
        // keeps the value.
        Some(seconds) if seconds.is_finite() && (0.0..u64::MAX as f64).contains(&seconds) => {
            Some(i128::from(seconds.round() as u64))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use domain::ManualClock;
    use serde_json::json;

    impl ClaimRules {
        /// The caller verified claims name, the customer from the customer
        /// claim and the subject from `sub`, once the token's lifetime holds.
        pub(crate) fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, AuthError> {
            self.admitted(&self.read(claims)?)
        }
    }

    /// 2024-12-18T10:30:00Z, the seed's run date.
    const NOW: i64 = 1_734_517_800;

    fn rules_at(clock: &ManualClock) -> ClaimRules {
        ClaimRules::new(ClaimsConfig::new(), Arc::new(clock.clone())).expect("valid settings")
    }

    fn claims(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else {
            panic!("claims are an object")
        };
        map
    }

    #[test]
    fn exp_and_nbf_are_judged_by_the_clock_with_the_leeway() {
        let clock = ManualClock::at_epoch_seconds(NOW);
        let rules = rules_at(&clock);
        let token = claims(json!({"customer_id": "acme", "exp": NOW + 60, "nbf": NOW + 20}));
        assert!(rules.caller(&token).is_ok(), "nbf within the 30 s leeway");

        clock.advance(Duration::from_secs(90));
        assert!(
            rules.caller(&token).is_ok(),
            "exp passed by the leeway exactly"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(rules.caller(&token), Err(AuthError::Expired));

        let early = ManualClock::at_epoch_seconds(NOW - 11);
        assert_eq!(rules_at(&early).caller(&token), Err(AuthError::NotYetValid));
    }

    #[test]
    fn a_missing_null_or_unreadable_exp_is_expired_and_an_unreadable_nbf_malformed() {
        let clock = ManualClock::at_epoch_seconds(NOW);
        let rules = rules_at(&clock);
        for exp in [json!(null), json!("tomorrow"), json!(-1), json!(f64::MAX)] {
            let token = claims(json!({"customer_id": "acme", "exp": exp}));
            assert_eq!(rules.caller(&token), Err(AuthError::Expired), "{exp}");
        }
        let without = claims(json!({"customer_id": "acme"}));
        assert_eq!(rules.caller(&without), Err(AuthError::Expired));

        let fractional = claims(json!({"customer_id": "acme", "exp": NOW as f64 + 0.6}));
        assert!(rules.caller(&fractional).is_ok());
        let null_nbf = claims(json!({"customer_id": "acme", "exp": NOW + 60, "nbf": null}));
        assert!(rules.caller(&null_nbf).is_ok(), "a null nbf is no nbf");
        let bad_nbf = claims(json!({"customer_id": "acme", "exp": NOW + 60, "nbf": "now"}));
        assert!(matches!(
            rules.caller(&bad_nbf),
            Err(AuthError::Malformed(_))
        ));
    }

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
        let clock = || Arc::new(ManualClock::at_epoch_seconds(NOW));
        for (config, expected) in cases {
            assert_eq!(ClaimRules::new(config, clock()).err(), Some(expected));
        }
        assert!(
            ClaimRules::new(
                ClaimsConfig {
                    leeway: MAX_LEEWAY,
                    ..ClaimsConfig::new()
                },
                clock()
            )
            .is_ok()
        );
    }
}
