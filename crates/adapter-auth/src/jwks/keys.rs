//! The keys of a JWKS document: which JWKs verify tokens, and with which
//! algorithm.
//!
//! Keys this verifier cannot use are skipped one by one, so that one odd key
//! in a provider's set does not cost the others.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey};
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

/// The usable keys of a JWKS document, by `kid`. Keys this verifier cannot
/// use are skipped one by one, so one odd key does not cost the others.
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
}
