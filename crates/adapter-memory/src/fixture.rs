//! Loading pipelines from a JSON fixture: `{"pipelines": [PIPELINE, ...]}`
//! in the API's own shape, checked strictly so that a typo is an error
//! rather than a silently missing field.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use domain::{
    CustomerId, InvalidCustomerId, InvalidPipelineId, Pipeline, PipelineId, PipelineStatus,
    Timestamp,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a fixture could not be loaded. Every problem with one pipeline names
/// it by its place in the array and, when it has one, its `id`.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("cannot read fixture {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The text is not JSON of the shape `{"pipelines": [...]}`.
    #[error("fixture is not JSON of the shape {{\"pipelines\": [...]}}: {0}")]
    Json(#[source] serde_json::Error),
    /// A pipeline misses a required field, has an unknown one, or a field of
    /// the wrong type or value.
    #[error("{at}: {source}")]
    Pipeline {
        /// Which pipeline.
        at: PipelineAt,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// A pipeline's `id` is not a UUID.
    #[error("{at}: {source}")]
    InvalidId {
        /// Which pipeline.
        at: PipelineAt,
        /// What is wrong with the id.
        source: InvalidPipelineId,
    },
    /// A pipeline's `customer_id` is not usable.
    #[error("{at}: {source}")]
    InvalidCustomer {
        /// Which pipeline.
        at: PipelineAt,
        /// What is wrong with the customer id.
        source: InvalidCustomerId,
    },
    /// A pipeline's `created_at` or `updated_at` is not an RFC 3339 instant.
    #[error("{at}: {field} is not an RFC 3339 instant: {source}")]
    InvalidTimestamp {
        /// Which pipeline.
        at: PipelineAt,
        /// `created_at` or `updated_at`.
        field: &'static str,
        /// Why it does not parse.
        source: chrono::ParseError,
    },
    /// A pipeline's `updated_at` is before its `created_at`.
    #[error("{at}: updated_at is before created_at")]
    UpdatedBeforeCreated {
        /// Which pipeline.
        at: PipelineAt,
    },
    /// Two pipelines have the same id once normalized.
    #[error("pipelines[{first}] and pipelines[{second}] have the same id {id}")]
    DuplicateId {
        /// The normalized id.
        id: PipelineId,
        /// The index of the first pipeline with it.
        first: usize,
        /// The index of the second.
        second: usize,
    },
}

/// Which pipeline of a fixture an error is about: `pipelines[2]`, followed
/// by its `id` as written when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineAt {
    /// The pipeline's index in the `pipelines` array, from 0.
    pub index: usize,
    /// Its `id` as written, when it has a string one.
    pub id: Option<String>,
}

impl fmt::Display for PipelineAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pipelines[{}]", self.index)?;
        match &self.id {
            Some(id) => write!(f, " (id {id:?})"),
            None => Ok(()),
        }
    }
}

/// The whole file. Pipelines are taken as raw JSON first so that an error
/// in one can name which one it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    pipelines: Vec<Value>,
}

/// The whole file, its pipelines read straight into their shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedFixtureFile {
    pipelines: Vec<RawPipeline>,
}

/// One pipeline as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    id: String,
    customer_id: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    status: RawStatus,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    jobs: Vec<Map<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum RawStatus {
    #[default]
    Active,
    Paused,
    Error,
}

impl From<RawStatus> for PipelineStatus {
    fn from(raw: RawStatus) -> Self {
        match raw {
            RawStatus::Active => Self::Active,
            RawStatus::Paused => Self::Paused,
            RawStatus::Error => Self::Error,
        }
    }
}

/// Reads and checks a fixture file; pipelines without instants were
/// created at `now`.
///
/// # Errors
/// [`FixtureError::Read`] when the file cannot be read, and every error of
/// [`parse_fixture`].
pub fn load_fixture(path: &Path, now: Timestamp) -> Result<Vec<Pipeline>, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_fixture(&text, now)
}

/// Checks a fixture's text and returns its pipelines, in the order written.
///
/// Each pipeline has the API's shape: `id` (a UUID, hyphenated or
/// underscored, in any case; normalized), `customer_id` and `name`
/// (required), `description` (default empty), `cron` (default null),
/// `status` (`active`, `paused` or `error`; default `active`), `created_at`
/// (RFC 3339; default `now`, the load time), `updated_at` (default `created_at`)
/// and `jobs` (an array of objects; default empty). Any other field is
/// refused.
///
/// # Errors
/// [`FixtureError::Json`] for text that is not `{"pipelines": [...]}`;
/// [`FixtureError::Pipeline`], [`FixtureError::InvalidId`],
/// [`FixtureError::InvalidCustomer`], [`FixtureError::InvalidTimestamp`] or
/// [`FixtureError::UpdatedBeforeCreated`] for a pipeline that is not right;
/// [`FixtureError::DuplicateId`] for two pipelines with one id.
pub fn parse_fixture(json: &str, now: Timestamp) -> Result<Vec<Pipeline>, FixtureError> {
    // The pipelines straight into their shape first, with no JSON tree
    // between: a hundred thousand of them load several times faster so.
    // Only a pipeline that does not fit takes the path through the tree,
    // which can say which one it is.
    if let Ok(file) = serde_json::from_str::<TypedFixtureFile>(json) {
        return check_pipelines(
            file.pipelines
                .into_iter()
                .enumerate()
                .map(|(index, raw)| check_pipeline(index, raw, now)),
        );
    }
    let file: FixtureFile = serde_json::from_str(json).map_err(FixtureError::Json)?;
    check_pipelines(
        file.pipelines
            .into_iter()
            .enumerate()
            .map(|(index, value)| parse_pipeline(index, value, now)),
    )
}

/// The pipelines, in order, unless one is wrong or two share an id.
fn check_pipelines(
    pipelines: impl ExactSizeIterator<Item = Result<Pipeline, FixtureError>>,
) -> Result<Vec<Pipeline>, FixtureError> {
    let mut first_index: HashMap<PipelineId, usize> = HashMap::with_capacity(pipelines.len());
    let mut checked = Vec::with_capacity(pipelines.len());
    for (index, pipeline) in pipelines.enumerate() {
        let pipeline = pipeline?;
        if let Some(&first) = first_index.get(&pipeline.id) {
            return Err(FixtureError::DuplicateId {
                id: pipeline.id,
                first,
                second: index,
            });
        }
        first_index.insert(pipeline.id.clone(), index);
        checked.push(pipeline);
    }
    Ok(checked)
}

fn parse_pipeline(index: usize, value: Value, now: Timestamp) -> Result<Pipeline, FixtureError> {
    let at = PipelineAt {
        index,
        id: value.get("id").and_then(Value::as_str).map(str::to_owned),
    };
    // Once it has the pipeline's shape, its `id` is the string it named.
    let raw: RawPipeline = match serde_json::from_value(value) {
        Ok(raw) => raw,
        Err(source) => return Err(FixtureError::Pipeline { at, source }),
    };
    check_pipeline(index, raw, now)
}

/// The pipeline `raw`, at `index` in the array, checked.
fn check_pipeline(
    index: usize,
    raw: RawPipeline,
    now: Timestamp,
) -> Result<Pipeline, FixtureError> {
    // Made only for an error: a pipeline that is right costs no copy.
    let at = || PipelineAt {
        index,
        id: Some(raw.id.clone()),
    };
    let id = match PipelineId::parse(&raw.id) {
        Ok(id) => id,
        Err(source) => return Err(FixtureError::InvalidId { at: at(), source }),
    };
    let customer_id = match CustomerId::parse(&raw.customer_id) {
        Ok(customer_id) => customer_id,
        Err(source) => return Err(FixtureError::InvalidCustomer { at: at(), source }),
    };
    let created_at = match parse_instant(raw.created_at.as_deref(), "created_at", &at)? {
        Some(created_at) => created_at,
        None => now,
    };
    let updated_at =
        parse_instant(raw.updated_at.as_deref(), "updated_at", &at)?.unwrap_or(created_at);
    if updated_at < created_at {
        return Err(FixtureError::UpdatedBeforeCreated { at: at() });
    }
    let mut pipeline = Pipeline::new(id, customer_id, raw.name, created_at);
    pipeline.description = raw.description;
    pipeline.cron = raw.cron;
    pipeline.status = raw.status.into();
    pipeline.updated_at = updated_at;
    pipeline.jobs = raw.jobs.into_iter().map(Value::Object).collect();
    Ok(pipeline)
}

fn parse_instant(
    raw: Option<&str>,
    field: &'static str,
    at: &impl Fn() -> PipelineAt,
) -> Result<Option<Timestamp>, FixtureError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|instant| instant.with_timezone(&Utc))
            .map_err(|source| FixtureError::InvalidTimestamp {
                at: at(),
                field,
                source,
            })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    const ID: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    fn now() -> Timestamp {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap()
    }

    fn parse(fixture: &Value) -> Result<Vec<Pipeline>, FixtureError> {
        parse_fixture(&fixture.to_string(), now())
    }

    fn minimal(id: &str) -> Value {
        json!({"id": id, "customer_id": "demo", "name": "nightly"})
    }

    #[test]
    fn a_full_pipeline_is_read_in_the_api_shape() {
        let pipelines = parse(&json!({"pipelines": [{
            "id": "1B33AD2F-33D3-4837-9EEB-83C82C8B909D",
            "customer_id": "Acme Corp",
            "name": "orders-etl",
            "description": "Loads orders",
            "cron": "0 2 * * *",
            "status": "paused",
            "created_at": "2024-12-01T08:00:00Z",
            "updated_at": "2024-12-18T10:30:00.000000+01:00",
            "jobs": [{"name": "extract", "type": "python"}]
        }]}))
        .unwrap();
        let [pipeline] = pipelines.as_slice() else {
            panic!("one pipeline expected");
        };
        assert_eq!(pipeline.id.as_str(), ID);
        assert_eq!(pipeline.customer_id.as_str(), "Acme Corp");
        assert_eq!(pipeline.name, "orders-etl");
        assert_eq!(pipeline.description, "Loads orders");
        assert_eq!(pipeline.cron.as_deref(), Some("0 2 * * *"));
        assert_eq!(pipeline.status, PipelineStatus::Paused);
        assert_eq!(
            pipeline.created_at,
            Utc.with_ymd_and_hms(2024, 12, 1, 8, 0, 0).unwrap()
        );
        assert_eq!(
            pipeline.updated_at,
            Utc.with_ymd_and_hms(2024, 12, 18, 9, 30, 0).unwrap()
        );
        assert_eq!(
            pipeline.jobs,
            [json!({"name": "extract", "type": "python"})]
        );
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let pipelines = parse(&json!({"pipelines": [minimal(ID)]})).unwrap();
        let pipeline = &pipelines[0];
        assert_eq!(pipeline.description, "");
        assert_eq!(pipeline.cron, None);
        assert_eq!(pipeline.status, PipelineStatus::Active);
        assert_eq!((pipeline.created_at, pipeline.updated_at), (now(), now()));
        assert!(pipeline.jobs.is_empty());
    }

    #[test]
    fn updated_at_defaults_to_created_at_and_cron_may_be_null() {
        let mut pipeline = minimal(ID);
        pipeline["created_at"] = json!("2024-12-01T08:00:00+00:00");
        pipeline["cron"] = Value::Null;
        let pipelines = parse(&json!({"pipelines": [pipeline]})).unwrap();
        assert_eq!(pipelines[0].updated_at, pipelines[0].created_at);
        assert_eq!(pipelines[0].cron, None);
    }

    #[test]
    fn both_id_forms_are_accepted_and_normalized_in_order() {
        let pipelines = parse(&json!({"pipelines": [
            minimal("1b33ad2f-33d3-4837-9eeb-83c82c8b909d"),
            minimal("2C44BE30_44E4_4948_AFFC_94D93D9CA1AE"),
        ]}))
        .unwrap();
        let ids: Vec<&str> = pipelines.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, [ID, "2c44be30_44e4_4948_affc_94d93d9ca1ae"]);
    }

    #[test]
    fn an_invalid_id_is_refused_naming_the_pipeline() {
        let error = parse(&json!({"pipelines": [minimal(ID), minimal("not-a-uuid")]})).unwrap_err();
        assert!(matches!(error, FixtureError::InvalidId { ref at, .. } if at.index == 1));
        assert_eq!(
            error.to_string(),
            "pipelines[1] (id \"not-a-uuid\"): a pipeline id must be a UUID, hyphenated or underscored"
        );
    }

    #[test]
    fn a_duplicate_id_in_another_spelling_is_refused() {
        let error = parse(&json!({"pipelines": [
            minimal(ID),
            minimal("1B33AD2F-33D3-4837-9EEB-83C82C8B909D"),
        ]}))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("pipelines[0] and pipelines[1] have the same id {ID}")
        );
    }

    #[test]
    fn an_unknown_field_is_refused_naming_it_and_the_pipeline() {
        let mut pipeline = minimal(ID);
        pipeline["descripton"] = json!("typo");
        let error = parse(&json!({"pipelines": [pipeline]})).unwrap_err();
        assert!(matches!(error, FixtureError::Pipeline { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "pipelines[0] (id \"{ID}\"): unknown field `descripton`"
            )),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_top_level_field_is_refused() {
        let error = parse(&json!({"pipelines": [], "pipeline": []})).unwrap_err();
        assert!(matches!(error, FixtureError::Json(_)), "{error:?}");
        assert!(
            error.to_string().contains("unknown field `pipeline`"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_status_is_refused() {
        let mut pipeline = minimal(ID);
        pipeline["status"] = json!("running");
        let error = parse(&json!({"pipelines": [pipeline]})).unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `running`"),
            "{error}"
        );
    }

    #[test]
    fn missing_required_fields_are_refused() {
        for field in ["id", "customer_id", "name"] {
            let mut pipeline = minimal(ID);
            pipeline.as_object_mut().unwrap().remove(field);
            let error = parse(&json!({"pipelines": [pipeline]})).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains(&format!("missing field `{field}`")),
                "{error}"
            );
        }
    }

    #[test]
    fn an_empty_customer_id_is_refused() {
        let mut pipeline = minimal(ID);
        pipeline["customer_id"] = json!("");
        let error = parse(&json!({"pipelines": [pipeline]})).unwrap_err();
        assert!(
            matches!(error, FixtureError::InvalidCustomer { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn bad_instants_are_refused_naming_the_field() {
        let mut pipeline = minimal(ID);
        pipeline["updated_at"] = json!("yesterday");
        let error = parse(&json!({"pipelines": [pipeline]})).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("updated_at is not an RFC 3339 instant"),
            "{error}"
        );

        let mut pipeline = minimal(ID);
        pipeline["created_at"] = json!("2024-12-02T00:00:00Z");
        pipeline["updated_at"] = json!("2024-12-01T00:00:00Z");
        let error = parse(&json!({"pipelines": [pipeline]})).unwrap_err();
        assert!(
            matches!(error, FixtureError::UpdatedBeforeCreated { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn jobs_must_be_objects() {
        let mut pipeline = minimal(ID);
        pipeline["jobs"] = json!(["extract"]);
        assert!(matches!(
            parse(&json!({"pipelines": [pipeline]})),
            Err(FixtureError::Pipeline { .. })
        ));
    }

    #[test]
    fn text_that_is_not_json_is_refused() {
        assert!(matches!(
            parse_fixture("{\"pipelines\": [", now()),
            Err(FixtureError::Json(_))
        ));
        assert!(matches!(
            parse_fixture("[]", now()),
            Err(FixtureError::Json(_))
        ));
    }

    #[test]
    fn an_unreadable_file_names_its_path() {
        let path = Path::new("/nonexistent/maestro-fixture.json");
        let error = load_fixture(path, now()).unwrap_err();
        assert!(matches!(error, FixtureError::Read { .. }));
        assert!(
            error
                .to_string()
                .starts_with("cannot read fixture /nonexistent/maestro-fixture.json: ")
        );
    }

    #[test]
    fn a_fixture_file_is_loaded() {
        let path =
            std::env::temp_dir().join(format!("maestro-fixture-{}.json", std::process::id()));
        std::fs::write(&path, json!({"pipelines": [minimal(ID)]}).to_string()).unwrap();
        let loaded = load_fixture(&path, now());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap()[0].id.as_str(), ID);
    }
}
