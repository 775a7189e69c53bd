//! One token checked against one key: the steps every verifier shares, and
//! the translation of jsonwebtoken's refusals into the domain's reasons.
//!
//! The verifiers decide which key and algorithm a token gets; this module
//! only looks at what jsonwebtoken cannot: a token too large to be worth
//! decoding, and a header naming an algorithm it does not know (`none`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::AuthError;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::claims::{ClaimRules, Claimed};

/// The longest bearer token looked at. Real tokens are a few hundred bytes;
/// refusing larger ones up front means nobody makes us decode megabytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The shortest RSA modulus accepted, in bits, from a PEM file or a JWKS.
pub const MIN_RSA_BITS: usize = 2048;

/// Verifies `token`'s signature with `key` under `validation`, then reads
/// its claims by `rules` (their lifetime is judged later, on every use).
pub(crate) fn verified_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    rules: &ClaimRules,
) -> Result<Claimed, AuthError> {
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(auth_error)?;
    rules.read(&data.claims)
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
///
/// jsonwebtoken cannot even parse a header naming an algorithm it does not
/// know (`none`), so the verifiers read it here first: any `alg` other than
/// the key's is refused as such, not as garbage.
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

/// The name of one of the three algorithms a verifier ever pins.
pub(crate) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // The verifiers only ever pin the three above.
        _ => "unsupported",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bit_length_ignores_leading_zero_bytes_and_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 0x01]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
    }
}
