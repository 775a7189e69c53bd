//! The feed's source over a wiremock upstream that keeps pipelines and runs
//! as a compliant Platform-API does, serving the routes the source calls
//! (`GET /pipelines` and `GET /pipeline/{id}/pipeline_run`, scoped to the
//! customer of `X-Customer-Id`), changed by the tests between polls.
//!
//! The source's poll interval is zero, so no test waits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapter_platform_api::{
    PlatformApiBackend, PlatformApiChanges, PlatformApiConfig, WINDOW, WatchedCustomers,
};
use domain::{CustomerId, RunChange, RunChangeSource, RunStatus, SourceCursor, StorageError};
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "s3rv1ce-t0ken-7Hq2xZ";
const ACME_ORDERS: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
const ACME_SALES: &str = "2c44be3a_44e4_4948_8ffc_94d93d9ca1ae";
const GLOBEX_BILLING: &str = "3d55cf4b_55f5_4a59_9aad_a5ea4eab1b2f";

/// A run as the upstream keeps it.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    status: RunStatus,
    /// Seconds after 2024-12-18T10:00:00Z.
    created: u32,
    updated: u32,
}

/// The upstream's store.
#[derive(Debug, Default)]
struct Store {
    /// Each pipeline's customer.
    pipelines: BTreeMap<String, String>,
    /// Each pipeline's runs, in the order they were made.
    runs: BTreeMap<String, Vec<Row>>,
    /// The upstream's clock, in seconds after 2024-12-18T10:00:00Z.
    now: u32,
    /// The customers whose requests fail with 500.
    failing: Vec<String>,
}

fn at(seconds: u32) -> String {
    format!(
        "2024-12-18T{:02}:{:02}:{:02}.000000+00:00",
        10 + seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn success(data: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"status": true, "data": data}))
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({"detail": {
        "status": false, "exception_type": "PipelineNotFound", "traceback": "not found", "data": null
    }}))
}

impl Store {
    /// The contract's routes that the source calls.
    fn serve(&self, request: &Request) -> ResponseTemplate {
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            &format!("Bearer {TOKEN}")
        );
        let customer = request
            .headers
            .get("x-customer-id")
            .unwrap()
            .to_str()
            .unwrap();
        if self.failing.iter().any(|failing| failing == customer) {
            return ResponseTemplate::new(500).set_body_string("boom");
        }
        let path = request.url.path();
        if path == "/pipelines" {
            let summaries: Vec<Value> = self
                .pipelines
                .iter()
                .filter(|(_, owner)| *owner == customer)
                .map(|(id, owner)| {
                    json!({
                        "pipeline_id": id, "customer_id": owner, "name": id, "description": "",
                        "cron": null, "status": "active", "created_at": at(0), "updated_at": at(0),
                        "last_status": null, "jobs": [],
                    })
                })
                .collect();
            return success(Value::Array(summaries));
        }
        let id = path
            .strip_prefix("/pipeline/")
            .and_then(|rest| rest.strip_suffix("/pipeline_run"))
            .unwrap_or_else(|| panic!("the source called {path}"));
        if self.pipelines.get(id).map(String::as_str) != Some(customer) {
            return not_found();
        }
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        let limit: usize = query["limit"].parse().unwrap();
        let offset: usize = query["offset"].parse().unwrap();
        let mut runs = self.runs.get(id).cloned().unwrap_or_default();
        runs.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        let page: Vec<Value> = runs
            .iter()
            .skip(offset)
            .take(limit)
            .map(|row| {
                json!({
                    "pipeline_run_id": row.id, "pipeline_id": id, "last_status": row.status.as_str(),
                    "created_at": at(row.created), "updated_at": at(row.updated), "trace": null,
                    "conf": {"date": "2024-12-18"},
                })
            })
            .collect();
        success(Value::Array(page)).insert_header("X-Total-Count", runs.len().to_string())
    }
}

/// The fake upstream and what the tests do to it.
struct Upstream {
    server: MockServer,
    store: Arc<Mutex<Store>>,
}

impl Upstream {
    async fn start() -> Self {
        let server = MockServer::start().await;
        let store = Arc::new(Mutex::new(Store::default()));
        let serving = Arc::clone(&store);
        Mock::given(any())
            .respond_with(move |request: &Request| serving.lock().unwrap().serve(request))
            .mount(&server)
            .await;
        let upstream = Self { server, store };
        upstream.pipeline("acme", ACME_ORDERS);
        upstream.pipeline("acme", ACME_SALES);
        upstream.pipeline("globex", GLOBEX_BILLING);
        upstream
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    fn pipeline(&self, customer: &str, id: &str) {
        self.store()
            .pipelines
            .insert(id.to_owned(), customer.to_owned());
    }

    /// A new run, queued, a second after the one before.
    fn trigger(&self, pipeline: &str, run_id: &str) {
        let mut store = self.store();
        store.now += 1;
        let now = store.now;
        store
            .runs
            .entry(pipeline.to_owned())
            .or_default()
            .push(Row {
                id: run_id.to_owned(),
                status: RunStatus::Queued,
                created: now,
                updated: now,
            });
    }

    /// The run moves to `status` (or stays in it, with a new `updated_at`).
    fn set(&self, pipeline: &str, run_id: &str, status: RunStatus) {
        let mut store = self.store();
        store.now += 1;
        let now = store.now;
        let row = store
            .runs
            .get_mut(pipeline)
            .unwrap()
            .iter_mut()
            .find(|row| row.id == run_id)
            .unwrap();
        row.status = status;
        row.updated = now;
    }

    /// The customers whose requests were received since request `from`.
    async fn customers_asked(&self, from: usize) -> Vec<String> {
        let mut asked: Vec<String> = self.server.received_requests().await.unwrap()[from..]
            .iter()
            .map(|request| {
                request
                    .headers
                    .get("x-customer-id")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        asked.sort();
        asked.dedup();
        asked
    }

    async fn request_count(&self) -> usize {
        self.server.received_requests().await.unwrap().len()
    }

    fn backend(&self) -> PlatformApiBackend {
        PlatformApiBackend::new(PlatformApiConfig {
            base_url: self.server.uri(),
            token: TOKEN.into(),
            timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// A source watching the customers `watched` names at each poll.
    fn source(&self, watched: &Watched) -> PlatformApiChanges {
        PlatformApiChanges::new(self.backend(), watched.clone().into_dyn(), Duration::ZERO)
    }
}

/// The customers listening, changed by the tests.
#[derive(Debug, Clone, Default)]
struct Watched(Arc<Mutex<Vec<CustomerId>>>);

impl Watched {
    fn of(customers: &[&str]) -> Self {
        let watched = Self::default();
        watched.set(customers);
        watched
    }

    fn set(&self, customers: &[&str]) {
        *self.0.lock().unwrap() = customers
            .iter()
            .map(|customer| CustomerId::parse(customer).unwrap())
            .collect();
    }

    /// As the service hands it over: a closure.
    fn into_dyn(self) -> Arc<dyn WatchedCustomers> {
        Arc::new(move || {
            let customers = self.0.lock().unwrap().clone();
            async move { Ok::<_, StorageError>(customers) }
        })
    }
}

type Told = (String, String, String, RunStatus);

fn told(changes: &[RunChange]) -> Vec<Told> {
    changes
        .iter()
        .map(|change| {
            (
                change.customer.as_str().to_owned(),
                change.run.pipeline_id.as_str().to_owned(),
                change.run.id.as_str().to_owned(),
                change.run.status,
            )
        })
        .collect()
}

fn change(customer: &str, pipeline: &str, run: &str, status: RunStatus) -> Told {
    (
        customer.to_owned(),
        pipeline.to_owned(),
        run.to_owned(),
        status,
    )
}

async fn poll(
    source: &PlatformApiChanges,
    cursor: Option<SourceCursor>,
) -> (Vec<Told>, SourceCursor) {
    let (changes, cursor) = source.changes(cursor).await.unwrap();
    (told(&changes), cursor)
}

#[tokio::test]
async fn without_a_cursor_the_source_starts_from_now_then_tells_each_new_run_and_status_once() {
    let upstream = Upstream::start().await;
    upstream.trigger(ACME_ORDERS, "r1");
    upstream.set(ACME_ORDERS, "r1", RunStatus::Running);
    let source = upstream.source(&Watched::of(&["acme"]));

    let (past, cursor) = poll(&source, None).await;
    assert_eq!(past, []);

    upstream.trigger(ACME_SALES, "r2");
    upstream.set(ACME_ORDERS, "r1", RunStatus::Success);
    let (changes, cursor) = source.changes(Some(cursor)).await.unwrap();
    assert_eq!(
        told(&changes),
        [
            change("acme", ACME_SALES, "r2", RunStatus::Queued),
            change("acme", ACME_ORDERS, "r1", RunStatus::Success),
        ]
    );
    // Each run as the upstream answers it, conf and all.
    assert_eq!(
        Value::Object(changes[0].run.conf.as_map().clone()),
        json!({"date": "2024-12-18"})
    );

    // The same status with a new `updated_at` is no change; nothing new is
    // nothing told.
    upstream.set(ACME_ORDERS, "r1", RunStatus::Success);
    let (quiet, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(quiet, []);

    upstream.set(ACME_SALES, "r2", RunStatus::Running);
    upstream.set(ACME_SALES, "r2", RunStatus::Failed);
    let (failed, _) = poll(&source, Some(cursor)).await;
    assert_eq!(
        failed,
        [change("acme", ACME_SALES, "r2", RunStatus::Failed)]
    );
}

#[tokio::test]
async fn only_the_customers_someone_listens_to_are_polled() {
    let upstream = Upstream::start().await;
    let watched = Watched::of(&["acme"]);
    let source = upstream.source(&watched);
    let (_, cursor) = poll(&source, None).await;

    upstream.trigger(GLOBEX_BILLING, "g1");
    upstream.trigger(ACME_ORDERS, "a1");
    let before = upstream.request_count().await;
    let (changes, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(
        changes,
        [change("acme", ACME_ORDERS, "a1", RunStatus::Queued)]
    );
    assert_eq!(upstream.customers_asked(before).await, ["acme"]);
    // One listing, and one page of runs per pipeline.
    assert_eq!(upstream.request_count().await - before, 3);

    // Globex starts listening: from now, its past untold.
    watched.set(&["acme", "globex"]);
    let (joined, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(joined, []);
    upstream.set(GLOBEX_BILLING, "g1", RunStatus::Running);
    let (globex, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(
        globex,
        [change("globex", GLOBEX_BILLING, "g1", RunStatus::Running)]
    );

    // Nobody listens any more: nothing is asked, and what the source knew
    // of them is dropped, so that listening again starts from then.
    watched.set(&[]);
    let before = upstream.request_count().await;
    let (none, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(none, []);
    assert_eq!(upstream.request_count().await, before);
    upstream.set(GLOBEX_BILLING, "g1", RunStatus::Success);
    watched.set(&["globex"]);
    let (again, _) = poll(&source, Some(cursor)).await;
    assert_eq!(again, []);
}

#[tokio::test]
async fn more_new_runs_than_a_page_holds_are_all_told_and_an_older_unfinished_run_stays_watched() {
    let upstream = Upstream::start().await;
    upstream.trigger(ACME_ORDERS, "old-running");
    upstream.set(ACME_ORDERS, "old-running", RunStatus::Running);
    let source = upstream.source(&Watched::of(&["acme"]));
    let (_, cursor) = poll(&source, None).await;

    let burst: Vec<String> = (0..WINDOW + 5).map(|i| format!("burst-{i:02}")).collect();
    for id in &burst {
        upstream.trigger(ACME_ORDERS, id);
    }
    let (changes, cursor) = poll(&source, Some(cursor)).await;
    let mut expected: Vec<Told> = burst
        .iter()
        .map(|id| change("acme", ACME_ORDERS, id, RunStatus::Queued))
        .collect();
    let mut changes_sorted = changes.clone();
    changes_sorted.sort_by(|a, b| a.2.cmp(&b.2));
    expected.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(changes_sorted, expected);

    // The running run is now 26th newest, past the first page, and so are
    // the five oldest of the burst, still queued: all still watched.
    upstream.set(ACME_ORDERS, "old-running", RunStatus::Success);
    let mut expected = vec![change(
        "acme",
        ACME_ORDERS,
        "old-running",
        RunStatus::Success,
    )];
    for id in &burst[..5] {
        upstream.set(ACME_ORDERS, id, RunStatus::Failed);
        expected.push(change("acme", ACME_ORDERS, id, RunStatus::Failed));
    }
    let (finished, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(finished, expected);
    // Once they finished, the window shrinks back to one page.
    let before = upstream.request_count().await;
    let (quiet, _) = poll(&source, Some(cursor)).await;
    assert_eq!(quiet, []);
    assert_eq!(upstream.request_count().await - before, 3);
}

#[tokio::test]
async fn a_source_restarted_from_the_cursor_repeats_nothing_and_misses_nothing() {
    let upstream = Upstream::start().await;
    let watched = Watched::of(&["acme"]);
    let source = upstream.source(&watched);
    let (_, cursor) = poll(&source, None).await;
    upstream.trigger(ACME_ORDERS, "r1");
    let (first, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(first.len(), 1);
    drop(source);

    upstream.set(ACME_ORDERS, "r1", RunStatus::Running);
    upstream.trigger(ACME_SALES, "r2");
    let restarted = upstream.source(&watched);
    let (after, cursor) = poll(&restarted, Some(cursor)).await;
    assert_eq!(
        after,
        [
            change("acme", ACME_ORDERS, "r1", RunStatus::Running),
            change("acme", ACME_SALES, "r2", RunStatus::Queued),
        ]
    );
    let (again, _) = poll(&restarted, Some(cursor)).await;
    assert_eq!(again, []);
}

#[tokio::test]
async fn an_upstream_outage_loses_nothing_and_one_failing_customer_holds_up_no_other() {
    let upstream = Upstream::start().await;
    let source = upstream.source(&Watched::of(&["acme", "globex"]));
    let (_, cursor) = poll(&source, None).await;
    upstream.trigger(ACME_ORDERS, "a1");
    upstream.trigger(GLOBEX_BILLING, "g1");

    // Only globex fails: acme's changes are told, globex's wait.
    upstream.store().failing = vec!["globex".to_owned()];
    let (partial, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(
        partial,
        [change("acme", ACME_ORDERS, "a1", RunStatus::Queued)]
    );

    // Everything fails: the poll fails, and the holder asks again with the
    // same cursor.
    upstream.store().failing = vec!["acme".to_owned(), "globex".to_owned()];
    upstream.set(ACME_ORDERS, "a1", RunStatus::Running);
    assert!(source.changes(Some(cursor.clone())).await.is_err());
    upstream.set(GLOBEX_BILLING, "g1", RunStatus::Success);

    upstream.store().failing.clear();
    let (recovered, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(
        recovered,
        [
            change("acme", ACME_ORDERS, "a1", RunStatus::Running),
            change("globex", GLOBEX_BILLING, "g1", RunStatus::Success),
        ]
    );
    let (again, _) = poll(&source, Some(cursor)).await;
    assert_eq!(again, []);
}

#[tokio::test]
async fn a_new_pipeline_of_a_watched_customer_has_its_runs_told_and_a_gone_one_is_forgotten() {
    let upstream = Upstream::start().await;
    let source = upstream.source(&Watched::of(&["acme"]));
    let (_, cursor) = poll(&source, None).await;

    let fresh = "4e66d05c_66a6_4b6a_8bbe_b6fb5fbc2c30";
    upstream.pipeline("acme", fresh);
    upstream.trigger(fresh, "f1");
    let (changes, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(changes, [change("acme", fresh, "f1", RunStatus::Queued)]);

    upstream.store().pipelines.remove(ACME_SALES);
    let (gone, cursor) = poll(&source, Some(cursor)).await;
    assert_eq!(gone, []);
    assert!(!cursor.as_str().contains(ACME_SALES));
}
