//! `Idempotency-Key` on execute: the header, and execute run at most once
//! per customer and key, its first answer given again to repeats. The rules
//! are `domain::Idempotency`'s; `docs/idempotency.md` holds their table.

use axum::{
    Json,
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use domain::{IdempotencyError, IdempotencyKey, Idempotent, RequestContext, TriggerRequest};
use tracing::Instrument as _;

use crate::{
    AppState,
    dto::ExecuteResponse,
    error::{ApiError, ErrorChain},
    routes::execute_answer,
};

/// The request header naming the logical request.
pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header marking an answer given again.
pub(crate) static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What a client is told to wait, in seconds, before it repeats a request
/// whose first is in flight: an execute takes well under a second unless
/// the backend is slow, and a repeat costs one store lookup.
const RETRY_AFTER_SECONDS: u32 = 1;

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
        "Idempotency-Key must be 1 to 255 visible ASCII characters",
    )
}

/// Executes the caller's pipeline at most once for `key`, and answers:
/// the fresh answer, the kept one again, or a refusal (see the module's
/// table).
///
/// The execute runs in a task of its own, so that it finishes and its
/// outcome is kept even when the client gives up waiting: the client's
/// retry then gets that outcome instead of a second run.
pub(crate) async fn execute_once(
    state: &AppState,
    ctx: RequestContext,
    key: IdempotencyKey,
    request: TriggerRequest,
) -> Response {
    let task = {
        let state = state.clone();
        async move {
            state
                .idempotency()
                .execute(state.service(), &ctx, &key, request)
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
                    "outcome of an execute with an Idempotency-Key not recorded; its claim expires on its own"
                );
            }
            execute_answer(state, outcome)
        }
        Ok(Idempotent::Replayed(outcome)) => {
            // Rendered as the first answer was, from the same outcome, so
            // that the client gets the same bytes; it counts as no new run.
            let mut response = match outcome {
                Ok(run) => Json(ExecuteResponse::new(&run)).into_response(),
                Err(err) => ApiError::from(err).into_response(),
            };
            response.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
            response
        }
        Err(IdempotencyError::InFlight) => {
            let mut response = ApiError::envelope(
                StatusCode::CONFLICT,
                "IdempotencyKeyInProgress",
                "A request with this Idempotency-Key is still in progress. Retry later.",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
        Err(IdempotencyError::KeyReused) => ApiError::envelope(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IdempotencyKeyReused",
            "This Idempotency-Key was already used for another pipeline. Use a new key.",
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
        Err(other) => {
            tracing::error!(error = %ErrorChain(&other), "idempotency error without an HTTP mapping");
            ApiError::internal().into_response()
        }
    }
}

#[cfg(test)]
mod tests;
