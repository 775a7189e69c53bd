//! Every error the API answers with, and how domain errors map onto the
//! contract's statuses, exception types and texts.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use domain::{
    BackendError, BackendErrorKind, CancelRunError, ExecuteError, GetPipelineError, GetRunError,
    InvalidConf, ListRunsError, PipelineId, RunId, SetPausedError,
};
use serde::Serialize;
use utoipa::{
    ToSchema,
    openapi::{Object, ObjectBuilder, Type},
};

/// The error envelope every error but a few framework-level ones uses:
/// `{"detail": {"status": false, "exception_type", "traceback", "data": null}}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorEnvelope {
    detail: ErrorDetail,
}

/// The inside of the error envelope. Despite its name, `traceback` holds a
/// human message, never a stack trace.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    #[schema(schema_with = always_false)]
    status: bool,
    /// The error's name, which clients branch on (`PipelineNotFound`, ...).
    #[schema(example = "PipelineNotFound")]
    exception_type: &'static str,
    /// The human message, kept to the contract's exact text.
    #[schema(example = "Pipeline with id 1b33ad2f_33d3_4837_9eeb_83c82c8b909d not found")]
    traceback: String,
    #[schema(schema_with = always_null, required = true)]
    data: Option<()>,
}

/// A bare `{"detail": "..."}` body, used where the original service's
/// framework answered so (`pipeline_id is required`, `Not authenticated`,
/// `Not Found`, `Method Not Allowed`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PlainDetail {
    /// One of the fixed texts.
    #[schema(schema_with = plain_detail_texts)]
    detail: &'static str,
}

/// An error body of either shape, where one status has both: the envelope,
/// or a bare `{"detail": "..."}` (400 `pipeline_id is required` beside the
/// envelope's 400s; 401 `Not authenticated` beside `InvalidToken`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only documents the answers; `ApiError` writes them.
pub(crate) enum ErrorBody {
    /// The error envelope.
    Envelope(ErrorEnvelope),
    /// A bare `{"detail": "..."}`.
    Plain(PlainDetail),
}

/// The texts a [`PlainDetail`] holds, each written by one `ApiError`
/// constructor.
const PLAIN_DETAIL_TEXTS: [&str; 4] = [
    "pipeline_id is required",
    "Not authenticated",
    "Not Found",
    "Method Not Allowed",
];

fn plain_detail_texts() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(PLAIN_DETAIL_TEXTS))
        .build()
}

fn always_false() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([false]))
        .description(Some("Always `false`."))
        .build()
}

fn always_null() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Null)
        .description(Some("Always `null`."))
        .build()
}

#[derive(Debug)]
enum Body {
    Envelope {
        exception_type: &'static str,
        traceback: String,
    },
    Plain(&'static str),
}

/// An error answer: a status, a JSON body and the headers that go with it.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Body,
    www_authenticate: Option<&'static str>,
    retry_after: Option<u64>,
    /// Whether the connection is closed after this answer.
    close_connection: bool,
}

impl ApiError {
    /// An answer with the contract's error envelope.
    pub(crate) fn envelope(
        status: StatusCode,
        exception_type: &'static str,
        traceback: impl Into<String>,
    ) -> Self {
        Self {
            status,
            body: Body::Envelope {
                exception_type,
                traceback: traceback.into(),
            },
            www_authenticate: None,
            retry_after: None,
            close_connection: false,
        }
    }

    fn plain(status: StatusCode, detail: &'static str) -> Self {
        Self {
            status,
            body: Body::Plain(detail),
            www_authenticate: None,
            retry_after: None,
            close_connection: false,
        }
    }

    /// 400 `{"detail": "pipeline_id is required"}`: the field is missing,
    /// null or empty.
    pub(crate) fn pipeline_id_required() -> Self {
        Self::plain(StatusCode::BAD_REQUEST, "pipeline_id is required")
    }

    /// 400 `InvalidPipelineId`.
    pub(crate) fn invalid_pipeline_id() -> Self {
        Self::envelope(
            StatusCode::BAD_REQUEST,
            "InvalidPipelineId",
            "pipeline_id must be a UUID, hyphenated or underscored",
        )
    }

    /// 400 `InvalidRequestBody`: malformed JSON, not an object, a wrong type.
    pub(crate) fn invalid_body(message: impl Into<String>) -> Self {
        Self::envelope(StatusCode::BAD_REQUEST, "InvalidRequestBody", message)
    }

    /// 400 `InvalidConf`: the execute body's `conf` cannot be a run's
    /// parameters.
    pub(crate) fn invalid_conf(err: InvalidConf) -> Self {
        let message = match err {
            InvalidConf::NotAnObject { found } => {
                format!("conf must be a JSON object, not {found}")
            }
            InvalidConf::TooLarge { bytes, max } => {
                format!("conf must be at most {max} bytes as compact JSON; it is {bytes}")
            }
            InvalidConf::ReservedKey { key } => {
                format!("conf must not use the top-level key \"{key}\", which is reserved")
            }
            other => format!("conf is not usable: {other}"),
        };
        Self::envelope(StatusCode::BAD_REQUEST, "InvalidConf", message)
    }

    /// 429 `TooManyWaits`: the customer has `limit` requests waiting on
    /// runs already.
    pub(crate) fn too_many_waits(limit: usize) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::envelope(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyWaits",
                format!(
                    "Too many requests waiting on runs: at most {limit} at a time. Retry without wait_seconds, or later."
                ),
            )
        }
    }

    /// 429 `TooManyStreams`: the customer has `limit` event streams open.
    pub(crate) fn too_many_streams(limit: usize) -> Self {
        Self {
            retry_after: Some(5),
            ..Self::envelope(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyStreams",
                format!("Too many event streams open: at most {limit} at a time."),
            )
        }
    }

    /// 400 `TooManyWebhooks`: the customer has `limit` webhooks.
    pub(crate) fn too_many_webhooks(limit: usize) -> Self {
        Self::envelope(
            StatusCode::BAD_REQUEST,
            "TooManyWebhooks",
            format!("A customer may have at most {limit} webhooks. Delete one first."),
        )
    }

    /// 400 `InvalidWebhookUrl`, saying what is wrong with it.
    pub(crate) fn invalid_webhook_url(err: &domain::InvalidWebhookUrl) -> Self {
        let message = match err {
            domain::InvalidWebhookUrl::Scheme => "url must start with https://",
            domain::InvalidWebhookUrl::Malformed => {
                "url must name a host, without user information or spaces"
            }
            domain::InvalidWebhookUrl::TooLong => "url must be at most 2048 characters",
            domain::InvalidWebhookUrl::ForbiddenAddress => {
                "url must not name or resolve to a private, loopback, link-local or unspecified address"
            }
            _ => "url cannot be a webhook's",
        };
        Self::envelope(StatusCode::BAD_REQUEST, "InvalidWebhookUrl", message)
    }

    /// 404 `WebhookNotFound`.
    pub(crate) fn webhook_not_found(id: &str) -> Self {
        Self::envelope(
            StatusCode::NOT_FOUND,
            "WebhookNotFound",
            format!("Webhook with id {id} not found"),
        )
    }

    /// 400 `InvalidHeader`: a request header that cannot be used.
    pub(crate) fn invalid_header(message: impl Into<String>) -> Self {
        Self::envelope(StatusCode::BAD_REQUEST, "InvalidHeader", message)
    }

    /// 503 `EventStoreUnavailable`: where events or webhooks are kept does
    /// not answer; the cause goes to the log.
    pub(crate) fn feed_unavailable(err: &domain::StorageError) -> Self {
        tracing::error!(error = %ErrorChain(err), "event or webhook store failed");
        Self::envelope(
            StatusCode::SERVICE_UNAVAILABLE,
            "EventStoreUnavailable",
            "Events and webhooks cannot be reached right now. Retry later.",
        )
    }

    /// `err`, a way of failing without an answer of its own: 500.
    pub(crate) fn unmapped(err: &(dyn std::error::Error + 'static)) -> Self {
        unmapped(err)
    }

    /// 400 `InvalidQueryParameter`.
    pub(crate) fn invalid_query(message: impl Into<String>) -> Self {
        Self::envelope(StatusCode::BAD_REQUEST, "InvalidQueryParameter", message)
    }

    /// 400 `InvalidPath`: the path could not be decoded.
    pub(crate) fn invalid_path() -> Self {
        Self::envelope(
            StatusCode::BAD_REQUEST,
            "InvalidPath",
            "The request path could not be decoded",
        )
    }

    /// 401 `{"detail": "Not authenticated"}`: no bearer credential.
    pub(crate) fn not_authenticated() -> Self {
        Self {
            www_authenticate: Some("Bearer"),
            ..Self::plain(StatusCode::UNAUTHORIZED, "Not authenticated")
        }
    }

    /// 401 `InvalidToken`: a credential that does not verify. Why it failed
    /// goes to the log, never to the client.
    pub(crate) fn invalid_token() -> Self {
        Self {
            www_authenticate: Some("Bearer error=\"invalid_token\""),
            ..Self::envelope(
                StatusCode::UNAUTHORIZED,
                "InvalidToken",
                "Could not validate credentials",
            )
        }
    }

    /// 429 `RateLimited`, with `Retry-After` in whole seconds.
    pub(crate) fn rate_limited(retry_after_seconds: u64) -> Self {
        Self {
            retry_after: Some(retry_after_seconds),
            ..Self::envelope(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimited",
                format!("Too many requests. Retry after {retry_after_seconds} s."),
            )
        }
    }

    /// 404 `{"detail": "Not Found"}`: no such route.
    pub(crate) fn route_not_found() -> Self {
        Self::plain(StatusCode::NOT_FOUND, "Not Found")
    }

    /// 405 `{"detail": "Method Not Allowed"}`.
    pub(crate) fn method_not_allowed() -> Self {
        Self::plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
    }

    /// 413 `PayloadTooLarge`.
    pub(crate) fn payload_too_large(limit: usize) -> Self {
        Self::envelope(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("The request body is larger than {limit} bytes"),
        )
    }

    /// 415 `UnsupportedMediaType`.
    pub(crate) fn unsupported_media_type() -> Self {
        Self::envelope(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Expected a request with Content-Type: application/json",
        )
    }

    /// 408 `RequestTimeout`: the request body did not arrive within the
    /// body timeout. The connection is closed after the answer, since the
    /// rest of the body may still come.
    pub(crate) fn body_timeout(timeout: std::time::Duration) -> Self {
        Self {
            close_connection: true,
            ..Self::envelope(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                format!(
                    "The request body did not arrive within {} s.",
                    seconds(timeout)
                ),
            )
        }
    }

    /// 503 `ServiceTimeout`: the request was not answered within the
    /// per-request timeout. The service was slow, not the client: 503, as
    /// for any other moment the service cannot answer, rather than 408.
    pub(crate) fn service_timeout(timeout: std::time::Duration) -> Self {
        Self::envelope(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceTimeout",
            format!(
                "The request was not answered within {} s. Retry later.",
                seconds(timeout)
            ),
        )
    }

    /// 500 `InternalError`, for the bugs we did not foresee; the cause is
    /// logged where it happened.
    pub(crate) fn internal() -> Self {
        Self::envelope(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "Internal server error",
        )
    }

    fn bad_request(exception_type: &'static str, message: &'static str) -> Self {
        Self::envelope(StatusCode::BAD_REQUEST, exception_type, message)
    }
}

impl From<BackendError> for ApiError {
    fn from(err: BackendError) -> Self {
        // The cause chain names upstream URLs and answers: it goes to the log
        // only, and the client gets a fixed message for the kind.
        tracing::error!(error = %ErrorChain(&err), "backend call failed");
        let (status, exception_type, message) = match err.kind() {
            BackendErrorKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UpstreamUnavailable",
                "The pipeline backend is unavailable. Retry later.",
            ),
            BackendErrorKind::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UpstreamTimeout",
                "The pipeline backend did not answer in time. Retry later.",
            ),
            // `Upstream`, and any kind the domain adds later.
            _ => (
                StatusCode::BAD_GATEWAY,
                "UpstreamError",
                "The pipeline backend answered unexpectedly.",
            ),
        };
        Self::envelope(status, exception_type, message)
    }
}

// The contract's texts. The domain's errors carry the ids; the words clients
// match on are kept here, and only here.

fn pipeline_not_found(id: &PipelineId) -> ApiError {
    ApiError::envelope(
        StatusCode::NOT_FOUND,
        "PipelineNotFound",
        format!("Pipeline with id {id} not found"),
    )
}

fn run_not_found(pipeline_id: &PipelineId, run_id: &RunId) -> ApiError {
    ApiError::envelope(
        StatusCode::NOT_FOUND,
        "PipelineRunNotFound",
        format!("Pipeline run with id {run_id} not found for pipeline {pipeline_id}"),
    )
}

/// The answer to a way of failing that the domain added after this mapping
/// was written (its errors are `#[non_exhaustive]`): a 500, and the error
/// in the log so that it gets its own mapping.
pub(crate) fn unmapped(err: &(dyn std::error::Error + 'static)) -> ApiError {
    tracing::error!(error = %ErrorChain(err), "domain error without an HTTP mapping");
    ApiError::internal()
}

impl From<ExecuteError> for ApiError {
    fn from(err: ExecuteError) -> Self {
        match err {
            ExecuteError::NotFound(id) => pipeline_not_found(&id),
            ExecuteError::Paused(_) => Self::bad_request(
                "PipelinePaused",
                "Cannot execute paused pipeline. Use /pipeline/unpause first.",
            ),
            ExecuteError::QueueFull { limit, .. } => Self::envelope(
                StatusCode::TOO_MANY_REQUESTS,
                "PipelineQueueFull",
                format!(
                    "Pipeline queue is full ({limit} runs waiting). Retry when earlier runs have finished."
                ),
            ),
            ExecuteError::ConfRefused {
                parameter, reason, ..
            } => Self::envelope(
                StatusCode::BAD_REQUEST,
                "InvalidConf",
                match parameter {
                    Some(parameter) => {
                        format!("The pipeline refused the parameter {parameter}: {reason}")
                    }
                    None => format!("The pipeline refused the parameters: {reason}"),
                },
            ),
            ExecuteError::Backend(err) => err.into(),
            other => unmapped(&other),
        }
    }
}

impl From<CancelRunError> for ApiError {
    fn from(err: CancelRunError) -> Self {
        match err {
            CancelRunError::PipelineNotFound(id) => pipeline_not_found(&id),
            CancelRunError::RunNotFound {
                pipeline_id,
                run_id,
            } => run_not_found(&pipeline_id, &run_id),
            CancelRunError::AlreadyFinished { run_id, status, .. } => Self::envelope(
                StatusCode::BAD_REQUEST,
                "PipelineRunAlreadyFinished",
                format!("Pipeline run {run_id} already finished with status {status}"),
            ),
            CancelRunError::Backend(err) => err.into(),
            other => unmapped(&other),
        }
    }
}

impl From<SetPausedError> for ApiError {
    fn from(err: SetPausedError) -> Self {
        match err {
            SetPausedError::NotFound(id) => pipeline_not_found(&id),
            SetPausedError::AlreadyPaused(_) => {
                Self::bad_request("PipelineAlreadyPaused", "Pipeline is already paused")
            }
            SetPausedError::NotPaused(_) => {
                Self::bad_request("PipelineNotPaused", "Pipeline is not paused")
            }
            SetPausedError::Backend(err) => err.into(),
            other => unmapped(&other),
        }
    }
}

impl From<GetPipelineError> for ApiError {
    fn from(err: GetPipelineError) -> Self {
        match err {
            GetPipelineError::NotFound(id) => pipeline_not_found(&id),
            GetPipelineError::Backend(err) => err.into(),
            other => unmapped(&other),
        }
    }
}

impl From<ListRunsError> for ApiError {
    fn from(err: ListRunsError) -> Self {
        match err {
            ListRunsError::NotFound(id) => pipeline_not_found(&id),
            ListRunsError::Backend(err) => err.into(),
            other => unmapped(&other),
        }
    }
}

impl From<GetRunError> for ApiError {
    fn from(err: GetRunError) -> Self {
        match err {
            GetRunError::PipelineNotFound(id) => pipeline_not_found(&id),
            GetRunError::RunNotFound {
                pipeline_id,
                run_id,
            } => run_not_found(&pipeline_id, &run_id),
            GetRunError::Backend(err) => err.into(),
            other => unmapped(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Body::Envelope {
                exception_type,
                traceback,
            } => (
                self.status,
                Json(ErrorEnvelope {
                    detail: ErrorDetail {
                        status: false,
                        exception_type,
                        traceback,
                        data: None,
                    },
                }),
            )
                .into_response(),
            Body::Plain(detail) => (self.status, Json(PlainDetail { detail })).into_response(),
        };
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// A duration in seconds as people write it: `30`, `0.5`.
fn seconds(duration: std::time::Duration) -> String {
    if duration.subsec_nanos() == 0 {
        duration.as_secs().to_string()
    } else {
        duration.as_secs_f64().to_string()
    }
}

/// Displays an error with its whole cause chain, for the log.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
