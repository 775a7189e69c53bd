//! The HTTP side of the backend: one pooled client, the bearer token on
//! every request, one renewal and retry when Airflow rejects the token, and
//! failures translated into [`BackendError`]s that name no secret.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use domain::{BackendError, Clock, RequestContext, Timestamp};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::token::{Endpoint, Tokens};

/// The largest answer read: a page of 1,000 DAGs is a few MiB, and a
/// misbehaving upstream must not exhaust memory.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Everything but RFC 3986's unreserved characters is escaped in a path
/// segment, so that run ids (`manual__…+00:00`) and any odd DAG id reach
/// Airflow as one segment, unchanged.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment, percent-encoded.
///
/// `.` and `..` stay what they are (escaped as `%2E` they would still be
/// dot segments to a URL parser): callers never pass them.
pub(crate) fn segment(raw: &str) -> String {
    utf8_percent_encode(raw, SEGMENT).to_string()
}

/// The pooled HTTP client, where Airflow is, the token to show it, and the
/// backend's one clock (the tokens' ages are measured on it).
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    tokens: Tokens,
    clock: Arc<dyn Clock>,
}

/// One request to Airflow.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    method: Method,
    /// The path below the base URL, segments already encoded.
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
    /// The request the call serves, whose id and trace context it passes on.
    ctx: Option<&'a RequestContext>,
}

impl<'a> Call<'a> {
    /// A request with no query and no body, for the request `ctx` serves.
    pub(crate) fn new(method: Method, path: String, ctx: Option<&'a RequestContext>) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
            ctx,
        }
    }

    /// Adds a query parameter; repeat it for a list.
    #[must_use]
    pub(crate) fn query(mut self, name: &'static str, value: impl ToString) -> Self {
        self.query.push((name, value.to_string()));
        self
    }

    /// Sets the JSON body.
    #[must_use]
    pub(crate) fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    /// The request id passed on to Airflow, for the log.
    pub(crate) fn request_id(&self) -> Option<&'a str> {
        self.ctx.and_then(RequestContext::request_id)
    }

    /// The method and path, for the log.
    pub(crate) fn what(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Airflow's answer, read in full.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    body: Bytes,
    what: String,
}

impl Answer {
    /// The body as `T`.
    ///
    /// Errors: an upstream error naming the call when the body does not
    /// parse; the body itself is not quoted.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, BackendError> {
        serde_json::from_slice(&self.body).map_err(|err| {
            BackendError::upstream(format!(
                "{}: answered {} with a body that does not parse",
                self.what, self.status
            ))
            .with_source(err)
        })
    }

    /// The `detail` text of an error answer (`{"detail": "..."}`), if it
    /// has one. For the backend to read, never to pass on.
    pub(crate) fn detail(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body.get("detail")?.as_str().map(str::to_owned)
    }

    /// The body of a 200 as `T`, `None` for a 404, and any other status
    /// as unexpected.
    pub(crate) fn found<T: DeserializeOwned>(&self) -> Result<Option<T>, BackendError> {
        match self.status {
            StatusCode::OK => self.json().map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected()),
        }
    }

    /// The error for a status the caller did not expect.
    pub(crate) fn unexpected(&self) -> BackendError {
        BackendError::upstream(format!("{}: answered {}", self.what, self.status))
    }

    /// Whether Airflow refused the token itself rather than the action:
    /// 401 for a missing or expired token, and 403 `Invalid JWT token` for
    /// one signed with a key it no longer has (an Airflow restarted with a
    /// generated secret). A plain 403 is a permission the account lacks,
    /// which a new token would not fix.
    fn rejects_token(&self) -> bool {
        match self.status {
            StatusCode::UNAUTHORIZED => true,
            StatusCode::FORBIDDEN => serde_json::from_slice::<serde_json::Value>(&self.body)
                .ok()
                .and_then(|body| {
                    body.get("detail")?
                        .as_str()
                        .map(|d| d == "Invalid JWT token")
                })
                .unwrap_or(false),
            _ => false,
        }
    }
}

impl Http {
    /// A client for the Airflow at `base` (no trailing slash), every request
    /// bounded by `timeout`.
    pub(crate) fn new(
        base: String,
        tokens: Tokens,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Airflow's API server (uvicorn) closes idle connections after
            // 5 s; dropping them at 4 s keeps a request from racing that
            // close on a connection taken from the pool.
            .pool_idle_timeout(Duration::from_secs(4))
            // A redirect is not part of Airflow's API: it is answered as an
            // unexpected status rather than followed with the token.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("maestro/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            base,
            tokens,
            clock,
        })
    }

    /// The base URL, for the log.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The current instant on the backend's clock.
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The backend's clock, for the log.
    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// Replaces the clock. Tokens cached so far keep their stamps, which
    /// the new clock may find in its future: those count as expired.
    pub(crate) fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    fn endpoint<'a>(&'a self, ctx: Option<&'a RequestContext>) -> Endpoint<'a> {
        Endpoint {
            client: &self.client,
            base: &self.base,
            ctx,
            clock: &*self.clock,
        }
    }

    /// Sends `call` with the bearer token. When Airflow rejects the token,
    /// the token is renewed once (shared with every other request that saw
    /// the same rejection) and the call is sent again.
    ///
    /// Errors: the transport failing, or Airflow rejecting the token after
    /// the renewal (or a fixed token, which cannot be renewed).
    pub(crate) async fn send(&self, call: &Call<'_>) -> Result<Answer, BackendError> {
        let endpoint = self.endpoint(call.ctx);
        let bearer = self.tokens.bearer(endpoint).await?;
        let answer = self.send_with(call, Some(&bearer.header)).await?;
        if !answer.rejects_token() {
            return Ok(answer);
        }
        if !self.tokens.renewable() {
            return Err(BackendError::upstream(format!(
                "{}: Airflow rejected the configured token ({})",
                answer.what, answer.status
            )));
        }
        let Some(renewed) = self.tokens.renew(bearer.generation, endpoint).await? else {
            return Err(answer.unexpected());
        };
        let answer = self.send_with(call, Some(&renewed.header)).await?;
        if answer.rejects_token() {
            return Err(BackendError::upstream(format!(
                "{}: Airflow rejected a token it had just issued ({})",
                answer.what, answer.status
            )));
        }
        Ok(answer)
    }

    /// Sends `call` without a token, for Airflow's open endpoints.
    pub(crate) async fn send_anonymous(&self, call: &Call<'_>) -> Result<Answer, BackendError> {
        self.send_with(call, None).await
    }

    async fn send_with(
        &self,
        call: &Call<'_>,
        bearer: Option<&HeaderValue>,
    ) -> Result<Answer, BackendError> {
        let what = call.what();
        let mut request = self
            .client
            .request(call.method.clone(), format!("{}{}", self.base, call.path));
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some(bearer) = bearer {
            request = request.header(reqwest::header::AUTHORIZATION, bearer.clone());
        }
        let response = pass_on(request, call.ctx)
            .send()
            .await
            .map_err(|err| transport_error(err, &what))?;
        let status = response.status();
        let body = read_body(response, &what).await?;
        Ok(Answer { status, body, what })
    }
}

/// Adds what every call passes on from the request it serves: its id, and
/// its place in its trace (W3C `traceparent`, naming Maestro's span as the
/// parent, and the caller's `tracestate`).
pub(crate) fn pass_on(
    mut request: reqwest::RequestBuilder,
    ctx: Option<&RequestContext>,
) -> reqwest::RequestBuilder {
    let Some(ctx) = ctx else {
        return request;
    };
    if let Some(id) = ctx.request_id() {
        request = request.header("x-request-id", id);
    }
    if let Some(trace) = ctx.trace() {
        request = request.header("traceparent", trace.traceparent());
        if let Some(state) = trace.state() {
            request = request.header("tracestate", state);
        }
    }
    request
}

/// Reads a whole answer, refusing one over [`MAX_BODY`] bytes.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    what: &str,
) -> Result<Bytes, BackendError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| transport_error(err, what))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BackendError::upstream(format!(
                "{what}: the answer is over {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A transport failure as a backend error: over the timeout is a timeout,
/// anything else (no connection, or one that broke mid-answer) is
/// unavailable. The URL is stripped from
/// the cause so that the log shows the call, not a URL that might carry
/// more than it should.
pub(crate) fn transport_error(err: reqwest::Error, what: &str) -> BackendError {
    let err = err.without_url();
    let error = if err.is_timeout() {
        BackendError::timeout(format!("{what}: no answer within the timeout"))
    } else if err.is_connect() {
        BackendError::unavailable(format!("{what}: cannot connect to Airflow"))
    } else {
        // The connection broke before the answer was complete: Airflow
        // stopped answering.
        BackendError::unavailable(format!("{what}: the connection failed"))
    };
    error.with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_become_one_escaped_path_segment() {
        assert_eq!(
            segment("manual__2024-12-18T10:30:00.000000+00:00"),
            "manual__2024-12-18T10%3A30%3A00.000000%2B00%3A00"
        );
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    fn answer(status: StatusCode, body: &'static str) -> Answer {
        Answer {
            status,
            body: Bytes::from_static(body.as_bytes()),
            what: "GET /api/v2/dags".to_owned(),
        }
    }

    #[test]
    fn a_401_and_an_invalid_jwt_403_reject_the_token_but_a_plain_403_does_not() {
        assert!(answer(StatusCode::UNAUTHORIZED, "").rejects_token());
        assert!(answer(StatusCode::FORBIDDEN, r#"{"detail":"Invalid JWT token"}"#).rejects_token());
        assert!(!answer(StatusCode::FORBIDDEN, r#"{"detail":"Forbidden"}"#).rejects_token());
        assert!(!answer(StatusCode::FORBIDDEN, "not json").rejects_token());
        assert!(!answer(StatusCode::NOT_FOUND, "").rejects_token());
    }

    #[test]
    fn a_body_that_does_not_parse_is_an_upstream_error_that_does_not_quote_it() {
        let err = answer(StatusCode::OK, "{secret-looking body")
            .json::<serde_json::Value>()
            .unwrap_err();
        assert_eq!(err.kind(), domain::BackendErrorKind::Upstream);
        assert!(!err.to_string().contains("secret-looking"));
    }
}
