//! The HTTP exchange with the upstream: one pooled client, the headers every
//! call carries, the deadline and retries, and the reading of the two
//! envelopes. What a refusal means for each route is `backend.rs`'s business.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::{
    BackendError, BackendErrorKind, Clock, CustomerId, RequestContext, Timestamp, TraceContext,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::{ConfigError, PlatformApiConfig};
use crate::retry::{Ended, MAX_RETRIES, Policy, jittered_backoff};
use crate::wire::{ErrorEnvelope, Malformed, SuccessEnvelope};

/// The request id header, sent on every call.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace context header, sent on every call a request makes.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The caller's vendor-specific trace data, sent beside it.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The customer header, sent on every pipeline route.
const CUSTOMER_ID: HeaderName = HeaderName::from_static("x-customer-id");

/// The largest answer body read; a bigger one is a malformed answer rather
/// than a way to exhaust the gateway's memory.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How much of an unexpected body goes into the log.
const SNIPPET_CHARS: usize = 200;

/// Maestro drops pooled connections idle this long, shorter than the 5 s
/// keep-alive of common upstream servers (uvicorn, for one), so a request
/// never goes out on a connection the upstream is closing at that moment.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Everything but the RFC 3986 unreserved characters is percent-encoded, in
/// customer ids in a header and in run ids in a path: `:` and `+` included,
/// since some servers read a `+` in a path as a space.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or header value as the contract says.
pub(crate) fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// `text` as one path segment, percent-encoded as the contract says; `None`
/// when that segment is a dot segment, `.` or `..`, which URL normalisation
/// resolves, sending the call to another route. Like the URL standard, the
/// check reads `%2e` as a dot too, although the encoding never leaves one
/// (it encodes the `%` of a text that spells one).
pub(crate) fn path_segment(text: &str) -> Option<String> {
    let segment = encode_component(text);
    let dots = segment.to_ascii_lowercase().replace("%2e", ".");
    (!matches!(dots.as_str(), "." | "..")).then_some(segment)
}

/// The pooled HTTP client and what every call needs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    /// Where "now" is read: when answers arrive, and how much of a call's
    /// time is spent.
    clock: Arc<dyn Clock>,
    /// The token as it may appear in upstream text (plain, and escaped the
    /// ways JSON and Rust's debug output escape it), kept only to scrub it
    /// from whatever reaches an error's context, in case an upstream echoes
    /// request headers in its error bodies.
    redactions: Arc<[SecretString]>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One call to make: a route, its headers' inputs and its body.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    method: Method,
    /// The route below the base, already percent-encoded where needed.
    path: String,
    query: Vec<(&'static str, String)>,
    customer: Option<&'a CustomerId>,
    request_id: Option<&'a str>,
    trace: Option<&'a TraceContext>,
    body: Option<Value>,
    /// Whether the call may be repeated after a failure: reads only.
    retry: bool,
}

impl<'a> Request<'a> {
    /// A read of a pipeline route for the context's customer; retried.
    pub(crate) fn read(path: String, ctx: &'a RequestContext) -> Self {
        Self {
            method: Method::GET,
            path,
            query: Vec::new(),
            customer: Some(ctx.customer()),
            request_id: ctx.request_id(),
            trace: ctx.trace(),
            body: None,
            retry: true,
        }
    }

    /// A write to a pipeline route for the context's customer; never
    /// retried, since the first attempt may have taken effect.
    pub(crate) fn write(path: String, ctx: &'a RequestContext, body: Value) -> Self {
        Self {
            method: Method::POST,
            path,
            query: Vec::new(),
            customer: Some(ctx.customer()),
            request_id: ctx.request_id(),
            trace: ctx.trace(),
            body: Some(body),
            retry: false,
        }
    }

    /// The health probe: no customer, no retry (readiness is probed again
    /// anyway, and a probe should answer fast).
    pub(crate) fn health() -> Self {
        Self {
            method: Method::GET,
            path: "/health".to_owned(),
            query: Vec::new(),
            customer: None,
            request_id: None,
            trace: None,
            body: None,
            retry: false,
        }
    }

    /// Adds a query parameter.
    #[must_use]
    pub(crate) fn with_query(mut self, name: &'static str, value: String) -> Self {
        self.query.push((name, value));
        self
    }

    /// How the call is named in the log: method and route, no host.
    fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the upstream answered, once it answered in one of the two envelopes.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A 2xx with `{"status": true, "data": ...}`.
    Success(Success),
    /// A 4xx with `{"detail": {...}}`.
    Refused(Refusal),
}

/// A success: the envelope's `data` and the answer's headers.
#[derive(Debug)]
pub(crate) struct Success {
    /// The envelope's `data`.
    pub(crate) data: Value,
    /// The answer's headers (run lists carry their total in one).
    pub(crate) headers: HeaderMap,
}

/// A refusal in the error envelope.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The 4xx status.
    pub(crate) status: StatusCode,
    /// What the refusal is, for example `PipelineNotFound`.
    pub(crate) exception_type: String,
    /// The upstream's human message; for the log only.
    pub(crate) traceback: String,
    /// The envelope's `data`: `null` except for `PipelineQueueFull`.
    pub(crate) data: Value,
}

/// One attempt's answer before the envelopes are read.
#[derive(Debug)]
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why one attempt got no answer.
#[derive(Debug)]
enum Failure {
    Transport(reqwest::Error),
    TooLarge,
}

impl Client {
    /// Checks the settings and builds the one pooled client, reading the
    /// time from `clock`.
    pub(crate) fn new(
        config: PlatformApiConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let base =
            Url::parse(&config.base_url).map_err(|err| ConfigError::InvalidUrl(err.to_string()))?;
        let usable = matches!(base.scheme(), "http" | "https")
            && base.has_host()
            && base.username().is_empty()
            && base.password().is_none()
            && base.query().is_none()
            && base.fragment().is_none();
        if !usable {
            return Err(ConfigError::UnsupportedUrl);
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        let token = config.token.expose_secret();
        if token.is_empty() || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ConfigError::InvalidToken);
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ConfigError::InvalidToken)?;
        // Keeps the header out of debug output and HTTP/2 header tables.
        authorization.set_sensitive(true);

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, authorization);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(headers)
            .user_agent(concat!("maestro/", env!("CARGO_PKG_VERSION")))
            // A redirect would either drop the token or carry it to a place
            // nobody configured, and turn a POST into a GET.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A backstop only: every call already runs under its own deadline.
            .timeout(config.timeout)
            .build()
            .map_err(ConfigError::Client)?;
        Ok(Self {
            http,
            base,
            timeout: config.timeout,
            clock,
            redactions: redactions(token),
        })
    }

    /// The same client, reading the time from `clock`.
    pub(crate) fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    /// The current instant, from the client's clock.
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The configured base URL, for the backend's debug output.
    pub(crate) fn base(&self) -> &str {
        self.base.as_str()
    }

    /// The configured timeout, for the backend's debug output.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Makes the call and reads the answer's envelope.
    ///
    /// # Errors
    /// A [`BackendError`] when the upstream cannot be reached, does not
    /// answer in time, answers a 5xx or anything but the two envelopes.
    pub(crate) async fn call(&self, request: &Request<'_>) -> Result<Answer, BackendError> {
        let raw = self.exchange(request).await?;
        self.decode(request, raw)
    }

    /// Makes the call and only checks that the status is a 2xx.
    ///
    /// # Errors
    /// A [`BackendError`] when the upstream cannot be reached, does not
    /// answer in time or answers anything but a 2xx.
    pub(crate) async fn probe(&self, request: &Request<'_>) -> Result<(), BackendError> {
        let raw = self.exchange(request).await?;
        if raw.status.is_success() {
            Ok(())
        } else {
            Err(self.status_error(request, &raw))
        }
    }

    /// An upstream error for an answer whose content is not what the route
    /// promises.
    pub(crate) fn malformed(&self, request: &Request<'_>, why: &Malformed) -> BackendError {
        self.error(
            BackendErrorKind::Upstream,
            request,
            format_args!("malformed answer: {why}"),
        )
    }

    /// An upstream error for a refusal the route cannot answer.
    pub(crate) fn unexpected_refusal(
        &self,
        request: &Request<'_>,
        refusal: &Refusal,
    ) -> BackendError {
        self.error(
            BackendErrorKind::Upstream,
            request,
            format_args!(
                "answered {} with exception type {:?}, which this route cannot answer: {}",
                refusal.status,
                self.snippet(&refusal.exception_type),
                self.snippet(&refusal.traceback)
            ),
        )
    }

    /// Sends the request until it gets an answer to keep, within one
    /// deadline: a read is repeated after a connection failure or a 502 or
    /// 503 while its retries and its time last; a write is sent once.
    async fn exchange(&self, request: &Request<'_>) -> Result<Raw, BackendError> {
        let url = self.url(request)?;
        let headers = self.headers(request);
        let body = request
            .body
            .as_ref()
            .map(|body| body.to_string().into_bytes());
        let policy = Policy {
            budget: self.timeout,
            max_retries: if request.retry { MAX_RETRIES } else { 0 },
            backoff: jittered_backoff,
            clock: self.clock.as_ref(),
        };
        let ended = policy
            .run(
                &request.label(),
                || self.attempt(&request.method, &url, &headers, body.clone()),
                worth_retrying,
            )
            .await;
        match ended {
            Ended::Answered(outcome) => outcome.map_err(|failure| self.failure(request, failure)),
            Ended::TimedOut { attempts } => Err(self.error(
                BackendErrorKind::Timeout,
                request,
                format_args!(
                    "no answer within {} ms ({attempts} attempt{})",
                    self.timeout.as_millis(),
                    if attempts == 1 { "" } else { "s" }
                ),
            )),
        }
    }

    /// One request and its whole answer, the body read up to its bound.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<Raw, Failure> {
        let mut builder = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let mut response = builder.send().await.map_err(Failure::Transport)?;
        let too_large = response.content_length().is_some_and(|length| {
            usize::try_from(length).map_or(true, |length| length > MAX_BODY_BYTES)
        });
        if too_large {
            return Err(Failure::TooLarge);
        }
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::Transport)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Raw {
            status,
            headers,
            body,
        })
    }

    /// The route's URL: the base's path, the route, then the query.
    ///
    /// # Errors
    /// A [`BackendError`] when the URL library would rewrite the path (a dot
    /// segment resolved, say), which would send the call to another route;
    /// nothing is sent then. The routes never build such a path: this is
    /// the last line of defence.
    fn url(&self, request: &Request<'_>) -> Result<Url, BackendError> {
        let mut url = self.base.clone();
        let path = format!("{}{}", self.base.path().trim_end_matches('/'), request.path);
        // `set_path` keeps existing `%XX` escapes, so the route's own
        // encoding of run ids survives.
        url.set_path(&path);
        if url.path() != path {
            return Err(self.error(
                BackendErrorKind::Upstream,
                request,
                format_args!(
                    "not sent: URL normalisation would make the path {:?}",
                    url.path()
                ),
            ));
        }
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&request.query);
        }
        Ok(url)
    }

    /// The per-call headers; the token and `Accept` are the client's defaults.
    fn headers(&self, request: &Request<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let request_id = request
            .request_id
            .filter(|id| !id.is_empty())
            .and_then(|id| HeaderValue::from_str(id).ok())
            .unwrap_or_else(|| {
                HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
            });
        headers.insert(REQUEST_ID, request_id);
        if let Some(trace) = request.trace {
            // Maestro's span as the parent of the upstream's work; the
            // caller's vendor data as it came (checked printable when read).
            if let Ok(value) = HeaderValue::try_from(trace.traceparent()) {
                headers.insert(TRACEPARENT, value);
            }
            if let Some(Ok(value)) = trace.state().map(HeaderValue::from_str) {
                headers.insert(TRACESTATE, value);
            }
        }
        if let Some(customer) = request.customer {
            // Percent-encoding leaves only visible ASCII, which every header
            // value may hold.
            if let Ok(value) = HeaderValue::try_from(encode_component(customer.as_str())) {
                headers.insert(CUSTOMER_ID, value);
            }
        }
        if request.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        headers
    }

    /// Reads the envelope of an answer.
    fn decode(&self, request: &Request<'_>, raw: Raw) -> Result<Answer, BackendError> {
        let status = raw.status;
        if status.is_success() {
            let envelope: SuccessEnvelope = serde_json::from_slice(&raw.body).map_err(|err| {
                self.error(
                    BackendErrorKind::Upstream,
                    request,
                    format_args!(
                        "answered {status} without the success envelope ({err}): {}",
                        self.body_snippet(&raw.body)
                    ),
                )
            })?;
            if !envelope.status {
                return Err(self.error(
                    BackendErrorKind::Upstream,
                    request,
                    format_args!(
                        "answered {status} with \"status\": false: {}",
                        self.body_snippet(&raw.body)
                    ),
                ));
            }
            return Ok(Answer::Success(Success {
                data: envelope.data,
                headers: raw.headers,
            }));
        }
        if status.is_client_error() && !refuses_token(status) {
            let envelope: ErrorEnvelope = serde_json::from_slice(&raw.body).map_err(|err| {
                self.error(
                    BackendErrorKind::Upstream,
                    request,
                    format_args!(
                        "answered {status} without the error envelope ({err}): {}",
                        self.body_snippet(&raw.body)
                    ),
                )
            })?;
            return Ok(Answer::Refused(Refusal {
                status,
                exception_type: envelope.detail.exception_type,
                traceback: match envelope.detail.traceback {
                    Value::String(text) => text,
                    other => other.to_string(),
                },
                data: envelope.detail.data,
            }));
        }
        Err(self.status_error(request, &raw))
    }

    /// The error for an answer whose status alone rules it out.
    fn status_error(&self, request: &Request<'_>, raw: &Raw) -> BackendError {
        let status = raw.status;
        let body = self.body_snippet(&raw.body);
        if refuses_token(status) {
            self.error(
                BackendErrorKind::Upstream,
                request,
                format_args!("the upstream refused the service token ({status}): {body}"),
            )
        } else {
            self.error(
                BackendErrorKind::Upstream,
                request,
                format_args!("answered {status}: {body}"),
            )
        }
    }

    /// The error for an attempt that got no answer.
    fn failure(&self, request: &Request<'_>, failure: Failure) -> BackendError {
        match failure {
            Failure::Transport(err) => {
                let (kind, what) = if err.is_connect() {
                    (
                        BackendErrorKind::Unavailable,
                        "cannot connect to the upstream",
                    )
                } else if err.is_timeout() {
                    (
                        BackendErrorKind::Timeout,
                        "the upstream did not answer in time",
                    )
                } else {
                    (
                        BackendErrorKind::Upstream,
                        "the exchange with the upstream failed",
                    )
                };
                // Without the URL, the cause chain holds no address at all;
                // the route in the context is enough to find the call.
                self.error(kind, request, format_args!("{what}"))
                    .with_source(err.without_url())
            }
            Failure::TooLarge => self.error(
                BackendErrorKind::Upstream,
                request,
                format_args!("answer body over {MAX_BODY_BYTES} bytes"),
            ),
        }
    }

    /// Every error of the backend is made here, so that the token is scrubbed
    /// from whatever upstream text its context quotes.
    fn error(
        &self,
        kind: BackendErrorKind,
        request: &Request<'_>,
        detail: fmt::Arguments<'_>,
    ) -> BackendError {
        BackendError::new(
            kind,
            self.scrub(&format!("Platform-API {}: {detail}", request.label())),
        )
    }

    /// `text` with every form of the token replaced: for upstream text that
    /// reaches a log or, bounded, the caller.
    pub(crate) fn scrub(&self, text: &str) -> String {
        self.redactions
            .iter()
            .fold(text.to_owned(), |text, secret| {
                text.replace(secret.expose_secret(), "[redacted]")
            })
    }

    /// The start of an unexpected body, printable, for the log.
    fn body_snippet(&self, body: &[u8]) -> String {
        if body.is_empty() {
            return "(empty body)".to_owned();
        }
        self.snippet(&String::from_utf8_lossy(body))
    }

    /// The start of an upstream text, the token scrubbed before escaping
    /// could hide it, and control characters escaped so that a hostile body
    /// cannot forge log lines.
    fn snippet(&self, text: &str) -> String {
        let text = self.scrub(text);
        let mut out = String::new();
        for c in text.chars().take(SNIPPET_CHARS) {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        if text.chars().nth(SNIPPET_CHARS).is_some() {
            out.push_str("...");
        }
        out
    }
}

/// Whether an attempt failed in a way that a read may retry: it could not
/// connect, or the upstream (or a proxy before it) answered 502 or 503.
fn worth_retrying(outcome: &Result<Raw, Failure>) -> bool {
    match outcome {
        Ok(raw) => matches!(
            raw.status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ),
        Err(Failure::Transport(err)) => err.is_connect(),
        Err(Failure::TooLarge) => false,
    }
}

/// Whether the status says the upstream does not accept Maestro's token, an
/// operator's problem whatever the body says.
fn refuses_token(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
}

/// The forms in which the token may be quoted: as it is, JSON-escaped (with
/// and without `\/` for `/`), debug-escaped and escaped by
/// `char::escape_default`. Longest first, so that no shorter form breaks up
/// a longer one before it is replaced.
fn redactions(token: &str) -> Arc<[SecretString]> {
    let json = serde_json::to_string(token).unwrap_or_default();
    let json = json.trim_matches('"').to_owned();
    let mut forms = vec![
        token.to_owned(),
        json.replace('/', "\\/"),
        json,
        format!("{token:?}").trim_matches('"').to_owned(),
        token.escape_default().to_string(),
    ];
    forms.retain(|form| !form.is_empty());
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    forms.dedup();
    forms.into_iter().map(SecretString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_travel_as_they_are_and_the_rest_is_encoded() {
        assert_eq!(encode_component("acme-corp_01.x~"), "acme-corp_01.x~");
        assert_eq!(encode_component("Acme Corp"), "Acme%20Corp");
        assert_eq!(encode_component("São Paulo"), "S%C3%A3o%20Paulo");
        assert_eq!(
            encode_component("manual__2024-12-18T10:30:00+00:00"),
            "manual__2024-12-18T10%3A30%3A00%2B00%3A00"
        );
        assert_eq!(encode_component("100%/x"), "100%25%2Fx");
    }

    #[test]
    fn dot_segments_in_any_spelling_are_no_path_segment() {
        for text in [".", ".."] {
            assert_eq!(path_segment(text), None, "{text}");
        }
        // A `%` is itself encoded, so text that spells a dot segment in
        // percent-encoding stays a plain segment.
        for (text, segment) in [
            ("%2e", "%252e"),
            (".%2E", ".%252E"),
            ("%2e%2e", "%252e%252e"),
            ("...", "..."),
            (".a", ".a"),
            ("a/..", "a%2F.."),
        ] {
            assert_eq!(path_segment(text).as_deref(), Some(segment), "{text}");
        }
    }

    fn client(token: &str) -> Client {
        Client::new(
            PlatformApiConfig {
                base_url: "http://127.0.0.1:9/base".to_owned(),
                token: token.into(),
                timeout: Duration::from_secs(1),
            },
            Arc::new(domain::SystemClock),
        )
        .unwrap()
    }

    #[test]
    fn a_path_that_url_normalisation_would_rewrite_is_never_sent() {
        let ctx = RequestContext::new(domain::Caller::new(CustomerId::parse("acme").unwrap()));
        let client = client("tok");
        let url = client
            .url(&Request::read(
                "/pipeline/p/pipeline_run/a%2F..".to_owned(),
                &ctx,
            ))
            .unwrap();
        assert_eq!(url.path(), "/base/pipeline/p/pipeline_run/a%2F..");
        for path in [
            "/pipeline/p/pipeline_run/..",
            "/pipeline/p/pipeline_run/%2e",
            "/pipeline/./x",
        ] {
            let err = client
                .url(&Request::read(path.to_owned(), &ctx))
                .unwrap_err();
            assert!(err.to_string().contains("not sent"), "{path}: {err}");
        }
    }

    #[test]
    fn snippets_are_bounded_and_escape_control_characters() {
        let client = client("tok");
        assert_eq!(client.snippet("line\nforged"), "line\\nforged");
        let long = "x".repeat(SNIPPET_CHARS + 1);
        assert_eq!(
            client.snippet(&long),
            format!("{}...", "x".repeat(SNIPPET_CHARS))
        );
        assert_eq!(client.body_snippet(b""), "(empty body)");
    }

    #[test]
    fn the_token_is_scrubbed_in_every_form_an_upstream_may_quote_it() {
        let token = r#"ab/c"d\e'f"#;
        let client = client(token);
        // What JSON encoders and debug output make of it, without the quotes.
        let json = serde_json::to_string(token)
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let echoes = [
            token.to_owned(),
            json.clone(),
            json.replace('/', "\\/"),
            format!("{token:?}").trim_matches('"').to_owned(),
            token.escape_default().to_string(),
        ];
        for echo in echoes {
            let text = format!("headers: {echo}!");
            assert_eq!(client.scrub(&text), "headers: [redacted]!", "{echo}");
            assert_eq!(client.snippet(&text), "headers: [redacted]!", "{echo}");
        }
    }
}
