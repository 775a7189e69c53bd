//! Verification with one configured key: an HS256 secret, or a PEM RSA or
//! P-256 public key.
//!
//! That key alone decides the algorithm: HS256 for a shared secret, RS256
//! for an RSA public key, ES256 for a P-256 public key. The token's own
//! `alg` header is only compared against it, never obeyed, which shuts out
//! `alg: none` and the classic confusion of an HMAC token keyed with the
//! public key's PEM text.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use domain::{AuthContext, AuthError, Caller, Clock};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};

use crate::KeyReadiness;
use crate::cache::TokenCache;
use crate::claims::{ClaimRules, ClaimsConfig, ClaimsConfigError};
use crate::verify::{
    MIN_RSA_BITS, algorithm_name, bit_length, check_token_size, header_algorithm, verified_claims,
};

/// The shortest HS256 secret accepted: RFC 7518 section 3.2 requires a key
/// at least as long as the hash output, 256 bits.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Which key verifies tokens. The key fixes the algorithm.
pub enum StaticKey {
    /// A shared secret: tokens must be HS256.
    Hs256(SecretString),
    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`): tokens must be
    /// RS256 for an RSA key, ES256 for a P-256 EC key.
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for StaticKey {
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

/// The key or the claim settings cannot be used. Raised at start-up so that
/// a bad key fails loudly once instead of refusing every request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticKeyError {
    /// A claim setting (customer claim, issuer, audience, leeway) is unusable.
    #[error(transparent)]
    Claims(#[from] ClaimsConfigError),
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
    /// The build has no usable signature implementation.
    #[error("no JWT crypto provider is available in this build")]
    NoCryptoProvider,
}

/// Verifies bearer tokens with one configured key.
#[derive(Clone)]
pub struct StaticKeyVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    rules: ClaimRules,
    /// Tokens verified lately. The key never changes, so nothing stamps
    /// them.
    verified: Arc<TokenCache<()>>,
}

impl fmt::Debug for StaticKeyVerifier {
    // Written out so that no key material can ever reach a log line, whatever
    // the dependencies' own Debug impls do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeyVerifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.rules.issuer())
            .field("audience", &self.rules.audience())
            .field("customer_claim", &self.rules.customer_claim())
            .field("leeway_seconds", &self.rules.leeway_seconds())
            .finish_non_exhaustive()
    }
}

impl StaticKeyVerifier {
    /// Checks the key and the claim settings, and prepares the key. Token
    /// lifetimes are judged by `clock`.
    ///
    /// # Errors
    /// [`StaticKeyError`] when the secret is short, the PEM is not an RSA
    /// (2048 bits or more) or P-256 public key, a claim name is empty, or
    /// the leeway is too long.
    pub fn new(
        key: StaticKey,
        claims: ClaimsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StaticKeyError> {
        let provider = CryptoProvider::try_get_default().ok_or(StaticKeyError::NoCryptoProvider)?;
        let (algorithm, key) = match &key {
            StaticKey::Hs256(secret) => {
                let secret = secret.expose_secret().as_bytes();
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(StaticKeyError::SecretTooShort {
                        min: MIN_HS256_SECRET_BYTES,
                    });
                }
                let key = DecodingKey::from_secret(secret).map_err(|_| {
                    StaticKeyError::SecretTooShort {
                        min: MIN_HS256_SECRET_BYTES,
                    }
                })?;
                (Algorithm::HS256, key)
            }
            StaticKey::PublicKeyPem(pem) => public_key(provider, pem)?,
        };
        let rules = ClaimRules::new(claims, clock)?;
        Ok(Self {
            algorithm,
            key,
            validation: rules.validation(algorithm),
            rules,
            verified: Arc::new(TokenCache::new()),
        })
    }

    /// The one algorithm tokens must use: `HS256`, `RS256` or `ES256`.
    pub fn algorithm(&self) -> &'static str {
        algorithm_name(self.algorithm)
    }

    fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        check_token_size(token)?;
        if let Some(known) = self.verified.get(token) {
            return self.rules.admitted(&known.claimed);
        }
        if header_algorithm(token)? != self.algorithm() {
            return Err(AuthError::RefusedAlgorithm);
        }
        let claimed = verified_claims(token, &self.key, &self.validation, &self.rules)?;
        let caller = self.rules.admitted(&claimed)?;
        self.verified.insert(token, (), claimed);
        Ok(caller)
    }
}

#[async_trait]
impl AuthContext for StaticKeyVerifier {
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError> {
        self.verify(bearer_token)
    }
}

impl KeyReadiness for StaticKeyVerifier {
    /// Always: the key was loaded at construction.
    fn keys_loaded(&self) -> bool {
        true
    }
}

/// Reads a PEM public key and works out its algorithm.
fn public_key(
    provider: &CryptoProvider,
    pem: &[u8],
) -> Result<(Algorithm, DecodingKey), StaticKeyError> {
    const PRIVATE: &[u8] = b"PRIVATE KEY-----";
    // jsonwebtoken would take a private key's inner bytes for a public key
    // and fail on every token; say what is wrong instead.
    if pem.windows(PRIVATE.len()).any(|window| window == PRIVATE) {
        return Err(StaticKeyError::PrivateKey);
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        // The RSA verifier only parses the key when a token arrives; parse it
        // now so a broken key fails at start-up.
        let der = key
            .try_get_as_bytes()
            .map_err(|_| StaticKeyError::NotAPublicKey)?;
        let (modulus, _exponent) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
            .map_err(|_| StaticKeyError::NotAPublicKey)?;
        let bits = bit_length(&modulus);
        if bits < MIN_RSA_BITS {
            return Err(StaticKeyError::WeakRsaKey {
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
            return Err(StaticKeyError::UnsupportedCurve);
        }
        return Ok((Algorithm::ES256, key));
    }
    Err(StaticKeyError::NotAPublicKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use domain::{CustomerId, ManualClock};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use crate::verify::MAX_TOKEN_BYTES;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa_public.pem");
    const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("../tests/fixtures/rsa_public_pkcs1.pem");
    const RSA_1024_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa_1024_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ec_p256_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ec_p256_public.pem");
    const EC_P384_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ec_p384_public.pem");

    /// The verifiers' time: 2024-12-18T10:30:00Z. Long past, so a verifier
    /// that read the system clock would find every token here expired.
    const NOW: u64 = 1_734_517_800;

    fn now() -> u64 {
        NOW
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(ManualClock::at_epoch_seconds(NOW as i64))
    }

    fn hs_key() -> StaticKey {
        StaticKey::Hs256(SecretString::from(SECRET))
    }

    fn hs_with(claims: ClaimsConfig) -> StaticKeyVerifier {
        StaticKeyVerifier::new(hs_key(), claims, clock()).expect("valid configuration")
    }

    fn hs_auth() -> StaticKeyVerifier {
        hs_with(ClaimsConfig::new())
    }

    fn pem_auth(pem: &[u8]) -> StaticKeyVerifier {
        StaticKeyVerifier::new(
            StaticKey::PublicKeyPem(pem.to_vec()),
            ClaimsConfig::new(),
            clock(),
        )
        .expect("valid configuration")
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

    /// An HS256 token over any claims, signed with `secret`.
    fn hs_sign(secret: &[u8], claims: &Value) -> String {
        let key = EncodingKey::from_secret(secret).expect("HMAC key");
        signed(Algorithm::HS256, &key, claims)
    }

    fn hs_token(claims: &Value) -> String {
        hs_sign(SECRET.as_bytes(), claims)
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
        let token = hs_sign(b"another-secret-that-is-also-long-enough", &claims());
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
    async fn token_lifetimes_are_judged_by_the_given_clock() {
        let clock = ManualClock::at_epoch_seconds(NOW as i64);
        let auth = StaticKeyVerifier::new(hs_key(), ClaimsConfig::new(), Arc::new(clock.clone()))
            .expect("valid configuration");
        let token = hs_token(&with(claims(), "exp", json!(NOW + 60)));
        assert!(auth.authenticate(&token).await.is_ok());
        // 60 s of life and the 30 s leeway later, and not a moment before,
        // although the token is now known to the verifier's cache.
        clock.advance(Duration::from_secs(90));
        assert!(auth.authenticate(&token).await.is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(auth.authenticate(&token).await, Err(AuthError::Expired));
    }

    #[tokio::test]
    async fn a_verified_token_vouches_for_no_other_text() {
        let auth = hs_auth();
        let token = hs_token(&claims());
        assert!(auth.authenticate(&token).await.is_ok());
        // The same header and claims with another signature, and the same
        // signature under other claims: each is checked in full.
        let (signed, signature) = token.rsplit_once('.').expect("three parts");
        let forged = format!(
            "{signed}.{}",
            hs_token(&with(claims(), "sub", json!("x")))
                .rsplit_once('.')
                .expect("three parts")
                .1
        );
        assert_eq!(
            auth.authenticate(&forged).await,
            Err(AuthError::BadSignature)
        );
        let other = hs_token(&with(claims(), "customer_id", json!("globex")));
        let (other_signed, _) = other.rsplit_once('.').expect("three parts");
        let swapped = format!("{other_signed}.{signature}");
        assert_eq!(
            auth.authenticate(&swapped).await,
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            auth.authenticate(&token)
                .await
                .map(|caller| caller.customer().clone()),
            Ok(CustomerId::parse("acme").expect("valid id"))
        );
    }

    #[tokio::test]
    async fn a_token_expired_beyond_the_configured_leeway_is_refused() {
        // 45 s is past the 30 s configured but within jsonwebtoken's own
        // default of 60 s, so this fails if another leeway creeps in.
        let token = hs_token(&with(claims(), "exp", json!(now() - 45)));
        assert_eq!(
            hs_auth().authenticate(&token).await,
            Err(AuthError::Expired)
        );

        let strict = hs_with(ClaimsConfig {
            leeway: Duration::ZERO,
            ..ClaimsConfig::new()
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
            hs_sign(SECRET.as_bytes(), &json!("just a string")),
            hs_sign(SECRET.as_bytes(), &json!([1, 2])),
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
        let tenant = hs_with(ClaimsConfig {
            customer_claim: "https://example.com/tenant".to_owned(),
            ..ClaimsConfig::new()
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

    fn iss_aud_auth() -> StaticKeyVerifier {
        hs_with(ClaimsConfig {
            issuer: Some("https://issuer.example".to_owned()),
            audience: Some("maestro".to_owned()),
            ..ClaimsConfig::new()
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
            let auth = pem_auth(pem);
            assert_eq!(auth.algorithm(), "RS256");
            let caller = auth.authenticate(&rs_token(&claims())).await;
            assert_eq!(caller.map(|caller| caller.customer().clone()), Ok(acme()));
        }
    }

    #[tokio::test]
    async fn es256_tokens_verify_with_a_p256_public_pem() {
        let auth = pem_auth(EC_PUBLIC);
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
            let auth = pem_auth(pem);
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
        let es = pem_auth(EC_PUBLIC);
        assert_eq!(
            es.authenticate(&rs_token(&claims())).await,
            Err(AuthError::RefusedAlgorithm)
        );
        let rs = pem_auth(RSA_PUBLIC);
        assert_eq!(
            rs.authenticate(&es_token(&claims())).await,
            Err(AuthError::RefusedAlgorithm)
        );
    }

    #[tokio::test]
    async fn an_hs256_token_keyed_with_the_public_pem_is_refused() {
        for pem in [RSA_PUBLIC, EC_PUBLIC] {
            let auth = pem_auth(pem);
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
        let pem = |bytes: &[u8]| StaticKey::PublicKeyPem(bytes.to_vec());
        let cases = [
            (pem(b"not a pem at all"), StaticKeyError::NotAPublicKey),
            (
                pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
                StaticKeyError::NotAPublicKey,
            ),
            (pem(RSA_PRIVATE), StaticKeyError::PrivateKey),
            (pem(EC_PRIVATE), StaticKeyError::PrivateKey),
            (pem(EC_P384_PUBLIC), StaticKeyError::UnsupportedCurve),
            (
                pem(RSA_1024_PUBLIC),
                StaticKeyError::WeakRsaKey {
                    bits: 1024,
                    min: MIN_RSA_BITS,
                },
            ),
            (
                StaticKey::Hs256(SecretString::from("short")),
                StaticKeyError::SecretTooShort {
                    min: MIN_HS256_SECRET_BYTES,
                },
            ),
            (
                StaticKey::Hs256(SecretString::from("")),
                StaticKeyError::SecretTooShort {
                    min: MIN_HS256_SECRET_BYTES,
                },
            ),
        ];
        for (key, expected) in cases {
            let described = format!("{key:?}");
            assert_eq!(
                StaticKeyVerifier::new(key, ClaimsConfig::new(), clock()).err(),
                Some(expected),
                "{described}"
            );
        }
    }

    #[test]
    fn unusable_claim_settings_are_refused_at_construction() {
        let claims = ClaimsConfig {
            audience: Some(String::new()),
            ..ClaimsConfig::new()
        };
        assert_eq!(
            StaticKeyVerifier::new(hs_key(), claims, clock()).err(),
            Some(StaticKeyError::Claims(ClaimsConfigError::Empty("audience")))
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = format!("{:?}", hs_key());
        let auth = format!("{:?}", hs_auth());
        for text in [&key, &auth] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("long-enough"), "{text}");
        }
        assert!(auth.contains("HS256"), "{auth}");
    }

    #[test]
    fn a_static_key_is_always_loaded() {
        assert!(hs_auth().keys_loaded());
    }
}
