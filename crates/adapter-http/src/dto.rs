//! The JSON bodies of successful answers, field for field as the contract
//! has them.

use domain::{Pipeline, PipelineStatus, PipelineSummary, Run, RunStatus, format_timestamp};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of execute, pause and unpause: `{"pipeline_id": "..."}`.
/// `customer_id` and any other field are ignored.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only documents the request; the extractor reads it.
pub(crate) struct PipelineIdRequest {
    /// The pipeline's UUID, hyphenated or underscored, in any letter case.
    #[schema(example = "1b33ad2f-33d3-4837-9eeb-83c82c8b909d")]
    pipeline_id: String,
}

/// `200` of execute.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecuteResponse {
    /// Always `true`.
    status: bool,
    data: ExecuteData,
}

/// What execute triggered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExecuteData {
    #[schema(example = "Pipeline execution triggered successfully")]
    message: &'static str,
    /// The normalized pipeline id.
    #[schema(example = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d")]
    pipeline_id: String,
    /// The new run's id, to watch it with the run routes.
    #[schema(example = "manual__2024-12-18T10:30:00.000000+00:00")]
    run_id: String,
}

impl ExecuteResponse {
    pub(crate) fn new(run: &Run) -> Self {
        Self {
            status: true,
            data: ExecuteData {
                message: "Pipeline execution triggered successfully",
                pipeline_id: run.pipeline_id.to_string(),
                run_id: run.id.to_string(),
            },
        }
    }
}

/// `200` of pause and unpause.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionResponse {
    /// Always `true`.
    status: bool,
    data: ActionData,
}

/// What pause or unpause did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionData {
    #[schema(example = "Pipeline paused successfully")]
    message: &'static str,
    /// The normalized pipeline id.
    #[schema(example = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d")]
    pipeline_id: String,
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
    /// Always `true`.
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
    /// The normalized id.
    #[schema(example = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d")]
    id: String,
    name: String,
    description: String,
    /// The cron schedule, or null for a pipeline that only runs on demand.
    #[schema(example = "0 6 * * *")]
    cron: Option<String>,
    customer_id: String,
    status: PipelineStatusBody,
    /// RFC 3339, UTC.
    #[schema(example = "2024-12-01T09:00:00.000000+00:00")]
    created_at: String,
    /// RFC 3339, UTC.
    #[schema(example = "2024-12-18T10:30:00.000000+00:00")]
    updated_at: String,
    /// The pipeline's jobs, passed through as the backend has them.
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
    #[schema(example = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d")]
    pipeline_id: String,
    customer_id: String,
    name: String,
    description: String,
    cron: Option<String>,
    /// The newest run's status, or null when it never ran.
    last_status: Option<RunStatusBody>,
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
    #[schema(example = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d")]
    pipeline_id: String,
    last_status: RunStatusBody,
    /// RFC 3339, UTC.
    #[schema(example = "2024-12-18T10:30:00.000000+00:00")]
    created_at: String,
    /// RFC 3339, UTC.
    #[schema(example = "2024-12-18T10:31:00.000000+00:00")]
    updated_at: String,
    /// The error text of a failed run, else null.
    trace: Option<String>,
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
        }
    }
}

/// `200` of `/health` and `/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusBody {
    #[schema(example = "ok")]
    pub(crate) status: &'static str,
}
