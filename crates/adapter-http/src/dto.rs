//! The JSON bodies of successful answers, field for field as the contract
//! has them, and how the request's parameters are documented.

use std::fmt;

use domain::{
    InvalidConf, Pipeline, PipelineStatus, PipelineSummary, Run, RunConf, RunConfSeed, RunQuery,
    RunStatus, format_timestamp,
};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Value, value::RawValue};
use utoipa::{
    IntoParams, ToSchema,
    openapi::{
        KnownFormat, Object, ObjectBuilder, Required, SchemaFormat, Type,
        path::{Parameter, ParameterBuilder, ParameterIn},
    },
};

/// A pipeline id as clients send it: a UUID, hyphenated or underscored (the
/// two may be mixed), in any letter case; `domain::PipelineId::parse`
/// accepts exactly these.
pub(crate) const PIPELINE_ID_PATTERN: &str =
    "^[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}$";

/// A pipeline id as the service answers it: normalized, lower-case and
/// underscored.
pub(crate) const NORMALIZED_PIPELINE_ID_PATTERN: &str =
    "^[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}$";

/// A run id: `domain::RunId::parse` takes 1 to 250 bytes without control
/// characters. A pattern counts characters, not bytes, so it says what is
/// surely taken: up to 250 printable ASCII characters (every backend's run
/// ids, `manual__2024-12-18T10:30:00.000000+00:00` among them), or up to
/// 62 of any other characters but controls (62 four-byte characters fit
/// in 250 bytes). A longer non-ASCII id within 250 bytes is taken too, and
/// answered 404 like any run that does not exist.
pub(crate) const RUN_ID_PATTERN: &str = r"^(?:[\x20-\x7e]{1,250}|[^\x00-\x1f\x7f-\x9f]{1,62})$";

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters, as
/// `domain::IdempotencyKey::parse` takes them.
pub(crate) const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\x21-\x7e]{1,255}$";

/// The pipeline the examples name: `orders-etl`, an active pipeline of the
/// embedded default's demo customer, so that "Try it out" on `/docs` works
/// against `maestro serve` as it starts.
const EXAMPLE_PIPELINE_ID: &str = "c7142061-8fd4-46da-8da4-acfa6a4426d4";

/// The same, as answers write it.
const EXAMPLE_NORMALIZED_PIPELINE_ID: &str = "c7142061_8fd4_46da_8da4_acfa6a4426d4";

/// A run id as execute returns it.
const EXAMPLE_RUN_ID: &str = "manual__2024-12-18T10:30:00.000000+00:00";

/// A pipeline id as a request carries it, in a path or a body.
pub(crate) fn pipeline_id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(PIPELINE_ID_PATTERN))
        .description(Some(
            "The pipeline's UUID, hyphenated or underscored, in any letter case.",
        ))
        .examples([EXAMPLE_PIPELINE_ID])
        .build()
}

/// A pipeline id as an answer carries it.
fn normalized_pipeline_id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NORMALIZED_PIPELINE_ID_PATTERN))
        .description(Some(
            "The pipeline's id, normalized: lower-case, underscored.",
        ))
        .examples([EXAMPLE_NORMALIZED_PIPELINE_ID])
        .build()
}

/// A string that is always `text`.
pub(crate) fn constant(text: &'static str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([text]))
        .build()
}

pub(crate) fn always_true() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([true]))
        .description(Some("Always `true`."))
        .build()
}

/// An RFC 3339 instant in UTC, as the service writes them.
fn timestamp_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("RFC 3339, UTC."))
        .examples(["2024-12-18T10:30:00.000000+00:00"])
        .build()
}

/// A path parameter, required as every path parameter is.
fn path_parameter(name: &str, description: &str, schema: Object) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// `{pipeline_id}` in a route's path: `params(PipelineIdParam)`.
pub(crate) struct PipelineIdParam;

impl IntoParams for PipelineIdParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![path_parameter(
            "pipeline_id",
            "The pipeline's UUID, hyphenated or underscored, in any letter case. Anything else is 400 `InvalidPipelineId`.",
            pipeline_id_schema(),
        )]
    }
}

/// `{run_id}` in a route's path, after `{pipeline_id}`:
/// `params(PipelineIdParam, RunIdParam)`.
pub(crate) struct RunIdParam;

impl IntoParams for RunIdParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(RUN_ID_PATTERN))
            .examples([EXAMPLE_RUN_ID])
            .build();
        vec![path_parameter(
            "run_id",
            "The run id execute returned, percent-encoded (it holds `:` and `+`): 1 to 250 bytes without control characters, else 400 `InvalidRunId`. `.` and `..` are no run's id: 404.",
            schema,
        )]
    }
}

/// The optional `Idempotency-Key` header of execute.
pub(crate) struct IdempotencyKeyParam;

impl IntoParams for IdempotencyKeyParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        // Built by hand: utoipa makes an optional header nullable, and a
        // header has no null.
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
            .examples(["order-4711-retry-safe"])
            .build();
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "1 to 255 visible ASCII characters, else 400 `InvalidIdempotencyKey`. A repeat with the same key and pipeline within the retention window (24 h by default) gets the first answer again, with `Idempotent-Replayed: true`, and starts nothing. See docs/idempotency.md.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// The query of a run listing: `limit`, `offset` and `status`, with the
/// domain's bounds.
pub(crate) struct RunsQueryParams;

impl IntoParams for RunsQueryParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let query = |name: &str, description: String, schema: Object| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        };
        let limit = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .maximum(Some(RunQuery::MAX_LIMIT))
            .build();
        let offset = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(RunQuery::MAX_OFFSET))
            .build();
        let status = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(run_status_pattern()))
            .examples(["SUCCESS"])
            .build();
        vec![
            query(
                "limit",
                format!(
                    "At most this many runs, 1 to {} (default 100)",
                    RunQuery::MAX_LIMIT
                ),
                limit,
            ),
            query(
                "offset",
                "Skip this many matching runs, newest first (default 0)".to_owned(),
                offset,
            ),
            query(
                "status",
                "Only runs with this status: QUEUED, RUNNING, SUCCESS or FAILED, in any letter case".to_owned(),
                status,
            ),
        ]
    }
}

/// The run statuses in any letter case, as `RunStatus::parse` takes them:
/// `^(?:[Qq][Uu][Ee][Uu][Ee][Dd]|...)$`.
fn run_status_pattern() -> String {
    let names: Vec<String> = RunStatus::ALL
        .iter()
        .map(|status| {
            status
                .as_str()
                .chars()
                .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()))
                .collect()
        })
        .collect();
    format!("^(?:{})$", names.join("|"))
}

/// The body of execute, pause and unpause: `{"pipeline_id": "..."}`.
/// `customer_id` and any other field are ignored. A missing, null or empty
/// `pipeline_id` is 400 `{"detail": "pipeline_id is required"}`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only documents the request; the extractor reads it.
pub(crate) struct PipelineIdRequest {
    #[schema(schema_with = pipeline_id_schema)]
    pipeline_id: String,
}

/// `200` of execute.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecuteResponse<'a> {
    #[schema(schema_with = always_true)]
    status: bool,
    data: ExecuteData<'a>,
}

/// What execute triggered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecuteData<'a> {
    #[schema(schema_with = execute_message)]
    message: &'static str,
    #[schema(schema_with = normalized_pipeline_id_schema)]
    pipeline_id: &'a str,
    /// The new run's id, to watch it with the run routes.
    #[schema(example = "manual__2024-12-18T10:30:00.000000+00:00")]
    run_id: &'a str,
}

impl<'a> ExecuteResponse<'a> {
    /// The answer that [`crate::run_json::execute`] writes by hand, for
    /// the tests that hold it to this type.
    #[cfg(test)]
    pub(crate) fn new(run: &'a Run) -> Self {
        Self {
            status: true,
            data: ExecuteData {
                message: "Pipeline execution triggered successfully",
                pipeline_id: run.pipeline_id.as_str(),
                run_id: run.id.as_str(),
            },
        }
    }
}

/// `200` of cancel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelResponse {
    #[schema(schema_with = always_true)]
    status: bool,
    data: CancelData,
}

/// What cancel did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelData {
    #[schema(schema_with = cancel_message)]
    message: &'static str,
    #[schema(schema_with = normalized_pipeline_id_schema)]
    pipeline_id: String,
    /// The cancelled run's id.
    #[schema(example = "manual__2024-12-18T10:30:00.000000+00:00")]
    run_id: String,
}

fn cancel_message() -> Object {
    constant("Pipeline run cancelled successfully")
}

/// The body a route that takes none accepts: nothing, or `{}` (its fields
/// are ignored).
#[derive(Debug, ToSchema)]
#[schema(as = EmptyObject)]
#[allow(dead_code)] // Only documents the request.
pub(crate) struct EmptyObject {}

impl CancelResponse {
    pub(crate) fn new(run: &Run) -> Self {
        Self {
            status: true,
            data: CancelData {
                message: "Pipeline run cancelled successfully",
                pipeline_id: run.pipeline_id.to_string(),
                run_id: run.id.to_string(),
            },
        }
    }
}

/// The body of execute: `{"pipeline_id": "...", "conf": {...}}`.
/// `customer_id` and any other field are ignored. A missing, null or empty
/// `pipeline_id` is 400 `{"detail": "pipeline_id is required"}`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only documents the request; the extractor reads it.
pub(crate) struct ExecuteRequest {
    #[schema(schema_with = pipeline_id_schema)]
    pipeline_id: String,
    /// The run's parameters: a JSON object of at most 16 KiB as compact
    /// JSON, without the reserved top-level key `maestro`; absent or null,
    /// none. Anything else is 400 `InvalidConf`, as are values the pipeline
    /// refuses (on Airflow, a DAG's declared `params`).
    #[schema(schema_with = conf_schema)]
    conf: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The fields execute reads of its body, taken in the one pass that reads
/// the body: the `conf` is checked as it is read ([`RunConfSeed`]), and
/// every other field read and dropped. As with a parsed
/// object, the last of a repeated field is the one taken.
#[derive(Debug)]
pub(crate) enum ExecuteFields {
    /// The body is a JSON object.
    Object {
        /// `pipeline_id`, if present, as sent.
        pipeline_id: Option<Value>,
        /// `conf`, checked: absent or null, none.
        conf: Result<RunConf, InvalidConf>,
    },
    /// The body is JSON, but not an object.
    NotAnObject,
}

impl ExecuteFields {
    /// The fields of `body`.
    ///
    /// # Errors
    /// When `body` is not JSON.
    pub(crate) fn read(body: &[u8]) -> serde_json::Result<Self> {
        let conf = RunConfSeed::with_capacity(body.len());
        // Text checked once as a whole is read without checking each
        // string again (a `conf`'s strings are most of a large body). A
        // body that is not text is read as bytes, so that it is refused
        // with the same error as before.
        match std::str::from_utf8(body) {
            Ok(text) => Self::read_from(serde_json::Deserializer::from_str(text), conf),
            Err(_) => Self::read_from(serde_json::Deserializer::from_slice(body), conf),
        }
    }

    fn read_from<'de, R: serde_json::de::Read<'de>>(
        mut json: serde_json::Deserializer<R>,
        conf: RunConfSeed,
    ) -> serde_json::Result<Self> {
        let fields = (&mut json).deserialize_any(ExecuteFieldsVisitor { conf })?;
        json.end()?;
        Ok(fields)
    }
}

struct ExecuteFieldsVisitor {
    /// How the `conf` is read.
    conf: RunConfSeed,
}

impl<'de> Visitor<'de> for ExecuteFieldsVisitor {
    type Value = ExecuteFields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExecuteFields, A::Error> {
        let (mut pipeline_id, mut conf) = (None, Ok(RunConf::default()));
        while let Some(field) = map.next_key::<ExecuteField>()? {
            match field {
                ExecuteField::PipelineId => pipeline_id = Some(map.next_value()?),
                ExecuteField::Conf => conf = map.next_value_seed(self.conf)?,
                // Read as a value, not skipped: what a value refuses (a
                // number out of range) is refused as before.
                ExecuteField::Other => {
                    map.next_value::<Value>()?;
                }
            }
        }
        Ok(ExecuteFields::Object { pipeline_id, conf })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExecuteFields, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(ExecuteFields::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<ExecuteFields, E> {
        Ok(ExecuteFields::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ExecuteFields, E> {
        Ok(ExecuteFields::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ExecuteFields, E> {
        Ok(ExecuteFields::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ExecuteFields, E> {
        Ok(ExecuteFields::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ExecuteFields, E> {
        Ok(ExecuteFields::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<ExecuteFields, E> {
        Ok(ExecuteFields::NotAnObject)
    }
}

/// A field name of execute's body.
enum ExecuteField {
    PipelineId,
    Conf,
    Other,
}

impl<'de> Deserialize<'de> for ExecuteField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ExecuteFieldVisitor)
    }
}

struct ExecuteFieldVisitor;

impl Visitor<'_> for ExecuteFieldVisitor {
    type Value = ExecuteField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<ExecuteField, E> {
        Ok(match name {
            "pipeline_id" => ExecuteField::PipelineId,
            "conf" => ExecuteField::Conf,
            _ => ExecuteField::Other,
        })
    }
}

/// A run's parameters as a request carries them: an object (or null)
/// whose top-level keys are anything but the reserved `maestro`.
fn conf_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(any_text_but(domain::RunConf::RESERVED_KEY)))
                .build(),
        ))
        .examples([serde_json::json!({"date": "2024-12-18", "full_refresh": true})])
        .build()
}

/// A pattern matching any text but `word`, without look-ahead (which not
/// every JSON Schema tool reads): texts that part from `word` at some
/// character, its proper prefixes, and `word` followed by more.
fn any_text_but(word: &str) -> String {
    let mut branches = Vec::new();
    for (at, c) in word.char_indices() {
        let prefix = regex_escape(&word[..at]);
        branches.push(format!(
            "{prefix}[^{}][\\s\\S]*",
            regex_escape(&c.to_string())
        ));
        branches.push(prefix);
    }
    branches.push(format!("{}[\\s\\S]+", regex_escape(word)));
    format!("^(?:{})$", branches.join("|"))
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\^$.|?*+()[]{}-".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The query of a run read: `wait_seconds`.
pub(crate) struct WaitQueryParams;

impl IntoParams for WaitQueryParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let seconds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(0))
            .maximum(Some(crate::extract::MAX_WAIT_SECONDS))
            .build();
        vec![
            ParameterBuilder::new()
                .name("wait_seconds")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "Wait up to this many seconds, 0 to 60, for the run to finish; the answer comes when it does, or with the run as it is when the time is up. Default 0: answer at once.",
                ))
                .schema(Some(seconds))
                .build(),
        ]
    }
}

/// The query and headers of `GET /platform/events`: repeated
/// `pipeline_id` values and `Last-Event-ID`.
pub(crate) struct EventsParams;

impl IntoParams for EventsParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let ids = utoipa::openapi::ArrayBuilder::new()
            .items(pipeline_id_schema())
            .build();
        let last = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(EVENT_ID_PATTERN))
            .build();
        vec![
            ParameterBuilder::new()
                .name("pipeline_id")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .style(Some(utoipa::openapi::path::ParameterStyle::Form))
                .explode(Some(true))
                .description(Some(
                    "Only these pipelines' runs (repeat the key for several); none: every pipeline of the caller. A value that is not a pipeline id is 400 `InvalidQueryParameter`.",
                ))
                .schema(Some(ids))
                .build(),
            ParameterBuilder::new()
                .name("Last-Event-ID")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "The id of the last event received: the stream resumes after it, or starts with `event: gap` when the events after it are no longer kept. Not an event id: 400 `InvalidHeader`.",
                ))
                .schema(Some(last))
                .build(),
        ]
    }
}

/// An event id as the service writes them: 1 to 64 visible ASCII
/// characters (`domain::EventId::parse` accepts exactly these).
pub(crate) const EVENT_ID_PATTERN: &str = "^[!-~]{1,64}$";

/// `{id}` of `/platform/webhooks/{id}`.
pub(crate) struct WebhookIdParam;

/// A webhook id as the service writes them.
pub(crate) const WEBHOOK_ID_PATTERN: &str = "^wh_[0-9a-f]{32}$";

impl IntoParams for WebhookIdParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(WEBHOOK_ID_PATTERN))
            .examples(["wh_0f3c8a2d9b7e4c1a8f6d2b5e9c0a7d31"])
            .build();
        vec![path_parameter(
            "id",
            "The webhook's id, as its registration answered. Another form, an unknown id or another customer's webhook: 404 `WebhookNotFound`.",
            schema,
        )]
    }
}

/// `200` of pause and unpause.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionResponse {
    #[schema(schema_with = always_true)]
    status: bool,
    data: ActionData,
}

/// What pause or unpause did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionData {
    #[schema(schema_with = action_message)]
    message: &'static str,
    #[schema(schema_with = normalized_pipeline_id_schema)]
    pipeline_id: String,
}

fn execute_message() -> Object {
    constant("Pipeline execution triggered successfully")
}

fn action_message() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([
            "Pipeline paused successfully",
            "Pipeline unpaused successfully",
        ]))
        .build()
}

impl ActionResponse {
    pub(crate) fn new(message: &'static str, pipeline_id: &domain::PipelineId) -> Self {
        Self {
            status: true,
            data: ActionData {
                message,
                pipeline_id: pipeline_id.to_string(),
            },
        }
    }
}

/// Whether a pipeline accepts executions.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PipelineStatusBody {
    Active,
    Paused,
    Error,
}

impl From<PipelineStatus> for PipelineStatusBody {
    fn from(status: PipelineStatus) -> Self {
        match status {
            PipelineStatus::Active => Self::Active,
            PipelineStatus::Paused => Self::Paused,
            PipelineStatus::Error => Self::Error,
        }
    }
}

/// Where a run is in its life.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum RunStatusBody {
    Queued,
    Running,
    Success,
    Failed,
}

impl From<RunStatus> for RunStatusBody {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Queued => Self::Queued,
            RunStatus::Running => Self::Running,
            RunStatus::Success => Self::Success,
            RunStatus::Failed => Self::Failed,
        }
    }
}

/// `200` of get pipeline.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineResponse {
    #[schema(schema_with = always_true)]
    status: bool,
    data: PipelineBody,
}

impl PipelineResponse {
    pub(crate) fn new(pipeline: Pipeline) -> Self {
        Self {
            status: true,
            data: pipeline.into(),
        }
    }
}

/// A pipeline (PIPELINE).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineBody {
    #[schema(schema_with = normalized_pipeline_id_schema)]
    id: String,
    name: String,
    description: String,
    /// The cron schedule, or null for a pipeline that only runs on demand.
    #[schema(example = "0 6 * * *", required = true)]
    cron: Option<String>,
    customer_id: String,
    status: PipelineStatusBody,
    #[schema(schema_with = timestamp_schema)]
    created_at: String,
    #[schema(schema_with = timestamp_schema)]
    updated_at: String,
    /// The pipeline's jobs, passed through as the backend has them.
    #[schema(value_type = Vec<Object>)]
    jobs: Vec<serde_json::Value>,
}

impl From<Pipeline> for PipelineBody {
    fn from(pipeline: Pipeline) -> Self {
        Self {
            id: pipeline.id.to_string(),
            name: pipeline.name,
            description: pipeline.description,
            cron: pipeline.cron,
            customer_id: pipeline.customer_id.to_string(),
            status: pipeline.status.into(),
            created_at: format_timestamp(&pipeline.created_at),
            updated_at: format_timestamp(&pipeline.updated_at),
            jobs: pipeline.jobs,
        }
    }
}

/// A pipeline in a listing (PIPELINE_SUMMARY).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineSummaryBody {
    #[schema(schema_with = normalized_pipeline_id_schema)]
    pipeline_id: String,
    customer_id: String,
    name: String,
    description: String,
    /// The cron schedule, or null for a pipeline that only runs on demand.
    #[schema(required = true)]
    cron: Option<String>,
    /// The newest run's status, or null when it never ran.
    #[schema(required = true)]
    last_status: Option<RunStatusBody>,
    /// The pipeline's jobs, passed through as the backend has them.
    #[schema(value_type = Vec<Object>)]
    jobs: Vec<serde_json::Value>,
}

impl From<PipelineSummary> for PipelineSummaryBody {
    fn from(summary: PipelineSummary) -> Self {
        let pipeline = summary.pipeline;
        Self {
            pipeline_id: pipeline.id.to_string(),
            customer_id: pipeline.customer_id.to_string(),
            name: pipeline.name,
            description: pipeline.description,
            cron: pipeline.cron,
            last_status: summary.last_status.map(Into::into),
            jobs: pipeline.jobs,
        }
    }
}

/// A run of a pipeline (RUN).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunBody {
    /// The run id execute returned.
    #[schema(example = "manual__2024-12-18T10:30:00.000000+00:00")]
    pipeline_run_id: String,
    #[schema(schema_with = normalized_pipeline_id_schema)]
    pipeline_id: String,
    last_status: RunStatusBody,
    #[schema(schema_with = timestamp_schema)]
    created_at: String,
    #[schema(schema_with = timestamp_schema)]
    updated_at: String,
    /// The error text of a failed run, else null.
    #[schema(required = true)]
    trace: Option<String>,
    /// The parameters the run was triggered with (`{}` when none).
    #[schema(value_type = Object, example = json!({"date": "2024-12-18", "full_refresh": true}))]
    #[serde(serialize_with = "conf_as_written")]
    conf: RunConf,
}

/// A run's parameters, their compact JSON written as it is.
fn conf_as_written<S: Serializer>(conf: &RunConf, serializer: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<&RawValue>(conf.as_json()) {
        Ok(json) => json.serialize(serializer),
        Err(_) => conf.as_map().serialize(serializer),
    }
}

impl From<Run> for RunBody {
    fn from(run: Run) -> Self {
        Self {
            pipeline_run_id: run.id.to_string(),
            pipeline_id: run.pipeline_id.to_string(),
            last_status: run.status.into(),
            created_at: format_timestamp(&run.created_at),
            updated_at: format_timestamp(&run.updated_at),
            trace: run.trace,
            conf: run.conf,
        }
    }
}

/// `200` of `/health`: `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusBody {
    #[schema(schema_with = ok)]
    pub(crate) status: &'static str,
}

fn ok() -> Object {
    constant("ok")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_fields_are_read_in_one_pass_as_a_parsed_object_has_them() {
        let read = |body: &str| ExecuteFields::read(body.as_bytes());
        let Ok(ExecuteFields::Object { pipeline_id, conf }) = read(
            r#"{"customer_id": "x", "conf": {"a": 1}, "pipeline_id": "p", "conf": {"b": [true]}}"#,
        ) else {
            panic!("an object");
        };
        assert_eq!(pipeline_id, Some(serde_json::json!("p")));
        assert_eq!(conf.unwrap().as_json(), r#"{"b":[true]}"#);
        let Ok(ExecuteFields::Object { pipeline_id, conf }) = read(r#"{"conf": null}"#) else {
            panic!("an object");
        };
        assert_eq!((pipeline_id, conf), (None, Ok(RunConf::default())));
        assert_eq!(
            read(r#"{"conf": [1]}"#).ok().map(|fields| match fields {
                ExecuteFields::Object { conf, .. } => conf,
                ExecuteFields::NotAnObject => Ok(RunConf::default()),
            }),
            Some(Err(InvalidConf::NotAnObject { found: "an array" }))
        );
        for body in ["[1, {}]", "null", "3", r#""x""#] {
            assert!(
                matches!(read(body), Ok(ExecuteFields::NotAnObject)),
                "{body}"
            );
        }
        // Not JSON, or not a value JSON can hold, anywhere in the body.
        for body in ["{", r#"{"pipeline_id": "p"} x"#, r#"{"other": 1e400}"#] {
            assert!(read(body).is_err(), "{body}");
        }
    }

    #[test]
    fn a_body_read_as_text_reads_and_is_refused_as_when_read_as_bytes() {
        let bodies: [&[u8]; 12] = [
            br#"{"pipeline_id": "p", "conf": {"note": "caf\u00e9 \"x\"", "n": [1, 2.5]}}"#,
            "{\"pipeline_id\": \"p\", \"conf\": {\"é\": \"✓\"}}".as_bytes(),
            b"{\"pipeline_id\": \"\xff\"}",
            b"{\"conf\": {\"a\": \"\xc3\"}}",
            b"{\"conf\": {\"\xe2\x9c\": 1}}",
            b"{\"pipeline_id\": \"p\"} \xff",
            b"{\"conf\": {\"a\": \"tab\there\"}}",
            b"{\"conf\": {\"a\": \"x\"}",
            b"{\"pipeline_id\": \"p\"} x",
            b"[\"\xff\"]",
            b"",
            br#"{"conf": {"maestro": 1}}"#,
        ];
        for body in bodies {
            let as_bytes = ExecuteFields::read_from(
                serde_json::Deserializer::from_slice(body),
                RunConfSeed::with_capacity(body.len()),
            );
            assert_eq!(
                format!("{:?}", ExecuteFields::read(body)),
                format!("{as_bytes:?}"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_conf_key_pattern_is_any_text_but_the_reserved_key() {
        // Each branch: a proper prefix of `maestro` then another character,
        // a proper prefix alone, or `maestro` with more after it.
        assert_eq!(
            any_text_but("maestro"),
            r"^(?:[^m][\s\S]*||m[^a][\s\S]*|m|ma[^e][\s\S]*|ma|mae[^s][\s\S]*|mae|maes[^t][\s\S]*|maes|maest[^r][\s\S]*|maest|maestr[^o][\s\S]*|maestr|maestro[\s\S]+)$"
        );
        assert_eq!(regex_escape("a.b-c"), r"a\.b\-c");
    }
}
