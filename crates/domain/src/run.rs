//! Runs of a pipeline: their ids, statuses and how a listing of them is
//! paged.

use std::{fmt, sync::Arc};

use chrono::{DateTime, Datelike as _, SecondsFormat, TimeDelta, Timelike as _, Utc};

use crate::{PipelineId, RunConf};

/// An instant, in UTC.
pub type Timestamp = DateTime<Utc>;

/// Formats an instant the way every response does: RFC 3339, UTC written as
/// `+00:00`, with microseconds (`2024-12-18T10:30:00.000000+00:00`).
pub fn format_timestamp(at: &Timestamp) -> String {
    match timestamp_text(at) {
        Some(text) => text.as_str().to_owned(),
        None => at.to_rfc3339_opts(SecondsFormat::Micros, false),
    }
}

/// The text [`format_timestamp`] writes, made on the stack: the digits
/// put into a copy of `0000-00-00T00:00:00.000000+00:00`. `None` for a
/// year outside 0 to 9999 or a leap second, which only chrono writes.
///
/// ```
/// use domain::{format_timestamp, timestamp_text};
///
/// let at = "2024-12-18T10:30:00.123456789Z".parse().unwrap();
/// let text = timestamp_text(&at).unwrap();
/// assert_eq!(text.as_str(), "2024-12-18T10:30:00.123456+00:00");
/// assert_eq!(text.as_str(), format_timestamp(&at));
/// ```
pub fn timestamp_text(at: &Timestamp) -> Option<TimestampText> {
    let (date, time) = (at.date_naive(), at.time());
    let year = u32::try_from(date.year())
        .ok()
        .filter(|year| *year <= 9999)?;
    if time.nanosecond() >= 1_000_000_000 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00.000000+00:00";
    let micros = time.nanosecond() / 1_000;
    for (at, pair) in [
        (0, year / 100),
        (2, year % 100),
        (5, date.month()),
        (8, date.day()),
        (11, time.hour()),
        (14, time.minute()),
        (17, time.second()),
        (20, micros / 10_000),
        (22, micros / 100 % 100),
        (24, micros % 100),
    ] {
        text[at..at + 2].copy_from_slice(two_digits(pair));
    }
    Some(TimestampText(text))
}

/// An instant as [`format_timestamp`] writes it, without an allocation
/// ([`timestamp_text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampText([u8; 32]);

impl TimestampText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // ASCII digits and punctuation only, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The text's bytes, for a writer of bytes: the same as
    /// [`TimestampText::as_str`] without checking that they are UTF-8.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// `value`'s two decimal digits, 0 to 99, from a table of them: a page of
/// runs writes twenty of these per run.
fn two_digits(value: u32) -> &'static [u8] {
    const PAIRS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let at = value as usize % 100 * 2;
    &PAIRS[at..at + 2]
}

/// The id of one run of a pipeline, as execute returned it
/// (`manual__2024-12-18T10:30:00.000000+00:00` for runs Maestro triggers).
///
/// Shared, not copied, when a run is: a run is copied for each change the
/// feed tells and for each page that lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Arc<str>);

/// The text cannot be a run id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run id must be 1 to 250 bytes with no control characters")]
pub struct InvalidRunId;

impl RunId {
    /// The longest run id accepted: 250 bytes, what every engine Maestro
    /// fronts can hold.
    const MAX_LEN: usize = 250;

    /// Accepts any id a backend may have made: 1 to 250 bytes without
    /// control characters.
    ///
    /// # Errors
    /// [`InvalidRunId`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, InvalidRunId> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.chars().any(char::is_control) {
            return Err(InvalidRunId);
        }
        Ok(Self(raw.into()))
    }

    /// The id of a run triggered on demand at `at`: `manual__` and the
    /// instant in RFC 3339 with microseconds, ending in `+00:00`.
    pub fn manual(at: &Timestamp) -> Self {
        const PREFIX: &str = "manual__";
        match timestamp_text(at) {
            Some(text) => {
                let mut id = [0; PREFIX.len() + 32];
                id[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
                id[PREFIX.len()..].copy_from_slice(text.as_bytes());
                // The prefix and an instant's ASCII text, so always UTF-8.
                Self(std::str::from_utf8(&id).unwrap_or_default().into())
            }
            None => Self(format!("{PREFIX}{}", format_timestamp(at)).into()),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the id is `.` or `..`: valid text, but no run's id on any
    /// backend, and one that a backend addressed by path would read as
    /// another address.
    pub fn is_dot_segment(&self) -> bool {
        matches!(&*self.0, "." | "..")
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hands out the instants of a pipeline's manual runs so that their ids are
/// unique and increasing, even for triggers in the same microsecond.
///
/// Keep one per pipeline; each [`ManualRunClock::next`] is at least one
/// microsecond after the previous one.
#[derive(Debug, Clone, Default)]
pub struct ManualRunClock {
    last: Option<Timestamp>,
}

impl ManualRunClock {
    /// The instant and id for a run triggered at `now`: `now` truncated to
    /// the microsecond, or one microsecond after the previous run when the
    /// clock has not moved on (or went back).
    pub fn next(&mut self, now: Timestamp) -> (Timestamp, RunId) {
        let now = truncate_to_micros(now);
        let at = match self.last {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.last = Some(at);
        (at, RunId::manual(&at))
    }
}

/// `at` without its nanoseconds past the microsecond: the time of day
/// changed alone, without the date arithmetic of a round trip through
/// microseconds since the epoch.
fn truncate_to_micros(at: Timestamp) -> Timestamp {
    let nanos = at.nanosecond() / 1_000 * 1_000;
    at.naive_utc()
        .with_nanosecond(nanos)
        .map_or(at, |naive| naive.and_utc())
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Waiting for the pipeline's earlier runs to finish.
    Queued,
    /// Executing now; a pipeline has at most one at a time.
    Running,
    /// Finished without error.
    Success,
    /// Finished with an error; the run's trace says which.
    Failed,
}

/// The text is not a run status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run status is one of QUEUED, RUNNING, SUCCESS, FAILED")]
pub struct InvalidRunStatus;

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 4] = [Self::Queued, Self::Running, Self::Success, Self::Failed];

    /// The upper-case name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
        }
    }

    /// Parses a status name in any letter case.
    ///
    /// # Errors
    /// [`InvalidRunStatus`] for any other text.
    pub fn parse(raw: &str) -> Result<Self, InvalidRunStatus> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(raw))
            .ok_or(InvalidRunStatus)
    }

    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Success | Self::Failed)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a pipeline.
///
/// Built with [`Run::new`]; the fields are public to read and to change, and
/// more may come (the type is `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Run {
    /// The id execute returned.
    pub id: RunId,
    /// The pipeline it is a run of.
    pub pipeline_id: PipelineId,
    /// Where it is in its life.
    pub status: RunStatus,
    /// When it was triggered.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// The error text of a failed run.
    pub trace: Option<String>,
    /// The parameters it was triggered with (empty when none were given).
    pub conf: RunConf,
}

impl Run {
    /// The trace of a run cancelled through Maestro.
    pub const CANCELLED_TRACE: &'static str = "Cancelled through the API";

    /// A run of `pipeline_id` made at `created_at`, in `status` since then,
    /// without a trace or parameters.
    pub fn new(
        id: RunId,
        pipeline_id: PipelineId,
        status: RunStatus,
        created_at: Timestamp,
    ) -> Self {
        Self {
            id,
            pipeline_id,
            status,
            created_at,
            updated_at: created_at,
            trace: None,
            conf: RunConf::default(),
        }
    }
}

/// Which runs of a pipeline to list: newest first, `offset` skipped, at most
/// `limit`, optionally only those with one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunQuery {
    limit: u32,
    offset: u64,
    status: Option<RunStatus>,
}

/// The paging parameters are out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRunQuery {
    /// The page size is 0 or over [`RunQuery::MAX_LIMIT`].
    #[error("a page holds 1 to {max} runs", max = RunQuery::MAX_LIMIT)]
    Limit,
    /// The offset is over [`RunQuery::MAX_OFFSET`].
    #[error("an offset is at most {max}", max = RunQuery::MAX_OFFSET)]
    Offset,
}

impl RunQuery {
    /// The page size when none is asked for.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;
    /// The largest offset: 2³¹ − 1, which every engine's query language
    /// takes, so that a large offset is a refusal here or an empty page
    /// there, never an engine's error.
    pub const MAX_OFFSET: u64 = 2_147_483_647;

    /// A query with the given paging; `None` takes the defaults (100 runs
    /// from the newest).
    ///
    /// # Errors
    /// [`InvalidRunQuery::Limit`] when `limit` is 0 or over 1000;
    /// [`InvalidRunQuery::Offset`] when `offset` is over
    /// [`RunQuery::MAX_OFFSET`].
    pub fn new(
        limit: Option<u32>,
        offset: Option<u64>,
        status: Option<RunStatus>,
    ) -> Result<Self, InvalidRunQuery> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(InvalidRunQuery::Limit);
        }
        let offset = offset.unwrap_or(0);
        if offset > Self::MAX_OFFSET {
            return Err(InvalidRunQuery::Offset);
        }
        Ok(Self {
            limit,
            offset,
            status,
        })
    }

    /// The most runs to return.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// How many matching runs, newest first, to skip.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The only status to return, if any.
    pub fn status(&self) -> Option<RunStatus> {
        self.status
    }
}

impl Default for RunQuery {
    fn default() -> Self {
        Self {
            limit: Self::DEFAULT_LIMIT,
            offset: 0,
            status: None,
        }
    }
}

/// One page of a pipeline's runs.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct RunPage {
    /// The runs on this page, newest first.
    pub runs: Vec<Run>,
    /// How many runs match the query in all pages.
    pub total: u64,
}

impl RunPage {
    /// A page of `runs`, newest first, out of `total` matching runs.
    pub fn new(runs: Vec<Run>, total: u64) -> Self {
        Self { runs, total }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(micros: i64) -> Timestamp {
        Utc.timestamp_micros(1_734_517_800_000_000 + micros)
            .unwrap()
    }

    /// What chrono writes of `at`, the reference of [`format_timestamp`].
    fn chrono(at: &Timestamp) -> String {
        at.to_rfc3339_opts(SecondsFormat::Micros, false)
    }

    #[test]
    fn instants_are_written_as_chrono_writes_them_across_days_years_and_nanoseconds() {
        let start = Utc.with_ymd_and_hms(2024, 2, 28, 0, 0, 0).unwrap();
        let day_and_a_half = (0..86_400 * 3 / 2).step_by(7).map(|second| {
            start
                + TimeDelta::seconds(second)
                + TimeDelta::nanoseconds(second * 13_579 % 1_000_000_000)
        });
        let edges = [
            (0, 1, 1),
            (1, 1, 1),
            (999, 12, 31),
            (1000, 1, 1),
            (1970, 1, 1),
            (9999, 12, 31),
        ]
        .into_iter()
        .map(|(year, month, day)| {
            Utc.with_ymd_and_hms(year, month, day, 23, 59, 59).unwrap()
                + TimeDelta::nanoseconds(999_999_999)
        });
        for at in day_and_a_half.chain(edges) {
            assert_eq!(format_timestamp(&at), chrono(&at));
            assert_eq!(timestamp_text(&at).unwrap().as_str(), chrono(&at));
            assert_eq!(
                RunId::manual(&at).as_str(),
                format!("manual__{}", chrono(&at))
            );
        }
    }

    #[test]
    fn years_past_four_digits_and_leap_seconds_are_left_to_chrono() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 1_500_000)
            .unwrap()
            .and_utc();
        let far = Utc.with_ymd_and_hms(12_345, 1, 2, 3, 4, 5).unwrap();
        let before = Utc.with_ymd_and_hms(-1, 1, 2, 3, 4, 5).unwrap();
        for at in [leap, far, before] {
            assert_eq!(timestamp_text(&at), None);
            assert_eq!(format_timestamp(&at), chrono(&at));
            assert_eq!(
                RunId::manual(&at).as_str(),
                format!("manual__{}", chrono(&at))
            );
        }
    }

    #[test]
    fn manual_run_ids_have_the_contract_shape() {
        assert_eq!(
            RunId::manual(&at(0)).as_str(),
            "manual__2024-12-18T10:30:00.000000+00:00"
        );
    }

    #[test]
    fn triggers_in_the_same_microsecond_get_distinct_increasing_ids() {
        let mut clock = ManualRunClock::default();
        let ids: Vec<RunId> = (0..3).map(|_| clock.next(at(5)).1).collect();
        assert_eq!(ids[0].as_str(), "manual__2024-12-18T10:30:00.000005+00:00");
        assert_eq!(ids[1].as_str(), "manual__2024-12-18T10:30:00.000006+00:00");
        assert_eq!(ids[2].as_str(), "manual__2024-12-18T10:30:00.000007+00:00");
    }

    #[test]
    fn a_clock_going_back_never_repeats_an_id() {
        let mut clock = ManualRunClock::default();
        let (first, _) = clock.next(at(100));
        let (second, _) = clock.next(at(50));
        assert!(second > first);
    }

    #[test]
    fn nanoseconds_are_truncated_so_the_id_matches_the_instant() {
        let mut clock = ManualRunClock::default();
        let now = at(7) + TimeDelta::nanoseconds(999);
        let (instant, id) = clock.next(now);
        assert_eq!(instant, at(7));
        assert_eq!(id, RunId::manual(&at(7)));
    }

    proptest::proptest! {
        /// Truncating the time of day alone gives what a round trip
        /// through microseconds since the epoch gave, over the years 0 to
        /// 9999 and every nanosecond.
        #[test]
        fn truncation_is_the_round_trip_through_microseconds(
            seconds in -62_167_219_200i64..253_402_300_800,
            nanos in 0u32..1_000_000_000,
        ) {
            let at = DateTime::from_timestamp(seconds, nanos).unwrap();
            let round_trip = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap();
            proptest::prop_assert_eq!(truncate_to_micros(at), round_trip);
        }
    }

    #[test]
    fn statuses_parse_in_any_case() {
        assert_eq!(RunStatus::parse("success"), Ok(RunStatus::Success));
        assert_eq!(RunStatus::parse("Running"), Ok(RunStatus::Running));
        assert_eq!(RunStatus::parse("done"), Err(InvalidRunStatus));
    }

    #[test]
    fn run_queries_default_and_bound_the_limit() {
        assert_eq!(
            RunQuery::new(None, None, None).unwrap(),
            RunQuery::default()
        );
        assert_eq!(
            RunQuery::new(Some(1000), Some(5), None).unwrap().limit(),
            1000
        );
        assert_eq!(
            RunQuery::new(Some(0), None, None),
            Err(InvalidRunQuery::Limit)
        );
        assert_eq!(
            RunQuery::new(Some(1001), None, None),
            Err(InvalidRunQuery::Limit)
        );
    }

    #[test]
    fn run_queries_bound_the_offset() {
        let max = RunQuery::MAX_OFFSET;
        assert_eq!(RunQuery::new(None, Some(max), None).unwrap().offset(), max);
        assert_eq!(
            RunQuery::new(None, Some(max + 1), None),
            Err(InvalidRunQuery::Offset)
        );
        assert_eq!(
            RunQuery::new(None, Some(u64::MAX), None),
            Err(InvalidRunQuery::Offset)
        );
    }

    #[test]
    fn only_dot_and_dot_dot_are_dot_segments() {
        for raw in [".", ".."] {
            assert!(RunId::parse(raw).unwrap().is_dot_segment(), "{raw}");
        }
        for raw in ["...", "./", ".a", "manual__2024-12-18T10:30:00+00:00"] {
            assert!(!RunId::parse(raw).unwrap().is_dot_segment(), "{raw}");
        }
    }

    #[test]
    fn run_ids_refuse_empty_overlong_and_control_text() {
        assert!(RunId::parse("manual__2024-12-18T10:30:00+00:00").is_ok());
        assert_eq!(RunId::parse(""), Err(InvalidRunId));
        assert_eq!(RunId::parse(&"r".repeat(251)), Err(InvalidRunId));
        assert_eq!(RunId::parse("a\u{0}b"), Err(InvalidRunId));
    }
}
