//! The upstream's JSON: the two envelopes and the route's `data`, read into
//! domain types with every id, status and time checked.

use std::fmt;

use chrono::{DateTime, Utc};
use domain::{
    CustomerId, Pipeline, PipelineId, PipelineStatus, PipelineSummary, Run, RunConf, RunId,
    RunStatus, Timestamp,
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
    /// `null`, or what the refusal carries: `{"limit": n}` for
    /// `PipelineQueueFull`, `{"parameter", "reason"}` for `InvalidConf`,
    /// `{"status"}` for `PipelineRunAlreadyFinished`.
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
    /// `PipelineRunAlreadyFinished`.
    RunAlreadyFinished,
    /// `InvalidConf`.
    InvalidConf,
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
            "PipelineRunAlreadyFinished" => Self::RunAlreadyFinished,
            "InvalidConf" => Self::InvalidConf,
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

/// The most characters of an `InvalidConf` reason that reach the caller.
const MAX_REASON_CHARS: usize = 200;

/// The most characters of a parameter name that reach the caller.
const MAX_PARAMETER_CHARS: usize = 100;

/// What the caller is told when an `InvalidConf` gives no usable reason.
const DEFAULT_CONF_REASON: &str = "the pipeline does not accept these parameters";

/// What an `InvalidConf` refusal says, fit for Maestro's caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfRefusal {
    /// The parameter refused, when the upstream names one.
    pub(crate) parameter: Option<String>,
    /// Why, in a few words.
    pub(crate) reason: String,
}

/// The parameter and reason an `InvalidConf` carries in `data`, as the
/// caller may see them: each first passed through `scrub` (which takes out
/// what must never be shown), then made one line of printable text,
/// bounded; the reason a fixed text when the upstream gives none. Nothing
/// else of the refusal (its `traceback`, the rest of `data`) is taken.
pub(crate) fn conf_refusal(data: &Value, scrub: impl Fn(&str) -> String) -> ConfRefusal {
    let text = |field: &str, max_chars: usize| {
        data.get(field)
            .and_then(Value::as_str)
            .map(|raw| one_line(&scrub(raw), max_chars))
            .filter(|text| !text.is_empty())
    };
    ConfRefusal {
        parameter: text("parameter", MAX_PARAMETER_CHARS),
        reason: text("reason", MAX_REASON_CHARS).unwrap_or_else(|| DEFAULT_CONF_REASON.to_owned()),
    }
}

/// The status a `PipelineRunAlreadyFinished` carries in `data.status`:
/// `SUCCESS` or `FAILED`.
pub(crate) fn finished_status(data: &Value) -> Result<RunStatus, Malformed> {
    let raw = data
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| Malformed::field("data.status", "missing or not a string"))?;
    let status = run_status("data.status", raw)?;
    if status.is_finished() {
        Ok(status)
    } else {
        Err(Malformed::field(
            "data.status",
            format_args!("{} is not a finished status", quote(raw)),
        ))
    }
}

/// `raw` as one line: control characters as spaces, runs of whitespace as
/// one space, trimmed, and cut to `max_chars` (with `...` when cut).
fn one_line(raw: &str, max_chars: usize) -> String {
    let words: Vec<&str> = raw
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect();
    let line = words.join(" ");
    match line.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line,
    }
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
    /// Missing from upstreams older than the run parameters.
    #[serde(default)]
    conf: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireTriggered {
    pipeline_id: String,
    run_id: String,
    last_status: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
    #[serde(default)]
    conf: Option<Value>,
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
    run.conf = conf(wire.conf)?;
    Ok(run)
}

/// The `data` of `POST /pipeline/{id}/pipeline_run/{run_id}/cancel`: the
/// run as the cancel left it, which is `FAILED`.
pub(crate) fn cancelled(data: Value) -> Result<Run, Malformed> {
    let run = run(data)?;
    if run.status == RunStatus::Failed {
        Ok(run)
    } else {
        Err(Malformed::field(
            "last_status",
            format_args!("a cancelled run is FAILED, not {}", run.status),
        ))
    }
}

/// The run execute started, and whether the answer said which parameters
/// the upstream recorded for it.
#[derive(Debug)]
pub(crate) struct Triggered {
    /// The run.
    pub(crate) run: Run,
    /// Whether the answer carried `conf`.
    pub(crate) conf_answered: bool,
}

/// The `data` of `POST /pipeline/execute`: the run it started. What the
/// upstream leaves out is filled in as the contract says: `QUEUED`,
/// `received_at` for the times, and no parameters.
pub(crate) fn triggered(data: Value, received_at: Timestamp) -> Result<Triggered, Malformed> {
    let wire: WireTriggered = shape(data)?;
    let conf_answered = wire.conf.as_ref().is_some_and(|conf| !conf.is_null());
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
    run.conf = conf(wire.conf)?;
    Ok(Triggered { run, conf_answered })
}

/// A run's `conf`: an object, taken as the upstream recorded it (without
/// Maestro's reserved key); missing or `null` is no parameters.
fn conf(raw: Option<Value>) -> Result<RunConf, Malformed> {
    match raw {
        None | Some(Value::Null) => Ok(RunConf::default()),
        Some(Value::Object(map)) => Ok(RunConf::from_engine(map)),
        Some(_) => Err(Malformed::field("conf", "not an object")),
    }
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
        let Triggered { run, conf_answered } = triggered(
            json!({"message": "Pipeline execution triggered successfully", "pipeline_id": ID, "run_id": "manual__2024-12-18T10:30:00+00:00"}),
            now,
        )
        .unwrap();
        assert!(!conf_answered);
        assert!(run.conf.is_empty());
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
            "PipelineRunAlreadyFinished",
            "InvalidConf",
        ] {
            assert!(Refused::parse(name).is_some(), "{name}");
        }
        assert_eq!(Refused::parse("pipelinenotfound"), None);
        assert_eq!(Refused::parse("InternalError"), None);
    }

    #[test]
    fn a_runs_conf_is_its_object_without_the_reserved_key_and_missing_or_null_is_empty() {
        let mut json = run_json();
        assert!(run(json.clone()).unwrap().conf.is_empty());
        json["conf"] = Value::Null;
        assert!(run(json.clone()).unwrap().conf.is_empty());
        json["conf"] = json!({"date": "2024-12-18", "maestro": {"key": "k"}});
        assert_eq!(
            Value::Object(run(json.clone()).unwrap().conf.into_map()),
            json!({"date": "2024-12-18"})
        );
        json["conf"] = json!(["date"]);
        let why = run(json).unwrap_err().to_string();
        assert_eq!(why, "field `conf`: not an object");
    }

    #[test]
    fn a_trigger_answer_that_names_its_conf_says_so() {
        let now = Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 1).unwrap();
        let answer = |conf: Value| {
            triggered(json!({"pipeline_id": ID, "run_id": "r", "conf": conf}), now).unwrap()
        };
        let echoed = answer(json!({"full_refresh": true}));
        assert!(echoed.conf_answered);
        assert_eq!(echoed.run.conf.as_map()["full_refresh"], json!(true));
        assert!(answer(json!({})).conf_answered);
        assert!(!answer(Value::Null).conf_answered);
    }

    #[test]
    fn only_a_failed_run_is_a_cancelled_one() {
        let mut json = run_json();
        json["last_status"] = json!("FAILED");
        assert_eq!(cancelled(json.clone()).unwrap().status, RunStatus::Failed);
        json["last_status"] = json!("RUNNING");
        let why = cancelled(json).unwrap_err().to_string();
        assert!(why.starts_with("field `last_status`"), "{why}");
    }

    #[test]
    fn an_already_finished_refusal_carries_a_finished_status() {
        assert_eq!(
            finished_status(&json!({"status": "SUCCESS"})).unwrap(),
            RunStatus::Success
        );
        assert_eq!(
            finished_status(&json!({"status": "failed"})).unwrap(),
            RunStatus::Failed
        );
        for data in [
            Value::Null,
            json!({}),
            json!({"status": 1}),
            json!({"status": "RUNNING"}),
            json!({"status": "DONE"}),
        ] {
            let why = finished_status(&data).unwrap_err().to_string();
            assert!(why.starts_with("field `data.status`"), "{data}: {why}");
        }
    }

    fn conf_refusal_of(data: &Value) -> ConfRefusal {
        conf_refusal(data, str::to_owned)
    }

    #[test]
    fn a_conf_refusal_is_scrubbed_before_it_is_cut() {
        let token = "t0ken";
        let reason = format!("{}{token}", "r".repeat(MAX_REASON_CHARS - 2));
        let refused = conf_refusal(&json!({"reason": reason}), |raw| {
            raw.replace(token, "[redacted]")
        });
        assert_eq!(
            refused.reason,
            format!("{}[r...", "r".repeat(MAX_REASON_CHARS - 2))
        );
    }

    #[test]
    fn a_conf_refusal_gives_the_caller_one_bounded_line_of_each_field_and_nothing_else() {
        assert_eq!(
            conf_refusal_of(&json!({"parameter": "date", "reason": "must be a date", "sql": "x"})),
            ConfRefusal {
                parameter: Some("date".to_owned()),
                reason: "must be a date".to_owned()
            }
        );
        let forged = conf_refusal_of(&json!({
            "parameter": "da\nte",
            "reason": "  bad\r\nERROR forged line\u{1b}[31m  ",
        }));
        assert_eq!(forged.parameter.as_deref(), Some("da te"));
        assert_eq!(forged.reason, "bad ERROR forged line [31m");
        let long =
            conf_refusal_of(&json!({"parameter": "p".repeat(500), "reason": "r".repeat(5000)}));
        assert_eq!(
            long.parameter.unwrap(),
            format!("{}...", "p".repeat(MAX_PARAMETER_CHARS))
        );
        assert_eq!(long.reason, format!("{}...", "r".repeat(MAX_REASON_CHARS)));
        for data in [
            Value::Null,
            json!({"parameter": 3, "reason": {"text": "no"}}),
            json!({"parameter": " ", "reason": "\n"}),
            json!("the raw body"),
        ] {
            assert_eq!(
                conf_refusal_of(&data),
                ConfRefusal {
                    parameter: None,
                    reason: DEFAULT_CONF_REASON.to_owned()
                },
                "{data}"
            );
        }
    }
}
