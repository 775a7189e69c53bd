//! Test-only support for the end-to-end tests against a real Apache
//! Airflow 3, shared by the adapter's (`crates/adapter-airflow/tests/e2e.rs`,
//! the `e2e` target of `adapter-airflow`) and the `maestro` binary's
//! (`tests/e2e/airflow.rs`, in the `e2e` target of `app`), both built only
//! with their crate's `e2e` feature: the ids of the test DAGs, a small
//! client of Airflow's own REST API to check what Maestro did (token
//! exchange, DAG and DAG-run reads, pausing, triggering a run behind
//! Maestro's back, task states and what a task returned through XCom), and signals to Airflow's process group. The
//! tests over a fake Airflow on wiremock use it too, for
//! the fake's answer to a `conf_contains` query ([`dag_runs_page`]).
//!
//! What talks to Airflow finds the one `cargo xtask e2e-airflow` starts
//! through the environment it sets (`MAESTRO_E2E_AIRFLOW_URL`,
//! `MAESTRO_E2E_AIRFLOW_USERNAME`, `MAESTRO_E2E_AIRFLOW_PASSWORD`,
//! `MAESTRO_E2E_AIRFLOW_PGID`), and panics with the variable's name when it
//! is missing: a test that cannot reach Airflow fails, it never passes
//! quietly. Failures panic, as they do in tests.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Client, RequestBuilder};
use serde_json::{Value, json};

// The DAGs of tests/airflow/dags/maestro_e2e.py and, for customer
// vandelay, of tests/airflow/dags/maestro_e2e_lifecycle.py.

/// Acme's fast on-demand DAG, one run at a time.
pub const ACME_ORDERS: &str = "9f362da2_da3e_4051_82af_ad4b98242de3";
/// Acme's DAG on a cron schedule.
pub const ACME_NIGHTLY: &str = "cbcf20a2_85e8_45d5_bdb6_4ac87657d9c4";
/// Acme's DAG that the tests pause and unpause.
pub const ACME_TOGGLE: &str = "d946c383_8024_4991_8ff5_d614a0148c05";
/// Globex's DAG whose task always fails.
pub const GLOBEX_FAILING: &str = "e01bd70b_d3a3_4c9d_b21c_13fd23a61210";
/// Globex's DAG that succeeds.
pub const GLOBEX_OK: &str = "aa87333e_4d68_49cf_9995_a8f84fe46fa0";
/// A DAG without a customer tag, visible to no one.
pub const UNTAGGED: &str = "ca6e944a_7223_4685_ab23_ab1767fbb112";
/// A DAG tagged for both acme and globex, visible to no one.
pub const TWO_CUSTOMERS: &str = "8c10f96b_c651_4d6e_8e5a_34c2ceadcec6";
/// An acme DAG whose id is not a UUID, visible to no one.
pub const NOT_A_UUID: &str = "acme_nightly_export";
/// An acme DAG whose id is a hyphenated UUID, visible to no one.
pub const HYPHENATED: &str = "ca5e64f3-e10d-4f1f-80f7-1821e7cd6029";
/// Hooli's only DAG, triggered by the Idempotency-Key test alone, which
/// counts its runs.
pub const HOOLI_ONCE: &str = "39ea25ea_a128_4d37_bc60_a039ca1fa7c0";
/// Vandelay's DAG that declares the parameters `date` (a string of format
/// `date`, default `2024-01-01`) and `full_refresh` (a boolean, default
/// false), and whose one task, [`ECHO_TASK`], returns the `conf` it was
/// triggered with and the params it resolved to, as its XCom
/// `return_value`: `{"conf": {...}, "params": {"date", "full_refresh"}}`.
pub const VANDELAY_PARAMS: &str = "67dde500_a1c4_4267_b434_c954a1676979";
/// The task of [`VANDELAY_PARAMS`].
pub const ECHO_TASK: &str = "echo";
/// Vandelay's DAG whose one task, [`SLEEP_TASK`], sleeps for 120 s, one run
/// at a time: for cancelling a run while its task runs.
pub const VANDELAY_SLEEPER: &str = "bd28c0e8_4f3d_4381_a4ea_bfb0a8a3b424";
/// The task of [`VANDELAY_SLEEPER`].
pub const SLEEP_TASK: &str = "sleep";
/// Every test DAG, which [`Airflow::connect`] waits for.
pub const ALL_DAGS: [&str; 12] = [
    ACME_ORDERS,
    ACME_NIGHTLY,
    ACME_TOGGLE,
    GLOBEX_FAILING,
    GLOBEX_OK,
    UNTAGGED,
    TWO_CUSTOMERS,
    NOT_A_UUID,
    HYPHENATED,
    HOOLI_ONCE,
    VANDELAY_PARAMS,
    VANDELAY_SLEEPER,
];

/// How long a run of the test DAGs may take to finish, queueing included.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// How long the DAG processor may take to parse the test DAGs after the
/// API answers.
const PARSE_DEADLINE: Duration = Duration::from_secs(120);

/// The environment variable `name`.
///
/// # Panics
///
/// When it is not set, naming it and the command that sets it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; run cargo xtask e2e-airflow"))
}

/// The JSON answer to `request`, sent.
///
/// # Panics
///
/// On any failure or a status other than 2xx.
async fn json_of(request: RequestBuilder) -> Value {
    let response = request.send().await.unwrap().error_for_status().unwrap();
    response.json().await.unwrap()
}

/// A run id as it travels in a path: `:` and `+` percent-encoded.
pub fn encoded(run_id: &str) -> String {
    utf8_percent_encode(run_id, NON_ALPHANUMERIC).to_string()
}

/// The `dag_run_id`s of DAG runs as Airflow lists them.
///
/// # Panics
///
/// When a run has no string `dag_run_id`.
pub fn dag_run_ids(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|run| run["dag_run_id"].as_str().unwrap().to_owned())
        .collect()
}

/// What a fake Airflow answers to `GET /api/v2/dags/{dag_id}/dagRuns` with
/// `conf_contains` and `limit` (given as the request's query string, `None`
/// when absent), over `runs` kept oldest first: the runs whose `conf`, as
/// JSON text, contains the text (Airflow matches it with `LIKE`), newest
/// first, at most `limit` of them, with `total_entries`.
///
/// # Panics
///
/// When `limit` is not a number.
pub fn dag_runs_page(runs: &[Value], conf_contains: Option<&str>, limit: Option<&str>) -> Value {
    let needle = conf_contains.unwrap_or_default();
    let limit: usize = limit.map_or(50, |limit| limit.parse().unwrap());
    let matching: Vec<&Value> = runs
        .iter()
        .rev()
        .filter(|run| run["conf"].to_string().contains(needle))
        .collect();
    serde_json::json!({
        "dag_runs": matching.iter().take(limit).collect::<Vec<_>>(),
        "total_entries": matching.len(),
    })
}

/// Airflow's own API, to check what Maestro did, as the test account.
pub struct Airflow {
    client: Client,
    url: String,
    token: String,
}

impl fmt::Debug for Airflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the token: test output may be shared.
        f.debug_struct("Airflow").field("url", &self.url).finish()
    }
}

impl Airflow {
    /// Exchanges the test account's password for a token, and waits until
    /// Airflow knows every test DAG.
    ///
    /// # Panics
    ///
    /// When the environment is missing, the exchange fails, or the DAGs
    /// are not parsed in time.
    pub async fn connect() -> Self {
        let client = Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        let url = env("MAESTRO_E2E_AIRFLOW_URL")
            .trim_end_matches('/')
            .to_owned();
        let answer = json_of(client.post(format!("{url}/auth/token")).json(&json!({
            "username": env("MAESTRO_E2E_AIRFLOW_USERNAME"),
            "password": env("MAESTRO_E2E_AIRFLOW_PASSWORD"),
        })))
        .await;
        let airflow = Self {
            client,
            url,
            token: answer["access_token"].as_str().unwrap().to_owned(),
        };
        airflow.wait_for_dags().await;
        airflow
    }

    /// `GET path` of Airflow's API, the answer as JSON.
    ///
    /// # Panics
    ///
    /// On any failure or a status other than 2xx.
    pub async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.url);
        json_of(self.client.get(url).bearer_auth(&self.token)).await
    }

    /// The DAG processor parses the DAG files after the API answers; wait
    /// until every test DAG is known.
    async fn wait_for_dags(&self) {
        let deadline = Instant::now() + PARSE_DEADLINE;
        loop {
            let dags = self.get("/api/v2/dags?limit=100").await;
            let known: HashSet<&str> = dags["dags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|dag| dag["dag_id"].as_str())
                .collect();
            if ALL_DAGS.iter().all(|dag| known.contains(dag)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test DAGs were not parsed: {known:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether Airflow has the DAG paused.
    ///
    /// # Panics
    ///
    /// When the DAG cannot be read.
    pub async fn is_paused(&self, dag_id: &str) -> bool {
        self.get(&format!("/api/v2/dags/{dag_id}")).await["is_paused"]
            .as_bool()
            .unwrap()
    }

    /// Pauses or unpauses the DAG straight in Airflow.
    ///
    /// # Panics
    ///
    /// When Airflow refuses.
    pub async fn set_paused(&self, dag_id: &str, paused: bool) {
        self.client
            .patch(format!("{}/api/v2/dags/{dag_id}", self.url))
            .bearer_auth(&self.token)
            .json(&json!({ "is_paused": paused }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Triggers a run of the DAG straight in Airflow, as someone using
    /// Airflow's own API would (not through Maestro), with `conf`; the run
    /// as Airflow answered it.
    ///
    /// # Panics
    ///
    /// When Airflow refuses.
    pub async fn trigger(&self, dag_id: &str, conf: Value) -> Value {
        json_of(
            self.client
                .post(format!("{}/api/v2/dags/{dag_id}/dagRuns", self.url))
                .bearer_auth(&self.token)
                .json(&json!({ "logical_date": null, "conf": conf })),
        )
        .await
    }

    /// The DAG's latest 100 runs, oldest first.
    ///
    /// # Panics
    ///
    /// When the runs cannot be read.
    pub async fn runs(&self, dag_id: &str) -> Vec<Value> {
        let page = self
            .get(&format!(
                "/api/v2/dags/{dag_id}/dagRuns?order_by=-id&limit=100"
            ))
            .await;
        let mut runs = page["dag_runs"].as_array().unwrap().clone();
        runs.reverse();
        runs
    }

    /// How many runs the DAG has.
    ///
    /// # Panics
    ///
    /// When the runs cannot be read.
    pub async fn run_count(&self, dag_id: &str) -> u64 {
        self.get(&format!("/api/v2/dags/{dag_id}/dagRuns?limit=1"))
            .await["total_entries"]
            .as_u64()
            .unwrap()
    }

    /// One run of the DAG, as Airflow has it.
    ///
    /// # Panics
    ///
    /// When the run cannot be read, or does not exist.
    pub async fn run(&self, dag_id: &str, run_id: &str) -> Value {
        self.get(&format!(
            "/api/v2/dags/{dag_id}/dagRuns/{}",
            encoded(run_id)
        ))
        .await
    }

    /// The state of the task `task_id` in the run (`None` before the
    /// scheduler has made its task instance, or before it has a state).
    ///
    /// # Panics
    ///
    /// When the run cannot be read.
    pub async fn task_state(&self, dag_id: &str, run_id: &str, task_id: &str) -> Option<String> {
        let answer = self
            .client
            .get(format!(
                "{}/api/v2/dags/{dag_id}/dagRuns/{}/taskInstances/{task_id}",
                self.url,
                encoded(run_id)
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let instance: Value = answer.error_for_status().unwrap().json().await.unwrap();
        instance["state"].as_str().map(str::to_owned)
    }

    /// Waits until the task `task_id` of the run is in `state`.
    ///
    /// # Panics
    ///
    /// When the run cannot be read, or the task is not in `state` within
    /// [`RUN_DEADLINE`].
    pub async fn wait_for_task_state(
        &self,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        state: &str,
    ) {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let now = self.task_state(dag_id, run_id, task_id).await;
            if now.as_deref() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{task_id} of {run_id} is {now:?}, not {state}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The value the task `task_id` of the run returned (its XCom
    /// `return_value`), as JSON.
    ///
    /// # Panics
    ///
    /// When the task has no such XCom, or it cannot be read.
    pub async fn returned(&self, dag_id: &str, run_id: &str, task_id: &str) -> Value {
        self.get(&format!(
            "/api/v2/dags/{dag_id}/dagRuns/{}/taskInstances/{task_id}/xcomEntries/return_value",
            encoded(run_id)
        ))
        .await["value"]
            .clone()
    }

    /// Waits until the run has finished, and returns Airflow's view of it.
    ///
    /// # Panics
    ///
    /// When the run cannot be read, or has not finished within
    /// [`RUN_DEADLINE`].
    pub async fn wait_until_finished(&self, dag_id: &str, run_id: &str) -> Value {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let run = self.run(dag_id, run_id).await;
            if matches!(run["state"].as_str(), Some("success" | "failed")) {
                return run;
            }
            assert!(Instant::now() < deadline, "{run_id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The ids of the DAGs Airflow has tagged for `customer`.
    ///
    /// # Panics
    ///
    /// When the DAGs cannot be read.
    pub async fn tagged(&self, customer: &str) -> BTreeSet<String> {
        let dags = self
            .get(&format!("/api/v2/dags?tags=customer:{customer}&limit=100"))
            .await;
        dags["dags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|dag| dag["dag_id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to Airflow's whole process
/// group, `MAESTRO_E2E_AIRFLOW_PGID`.
///
/// # Panics
///
/// When `kill` fails.
pub fn signal_airflow(signal: &str) {
    let group = format!("-{}", env("MAESTRO_E2E_AIRFLOW_PGID"));
    let status = Command::new("kill")
        .args([signal, "--", &group])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {group}");
}

/// Airflow frozen with `SIGSTOP`, and thawed again when dropped, also when
/// the test fails half-way: the tests after it need Airflow.
#[derive(Debug)]
pub struct Frozen;

impl Frozen {
    /// Freezes Airflow's process group: the kernel still accepts
    /// connections, and nothing answers.
    ///
    /// # Panics
    ///
    /// When `kill` fails.
    pub fn airflow() -> Self {
        signal_airflow("-STOP");
        Self
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // No panic in a drop that may run while a test already panics.
        let group = format!("-{}", env("MAESTRO_E2E_AIRFLOW_PGID"));
        let _ = Command::new("kill").args(["-CONT", "--", &group]).status();
    }
}
