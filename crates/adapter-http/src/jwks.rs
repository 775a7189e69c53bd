//! Verification keys from a JWKS endpoint, selected by `kid`, cached and refreshed.
//!
//! [`JwksAuth`] verifies RS256 and ES256 tokens with the public keys an
//! identity provider publishes as a JSON Web Key Set (RFC 7517). Each token
//! names its key by `kid`; the key, never the token's header, decides the
//! algorithm: an RSA key verifies RS256 only, a P-256 EC key ES256 only, and
//! no symmetric key is ever taken from the set, so an HS256 token signed with
//! a public key's bytes has nothing to verify against.
//!
//! The set is fetched once and kept. A background task refreshes it before it
//! goes stale ([`JwksAuth::spawn_refresher`]); a token naming an unknown `kid`
//! (the provider rotated its keys) triggers a refetch, but at most once per
//! [`JwksConfig::min_refetch_interval`] and shared by every request waiting
//! for it, so a flood of made-up `kid`s cannot hammer the provider. The
//! verifier starts without keys when the endpoint is down: tokens are then
//! refused with [`AuthError::KeysUnavailable`] until a fetch succeeds.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{AuthContext, AuthError, Caller};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::jwt::{
    DEFAULT_CUSTOMER_CLAIM, DEFAULT_LEEWAY, JwtConfigError, MIN_RSA_BITS, auth_error, bit_length,
    caller_from_claims, check_token_size, claims_validation, header_algorithm,
};

/// How often the key set is refreshed in the background unless configured
/// otherwise.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How often an unknown `kid` may trigger a refetch unless configured
/// otherwise.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long one request to the JWKS or discovery endpoint may take unless
/// configured otherwise.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS or discovery document read. Real ones are a few
/// kilobytes; the cap keeps a broken or hostile endpoint from filling memory.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The largest RSA modulus accepted, in bits: the largest the RSA verifier
/// takes, so that a key it would refuse on every token is refused on loading.
pub const MAX_RSA_BITS: usize = 8192;

/// The path an OIDC issuer serves its discovery document under (OpenID
/// Connect Discovery 1.0, section 4).
const DISCOVERY_PATH: &str = ".well-known/openid-configuration";

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// The URL of the JWKS document itself (`MAESTRO_JWT_JWKS_URL`).
    Url(String),
    /// An OIDC issuer URL: the JWKS URL is the `jwks_uri` its
    /// `/.well-known/openid-configuration` document names.
    Discovery(String),
}

/// How tokens are verified against a JWKS endpoint.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Where the key set is fetched from: an http or https URL.
    pub source: JwksSource,
    /// When set, `iss` is required and must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` is required and must name it. When unset, `aud` is
    /// not looked at.
    pub audience: Option<String>,
    /// The claim holding the customer id.
    pub customer_claim: String,
    /// How far `exp` and `nbf` may be off, for clock skew. Whole seconds.
    pub leeway: Duration,
    /// How often the background refresher fetches the set, so that rotated
    /// and withdrawn keys are picked up without waiting for an unknown `kid`.
    /// After a failed fetch it tries again sooner, after
    /// `min_refetch_interval`.
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
    /// A configuration for `source` with no issuer or audience check, the
    /// default customer claim and leeway, and the default intervals and
    /// timeout.
    pub fn new(source: JwksSource) -> Self {
        Self {
            source,
            issuer: None,
            audience: None,
            customer_claim: DEFAULT_CUSTOMER_CLAIM.to_owned(),
            leeway: DEFAULT_LEEWAY,
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
    Claims(#[from] JwtConfigError),
    /// The JWKS or issuer URL is not an absolute http or https URL.
    #[error("the JWKS source {0:?} is not an absolute http or https URL")]
    InvalidUrl(String),
    /// An interval or the timeout is zero.
    #[error("the JWKS {0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The HTTP client could not be built (for example no TLS backend).
    #[error("the JWKS HTTP client cannot be built: {0}")]
    HttpClient(String),
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

const JWKS_ENDPOINT: &str = "JWKS endpoint";
const DISCOVERY_ENDPOINT: &str = "OIDC discovery endpoint";

/// Verifies bearer tokens with the keys of a JWKS endpoint. Cheap to clone:
/// clones share the key set.
#[derive(Clone)]
pub struct JwksAuth {
    shared: Arc<Shared>,
}

struct Shared {
    source: Source,
    client: reqwest::Client,
    provider: &'static CryptoProvider,
    rs256: Validation,
    es256: Validation,
    customer_claim: String,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    /// The keys in use. A std lock: it is only held to swap or clone the
    /// `Arc`, never across an `.await`, and verification runs on the clone.
    keys: RwLock<Arc<KeySet>>,
    /// Held for the whole of a fetch, so that fetches never overlap and the
    /// requests that wait for one share its result. A tokio lock, since it
    /// is held across the HTTP request.
    gate: tokio::sync::Mutex<Gate>,
    /// Fetches finished, successful or not. Also tells a request that waited
    /// at the gate whether a fetch completed meanwhile.
    fetches: AtomicU64,
}

enum Source {
    Url(Url),
    Discovery { issuer: String, document: Url },
}

#[derive(Default)]
struct KeySet {
    keys: Arc<HashMap<String, VerifyingKey>>,
    /// Whether a fetch ever succeeded.
    loaded: bool,
    /// Why the latest fetch failed, when it did.
    last_error: Option<JwksFetchError>,
}

#[derive(Clone)]
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct Gate {
    /// When the latest fetch started.
    last_fetch: Option<Instant>,
    /// The `jwks_uri` found by discovery, kept until a fetch from it fails.
    jwks_uri: Option<Url>,
}

impl fmt::Debug for JwksAuth {
    // Written out: the keys are public, but a dump of them helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        let (source, url) = match &shared.source {
            Source::Url(url) => ("jwks", url.as_str()),
            Source::Discovery { issuer, .. } => ("discovery", issuer.as_str()),
        };
        f.debug_struct("JwksAuth")
            .field("source", &source)
            .field("url", &url)
            .field("issuer", &shared.rs256.iss)
            .field("audience", &shared.rs256.aud)
            .field("customer_claim", &shared.customer_claim)
            .field("leeway_seconds", &shared.rs256.leeway)
            .field("keys", &self.key_count())
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl JwksAuth {
    /// Checks the configuration and prepares an empty key set. Nothing is
    /// fetched yet: call [`JwksAuth::spawn_refresher`] (or let the first
    /// token trigger a fetch), so that the service starts even when the
    /// endpoint is down.
    ///
    /// # Errors
    /// [`JwksConfigError`] when the URL is not an http or https URL, an
    /// interval or the timeout is zero, a claim setting is unusable, or the
    /// HTTP client cannot be built.
    pub fn new(config: JwksConfig) -> Result<Self, JwksConfigError> {
        let provider = CryptoProvider::try_get_default().ok_or(JwtConfigError::NoCryptoProvider)?;
        let source = match config.source {
            JwksSource::Url(raw) => Source::Url(http_url(&raw)?),
            JwksSource::Discovery(issuer) => {
                http_url(&issuer)?;
                let document = format!("{}/{DISCOVERY_PATH}", issuer.trim_end_matches('/'));
                Source::Discovery {
                    document: http_url(&document)?,
                    issuer,
                }
            }
        };
        for (name, duration) in [
            ("refresh interval", config.refresh_interval),
            ("minimum refetch interval", config.min_refetch_interval),
            ("timeout", config.timeout),
        ] {
            if duration.is_zero() {
                return Err(JwksConfigError::ZeroDuration(name));
            }
        }
        let validation = |algorithm| {
            claims_validation(
                algorithm,
                &config.customer_claim,
                config.issuer.as_deref(),
                config.audience.as_deref(),
                config.leeway,
            )
        };
        let rs256 = validation(Algorithm::RS256)?;
        let es256 = validation(Algorithm::ES256)?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|err| JwksConfigError::HttpClient(err.to_string()))?;

        Ok(Self {
            shared: Arc::new(Shared {
                source,
                client,
                provider,
                rs256,
                es256,
                customer_claim: config.customer_claim,
                refresh_interval: config.refresh_interval,
                min_refetch_interval: config.min_refetch_interval,
                keys: RwLock::new(Arc::new(KeySet::default())),
                gate: tokio::sync::Mutex::new(Gate {
                    last_fetch: None,
                    jwks_uri: None,
                }),
                fetches: AtomicU64::new(0),
            }),
        })
    }

    /// Starts the background refresher: it fetches the set at once, then
    /// every [`JwksConfig::refresh_interval`], or after
    /// [`JwksConfig::min_refetch_interval`] when a fetch failed. Failures are
    /// logged and never end it; it ends when the last clone of this verifier
    /// is dropped, or when the handle is aborted.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_refresher(&self) -> JoinHandle<()> {
        // A weak handle, so the task does not keep a dropped verifier alive.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let wait = match shared.refresh().await {
                    Ok(_) => shared.refresh_interval,
                    Err(_) => shared.refresh_interval.min(shared.min_refetch_interval),
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
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// How many usable keys the set in use holds.
    pub fn key_count(&self) -> usize {
        self.shared.snapshot().keys.len()
    }

    async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let shared = &self.shared;
        check_token_size(token)?;
        // Only the two algorithms a JWKS key can stand for get as far as a key
        // lookup: HS256 and `none` are refused here, and cannot trigger a
        // refetch either.
        let algorithm = match header_algorithm(token)?.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthError::RefusedAlgorithm),
        };
        let kid = jsonwebtoken::decode_header(token)
            .map_err(auth_error)?
            .kid
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| AuthError::Malformed("header has no kid".to_owned()))?;

        let key = match shared.lookup(&kid) {
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
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(auth_error)?;
        caller_from_claims(&data.claims, &shared.customer_claim)
    }
}

#[async_trait]
impl AuthContext for JwksAuth {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        self.verify(bearer_token).await
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The key named `kid`, or the number of fetches finished before the
    /// lookup, for [`Shared::refetch_for_unknown_kid`].
    fn lookup(&self, kid: &str) -> Result<VerifyingKey, u64> {
        // Read the count before the keys: a fetch finishing in between then
        // shows as a changed count, never as a missed one.
        let fetches = self.fetches.load(Ordering::SeqCst);
        self.snapshot().keys.get(kid).cloned().ok_or(fetches)
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
        if self.fetches.load(Ordering::SeqCst) != fetches_seen {
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
        self.fetches.fetch_add(1, Ordering::SeqCst);
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
                    let url = self.discover(issuer, document).await?;
                    gate.jwks_uri = Some(url.clone());
                    url
                }
            },
        };
        let body = self.get(url, JWKS_ENDPOINT).await;
        if body.is_err() {
            // The provider may have moved its keys: discover again next time.
            gate.jwks_uri = None;
        }
        parse_key_set(self.provider, &body?)
    }

    /// Finds the `jwks_uri` in the issuer's discovery document.
    async fn discover(&self, issuer: &str, document: &Url) -> Result<Url, JwksFetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }

        let body = self.get(document.clone(), DISCOVERY_ENDPOINT).await?;
        let discovery: Discovery = serde_json::from_slice(&body)
            .map_err(|_| JwksFetchError::BadDiscovery("is not the expected JSON object"))?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name
        // the issuer it was fetched for, or it belongs to someone else.
        if let Some(named) = &discovery.issuer
            && named.trim_end_matches('/') != issuer.trim_end_matches('/')
        {
            return Err(JwksFetchError::BadDiscovery("names another issuer"));
        }
        let jwks_uri = discovery
            .jwks_uri
            .ok_or(JwksFetchError::BadDiscovery("has no jwks_uri"))?;
        http_url(&jwks_uri)
            .map_err(|_| JwksFetchError::BadDiscovery("has a jwks_uri that is not an http URL"))
    }

    /// The body of a 2xx answer to a GET of `url`, at most
    /// [`MAX_DOCUMENT_BYTES`] long.
    async fn get(&self, url: Url, endpoint: &'static str) -> Result<Vec<u8>, JwksFetchError> {
        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                JwksFetchError::Timeout { endpoint }
            } else {
                JwksFetchError::Unreachable {
                    endpoint,
                    reason: error_chain(&err.without_url()),
                }
            }
        };
        let mut response = self
            .client
            .get(url)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(JwksFetchError::Status {
                endpoint,
                status: status.as_u16(),
            });
        }
        let too_large = JwksFetchError::TooLarge { endpoint };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Parses `raw` as an absolute http or https URL.
fn http_url(raw: &str) -> Result<Url, JwksConfigError> {
    match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        _ => Err(JwksConfigError::InvalidUrl(raw.to_owned())),
    }
}

/// An error and its causes, `: `-separated: reqwest's own text for a refused
/// connection is only "error sending request".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The usable keys of a JWKS document, by `kid`. Keys this verifier cannot
/// use are skipped one by one, so one odd key does not cost the others.
fn parse_key_set(
    provider: &CryptoProvider,
    body: &[u8],
) -> Result<HashMap<String, VerifyingKey>, JwksFetchError> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }

    let document: Document = serde_json::from_slice(body).map_err(|_| JwksFetchError::NotAJwks)?;
    let mut keys = HashMap::new();
    for raw in document.keys {
        match parse_key(provider, raw) {
            Ok((kid, key)) => match keys.entry(kid) {
                Entry::Vacant(slot) => {
                    slot.insert(key);
                }
                Entry::Occupied(slot) => {
                    tracing::warn!(kid = %slot.key(), "JWKS holds the kid twice; the first key is used");
                }
            },
            Err(reason) => tracing::debug!(reason, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(JwksFetchError::NoUsableKeys);
    }
    Ok(keys)
}

/// The members of a JWK this verifier reads (RFC 7517 section 4, RFC 7518
/// section 6). Read by hand rather than as jsonwebtoken's `Jwk`, which
/// refuses whole documents over a curve or key type it does not know.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// One signing key and its `kid`, or why it is skipped. The key type alone
/// decides the algorithm; an `alg` member must agree with it.
fn parse_key(
    provider: &CryptoProvider,
    raw: Value,
) -> Result<(String, VerifyingKey), &'static str> {
    let jwk: RawJwk = serde_json::from_value(raw).map_err(|_| "not a JWK object")?;
    let kid = jwk.kid.filter(|kid| !kid.is_empty()).ok_or("no kid")?;
    if jwk
        .public_key_use
        .as_deref()
        .is_some_and(|use_| use_ != "sig")
    {
        return Err("not a signature key (use)");
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return Err("not a verification key (key_ops)");
    }
    let (algorithm, key) = match jwk.kty.as_deref() {
        Some("RSA") => {
            let n = component(jwk.n.as_deref()).ok_or("RSA key without a usable n")?;
            let e = component(jwk.e.as_deref()).ok_or("RSA key without a usable e")?;
            let bits = bit_length(&n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err("RSA key of a refused size");
            }
            if !usable_rsa_exponent(&e) {
                return Err("RSA key with an unusable exponent");
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        Some("EC") => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err("EC key on another curve than P-256");
            }
            let (Some(x), Some(y)) = (jwk.x.as_deref(), jwk.y.as_deref()) else {
                return Err("EC key without x and y");
            };
            let key =
                DecodingKey::from_ec_components(x.trim_end_matches('='), y.trim_end_matches('='))
                    .map_err(|_| "EC key with unreadable x or y")?;
            // Building the verifier parses the point, so a point that is not
            // on the curve is skipped now rather than failing every token.
            (provider.verifier_factory)(&Algorithm::ES256, &key)
                .map_err(|_| "EC key that is not a P-256 point")?;
            (Algorithm::ES256, key)
        }
        // Symmetric (`oct`) keys above all: a key from a public document
        // must never verify an HMAC token.
        _ => return Err("not an RSA or EC key"),
    };
    let expected = match algorithm {
        Algorithm::ES256 => "ES256",
        _ => "RS256",
    };
    if jwk.alg.as_deref().is_some_and(|alg| alg != expected) {
        return Err("alg disagrees with the key type");
    }
    Ok((kid, VerifyingKey { algorithm, key }))
}

/// A base64url key component, padded or not, as bytes; `None` when absent,
/// empty or unreadable.
fn component(encoded: Option<&str>) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded?.trim_end_matches('='))
        .ok()?;
    (!bytes.is_empty()).then_some(bytes)
}

/// An RSA public exponent the verifier takes: odd, at least 3 and below
/// 2^33 (the RSA crate's bound).
fn usable_rsa_exponent(be_bytes: &[u8]) -> bool {
    if bit_length(be_bytes) > 33 {
        return false;
    }
    let value = be_bytes
        .iter()
        .fold(0_u64, |value, byte| (value << 8) | u64::from(*byte));
    value >= 3 && value % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    const RSA_JWK: &str = include_str!("../tests/fixtures/rsa_public.jwk.json");
    const EC_JWK: &str = include_str!("../tests/fixtures/ec_p256_public.jwk.json");
    const RSA_1024_JWK: &str = include_str!("../tests/fixtures/rsa_1024_public.jwk.json");

    fn provider() -> &'static CryptoProvider {
        CryptoProvider::try_get_default().expect("a crypto provider")
    }

    fn jwk(fixture: &str, extra: Value) -> Value {
        let mut key: Value = serde_json::from_str(fixture).expect("fixture JSON");
        for (name, value) in extra.as_object().expect("an object") {
            key[name] = value.clone();
        }
        key
    }

    fn parsed(key: Value) -> Result<Algorithm, &'static str> {
        parse_key(provider(), key).map(|(_, key)| key.algorithm)
    }

    #[test]
    fn the_key_type_decides_the_algorithm() {
        assert_eq!(
            parsed(jwk(RSA_JWK, json!({"kid": "r"}))),
            Ok(Algorithm::RS256)
        );
        assert_eq!(
            parsed(jwk(EC_JWK, json!({"kid": "e"}))),
            Ok(Algorithm::ES256)
        );
        assert_eq!(
            parsed(jwk(
                RSA_JWK,
                json!({"kid": "r", "alg": "RS256", "use": "sig"})
            )),
            Ok(Algorithm::RS256)
        );
        assert_eq!(
            parsed(jwk(
                EC_JWK,
                json!({"kid": "e", "alg": "ES256", "key_ops": ["verify"]})
            )),
            Ok(Algorithm::ES256)
        );
    }

    #[test]
    fn keys_whose_alg_disagrees_with_their_type_are_skipped() {
        for (fixture, alg) in [
            (RSA_JWK, "PS256"),
            (RSA_JWK, "RS512"),
            (RSA_JWK, "ES256"),
            (RSA_JWK, "HS256"),
            (EC_JWK, "RS256"),
            (EC_JWK, "ES384"),
        ] {
            assert!(
                parsed(jwk(fixture, json!({"kid": "k", "alg": alg}))).is_err(),
                "{alg}"
            );
        }
    }

    #[test]
    fn symmetric_encryption_weak_and_kidless_keys_are_skipped() {
        let oct = json!({"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"});
        assert_eq!(parsed(oct), Err("not an RSA or EC key"));
        assert!(parsed(jwk(RSA_JWK, json!({"kid": "r", "use": "enc"}))).is_err());
        assert!(parsed(jwk(RSA_JWK, json!({"kid": "r", "key_ops": ["encrypt"]}))).is_err());
        assert_eq!(parsed(jwk(RSA_JWK, json!({}))), Err("no kid"));
        assert_eq!(parsed(jwk(RSA_JWK, json!({"kid": ""}))), Err("no kid"));
        assert_eq!(
            parsed(jwk(RSA_1024_JWK, json!({"kid": "weak"}))),
            Err("RSA key of a refused size")
        );
    }

    #[test]
    fn ec_keys_off_p256_or_off_the_curve_are_skipped() {
        assert!(parsed(jwk(EC_JWK, json!({"kid": "e", "crv": "P-384"}))).is_err());
        assert!(parsed(jwk(EC_JWK, json!({"kid": "e", "crv": "secp256k1"}))).is_err());
        // x and y swapped: almost surely not a point of the curve.
        let key: Value = serde_json::from_str(EC_JWK).unwrap();
        let swapped = jwk(EC_JWK, json!({"kid": "e", "x": key["y"], "y": key["x"]}));
        assert_eq!(parsed(swapped), Err("EC key that is not a P-256 point"));
    }

    #[test]
    fn rsa_exponents_must_be_odd_and_in_range() {
        assert!(usable_rsa_exponent(&[1, 0, 1]));
        assert!(usable_rsa_exponent(&[3]));
        assert!(!usable_rsa_exponent(&[1]));
        assert!(!usable_rsa_exponent(&[2]));
        assert!(!usable_rsa_exponent(&[1, 0, 0]));
        assert!(!usable_rsa_exponent(&[3, 0, 0, 0, 1]));
        let e = component(Some("AQAB")).unwrap();
        assert_eq!(e, vec![1, 0, 1]);
        assert_eq!(component(Some("AQAB==")), Some(vec![1, 0, 1]));
        assert_eq!(component(Some("")), None);
        assert_eq!(component(Some("*")), None);
    }

    #[test]
    fn a_set_with_one_odd_key_keeps_the_others_and_an_empty_one_is_refused() {
        let body = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
            {"kid": 7},
            jwk(RSA_JWK, json!({"kid": "r"})),
            jwk(EC_JWK, json!({"kid": "r"})),
        ]});
        let keys = parse_key_set(provider(), body.to_string().as_bytes()).expect("usable");
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys["r"].algorithm,
            Algorithm::RS256,
            "the first of two equal kids wins"
        );

        for body in [
            json!({"keys": []}),
            json!({"keys": [{"kty": "oct", "kid": "h", "k": "AAAA"}]}),
        ] {
            assert_eq!(
                parse_key_set(provider(), body.to_string().as_bytes()).err(),
                Some(JwksFetchError::NoUsableKeys)
            );
        }
        for body in ["", "[]", "{\"keys\": {}}", "<html>"] {
            assert_eq!(
                parse_key_set(provider(), body.as_bytes()).err(),
                Some(JwksFetchError::NotAJwks),
                "{body}"
            );
        }
    }

    #[test]
    fn bad_configurations_are_refused_at_start_up() {
        let config = |source| JwksConfig::new(source);
        for raw in [
            "",
            "not a url",
            "ftp://idp.example/jwks",
            "file:///etc/jwks.json",
        ] {
            assert_eq!(
                JwksAuth::new(config(JwksSource::Url(raw.to_owned()))).err(),
                Some(JwksConfigError::InvalidUrl(raw.to_owned()))
            );
        }
        let url = || JwksSource::Url("https://idp.example/jwks".to_owned());
        assert_eq!(
            JwksAuth::new(JwksConfig {
                min_refetch_interval: Duration::ZERO,
                ..config(url())
            })
            .err(),
            Some(JwksConfigError::ZeroDuration("minimum refetch interval"))
        );
        assert_eq!(
            JwksAuth::new(JwksConfig {
                audience: Some(String::new()),
                ..config(url())
            })
            .err(),
            Some(JwksConfigError::Claims(JwtConfigError::Empty("audience")))
        );
        assert!(JwksAuth::new(config(url())).is_ok());
        assert!(
            JwksAuth::new(config(JwksSource::Discovery(
                "https://idp.example/realms/a/".to_owned()
            )))
            .is_ok()
        );
    }

    #[test]
    fn discovery_looks_under_the_issuer_path() {
        let auth = JwksAuth::new(JwksConfig::new(JwksSource::Discovery(
            "https://idp.example/realms/a/".to_owned(),
        )))
        .unwrap();
        let Source::Discovery { document, .. } = &auth.shared.source else {
            panic!("a discovery source");
        };
        assert_eq!(
            document.as_str(),
            "https://idp.example/realms/a/.well-known/openid-configuration"
        );
    }
}
