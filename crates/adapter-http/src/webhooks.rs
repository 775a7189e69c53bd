//! `/platform/webhooks`: a customer registers, lists and deletes the
//! endpoints told of its runs' changes.

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Path, Request, State},
    http::{StatusCode, request::Parts},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use domain::{NewWebhook, PipelineId, RegisterWebhookError, RunEventType, Webhook, WebhookId};
use serde::Serialize;
use serde_json::Value;
use utoipa::{
    ToSchema,
    openapi::{ArrayBuilder, ObjectBuilder, Type, schema::SchemaType},
};

use crate::{
    AppState,
    dto::{WebhookIdParam, always_true, constant},
    error::{ApiError, ErrorEnvelope},
    extract::Authenticated,
    routes::{BodyFailures, PlatformFailures},
};

/// The body of a registration: `{"url", "events"?, "pipeline_ids"?}`.
#[derive(Debug)]
pub(crate) struct RegisterBody(NewWebhook);

impl<S: Send + Sync> FromRequest<S> for RegisterBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let mut fields = crate::extract::json_object(req, state).await?;
        let url = match fields.remove("url") {
            Some(Value::String(url)) => url,
            None | Some(Value::Null) => return Err(ApiError::invalid_body("url is required")),
            Some(_) => return Err(ApiError::invalid_body("url must be a string")),
        };
        let mut new = NewWebhook::new(url);
        new.events = strings(fields.remove("events"), "events")?
            .iter()
            .map(|name| {
                RunEventType::parse(name).map_err(|_| {
                    ApiError::invalid_body(format!(
                        "events must name run.queued, run.running, run.succeeded or run.failed, not {name:?}"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        new.pipeline_ids = strings(fields.remove("pipeline_ids"), "pipeline_ids")?
            .iter()
            .map(|raw| {
                PipelineId::parse(raw).map_err(|_| {
                    ApiError::invalid_body("pipeline_ids must be UUIDs, hyphenated or underscored")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(new))
    }
}

/// The `{id}` of a webhook's path, percent-decoded.
#[derive(Debug)]
pub(crate) struct WebhookPath(String);

impl<S: Send + Sync> FromRequestParts<S> for WebhookPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_path())?;
        Ok(Self(raw))
    }
}

/// An optional array of strings; absent or null: empty.
fn strings(value: Option<Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let not_strings = || ApiError::invalid_body(format!("{field} must be an array of strings"));
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(not_strings()),
            })
            .collect(),
        Some(_) => Err(not_strings()),
    }
}

/// A registration, as documented (the handler reads it field by field, to
/// say what is wrong with each).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only documents the body; `RegisterBody` reads it.
pub(crate) struct RegisterRequest {
    /// Where deliveries go: `https`, its host not resolving to a loopback,
    /// private, link-local or unspecified address.
    #[schema(
        example = "https://hooks.example.com/maestro",
        max_length = 2048,
        pattern = r#"^[Hh][Tt][Tt][Pp][Ss]://[!"$-.0-9;->A-~][!"$-.0-9:->A-~]*([/?#][!-~]*)?$"#
    )]
    url: String,
    /// The changes to be told of; absent, null or empty: all.
    #[schema(schema_with = events_schema)]
    events: Option<Vec<String>>,
    /// The pipelines to be told of; absent, null or empty: all of the
    /// caller's.
    #[schema(schema_with = pipeline_ids_schema)]
    pipeline_ids: Option<Vec<String>>,
}

/// The `events` of a registration: an array (or null) of the four names.
fn events_schema() -> utoipa::openapi::Array {
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(RunEventType::ALL.map(RunEventType::as_str)));
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(name)
        .examples([serde_json::json!(["run.succeeded", "run.failed"])])
        .build()
}

/// The `pipeline_ids` of a registration: an array (or null) of pipeline
/// ids as requests carry them.
fn pipeline_ids_schema() -> utoipa::openapi::Array {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(crate::dto::pipeline_id_schema())
        .build()
}

/// A webhook as listed: everything but its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookBody {
    /// The webhook's id.
    #[schema(example = "wh_0f3c8a2d9b7e4c1a8f6d2b5e9c0a7d31")]
    id: String,
    /// Where deliveries go.
    #[schema(example = "https://hooks.example.com/maestro")]
    url: String,
    /// The changes it is told of.
    #[schema(example = json!(["run.succeeded", "run.failed"]))]
    events: Vec<&'static str>,
    /// The pipelines it is told of; empty: all of the customer's.
    pipeline_ids: Vec<String>,
}

impl From<&Webhook> for WebhookBody {
    fn from(webhook: &Webhook) -> Self {
        Self {
            id: webhook.id.to_string(),
            url: webhook.url.as_str().to_owned(),
            events: webhook.events.iter().map(|kind| kind.as_str()).collect(),
            pipeline_ids: webhook
                .pipeline_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// A webhook as registered: with its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisteredBody {
    #[serde(flatten)]
    webhook: WebhookBody,
    /// The signing secret, `whsec_` and the standard base64 of 32 bytes:
    /// shown only in this answer.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
}

/// `201` of a registration.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisteredResponse {
    #[schema(schema_with = always_true)]
    status: bool,
    data: RegisteredBody,
}

/// `200` of a deletion.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedResponse {
    #[schema(schema_with = always_true)]
    status: bool,
    data: DeletedBody,
}

/// What a deletion did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedBody {
    #[schema(schema_with = deleted_message)]
    message: &'static str,
    id: String,
}

fn deleted_message() -> utoipa::openapi::Object {
    constant("Webhook deleted successfully")
}

/// The secret as customers see it: `whsec_` and the standard base64 of its
/// bytes (the Standard Webhooks form).
pub(crate) fn secret_text(webhook: &Webhook) -> String {
    format!("whsec_{}", STANDARD.encode(webhook.secret.bytes()))
}

/// Register an endpoint to be told when the caller's runs change.
///
/// Each delivery is a `POST` of `{"type", "timestamp", "data": RUN}`,
/// signed as Standard Webhooks says (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`, keyed with the secret's decoded bytes). A delivery
/// not answered 2xx within 10 s is retried, with the same `webhook-id`,
/// after about 5 s, 30 s, 2 min, 10 min, 30 min, then hourly, for 24 h.
/// Redirects are not followed.
#[utoipa::path(
    post,
    path = "/platform/webhooks",
    tag = "webhooks",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered; the `secret` is shown only here", body = RegisteredResponse),
        (status = 400, description = "`InvalidWebhookUrl` (not https, or naming or resolving to a loopback, private, link-local or unspecified address), `TooManyWebhooks` (the customer has 10), or `InvalidRequestBody`", body = ErrorEnvelope),
        PlatformFailures,
        BodyFailures,
        (status = 503, description = "`EventStoreUnavailable`: where webhooks are kept cannot be reached; or `ServiceTimeout`", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    RegisterBody(new): RegisterBody,
) -> Result<(StatusCode, Json<RegisteredResponse>), ApiError> {
    let webhooks = state.webhooks().ok_or_else(ApiError::route_not_found)?;
    let random = (rand::random::<[u8; 16]>(), rand::random::<[u8; 32]>());
    let webhook = webhooks
        .register(&ctx, new, random, state.clock().now())
        .await
        .map_err(|err| match err {
            RegisterWebhookError::TooMany { limit } => ApiError::too_many_webhooks(limit),
            RegisterWebhookError::InvalidUrl(err) => ApiError::invalid_webhook_url(&err),
            RegisterWebhookError::Storage(err) => ApiError::feed_unavailable(&err),
            other => ApiError::unmapped(&other),
        })?;
    let body = RegisteredResponse {
        status: true,
        data: RegisteredBody {
            webhook: WebhookBody::from(&webhook),
            secret: secret_text(&webhook),
        },
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// The caller's webhooks, oldest first, without their secrets.
#[utoipa::path(
    get,
    path = "/platform/webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "The caller's webhooks", body = Vec<WebhookBody>),
        PlatformFailures,
        (status = 503, description = "`EventStoreUnavailable`: where webhooks are kept cannot be reached; or `ServiceTimeout`", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
) -> Result<Json<Vec<WebhookBody>>, ApiError> {
    let webhooks = state.webhooks().ok_or_else(ApiError::route_not_found)?;
    let list = webhooks
        .list(&ctx)
        .await
        .map_err(|err| ApiError::feed_unavailable(&err))?;
    Ok(Json(list.iter().map(WebhookBody::from).collect()))
}

/// Delete one of the caller's webhooks: nothing is delivered to it after.
#[utoipa::path(
    delete,
    path = "/platform/webhooks/{id}",
    tag = "webhooks",
    params(WebhookIdParam),
    responses(
        (status = 200, description = "Deleted", body = DeletedResponse),
        (status = 400, description = "`InvalidPath` when the path does not decode", body = ErrorEnvelope),
        (status = 404, description = "`WebhookNotFound`: no webhook of the caller has this id", body = ErrorEnvelope),
        PlatformFailures,
        (status = 503, description = "`EventStoreUnavailable`: where webhooks are kept cannot be reached; or `ServiceTimeout`", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    WebhookPath(raw): WebhookPath,
) -> Result<Json<DeletedResponse>, ApiError> {
    let webhooks = state.webhooks().ok_or_else(ApiError::route_not_found)?;
    // An id of another form names no webhook: the same answer as an unknown
    // one, or another customer's.
    let not_found = || ApiError::webhook_not_found(&raw);
    let id = WebhookId::parse(&raw).map_err(|_| not_found())?;
    let deleted = webhooks
        .delete(&ctx, &id)
        .await
        .map_err(|err| ApiError::feed_unavailable(&err))?;
    if !deleted {
        return Err(not_found());
    }
    Ok(Json(DeletedResponse {
        status: true,
        data: DeletedBody {
            message: "Webhook deleted successfully",
            id: id.to_string(),
        },
    }))
}
