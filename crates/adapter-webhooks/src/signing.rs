//! Signatures of deliveries as the Standard Webhooks specification
//! (standardwebhooks.com) has them, and the `whsec_` form of a secret.
//!
//! A delivery carries three headers: `webhook-id` (the delivery's id, the
//! same on every attempt), `webhook-timestamp` (the attempt's time in Unix
//! seconds) and `webhook-signature`: `v1,` and the standard base64 of the
//! HMAC-SHA256 of `<id>.<timestamp>.<body>`, keyed with the secret's
//! bytes. Any Standard Webhooks library verifies it with the secret as the
//! customer was shown it, `whsec_` and the standard base64 of those bytes.

use base64::{Engine, engine::general_purpose::STANDARD};
use domain::WebhookSecret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header naming the delivery (the same on every attempt).
pub const ID_HEADER: &str = "webhook-id";
/// The header with the attempt's time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// What a secret's text starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// The `webhook-signature` of `body` sent as delivery `id` at `timestamp`
/// (Unix seconds), keyed with `key`: `v1,` and the standard base64 of
/// HMAC-SHA256 over `<id>.<timestamp>.<body>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length (a long one is hashed first), so this
    // never fails.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The secret as the customer is shown it: `whsec_` and the standard
/// base64 of its 32 bytes.
pub fn encode_secret(secret: &WebhookSecret) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(secret.bytes()))
}

/// The text is not a webhook secret in the form [`encode_secret`] writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is whsec_ and the standard base64 of 32 bytes")]
pub struct InvalidSecret;

/// Reads a secret written by [`encode_secret`].
///
/// # Errors
/// [`InvalidSecret`] when the text does not start with `whsec_`, is not
/// standard base64, or does not hold exactly 32 bytes.
pub fn decode_secret(text: &str) -> Result<WebhookSecret, InvalidSecret> {
    let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(InvalidSecret)?;
    let bytes = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| InvalidSecret)?;
    Ok(WebhookSecret::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key in the specification's form (`whsec_` and base64), of any
    /// length, as the reference libraries read it.
    fn key(text: &str) -> Vec<u8> {
        STANDARD
            .decode(text.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap()
    }

    #[test]
    fn signatures_match_the_specifications_published_test_vector() {
        // The "sign function works" case of the reference libraries'
        // tests (standard-webhooks, libraries/javascript/src/webhook.test.ts
        // and the PHP, Python and Go ones alike).
        assert_eq!(
            sign(
                &key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#,
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signatures_match_the_rust_reference_librarys_vector() {
        // standard-webhooks, libraries/rust/src/lib.rs, `test_sign`.
        assert_eq!(
            sign(
                &key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn every_part_of_the_signed_text_changes_the_signature() {
        let base = sign(&[1; 32], "msg_1", 100, b"{}");
        assert_ne!(base, sign(&[2; 32], "msg_1", 100, b"{}"));
        assert_ne!(base, sign(&[1; 32], "msg_2", 100, b"{}"));
        assert_ne!(base, sign(&[1; 32], "msg_1", 101, b"{}"));
        assert_ne!(base, sign(&[1; 32], "msg_1", 100, b"{ }"));
    }

    #[test]
    fn secrets_round_trip_through_their_whsec_form() {
        let secret = WebhookSecret::new(std::array::from_fn(|i| u8::try_from(i).unwrap()));
        let text = encode_secret(&secret);
        assert_eq!(text, "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert_eq!(decode_secret(&text), Ok(secret));
    }

    #[test]
    fn a_secret_without_prefix_or_of_another_length_is_refused() {
        for text in [
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64",
            "whsec_",
        ] {
            assert_eq!(decode_secret(text), Err(InvalidSecret), "{text}");
        }
    }
}
