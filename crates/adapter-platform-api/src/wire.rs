//! The upstream's JSON: the two envelopes and the route's `data`, read into
//! domain types with every id, status and time checked.

use std::fmt;

use chrono::{DateTime, Utc};
use domain::{
    CustomerId, Pipeline, PipelineId, PipelineStatus, PipelineSummary, Run, RunId, RunStatus,
    Timestamp,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `{"status": true, "data": ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct SuccessEnvelope {
    /// `true` on success.
    pub(crate) status: bool,
    /// The route's answer; pause and unpause do not read it.
    #[serde(default)]
    pub(crate) data: Value,
}

/// `{"detail": {"status": false, "exception_type", "traceback", "data"}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    /// The refusal itself.
    pub(crate) detail: ErrorDetail,
}

/// The inside of the error envelope; only `exception_type` decides anything.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorDetail {
    /// What the refusal is.
    pub(crate) exception_type: String,
    /// The human message, for the log.
    #[serde(default)]
    pub(crate) traceback: Value,
    /// `null`, or `{"limit": n}` for `PipelineQueueFull`.
    #[serde(default)]
    pub(crate) data: Value,
}

/// Why a route's `data` is not what the contract says. The text is for the
/// log and quotes only short pieces of the answer.
#[derive(Debug)]
pub(crate) struct Malformed(String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Malformed {
    /// The longest message kept: serde quotes whole values, which an
    /// upstream can make as long as it likes.
    const MAX_CHARS: usize = 300;

    fn new(why: impl fmt::Display) -> Self {
        let why = why.to_string();
        match why.char_indices().nth(Self::MAX_CHARS) {
            Some((end, _)) => Self(format!("{}...", &why[..end])),
            None => Self(why),
        }
    }

    fn field(name: &str, why: impl fmt::Display) -> Self {
        Self::new(format_args!("field `{name}`: {why}"))
    }

    /// A header of the answer is missing or wrong.
    pub(crate) fn header(name: &str, why: impl fmt::Display) -> Self {
        Self::new(format_args!("header `{name}`: {why}"))
    }

    fn item(index: usize, inner: Self) -> Self {
        Self(format!("item {index}: {}", inner.0))
    }
}

/// The refusals the contract names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `PipelineNotFound`.
    NotFound,
    /// `PipelinePaused`.
    Paused,
    /// `PipelineQueueFull`.
    QueueFull,
    /// `PipelineAlreadyPaused`.
    AlreadyPaused,
    /// `PipelineNotPaused`.
    NotPaused,
    /// `PipelineRunNotFound`.
    RunNotFound,
}

impl Refused {
    /// The refusal an `exception_type` names, if the contract knows it.
    pub(crate) fn parse(exception_type: &str) -> Option<Self> {
        Some(match exception_type {
            "PipelineNotFound" => Self::NotFound,
            "PipelinePaused" => Self::Paused,
            "PipelineQueueFull" => Self::QueueFull,
            "PipelineAlreadyPaused" => Self::AlreadyPaused,
            "PipelineNotPaused" => Self::NotPaused,
            "PipelineRunNotFound" => Self::RunNotFound,
            _ => return None,
        })
    }
}

/// The queue bound a `PipelineQueueFull` carries in `data.limit`; 0 when the
/// upstream did not say.
pub(crate) fn queue_limit(data: &Value) -> usize {
    data.get("limit")
        .and_then(Value::as_u64)
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(0)
}

/// What a pipeline and a pipeline summary share.
#[derive(Debug, Deserialize)]
struct WirePipelineFields {
    customer_id: String,
    name: String,
    description: Option<String>,
    cron: Option<String>,
    status: String,
    created_at: String,
    updated_at: String,
    jobs: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct WirePipeline {
    id: String,
    #[serde(flatten)]
    fields: WirePipelineFields,
}

#[derive(Debug, Deserialize)]
struct WireSummary {
    pipeline_id: String,
    last_status: Option<String>,
    #[serde(flatten)]
    fields: WirePipelineFields,
}

#[derive(Debug, Deserialize)]
struct WireRun {
    pipeline_run_id: String,
    pipeline_id: String,
    last_status: String,
    created_at: String,
    updated_at: String,
    trace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireTriggered {
    pipeline_id: String,
    run_id: String,
    last_status: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

impl WirePipelineFields {
    /// The pipeline `id` these fields describe.
    fn into_pipeline(self, id: PipelineId) -> Result<Pipeline, Malformed> {
        let mut pipeline = Pipeline::new(
            id,
            customer_id(&self.customer_id)?,
            self.name,
            timestamp("created_at", &self.created_at)?,
        );
        pipeline.description = self.description.unwrap_or_default();
        pipeline.cron = self.cron;
        pipeline.status = pipeline_status(&self.status)?;
        pipeline.updated_at = timestamp("updated_at", &self.updated_at)?;
        pipeline.jobs = self.jobs.unwrap_or_default();
        Ok(pipeline)
    }
}

/// The `data` of `GET /pipeline/{id}`.
pub(crate) fn pipeline(data: Value) -> Result<Pipeline, Malformed> {
    let wire: WirePipeline = shape(data)?;
    let id = pipeline_id("id", &wire.id)?;
    wire.fields.into_pipeline(id)
}

/// The `data` of `GET /pipelines`.
pub(crate) fn summaries(data: Value) -> Result<Vec<PipelineSummary>, Malformed> {
    items(data, summary)
}

fn summary(item: Value) -> Result<PipelineSummary, Malformed> {
    let wire: WireSummary = shape(item)?;
    let id = pipeline_id("pipeline_id", &wire.pipeline_id)?;
    let pipeline = wire.fields.into_pipeline(id)?;
    let last_status = wire
        .last_status
        .map(|status| run_status("last_status", &status))
        .transpose()?;
    Ok(PipelineSummary::new(pipeline, last_status))
}

/// The `data` of `GET /pipeline/{id}/pipeline_run`.
pub(crate) fn runs(data: Value) -> Result<Vec<Run>, Malformed> {
    items(data, run)
}

/// The `data` of `GET /pipeline/{id}/pipeline_run/{run_id}`.
pub(crate) fn run(data: Value) -> Result<Run, Malformed> {
    let wire: WireRun = shape(data)?;
    let mut run = Run::new(
        run_id("pipeline_run_id", &wire.pipeline_run_id)?,
        pipeline_id("pipeline_id", &wire.pipeline_id)?,
        run_status("last_status", &wire.last_status)?,
        timestamp("created_at", &wire.created_at)?,
    );
    run.updated_at = timestamp("updated_at", &wire.updated_at)?;
    run.trace = wire.trace;
    Ok(run)
}

/// The `data` of `POST /pipeline/execute`: the run it started. What the
/// upstream leaves out is filled in as the contract says: `QUEUED`, and
/// `received_at` for the times.
pub(crate) fn triggered(data: Value, received_at: Timestamp) -> Result<Run, Malformed> {
    let wire: WireTriggered = shape(data)?;
    let created_at = wire
        .created_at
        .map(|at| timestamp("created_at", &at))
        .transpose()?
        .unwrap_or(received_at);
    let mut run = Run::new(
        run_id("run_id", &wire.run_id)?,
        pipeline_id("pipeline_id", &wire.pipeline_id)?,
        wire.last_status
            .map(|status| run_status("last_status", &status))
            .transpose()?
            .unwrap_or(RunStatus::Queued),
        created_at,
    );
    if let Some(at) = wire.updated_at {
        run.updated_at = timestamp("updated_at", &at)?;
    }
    Ok(run)
}

/// A list's `data`, each item read with `read`; a bad item is named by its
/// index.
fn items<T>(data: Value, read: fn(Value) -> Result<T, Malformed>) -> Result<Vec<T>, Malformed> {
    let items: Vec<Value> = shape(data)?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| read(item).map_err(|why| Malformed::item(index, why)))
        .collect()
}

/// Reads `data` into a wire struct; serde's message names the missing or
/// mistyped field.
fn shape<T: DeserializeOwned>(data: Value) -> Result<T, Malformed> {
    serde_json::from_value(data).map_err(Malformed::new)
}

fn pipeline_id(field: &str, raw: &str) -> Result<PipelineId, Malformed> {
    PipelineId::parse(raw)
        .map_err(|_| Malformed::field(field, format_args!("{} is not a pipeline id", quote(raw))))
}

fn customer_id(raw: &str) -> Result<CustomerId, Malformed> {
    CustomerId::parse(raw).map_err(|err| Malformed::field("customer_id", err))
}

fn run_id(field: &str, raw: &str) -> Result<RunId, Malformed> {
    RunId::parse(raw).map_err(|err| Malformed::field(field, err))
}

fn pipeline_status(raw: &str) -> Result<PipelineStatus, Malformed> {
    [
        PipelineStatus::Active,
        PipelineStatus::Paused,
        PipelineStatus::Error,
    ]
    .into_iter()
    .find(|status| status.as_str().eq_ignore_ascii_case(raw))
    .ok_or_else(|| {
        Malformed::field(
            "status",
            format_args!("{} is not active, paused or error", quote(raw)),
        )
    })
}

fn run_status(field: &str, raw: &str) -> Result<RunStatus, Malformed> {
    RunStatus::parse(raw).map_err(|err| Malformed::field(field, err))
}

/// An RFC 3339 time with an offset, in UTC. A time without an offset names
/// no instant, so it is refused rather than guessed to be UTC.
fn timestamp(field: &str, raw: &str) -> Result<Timestamp, Malformed> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            Malformed::field(
                field,
                format_args!("{} is not an RFC 3339 time with an offset", quote(raw)),
            )
        })
}

/// A short, quoted piece of upstream text.
fn quote(raw: &str) -> String {
    const MAX_CHARS: usize = 80;
    let short: String = raw.chars().take(MAX_CHARS).collect();
    if raw.chars().nth(MAX_CHARS).is_some() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    const ID: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    fn run_json() -> Value {
        json!({
            "pipeline_run_id": "manual__2024-12-18T10:30:00+00:00",
            "pipeline_id": ID,
            "last_status": "SUCCESS",
            "created_at": "2024-12-18T10:30:00+00:00",
            "updated_at": "2024-12-18T11:30:00+01:00",
            "trace": null
        })
    }

    #[test]
    fn times_with_any_offset_are_read_as_utc_instants() {
        let run = run(run_json()).unwrap();
        assert_eq!(
            run.created_at,
            Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap()
        );
        assert_eq!(run.updated_at, run.created_at);
        assert_eq!(
            timestamp("at", "2024-12-18T10:30:00Z").unwrap(),
            run.created_at
        );
    }

    #[test]
    fn a_time_without_an_offset_is_malformed() {
        let mut json = run_json();
        json["created_at"] = json!("2024-12-18T10:30:00");
        let why = run(json).unwrap_err().to_string();
        assert!(why.contains("created_at"), "{why}");
    }

    #[test]
    fn statuses_are_read_in_any_letter_case() {
        let mut json = run_json();
        json["last_status"] = json!("running");
        assert_eq!(run(json).unwrap().status, RunStatus::Running);
        assert_eq!(pipeline_status("PAUSED").unwrap(), PipelineStatus::Paused);
        assert!(pipeline_status("stopped").is_err());
    }

    #[test]
    fn hyphenated_pipeline_ids_in_answers_are_normalized() {
        let mut json = run_json();
        json["pipeline_id"] = json!("1B33AD2F-33D3-4837-9EEB-83C82C8B909D");
        assert_eq!(run(json).unwrap().pipeline_id.as_str(), ID);
    }

    #[test]
    fn a_bad_item_in_a_list_is_named_by_its_index() {
        let mut bad = run_json();
        bad["last_status"] = json!("DONE");
        let why = runs(json!([run_json(), bad])).unwrap_err().to_string();
        assert!(why.starts_with("item 1: field `last_status`"), "{why}");
    }

    #[test]
    fn a_trigger_answer_with_only_the_public_fields_is_a_queued_run_received_now() {
        let now = Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 1).unwrap();
        let run = triggered(
            json!({"message": "Pipeline execution triggered successfully", "pipeline_id": ID, "run_id": "manual__2024-12-18T10:30:00+00:00"}),
            now,
        )
        .unwrap();
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!((run.created_at, run.updated_at), (now, now));
        assert_eq!(run.id.as_str(), "manual__2024-12-18T10:30:00+00:00");
    }

    #[test]
    fn the_queue_limit_is_read_from_data_or_is_zero() {
        assert_eq!(queue_limit(&json!({"limit": 1000})), 1000);
        assert_eq!(queue_limit(&Value::Null), 0);
        assert_eq!(queue_limit(&json!({"limit": "many"})), 0);
    }

    #[test]
    fn long_upstream_text_is_quoted_short() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert!(quote(&"x".repeat(500)).len() < 100);
        // serde quotes the whole string it did not expect.
        let why = run(json!("y".repeat(10_000))).unwrap_err().to_string();
        assert!(why.starts_with("invalid type: string"), "{why}");
        assert_eq!(why.chars().count(), Malformed::MAX_CHARS + 3);
    }

    #[test]
    fn every_contract_exception_type_is_known_and_others_are_not() {
        for name in [
            "PipelineNotFound",
            "PipelinePaused",
            "PipelineQueueFull",
            "PipelineAlreadyPaused",
            "PipelineNotPaused",
            "PipelineRunNotFound",
        ] {
            assert!(Refused::parse(name).is_some(), "{name}");
        }
        assert_eq!(Refused::parse("pipelinenotfound"), None);
        assert_eq!(Refused::parse("InternalError"), None);
    }
}
