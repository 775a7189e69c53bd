//! Builds the service from its configuration: the backend the settings
//! name, the token verifier, and the HTTP API over them.

use std::{sync::Arc, time::Duration};

use adapter_airflow::{AirflowAuth, AirflowBackend, AirflowConfig};
use adapter_auth::{
    ClaimsConfig, JwksConfig, JwksConfigError, JwksSource, JwksVerifier, KeyReadiness, StaticKey,
    StaticKeyVerifier,
};
use adapter_http::{
    AppState, Metrics, ReadinessCheck,
    ratelimit::{RateLimitConfig, RateLimiter, RetryAfter, SharedRateLimitStore, SharedStoreError},
};
use adapter_memory::{MemoryBackend, MemoryConfig, MemoryIdempotencyStore};
use adapter_platform_api::{PlatformApiBackend, PlatformApiConfig};
use adapter_redis::{RateDecision, Redis, RedisConfig, RedisIdempotencyStore, RedisRateLimiter};
use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use domain::{
    AuthContext, Clock, CustomerId, Idempotency, IdempotencyConfig, IdempotencyStore, Orchestrator,
    PipelineRepository, PipelineService, RunWatch,
};
use runtime::{PollingRunWatch, TokioClock};

use crate::{
    Backend, ServeConfig,
    dev::{DevBanner, random_secret},
    events::{self, Engine, FeedSettings, Loops},
    is_loopback, readiness,
};

/// The service, wired and ready to serve.
#[derive(Debug)]
pub struct Built {
    /// The HTTP API.
    pub router: axum::Router,
    /// Its shared state, to start draining on shutdown and to count
    /// connections.
    pub state: AppState,
    /// Whether the token verifier has its keys: at once for a static key,
    /// once the key set is fetched for a JWKS endpoint. The service is not
    /// ready before.
    pub auth_keys: Arc<dyn KeyReadiness>,
    pub(crate) dev_banner: Option<DevBanner>,
    /// The feed's and the webhooks' loops, stopped after the API drains.
    pub(crate) loops: Loops,
}

/// Wires the backend, the token verifier and the HTTP API that `config`
/// describes.
///
/// # Errors
/// When the configuration is unusable: no key on a non-loopback address, an
/// unreadable key or fixture file, or a backend without its settings.
pub async fn build(config: &ServeConfig) -> anyhow::Result<Built> {
    // The one clock every part of the service reads: it follows tokio's,
    // so tests can pause it.
    build_with_clock(config, Arc::new(TokioClock::start())).await
}

/// [`build`], with every part of the service reading the time from
/// `clock`: tests hand in a `domain::ManualClock` to move time on by hand
/// (a webhook's retries, a token's expiry) without waiting for it.
///
/// # Errors
/// As [`build`].
pub async fn build_with_clock(
    config: &ServeConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Built> {
    let metrics = Metrics::default();
    metrics.count_log_drops(crate::telemetry::log_lines_dropped);
    let (repository, orchestrator, watch, demo, engine) = backend(config, &clock, &metrics)?;
    let Auth {
        context: auth,
        keys: auth_keys,
        dev_banner,
    } = auth(config, demo, &clock)?;
    // With span export, each backend call is a span of its own too.
    let exported = config.tracing.traces_url().is_some();
    let mut orchestrator = metrics.instrument_orchestrator(orchestrator);
    let mut repository = metrics.instrument_repository(repository);
    if exported {
        orchestrator = adapter_http::trace_orchestrator(orchestrator);
        repository = adapter_http::trace_repository(repository);
    }
    // Waiting requests hear of run changes from the backend itself where it
    // can tell, or from one watcher that reads each waited-on run once per
    // interval for all who wait on it (its reads are counted as backend
    // calls like any other).
    let watch = watch.unwrap_or_else(|| {
        Arc::new(PollingRunWatch::new(
            orchestrator.clone(),
            Duration::from_millis(config.events_poll_ms),
        ))
    });
    let service = PipelineService::new(repository, orchestrator).with_run_watch(watch);
    let redis = redis(config).await?;
    let idempotency = idempotency(config, redis.as_ref(), &clock);
    let instance = config.instance_id.clone().unwrap_or_else(instance_name);
    let feed = events::start(
        engine,
        &FeedSettings {
            poll_interval: Duration::from_millis(config.events_poll_ms),
            allow_insecure: config.webhooks_allow_insecure,
            redis: redis.as_ref(),
            instance: &instance,
        },
        &clock,
        &metrics,
    );
    if config.webhooks_allow_insecure {
        tracing::warn!(
            "MAESTRO_WEBHOOKS_ALLOW_INSECURE is on: webhooks may call http and private addresses; use it for development and tests only"
        );
    }
    // Besides the backend, `/ready` checks what else a request needs.
    let mut checks: Vec<Arc<dyn ReadinessCheck>> =
        vec![Arc::new(readiness::AuthKeys(auth_keys.clone()))];
    // The rate limits share the one Redis connection of the other stores.
    let shared_limits = redis
        .as_ref()
        .map(|redis| RedisRateLimiter::new(redis.clone()));
    if let Some(redis) = redis {
        checks.push(Arc::new(readiness::Redis(redis)));
    }
    let mut state = AppState::new(
        service,
        auth,
        config.backend.name(),
        metrics.clone(),
        idempotency,
    )
    .with_readiness_checks(checks, clock.clone())
    .with_body_timeout(config.edge.body_timeout_seconds)
    .with_request_timeout(config.edge.request_timeout_seconds)
    .with_waits_per_customer(config.max_waits_per_customer)
    .with_events(feed.events, feed.listeners, config.max_streams_per_customer)
    .with_webhooks(feed.webhooks, clock.clone());
    if let Some(limit) =
        RateLimitConfig::from_settings(config.rate_limit_per_minute, config.rate_limit_burst)
            .context("invalid rate-limit settings")?
    {
        let mut limiter = RateLimiter::new(limit, clock);
        if let Some(shared) = shared_limits {
            tracing::info!(
                "rate limits are shared by every instance through Redis (MAESTRO_REDIS_URL)"
            );
            limiter = limiter.sharing(
                Arc::new(RedisLimits(shared)),
                Duration::from_millis(config.rate_limit_redis_timeout_ms),
                state.metrics().clone(),
            );
        }
        state = state.with_rate_limiter(limiter);
    }
    if exported {
        state = state.with_span_export();
    } else if crate::telemetry::request_spans(config.log_format) {
        state = state.with_request_spans();
    }
    Ok(Built {
        router: adapter_http::router(state.clone()),
        state,
        auth_keys,
        dev_banner,
        loops: feed.loops,
    })
}

/// This instance's name, unique among those sharing a store: the host's
/// name and a random suffix, so that a restarted instance is a new holder.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "maestro".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The Redis every instance shares, when configured. A URL it cannot use
/// is refused now; a server that does not answer yet is not: the service
/// starts, unready, and connects when Redis answers.
async fn redis(config: &ServeConfig) -> anyhow::Result<Option<Redis>> {
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    let redis =
        Redis::new(&RedisConfig::new(url.clone())).context("cannot use MAESTRO_REDIS_URL")?;
    if let Err(err) = redis.ping().await {
        tracing::warn!(
            error = %err,
            "Redis does not answer yet; /ready says so until it does"
        );
    }
    Ok(Some(redis))
}

/// Where `Idempotency-Key` answers are kept: Redis when configured, shared
/// by every instance; this process's memory otherwise.
fn idempotency(config: &ServeConfig, redis: Option<&Redis>, clock: &Arc<dyn Clock>) -> Idempotency {
    let store: Arc<dyn IdempotencyStore> = match redis {
        Some(redis) => Arc::new(RedisIdempotencyStore::on(redis)),
        None => Arc::new(MemoryIdempotencyStore::default().with_clock(clock.clone())),
    };
    let mut settings = IdempotencyConfig::default();
    settings.retention = config.idempotency_ttl;
    settings.keys_per_customer = config.idempotency_keys_per_customer;
    // A claim must outlast the slowest execute: the backend's timeout, with
    // room for the retry a lost answer allows. Past it, a claim whose
    // instance died reads as a failed attempt, and the next request with
    // the key runs as a retry.
    settings.in_flight = config.upstream_timeout() * 2 + Duration::from_secs(5);
    Idempotency::new(store, settings, clock.clone())
}

/// The per-customer limits kept in Redis, as the HTTP adapter's shared
/// store: the same GCRA, with the interval and burst of the local limiter.
#[derive(Debug)]
struct RedisLimits(RedisRateLimiter);

#[async_trait]
impl SharedRateLimitStore for RedisLimits {
    async fn check(
        &self,
        customer: &CustomerId,
        config: RateLimitConfig,
    ) -> Result<Result<(), RetryAfter>, SharedStoreError> {
        match self
            .0
            .check(customer, config.interval(), config.burst)
            .await
        {
            Ok(RateDecision::Allowed) => Ok(Ok(())),
            Ok(RateDecision::Refused { retry_after }) => Ok(Err(RetryAfter::new(retry_after))),
            Err(err) => Err(SharedStoreError::new(err)),
        }
    }
}

/// The demo pipeline the development banner's curl line triggers.
struct Demo {
    customer: &'static str,
    pipeline_id: Option<&'static str>,
}

type Ports = (
    Arc<dyn PipelineRepository>,
    Arc<dyn Orchestrator>,
    // A backend that tells of its runs' changes by itself; the others are
    // watched by polling.
    Option<Arc<dyn RunWatch>>,
    Option<Demo>,
    Engine,
);

fn backend(
    config: &ServeConfig,
    clock: &Arc<dyn Clock>,
    metrics: &Metrics,
) -> anyhow::Result<Ports> {
    match config.backend {
        Backend::Memory => {
            let memory = &config.memory;
            let settings = MemoryConfig {
                run_duration: Duration::from_secs_f64(memory.memory_run_seconds),
                queue_limit: memory.memory_queue_limit,
                history_limit: memory.memory_history_limit,
            };
            let (backend, demo) = match &memory.memory_fixture {
                Some(path) => {
                    let pipelines =
                        adapter_memory::load_fixture(path, clock.now()).with_context(|| {
                            format!("cannot load MAESTRO_MEMORY_FIXTURE {}", path.display())
                        })?;
                    tracing::info!(pipelines = pipelines.len(), fixture = %path.display(), "memory backend loaded");
                    (MemoryBackend::new(settings, pipelines), None)
                }
                None => (
                    MemoryBackend::demo(settings),
                    Some(Demo {
                        customer: adapter_memory::DEMO_CUSTOMER,
                        pipeline_id: Some(adapter_memory::DEMO_PIPELINE_ID),
                    }),
                ),
            };
            let backend = Arc::new(backend.with_clock(clock.clone()));
            Ok((
                backend.clone(),
                backend.clone(),
                Some(backend.clone()),
                demo,
                Engine::Memory(backend),
            ))
        }
        Backend::PlatformApi => {
            let settings = &config.platform_api;
            let (Some(base_url), Some(token)) =
                (&settings.platform_api_url, &settings.platform_api_token)
            else {
                bail!(
                    "the platform-api backend needs MAESTRO_PLATFORM_API_URL and MAESTRO_PLATFORM_API_TOKEN"
                );
            };
            let backend = PlatformApiBackend::new(PlatformApiConfig {
                base_url: base_url.clone(),
                token: token.clone(),
                timeout: config.upstream_timeout(),
            })
            .context("invalid Platform-API settings")?
            .with_clock(clock.clone());
            let engine = Engine::PlatformApi(backend.clone());
            let backend = Arc::new(backend);
            Ok((backend.clone(), backend, None, None, engine))
        }
        Backend::Airflow => {
            let settings = &config.airflow;
            let Some(url) = &settings.airflow_url else {
                bail!("the airflow backend needs MAESTRO_AIRFLOW_URL");
            };
            let auth = match (
                &settings.airflow_token,
                &settings.airflow_username,
                &settings.airflow_password,
            ) {
                (Some(token), None, None) => AirflowAuth::Token(token.clone()),
                (None, Some(username), Some(password)) => AirflowAuth::Credentials {
                    username: username.clone(),
                    password: password.clone(),
                },
                _ => bail!(
                    "the airflow backend needs either MAESTRO_AIRFLOW_TOKEN, or MAESTRO_AIRFLOW_USERNAME and MAESTRO_AIRFLOW_PASSWORD"
                ),
            };
            let mut airflow = AirflowConfig::new(url.clone(), auth);
            airflow
                .customer_tag_prefix
                .clone_from(&settings.airflow_customer_tag_prefix);
            airflow.timeout = config.upstream_timeout();
            airflow.dag_cache_ttl = Duration::from_millis(settings.airflow_dag_cache_ms);
            let retries = metrics.clone();
            let backend = Arc::new(
                AirflowBackend::new(airflow)
                    .context("invalid Airflow settings")?
                    .with_clock(clock.clone())
                    .with_retry_observer(move |outcome| {
                        retries.backend_retried("trigger", outcome.label());
                    }),
            );
            Ok((
                backend.clone(),
                backend.clone(),
                None,
                None,
                Engine::Airflow(backend),
            ))
        }
    }
}

/// The token verifier, as the port and as a readiness check, and the
/// development banner when the embedded default made up its secret.
struct Auth {
    context: Arc<dyn AuthContext>,
    keys: Arc<dyn KeyReadiness>,
    dev_banner: Option<DevBanner>,
}

fn auth(config: &ServeConfig, demo: Option<Demo>, clock: &Arc<dyn Clock>) -> anyhow::Result<Auth> {
    let jwt = &config.jwt;
    let configured = [
        jwt.jwt_hs256_secret.is_some(),
        jwt.jwt_public_key_file.is_some(),
        jwt.jwt_jwks_url.is_some(),
        jwt.jwt_oidc_issuer_url.is_some(),
    ];
    if configured.iter().filter(|set| **set).count() > 1 {
        bail!(
            "set only one of MAESTRO_JWT_HS256_SECRET, MAESTRO_JWT_PUBLIC_KEY_FILE, MAESTRO_JWT_JWKS_URL and MAESTRO_JWT_OIDC_ISSUER_URL"
        );
    }
    // The claim rules, set once for whichever verifier is built.
    let claims = ClaimsConfig {
        // A token from an OIDC provider names it in `iss`: with discovery,
        // the issuer is checked even when MAESTRO_JWT_ISSUER is unset.
        issuer: jwt
            .claims
            .jwt_issuer
            .clone()
            .or_else(|| jwt.jwt_oidc_issuer_url.clone()),
        audience: jwt.claims.jwt_audience.clone(),
        customer_claim: jwt.claims.jwt_customer_claim.clone(),
        leeway: Duration::from_secs(jwt.jwt_leeway_seconds),
    };
    let jwks_source = match (&jwt.jwt_jwks_url, &jwt.jwt_oidc_issuer_url) {
        (Some(url), _) => Some((JwksSource::Url(url.clone()), "MAESTRO_JWT_JWKS_URL")),
        (None, Some(issuer)) => Some((
            JwksSource::Discovery(issuer.clone()),
            "MAESTRO_JWT_OIDC_ISSUER_URL",
        )),
        (None, None) => None,
    };
    if let Some((source, setting)) = jwks_source {
        let settings = JwksConfig {
            refresh_interval: Duration::from_secs(jwt.jwt_jwks_refresh_seconds),
            min_refetch_interval: Duration::from_secs(jwt.jwt_jwks_min_refetch_seconds),
            ..JwksConfig::new(source)
        };
        let verifier =
            JwksVerifier::new(settings, claims, Arc::clone(clock)).map_err(|err| match err {
                JwksConfigError::InvalidUrl(_) | JwksConfigError::InsecureUrl(_) => {
                    anyhow!(err).context(format!("{setting} is refused"))
                }
                other => anyhow!(other).context("invalid JWKS settings"),
            })?;
        if jwt.claims.jwt_audience.is_none() {
            // An identity provider signs tokens for many services with the
            // same keys; without an audience, one meant for any of them is
            // taken here too.
            tracing::warn!(
                "{setting} is set without MAESTRO_JWT_AUDIENCE: tokens the identity provider issued for any other service are accepted too; set MAESTRO_JWT_AUDIENCE to this service's audience"
            );
        }
        // Fetches at once, then on its interval, for the life of the
        // process; a JWKS endpoint that is down only delays acceptance.
        verifier.spawn_refresher();
        let verifier = Arc::new(verifier);
        return Ok(Auth {
            context: verifier.clone(),
            keys: verifier,
            dev_banner: None,
        });
    }
    let (key, dev_banner) = match (&jwt.jwt_hs256_secret, &jwt.jwt_public_key_file) {
        (Some(secret), _) => (StaticKey::Hs256(secret.clone()), None),
        (None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| {
                format!("cannot read MAESTRO_JWT_PUBLIC_KEY_FILE {}", path.display())
            })?;
            (StaticKey::PublicKeyPem(pem), None)
        }
        (None, None) => {
            // The embedded default: safe only where nobody else can reach it.
            if !is_loopback(&config.bind) {
                bail!(
                    "refusing to listen on {} with a random development secret: configure MAESTRO_JWT_HS256_SECRET, MAESTRO_JWT_PUBLIC_KEY_FILE or MAESTRO_JWT_JWKS_URL, or bind to loopback",
                    config.bind
                );
            }
            let secret = random_secret();
            let customer = demo.as_ref().map_or("demo", |demo| demo.customer);
            let banner = DevBanner::new(
                &secret,
                &CustomerId::parse(customer)?,
                demo.and_then(|demo| demo.pipeline_id.map(str::to_owned)),
                clock.as_ref(),
            )?;
            (StaticKey::Hs256(secret), Some(banner))
        }
    };
    let verifier = StaticKeyVerifier::new(key, claims, Arc::clone(clock))
        .context("invalid token verification settings")?;
    let verifier = Arc::new(verifier);
    Ok(Auth {
        context: verifier.clone(),
        keys: verifier,
        dev_banner,
    })
}
