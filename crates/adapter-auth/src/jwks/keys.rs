//! The keys of a JWKS document: which JWKs verify tokens, and with which
//! algorithm.
//!
//! Each key is read as jsonwebtoken's own [`Jwk`] and turned into a key with
//! [`DecodingKey::from_jwk`]; what this module adds is the policy: which of
//! those keys may verify tokens at all.
//!
//! The document itself is not read as jsonwebtoken's `JwkSet`: that reads
//! the whole set or nothing, so one key with a member of the wrong type (a
//! numeric `kid`, say) would cost every other key. The set is read as a
//! list instead, and its keys one by one; those this verifier cannot use
//! are skipped.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde::Deserialize;
use serde_json::Value;

use super::JwksFetchError;
use crate::verify::{MIN_RSA_BITS, bit_length};

/// The largest RSA modulus accepted, in bits: the largest the RSA verifier
/// takes, so that a key it would refuse on every token is refused on loading.
pub const MAX_RSA_BITS: usize = 8192;

/// A key of the set, and the one algorithm it verifies.
#[derive(Clone)]
pub(super) struct VerifyingKey {
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

/// The usable keys of a JWKS document, by `kid`.
pub(super) fn parse_key_set(
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

/// One signing key and its `kid`, or why it is skipped. The key type alone
/// decides the algorithm (RFC 7518 section 6): RSA verifies RS256, EC on
/// P-256 verifies ES256, and nothing else is taken, symmetric (`oct`) keys
/// above all, since a key from a public document must never verify an HMAC
/// token. An `alg` member must agree with the key type; `use` must be `sig`
/// and `key_ops` must hold `verify` when present.
fn parse_key(
    provider: &CryptoProvider,
    raw: Value,
) -> Result<(String, VerifyingKey), &'static str> {
    let mut jwk: Jwk = serde_json::from_value(raw).map_err(|_| "not a JWK object")?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|kid| !kid.is_empty())
        .ok_or("no kid")?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|use_| *use_ != PublicKeyUse::Signature)
    {
        return Err("not a signature key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not a verification key (key_ops)");
    }
    // Components are base64url without padding (RFC 7518); padded ones are
    // taken too, as lenient providers write them.
    let unpad = |component: &mut String| component.truncate(component.trim_end_matches('=').len());
    let (algorithm, expected) = match &mut jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            unpad(&mut rsa.n);
            unpad(&mut rsa.e);
            (Algorithm::RS256, KeyAlgorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            unpad(&mut ec.x);
            unpad(&mut ec.y);
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::EllipticCurve(_) => return Err("EC key on another curve than P-256"),
        _ => return Err("not an RSA or EC key"),
    };
    if jwk.common.key_algorithm.is_some_and(|alg| alg != expected) {
        return Err("alg disagrees with the key type");
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key components are not base64url")?;
    match (algorithm, key.kind()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bit_length(n)) {
                return Err("RSA key of a refused size");
            }
            if !usable_rsa_exponent(e) {
                return Err("RSA key with an unusable exponent");
            }
        }
        (Algorithm::ES256, _) => {
            // Building the verifier parses the point, so a point that is not
            // on the curve is skipped now rather than failing every token.
            (provider.verifier_factory)(&Algorithm::ES256, &key)
                .map_err(|_| "EC key that is not a P-256 point")?;
        }
        _ => return Err("key of an unexpected form"),
    }
    Ok((kid, VerifyingKey { algorithm, key }))
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

    const RSA_JWK: &str = include_str!("../../tests/fixtures/rsa_public.jwk.json");
    const EC_JWK: &str = include_str!("../../tests/fixtures/ec_p256_public.jwk.json");
    const RSA_1024_JWK: &str = include_str!("../../tests/fixtures/rsa_1024_public.jwk.json");

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
        assert!(!usable_rsa_exponent(&[]));
        for (e, verdict) in [
            ("AQAB", Ok(Algorithm::RS256)),
            ("AQAB==", Ok(Algorithm::RS256)),
            ("Aw", Ok(Algorithm::RS256)),
            ("AQ", Err("RSA key with an unusable exponent")),
            ("AAE", Err("RSA key with an unusable exponent")),
            ("", Err("RSA key with an unusable exponent")),
            ("*", Err("key components are not base64url")),
        ] {
            assert_eq!(
                parsed(jwk(RSA_JWK, json!({"kid": "r", "e": e}))),
                verdict,
                "{e}"
            );
        }
    }

    #[test]
    fn padded_ec_components_are_read_and_unreadable_ones_skipped() {
        let key: Value = serde_json::from_str(EC_JWK).unwrap();
        let padded = |name: &str| format!("{}=", key[name].as_str().unwrap());
        assert_eq!(
            parsed(jwk(
                EC_JWK,
                json!({"kid": "e", "x": padded("x"), "y": padded("y")})
            )),
            Ok(Algorithm::ES256)
        );
        assert!(parsed(jwk(EC_JWK, json!({"kid": "e", "x": "!!"}))).is_err());
        assert!(parsed(jwk(RSA_JWK, json!({"kid": "r", "n": ""}))).is_err());
    }

    #[test]
    fn jsonwebtokens_own_jwk_set_would_lose_every_key_over_one_odd_one() {
        // Why the set is read key by key: the same document as one JwkSet.
        let body = json!({"keys": [jwk(RSA_JWK, json!({"kid": "r"})), {"kid": 7}]});
        assert!(serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(body.clone()).is_err());
        let keys = parse_key_set(provider(), body.to_string().as_bytes()).expect("usable");
        assert_eq!(keys.len(), 1);
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
}
