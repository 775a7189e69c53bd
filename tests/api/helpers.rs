//! The `TestApp`: the service on port 0 over a fixture, either on the
//! memory backend in process or as the real `maestro` binary in front of a
//! fake Platform-API upstream, with one method per endpoint and token
//! helpers; and `on_each_backend!`, which runs one contract test on both.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use app::{Cli, Command};
use clap::Parser as _;
use reqwest::{Client, Response, header::CONTENT_TYPE};
use serde_json::{Value, json};

use crate::{
    fake_platform::{self, FakePlatform, SERVICE_TOKEN},
    feed::{EventStream, PATIENCE},
    maestro::Maestro,
};

/// The secret the test services verify with.
pub(crate) const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// Customer `acme`: an active pipeline, a paused one, a scheduled one.
pub(crate) const ACME: &str = "acme";
pub(crate) const ACTIVE: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
pub(crate) const PAUSED: &str = "2c44be3a_44e4_4948_8ffc_94d93d9ca1ae";
pub(crate) const SCHEDULED: &str = "3d55cf4b_55f5_4a59_9aad_a5eaa4adb2bf";
/// Customer `globex` and its one pipeline.
pub(crate) const GLOBEX: &str = "globex";
pub(crate) const GLOBEX_PIPELINE: &str = "4e66d05c_6606_4b6a_8bbe_b6fbb5bec3c0";
/// A pipeline id nobody has.
pub(crate) const MISSING: &str = "5f77e16d_7717_4c7b_8ccf_c70cc6cfd4d1";

/// The hyphenated, upper-case spelling of an underscored id.
pub(crate) fn shouted(id: &str) -> String {
    id.replace('_', "-").to_uppercase()
}

/// The fixture every test service loads, written once.
pub(crate) fn fixture() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let fixture = json!({"pipelines": [
            {"id": shouted(ACTIVE), "customer_id": ACME, "name": "Load orders",
             "description": "Loads the day's orders", "cron": null, "status": "active",
             "created_at": "2024-12-01T09:00:00+00:00", "updated_at": "2024-12-02T09:00:00+00:00",
             "jobs": [{"name": "extract", "type": "sql"}]},
            {"id": PAUSED, "customer_id": ACME, "name": "Paused export", "status": "paused"},
            {"id": SCHEDULED, "customer_id": ACME, "name": "Nightly report", "cron": "0 3 * * *"},
            {"id": GLOBEX_PIPELINE, "customer_id": GLOBEX, "name": "Globex sync"},
        ]});
        let path =
            std::env::temp_dir().join(format!("maestro-fixture-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, fixture.to_string()).unwrap();
        path
    })
    .clone()
}

/// A token for `customer`, valid for an hour.
pub(crate) fn token(customer: &str) -> String {
    sign(&json!({"customer_id": customer, "sub": "tester", "exp": now() + 3600}))
}

/// Signs any claims with the test secret.
pub(crate) fn sign(claims: &Value) -> String {
    sign_with(SECRET.as_bytes(), claims)
}

/// Signs any claims as an HS256 token with `secret`.
pub(crate) fn sign_with(secret: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &key,
    )
    .unwrap()
}

/// A clock that shows the wall clock's time now and moves only when a test
/// moves it: near enough to the real time for a receiver that checks a
/// webhook's timestamp against its own clock.
pub(crate) fn manual_clock() -> domain::ManualClock {
    domain::ManualClock::new(chrono::Utc::now())
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Turns `async fn name(backend: Backend)` into two tests, `name::on_memory`
/// and `name::on_platform_api`: the same body, so the same assertions, on
/// each backend. Written just above the function, where `#[tokio::test]`
/// would be; a `#[tokio::test(...)]` attribute may come first to choose the
/// runtime.
macro_rules! on_each_backend {
    ($case:ident) => {
        on_each_backend!(
            #[tokio::test]
            $case
        );
    };
    (#[$test:meta] $case:ident) => {
        mod $case {
            #[$test]
            async fn on_memory() {
                super::$case(crate::helpers::Backend::Memory).await;
            }

            #[$test]
            async fn on_platform_api() {
                super::$case(crate::helpers::Backend::PlatformApi).await;
            }
        }
    };
}
pub(crate) use on_each_backend;

/// The backend a [`TestApp`] serves the contract from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The memory backend, the service served in process.
    Memory,
    /// The real `maestro` binary with `MAESTRO_BACKEND=platform-api`, in
    /// front of [`FakePlatform`] over the same fixture.
    PlatformApi,
}

/// The service on a free loopback port.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) client: Client,
    /// The state of the service served in process.
    state: Option<adapter_http::AppState>,
    /// The rest of the service served in process (`app::build`'s answer,
    /// whose type is not public): kept for as long as the app, since the
    /// feed's and the webhooks' loops stop when it is dropped.
    _service: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The binary, on the Platform-API backend; dropping it kills it.
    maestro: Option<Maestro>,
    /// The fake upstream, when the binary is in front of it.
    upstream: Option<FakePlatform>,
}

impl TestApp {
    /// The service over the fixture, with runs that stay RUNNING an hour.
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// The service on `backend`, as [`TestApp::spawn`] makes it.
    pub(crate) async fn spawn_on(backend: Backend) -> Self {
        Self::spawn_on_with(backend, &[]).await
    }

    /// The service on `backend` with extra `maestro serve` flags, as
    /// [`TestApp::spawn_with`] and [`TestApp::spawn_platform_api`] take them.
    pub(crate) async fn spawn_on_with(backend: Backend, extra: &[&str]) -> Self {
        match backend {
            Backend::Memory => Self::spawn_with(extra).await,
            Backend::PlatformApi => Self::spawn_platform_api(extra).await,
        }
    }

    /// The service with extra `maestro serve` flags.
    pub(crate) async fn spawn_with(extra: &[&str]) -> Self {
        Self::spawn_on_clock(None, extra).await
    }

    /// The service on the memory backend as [`TestApp::spawn_with`] makes
    /// it (`--memory-run-seconds` among `extra` replaces its hour), with every part of it reading the time from `clock`: a test
    /// moves the service's time (runs ending, webhook retries falling due)
    /// by moving the clock. Timers that pace the service's loops still run
    /// on real time.
    pub(crate) async fn spawn_with_clock(clock: Arc<dyn domain::Clock>, extra: &[&str]) -> Self {
        Self::spawn_on_clock(Some(clock), extra).await
    }

    async fn spawn_on_clock(clock: Option<Arc<dyn domain::Clock>>, extra: &[&str]) -> Self {
        let fixture = fixture();
        let mut args = vec![
            "maestro",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--jwt-hs256-secret",
            SECRET,
            "--memory-fixture",
            fixture.to_str().unwrap(),
        ];
        // Runs stay RUNNING an hour unless the test says otherwise.
        if !extra.contains(&"--memory-run-seconds") {
            args.extend_from_slice(&["--memory-run-seconds", "3600"]);
        }
        args.extend_from_slice(extra);
        let Some(Command::Serve(config)) = Cli::try_parse_from(args).unwrap().command else {
            unreachable!()
        };
        let built = match clock {
            Some(clock) => app::build_with_clock(&config, clock).await,
            None => app::build(&config).await,
        }
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = built.router.clone();
        let state = built.state.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            base: format!("http://{addr}"),
            client: Client::new(),
            state: Some(state),
            _service: Some(Box::new(built)),
            maestro: None,
            upstream: None,
        }
    }

    /// The real `maestro` binary as the gateway to a fake Platform-API
    /// upstream over the fixture, with extra `maestro serve` flags.
    ///
    /// The upstream is a memory backend with the settings [`TestApp::spawn`]
    /// uses, so the memory flags among `extra` (`--memory-queue-limit`) set
    /// up the upstream rather than the binary.
    pub(crate) async fn spawn_platform_api(extra: &[&str]) -> Self {
        let mut queue_limit = adapter_memory::MemoryConfig::DEFAULT_QUEUE_LIMIT;
        let mut run_duration = std::time::Duration::from_secs(3600);
        let mut flags = Vec::new();
        let mut extra = extra.iter().copied();
        while let Some(flag) = extra.next() {
            match flag {
                "--memory-queue-limit" => queue_limit = extra.next().unwrap().parse().unwrap(),
                "--memory-run-seconds" => {
                    run_duration =
                        std::time::Duration::from_secs_f64(extra.next().unwrap().parse().unwrap());
                }
                other if other.starts_with("--memory-") => {
                    panic!("{other} has no upstream equivalent here")
                }
                other => flags.push(other.to_owned()),
            }
        }
        let upstream = FakePlatform::start(fake_platform::memory_config_with_runs(
            queue_limit,
            run_duration,
        ))
        .await;
        let mut app = Self::gateway(upstream.url(), flags, Vec::new()).await;
        app.upstream = Some(upstream);
        app
    }

    /// The real `maestro` binary as the gateway to the upstream at `url`,
    /// with the fake's service token, extra `maestro serve` flags and extra
    /// settings.
    pub(crate) async fn gateway(
        url: String,
        flags: Vec<String>,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        // Starting a process and reading its output block: off the runtime.
        let (maestro, addr) = tokio::task::spawn_blocking(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            let maestro = Maestro::start_platform_api(&url, SERVICE_TOKEN, &flags, &env);
            let addr = maestro.addr();
            (maestro, addr)
        })
        .await
        .unwrap();
        Self {
            base: format!("http://{addr}"),
            client: Client::new(),
            state: None,
            _service: None,
            maestro: Some(maestro),
            upstream: None,
        }
    }

    /// The fake upstream; panics unless the app is in front of it.
    /// The fake upstream, for a `TestApp` in front of one.
    pub(crate) fn platform_upstream(&self) -> Option<&FakePlatform> {
        self.upstream.as_ref()
    }

    pub(crate) fn upstream(&self) -> &FakePlatform {
        self.upstream
            .as_ref()
            .expect("a TestApp in front of the fake upstream")
    }

    /// Stops the binary with SIGTERM, waits until it exits and returns all
    /// it wrote; panics on the memory backend.
    pub(crate) fn stop(&mut self) -> String {
        let maestro = self.maestro.as_mut().expect("a TestApp running the binary");
        maestro.terminate();
        assert!(maestro.wait_exit().success());
        maestro.all_output()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The text of the answer to `GET path`, sent without credentials.
    pub(crate) async fn text(&self, path: &str) -> String {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// `GET path` as `customer`, the path sent byte for byte: an HTTP
    /// client library would normalise `%2E` and `..` segments away before
    /// they reach the service, a client on a socket does not.
    pub(crate) async fn get_raw(&self, path: &str, customer: &str) -> (u16, Value) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token(customer)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body, as `customer`.
    pub(crate) async fn post_json(&self, path: &str, customer: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token(customer))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn execute(&self, customer: &str, pipeline_id: &str) -> Response {
        self.post_json(
            "/platform/pipeline/execute",
            customer,
            &json!({"pipeline_id": pipeline_id}),
        )
        .await
    }

    /// `POST /platform/pipeline/execute` with an `Idempotency-Key`.
    pub(crate) async fn execute_with_key(
        &self,
        customer: &str,
        pipeline_id: &str,
        key: &str,
    ) -> Response {
        self.client
            .post(self.url("/platform/pipeline/execute"))
            .bearer_auth(token(customer))
            .header("Idempotency-Key", key)
            .json(&json!({"pipeline_id": pipeline_id}))
            .send()
            .await
            .unwrap()
    }

    /// How many runs the pipeline has, as `X-Total-Count` says.
    pub(crate) async fn run_count(&self, customer: &str, pipeline_id: &str) -> String {
        let response = self.list_runs(customer, pipeline_id, "").await;
        response.headers()["x-total-count"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn pause(&self, customer: &str, pipeline_id: &str) -> Response {
        self.post_json(
            "/platform/pipeline/pause",
            customer,
            &json!({"pipeline_id": pipeline_id}),
        )
        .await
    }

    pub(crate) async fn unpause(&self, customer: &str, pipeline_id: &str) -> Response {
        self.post_json(
            "/platform/pipeline/unpause",
            customer,
            &json!({"pipeline_id": pipeline_id}),
        )
        .await
    }

    /// `GET path` as `customer`.
    pub(crate) async fn get(&self, path: &str, customer: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token(customer))
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn get_pipeline(&self, customer: &str, pipeline_id: &str) -> Response {
        self.get(&format!("/platform/pipeline/{pipeline_id}"), customer)
            .await
    }

    pub(crate) async fn list_pipelines(&self, customer: &str) -> Response {
        self.get("/platform/pipelines", customer).await
    }

    pub(crate) async fn list_runs(
        &self,
        customer: &str,
        pipeline_id: &str,
        query: &str,
    ) -> Response {
        self.get(
            &format!("/platform/pipeline/{pipeline_id}/pipeline_run{query}"),
            customer,
        )
        .await
    }

    pub(crate) async fn get_run(
        &self,
        customer: &str,
        pipeline_id: &str,
        run_id: &str,
    ) -> Response {
        let encoded =
            percent_encoding::utf8_percent_encode(run_id, percent_encoding::NON_ALPHANUMERIC);
        self.get(
            &format!("/platform/pipeline/{pipeline_id}/pipeline_run/{encoded}"),
            customer,
        )
        .await
    }

    /// Executes and returns the new run id.
    /// `POST .../pipeline_run/{run_id}/cancel` with no body.
    pub(crate) async fn cancel(&self, customer: &str, pipeline_id: &str, run_id: &str) -> Response {
        let encoded =
            percent_encoding::utf8_percent_encode(run_id, percent_encoding::NON_ALPHANUMERIC);
        self.client
            .post(self.url(&format!(
                "/platform/pipeline/{pipeline_id}/pipeline_run/{encoded}/cancel"
            )))
            .bearer_auth(token(customer))
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn run_id_of_execute(&self, customer: &str, pipeline_id: &str) -> String {
        let response = self.execute(customer, pipeline_id).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["data"]["run_id"].as_str().unwrap().to_owned()
    }

    /// Starts draining, as on SIGTERM: open event streams end. Only for
    /// the service served in process.
    pub(crate) fn start_draining(&self) {
        self.state
            .as_ref()
            .expect("the service served in process")
            .start_draining();
    }

    /// `GET /platform/events{query}` as `customer`, with `Last-Event-ID`
    /// when given: the stream, or the answer when it is not one.
    pub(crate) async fn open_events(
        &self,
        customer: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, Response> {
        EventStream::open(
            &self.client,
            &self.url(&format!("/platform/events{query}")),
            &token(customer),
            last_event_id,
        )
        .await
    }

    /// The stream of `customer`'s events, which must open.
    pub(crate) async fn events(&self, customer: &str, query: &str) -> EventStream {
        self.resume_events(customer, query, None).await
    }

    /// The stream of `customer`'s events from `last_event_id`, which must
    /// open.
    pub(crate) async fn resume_events(
        &self,
        customer: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> EventStream {
        match self.open_events(customer, query, last_event_id).await {
            Ok(stream) => stream,
            Err(response) => {
                let status = response.status();
                panic!(
                    "the stream did not open: {status} {}",
                    response.text().await.unwrap()
                )
            }
        }
    }

    /// `POST /platform/webhooks` with `body`, as `customer`.
    pub(crate) async fn register_webhook(&self, customer: &str, body: &Value) -> Response {
        self.post_json("/platform/webhooks", customer, body).await
    }

    /// Registers `body` as `customer`, which must succeed: the webhook's
    /// id and secret.
    pub(crate) async fn webhook(&self, customer: &str, body: &Value) -> (String, String) {
        let (status, registered) = json_of(self.register_webhook(customer, body).await).await;
        assert_eq!(status, 201, "{registered}");
        let data = &registered["data"];
        (
            data["id"].as_str().unwrap().to_owned(),
            data["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// `GET /platform/webhooks` as `customer`.
    pub(crate) async fn list_webhooks(&self, customer: &str) -> Response {
        self.get("/platform/webhooks", customer).await
    }

    /// `DELETE /platform/webhooks/{id}` as `customer`.
    pub(crate) async fn delete_webhook(&self, customer: &str, id: &str) -> Response {
        self.client
            .delete(self.url(&format!("/platform/webhooks/{id}")))
            .bearer_auth(token(customer))
            .send()
            .await
            .unwrap()
    }

    /// The value of one series of `GET /metrics`, named with its labels
    /// as the text shows it (`maestro_webhook_deliveries_total{outcome="failed"}`);
    /// 0 when it is not there yet.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = self.text("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// Waits until the metric `series` is as `wanted` says, within
    /// [`PATIENCE`], reading it every few milliseconds.
    pub(crate) async fn wait_for_metric(&self, series: &str, wanted: impl Fn(f64) -> bool) {
        let reached = tokio::time::timeout(PATIENCE, async {
            while !wanted(self.metric(series).await) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "{series} is still {} after {PATIENCE:?}",
            self.metric(series).await
        );
    }
}

/// The status and JSON body of a response, checking that it is JSON.
pub(crate) async fn json_of(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "status {status}: content type {content_type:?} is not JSON"
    );
    (status, response.json().await.unwrap())
}

/// The contract's error envelope.
pub(crate) fn envelope(exception_type: &str, traceback: &str) -> Value {
    json!({"detail": {"status": false, "exception_type": exception_type, "traceback": traceback, "data": null}})
}

/// The 404 of a pipeline the caller cannot see.
pub(crate) fn not_found(pipeline_id: &str) -> Value {
    envelope(
        "PipelineNotFound",
        &format!("Pipeline with id {pipeline_id} not found"),
    )
}

/// Whether an answer is one given again for an `Idempotency-Key`.
pub(crate) fn replayed(response: &Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

/// Sends `count` executes with one key at once to the given gateways, in
/// turn, and checks that every answer is the one stored 200 or a 409.
pub(crate) async fn concurrent_executes(
    apps: &[Arc<TestApp>],
    key: &str,
    count: usize,
) -> HashSet<String> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let app = apps[i % apps.len()].clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let response = app.execute_with_key(ACME, ACTIVE, &key).await;
                let retry_after = response.headers().get("retry-after").cloned();
                let (status, body) = json_of(response).await;
                (status, body, retry_after)
            })
        })
        .collect();
    let mut run_ids = HashSet::new();
    for task in tasks {
        let (status, body, retry_after) = task.await.unwrap();
        match status {
            200 => {
                run_ids.insert(body["data"]["run_id"].as_str().unwrap().to_owned());
            }
            409 => {
                assert_eq!(body["detail"]["exception_type"], "IdempotencyKeyInProgress");
                assert!(retry_after.is_some(), "a 409 without Retry-After");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    run_ids
}
