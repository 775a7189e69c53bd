//! Airflow's JSON, as far as Maestro reads it, and how DAGs and DAG runs
//! become pipelines and runs.
//!
//! Only the fields Maestro uses are declared; Airflow adds fields between
//! versions, and those are ignored.

use chrono::{DateTime, Utc};
use domain::{
    BackendError, CustomerId, Pipeline, PipelineId, PipelineStatus, Run, RunConf, RunId, RunStatus,
    Timestamp,
};
use serde::{Deserialize, Deserializer};

/// The `trace` of a failed run: Airflow keeps no error text on the DAG run,
/// only on its task instances' logs.
pub(crate) const FAILED_TRACE: &str =
    "The Airflow DAG run failed; its task instance logs in Airflow hold the cause.";

/// A DAG, from `GET /api/v2/dags`, `GET /api/v2/dags/{dag_id}` or its
/// `/details`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Dag {
    pub(crate) dag_id: String,
    #[serde(default)]
    pub(crate) dag_display_name: Option<String>,
    pub(crate) is_paused: bool,
    #[serde(default)]
    pub(crate) is_stale: bool,
    #[serde(default)]
    pub(crate) has_import_errors: bool,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) timetable_summary: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<Tag>,
    #[serde(default, deserialize_with = "optional_time")]
    pub(crate) last_parsed_time: Option<Timestamp>,
    /// Only in `/details`.
    #[serde(default, deserialize_with = "optional_time")]
    pub(crate) start_date: Option<Timestamp>,
    /// Only in `/details`.
    #[serde(default)]
    pub(crate) latest_dag_version: Option<DagVersion>,
}

/// One tag of a DAG.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Tag {
    pub(crate) name: String,
}

/// A version of a DAG's definition.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DagVersion {
    #[serde(deserialize_with = "required_time")]
    pub(crate) created_at: Timestamp,
}

/// One page of `GET /api/v2/dags`.
#[derive(Debug, Deserialize)]
pub(crate) struct DagPage {
    pub(crate) dags: Vec<Dag>,
    pub(crate) total_entries: u64,
}

/// A DAG run.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DagRun {
    pub(crate) dag_run_id: String,
    pub(crate) dag_id: String,
    pub(crate) state: String,
    #[serde(deserialize_with = "required_time")]
    pub(crate) run_after: Timestamp,
    #[serde(default, deserialize_with = "optional_time")]
    pub(crate) queued_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "optional_time")]
    pub(crate) start_date: Option<Timestamp>,
    #[serde(default, deserialize_with = "optional_time")]
    pub(crate) end_date: Option<Timestamp>,
    #[serde(default)]
    pub(crate) conf: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) note: Option<String>,
    /// When the scheduler last looked at the run: it moves (with the run's
    /// `updated_at`, which Airflow does not answer) on every scheduler loop
    /// while the run is running.
    #[serde(default, deserialize_with = "optional_time")]
    pub(crate) last_scheduling_decision: Option<Timestamp>,
}

/// One page of `GET /api/v2/dags/{dag_id}/dagRuns` (or of `~`, every DAG).
#[derive(Debug, Deserialize)]
pub(crate) struct DagRunPage {
    pub(crate) dag_runs: Vec<DagRun>,
    /// Exact under offset paging; capped under keyset (`cursor`) paging.
    #[serde(default)]
    pub(crate) total_entries: Option<u64>,
    /// Under keyset paging, the token of the next page; `null` on the last.
    #[serde(default)]
    pub(crate) next_cursor: Option<String>,
}

/// `GET /api/v2/monitor/health`.
#[derive(Debug, Deserialize)]
pub(crate) struct Health {
    pub(crate) metadatabase: Component,
}

/// One component's health.
#[derive(Debug, Deserialize)]
pub(crate) struct Component {
    pub(crate) status: Option<String>,
}

impl Dag {
    /// The customer named by the DAG's one customer tag; `None` when it has
    /// no such tag, more than one, or one naming nobody.
    pub(crate) fn owner<'a>(&'a self, prefix: &str) -> Option<&'a str> {
        let mut owners = self
            .tags
            .iter()
            .filter_map(|tag| tag.name.strip_prefix(prefix));
        let owner = owners.next()?;
        if owners.next().is_some() || owner.is_empty() {
            return None;
        }
        Some(owner)
    }

    /// The pipeline and its customer, when the DAG is a pipeline of anyone:
    /// the same rule as [`Dag::visible_to`], for whoever the tag names.
    pub(crate) fn pipeline(&self, prefix: &str) -> Option<(PipelineId, CustomerId)> {
        let customer = CustomerId::parse(self.owner(prefix)?).ok()?;
        let id = self.visible_to(prefix, &customer)?;
        Some((id, customer))
    }

    /// The pipeline id, when the DAG is a pipeline of `customer`: its
    /// `dag_id` is a UUID already in the normal underscored lower-case form,
    /// it carries exactly one customer tag, that tag names `customer`
    /// exactly, and Airflow has not marked it stale (its file is gone).
    pub(crate) fn visible_to(&self, prefix: &str, customer: &CustomerId) -> Option<PipelineId> {
        let id = PipelineId::parse(&self.dag_id).ok()?;
        if id.as_str() != self.dag_id || self.is_stale {
            return None;
        }
        (self.owner(prefix)? == customer.as_str()).then_some(id)
    }

    /// The DAG as the pipeline `id` of `customer`.
    ///
    /// `created_at` is the DAG's `start_date` (the instant its author says
    /// it takes effect), `updated_at` the creation of its latest version
    /// (when Airflow last saw its definition change); where `/details` was
    /// not read, or a field is empty, both fall back to when Airflow last
    /// parsed the DAG, and failing that to the Unix epoch.
    pub(crate) fn into_pipeline(self, id: PipelineId, customer: CustomerId) -> Pipeline {
        let parsed = self.last_parsed_time.unwrap_or(DateTime::UNIX_EPOCH);
        let updated_at = self
            .latest_dag_version
            .as_ref()
            .map_or(parsed, |version| version.created_at);
        let created_at = self.start_date.unwrap_or(updated_at);
        let status = if self.is_paused {
            PipelineStatus::Paused
        } else if self.has_import_errors {
            PipelineStatus::Error
        } else {
            PipelineStatus::Active
        };
        let name = self.dag_display_name.unwrap_or(self.dag_id);
        let mut pipeline = Pipeline::new(id, customer, name, created_at);
        pipeline.description = self.description.unwrap_or_default();
        pipeline.cron = self.timetable_summary.filter(|summary| !summary.is_empty());
        pipeline.status = status;
        pipeline.updated_at = updated_at;
        pipeline
    }
}

/// Airflow's run state as a run status.
pub(crate) fn run_status(state: &str) -> Option<RunStatus> {
    match state {
        "queued" => Some(RunStatus::Queued),
        "running" => Some(RunStatus::Running),
        "success" => Some(RunStatus::Success),
        "failed" => Some(RunStatus::Failed),
        _ => None,
    }
}

/// A run status as Airflow's run state, for its query parameters.
pub(crate) fn airflow_state(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "queued",
        RunStatus::Running => "running",
        RunStatus::Success => "success",
        RunStatus::Failed => "failed",
    }
}

impl DagRun {
    /// The DAG run as a run of `pipeline`.
    ///
    /// `created_at` is `run_after` (for a triggered run, the moment of the
    /// trigger); `updated_at` is the latest of `run_after`, `queued_at`,
    /// `start_date` and `end_date`, which is when the state last moved.
    /// `conf` is the run's `conf` without Maestro's own block (a `conf`
    /// that is not an object, which Airflow does not make, reads as none).
    /// A failed run's `trace` is its note when it has one (a cancel through
    /// Maestro writes [`Run::CANCELLED_TRACE`] there), and
    /// [`FAILED_TRACE`] otherwise.
    ///
    /// Errors: an upstream error for a state Airflow 3 does not document or
    /// an id that cannot be a run id.
    pub(crate) fn into_run(self, pipeline: PipelineId) -> Result<Run, BackendError> {
        let status = run_status(&self.state).ok_or_else(|| {
            BackendError::upstream(format!(
                "DAG run of {} has the unknown state {:?}",
                self.dag_id, self.state
            ))
        })?;
        let id = RunId::parse(&self.dag_run_id).map_err(|err| {
            BackendError::upstream(format!("DAG run of {} has an unusable id", self.dag_id))
                .with_source(err)
        })?;
        let updated_at = [self.queued_at, self.start_date, self.end_date]
            .into_iter()
            .flatten()
            .fold(self.run_after, Timestamp::max);
        let trace = (status == RunStatus::Failed).then(|| {
            self.note
                .filter(|note| !note.trim().is_empty())
                .unwrap_or_else(|| FAILED_TRACE.to_owned())
        });
        let conf = match self.conf {
            Some(serde_json::Value::Object(map)) => RunConf::from_engine(map),
            _ => RunConf::default(),
        };
        let mut run = Run::new(id, pipeline, status, self.run_after);
        run.updated_at = updated_at;
        run.trace = trace;
        run.conf = conf;
        Ok(run)
    }

    /// The trigger id Maestro put in the run's `conf`, if any.
    pub(crate) fn trigger_id(&self) -> Option<&str> {
        self.conf
            .as_ref()?
            .get("maestro")?
            .get("trigger_id")?
            .as_str()
    }
}

/// A trigger Airflow refused because the DAG's declared `params` reject
/// the `conf`: what Maestro tells the caller of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamRefusal {
    /// The parameter Airflow names, when it is a name fit to repeat.
    pub(crate) parameter: Option<String>,
    /// Why, in Maestro's own words.
    pub(crate) reason: String,
}

/// What Airflow's `ParamValidationError` says before the parameter's name.
const PARAM_REFUSAL_PREFIX: &str = "Invalid input for param ";

/// The longest parameter name repeated to the caller.
const MAX_PARAMETER_NAME: usize = 100;

/// The longest JSON Schema keyword named in a reason.
const MAX_KEYWORD: usize = 32;

/// The refusal in the `detail` of Airflow's 400 to a trigger, when it is a
/// `ParamValidationError`: `Invalid input for param <name>: <why>`, where
/// `<why>` is jsonschema's message (quoting the value, then the whole
/// schema and instance on further lines) or `No value passed`. Any other
/// 400 detail (import errors, manual runs not allowed) is `None`.
///
/// Only the name is taken from Airflow's text, and only when it is short
/// and plain (letters, digits, `_`, `-`, `.` and spaces: no control,
/// format or quoting characters); the reason is Maestro's wording, naming at most the
/// JSON Schema keyword that failed (`format`, `type`, ...), so that no
/// value, schema or other text of Airflow's reaches the caller.
pub(crate) fn param_refusal(detail: &str) -> Option<ParamRefusal> {
    let rest = detail.strip_prefix(PARAM_REFUSAL_PREFIX)?;
    let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
    let parameter = (!name.is_empty()
        && name.chars().count() <= MAX_PARAMETER_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')))
    .then(|| name.to_owned());
    let reason = if why.starts_with("No value passed") {
        "the parameter needs a value and has no default".to_owned()
    } else {
        match failed_keyword(why) {
            Some(keyword) => format!("the value fails the parameter's {keyword:?} check"),
            None => "the value does not match the parameter's schema".to_owned(),
        }
    };
    Some(ParamRefusal { parameter, reason })
}

/// The keyword of jsonschema's `Failed validating '<keyword>' in schema`,
/// when it is a plain word.
fn failed_keyword(why: &str) -> Option<&str> {
    let (_, after) = why.split_once("Failed validating '")?;
    let (keyword, _) = after.split_once('\'')?;
    (!keyword.is_empty()
        && keyword.len() <= MAX_KEYWORD
        && keyword.chars().all(|c| c.is_ascii_alphanumeric()))
    .then_some(keyword)
}

fn parse_time(raw: &str) -> Result<Timestamp, chrono::ParseError> {
    DateTime::parse_from_rfc3339(raw).map(|at| at.with_timezone(&Utc))
}

fn required_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
    let raw = String::deserialize(deserializer)?;
    parse_time(&raw).map_err(serde::de::Error::custom)
}

fn optional_time<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Timestamp>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|raw| parse_time(&raw).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";

    fn dag(dag_id: &str, tags: &[&str]) -> Dag {
        serde_json::from_value(serde_json::json!({
            "dag_id": dag_id,
            "is_paused": false,
            "tags": tags.iter().map(|name| serde_json::json!({"name": name, "dag_id": dag_id})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn acme() -> CustomerId {
        CustomerId::parse("acme").unwrap()
    }

    #[test]
    fn a_uuid_dag_with_one_customer_tag_is_visible_to_that_customer_only() {
        let dag = dag(ID, &["customer:acme", "team:data"]);
        assert_eq!(dag.visible_to("customer:", &acme()).unwrap().as_str(), ID);
        assert!(
            dag.visible_to("customer:", &CustomerId::parse("globex").unwrap())
                .is_none()
        );
        assert!(
            dag.visible_to("customer:", &CustomerId::parse("ACME").unwrap())
                .is_none()
        );
        assert!(
            dag.visible_to("customer:", &CustomerId::parse("acm").unwrap())
                .is_none()
        );
    }

    #[test]
    fn dags_without_exactly_one_customer_tag_are_visible_to_no_one() {
        assert!(dag(ID, &[]).visible_to("customer:", &acme()).is_none());
        assert!(
            dag(ID, &["team:data"])
                .visible_to("customer:", &acme())
                .is_none()
        );
        assert!(
            dag(ID, &["customer:"])
                .visible_to("customer:", &acme())
                .is_none()
        );
        assert!(
            dag(ID, &["customer:acme", "customer:globex"])
                .visible_to("customer:", &acme())
                .is_none()
        );
        assert!(
            dag(ID, &["customer:acme", "customer:acme"])
                .visible_to("customer:", &acme())
                .is_none()
        );
    }

    #[test]
    fn dag_ids_other_than_the_normal_uuid_form_are_visible_to_no_one() {
        for dag_id in [
            "acme_nightly_export",
            "1b33ad2f-33d3-4837-9eeb-83c82c8b909d",
            "1B33AD2F_33D3_4837_9EEB_83C82C8B909D",
        ] {
            assert!(
                dag(dag_id, &["customer:acme"])
                    .visible_to("customer:", &acme())
                    .is_none(),
                "{dag_id}"
            );
        }
    }

    #[test]
    fn a_stale_dag_is_visible_to_no_one() {
        let mut stale = dag(ID, &["customer:acme"]);
        stale.is_stale = true;
        assert!(stale.visible_to("customer:", &acme()).is_none());
    }

    #[test]
    fn the_prefix_is_configurable() {
        let dag = dag(ID, &["tenant=acme", "customer:globex"]);
        assert!(dag.visible_to("tenant=", &acme()).is_some());
    }

    #[test]
    fn details_map_to_a_pipeline() {
        let dag: Dag = serde_json::from_value(serde_json::json!({
            "dag_id": ID,
            "dag_display_name": "Orders",
            "is_paused": true,
            "is_stale": false,
            "has_import_errors": false,
            "description": null,
            "timetable_summary": "0 3 * * *",
            "tags": [{"name": "customer:acme"}],
            "last_parsed_time": "2026-11-29T08:56:31.828257Z",
            "start_date": "2024-01-01T00:00:00Z",
            "latest_dag_version": {"created_at": "2026-11-29T08:56:32.071165Z", "version_number": 1},
        }))
        .unwrap();
        let id = PipelineId::parse(ID).unwrap();
        let pipeline = dag.into_pipeline(id.clone(), acme());
        assert_eq!(pipeline.id, id);
        assert_eq!(pipeline.name, "Orders");
        assert_eq!(pipeline.description, "");
        assert_eq!(pipeline.cron.as_deref(), Some("0 3 * * *"));
        assert_eq!(pipeline.status, PipelineStatus::Paused);
        assert_eq!(
            pipeline.created_at,
            parse_time("2024-01-01T00:00:00Z").unwrap()
        );
        assert_eq!(
            pipeline.updated_at,
            parse_time("2026-11-29T08:56:32.071165Z").unwrap()
        );
        assert!(pipeline.jobs.is_empty());
    }

    #[test]
    fn an_unpaused_dag_that_does_not_import_is_in_error_and_one_without_schedule_has_no_cron() {
        let mut broken = dag(ID, &["customer:acme"]);
        broken.has_import_errors = true;
        let pipeline = broken.into_pipeline(PipelineId::parse(ID).unwrap(), acme());
        assert_eq!(pipeline.status, PipelineStatus::Error);
        assert_eq!(pipeline.cron, None);
        assert_eq!(pipeline.name, ID);
    }

    fn run(state: &str) -> DagRun {
        serde_json::from_value(serde_json::json!({
            "dag_run_id": "manual__2026-11-29T09:00:01.000001+00:00",
            "dag_id": ID,
            "state": state,
            "run_after": "2026-11-29T08:57:18.539852Z",
            "queued_at": "2026-11-29T08:57:18.579337Z",
            "start_date": "2026-11-29T08:57:30Z",
            "end_date": if state == "failed" || state == "success" { serde_json::json!("2026-11-29T08:57:33Z") } else { serde_json::Value::Null },
            "conf": {"maestro": {"trigger_id": "t-1"}},
            "note": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_four_airflow_states_map_to_the_upper_case_statuses() {
        let id = PipelineId::parse(ID).unwrap();
        for (state, status) in [
            ("queued", RunStatus::Queued),
            ("running", RunStatus::Running),
            ("success", RunStatus::Success),
            ("failed", RunStatus::Failed),
        ] {
            assert_eq!(run(state).into_run(id.clone()).unwrap().status, status);
            assert_eq!(airflow_state(status), state);
        }
        let err = run("up_for_retry").into_run(id).unwrap_err();
        assert_eq!(err.kind(), domain::BackendErrorKind::Upstream);
    }

    #[test]
    fn run_times_are_the_trigger_and_the_last_move() {
        let run = run("success")
            .into_run(PipelineId::parse(ID).unwrap())
            .unwrap();
        assert_eq!(run.id.as_str(), "manual__2026-11-29T09:00:01.000001+00:00");
        assert_eq!(
            run.created_at,
            parse_time("2026-11-29T08:57:18.539852Z").unwrap()
        );
        assert_eq!(run.updated_at, parse_time("2026-11-29T08:57:33Z").unwrap());
        assert_eq!(run.trace, None);
    }

    #[test]
    fn a_failed_run_carries_a_trace() {
        let failed = run("failed")
            .into_run(PipelineId::parse(ID).unwrap())
            .unwrap();
        assert_eq!(failed.trace.as_deref(), Some(FAILED_TRACE));
        let mut noted = run("failed");
        noted.note = Some("disk full".to_owned());
        let noted = noted.into_run(PipelineId::parse(ID).unwrap()).unwrap();
        assert_eq!(noted.trace.as_deref(), Some("disk full"));
    }

    #[test]
    fn the_trigger_id_is_read_back_from_the_conf() {
        assert_eq!(run("queued").trigger_id(), Some("t-1"));
        let mut bare = run("queued");
        bare.conf = None;
        assert_eq!(bare.trigger_id(), None);
    }

    #[test]
    fn a_run_reads_its_conf_back_without_the_audit_block() {
        let mut with_parameters = run("queued");
        with_parameters.conf = Some(serde_json::json!({
            "date": "2024-12-18",
            "maestro": {"trigger_id": "t-1"},
        }));
        let read = with_parameters
            .into_run(PipelineId::parse(ID).unwrap())
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(read.conf.into_map()),
            serde_json::json!({"date": "2024-12-18"})
        );
        let only_ours = run("queued").into_run(PipelineId::parse(ID).unwrap());
        assert!(only_ours.unwrap().conf.is_empty());
        let mut odd = run("queued");
        odd.conf = Some(serde_json::json!("not an object"));
        assert!(
            odd.into_run(PipelineId::parse(ID).unwrap())
                .unwrap()
                .conf
                .is_empty()
        );
    }

    #[test]
    fn a_param_validation_error_names_the_parameter_and_only_the_failed_keyword() {
        // As Airflow 3.3.2 words it.
        let refusal = param_refusal(
            "Invalid input for param date: '2024-13-45' is not a 'date'\n\nFailed validating 'format' in schema:\n    {'type': 'string', 'format': 'date'}\n\nOn instance:\n    '2024-13-45'",
        )
        .unwrap();
        assert_eq!(refusal.parameter.as_deref(), Some("date"));
        assert_eq!(
            refusal.reason,
            "the value fails the parameter's \"format\" check"
        );

        let refusal = param_refusal("Invalid input for param date: No value passed").unwrap();
        assert_eq!(
            refusal.reason,
            "the parameter needs a value and has no default"
        );

        let refusal = param_refusal(
            "Invalid input for param n: 3 is less than 5\n\nFailed validating 'minimum' in schema",
        )
        .unwrap();
        assert_eq!(refusal.parameter.as_deref(), Some("n"));
        assert_eq!(
            refusal.reason,
            "the value fails the parameter's \"minimum\" check"
        );
    }

    #[test]
    fn an_odd_name_or_keyword_is_not_repeated() {
        for detail in [
            "Invalid input for param : 1 is not of type 'string'",
            "Invalid input for param a\u{202e}b: bad",
            "Invalid input for param a\u{7}b: bad",
            "Invalid input for param a'b: bad",
        ] {
            let refusal = param_refusal(detail).unwrap();
            assert_eq!(refusal.parameter, None, "{detail}");
        }
        let long = format!("Invalid input for param {}: bad", "p".repeat(101));
        assert_eq!(param_refusal(&long).unwrap().parameter, None);
        let fits = format!("Invalid input for param {}: bad", "p".repeat(100));
        assert!(param_refusal(&fits).unwrap().parameter.is_some());

        let refusal = param_refusal(
            "Invalid input for param d: x\nFailed validating 'format <script>' in schema",
        )
        .unwrap();
        assert_eq!(
            refusal.reason,
            "the value does not match the parameter's schema"
        );
    }

    #[test]
    fn other_details_are_no_param_refusal() {
        assert_eq!(
            param_refusal("Dag with dag_id: 'x' has import errors and cannot be triggered"),
            None
        );
        assert_eq!(param_refusal(""), None);
    }

    #[test]
    fn a_malformed_timestamp_does_not_parse() {
        let result: Result<DagRun, _> = serde_json::from_value(serde_json::json!({
            "dag_run_id": "r", "dag_id": ID, "state": "queued", "run_after": "yesterday",
        }));
        assert!(result.is_err());
    }
}
