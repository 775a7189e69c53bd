//! The middleware every request passes through: a request id, a tracing
//! span, one access-log line, and the request metrics.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::{Instrument, field::Empty};

use crate::AppState;

/// The `X-Request-Id` header.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's correlation id: the client's `X-Request-Id` when it is
/// usable, a fresh UUID otherwise.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

impl RequestId {
    const MAX_LEN: usize = 128;

    /// The client's id if it is 1 to 128 visible ASCII characters, so that
    /// it is safe to log and to pass on; a new one otherwise.
    fn from_request(req: &Request) -> Self {
        let client = req
            .headers()
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= Self::MAX_LEN
                    && id.bytes().all(|b| b.is_ascii_graphic())
            });
        Self(client.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned))
    }
}

/// Wraps a request in its span, logs it once when answered, counts it, and
/// echoes its request id.
pub(crate) async fn observe(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = RequestId::from_request(&req);
    // Route templates, not raw paths, so that labels and log fields stay a
    // closed set; requests that match no route share one label.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        %method,
        route = %route,
        request_id = %request_id.0,
        customer = Empty,
        pipeline_id = Empty,
        run_id = Empty,
    );
    req.extensions_mut().insert(request_id.clone());

    let mut response = next.run(req).instrument(span.clone()).await;

    let latency = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics()
        .observe_request(&route, method.as_str(), status, latency);
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            "answered"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}
