//! The contract's floor: bare axum doing the least work that the contract
//! asks of an execute on an embedded backend, and nothing else. It answers
//! the same request as the service and the bare baseline, so that the
//! report can say how much of the baseline's throughput that work costs
//! any server on this machine, and how much of the rest is the service's
//! own.
//!
//! Per execute it:
//! - reads the bearer token and takes the customer from it: verified with
//!   `jsonwebtoken` the first time, then found by its exact text, its
//!   expiry checked on every request (the service caches verified tokens
//!   the same way, ADR 0016);
//! - reads the body's `pipeline_id` and parses it as a UUID, and its
//!   `conf`, when there is one, as JSON text checked and kept as sent;
//! - finds the customer's pipeline in a map, refusing an unknown one;
//! - makes a run, `manual__` and the instant, and keeps it in the
//!   pipeline's history of the last 10,000 runs;
//! - appends the run's change to an event log of the last 100,000 changes
//!   (the contract's event stream resumes from it);
//! - counts the execute, as a metric would;
//! - answers the service's success body.
//!
//! It leaves out what the contract does not ask of each request: request
//! ids, trace context, spans, the access log, per-customer limits, and the
//! tasks that serve events and webhooks.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    routing::{get, post},
};
use chrono::{SecondsFormat, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::baseline::{EXECUTE_PATH, ExecuteAnswer, ExecuteData};

/// The runs a pipeline's history keeps, as the memory backend does.
const HISTORY: usize = 10_000;
/// The changes the event log keeps, as the memory backend does.
const EVENTS: usize = 100_000;

/// The one customer and the pipelines the floor holds, and the key its
/// tokens are signed with.
#[derive(Debug, Clone)]
pub(crate) struct FloorSettings {
    pub(crate) secret: String,
    pub(crate) customer: String,
    pub(crate) pipelines: Vec<Uuid>,
}

/// The token claims the contract reads.
#[derive(Debug, Deserialize)]
struct Claims {
    customer_id: String,
    exp: u64,
}

/// A verified token: whose it is, and until when.
#[derive(Debug, Clone)]
struct Verified {
    customer: Arc<str>,
    exp: u64,
}

/// A run as the history keeps it (never read back here).
#[derive(Debug)]
#[allow(dead_code)]
struct Run {
    id: String,
    created_at_micros: i64,
    conf: Option<Box<RawValue>>,
}

/// A pipeline's last runs, oldest first.
type History = VecDeque<Run>;

/// A run's change as the event log keeps it (never read back here).
#[derive(Debug)]
#[allow(dead_code)]
struct Change {
    id: u64,
    pipeline: Uuid,
    run: String,
}

#[derive(Debug)]
struct Floor {
    key: DecodingKey,
    validation: Validation,
    tokens: RwLock<HashMap<Box<str>, Verified>>,
    /// Each customer's pipelines, with their histories.
    pipelines: Mutex<HashMap<(Arc<str>, Uuid), History>>,
    events: Mutex<VecDeque<Change>>,
    next_event: AtomicU64,
    executes: AtomicU64,
}

#[derive(Debug, Deserialize)]
struct ExecuteBody {
    pipeline_id: String,
    conf: Option<Box<RawValue>>,
}

/// What the floor refuses, with the status the service gives.
type Refusal = (StatusCode, &'static str);

impl Floor {
    fn new(settings: &FloorSettings) -> anyhow::Result<Self> {
        let customer: Arc<str> = Arc::from(settings.customer.as_str());
        let pipelines = settings
            .pipelines
            .iter()
            .map(|pipeline| ((customer.clone(), *pipeline), History::new()))
            .collect();
        Ok(Self {
            key: DecodingKey::from_secret(settings.secret.as_bytes())
                .context("the secret is not an HS256 key")?,
            validation: Validation::new(Algorithm::HS256),
            tokens: RwLock::new(HashMap::new()),
            pipelines: Mutex::new(pipelines),
            events: Mutex::new(VecDeque::with_capacity(EVENTS)),
            next_event: AtomicU64::new(0),
            executes: AtomicU64::new(0),
        })
    }

    /// The customer of the request's bearer token.
    fn customer(&self, headers: &HeaderMap) -> Result<Arc<str>, Refusal> {
        const UNAUTHORIZED: Refusal = (StatusCode::UNAUTHORIZED, "no valid token");
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(UNAUTHORIZED)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |now| now.as_secs());
        let known = self
            .tokens
            .read()
            .ok()
            .and_then(|tokens| tokens.get(token).cloned());
        let verified = match known {
            Some(verified) => verified,
            None => {
                let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                    .map_err(|_| UNAUTHORIZED)?
                    .claims;
                let verified = Verified {
                    customer: Arc::from(claims.customer_id),
                    exp: claims.exp,
                };
                if let Ok(mut tokens) = self.tokens.write() {
                    tokens.insert(Box::from(token), verified.clone());
                }
                verified
            }
        };
        if verified.exp <= now {
            return Err(UNAUTHORIZED);
        }
        Ok(verified.customer)
    }

    fn execute(&self, headers: &HeaderMap, body: ExecuteBody) -> Result<ExecuteAnswer, Refusal> {
        let customer = self.customer(headers)?;
        let pipeline = Uuid::parse_str(&body.pipeline_id)
            .map_err(|_| (StatusCode::BAD_REQUEST, "not a pipeline id"))?;
        let now = Utc::now();
        let run_id = format!(
            "manual__{}",
            now.to_rfc3339_opts(SecondsFormat::Micros, false)
        );
        {
            let mut pipelines = self
                .pipelines
                .lock()
                .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "poisoned"))?;
            let history = pipelines
                .get_mut(&(customer, pipeline))
                .ok_or((StatusCode::NOT_FOUND, "no such pipeline"))?;
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(Run {
                id: run_id.clone(),
                created_at_micros: now.timestamp_micros(),
                conf: body.conf,
            });
        }
        {
            let mut events = self
                .events
                .lock()
                .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "poisoned"))?;
            if events.len() == EVENTS {
                events.pop_front();
            }
            events.push_back(Change {
                id: self.next_event.fetch_add(1, Ordering::Relaxed),
                pipeline,
                run: run_id.clone(),
            });
        }
        self.executes.fetch_add(1, Ordering::Relaxed);
        Ok(ExecuteAnswer {
            status: true,
            data: ExecuteData {
                message: "Pipeline execution triggered successfully",
                pipeline_id: underscored(pipeline),
                run_id: Cow::Owned(run_id),
            },
        })
    }
}

/// A pipeline id as the contract writes it: lowercase, with underscores.
fn underscored(pipeline: Uuid) -> String {
    let mut text = pipeline.hyphenated().to_string().into_bytes();
    for byte in &mut text {
        if *byte == b'-' {
            *byte = b'_';
        }
    }
    String::from_utf8(text).unwrap_or_default()
}

async fn execute(
    State(floor): State<Arc<Floor>>,
    headers: HeaderMap,
    Json(body): Json<ExecuteBody>,
) -> Result<Json<ExecuteAnswer>, Refusal> {
    floor.execute(&headers, body).map(Json)
}

/// The floor's routes: execute, and `/health` so that it is waited for
/// exactly like the service.
///
/// # Errors
/// When the secret is not an HS256 key.
pub(crate) fn router(settings: &FloorSettings) -> anyhow::Result<Router> {
    Ok(Router::new()
        .route(EXECUTE_PATH, post(execute))
        .route("/health", get(|| async { "ok" }))
        .with_state(Arc::new(Floor::new(settings)?)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::TcpListener;

    use super::*;
    use crate::{
        http::{self, RequestTemplate},
        token,
    };

    fn settings() -> FloorSettings {
        FloorSettings {
            secret: "a floor secret of enough length".to_owned(),
            customer: "acme".to_owned(),
            pipelines: vec![Uuid::new_v4()],
        }
    }

    async fn start(settings: &FloorSettings) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = router(settings).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    async fn execute(addr: SocketAddr, token: &str, pipeline: &str) -> (u16, serde_json::Value) {
        let request = RequestTemplate::new(hyper::Method::POST, EXECUTE_PATH)
            .bearer(token)
            .unwrap()
            .json(&serde_json::json!({"pipeline_id": pipeline}))
            .unwrap();
        let answer = http::send_once(addr, &request, http::REQUEST_TIMEOUT)
            .await
            .unwrap();
        (answer.status.as_u16(), answer.json())
    }

    #[tokio::test]
    async fn an_execute_makes_a_run_of_the_tokens_customers_pipeline_and_answers_it() {
        let settings = settings();
        let addr = start(&settings).await;
        let now = token::unix_now().unwrap();
        let token = token::mint(&settings.secret, "acme", now + 60).unwrap();
        let pipeline = settings.pipelines[0].hyphenated().to_string();

        let (status, body) = execute(addr, &token, &pipeline).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["pipeline_id"], pipeline.replace('-', "_"));
        let run = body["data"]["run_id"].as_str().unwrap().to_owned();
        assert!(run.starts_with("manual__"), "{run}");
        // The token is found again, not verified again, and still works.
        assert_eq!(execute(addr, &token, &pipeline).await.0, 200);
    }

    #[tokio::test]
    async fn another_customer_a_bad_or_expired_token_and_an_unknown_pipeline_are_refused() {
        let settings = settings();
        let addr = start(&settings).await;
        let now = token::unix_now().unwrap();
        let pipeline = settings.pipelines[0].hyphenated().to_string();
        let other = token::mint(&settings.secret, "globex", now + 60).unwrap();
        assert_eq!(execute(addr, &other, &pipeline).await.0, 404);
        let forged = token::mint("another secret of enough length", "acme", now + 60).unwrap();
        assert_eq!(execute(addr, &forged, &pipeline).await.0, 401);
        let expired = token::mint(&settings.secret, "acme", now - 120).unwrap();
        assert_eq!(execute(addr, &expired, &pipeline).await.0, 401);
        let acme = token::mint(&settings.secret, "acme", now + 60).unwrap();
        let unknown = Uuid::new_v4().to_string();
        assert_eq!(execute(addr, &acme, &unknown).await.0, 404);
        assert_eq!(execute(addr, &acme, "nope").await.0, 400);
    }
}
