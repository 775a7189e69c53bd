//! `/platform/webhooks` on the memory backend: registration, listing and
//! deletion; deliveries to a receiver on loopback, each signature checked
//! with the Standard Webhooks reference library; retries with the same
//! `webhook-id`, driven by moving the service's clock; nothing after a
//! deletion; the `events` and `pipeline_ids` filters; tenant isolation;
//! the bound per customer; and the address rules without
//! `--webhooks-allow-insecure`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use crate::{
    feed::{Delivery, Receiver, RunEvent},
    helpers::{
        ACME, ACTIVE, GLOBEX, GLOBEX_PIPELINE, SCHEDULED, TestApp, envelope, json_of, manual_clock,
        shouted,
    },
};

const INSECURE: [&str; 2] = ["--webhooks-allow-insecure", "true"];

/// Deliveries that failed, were delivered, or were dropped (their webhook
/// deleted), as `GET /metrics` counts them.
const FAILED: &str = r#"maestro_webhook_deliveries_total{outcome="failed"}"#;
const DELIVERED: &str = r#"maestro_webhook_deliveries_total{outcome="delivered"}"#;
const DROPPED: &str = r#"maestro_webhook_deliveries_total{outcome="dropped"}"#;

/// The event type webhooks name a run's status with.
fn event_type(status: &str) -> &'static str {
    match status {
        "QUEUED" => "run.queued",
        "RUNNING" => "run.running",
        "SUCCESS" => "run.succeeded",
        "FAILED" => "run.failed",
        other => panic!("no event type for {other}"),
    }
}

/// `(type, pipeline id, run id)` of each delivery, verified with `secret`.
fn told(deliveries: &[Delivery], secret: &str) -> Vec<(String, String, String)> {
    deliveries
        .iter()
        .map(|delivery| {
            delivery.verify(secret);
            let body = delivery.json();
            (
                body["type"].as_str().unwrap().to_owned(),
                body["data"]["pipeline_id"].as_str().unwrap().to_owned(),
                body["data"]["pipeline_run_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn change(kind: &str, pipeline_id: &str, run_id: &str) -> (String, String, String) {
    (kind.to_owned(), pipeline_id.to_owned(), run_id.to_owned())
}

#[tokio::test]
async fn a_webhook_is_registered_with_its_secret_shown_once_listed_without_it_and_deleted_by_its_customer_only()
 {
    let app = TestApp::spawn_with(&INSECURE).await;
    let (status, registered) = json_of(
        app.register_webhook(ACME, &json!({"url": "http://127.0.0.1:9/hooks/all"}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let all = registered["data"].clone();
    let id = all["id"].as_str().unwrap().to_owned();
    let secret = all["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        registered,
        json!({"status": true, "data": {
            "id": id, "url": "http://127.0.0.1:9/hooks/all",
            "events": ["run.queued", "run.running", "run.succeeded", "run.failed"],
            "pipeline_ids": [], "secret": secret,
        }})
    );
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .unwrap();
    assert_eq!(key.len(), 32);

    let (status, registered) = json_of(
        app.register_webhook(
            ACME,
            &json!({"url": "http://127.0.0.1:9/hooks/ends", "events": ["run.failed", "run.succeeded"],
                    "pipeline_ids": [shouted(ACTIVE)]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let ends = registered["data"].clone();
    assert_eq!(ends["events"], json!(["run.succeeded", "run.failed"]));
    assert_eq!(ends["pipeline_ids"], json!([ACTIVE]));
    assert_ne!(ends["id"], all["id"]);
    assert_ne!(ends["secret"], all["secret"]);

    let without_secret = |webhook: &Value| {
        let mut webhook = webhook.clone();
        webhook.as_object_mut().unwrap().remove("secret");
        webhook
    };
    let listed = json!([without_secret(&all), without_secret(&ends)]);
    assert_eq!(json_of(app.list_webhooks(ACME).await).await, (200, listed));
    assert_eq!(
        json_of(app.list_webhooks(GLOBEX).await).await,
        (200, json!([]))
    );

    // Another customer's webhook, an unknown one, one of another form.
    for (customer, id) in [(GLOBEX, id.as_str()), (ACME, "wh_0"), (ACME, "nonsense")] {
        assert_eq!(
            json_of(app.delete_webhook(customer, id).await).await,
            (
                404,
                envelope(
                    "WebhookNotFound",
                    &format!("Webhook with id {id} not found")
                )
            ),
        );
    }
    assert_eq!(
        json_of(app.delete_webhook(ACME, &id).await).await,
        (
            200,
            json!({"status": true, "data": {"message": "Webhook deleted successfully", "id": id}})
        )
    );
    assert_eq!(
        json_of(app.list_webhooks(ACME).await).await,
        (200, json!([without_secret(&ends)]))
    );
    assert_eq!(app.delete_webhook(ACME, &id).await.status(), 404);
}

#[tokio::test]
async fn a_customer_has_at_most_ten_webhooks() {
    let app = TestApp::spawn_with(&INSECURE).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let url = format!("http://127.0.0.1:9/hooks/{n}");
        ids.push(app.webhook(ACME, &json!({"url": url})).await.0);
    }
    let eleventh = json!({"url": "http://127.0.0.1:9/hooks/10"});
    assert_eq!(
        json_of(app.register_webhook(ACME, &eleventh).await).await,
        (
            400,
            envelope(
                "TooManyWebhooks",
                "A customer may have at most 10 webhooks. Delete one first."
            )
        )
    );
    let (_, listed) = json_of(app.list_webhooks(ACME).await).await;
    assert_eq!(listed.as_array().unwrap().len(), 10);
    // Counted per customer.
    app.webhook(GLOBEX, &eleventh).await;
    // A deletion makes room.
    assert_eq!(app.delete_webhook(ACME, &ids[3]).await.status(), 200);
    app.webhook(ACME, &eleventh).await;
}

#[tokio::test]
async fn a_receiver_verifies_every_delivery_and_is_told_every_event_at_least_once() {
    let clock = manual_clock();
    let app = TestApp::spawn_with_clock(
        Arc::new(clock.clone()),
        &[INSECURE[0], INSECURE[1], "--memory-run-seconds", "0.2"],
    )
    .await;
    let receiver = Receiver::start().await;
    let (_, secret) = app
        .webhook(ACME, &json!({"url": receiver.url("/acme")}))
        .await;
    let mut stream = app.events(ACME, "").await;

    // Every kind of change: queued, running, succeeded, failed.
    app.run_id_of_execute(ACME, ACTIVE).await;
    let second = app.run_id_of_execute(ACME, ACTIVE).await;
    let mut events = stream.next_runs(2).await;
    clock.advance(Duration::from_millis(200));
    events.extend(stream.next_runs(2).await);
    assert_eq!(app.cancel(ACME, ACTIVE, &second).await.status(), 200);
    events.push(stream.next_run().await);

    let deliveries = receiver.wait_for("/acme", events.len()).await;
    let mut ids_by_event: HashMap<&str, &str> = HashMap::new();
    for delivery in &deliveries {
        delivery.verify(&secret);
        assert!(
            delivery
                .header("content-type")
                .starts_with("application/json"),
            "{:?}",
            delivery.headers
        );
        let body = delivery.json();
        let event: &RunEvent = events
            .iter()
            .find(|event| event.run == body["data"])
            .unwrap_or_else(|| panic!("a delivery of no event: {body}"));
        assert_eq!(
            body,
            json!({"type": event_type(event.status()), "timestamp": event.run["updated_at"], "data": event.run})
        );
        // A repeat carries the id of the first.
        let id = ids_by_event.entry(&event.id).or_insert(delivery.id());
        assert_eq!(*id, delivery.id());
    }
    assert_eq!(
        ids_by_event.len(),
        events.len(),
        "an event was not delivered"
    );
    let mut ids: Vec<&str> = ids_by_event.values().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "two events shared a webhook-id");
}

#[tokio::test]
async fn a_delivery_refused_twice_is_retried_with_the_same_webhook_id_until_taken() {
    let clock = manual_clock();
    let app = TestApp::spawn_with_clock(Arc::new(clock.clone()), &INSECURE).await;
    let receiver = Receiver::start().await;
    receiver.answer("/flaky", &[500, 500]);
    let (_, secret) = app
        .webhook(
            ACME,
            &json!({"url": receiver.url("/flaky"), "events": ["run.running"]}),
        )
        .await;

    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    receiver.wait_for("/flaky", 1).await;
    // Once the service has heard the 500 it has set the next attempt, on
    // its clock, about 5 s later; then about 30 s.
    app.wait_for_metric(FAILED, |failed| failed == 1.0).await;
    clock.advance(Duration::from_secs(5));
    receiver.wait_for("/flaky", 2).await;
    app.wait_for_metric(FAILED, |failed| failed == 2.0).await;
    clock.advance(Duration::from_secs(30));
    let attempts = receiver.wait_for("/flaky", 3).await;
    app.wait_for_metric(DELIVERED, |delivered| delivered == 1.0)
        .await;

    assert_eq!(
        attempts
            .iter()
            .map(|attempt| attempt.answered)
            .collect::<Vec<_>>(),
        [500, 500, 204]
    );
    let (_, run) = json_of(app.get_run(ACME, ACTIVE, &run_id).await).await;
    for attempt in &attempts {
        attempt.verify(&secret);
        assert_eq!(attempt.id(), attempts[0].id());
        // The same body every time; the attempt's time is in the header.
        assert_eq!(attempt.body, attempts[0].body);
        assert_eq!(
            attempt.json(),
            json!({"type": "run.running", "timestamp": run["updated_at"], "data": run})
        );
    }
    assert_eq!(attempts[1].timestamp() - attempts[0].timestamp(), 5);
    assert_eq!(attempts[2].timestamp() - attempts[1].timestamp(), 30);

    // Taken: not sent again, not even when the next retry would have been
    // due (2 min on); the next delivery is a new event's. (Within the five
    // minutes a receiver allows between a timestamp and its own clock.)
    clock.advance(Duration::from_secs(150));
    let later = app.run_id_of_execute(ACME, SCHEDULED).await;
    let deliveries = receiver.wait_for("/flaky", 4).await;
    assert_eq!(
        told(&deliveries[3..], &secret),
        [change("run.running", SCHEDULED, &later)]
    );
    assert_ne!(deliveries[3].id(), attempts[0].id());
    app.wait_for_metric(DELIVERED, |delivered| delivered == 2.0)
        .await;
    assert_eq!(receiver.deliveries("/flaky").len(), 4);
}

#[tokio::test]
async fn nothing_is_delivered_to_a_deleted_webhook() {
    let clock = manual_clock();
    let app = TestApp::spawn_with_clock(Arc::new(clock.clone()), &INSECURE).await;
    let receiver = Receiver::start().await;
    receiver.answer("/deleted", &[500]);
    let (deleted, _) = app
        .webhook(ACME, &json!({"url": receiver.url("/deleted")}))
        .await;
    let (_, secret) = app
        .webhook(ACME, &json!({"url": receiver.url("/kept")}))
        .await;

    let first = app.run_id_of_execute(ACME, ACTIVE).await;
    receiver.wait_for("/deleted", 1).await;
    receiver.wait_for("/kept", 1).await;
    app.wait_for_metric(FAILED, |failed| failed == 1.0).await;
    assert_eq!(app.delete_webhook(ACME, &deleted).await.status(), 200);

    // Its retry falls due: it is dropped, not sent.
    clock.advance(Duration::from_secs(5));
    app.wait_for_metric(DROPPED, |dropped| dropped == 1.0).await;
    // And later events are not sent to it.
    let second = app.run_id_of_execute(ACME, ACTIVE).await;
    let kept = receiver.wait_for("/kept", 2).await;
    assert_eq!(
        told(&kept, &secret),
        [
            change("run.running", ACTIVE, &first),
            change("run.queued", ACTIVE, &second)
        ]
    );
    app.wait_for_metric(DELIVERED, |delivered| delivered == 2.0)
        .await;
    assert_eq!(receiver.deliveries("/deleted").len(), 1);
}

#[tokio::test]
async fn a_webhook_is_told_only_the_events_and_pipelines_it_asked_for() {
    let app = TestApp::spawn_with(&INSECURE).await;
    let receiver = Receiver::start().await;
    let (_, all_secret) = app
        .webhook(ACME, &json!({"url": receiver.url("/all")}))
        .await;
    let (_, some_secret) = app
        .webhook(
            ACME,
            &json!({"url": receiver.url("/some"), "events": ["run.queued", "run.failed"],
                    "pipeline_ids": [SCHEDULED]}),
        )
        .await;

    let on_active = app.run_id_of_execute(ACME, ACTIVE).await;
    let first = app.run_id_of_execute(ACME, SCHEDULED).await;
    let second = app.run_id_of_execute(ACME, SCHEDULED).await;
    assert_eq!(app.cancel(ACME, SCHEDULED, &first).await.status(), 200);
    assert_eq!(app.cancel(ACME, ACTIVE, &on_active).await.status(), 200);
    let all = receiver.wait_for("/all", 6).await;
    let some = receiver.wait_for("/some", 2).await;

    let mut all = told(&all, &all_secret);
    all.sort();
    let mut expected = vec![
        change("run.running", ACTIVE, &on_active),
        change("run.failed", ACTIVE, &on_active),
        change("run.running", SCHEDULED, &first),
        change("run.failed", SCHEDULED, &first),
        change("run.queued", SCHEDULED, &second),
        change("run.running", SCHEDULED, &second),
    ];
    expected.sort();
    assert_eq!(all, expected);
    let mut some = told(&some, &some_secret);
    some.sort();
    assert_eq!(
        some,
        [
            change("run.failed", SCHEDULED, &first),
            change("run.queued", SCHEDULED, &second),
        ]
    );
    app.wait_for_metric(DELIVERED, |delivered| delivered == 8.0)
        .await;
    assert_eq!(receiver.deliveries("/some").len(), 2);
}

#[tokio::test]
async fn a_webhook_is_told_only_its_customers_runs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug,hyper=info,reqwest=info,h2=info")
        .with_test_writer()
        .try_init();
    let app = TestApp::spawn_with(&INSECURE).await;
    let receiver = Receiver::start().await;
    let (_, acme_secret) = app
        .webhook(ACME, &json!({"url": receiver.url("/acme")}))
        .await;
    // Naming another customer's pipeline tells nothing of it.
    app.webhook(
        ACME,
        &json!({"url": receiver.url("/acme-on-globex"), "pipeline_ids": [GLOBEX_PIPELINE]}),
    )
    .await;
    let (_, globex_secret) = app
        .webhook(GLOBEX, &json!({"url": receiver.url("/globex")}))
        .await;

    let globex_run = app.run_id_of_execute(GLOBEX, GLOBEX_PIPELINE).await;
    let acme_run = app.run_id_of_execute(ACME, ACTIVE).await;
    let acme = receiver.wait_for("/acme", 1).await;
    let globex = receiver.wait_for("/globex", 1).await;
    println!("{}", app.text("/metrics").await);
    app.wait_for_metric(DELIVERED, |delivered| delivered == 2.0)
        .await;

    assert_eq!(
        told(&acme, &acme_secret),
        [change("run.running", ACTIVE, &acme_run)]
    );
    assert_eq!(
        told(&globex, &globex_secret),
        [change("run.running", GLOBEX_PIPELINE, &globex_run)]
    );
    assert!(receiver.deliveries("/acme-on-globex").is_empty());
    assert_eq!(receiver.deliveries("/globex").len(), 1);
}

#[tokio::test]
async fn without_allow_insecure_a_url_that_is_not_https_or_reaches_an_inner_address_is_400() {
    // No run is made here: nothing is ever sent to these addresses.
    let app = TestApp::spawn().await;
    let not_https = envelope("InvalidWebhookUrl", "url must start with https://");
    let inner = envelope(
        "InvalidWebhookUrl",
        "url must not name or resolve to a private, loopback, link-local or unspecified address",
    );
    for (url, refusal) in [
        ("http://hooks.example.com/maestro", &not_https),
        ("https://127.0.0.1/", &inner),
        ("https://127.1/", &inner),
        ("https://2130706433/", &inner),
        ("https://10.0.0.1/", &inner),
        ("https://192.168.1.20/", &inner),
        ("https://172.16.0.1/", &inner),
        ("https://169.254.169.254/", &inner),
        ("https://0.0.0.0/", &inner),
        ("https://[::1]/", &inner),
        ("https://[::ffff:127.0.0.1]/", &inner),
        ("https://[fe80::1]/", &inner),
        ("https://[fd00::1]/", &inner),
        ("https://localhost/", &inner),
        ("https://LOCALHOST./", &inner),
    ] {
        let response = app.register_webhook(ACME, &json!({"url": url})).await;
        assert_eq!(json_of(response).await, (400, refusal.clone()), "{url}");
    }
    assert_eq!(
        json_of(app.list_webhooks(ACME).await).await,
        (200, json!([]))
    );
}
