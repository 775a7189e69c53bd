//! `Idempotency-Key` on execute: the header, and execute run at most once
//! per customer and key, its first answer given again to repeats. The rules
//! are `domain::Idempotency`'s; `docs/idempotency.md` holds their table.

use std::{
    panic::{self, AssertUnwindSafe},
    task::Poll,
};

use axum::{
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use domain::{IdempotencyError, IdempotencyKey, Idempotent, RequestContext, TriggerRequest};

use crate::{
    AppState,
    error::{ApiError, ErrorChain},
    request_log,
    routes::execute_answer,
    run_json,
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
/// The execute finishes and its outcome is kept even when the client gives
/// up waiting ([`to_the_end`]): the client's retry then gets that outcome
/// instead of a second run.
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
    let Some(answer) = to_the_end(request_log::carried(task)).await else {
        // A panic in the use case: the claim is left to expire, since
        // whether a run started is unknown.
        return ApiError::internal().into_response();
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
                Ok(run) => run_json::answer(run_json::execute(&run)),
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

/// Runs `task` to its end whether or not its caller goes on waiting, and
/// gives its output; `None` when it panicked.
///
/// It is polled here first, and handed to a task of its own only when it
/// has to wait: an execute on the embedded backend finishes at its first
/// poll and then costs no task, one that waits on an engine goes on when
/// its client is gone. (Moved into the task, it is polled again there at
/// once, with that task's waker.)
async fn to_the_end<F>(task: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut task = Box::pin(task);
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(panic::catch_unwind(AssertUnwindSafe(|| {
            task.as_mut().poll(cx)
        })))
    })
    .await;
    match first {
        Ok(Poll::Ready(output)) => Some(output),
        Ok(Poll::Pending) => match tokio::spawn(task).await {
            Ok(output) => Some(output),
            Err(err) => {
                tracing::error!(error = %err, "idempotent execute did not finish");
                None
            }
        },
        Err(_) => {
            tracing::error!("idempotent execute panicked");
            None
        }
    }
}

#[cfg(test)]
mod tests;
