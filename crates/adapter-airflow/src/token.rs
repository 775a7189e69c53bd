//! Bearer tokens for Airflow: a fixed one, or one exchanged for a username
//! and password at `/auth/token`, cached, renewed before it expires, and
//! renewed once for all the requests that need a new one at the same time.
//!
//! A token's age and its `exp` are measured on the backend's clock, which
//! comes with every [`Endpoint`].

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{BackendError, Clock, RequestContext, Timestamp};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::age::younger_than;
use crate::client::{pass_on, read_body, transport_error};

/// The longest a token is kept back from its expiry; shorter-lived tokens
/// are renewed after nine tenths of their life.
const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(60);

/// A token to send, and which generation of the cache it came from, so
/// that a request it fails for can ask for exactly that token to be
/// replaced.
#[derive(Debug, Clone)]
pub(crate) struct Bearer {
    /// `Bearer <token>`, marked sensitive so that it never prints.
    pub(crate) header: HeaderValue,
    /// Which token this is; a fixed token is always generation 0.
    pub(crate) generation: u64,
}

/// Where tokens come from.
#[derive(Debug)]
pub(crate) enum Tokens {
    /// One token for the process's life.
    Fixed(HeaderValue),
    /// Tokens exchanged for the credentials, cached.
    Exchanged {
        username: String,
        password: SecretString,
        /// An async mutex on purpose: whoever finds the token missing or
        /// stale holds it across the exchange, so that concurrent requests
        /// wait for that one exchange instead of each starting their own.
        cache: tokio::sync::Mutex<Cache>,
    },
}

/// The token in use, if any.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    current: Option<Cached>,
    generations: u64,
}

#[derive(Debug)]
struct Cached {
    bearer: Bearer,
    /// When the exchange answered with it, on the backend's clock.
    issued_at: Timestamp,
    /// How long after `issued_at` to stop using it; `None` for a token
    /// whose expiry is unknown, which is used until Airflow rejects it.
    use_for: Option<Duration>,
}

impl Cached {
    /// Whether the token may still be sent at `now`. One issued after
    /// `now` (the clock was stepped back) is not: its age is unknown.
    fn is_fresh(&self, now: Timestamp) -> bool {
        self.use_for
            .is_none_or(|span| younger_than(self.issued_at, now, span))
    }
}

/// How to reach `/auth/token`, and the clock that tells tokens' ages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint<'a> {
    pub(crate) client: &'a reqwest::Client,
    pub(crate) base: &'a str,
    /// The request the exchange serves, whose id and trace context it
    /// passes on.
    pub(crate) ctx: Option<&'a RequestContext>,
    pub(crate) clock: &'a dyn Clock,
}

impl Tokens {
    /// A fixed token.
    pub(crate) fn fixed(token: &SecretString) -> Result<Self, BackendError> {
        Ok(Self::Fixed(bearer_header(token.expose_secret())?))
    }

    /// Tokens exchanged for these credentials.
    pub(crate) fn exchanged(username: String, password: SecretString) -> Self {
        Self::Exchanged {
            username,
            password,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// Whether a rejected token can be replaced by a new one.
    pub(crate) fn renewable(&self) -> bool {
        matches!(self, Self::Exchanged { .. })
    }

    /// The token to send now: the cached one while it is fresh, otherwise a
    /// new one.
    pub(crate) async fn bearer(&self, endpoint: Endpoint<'_>) -> Result<Bearer, BackendError> {
        match self {
            Self::Fixed(header) => Ok(Bearer {
                header: header.clone(),
                generation: 0,
            }),
            Self::Exchanged {
                username,
                password,
                cache,
            } => Cache::fresh_or_new(cache, endpoint, username, password, None).await,
        }
    }

    /// A replacement for the token of generation `rejected`, which Airflow
    /// refused. When another request already replaced it, that newer token
    /// is returned and no exchange is made. `None` for a fixed token.
    pub(crate) async fn renew(
        &self,
        rejected: u64,
        endpoint: Endpoint<'_>,
    ) -> Result<Option<Bearer>, BackendError> {
        match self {
            Self::Fixed(_) => Ok(None),
            Self::Exchanged {
                username,
                password,
                cache,
            } => Cache::fresh_or_new(cache, endpoint, username, password, Some(rejected))
                .await
                .map(Some),
        }
    }
}

impl Cache {
    /// The cached token while it is fresh and not of generation `rejected`,
    /// otherwise a new one, exchanged while `cache` is held so that
    /// concurrent callers wait for that one exchange.
    async fn fresh_or_new(
        cache: &tokio::sync::Mutex<Self>,
        endpoint: Endpoint<'_>,
        username: &str,
        password: &SecretString,
        rejected: Option<u64>,
    ) -> Result<Bearer, BackendError> {
        let mut cache = cache.lock().await;
        if let Some(cached) = &cache.current
            && Some(cached.bearer.generation) != rejected
            && cached.is_fresh(endpoint.clock.now())
        {
            return Ok(cached.bearer.clone());
        }
        cache.replace(endpoint, username, password).await
    }

    async fn replace(
        &mut self,
        endpoint: Endpoint<'_>,
        username: &str,
        password: &SecretString,
    ) -> Result<Bearer, BackendError> {
        // Forget the old token first: if the exchange fails, the next request
        // tries again instead of sending a token known to be stale.
        self.current = None;
        let issued = exchange(endpoint, username, password).await?;
        self.generations += 1;
        let bearer = Bearer {
            header: issued.header,
            generation: self.generations,
        };
        self.current = Some(Cached {
            bearer: bearer.clone(),
            issued_at: issued.at,
            use_for: issued.lifetime.map(renew_after),
        });
        tracing::debug!(
            generation = bearer.generation,
            "exchanged credentials for an Airflow token"
        );
        Ok(bearer)
    }
}

/// How long into its life a token is renewed: a minute before it expires,
/// or after nine tenths of its life for tokens shorter than ten minutes.
pub(crate) fn renew_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(MAX_RENEWAL_MARGIN.min(lifetime / 10))
}

struct Issued {
    header: HeaderValue,
    /// When the answer came, on the backend's clock.
    at: Timestamp,
    /// How long the token lives from `at`, when Airflow says.
    lifetime: Option<Duration>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

async fn exchange(
    endpoint: Endpoint<'_>,
    username: &str,
    password: &SecretString,
) -> Result<Issued, BackendError> {
    const WHAT: &str = "POST /auth/token";
    let request = endpoint
        .client
        .post(format!("{}/auth/token", endpoint.base))
        .json(&serde_json::json!({
            "username": username,
            "password": password.expose_secret(),
        }));
    let response = pass_on(request, endpoint.ctx)
        .send()
        .await
        .map_err(|err| transport_error(err, WHAT))?;
    let status = response.status();
    // The body is never logged: Airflow's validation errors echo the
    // request, password included.
    let body = read_body(response, WHAT).await?;
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(BackendError::upstream(format!(
            "{WHAT}: Airflow refused the configured username and password ({status})"
        )));
    }
    if !status.is_success() {
        return Err(BackendError::upstream(format!("{WHAT}: answered {status}")));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|_| BackendError::upstream(format!("{WHAT}: the answer is not a token")))?;
    let at = endpoint.clock.now();
    // A lifetime too large for a `Duration` is as good as unknown.
    let lifetime = answer
        .expires_in
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .or_else(|| jwt_lifetime(&answer.access_token, at));
    Ok(Issued {
        header: bearer_header(&answer.access_token)?,
        at,
        lifetime,
    })
}

/// `Bearer <token>` as a sensitive header value.
fn bearer_header(token: &str) -> Result<HeaderValue, BackendError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(BackendError::upstream("the Airflow token is empty"));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        BackendError::upstream("the Airflow token holds characters a header cannot")
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// How long a JWT has left at `now`, read from its `exp` claim without
/// verifying it: Maestro only needs to know when to ask for a new one, and
/// Airflow checks the signature. `None` when the token is not a JWT, has no
/// `exp`, or one too far off to count in.
pub(crate) fn jwt_lifetime(token: &str, now: Timestamp) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() {
        return None;
    }
    // Seconds since the Unix epoch, to the microsecond (exact in an f64
    // for the next quarter of a million years).
    let now = now.timestamp_micros() as f64 / 1e6;
    Duration::try_from_secs_f64((exp - now).max(0.0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJIUzUxMiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn the_lifetime_comes_from_the_exp_claim() {
        let token = jwt(&serde_json::json!({"sub": "admin", "exp": 1_000_000 + 86_400}));
        assert_eq!(
            jwt_lifetime(&token, at(1_000_000)),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn an_expired_token_has_no_life_left() {
        let token = jwt(&serde_json::json!({"exp": 10}));
        assert_eq!(jwt_lifetime(&token, at(100)), Some(Duration::ZERO));
    }

    #[test]
    fn tokens_without_a_readable_exp_have_no_known_lifetime() {
        assert_eq!(jwt_lifetime("opaque-token", at(0)), None);
        assert_eq!(jwt_lifetime("a.!!!.c", at(0)), None);
        assert_eq!(
            jwt_lifetime(&jwt(&serde_json::json!({"sub": "x"})), at(0)),
            None
        );
        assert_eq!(
            jwt_lifetime(&jwt(&serde_json::json!({"exp": "soon"})), at(0)),
            None
        );
    }

    #[test]
    fn long_tokens_are_renewed_a_minute_early_and_short_ones_at_nine_tenths() {
        assert_eq!(
            renew_after(Duration::from_secs(86_400)),
            Duration::from_secs(86_340)
        );
        assert_eq!(
            renew_after(Duration::from_secs(100)),
            Duration::from_secs(90)
        );
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_lifetime_beyond_any_duration_is_unknown_rather_than_a_panic() {
        let token = jwt(&serde_json::json!({"exp": 1e300}));
        assert_eq!(jwt_lifetime(&token, at(0)), None);
        assert_eq!(
            jwt_lifetime(&jwt(&serde_json::json!({"exp": 10.5})), at(10)),
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn a_cached_token_is_fresh_until_its_renewal_time() {
        let now = at(1_000_000);
        let cached = Cached {
            bearer: Bearer {
                header: HeaderValue::from_static("Bearer t"),
                generation: 1,
            },
            issued_at: now,
            use_for: Some(Duration::from_secs(5)),
        };
        assert!(cached.is_fresh(now));
        assert!(cached.is_fresh(now + Duration::from_secs(4)));
        assert!(!cached.is_fresh(now + Duration::from_secs(5)));
        // Issued "after" now: the clock was stepped back, and the token's
        // age is unknown.
        assert!(!cached.is_fresh(at(999_999)));
        let unknown = Cached {
            use_for: None,
            ..cached
        };
        assert!(unknown.is_fresh(now + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn the_bearer_header_is_sensitive_and_hides_in_debug_output() {
        let header = bearer_header("secret-token").unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("secret-token"));
    }
}
