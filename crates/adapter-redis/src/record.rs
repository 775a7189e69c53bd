//! What one key holds in Redis: a claim in flight, a kept outcome or the
//! note of a failed attempt, as a small JSON document that an operator can
//! read with `redis-cli GET`.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use domain::StoredOutcome;
use serde::{Deserialize, Serialize};

/// The value of one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Record {
    /// A request holds the key. `token` is unique to that request, so that
    /// the exact value proves whose claim it is.
    InFlight { fingerprint: String, token: String },
    /// A request with the key finished with this outcome; `body` is base64.
    Done {
        fingerprint: String,
        status: u16,
        body: String,
    },
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
    /// A new claim for `fingerprint`, with a fresh random token.
    pub(crate) fn claim(fingerprint: &str) -> Self {
        Self::InFlight {
            fingerprint: fingerprint.to_owned(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The outcome kept for `fingerprint`.
    pub(crate) fn done(fingerprint: &str, outcome: &StoredOutcome) -> Self {
        Self::Done {
            fingerprint: fingerprint.to_owned(),
            status: outcome.status,
            body: STANDARD.encode(&outcome.body),
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
        // Serializing plain strings and numbers into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored form back.
    pub(crate) fn decode(text: &str) -> Result<Self, UnreadableRecord> {
        serde_json::from_str(text).map_err(|err| UnreadableRecord(err.into()))
    }

    /// The outcome of a done record; `None` for a claim or a failed
    /// attempt.
    pub(crate) fn outcome(&self) -> Result<Option<StoredOutcome>, UnreadableRecord> {
        match self {
            Self::InFlight { .. } | Self::Failed { .. } => Ok(None),
            Self::Done { status, body, .. } => {
                let body = STANDARD
                    .decode(body)
                    .map_err(|err| UnreadableRecord(err.into()))?;
                Ok(Some(StoredOutcome {
                    status: *status,
                    body,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_record_reads_back_as_its_outcome_whatever_the_bytes() {
        let outcome = StoredOutcome {
            status: 404,
            body: vec![0, 159, 146, 150, b'{', b'"'],
        };
        let record = Record::done("p1", &outcome);
        let back = Record::decode(&record.encode()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.fingerprint(), "p1");
        assert_eq!(back.outcome().unwrap(), Some(outcome));
    }

    #[test]
    fn claims_read_back_as_in_flight_with_distinct_tokens() {
        let (a, b) = (Record::claim("p1"), Record::claim("p1"));
        assert_ne!(a.encode(), b.encode());
        let back = Record::decode(&a.encode()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.outcome().unwrap(), None);
    }

    #[test]
    fn the_stored_form_is_readable_json() {
        let record = Record::done(
            "p1",
            &StoredOutcome {
                status: 200,
                body: b"{}".to_vec(),
            },
        );
        assert_eq!(
            record.encode(),
            r#"{"state":"done","fingerprint":"p1","status":200,"body":"e30="}"#
        );
    }

    #[test]
    fn a_failed_attempt_reads_back_with_its_fingerprint_and_no_outcome() {
        let record = Record::failed("p1");
        assert_eq!(record.encode(), r#"{"state":"failed","fingerprint":"p1"}"#);
        let back = Record::decode(&record.encode()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.fingerprint(), "p1");
        assert_eq!(back.outcome().unwrap(), None);
    }

    #[test]
    fn foreign_values_are_unreadable_rather_than_misread() {
        assert!(Record::decode("OK").is_err());
        assert!(
            Record::decode(r#"{"state":"done","fingerprint":"p1","status":200,"body":"%%"}"#)
                .unwrap()
                .outcome()
                .is_err()
        );
    }
}
