//! `Idempotency-Key` on execute: the header, and execute run at most once
//! per customer and key, its first answer given again to repeats.
//!
//! | request with a key | answer |
//! | --- | --- |
//! | first | runs; a 200 or a final refusal (404, 400 paused) is kept |
//! | repeat, same pipeline, answer kept | the kept status and body, with `Idempotent-Replayed: true`; nothing runs |
//! | repeat, same pipeline, first still in flight | 409 `IdempotencyKeyInProgress`, `Retry-After`; nothing runs |
//! | repeat, another pipeline | 422 `IdempotencyKeyReused`; nothing runs |
//! | first answered 5xx or 429 | not kept: the next request with the key runs, as a retry (on Airflow it answers with the run the failed attempt made, if it made one); another pipeline is 422 |
//! | key not 1 to 255 visible ASCII characters | 400 `InvalidIdempotencyKey` |
//! | store unavailable | 503 `IdempotencyStoreUnavailable`; nothing runs |

use axum::{
    Json,
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use domain::{
    ExecuteError, IdempotencyError, IdempotencyKey, Idempotent, InvalidIdempotencyKey, PipelineId,
    RequestContext, Run, StoredOutcome,
};
use tracing::Instrument as _;

use crate::{
    AppState,
    dto::ExecuteResponse,
    error::{ApiError, ErrorChain},
};

/// The request header naming the logical request.
pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header marking an answer given again.
pub(crate) static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What a client is told to wait, in seconds, before it repeats a request
/// whose first is in flight: an execute takes well under a second unless
/// the backend is slow, and a repeat costs one store lookup.
const RETRY_AFTER_SECONDS: u32 = 1;

/// The largest answer kept; an execute answer is a few hundred bytes.
const MAX_KEPT_BODY: usize = 64 * 1024;

/// The optional `Idempotency-Key` of a request, checked: 1 to 255 visible
/// ASCII characters, sent once. Anything else is refused with 400
/// `InvalidIdempotencyKey`.
#[derive(Debug)]
pub(crate) struct IdempotencyKeyHeader(pub(crate) Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(&IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        // Two keys name no one request.
        if values.next().is_some() {
            return Err(invalid_key());
        }
        let raw = std::str::from_utf8(value.as_bytes()).map_err(|_| invalid_key())?;
        let key = IdempotencyKey::parse(raw).map_err(|_| invalid_key())?;
        Ok(Self(Some(key)))
    }
}

fn invalid_key() -> ApiError {
    ApiError::envelope(
        StatusCode::BAD_REQUEST,
        "InvalidIdempotencyKey",
        InvalidIdempotencyKey.to_string(),
    )
}

/// Executes the caller's pipeline at most once for `key`, and answers:
/// the fresh answer, the kept one again, or a refusal (see the module's
/// table).
///
/// The execute runs in a task of its own, so that it finishes and its
/// answer is kept even when the client gives up waiting: the client's retry
/// then gets that answer instead of a second run.
pub(crate) async fn execute_once(
    state: &AppState,
    ctx: RequestContext,
    id: PipelineId,
    key: IdempotencyKey,
) -> Response {
    let task = {
        let state = state.clone();
        async move {
            let idempotency = state.idempotency();
            idempotency
                .execute(state.service(), &ctx, &id, &key, |result| {
                    render(&state, result)
                })
                .await
        }
    };
    let answer = match tokio::spawn(task.instrument(tracing::Span::current())).await {
        Ok(answer) => answer,
        Err(err) => {
            // A panic in the use case: the claim is left to expire, since
            // whether a run started is unknown.
            tracing::error!(error = %err, "idempotent execute did not finish");
            return ApiError::internal().into_response();
        }
    };
    match answer {
        Ok(Idempotent::Ran {
            outcome,
            record_error,
        }) => {
            if let Some(err) = record_error {
                tracing::warn!(
                    error = %ErrorChain(&err),
                    "answer of an execute with an Idempotency-Key not recorded; its claim expires on its own"
                );
            }
            respond(outcome, false)
        }
        Ok(Idempotent::Replayed(outcome)) => respond(outcome, true),
        Err(err @ IdempotencyError::InFlight) => {
            let mut response = ApiError::envelope(
                StatusCode::CONFLICT,
                "IdempotencyKeyInProgress",
                err.to_string(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
        Err(err @ IdempotencyError::KeyReused) => ApiError::envelope(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IdempotencyKeyReused",
            err.to_string(),
        )
        .into_response(),
        Err(IdempotencyError::Store(err)) => {
            // Running without the store could run a retry twice, the very
            // thing the key is for: refuse instead, and let the client retry.
            tracing::error!(error = %ErrorChain(&err), "idempotency store failed");
            ApiError::envelope(
                StatusCode::SERVICE_UNAVAILABLE,
                "IdempotencyStoreUnavailable",
                "Idempotency keys cannot be checked right now. Retry later.",
            )
            .into_response()
        }
    }
}

/// The answer to an execute, as kept: exactly what execute without a key
/// answers.
async fn render(state: &AppState, result: Result<Run, ExecuteError>) -> StoredOutcome {
    let response = match result {
        Ok(run) => {
            tracing::Span::current().record("run_id", run.id.as_str());
            state.metrics().run_triggered(state.backend());
            Json(ExecuteResponse::new(&run)).into_response()
        }
        Err(err) => ApiError::from(err).into_response(),
    };
    let status = response.status().as_u16();
    match axum::body::to_bytes(response.into_body(), MAX_KEPT_BODY).await {
        Ok(body) => StoredOutcome {
            status,
            body: body.to_vec(),
        },
        Err(err) => {
            // A 5xx is never kept, so the client's retry runs again.
            tracing::error!(error = %err, "execute answer could not be read back");
            StoredOutcome {
                status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                body: br#"{"detail":{"status":false,"exception_type":"InternalError","traceback":"Internal server error","data":null}}"#.to_vec(),
            }
        }
    }
}

/// The kept answer as a response; `replayed` marks one given again.
fn respond(outcome: StoredOutcome, replayed: bool) -> Response {
    let Ok(status) = StatusCode::from_u16(outcome.status) else {
        tracing::error!(status = outcome.status, "kept answer has no valid status");
        return ApiError::internal().into_response();
    };
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        outcome.body,
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    response
}

#[cfg(test)]
mod tests;
