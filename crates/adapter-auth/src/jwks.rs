//! Verification with the keys of a JWKS endpoint, selected by `kid`, cached
//! and refreshed.
//!
//! [`JwksVerifier`] verifies RS256 and ES256 tokens with the public keys an
//! identity provider publishes as a JSON Web Key Set (RFC 7517). Each token
//! names its key by `kid`; the key, never the token's header, decides the
//! algorithm: an RSA key verifies RS256 only, a P-256 EC key ES256 only, and
//! no symmetric key is ever taken from the set, so an HS256 token signed with
//! a public key's bytes has nothing to verify against.
//!
//! The set is fetched once and kept. A background task refreshes it before
//! it goes stale, and retries a failed fetch within moments, backing off to
//! the refetch interval ([`JwksVerifier::spawn_refresher`]). A token naming
//! an unknown `kid` (the provider rotated its keys) triggers a refetch, but
//! at most once per [`JwksConfig::min_refetch_interval`] and shared by every
//! request waiting for it, so a flood of made-up `kid`s cannot hammer the
//! provider.
//! The verifier starts without keys when the endpoint is down: tokens are
//! then refused with [`AuthError::KeysUnavailable`] until a fetch succeeds.

mod fetch;
mod keys;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use domain::{AuthContext, AuthError, Caller, Clock};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, Validation};
use reqwest::Url;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use self::fetch::MAX_DOCUMENT_BYTES;
use self::fetch::{Http, JWKS_ENDPOINT, Source};
pub use self::keys::MAX_RSA_BITS;
use self::keys::{VerifyingKey, parse_key_set};
use crate::KeyReadiness;
use crate::cache::TokenCache;
use crate::claims::{ClaimRules, ClaimsConfig, ClaimsConfigError};
use crate::verify::{check_token_size, header_algorithm, verified_claims};

/// How often the key set is refreshed in the background unless configured
/// otherwise.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How often an unknown `kid` may trigger a refetch unless configured
/// otherwise.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long one request to the JWKS or discovery endpoint may take unless
/// configured otherwise.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the refresher waits after a failed fetch before it tries again
/// the first time. Each further failure doubles the wait, up to
/// [`JwksConfig::min_refetch_interval`].
pub const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// The URL of the JWKS document itself (`MAESTRO_JWT_JWKS_URL`).
    Url(String),
    /// An OIDC issuer URL: the JWKS URL is the `jwks_uri` its
    /// `/.well-known/openid-configuration` document names.
    Discovery(String),
}

/// Where and how often the key set is fetched. The claim rules are the
/// [`ClaimsConfig`] every verifier shares.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Where the key set is fetched from: an https URL, or an http one on
    /// a loopback host.
    pub source: JwksSource,
    /// How often the background refresher fetches the set, so that rotated
    /// and withdrawn keys are picked up without waiting for an unknown `kid`.
    /// After a failed fetch it tries again sooner: after [`FIRST_RETRY`],
    /// then twice as long each time, up to `min_refetch_interval`.
    pub refresh_interval: Duration,
    /// The shortest time between two fetches caused by unknown `kid`s: a
    /// token naming an unknown key triggers a fetch only when the last one
    /// is at least this old.
    pub min_refetch_interval: Duration,
    /// The longest one request to the JWKS (or discovery) endpoint may take,
    /// connection and body included.
    pub timeout: Duration,
}

impl JwksConfig {
    /// A configuration for `source` with the default intervals and timeout.
    pub fn new(source: JwksSource) -> Self {
        Self {
            source,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// The JWKS configuration cannot be used. Raised at start-up; an endpoint
/// that does not answer is not a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksConfigError {
    /// A claim setting (customer claim, issuer, audience, leeway) is unusable.
    #[error(transparent)]
    Claims(#[from] ClaimsConfigError),
    /// The JWKS or issuer URL is not an absolute http or https URL.
    #[error("{0:?} is not an absolute https URL")]
    InvalidUrl(String),
    /// The JWKS or issuer URL is plain http to another machine: whoever
    /// sits on the path could then hand out keys, and so tokens.
    #[error(
        "{0:?} must be https; plain http is only allowed to a loopback host (localhost, 127.0.0.0/8, ::1)"
    )]
    InsecureUrl(String),
    /// An interval or the timeout is zero.
    #[error("the JWKS {0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The HTTP client could not be built (for example no TLS backend).
    #[error("the JWKS HTTP client cannot be built: {0}")]
    HttpClient(String),
    /// The build has no usable signature implementation.
    #[error("no JWT crypto provider is available in this build")]
    NoCryptoProvider,
}

/// Why the key set could not be fetched. The previous keys, if any, stay in
/// use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksFetchError {
    /// The endpoint could not be reached, or the connection broke.
    #[error("the {endpoint} could not be reached: {reason}")]
    Unreachable {
        /// Which endpoint: the JWKS or the discovery one.
        endpoint: &'static str,
        /// The transport's reason.
        reason: String,
    },
    /// The endpoint did not answer within the timeout.
    #[error("the {endpoint} did not answer in time")]
    Timeout {
        /// Which endpoint: the JWKS or the discovery one.
        endpoint: &'static str,
    },
    /// The endpoint answered with a redirect, which is never followed: keys
    /// come from the configured URL or not at all.
    #[error("the {endpoint} answered with a redirect (HTTP {status}), which is not followed")]
    Redirected {
        /// Which endpoint: the JWKS or the discovery one.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// The endpoint answered with another status than 2xx.
    #[error("the {endpoint} answered HTTP {status}")]
    Status {
        /// Which endpoint: the JWKS or the discovery one.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the {endpoint} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// Which endpoint: the JWKS or the discovery one.
        endpoint: &'static str,
    },
    /// The discovery document is unusable.
    #[error("the OIDC discovery document {0}")]
    BadDiscovery(&'static str),
    /// The JWKS document is not a JSON object with a `keys` array.
    #[error("the JWKS document is not a JSON object with a keys array")]
    NotAJwks,
    /// The set holds no key this verifier can use.
    #[error(
        "the JWKS document holds no usable signing key (RSA of 2048 bits or more, or P-256 EC, with a kid)"
    )]
    NoUsableKeys,
}

/// Verifies bearer tokens with the keys of a JWKS endpoint. Cheap to clone:
/// clones share the key set.
#[derive(Clone)]
pub struct JwksVerifier {
    shared: Arc<Shared>,
}

struct Shared {
    source: Source,
    http: Http,
    provider: &'static CryptoProvider,
    rules: ClaimRules,
    rs256: Validation,
    es256: Validation,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    /// The keys in use. A std lock: it is only held to swap or clone the
    /// `Arc`, never across an `.await`, and verification runs on the clone.
    keys: RwLock<Arc<KeySet>>,
    /// Held for the whole of a fetch, so that fetches never overlap and the
    /// requests that wait for one share its result. A tokio lock, since it
    /// is held across the HTTP request.
    gate: tokio::sync::Mutex<Gate>,
    /// Fetches finished, successful or not. Tells a request that waited at
    /// the gate whether a fetch completed meanwhile, and whoever waits for a
    /// fetch ([`JwksVerifier::fetched`]) when one did.
    fetches: watch::Sender<u64>,
    /// Tokens verified lately, stamped with the key map that verified
    /// them: a token is taken from here only while that map is still the
    /// one in use. The weak reference keeps the map's address from being
    /// reused by a later one.
    verified: TokenCache<Weak<HashMap<String, VerifyingKey>>>,
}

#[derive(Default)]
struct KeySet {
    keys: Arc<HashMap<String, VerifyingKey>>,
    /// Whether a fetch ever succeeded.
    loaded: bool,
    /// Why the latest fetch failed, when it did.
    last_error: Option<JwksFetchError>,
}

struct Gate {
    /// When the latest fetch started.
    last_fetch: Option<Instant>,
    /// The `jwks_uri` found by discovery, kept until a fetch from it fails.
    jwks_uri: Option<Url>,
}

impl fmt::Debug for JwksVerifier {
    // Written out: the keys are public, but a dump of them helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        let (source, url) = shared.source.describe();
        f.debug_struct("JwksVerifier")
            .field("source", &source)
            .field("url", &url)
            .field("issuer", &shared.rules.issuer())
            .field("audience", &shared.rules.audience())
            .field("customer_claim", &shared.rules.customer_claim())
            .field("leeway_seconds", &shared.rules.leeway_seconds())
            .field("keys", &self.key_count())
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl JwksVerifier {
    /// Checks the configuration and prepares an empty key set. Nothing is
    /// fetched yet: call [`JwksVerifier::spawn_refresher`] (or let the first
    /// token trigger a fetch), so that the service starts even when the
    /// endpoint is down. Token lifetimes are judged by `clock`; fetches are
    /// timed by tokio's clock.
    ///
    /// # Errors
    /// [`JwksConfigError`] when the URL is not an https URL (or an http one
    /// on a loopback host), an interval or the timeout is zero, a claim
    /// setting is unusable, or the HTTP client cannot be built.
    pub fn new(
        config: JwksConfig,
        claims: ClaimsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, JwksConfigError> {
        let provider =
            CryptoProvider::try_get_default().ok_or(JwksConfigError::NoCryptoProvider)?;
        let source = Source::new(&config.source)?;
        for (name, duration) in [
            ("refresh interval", config.refresh_interval),
            ("minimum refetch interval", config.min_refetch_interval),
            ("timeout", config.timeout),
        ] {
            if duration.is_zero() {
                return Err(JwksConfigError::ZeroDuration(name));
            }
        }
        let rules = ClaimRules::new(claims, clock)?;
        Ok(Self {
            shared: Arc::new(Shared {
                source,
                http: Http::new(config.timeout)?,
                provider,
                rs256: rules.validation(Algorithm::RS256),
                es256: rules.validation(Algorithm::ES256),
                rules,
                refresh_interval: config.refresh_interval,
                min_refetch_interval: config.min_refetch_interval,
                keys: RwLock::new(Arc::new(KeySet::default())),
                gate: tokio::sync::Mutex::new(Gate {
                    last_fetch: None,
                    jwks_uri: None,
                }),
                fetches: watch::Sender::new(0),
                verified: TokenCache::new(),
            }),
        })
    }

    /// Starts the background refresher: it fetches the set at once, then
    /// every [`JwksConfig::refresh_interval`]. After a failed fetch it tries
    /// again after [`FIRST_RETRY`], then twice as long after each further
    /// failure, up to [`JwksConfig::min_refetch_interval`] (and never longer
    /// than the refresh interval): an endpoint that was down when the
    /// service started is read within moments of coming up, and one that
    /// stays down is asked at most once per refetch interval. Failures are
    /// logged and never end it; it ends when the last clone of this verifier
    /// is dropped, or when the handle is aborted.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_refresher(&self) -> JoinHandle<()> {
        // A weak handle, so the task does not keep a dropped verifier alive.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut backoff = None;
            loop {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let wait = match shared.refresh().await {
                    Ok(_) => {
                        backoff = None;
                        shared.refresh_interval
                    }
                    Err(_) => backoff
                        .get_or_insert_with(|| {
                            Backoff::new(shared.refresh_interval.min(shared.min_refetch_interval))
                        })
                        .next_wait(),
                };
                drop(shared);
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// Fetches the set now, whenever the last fetch was, after any fetch in
    /// flight, and answers how many usable keys it holds. On success the
    /// fetched keys replace the old ones; on failure the old ones stay.
    ///
    /// # Errors
    /// [`JwksFetchError`] naming why the set could not be fetched or used.
    pub async fn refresh_now(&self) -> Result<usize, JwksFetchError> {
        self.shared.refresh().await
    }

    /// How many fetches of the set have finished, successful or not
    /// (discovery requests are not counted).
    pub fn fetch_count(&self) -> u64 {
        *self.shared.fetches.borrow()
    }

    /// Waits until at least `count` fetches have finished, successful or
    /// not: a signal for whoever must act once the refresher has run (a
    /// test, a start-up that wants its keys first).
    pub async fn fetched(&self, count: u64) {
        let mut fetches = self.shared.fetches.subscribe();
        // The sender lives in `shared`, which `self` holds, so the channel
        // cannot close while this waits.
        let _ = fetches.wait_for(|done| *done >= count).await;
    }

    /// How many usable keys the set in use holds.
    pub fn key_count(&self) -> usize {
        self.shared.snapshot().keys.len()
    }

    async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let shared = &self.shared;
        check_token_size(token)?;
        if let Some(known) = shared.verified.get(token)
            && std::ptr::eq(known.stamp.as_ptr(), Arc::as_ptr(&shared.snapshot().keys))
        {
            return shared.rules.admitted(&known.claimed);
        }
        // Only the two algorithms a JWKS key can stand for get as far as a key
        // lookup: HS256 and `none` are refused here, and cannot trigger a
        // refetch either.
        let algorithm = match header_algorithm(token)?.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthError::RefusedAlgorithm),
        };
        let kid = jsonwebtoken::decode_header(token)
            .map_err(crate::verify::auth_error)?
            .kid
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| AuthError::Malformed("header has no kid".to_owned()))?;

        let (key, keys) = match shared.lookup(&kid) {
            Ok(key) => key,
            Err(fetches_seen) => {
                shared.refetch_for_unknown_kid(fetches_seen).await;
                shared
                    .lookup(&kid)
                    .map_err(|_| shared.unknown_kid_error())?
            }
        };
        if key.algorithm != algorithm {
            return Err(AuthError::RefusedAlgorithm);
        }
        let validation = match key.algorithm {
            Algorithm::ES256 => &shared.es256,
            _ => &shared.rs256,
        };
        let claimed = verified_claims(token, &key.key, validation, &shared.rules)?;
        let caller = shared.rules.admitted(&claimed)?;
        shared.verified.insert(token, keys, claimed);
        Ok(caller)
    }
}

#[async_trait]
impl AuthContext for JwksVerifier {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        self.verify(bearer_token).await
    }
}

impl KeyReadiness for JwksVerifier {
    /// Once a fetch of the set has succeeded; the keys then stay loaded,
    /// whatever later fetches do.
    fn keys_loaded(&self) -> bool {
        self.shared.snapshot().loaded
    }
}

/// The refresher's waits after consecutive failed fetches: [`FIRST_RETRY`],
/// doubling, at most `longest`.
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
    longest: Duration,
}

impl Backoff {
    fn new(longest: Duration) -> Self {
        Self {
            next: FIRST_RETRY.min(longest),
            longest,
        }
    }

    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.longest);
        wait
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The key named `kid`, or the number of fetches finished before the
    /// lookup, for [`Shared::refetch_for_unknown_kid`].
    fn lookup(
        &self,
        kid: &str,
    ) -> Result<(VerifyingKey, Weak<HashMap<String, VerifyingKey>>), u64> {
        // Read the count before the keys: a fetch finishing in between then
        // shows as a changed count, never as a missed one.
        let fetches = *self.fetches.borrow();
        let keys = Arc::clone(&self.snapshot().keys);
        let key = keys.get(kid).cloned().ok_or(fetches)?;
        Ok((key, Arc::downgrade(&keys)))
    }

    /// Why a `kid` still unknown after the refetch is refused.
    fn unknown_kid_error(&self) -> AuthError {
        let keys = self.snapshot();
        if keys.loaded {
            return AuthError::BadSignature;
        }
        AuthError::KeysUnavailable(match &keys.last_error {
            Some(err) => format!("no key set fetched yet: {err}"),
            None => "no key set fetched yet".to_owned(),
        })
    }

    /// Fetches the set for a token naming an unknown `kid`, unless a fetch
    /// finished since the lookup (its result is shared) or the last one is
    /// younger than the minimum refetch interval.
    async fn refetch_for_unknown_kid(&self, fetches_seen: u64) {
        let mut gate = self.gate.lock().await;
        if *self.fetches.borrow() != fetches_seen {
            return;
        }
        if gate
            .last_fetch
            .is_some_and(|at| at.elapsed() < self.min_refetch_interval)
        {
            return;
        }
        // The outcome is in the key set and the log; the caller looks again.
        let _ = self.fetch(&mut gate).await;
    }

    async fn refresh(&self) -> Result<usize, JwksFetchError> {
        let mut gate = self.gate.lock().await;
        self.fetch(&mut gate).await
    }

    /// One fetch, with the gate held. Replaces the keys on success; keeps
    /// them and records why on failure.
    async fn fetch(&self, gate: &mut Gate) -> Result<usize, JwksFetchError> {
        gate.last_fetch = Some(Instant::now());
        let result = self.fetch_keys(gate).await;
        let old = self.snapshot();
        let (next, outcome) = match result {
            Ok(keys) => {
                let count = keys.len();
                tracing::debug!(keys = count, "JWKS fetched");
                let next = KeySet {
                    keys: Arc::new(keys),
                    loaded: true,
                    last_error: None,
                };
                (next, Ok(count))
            }
            Err(err) => {
                if old.loaded {
                    tracing::warn!(error = %err, keys = old.keys.len(), "JWKS fetch failed; the previous keys stay in use");
                } else {
                    tracing::warn!(error = %err, "JWKS fetch failed; tokens are refused until it succeeds");
                }
                let next = KeySet {
                    keys: Arc::clone(&old.keys),
                    loaded: old.loaded,
                    last_error: Some(err.clone()),
                };
                (next, Err(err))
            }
        };
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        if outcome.is_ok() && !old.loaded {
            tracing::info!(keys = self.snapshot().keys.len(), "JWKS keys loaded");
        }
        self.fetches.send_modify(|done| *done += 1);
        outcome
    }

    async fn fetch_keys(
        &self,
        gate: &mut Gate,
    ) -> Result<HashMap<String, VerifyingKey>, JwksFetchError> {
        let url = match &self.source {
            Source::Url(url) => url.clone(),
            Source::Discovery { issuer, document } => match &gate.jwks_uri {
                Some(url) => url.clone(),
                None => {
                    let url = self.http.discover(issuer, document).await?;
                    gate.jwks_uri = Some(url.clone());
                    url
                }
            },
        };
        let body = self.http.get(url, JWKS_ENDPOINT).await;
        if body.is_err() {
            // The provider may have moved its keys: discover again next time.
            gate.jwks_uri = None;
        }
        parse_key_set(self.provider, &body?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use domain::ManualClock;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(ManualClock::at_epoch_seconds(1_734_517_800))
    }

    fn verifier(config: JwksConfig) -> Result<JwksVerifier, JwksConfigError> {
        JwksVerifier::new(config, ClaimsConfig::new(), clock())
    }

    #[test]
    fn bad_configurations_are_refused_at_start_up() {
        for raw in [
            "",
            "not a url",
            "ftp://idp.example/jwks",
            "file:///etc/jwks.json",
        ] {
            assert_eq!(
                verifier(JwksConfig::new(JwksSource::Url(raw.to_owned()))).err(),
                Some(JwksConfigError::InvalidUrl(raw.to_owned()))
            );
        }
        let url = || JwksConfig::new(JwksSource::Url("https://idp.example/jwks".to_owned()));
        assert_eq!(
            verifier(JwksConfig {
                min_refetch_interval: Duration::ZERO,
                ..url()
            })
            .err(),
            Some(JwksConfigError::ZeroDuration("minimum refetch interval"))
        );
        let claims = ClaimsConfig {
            audience: Some(String::new()),
            ..ClaimsConfig::new()
        };
        assert_eq!(
            JwksVerifier::new(url(), claims, clock()).err(),
            Some(JwksConfigError::Claims(ClaimsConfigError::Empty(
                "audience"
            )))
        );
        assert!(verifier(url()).is_ok());
        assert!(
            verifier(JwksConfig::new(JwksSource::Discovery(
                "https://idp.example/realms/a/".to_owned()
            )))
            .is_ok()
        );
    }

    #[test]
    fn retries_wait_250_ms_then_twice_as_long_each_time_up_to_the_longest() {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let waits: Vec<u128> = (0..10).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(
            waits,
            [
                250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );

        let mut short = Backoff::new(Duration::from_millis(100));
        assert_eq!(short.next_wait(), Duration::from_millis(100));
        assert_eq!(short.next_wait(), Duration::from_millis(100));
    }

    #[test]
    fn a_new_verifier_has_no_keys_loaded() {
        let auth = verifier(JwksConfig::new(JwksSource::Url(
            "https://idp.example/jwks".to_owned(),
        )))
        .unwrap();
        assert!(!auth.keys_loaded());
        assert_eq!(auth.fetch_count(), 0);
    }
}
