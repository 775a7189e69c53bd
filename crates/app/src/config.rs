//! The command line and environment of `maestro`: every setting of the
//! contract's configuration table, as a flag and the same-named variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

/// Maestro: a safe HTTP API to trigger, pause and watch your pipelines.
#[derive(Debug, Parser)]
#[command(name = "maestro", version, about)]
pub struct Cli {
    /// What to do; `serve` when left out.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API.
    Serve(Box<ServeConfig>),
    /// Print a signed HS256 token for a customer, for the configured secret.
    Token(TokenArgs),
}

/// Which backend serves pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The embedded in-memory backend (demo data or a fixture file).
    Memory,
    /// An upstream Platform-API service.
    PlatformApi,
    /// An Apache Airflow 3 cluster (REST API v2).
    Airflow,
}

impl Backend {
    /// The name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::PlatformApi => "platform-api",
            Self::Airflow => "airflow",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Settings of `maestro serve`.
#[derive(Debug, Args)]
pub struct ServeConfig {
    /// Listen address. Without a configured key the service only listens on
    /// loopback.
    #[arg(long, env = "MAESTRO_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Which backend serves pipelines.
    #[arg(long, env = "MAESTRO_BACKEND", value_enum, default_value = "memory")]
    pub backend: Backend,

    /// How log lines are written.
    #[arg(long, env = "MAESTRO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// How long in-flight requests may take to finish once the listener
    /// has closed after SIGTERM or SIGINT, before the process exits anyway,
    /// in seconds.
    #[arg(long, env = "MAESTRO_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    #[command(flatten)]
    pub edge: EdgeArgs,

    /// The longest a call to the backend may take, in milliseconds.
    #[arg(long, env = "MAESTRO_UPSTREAM_TIMEOUT_MS", default_value_t = 10_000)]
    pub upstream_timeout_ms: u64,

    /// Requests per minute each customer may make; unset turns rate
    /// limits off.
    #[arg(long, env = "MAESTRO_RATE_LIMIT_PER_MINUTE")]
    pub rate_limit_per_minute: Option<u32>,

    /// Requests a customer may make at once after a quiet period; default
    /// one minute's worth.
    #[arg(long, env = "MAESTRO_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// With rate limits on and `MAESTRO_REDIS_URL` set, limits are shared
    /// by every instance through Redis: how long a check may wait for
    /// Redis, in milliseconds, before this instance decides alone.
    #[arg(
        long,
        env = "MAESTRO_RATE_LIMIT_REDIS_TIMEOUT_MS",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub rate_limit_redis_timeout_ms: u64,

    /// How long the answer to an execute with an `Idempotency-Key` is given
    /// again to repeats: seconds, or a number with `s`, `m`, `h` or `d`.
    #[arg(long, env = "MAESTRO_IDEMPOTENCY_TTL", default_value = "24h", value_parser = duration)]
    pub idempotency_ttl: Duration,

    /// The most `Idempotency-Key` keys one customer may hold at once
    /// (answers kept, failed attempts, executes in flight); a new key at
    /// the bound forgets that customer's own answer closest to its expiry.
    #[arg(
        long,
        env = "MAESTRO_IDEMPOTENCY_KEYS_PER_CUSTOMER",
        default_value_t = domain::IdempotencyConfig::DEFAULT_KEYS_PER_CUSTOMER,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub idempotency_keys_per_customer: usize,

    /// How often, in milliseconds, the engine is asked about the runs that
    /// requests wait on (`?wait_seconds=N`), once for all who wait on a
    /// run. The memory backend needs no asking: its runs tell.
    #[arg(
        long,
        env = "MAESTRO_EVENTS_POLL_MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(10..)
    )]
    pub events_poll_ms: u64,

    /// The most requests one customer may have waiting on runs at once;
    /// more are answered 429 `TooManyWaits`.
    #[arg(
        long,
        env = "MAESTRO_MAX_WAITS_PER_CUSTOMER",
        default_value_t = adapter_http::limits::DEFAULT_WAITS_PER_CUSTOMER,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_waits_per_customer: usize,

    /// The most event streams (`GET /platform/events`) one customer may
    /// have open at once on this instance; more are answered 429
    /// `TooManyStreams`.
    #[arg(
        long,
        env = "MAESTRO_MAX_STREAMS_PER_CUSTOMER",
        default_value_t = adapter_http::limits::DEFAULT_STREAMS_PER_CUSTOMER,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_streams_per_customer: usize,

    /// Lets webhooks use `http` and private, loopback or link-local
    /// addresses: for development and tests only.
    #[arg(
        long,
        env = "MAESTRO_WEBHOOKS_ALLOW_INSECURE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub webhooks_allow_insecure: bool,

    /// This instance's name among those sharing Redis (who holds the feed,
    /// who makes a delivery); default: the host name and a random suffix.
    #[arg(long, env = "MAESTRO_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// A Redis server (`redis://host:port/db`) that every instance shares:
    /// `Idempotency-Key` answers, the feed of run changes, webhooks and
    /// their pending deliveries. Unset keeps them in this process only.
    #[arg(long, env = "MAESTRO_REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: Option<SecretString>,

    #[command(flatten)]
    pub jwt: JwtArgs,

    #[command(flatten)]
    pub memory: MemoryArgs,

    #[command(flatten)]
    pub platform_api: PlatformApiArgs,

    #[command(flatten)]
    pub airflow: AirflowArgs,

    #[command(flatten)]
    pub tracing: TracingArgs,
}

impl ServeConfig {
    /// The backend call timeout.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }
}

/// Span export over OpenTelemetry's OTLP/HTTP, with the standard
/// variables' names. Off unless an endpoint is set; the W3C trace context
/// is read and passed on either way.
#[derive(Debug, Args)]
pub struct TracingArgs {
    /// An OpenTelemetry collector's OTLP/HTTP base URL
    /// (`http://collector:4318`): spans are sent to its `/v1/traces` as
    /// protobuf. Unset or empty, no span is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otel_exporter_otlp_endpoint: Option<OtlpEndpoint>,

    /// The `service.name` exported spans carry.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "maestro")]
    pub otel_service_name: String,
}

/// Where spans go when they are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtlpEndpoint {
    /// Nowhere: the variable was set but empty, which the OpenTelemetry
    /// specification reads as unset.
    Off,
    /// The traces URL: the base URL with `/v1/traces`.
    Traces(String),
}

impl TracingArgs {
    /// The URL spans are sent to, when they are exported at all.
    pub fn traces_url(&self) -> Option<&str> {
        match self.otel_exporter_otlp_endpoint.as_ref()? {
            OtlpEndpoint::Off => None,
            OtlpEndpoint::Traces(url) => Some(url),
        }
    }

    /// The service name, `maestro` when set empty.
    pub fn service_name(&self) -> &str {
        match self.otel_service_name.trim() {
            "" => "maestro",
            name => name,
        }
    }
}

/// Parses an OTLP/HTTP base URL: `http` or `https`, with a host; the
/// traces URL is it with `/v1/traces`, as the OpenTelemetry specification
/// builds it from `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn otlp_endpoint(raw: &str) -> Result<OtlpEndpoint, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(OtlpEndpoint::Off);
    }
    let uri: axum::http::Uri = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not a URL such as http://collector:4318"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
        return Err(format!(
            "`{raw}` is not an http or https URL such as http://collector:4318"
        ));
    }
    Ok(OtlpEndpoint::Traces(format!(
        "{}/v1/traces",
        raw.trim_end_matches('/')
    )))
}

/// The limits that keep slow, idle and flooding clients cheap. Seconds
/// take fractions (`0.5`).
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// How long a connection may take to send a whole request head, from
    /// its opening or from the first byte of its next request, in seconds;
    /// past it the connection is closed.
    #[arg(long, env = "MAESTRO_HEADER_READ_TIMEOUT_SECONDS", default_value = "10", value_parser = positive_seconds)]
    pub header_read_timeout_seconds: Duration,

    /// How long a keep-alive connection may stay open with no request in
    /// flight, in seconds; then it is closed.
    #[arg(long, env = "MAESTRO_IDLE_TIMEOUT_SECONDS", default_value = "60", value_parser = positive_seconds)]
    pub idle_timeout_seconds: Duration,

    /// How long a request body may take to arrive after its head, in
    /// seconds; past it the answer is 408 `RequestTimeout`.
    #[arg(long, env = "MAESTRO_BODY_TIMEOUT_SECONDS", default_value = "30", value_parser = positive_seconds)]
    pub body_timeout_seconds: Duration,

    /// How long a request may take to be answered, body included, in
    /// seconds; past it the answer is 503 `ServiceTimeout`. Routes meant to
    /// wait (a run's `wait_seconds`, the event stream) get longer.
    #[arg(long, env = "MAESTRO_REQUEST_TIMEOUT_SECONDS", default_value = "60", value_parser = positive_seconds)]
    pub request_timeout_seconds: Duration,

    /// The most connections open at once; past it new connections wait in
    /// the listen backlog while the open ones are served.
    #[arg(long, env = "MAESTRO_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// After SIGTERM or SIGINT, how long `/ready` answers 503 while new
    /// connections are still accepted and served, in seconds, so that load
    /// balancers take the instance out before it stops listening.
    #[arg(long, env = "MAESTRO_SHUTDOWN_DELAY_SECONDS", default_value = "5", value_parser = non_negative_duration)]
    pub shutdown_delay_seconds: Duration,
}

/// How callers' tokens are verified. With none of the keys set, `serve`
/// makes a random development secret.
#[derive(Debug, Args)]
pub struct JwtArgs {
    /// Shared secret for HS256 tokens (development, tests), at least 32 bytes.
    #[arg(long, env = "MAESTRO_JWT_HS256_SECRET", hide_env_values = true, value_parser = secret)]
    pub jwt_hs256_secret: Option<SecretString>,

    /// A JWKS endpoint with the RS256/ES256 verification keys.
    #[arg(long, env = "MAESTRO_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// An OIDC issuer URL: its `/.well-known/openid-configuration` names the
    /// JWKS endpoint (instead of `MAESTRO_JWT_JWKS_URL`).
    #[arg(long, env = "MAESTRO_JWT_OIDC_ISSUER_URL")]
    pub jwt_oidc_issuer_url: Option<String>,

    /// How often the JWKS is fetched again in the background, in seconds.
    #[arg(long, env = "MAESTRO_JWT_JWKS_REFRESH_SECONDS", default_value_t = 300)]
    pub jwt_jwks_refresh_seconds: u64,

    /// The shortest time between two JWKS fetches caused by tokens naming
    /// an unknown `kid`, in seconds.
    #[arg(
        long,
        env = "MAESTRO_JWT_JWKS_MIN_REFETCH_SECONDS",
        default_value_t = 30
    )]
    pub jwt_jwks_min_refetch_seconds: u64,

    /// A PEM file with one RS256 or ES256 public key.
    #[arg(long, env = "MAESTRO_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The claims tokens must carry.
    #[command(flatten)]
    pub claims: ClaimArgs,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "MAESTRO_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    pub jwt_leeway_seconds: u64,
}

impl JwtArgs {
    /// Whether any verification key is configured.
    pub fn has_key(&self) -> bool {
        self.jwt_hs256_secret.is_some()
            || self.jwt_jwks_url.is_some()
            || self.jwt_oidc_issuer_url.is_some()
            || self.jwt_public_key_file.is_some()
    }
}

/// Settings of the memory backend.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// A JSON file `{"pipelines": [PIPELINE, ...]}` to load; the built-in
    /// demo set when unset.
    #[arg(long, env = "MAESTRO_MEMORY_FIXTURE")]
    pub memory_fixture: Option<PathBuf>,

    /// How long a simulated run stays RUNNING before SUCCESS, in seconds
    /// (fractions allowed); 0 finishes runs at once.
    #[arg(long, env = "MAESTRO_MEMORY_RUN_SECONDS", default_value_t = 10.0, value_parser = non_negative_seconds)]
    pub memory_run_seconds: f64,

    /// The most runs a pipeline may have waiting; execute beyond it answers
    /// 429 `PipelineQueueFull`.
    #[arg(long, env = "MAESTRO_MEMORY_QUEUE_LIMIT", default_value_t = 1000)]
    pub memory_queue_limit: usize,

    /// The most finished runs kept per pipeline, newest first.
    #[arg(long, env = "MAESTRO_MEMORY_HISTORY_LIMIT", default_value_t = 10_000)]
    pub memory_history_limit: usize,
}

/// Settings of the Platform-API backend.
#[derive(Debug, Args)]
pub struct PlatformApiArgs {
    /// The Platform-API service's base URL.
    #[arg(long, env = "MAESTRO_PLATFORM_API_URL")]
    pub platform_api_url: Option<String>,

    /// The service token sent to Platform-API as a bearer token.
    #[arg(long, env = "MAESTRO_PLATFORM_API_TOKEN", hide_env_values = true, value_parser = secret)]
    pub platform_api_token: Option<SecretString>,
}

/// Settings of the Airflow backend.
#[derive(Debug, Args)]
pub struct AirflowArgs {
    /// The Apache Airflow 3 API server (REST API v2).
    #[arg(long, env = "MAESTRO_AIRFLOW_URL")]
    pub airflow_url: Option<String>,

    /// User exchanged, with the password, at Airflow's `/auth/token`.
    #[arg(long, env = "MAESTRO_AIRFLOW_USERNAME")]
    pub airflow_username: Option<String>,

    /// Password exchanged, with the user, at Airflow's `/auth/token`.
    #[arg(long, env = "MAESTRO_AIRFLOW_PASSWORD", hide_env_values = true, value_parser = secret)]
    pub airflow_password: Option<SecretString>,

    /// A fixed bearer token for Airflow, instead of user and password.
    #[arg(long, env = "MAESTRO_AIRFLOW_TOKEN", hide_env_values = true, value_parser = secret)]
    pub airflow_token: Option<SecretString>,

    /// A DAG belongs to the customer named in its tag `<prefix><id>`.
    #[arg(
        long,
        env = "MAESTRO_AIRFLOW_CUSTOMER_TAG_PREFIX",
        default_value = "customer:"
    )]
    pub airflow_customer_tag_prefix: String,

    /// How long, in milliseconds, a DAG read unpaused is trusted to stay so
    /// before a trigger reads it again; 0 reads it before every trigger.
    #[arg(long, env = "MAESTRO_AIRFLOW_DAG_CACHE_MS", default_value_t = 1_000)]
    pub airflow_dag_cache_ms: u64,
}

/// Settings of `maestro token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The customer the token acts for.
    #[arg(long)]
    pub customer: String,

    /// The token's subject (`sub`): who acts.
    #[arg(long)]
    pub subject: Option<String>,

    /// How long the token is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,

    /// The secret to sign with.
    #[arg(long, env = "MAESTRO_JWT_HS256_SECRET", hide_env_values = true, value_parser = secret)]
    pub jwt_hs256_secret: Option<SecretString>,

    /// The claims to put in the token.
    #[command(flatten)]
    pub claims: ClaimArgs,
}

/// The claims of a token besides its lifetime: what the service requires
/// of the tokens it takes, and what `maestro token` puts in the ones it
/// mints, so that the two agree.
#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// The claim that names the caller's customer.
    #[arg(
        long,
        env = "MAESTRO_JWT_CUSTOMER_CLAIM",
        default_value = "customer_id"
    )]
    pub jwt_customer_claim: String,

    /// When set, the `iss` the service requires of tokens, and that
    /// `maestro token` puts in them.
    #[arg(long, env = "MAESTRO_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, the `aud` the service requires of tokens, and that
    /// `maestro token` puts in them.
    #[arg(long, env = "MAESTRO_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw.to_owned()))
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d`.
fn duration(raw: &str) -> Result<Duration, String> {
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration such as 90s, 15m, 24h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{raw}` has an unknown unit: use s, m, h or d")),
    };
    match number.checked_mul(unit) {
        Some(0) | None => Err(format!("`{raw}` must be more than zero and at most years")),
        Some(seconds) => Ok(Duration::from_secs(seconds)),
    }
}

fn non_negative_seconds(raw: &str) -> Result<f64, String> {
    let seconds: f64 = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not a number of seconds"))?;
    if seconds.is_finite() && (0.0..=86_400.0 * 365.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("`{raw}` must be between 0 and one year"))
    }
}

/// Parses a number of seconds, fractions allowed, more than zero.
fn positive_seconds(raw: &str) -> Result<Duration, String> {
    let seconds = non_negative_seconds(raw)?;
    if seconds > 0.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("`{raw}` must be more than zero"))
    }
}

/// Parses a number of seconds, fractions allowed, zero included.
fn non_negative_duration(raw: &str) -> Result<Duration, String> {
    non_negative_seconds(raw).map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_otlp_endpoint_is_a_base_url_and_empty_is_off() {
        assert_eq!(
            otlp_endpoint("http://collector:4318"),
            Ok(OtlpEndpoint::Traces(
                "http://collector:4318/v1/traces".to_owned()
            ))
        );
        assert_eq!(
            otlp_endpoint("https://otel.example/base/"),
            Ok(OtlpEndpoint::Traces(
                "https://otel.example/base/v1/traces".to_owned()
            ))
        );
        assert_eq!(otlp_endpoint(""), Ok(OtlpEndpoint::Off));
        for bad in [
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "not a url",
        ] {
            assert!(otlp_endpoint(bad).is_err(), "{bad}");
        }
        let Some(Command::Serve(config)) = Cli::try_parse_from([
            "maestro",
            "serve",
            "--otel-exporter-otlp-endpoint",
            "",
            "--otel-service-name",
            "",
        ])
        .unwrap()
        .command
        else {
            panic!("expected serve");
        };
        assert_eq!(config.tracing.traces_url(), None);
        assert_eq!(config.tracing.service_name(), "maestro");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_means_serve_with_the_defaults() {
        let cli = Cli::try_parse_from(["maestro"]).unwrap();
        assert!(cli.command.is_none());
        let Command::Serve(config) = Cli::try_parse_from(["maestro", "serve"])
            .unwrap()
            .command
            .unwrap()
        else {
            panic!("expected serve");
        };
        assert_eq!(config.backend, Backend::Memory);
        assert_eq!(config.upstream_timeout(), Duration::from_secs(10));
        assert_eq!(config.jwt.claims.jwt_customer_claim, "customer_id");
        assert_eq!(config.airflow.airflow_customer_tag_prefix, "customer:");
        assert_eq!(
            Duration::from_millis(config.airflow.airflow_dag_cache_ms),
            adapter_airflow::DEFAULT_DAG_CACHE_TTL
        );
    }

    #[test]
    fn idempotency_ttls_take_a_unit() {
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "0", "h", "10w", "-5s", "1.5h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_edge_limits_default_to_the_contracts() {
        let Some(Command::Serve(config)) =
            Cli::try_parse_from(["maestro", "serve"]).unwrap().command
        else {
            panic!("expected serve");
        };
        let edge = &config.edge;
        assert_eq!(edge.header_read_timeout_seconds, Duration::from_secs(10));
        assert_eq!(edge.idle_timeout_seconds, Duration::from_secs(60));
        assert_eq!(
            edge.body_timeout_seconds,
            adapter_http::DEFAULT_BODY_TIMEOUT
        );
        assert_eq!(
            edge.request_timeout_seconds,
            adapter_http::DEFAULT_REQUEST_TIMEOUT
        );
        assert_eq!(edge.max_connections, 10_000);
        assert_eq!(edge.shutdown_delay_seconds, Duration::from_secs(5));
    }

    #[test]
    fn edge_timeouts_take_fractions_and_refuse_zero() {
        let parse = |args: &[&str]| {
            let mut all = vec!["maestro", "serve"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        assert!(parse(&["--header-read-timeout-seconds", "0.5"]).is_ok());
        assert!(parse(&["--idle-timeout-seconds", "0"]).is_err());
        assert!(parse(&["--body-timeout-seconds", "-1"]).is_err());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--shutdown-delay-seconds", "0"]).is_ok());
    }

    #[test]
    fn the_idempotency_keys_per_customer_default_to_the_domains_and_refuse_zero() {
        let parse = |args: &[&str]| {
            let mut all = vec!["maestro", "serve"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|cli| cli.command) {
                Ok(Some(Command::Serve(config))) => Ok(config.idempotency_keys_per_customer),
                Ok(_) => panic!("expected serve"),
                Err(err) => Err(err),
            }
        };
        assert_eq!(
            parse(&[]).unwrap(),
            domain::IdempotencyConfig::DEFAULT_KEYS_PER_CUSTOMER
        );
        assert_eq!(parse(&["--idempotency-keys-per-customer", "5"]).unwrap(), 5);
        assert!(parse(&["--idempotency-keys-per-customer", "0"]).is_err());
    }

    #[test]
    fn the_shared_rate_limit_waits_50_ms_for_redis_by_default_and_never_zero() {
        let parse = |args: &[&str]| {
            let mut all = vec!["maestro", "serve"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|cli| cli.command) {
                Ok(Some(Command::Serve(config))) => Ok(config.rate_limit_redis_timeout_ms),
                Ok(_) => panic!("expected serve"),
                Err(err) => Err(err),
            }
        };
        assert_eq!(parse(&[]).unwrap(), 50);
        assert_eq!(parse(&["--rate-limit-redis-timeout-ms", "20"]).unwrap(), 20);
        assert!(parse(&["--rate-limit-redis-timeout-ms", "0"]).is_err());
    }

    #[test]
    fn negative_run_seconds_are_refused() {
        assert!(Cli::try_parse_from(["maestro", "serve", "--memory-run-seconds", "-1"]).is_err());
        assert!(Cli::try_parse_from(["maestro", "serve", "--memory-run-seconds", "0.5"]).is_ok());
    }
}
