//! Pipelines: their ids, their state and what a listing shows of them.

use std::fmt;

use crate::{CustomerId, RunStatus, Timestamp};

/// A pipeline id in its one normal form: a UUID, lower-case, with
/// underscores between its groups (`1b33ad2f_33d3_4837_9eeb_83c82c8b909d`).
///
/// Every response and every message uses this form, whatever form the
/// client sent.
///
/// Held inline, not on the heap: a run carries its pipeline's id, and a
/// run is copied for each change the feed tells and for each page that
/// lists it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipelineId([u8; PipelineId::LEN]);

/// The raw text was not a pipeline id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a pipeline id must be a UUID, hyphenated or underscored")]
pub struct InvalidPipelineId;

impl PipelineId {
    /// Where the separators of a UUID's five groups stand (8-4-4-4-12).
    const SEPARATORS: [usize; 4] = [8, 13, 18, 23];
    const LEN: usize = 36;
    /// Whether a separator stands at each place.
    const IS_SEPARATOR: [bool; Self::LEN] = {
        let mut places = [false; Self::LEN];
        let mut index = 0;
        while index < Self::SEPARATORS.len() {
            places[Self::SEPARATORS[index]] = true;
            index += 1;
        }
        places
    };

    /// Parses a UUID written with hyphens or underscores between its groups,
    /// in any letter case, and normalizes it to lower-case underscored form.
    ///
    /// Each separator may be `-` or `_`, so a mix of the two is accepted, as
    /// the original gateway's replace-and-lower-case normalization did.
    /// Nothing else is: no whitespace, braces, `urn:uuid:` prefix or
    /// unseparated 32-digit form.
    ///
    /// # Errors
    /// [`InvalidPipelineId`] when `raw` is anything else.
    pub fn parse(raw: &str) -> Result<Self, InvalidPipelineId> {
        let raw: &[u8; Self::LEN] = raw.as_bytes().try_into().map_err(|_| InvalidPipelineId)?;
        // Every byte is looked at, with no early return and no branch, so
        // that the compiler checks and lowers sixteen bytes at a time (it
        // is on every request).
        let mut normalized = [0; Self::LEN];
        let mut valid = true;
        for (index, (slot, &byte)) in normalized.iter_mut().zip(raw).enumerate() {
            let lower = byte | 0x20;
            let digit = byte.wrapping_sub(b'0') < 10;
            let letter = lower.wrapping_sub(b'a') < 6;
            let separator = byte == b'-' || byte == b'_';
            let at_separator = Self::IS_SEPARATOR[index];
            valid &= if at_separator {
                separator
            } else {
                digit | letter
            };
            *slot = if at_separator {
                b'_'
            } else if digit {
                byte
            } else {
                lower
            };
        }
        if valid {
            Ok(Self(normalized))
        } else {
            Err(InvalidPipelineId)
        }
    }

    /// The normalized, underscored form.
    pub fn as_str(&self) -> &str {
        // Hexadecimal digits and underscores only, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The normalized form's bytes, for a writer of bytes: the same as
    /// [`PipelineId::as_str`] without checking that they are UTF-8.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// The same UUID in the usual hyphenated form, for backends that want it.
    pub fn to_hyphenated(&self) -> String {
        self.as_str().replace('_', "-")
    }
}

impl fmt::Debug for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PipelineId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PipelineId {
    type Err = InvalidPipelineId;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

/// Whether a pipeline accepts executions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineStatus {
    /// Runs on its schedule and accepts executions.
    Active,
    /// Refuses executions until it is unpaused; running runs still finish.
    Paused,
    /// The backend reports the pipeline broken (for example its definition
    /// does not load). It is not paused, so it can be paused and executed.
    Error,
}

impl PipelineStatus {
    /// The lower-case name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Error => "error",
        }
    }

    /// Whether executions are refused.
    pub fn is_paused(self) -> bool {
        self == Self::Paused
    }
}

impl fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pipeline as its owner sees it.
///
/// Built with [`Pipeline::new`]; the fields are public to read and to
/// change, and more may come (the type is `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Pipeline {
    /// The normalized id.
    pub id: PipelineId,
    /// The customer the pipeline belongs to; nobody else can see it.
    pub customer_id: CustomerId,
    /// A short human name.
    pub name: String,
    /// What the pipeline does.
    pub description: String,
    /// The cron schedule, or `None` for a pipeline that only runs on demand.
    pub cron: Option<String>,
    /// Whether it accepts executions.
    pub status: PipelineStatus,
    /// When the pipeline was created.
    pub created_at: Timestamp,
    /// When the pipeline last changed.
    pub updated_at: Timestamp,
    /// The pipeline's jobs, passed through untouched from the backend.
    pub jobs: Vec<serde_json::Value>,
}

impl Pipeline {
    /// An active pipeline of `customer_id` created at `created_at` and
    /// unchanged since, with no description, schedule or jobs.
    pub fn new(
        id: PipelineId,
        customer_id: CustomerId,
        name: impl Into<String>,
        created_at: Timestamp,
    ) -> Self {
        Self {
            id,
            customer_id,
            name: name.into(),
            description: String::new(),
            cron: None,
            status: PipelineStatus::Active,
            created_at,
            updated_at: created_at,
            jobs: Vec::new(),
        }
    }
}

/// A pipeline as a listing shows it: the pipeline and its newest run's status.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PipelineSummary {
    /// The pipeline itself.
    pub pipeline: Pipeline,
    /// The status of the newest run, or `None` when it never ran.
    pub last_status: Option<RunStatus>,
}

impl PipelineSummary {
    /// `pipeline`, whose newest run is in `last_status` (`None`: it never
    /// ran).
    pub fn new(pipeline: Pipeline, last_status: Option<RunStatus>) -> Self {
        Self {
            pipeline,
            last_status,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CANONICAL: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    #[test]
    fn an_id_reads_as_its_text_in_debug_output_as_it_did_when_held_as_a_string() {
        let id = PipelineId::parse(CANONICAL).unwrap();
        assert_eq!(format!("{id:?}"), format!("PipelineId({CANONICAL:?})"));
        assert_eq!(id.to_string(), CANONICAL);
        assert_eq!(id.as_bytes(), CANONICAL.as_bytes());
        assert_eq!(id.to_hyphenated(), CANONICAL.replace('_', "-"));
    }

    #[test]
    fn the_contract_examples_normalize_to_one_form() {
        for raw in [
            "1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
            "1b33ad2f_33d3_4837_9eeb_83c82c8b909d",
            "1B33AD2F-33D3-4837-9EEB-83C82C8B909D",
            "1b33AD2f_33d3-4837_9EEB-83c82c8b909d",
        ] {
            assert_eq!(PipelineId::parse(raw).unwrap().as_str(), CANONICAL, "{raw}");
        }
    }

    #[test]
    fn near_misses_are_refused() {
        for raw in [
            "",
            " 1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
            "1b33ad2f-33d3-4837-9eeb-83c82c8b909d ",
            "{1b33ad2f-33d3-4837-9eeb-83c82c8b909d}",
            "urn:uuid:1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
            "1b33ad2f33d348379eeb83c82c8b909d",
            "1b33ad2f-33d3-4837-9eeb-83c82c8b909",
            "1b33ad2f-33d3-4837-9eeb-83c82c8b909dd",
            "1b33ad2f-33d3-4837-9eeb-83c82c8b909g",
            "1b33ad2f-33d3-4837-9eeb+83c82c8b909d",
            "1b33ad2f-33d34-837-9eeb-83c82c8b909d",
            "1b33ad2f-33d3-4837-9eeb-83c82c8b90\u{e9}",
        ] {
            assert_eq!(PipelineId::parse(raw), Err(InvalidPipelineId), "{raw:?}");
        }
    }

    /// Every byte at every place of a pipeline id, held to the rule: a
    /// separator's place takes `-` or `_`, every other place a hexadecimal
    /// digit in either case, and nothing else is accepted.
    #[test]
    fn every_byte_at_every_place_is_accepted_only_where_it_belongs() {
        for place in 0..PipelineId::LEN {
            for byte in 0..=u8::MAX {
                let mut raw = CANONICAL.as_bytes().to_vec();
                raw[place] = byte;
                let Ok(raw) = String::from_utf8(raw) else {
                    continue;
                };
                let belongs = if PipelineId::SEPARATORS.contains(&place) {
                    byte == b'-' || byte == b'_'
                } else {
                    byte.is_ascii_hexdigit()
                };
                let parsed = PipelineId::parse(&raw);
                assert_eq!(parsed.is_ok(), belongs, "{byte:#04x} at {place}");
                if let Ok(id) = parsed {
                    let mut expected = CANONICAL.as_bytes().to_vec();
                    expected[place] = if PipelineId::SEPARATORS.contains(&place) {
                        b'_'
                    } else {
                        byte.to_ascii_lowercase()
                    };
                    assert_eq!(id.as_bytes().as_slice(), expected, "{byte:#04x} at {place}");
                }
            }
        }
    }

    #[test]
    fn hyphenated_form_round_trips() {
        let id = PipelineId::parse(CANONICAL).unwrap();
        assert_eq!(id.to_hyphenated(), "1b33ad2f-33d3-4837-9eeb-83c82c8b909d");
        assert_eq!(PipelineId::parse(&id.to_hyphenated()).unwrap(), id);
    }

    /// Any UUID, with each separator drawn from `-` and `_` and each hex
    /// digit in either case.
    fn uuid_spellings() -> impl Strategy<Value = (String, String)> {
        (
            proptest::collection::vec((0u8..16, any::<bool>()), 32),
            proptest::collection::vec(any::<bool>(), 4),
        )
            .prop_map(|(digits, separators)| {
                let mut raw = String::new();
                let mut canonical = String::new();
                let mut separators = separators.into_iter();
                for (index, (digit, upper)) in digits.into_iter().enumerate() {
                    if [8, 12, 16, 20].contains(&index) {
                        let hyphen = separators.next().unwrap();
                        raw.push(if hyphen { '-' } else { '_' });
                        canonical.push('_');
                    }
                    let lower = char::from_digit(u32::from(digit), 16).unwrap();
                    raw.push(if upper {
                        lower.to_ascii_uppercase()
                    } else {
                        lower
                    });
                    canonical.push(lower);
                }
                (raw, canonical)
            })
    }

    proptest! {
        #[test]
        fn every_spelling_of_a_uuid_normalizes_to_lower_underscored((raw, canonical) in uuid_spellings()) {
            let id = PipelineId::parse(&raw).unwrap();
            prop_assert_eq!(id.as_str(), canonical.as_str());
        }

        #[test]
        fn normalization_is_idempotent((raw, _canonical) in uuid_spellings()) {
            let once = PipelineId::parse(&raw).unwrap();
            let twice = PipelineId::parse(once.as_str()).unwrap();
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn any_foreign_character_makes_it_invalid(
            (raw, _canonical) in uuid_spellings(),
            position in 0usize..36,
            foreign in "[^0-9a-fA-F_-]",
        ) {
            let mut chars: Vec<char> = raw.chars().collect();
            chars[position] = foreign.chars().next().unwrap();
            let mutated: String = chars.into_iter().collect();
            prop_assert_eq!(PipelineId::parse(&mutated), Err(InvalidPipelineId));
        }

        #[test]
        fn a_separator_or_a_digit_out_of_its_place_makes_it_invalid(
            (raw, _canonical) in uuid_spellings(),
            position in 0usize..36,
            replacement in "[0-9a-fA-F_-]",
        ) {
            let replacement = replacement.as_bytes()[0];
            let is_separator = replacement == b'-' || replacement == b'_';
            prop_assume!(is_separator != PipelineId::SEPARATORS.contains(&position));
            let mut bytes = raw.into_bytes();
            bytes[position] = replacement;
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(PipelineId::parse(&mutated), Err(InvalidPipelineId));
        }

        #[test]
        fn arbitrary_text_either_fails_or_yields_the_normal_form(raw in ".{0,40}") {
            if let Ok(id) = PipelineId::parse(&raw) {
                prop_assert_eq!(id.as_str().len(), 36);
                prop_assert!(id.as_str().bytes().all(|b| b == b'_' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                prop_assert_eq!(id.as_str(), raw.to_ascii_lowercase().replace('-', "_"));
            }
        }
    }
}
