//! JWT verification: the [`domain::AuthContext`] the HTTP API uses.
//!
//! One configured key verifies every token, and that key alone decides the
//! algorithm: HS256 for a shared secret, RS256 for an RSA public key, ES256
//! for a P-256 public key. The token's own `alg` header is only compared
//! against it, never obeyed, which shuts out `alg: none` and the classic
//! confusion of an HMAC token keyed with the public key's PEM text.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{AuthContext, AuthError, Caller, CustomerId};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
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

/// The longest bearer token looked at. Real tokens are a few hundred bytes;
/// refusing larger ones up front means nobody makes us decode megabytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The shortest HS256 secret accepted: RFC 7518 section 3.2 requires a key
/// at least as long as the hash output, 256 bits.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The shortest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Which key verifies tokens. The key fixes the algorithm.
pub enum JwtKey {
    /// A shared secret: tokens must be HS256.
    Hs256(SecretString),
    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`): tokens must be
    /// RS256 for an RSA key, ES256 for a P-256 EC key.
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hs256(_) => f.debug_tuple("Hs256").field(&"[redacted]").finish(),
            Self::PublicKeyPem(pem) => f
                .debug_tuple("PublicKeyPem")
                .field(&format_args!("{} bytes", pem.len()))
                .finish(),
        }
    }
}

/// How tokens are verified.
#[derive(Debug)]
pub struct JwtConfig {
    /// The key that verifies every token, and so its algorithm.
    pub key: JwtKey,
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

impl JwtConfig {
    /// A configuration for `key` with no issuer or audience check, the
    /// default customer claim and the default leeway.
    pub fn new(key: JwtKey) -> Self {
        Self {
            key,
            issuer: None,
            audience: None,
            customer_claim: DEFAULT_CUSTOMER_CLAIM.to_owned(),
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// The JWT configuration cannot be used. Raised at start-up so that a bad
/// key fails loudly once instead of refusing every request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtConfigError {
    /// The HS256 secret is too short to be safe.
    #[error("the HS256 secret must be at least {min} bytes long")]
    SecretTooShort {
        /// The shortest length accepted, in bytes.
        min: usize,
    },
    /// A private key was given where the public key belongs.
    #[error("the JWT key is a private key; configure its public key instead")]
    PrivateKey,
    /// The bytes are not a PEM public key of a supported kind.
    #[error("the JWT key is not a PEM RSA or P-256 EC public key")]
    NotAPublicKey,
    /// The RSA key is too short to be safe.
    #[error("the RSA key has {bits} bits; at least {min} are required")]
    WeakRsaKey {
        /// The size of the key's modulus.
        bits: usize,
        /// The smallest size accepted.
        min: usize,
    },
    /// The EC key is on another curve than P-256.
    #[error("the EC key is not on curve P-256 (ES256), the only curve supported")]
    UnsupportedCurve,
    /// A setting that must name something is empty.
    #[error("the JWT {0} must not be empty")]
    Empty(&'static str),
    /// The leeway is longer than [`MAX_LEEWAY`].
    #[error("the JWT leeway of {}s is longer than the {}s allowed", .0.as_secs(), MAX_LEEWAY.as_secs())]
    LeewayTooLong(Duration),
    /// The build has no usable signature implementation.
    #[error("no JWT crypto provider is available in this build")]
    NoCryptoProvider,
}

/// Verifies bearer tokens with one configured key.
#[derive(Clone)]
pub struct JwtAuth {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    customer_claim: String,
}

impl fmt::Debug for JwtAuth {
    // Written out so that no key material can ever reach a log line, whatever
    // the dependencies' own Debug impls do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("customer_claim", &self.customer_claim)
            .field("leeway_seconds", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// Checks the configuration and prepares the key.
    ///
    /// # Errors
    /// [`JwtConfigError`] when the secret is short, the PEM is not an RSA
    /// (2048 bits or more) or P-256 public key, a name is empty, or the
    /// leeway is too long.
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        let provider = CryptoProvider::try_get_default().ok_or(JwtConfigError::NoCryptoProvider)?;
        let (algorithm, key) = match &config.key {
            JwtKey::Hs256(secret) => {
                let secret = secret.expose_secret().as_bytes();
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(JwtConfigError::SecretTooShort {
                        min: MIN_HS256_SECRET_BYTES,
                    });
                }
                let key = DecodingKey::from_secret(secret).map_err(|_| {
                    JwtConfigError::SecretTooShort {
                        min: MIN_HS256_SECRET_BYTES,
                    }
                })?;
                (Algorithm::HS256, key)
            }
            JwtKey::PublicKeyPem(pem) => public_key(provider, pem)?,
        };

        let validation = claims_validation(
            algorithm,
            &config.customer_claim,
            config.issuer.as_deref(),
            config.audience.as_deref(),
            config.leeway,
        )?;

        Ok(Self {
            algorithm,
            key,
            validation,
            customer_claim: config.customer_claim,
        })
    }

    /// The one algorithm tokens must use: `HS256`, `RS256` or `ES256`.
    pub fn algorithm(&self) -> &'static str {
        algorithm_name(self.algorithm)
    }

    fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        check_token_size(token)?;
        // jsonwebtoken cannot even parse a header naming an algorithm it does
        // not know (`none`), so the header is read here first: any `alg`
        // other than the key's is refused as such, not as garbage.
        if header_algorithm(token)? != self.algorithm() {
            return Err(AuthError::RefusedAlgorithm);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(auth_error)?;
        caller_from_claims(&data.claims, &self.customer_claim)
    }
}

#[async_trait]
impl AuthContext for JwtAuth {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        self.verify(bearer_token)
    }
}

/// Checks the claim settings every verifier shares (customer claim, issuer,
/// audience, leeway) and builds the validation that pins `algorithm`: `exp`
/// required, `exp` and `nbf` checked with the leeway, and `iss` and `aud`
/// required and checked when configured.
pub(crate) fn claims_validation(
    algorithm: Algorithm,
    customer_claim: &str,
    issuer: Option<&str>,
    audience: Option<&str>,
    leeway: Duration,
) -> Result<Validation, JwtConfigError> {
    if customer_claim.is_empty() {
        return Err(JwtConfigError::Empty("customer claim"));
    }
    if leeway > MAX_LEEWAY {
        return Err(JwtConfigError::LeewayTooLong(leeway));
    }

    let mut validation = Validation::new(algorithm);
    let mut required = vec!["exp"];
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = leeway.as_secs();
    match issuer {
        Some("") => return Err(JwtConfigError::Empty("issuer")),
        Some(issuer) => {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        None => {}
    }
    match audience {
        Some("") => {
            return Err(JwtConfigError::Empty("audience"));
        }
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

    Ok(validation)
}

/// Reads a PEM public key and works out its algorithm.
fn public_key(
    provider: &CryptoProvider,
    pem: &[u8],
) -> Result<(Algorithm, DecodingKey), JwtConfigError> {
    const PRIVATE: &[u8] = b"PRIVATE KEY-----";
    // jsonwebtoken would take a private key's inner bytes for a public key
    // and fail on every token; say what is wrong instead.
    if pem.windows(PRIVATE.len()).any(|window| window == PRIVATE) {
        return Err(JwtConfigError::PrivateKey);
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        // The RSA verifier only parses the key when a token arrives; parse it
        // now so a broken key fails at start-up.
        let der = key
            .try_get_as_bytes()
            .map_err(|_| JwtConfigError::NotAPublicKey)?;
        let (modulus, _exponent) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
            .map_err(|_| JwtConfigError::NotAPublicKey)?;
        let bits = bit_length(&modulus);
        if bits < MIN_RSA_BITS {
            return Err(JwtConfigError::WeakRsaKey {
                bits,
                min: MIN_RSA_BITS,
            });
        }
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // Building the ES256 verifier parses the point as a P-256 one, which
        // fails for a P-384 key or a broken point.
        if (provider.verifier_factory)(&Algorithm::ES256, &key).is_err() {
            return Err(JwtConfigError::UnsupportedCurve);
        }
        return Ok((Algorithm::ES256, key));
    }
    Err(JwtConfigError::NotAPublicKey)
}

/// The number of significant bits of a big-endian unsigned integer.
pub(crate) fn bit_length(be_bytes: &[u8]) -> usize {
    let significant = be_bytes
        .iter()
        .position(|byte| *byte != 0)
        .map_or(&[][..], |first| &be_bytes[first..]);
    match significant.first() {
        Some(top) => significant.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // JwtAuth::new only ever pins the three above.
        _ => "unsupported",
    }
}

/// Refuses an empty token, and one too long to be worth decoding.
pub(crate) fn check_token_size(token: &str) -> Result<(), AuthError> {
    if token.is_empty() {
        return Err(AuthError::Malformed("empty token".to_owned()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed(format!(
            "token longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The `alg` of a compact JWS's header, read without trusting anything else.
pub(crate) fn header_algorithm(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }

    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "not three dot-separated parts".to_owned(),
        ));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url".to_owned()))?;
    let header: AlgOnly = serde_json::from_slice(&json).map_err(|_| {
        AuthError::Malformed("header is not a JSON object with a string alg".to_owned())
    })?;
    Ok(header.alg)
}

/// Translates jsonwebtoken's refusal into the domain's reason. Messages are
/// fixed texts: a malformed token's content has no place in a log line.
pub(crate) fn auth_error(err: jsonwebtoken::errors::Error) -> AuthError {
    let malformed = |what: &str| AuthError::Malformed(what.to_owned());
    match err.kind() {
        ErrorKind::InvalidToken => malformed("not a usable JWS"),
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => AuthError::RefusedAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::Expired,
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::Malformed(format!("missing claim {claim}")),
        },
        ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::Malformed(format!("claim {claim} has the wrong type")),
        },
        ErrorKind::Base64(_) => malformed("a part is not base64url"),
        ErrorKind::Json(_) => malformed("a part is not the expected JSON"),
        ErrorKind::Utf8(_) => malformed("a part is not UTF-8"),
        // Only the key can cause these, and the verifiers check their keys
        // when they load them.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => AuthError::KeysUnavailable(err.to_string()),
        // Signing errors and kinds added later: refuse, never accept.
        _ => AuthError::Malformed(format!("refused: {err}")),
    }
}

/// The caller a verified token's claims name: the customer from
/// `customer_claim`, the subject from `sub`.
pub(crate) fn caller_from_claims(
    claims: &Map<String, Value>,
    customer_claim: &str,
) -> Result<Caller, AuthError> {
    let customer = match claims.get(customer_claim) {
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

/// The claims of a token minted for a customer: the customer claim, and
/// `sub`, `iss`, `aud` when set, `iat` and `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The name of the claim holding the customer.
    pub customer_claim: String,
    /// The customer the token acts for.
    pub customer: CustomerId,
    /// `sub`, who acts.
    pub subject: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud`.
    pub audience: Option<String>,
    /// `iat`, seconds since the Unix epoch.
    pub issued_at: u64,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl TokenClaims {
    /// Claims for `customer` under the default claim name, issued now and
    /// valid for `ttl`.
    pub fn new(customer: CustomerId, ttl: Duration) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        Self {
            customer_claim: DEFAULT_CUSTOMER_CLAIM.to_owned(),
            customer,
            subject: None,
            issuer: None,
            audience: None,
            issued_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
        }
    }
}

impl Serialize for TokenClaims {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(&self.customer_claim, self.customer.as_str())?;
        // A customer claim named like a registered claim wins over it, so the
        // token never carries the same key twice.
        let mut entry = |name: &str, value: Value| {
            if name == self.customer_claim {
                Ok(())
            } else {
                map.serialize_entry(name, &value)
            }
        };
        let text = |value: &Option<String>| value.clone().map(Value::String);
        for (name, value) in [
            ("sub", text(&self.subject)),
            ("iss", text(&self.issuer)),
            ("aud", text(&self.audience)),
            ("iat", Some(Value::from(self.issued_at))),
            ("exp", Some(Value::from(self.expires_at))),
        ] {
            if let Some(value) = value {
                entry(name, value)?;
            }
        }
        map.end()
    }
}

/// A token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
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

/// Mints an HS256 token over `claims` (a [`TokenClaims`], or any JSON
/// object), for `maestro token`, the development banner and tests.
///
/// # Errors
/// [`MintError::SecretTooShort`] for a secret shorter than
/// [`MIN_HS256_SECRET_BYTES`]; [`MintError::Signing`] if the claims do not
/// serialize.
pub fn mint_hs256<C: Serialize>(secret: &[u8], claims: &C) -> Result<String, MintError> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(MintError::SecretTooShort {
            min: MIN_HS256_SECRET_BYTES,
        });
    }
    let key =
        EncodingKey::from_secret(secret).map_err(|err| MintError::Signing(err.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|err| MintError::Signing(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use jsonwebtoken::encode;
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa_public.pem");
    const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("../tests/fixtures/rsa_public_pkcs1.pem");
    const RSA_1024_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa_1024_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ec_p256_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ec_p256_public.pem");
    const EC_P384_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ec_p384_public.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs_config() -> JwtConfig {
        JwtConfig::new(JwtKey::Hs256(SecretString::from(SECRET)))
    }

    fn auth(config: JwtConfig) -> JwtAuth {
        JwtAuth::new(config).expect("valid configuration")
    }

    fn hs_auth() -> JwtAuth {
        auth(hs_config())
    }

    /// Claims a valid token carries: customer, subject, an hour to live.
    fn claims() -> Value {
        json!({"customer_id": "acme", "sub": "user-1", "exp": now() + 3600})
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims
            .as_object_mut()
            .expect("claims are an object")
            .remove(name);
        claims
    }

    fn hs_token(claims: &Value) -> String {
        mint_hs256(SECRET.as_bytes(), claims).expect("minted")
    }

    fn signed(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(algorithm), claims, key).expect("signed")
    }

    fn rs_token(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA private key");
        signed(Algorithm::RS256, &key, claims)
    }

    fn es_token(claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC private key");
        signed(Algorithm::ES256, &key, claims)
    }

    /// `message` with a valid HS256 signature, whatever it holds.
    fn well_signed(message: &str) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("signed");
        format!("{message}.{signature}")
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn acme() -> CustomerId {
        CustomerId::parse("acme").expect("valid id")
    }

    #[tokio::test]
    async fn a_valid_hs256_token_yields_its_customer_and_subject() {
        let caller = hs_auth().authenticate(&hs_token(&claims())).await;
        assert_eq!(caller, Ok(Caller::new(acme()).with_subject("user-1")));
    }

    #[tokio::test]
    async fn a_token_without_sub_has_no_subject() {
        let caller = hs_auth()
            .authenticate(&hs_token(&without(claims(), "sub")))
            .await
            .expect("accepted");
        assert_eq!(caller, Caller::new(acme()));
    }

    #[tokio::test]
    async fn a_token_signed_with_another_secret_has_a_bad_signature() {
        let token = mint_hs256(b"another-secret-that-is-also-long-enough", &claims()).unwrap();
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_as_expired() {
        let token = hs_token(&with(claims(), "exp", json!(now() - 3600)));
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn a_token_expired_beyond_the_configured_leeway_is_refused() {
        // 45 s is past the 30 s configured but within jsonwebtoken's own
        // default of 60 s, so this fails if the configured leeway is lost.
        let token = hs_token(&with(claims(), "exp", json!(now() - 45)));
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Expired)
        );

        let strict = auth(JwtConfig {
            leeway: Duration::ZERO,
            ..hs_config()
        });
        let token = hs_token(&with(claims(), "exp", json!(now() - 5)));
        assert_eq!(strict.authenticate(&token).await, Err(AuthError::Expired));
    }

    #[tokio::test]
    async fn a_token_not_yet_valid_beyond_the_leeway_is_refused() {
        for nbf in [now() + 45, now() + 3600] {
            let token = hs_token(&with(claims(), "nbf", json!(nbf)));
            assert_eq!(
                hs_auth().authenticate(&token).await,
                Err(AuthError::NotYetValid),
                "nbf {nbf}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_just_expired_or_just_not_yet_valid_within_the_leeway_is_accepted() {
        let expired = hs_token(&with(claims(), "exp", json!(now() - 10)));
        assert!(hs_auth().authenticate(&expired).await.is_ok());
        let early = hs_token(&with(claims(), "nbf", json!(now() + 10)));
        assert!(hs_auth().authenticate(&early).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_without_exp_is_refused_as_expired() {
        let token = hs_token(&without(claims(), "exp"));
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn a_non_numeric_exp_counts_as_missing_and_a_non_numeric_nbf_as_malformed() {
        let token = hs_token(&with(claims(), "exp", json!("tomorrow")));
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Expired)
        );
        let token = hs_token(&with(claims(), "nbf", json!("yesterday")));
        assert!(matches!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn an_alg_none_token_is_refused() {
        for alg in ["none", "None", "NONE", ""] {
            let token = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "typ": "JWT"})),
                b64(&claims())
            );
            assert_eq!(
                hs_auth().authenticate(&token).await,
                Err(AuthError::RefusedAlgorithm),
                "alg {alg:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_of_another_hmac_algorithm_with_the_right_secret_is_refused() {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        for algorithm in [Algorithm::HS384, Algorithm::HS512] {
            let token = signed(algorithm, &key, &claims());
            assert_eq!(
                hs_auth().authenticate(&token).await,
                Err(AuthError::RefusedAlgorithm),
                "{algorithm:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_whose_payload_was_changed_fails_the_signature_check() {
        let token = hs_token(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&with(claims(), "customer_id", json!("someone-else")));
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            hs_auth().authenticate(&tampered).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn garbage_is_refused_as_malformed() {
        let header = b64(&json!({"alg": "HS256", "typ": "JWT"}));
        let payload = b64(&claims());
        let cases = [
            String::new(),
            "garbage".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "!!!.!!!.!!!".to_owned(),
            format!("{}.{payload}.sig", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{payload}.sig", b64(&json!({"typ": "JWT"}))),
            format!("{}.{payload}.sig", b64(&json!({"alg": 256}))),
            format!("{}.{payload}.sig", b64(&json!(["HS256"]))),
            format!("{header}.{payload}.!!!"),
            // Well signed, so only the payload's encoding can be at fault.
            well_signed(&format!("{header}.!!!")),
            well_signed(&format!("{header}.{}", URL_SAFE_NO_PAD.encode("not json"))),
            // A well-signed token whose payload is not a JSON object.
            mint_hs256(SECRET.as_bytes(), &json!("just a string")).unwrap(),
            mint_hs256(SECRET.as_bytes(), &json!([1, 2])).unwrap(),
        ];
        for token in cases {
            let outcome = hs_auth().authenticate(&token).await;
            assert!(
                matches!(outcome, Err(AuthError::Malformed(_))),
                "{token:?} gave {outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_token_is_refused_even_when_well_signed() {
        let big = hs_token(&with(
            claims(),
            "padding",
            json!("x".repeat(MAX_TOKEN_BYTES)),
        ));
        assert!(big.len() > MAX_TOKEN_BYTES);
        assert!(matches!(
            hs_auth().authenticate(&big).await,
            Err(AuthError::Malformed(message)) if message.contains("longer than")
        ));

        let fits = hs_token(&with(claims(), "padding", json!("x".repeat(1000))));
        assert!(hs_auth().authenticate(&fits).await.is_ok());
    }

    #[tokio::test]
    async fn a_missing_empty_null_non_string_or_invalid_customer_claim_is_refused() {
        let mut cases = vec![without(claims(), "customer_id")];
        for value in [
            json!(""),
            json!(null),
            json!(42),
            json!(true),
            json!(["acme"]),
            json!({"id": "acme"}),
            json!("acme\n"),
            json!("x".repeat(256)),
        ] {
            cases.push(with(claims(), "customer_id", value));
        }
        for case in cases {
            assert_eq!(
                hs_auth().authenticate(&hs_token(&case)).await,
                Err(AuthError::MissingCustomer),
                "{case}"
            );
        }
    }

    #[tokio::test]
    async fn the_configured_customer_claim_is_the_one_read() {
        let tenant = auth(JwtConfig {
            customer_claim: "https://example.com/tenant".to_owned(),
            ..hs_config()
        });
        let token = hs_token(&with(
            claims(),
            "https://example.com/tenant",
            json!("globex"),
        ));
        let caller = tenant.authenticate(&token).await.expect("accepted");
        assert_eq!(caller.customer().as_str(), "globex");

        // The default claim alone no longer names a customer.
        assert_eq!(
            tenant.authenticate(&hs_token(&claims())).await,
            Err(AuthError::MissingCustomer)
        );
    }

    fn iss_aud_auth() -> JwtAuth {
        auth(JwtConfig {
            issuer: Some("https://issuer.example".to_owned()),
            audience: Some("maestro".to_owned()),
            ..hs_config()
        })
    }

    fn iss_aud_claims() -> Value {
        with(
            with(claims(), "iss", json!("https://issuer.example")),
            "aud",
            json!("maestro"),
        )
    }

    #[tokio::test]
    async fn a_configured_issuer_and_audience_accept_a_matching_token() {
        let auth = iss_aud_auth();
        assert!(
            auth.authenticate(&hs_token(&iss_aud_claims()))
                .await
                .is_ok()
        );
        let listed = with(iss_aud_claims(), "aud", json!(["other", "maestro"]));
        assert!(auth.authenticate(&hs_token(&listed)).await.is_ok());
    }

    #[tokio::test]
    async fn a_configured_issuer_refuses_a_wrong_or_missing_iss() {
        let auth = iss_aud_auth();
        for case in [
            with(iss_aud_claims(), "iss", json!("https://evil.example")),
            with(iss_aud_claims(), "iss", json!(7)),
            without(iss_aud_claims(), "iss"),
        ] {
            assert_eq!(
                auth.authenticate(&hs_token(&case)).await,
                Err(AuthError::WrongIssuer),
                "{case}"
            );
        }
    }

    #[tokio::test]
    async fn a_configured_audience_refuses_a_wrong_or_missing_aud() {
        let auth = iss_aud_auth();
        for case in [
            with(iss_aud_claims(), "aud", json!("someone-else")),
            with(iss_aud_claims(), "aud", json!(["a", "b"])),
            with(iss_aud_claims(), "aud", json!(7)),
            without(iss_aud_claims(), "aud"),
        ] {
            assert_eq!(
                auth.authenticate(&hs_token(&case)).await,
                Err(AuthError::WrongAudience),
                "{case}"
            );
        }
    }

    #[tokio::test]
    async fn without_a_configured_audience_a_token_carrying_aud_is_accepted() {
        for aud in [json!("anything"), json!(["a", "b"])] {
            let token = hs_token(&with(claims(), "aud", aud));
            assert!(hs_auth().authenticate(&token).await.is_ok());
        }
    }

    #[tokio::test]
    async fn rs256_tokens_verify_with_an_rsa_public_pem_in_either_format() {
        for pem in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let auth = auth(JwtConfig::new(JwtKey::PublicKeyPem(pem.to_vec())));
            assert_eq!(auth.algorithm(), "RS256");
            let caller = auth.authenticate(&rs_token(&claims())).await;
            assert_eq!(caller.map(|caller| caller.customer().clone()), Ok(acme()));
        }
    }

    #[tokio::test]
    async fn es256_tokens_verify_with_a_p256_public_pem() {
        let auth = auth(JwtConfig::new(JwtKey::PublicKeyPem(EC_PUBLIC.to_vec())));
        assert_eq!(auth.algorithm(), "ES256");
        let caller = auth.authenticate(&es_token(&claims())).await;
        assert_eq!(caller.map(|caller| caller.customer().clone()), Ok(acme()));
    }

    #[tokio::test]
    async fn public_key_tokens_with_a_changed_payload_have_a_bad_signature() {
        let forged = b64(&with(claims(), "customer_id", json!("someone-else")));
        for (pem, token) in [
            (RSA_PUBLIC, rs_token(&claims())),
            (EC_PUBLIC, es_token(&claims())),
        ] {
            let auth = auth(JwtConfig::new(JwtKey::PublicKeyPem(pem.to_vec())));
            let parts: Vec<&str> = token.split('.').collect();
            let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
            assert_eq!(
                auth.authenticate(&tampered).await,
                Err(AuthError::BadSignature)
            );
        }
    }

    #[tokio::test]
    async fn an_rs256_token_is_refused_by_an_es256_key_and_the_other_way_round() {
        let es = auth(JwtConfig::new(JwtKey::PublicKeyPem(EC_PUBLIC.to_vec())));
        assert_eq!(
            es.authenticate(&rs_token(&claims())).await,
            Err(AuthError::RefusedAlgorithm)
        );
        let rs = auth(JwtConfig::new(JwtKey::PublicKeyPem(RSA_PUBLIC.to_vec())));
        assert_eq!(
            rs.authenticate(&es_token(&claims())).await,
            Err(AuthError::RefusedAlgorithm)
        );
    }

    #[tokio::test]
    async fn an_hs256_token_keyed_with_the_public_pem_is_refused() {
        for pem in [RSA_PUBLIC, EC_PUBLIC] {
            let auth = auth(JwtConfig::new(JwtKey::PublicKeyPem(pem.to_vec())));
            // The attacker knows the public key and uses its PEM text as the
            // HMAC secret, hoping the verifier follows the header's `alg`.
            let token = signed(
                Algorithm::HS256,
                &EncodingKey::from_secret(pem).unwrap(),
                &claims(),
            );
            assert_eq!(
                auth.authenticate(&token).await,
                Err(AuthError::RefusedAlgorithm)
            );
        }
    }

    #[tokio::test]
    async fn an_hs256_verifier_refuses_public_key_tokens() {
        for token in [rs_token(&claims()), es_token(&claims())] {
            assert_eq!(
                hs_auth().authenticate(&token).await,
                Err(AuthError::RefusedAlgorithm)
            );
        }
    }

    #[test]
    fn unusable_keys_are_refused_at_construction() {
        let pem = |bytes: &[u8]| JwtConfig::new(JwtKey::PublicKeyPem(bytes.to_vec()));
        let cases = [
            (pem(b"not a pem at all"), JwtConfigError::NotAPublicKey),
            (
                pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
                JwtConfigError::NotAPublicKey,
            ),
            (pem(RSA_PRIVATE), JwtConfigError::PrivateKey),
            (pem(EC_PRIVATE), JwtConfigError::PrivateKey),
            (pem(EC_P384_PUBLIC), JwtConfigError::UnsupportedCurve),
            (
                pem(RSA_1024_PUBLIC),
                JwtConfigError::WeakRsaKey {
                    bits: 1024,
                    min: MIN_RSA_BITS,
                },
            ),
            (
                JwtConfig::new(JwtKey::Hs256(SecretString::from("short"))),
                JwtConfigError::SecretTooShort {
                    min: MIN_HS256_SECRET_BYTES,
                },
            ),
            (
                JwtConfig::new(JwtKey::Hs256(SecretString::from(""))),
                JwtConfigError::SecretTooShort {
                    min: MIN_HS256_SECRET_BYTES,
                },
            ),
        ];
        for (config, expected) in cases {
            let described = format!("{config:?}");
            assert_eq!(JwtAuth::new(config).err(), Some(expected), "{described}");
        }
    }

    #[test]
    fn empty_names_and_an_overlong_leeway_are_refused_at_construction() {
        let cases = [
            (
                JwtConfig {
                    customer_claim: String::new(),
                    ..hs_config()
                },
                JwtConfigError::Empty("customer claim"),
            ),
            (
                JwtConfig {
                    issuer: Some(String::new()),
                    ..hs_config()
                },
                JwtConfigError::Empty("issuer"),
            ),
            (
                JwtConfig {
                    audience: Some(String::new()),
                    ..hs_config()
                },
                JwtConfigError::Empty("audience"),
            ),
            (
                JwtConfig {
                    leeway: Duration::MAX,
                    ..hs_config()
                },
                JwtConfigError::LeewayTooLong(Duration::MAX),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(JwtAuth::new(config).err(), Some(expected));
        }
        assert!(
            JwtAuth::new(JwtConfig {
                leeway: MAX_LEEWAY,
                ..hs_config()
            })
            .is_ok()
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let config = hs_config();
        let key = format!("{:?}", config.key);
        let config_text = format!("{config:?}");
        let auth_text = format!("{:?}", auth(config));
        for text in [&key, &config_text, &auth_text] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("long-enough"), "{text}");
        }
        assert!(auth_text.contains("HS256"), "{auth_text}");
    }

    #[tokio::test]
    async fn minted_token_claims_round_trip_through_the_verifier() {
        let mut minted = TokenClaims::new(acme(), Duration::from_secs(600));
        minted.subject = Some("ops".to_owned());
        minted.issuer = Some("https://issuer.example".to_owned());
        minted.audience = Some("maestro".to_owned());
        let token = mint_hs256(SECRET.as_bytes(), &minted).unwrap();
        let caller = iss_aud_auth().authenticate(&token).await;
        assert_eq!(caller, Ok(Caller::new(acme()).with_subject("ops")));

        let tenant_claims = TokenClaims {
            customer_claim: "tenant".to_owned(),
            ..TokenClaims::new(acme(), Duration::from_secs(600))
        };
        let tenant = auth(JwtConfig {
            customer_claim: "tenant".to_owned(),
            ..hs_config()
        });
        let token = mint_hs256(SECRET.as_bytes(), &tenant_claims).unwrap();
        assert!(tenant.authenticate(&token).await.is_ok());
    }

    #[tokio::test]
    async fn minted_claims_expire_after_their_ttl() {
        let minted = TokenClaims::new(acme(), Duration::from_secs(600));
        assert_eq!(minted.expires_at - minted.issued_at, 600);
        let stale = TokenClaims {
            expires_at: now() - 3600,
            ..minted
        };
        let token = mint_hs256(SECRET.as_bytes(), &stale).unwrap();
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_customer_claim_named_sub_is_written_once() {
        let minted = TokenClaims {
            customer_claim: "sub".to_owned(),
            subject: Some("ignored".to_owned()),
            ..TokenClaims::new(acme(), Duration::from_secs(60))
        };
        let json = serde_json::to_string(&minted).unwrap();
        assert_eq!(json.matches("\"sub\"").count(), 1, "{json}");
        assert!(json.contains("\"sub\":\"acme\""), "{json}");
    }

    #[test]
    fn minting_refuses_a_short_secret() {
        assert_eq!(
            mint_hs256(b"short", &claims()),
            Err(MintError::SecretTooShort {
                min: MIN_HS256_SECRET_BYTES
            })
        );
    }

    #[test]
    fn rsa_bit_length_ignores_leading_zero_bytes_and_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 0x01]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
    }
}
