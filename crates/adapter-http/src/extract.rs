//! Extractors that turn a request into domain values, answering every
//! rejection in the contract's JSON shapes rather than axum's plain text.

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request, rejection::JsonRejection},
    http::{StatusCode, header, request::Parts},
};
use domain::{InvalidRunQuery, PipelineId, RequestContext, RunConf, RunId, RunQuery, RunStatus};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::Value;

use crate::{AppState, dto::ExecuteFields, error::ApiError, observe, request_log, trace};

/// The largest request body accepted, in bytes.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// The verified caller of a `/platform/...` route, with the request's id
/// and its place in its trace: the [`RequestContext`] the use cases take.
#[derive(Debug)]
pub(crate) struct Authenticated(pub(crate) RequestContext);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = bearer_token(parts) else {
            state
                .metrics()
                .auth_rejected(domain::AuthError::Missing.reason());
            return Err(ApiError::not_authenticated());
        };
        let caller = state.auth().authenticate(token).await.map_err(|err| {
            // The reason helps operators and attackers alike: log it, and
            // tell the client only that the token was refused.
            tracing::info!(reason = err.reason(), error = %err, "token refused");
            state.metrics().auth_rejected(err.reason());
            ApiError::invalid_token()
        })?;
        request_log::record_customer(caller.customer().as_str());
        if let Some(limiter) = state.rate_limiter() {
            // After authentication, so that the limit is the verified
            // customer's: one customer's flood never spends another's quota.
            limiter
                .acquire(caller.customer())
                .await
                .map_err(|refused| {
                    state.metrics().rate_limited();
                    ApiError::rate_limited(refused.as_secs())
                })?;
        }
        let request_id = observe::request_id(&parts.extensions).map(str::to_owned);
        let mut ctx = RequestContext::new(caller);
        if let Some(id) = request_id {
            ctx = ctx.with_request_id(id);
        }
        // Every request gets one from `trace::start`.
        if let Some(trace) = trace::of_request(&parts.extensions, state.exports_spans()) {
            ctx = ctx.with_trace(trace);
        }
        Ok(Self(ctx))
    }
}

/// The credential of an `Authorization: Bearer <token>` header, if the
/// request has one. Any other scheme counts as no credential.
fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // What nearly every client sends, told without searching for the space.
    let token = match value.strip_prefix("Bearer ") {
        Some(token) => token,
        None => {
            let (scheme, token) = value.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            token
        }
    };
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// The `pipeline_id` of a JSON body `{"pipeline_id": "..."}`, normalized:
/// the body of pause and unpause. Any other field, `customer_id`
/// included, is ignored.
#[derive(Debug)]
pub(crate) struct PipelineIdBody(pub(crate) PipelineId);

impl<S: Send + Sync> FromRequest<S> for PipelineIdBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let mut fields = json_object(req, state).await?;
        pipeline_id(fields.remove("pipeline_id")).map(Self)
    }
}

/// The body of execute: `{"pipeline_id": "...", "conf": {...}}`, the id
/// normalized and the run parameters checked (absent or null: none). Any
/// other field, `customer_id` included, is ignored.
#[derive(Debug)]
pub(crate) struct ExecuteBody {
    pub(crate) pipeline_id: PipelineId,
    pub(crate) conf: RunConf,
}

impl<S: Send + Sync> FromRequest<S> for ExecuteBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !says_json(req.headers()) {
            // Refused as every JSON body is refused.
            return Self::of(json_object(req, state).await?);
        }
        // Read in one pass without building the body's value: its `conf`
        // is checked as it is read.
        let bytes = whole_body(req).await?;
        match ExecuteFields::read(&bytes) {
            Ok(ExecuteFields::Object { pipeline_id, conf }) => Ok(Self {
                // The id first: a body without one answers as it always has.
                pipeline_id: self::pipeline_id(pipeline_id)?,
                conf: conf.map_err(ApiError::invalid_conf)?,
            }),
            Ok(ExecuteFields::NotAnObject) => Err(not_an_object()),
            // Not JSON: answered as any JSON body that is not.
            Err(_) => match Json::<Value>::from_bytes(&bytes) {
                Err(rejection) => Err(json_rejection(rejection)),
                Ok(Json(Value::Object(fields))) => Self::of(fields),
                Ok(_) => Err(not_an_object()),
            },
        }
    }
}

/// Whether the request's `Content-Type` says JSON as axum's `Json` reads
/// it: `application/json` or `application/...+json`, in any case, with or
/// without parameters (`; charset=utf-8`).
fn says_json(headers: &header::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    // What nearly every client sends, told at once.
    if value.as_bytes() == b"application/json" {
        return true;
    }
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    // A suffix after a name: `+json` alone is no media type.
    let suffix = (subtype.len() > 5)
        .then(|| subtype.get(subtype.len() - 5..))
        .flatten();
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || suffix.is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

impl ExecuteBody {
    /// The fields of a body already parsed.
    fn of(mut fields: serde_json::Map<String, Value>) -> Result<Self, ApiError> {
        // The id first: a body without one answers as it always has.
        let pipeline_id = pipeline_id(fields.remove("pipeline_id"))?;
        let conf = RunConf::parse(fields.remove("conf").unwrap_or(Value::Null))
            .map_err(ApiError::invalid_conf)?;
        Ok(Self { pipeline_id, conf })
    }
}

/// The answer to a body that is JSON but not an object.
fn not_an_object() -> ApiError {
    ApiError::invalid_body("The request body must be a JSON object")
}

/// The body of a route that takes none: nothing, `null`, or a JSON object
/// whose fields are ignored (`{}`).
#[derive(Debug)]
pub(crate) struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let json = says_json(req.headers());
        let bytes = whole_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self);
        }
        if !json {
            return Err(ApiError::unsupported_media_type());
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(_) | Value::Null) => Ok(Self),
            Ok(_) => Err(ApiError::invalid_body(
                "The request body must be a JSON object",
            )),
            Err(err) => Err(ApiError::invalid_body(format!(
                "The request body is not valid JSON: {err}"
            ))),
        }
    }
}

/// A JSON object body, or the contract's answer to anything else: read
/// as axum's `Json` reads it (its media type first, then the body), each
/// refusal in the contract's shape.
pub(crate) async fn json_object<S: Send + Sync>(
    req: Request,
    _: &S,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    if !says_json(req.headers()) {
        return Err(ApiError::unsupported_media_type());
    }
    let bytes = whole_body(req).await?;
    let Json(body) = Json::<Value>::from_bytes(&bytes).map_err(json_rejection)?;
    match body {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::invalid_body(
            "The request body must be a JSON object",
        )),
    }
}

/// A request's whole body, of at most [`BODY_LIMIT`] bytes: what axum's
/// `Bytes` reads under a `DefaultBodyLimit` of that size, refused alike
/// (413 `PayloadTooLarge` past the limit, 400 when it cannot be read),
/// without boxing the body again behind a limit and gathering its frames
/// into a list. A body that arrives in one frame, as nearly every one
/// does, is that frame's bytes, not copied.
///
/// Every route's body is read here, so that the limit is held in one
/// place and no layer sets it on each request.
async fn whole_body(req: Request) -> Result<Bytes, ApiError> {
    let mut body = req.into_body();
    let mut first: Option<Bytes> = None;
    let mut rest = Vec::new();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiError::invalid_body("The request body could not be read"))?;
        // Trailers carry nothing a route reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read += data.len();
        if read > BODY_LIMIT {
            return Err(ApiError::payload_too_large(BODY_LIMIT));
        }
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    rest.extend_from_slice(&earlier);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.into()))
}

/// The body's `pipeline_id`, normalized.
fn pipeline_id(field: Option<Value>) -> Result<PipelineId, ApiError> {
    match field {
        None | Some(Value::Null) => Err(ApiError::pipeline_id_required()),
        Some(Value::String(raw)) if raw.is_empty() => Err(ApiError::pipeline_id_required()),
        Some(Value::String(raw)) => {
            PipelineId::parse(&raw).map_err(|_| ApiError::invalid_pipeline_id())
        }
        Some(_) => Err(ApiError::invalid_body("pipeline_id must be a string")),
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::unsupported_media_type(),
        JsonRejection::JsonSyntaxError(err) => ApiError::invalid_body(format!(
            "The request body is not valid JSON: {}",
            err.body_text()
        )),
        JsonRejection::JsonDataError(err) => ApiError::invalid_body(err.body_text()),
        JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::payload_too_large(BODY_LIMIT)
        }
        JsonRejection::BytesRejection(_) => {
            ApiError::invalid_body("The request body could not be read")
        }
        _ => ApiError::invalid_body("The request body could not be read"),
    }
}

/// The `{pipeline_id}` of a path, normalized.
#[derive(Debug)]
pub(crate) struct PipelinePath(pub(crate) PipelineId);

impl<S: Send + Sync> FromRequestParts<S> for PipelinePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_path())?;
        let id = PipelineId::parse(&raw).map_err(|_| ApiError::invalid_pipeline_id())?;
        request_log::record_pipeline(id.as_str());
        Ok(Self(id))
    }
}

/// The `{pipeline_id}` and percent-decoded `{run_id}` of a path.
#[derive(Debug)]
pub(crate) struct RunPath(pub(crate) PipelineId, pub(crate) RunId);

impl<S: Send + Sync> FromRequestParts<S> for RunPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((raw_pipeline, raw_run)) =
            Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::invalid_path())?;
        let pipeline =
            PipelineId::parse(&raw_pipeline).map_err(|_| ApiError::invalid_pipeline_id())?;
        let run = RunId::parse(&raw_run).map_err(|_| {
            ApiError::envelope(
                StatusCode::BAD_REQUEST,
                "InvalidRunId",
                "run_id must be 1 to 250 characters with no control characters",
            )
        })?;
        request_log::record_pipeline(pipeline.as_str());
        request_log::record_run(run.as_str());
        Ok(Self(pipeline, run))
    }
}

/// The raw query of a run listing, before it is checked.
#[derive(Debug, Deserialize)]
struct RawRunsQuery {
    limit: Option<String>,
    offset: Option<String>,
    status: Option<String>,
}

/// A checked run listing query: `limit` (1 to 1000, default 100), `offset`
/// (default 0) and `status` (any letter case).
#[derive(Debug)]
pub(crate) struct RunsQuery(pub(crate) RunQuery);

impl<S: Send + Sync> FromRequestParts<S> for RunsQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawRunsQuery>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_query("The query string could not be decoded"))?;
        let limit = raw
            .limit
            .map(|limit| limit.parse::<u32>())
            .transpose()
            .map_err(|_| limit_error())?;
        let offset = raw
            .offset
            .map(|offset| offset.parse::<u64>())
            .transpose()
            .map_err(|_| offset_error())?;
        let status = raw
            .status
            .map(|status| RunStatus::parse(&status))
            .transpose()
            .map_err(|_| {
                ApiError::invalid_query("status must be one of QUEUED, RUNNING, SUCCESS, FAILED")
            })?;
        RunQuery::new(limit, offset, status)
            .map(Self)
            .map_err(|err| match err {
                InvalidRunQuery::Offset => offset_error(),
                // `Limit`, and any way a later domain finds a query wrong.
                _ => limit_error(),
            })
    }
}

fn offset_error() -> ApiError {
    ApiError::invalid_query(format!(
        "offset must be an integer between 0 and {}",
        RunQuery::MAX_OFFSET
    ))
}

fn limit_error() -> ApiError {
    ApiError::invalid_query(format!(
        "limit must be an integer between 1 and {}",
        RunQuery::MAX_LIMIT
    ))
}

/// The `wait_seconds` of a run read: how long the answer may wait for the
/// run to finish, 0 (the default: answer at once) to 60.
#[derive(Debug)]
pub(crate) struct WaitQuery(pub(crate) std::time::Duration);

/// The longest wait a run read may ask for, in seconds.
pub(crate) const MAX_WAIT_SECONDS: u64 = 60;

#[derive(Debug, Deserialize)]
struct RawWaitQuery {
    wait_seconds: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for WaitQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawWaitQuery>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_query("The query string could not be decoded"))?;
        let seconds = match raw.wait_seconds {
            None => 0,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|seconds| *seconds <= MAX_WAIT_SECONDS)
                .ok_or_else(|| {
                    ApiError::invalid_query(format!(
                        "wait_seconds must be an integer between 0 and {MAX_WAIT_SECONDS}"
                    ))
                })?,
        };
        Ok(Self(std::time::Duration::from_secs(seconds)))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_any_other_is_no_credential() {
        let token = |value: &str| {
            let (parts, ()) = Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(())
                .unwrap()
                .into_parts();
            bearer_token(&parts).map(str::to_owned)
        };
        for (value, expected) in [
            ("Bearer abc.def", Some("abc.def")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Bearer \tabc", Some("abc")),
            ("Bearer ", None),
            ("Bearer   ", None),
            ("Bearer", None),
            ("Bearerabc", None),
            ("Basic abc", None),
            ("Bearer-x abc", None),
        ] {
            assert_eq!(token(value).as_deref(), expected, "{value:?}");
        }
    }

    /// A request whose body arrives in the given frames, then an error if
    /// `fails`.
    fn streamed(frames: &[&[u8]], fails: bool) -> Request {
        let mut items: Vec<Result<Bytes, std::io::Error>> = frames
            .iter()
            .map(|frame| Ok(Bytes::copy_from_slice(frame)))
            .collect();
        if fails {
            items.push(Err(std::io::Error::other("connection reset")));
        }
        Request::new(Body::from_stream(futures_util::stream::iter(items)))
    }

    async fn status_of(request: Request) -> StatusCode {
        match whole_body(request).await {
            Ok(_) => StatusCode::OK,
            Err(err) => axum::response::IntoResponse::into_response(err).status(),
        }
    }

    #[tokio::test]
    async fn a_body_is_read_whole_whatever_frames_it_arrives_in() {
        let text = br#"{"pipeline_id": "1b33ad2f-33d3-4837-9eeb-83c82c8b909d"}"#;
        for first in 0..=text.len() {
            for second in first..=text.len() {
                let frames = [&text[..first], &text[first..second], &text[second..]];
                let read = whole_body(streamed(&frames, false)).await.unwrap();
                assert_eq!(read.as_ref(), text, "cut at {first} and {second}");
            }
        }
        assert!(whole_body(streamed(&[], false)).await.unwrap().is_empty());

        // A body of one frame is that frame, not a copy of it.
        let frame = Bytes::from_static(text);
        let read = whole_body(Request::new(Body::from(frame.clone())))
            .await
            .unwrap();
        assert_eq!(read.as_ptr(), frame.as_ptr());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_413_wherever_the_limit_falls_and_an_unreadable_one_400() {
        let kib = vec![b'x'; 1024];
        let at_the_limit = vec![kib.as_slice(); BODY_LIMIT / 1024];
        let read = whole_body(streamed(&at_the_limit, false)).await.unwrap();
        assert_eq!(read.len(), BODY_LIMIT);

        let mut past = at_the_limit.clone();
        past.push(b"x");
        assert_eq!(
            status_of(streamed(&past, false)).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let whole = vec![b'x'; BODY_LIMIT + 1];
        assert_eq!(
            status_of(streamed(&[&whole], false)).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // Past the limit before the body fails: the limit is what is told.
        assert_eq!(
            status_of(streamed(&past, true)).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );

        assert_eq!(
            status_of(streamed(&[b"{}"], true)).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(streamed(&[], true)).await,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn a_body_is_read_as_json_exactly_when_axum_would_read_it_as_json() {
        let media_types = [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/vnd.api+json",
            "application/problem+JSON; q=1",
            "application/+json",
            "application/x-json",
            "application/jsonx",
            "text/json",
            "text/x+json",
            "application",
            "json",
            "",
            "text/plain",
        ];
        for media_type in media_types {
            let request = Request::builder()
                .header(header::CONTENT_TYPE, media_type)
                .body(Body::from("{}"))
                .unwrap();
            let ours = says_json(request.headers());
            let axums = !matches!(
                Json::<Value>::from_request(request, &()).await,
                Err(JsonRejection::MissingJsonContentType(_))
            );
            assert_eq!(ours, axums, "{media_type:?}");
        }
        assert!(!says_json(&header::HeaderMap::new()));
    }
}
