//! What one key holds in Redis: a claim in flight, a kept record or the
//! note of a failed attempt, as a small JSON document that an operator can
//! read with `redis-cli GET`.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

/// The value of one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Record {
    /// A request holds the key. `token` is unique to that request, so that
    /// the exact value proves whose claim it is.
    ///
    /// The key is kept for the claim's time in flight and its retention
    /// after; `deadline_pttl` is the retention in milliseconds, so the
    /// claim's deadline is when no more than that is left of the key's
    /// lifetime (its `PTTL`). Past it, the claim reads as a failed attempt.
    /// Claims written before claims had deadlines have none, and are in
    /// flight until they expire.
    InFlight {
        fingerprint: String,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_pttl: Option<u64>,
    },
    /// A request with the key finished, and the domain kept this record of
    /// it: bytes the store never reads, in base64.
    ///
    /// The field is named `record`, not `body` as in the shape written
    /// before records were opaque (`status` and `body`): an instance of
    /// either version finds the other's done records unreadable, and
    /// answers that the store failed, rather than replaying bytes it would
    /// misread.
    Done { fingerprint: String, record: String },
    /// A request with the key failed in a way that invites a retry and gave
    /// up its claim: the next claim with the same fingerprint takes the key
    /// over as a retry.
    Failed { fingerprint: String },
}

/// A stored value could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("unreadable idempotency record")]
pub(crate) struct UnreadableRecord(#[source] Box<dyn std::error::Error + Send + Sync>);

impl Record {
    /// A new claim for `fingerprint`, with a fresh random token, whose key
    /// is kept `deadline_pttl` ms past the claim's deadline.
    pub(crate) fn claim(fingerprint: &str, deadline_pttl: u64) -> Self {
        Self::InFlight {
            fingerprint: fingerprint.to_owned(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            deadline_pttl: Some(deadline_pttl),
        }
    }

    /// The record kept for `fingerprint`.
    pub(crate) fn done(fingerprint: &str, record: &[u8]) -> Self {
        Self::Done {
            fingerprint: fingerprint.to_owned(),
            record: STANDARD.encode(record),
        }
    }

    /// The note that an attempt for `fingerprint` failed.
    pub(crate) fn failed(fingerprint: &str) -> Self {
        Self::Failed {
            fingerprint: fingerprint.to_owned(),
        }
    }

    pub(crate) fn fingerprint(&self) -> &str {
        match self {
            Self::InFlight { fingerprint, .. }
            | Self::Done { fingerprint, .. }
            | Self::Failed { fingerprint } => fingerprint,
        }
    }

    /// The stored form.
    pub(crate) fn encode(&self) -> String {
        // Serializing plain strings into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored form back.
    pub(crate) fn decode(text: &str) -> Result<Self, UnreadableRecord> {
        serde_json::from_str(text).map_err(|err| UnreadableRecord(err.into()))
    }

    /// Whether this is a claim before its deadline, for a key with `pttl`
    /// ms left to live (Redis's `PTTL`, negative when the key has no
    /// expiry).
    pub(crate) fn in_flight(&self, pttl: i64) -> bool {
        match self {
            Self::InFlight {
                deadline_pttl: Some(deadline),
                ..
            } => pttl < 0 || u64::try_from(pttl).is_ok_and(|left| left > *deadline),
            Self::InFlight {
                deadline_pttl: None,
                ..
            } => true,
            Self::Done { .. } | Self::Failed { .. } => false,
        }
    }

    /// The kept bytes of a done record, as they were completed; `None` for
    /// a claim or a failed attempt.
    pub(crate) fn kept(&self) -> Result<Option<Vec<u8>>, UnreadableRecord> {
        match self {
            Self::InFlight { .. } | Self::Failed { .. } => Ok(None),
            Self::Done { record, .. } => STANDARD
                .decode(record)
                .map(Some)
                .map_err(|err| UnreadableRecord(err.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_record_reads_back_byte_for_byte_whatever_the_bytes() {
        let bytes = [0, 159, 146, 150, b'{', b'"', 255];
        let record = Record::done("p1", &bytes);
        let back = Record::decode(&record.encode()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.fingerprint(), "p1");
        assert_eq!(back.kept().unwrap().as_deref(), Some(&bytes[..]));
        let empty = Record::decode(&Record::done("p1", b"").encode()).unwrap();
        assert_eq!(empty.kept().unwrap(), Some(Vec::new()));
    }

    #[test]
    fn claims_read_back_as_in_flight_with_distinct_tokens() {
        let (a, b) = (Record::claim("p1", 60_000), Record::claim("p1", 60_000));
        assert_ne!(a.encode(), b.encode());
        let back = Record::decode(&a.encode()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.kept().unwrap(), None);
        assert!(
            a.encode().ends_with(r#","deadline_pttl":60000}"#),
            "{}",
            a.encode()
        );
    }

    #[test]
    fn a_claim_is_in_flight_while_more_than_its_retention_is_left() {
        let claim = Record::claim("p1", 60_000);
        assert!(claim.in_flight(60_001));
        assert!(!claim.in_flight(60_000));
        assert!(!claim.in_flight(1));
        // A key that lost its expiry never frees itself: it stays a claim.
        assert!(claim.in_flight(-1));
        assert!(!Record::failed("p1").in_flight(90_000));
        assert!(!Record::done("p1", b"").in_flight(90_000));
    }

    #[test]
    fn the_stored_form_is_readable_json() {
        assert_eq!(
            Record::done("p1", b"{}").encode(),
            r#"{"state":"done","fingerprint":"p1","record":"e30="}"#
        );
    }

    #[test]
    fn a_failed_attempt_reads_back_with_its_fingerprint_and_nothing_kept() {
        let record = Record::failed("p1");
        assert_eq!(record.encode(), r#"{"state":"failed","fingerprint":"p1"}"#);
        let back = Record::decode(&record.encode()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.fingerprint(), "p1");
        assert_eq!(back.kept().unwrap(), None);
    }

    #[test]
    fn claims_and_failed_attempts_in_the_shape_before_opaque_records_still_read() {
        let claim = r#"{"state":"in_flight","fingerprint":"p1","token":"0f3c"}"#;
        let back = Record::decode(claim).unwrap();
        assert_eq!(
            back,
            Record::InFlight {
                fingerprint: "p1".to_owned(),
                token: "0f3c".to_owned(),
                deadline_pttl: None,
            }
        );
        // Without a deadline, in flight until the key expires.
        assert!(back.in_flight(1));
        let failed = r#"{"state":"failed","fingerprint":"p1"}"#;
        assert_eq!(Record::decode(failed).unwrap(), Record::failed("p1"));
    }

    #[test]
    fn a_done_record_in_the_shape_before_opaque_records_is_unreadable() {
        let old = r#"{"state":"done","fingerprint":"p1","status":200,"body":"e30="}"#;
        let err = Record::decode(old).unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("record"), "{cause}");
    }

    #[test]
    fn foreign_values_are_unreadable_rather_than_misread() {
        assert!(Record::decode("OK").is_err());
        assert!(
            Record::decode(r#"{"state":"done","fingerprint":"p1","record":"%%"}"#)
                .unwrap()
                .kept()
                .is_err()
        );
    }
}
