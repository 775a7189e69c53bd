//! Deliveries against real receivers on this machine: signatures a
//! receiver verifies on its own, outcomes for each kind of answer,
//! redirects, timeouts, bounded reads, and the address guard at delivery.

use std::{sync::Arc, time::Duration};

use adapter_webhooks::{HttpWebhookSender, RenderBody, WebhooksConfig, encode_secret};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{TimeZone, Utc};
use domain::{
    Caller, CustomerId, Delivery, EventId, MockWebhookStore, NewWebhook, PipelineId,
    RequestContext, Run, RunChange, RunEvent, RunId, RunStatus, SendOutcome, Timestamp, Webhook,
    WebhookSender, Webhooks, format_timestamp,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

const SECRET: [u8; 32] = [0x5a; 32];

fn at(seconds: i64) -> Timestamp {
    Utc.timestamp_opt(1_734_517_800 + seconds, 0).unwrap()
}

/// The body as the binary's renderer shapes it, with a small run.
fn render() -> RenderBody {
    Arc::new(|event: &RunEvent| {
        serde_json::to_vec(&serde_json::json!({
            "type": event.change.event_type().as_str(),
            "timestamp": format_timestamp(&event.change.run.updated_at),
            "data": {
                "run_id": event.change.run.id.as_str(),
                "pipeline_id": event.change.run.pipeline_id.as_str(),
            },
        }))
        .unwrap()
    })
}

fn sender(allow_insecure: bool) -> HttpWebhookSender {
    HttpWebhookSender::new(WebhooksConfig::new(allow_insecure), render())
}

/// A webhook of customer `acme` registered for `url` (insecure URLs
/// allowed: the address rules are the sender's).
async fn webhook(url: &str) -> Webhook {
    let mut store = MockWebhookStore::new();
    store.expect_create().returning(|_, _| Ok(()));
    let ctx = RequestContext::new(Caller::new(CustomerId::parse("acme").unwrap()));
    Webhooks::new(Arc::new(store), true)
        .register(&ctx, NewWebhook::new(url), ([1; 16], SECRET), at(0))
        .await
        .unwrap()
}

fn delivery(webhook: &Webhook) -> Delivery {
    let run = Run::new(
        RunId::parse("manual__2024-12-18T10:30:00.000000+00:00").unwrap(),
        PipelineId::parse("0b7e4a2c-1f4e-4c55-9a0e-6d2b8f3c9e11").unwrap(),
        RunStatus::Success,
        at(0),
    );
    let event = RunEvent::new(
        EventId::parse("1734517800000-0").unwrap(),
        RunChange::new(webhook.customer.clone(), run),
    );
    Delivery::new(webhook, event, at(0))
}

/// What a receiver does with the customer's `whsec_` secret: decode it and
/// compute HMAC-SHA256 over `<id>.<timestamp>.<body>`, as the
/// specification says, independently of the crate's signing code.
fn expected_signature(shown_secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(shown_secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn header<'a>(request: &'a wiremock::Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn a_receiver_verifies_every_attempts_signature_and_sees_one_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    let webhook = webhook(&format!("{}/hooks?token=abc", server.uri())).await;
    let delivery = delivery(&webhook);
    let sender = sender(true);

    assert_eq!(
        sender.send(&webhook, &delivery, at(5)).await,
        SendOutcome::Delivered
    );
    assert_eq!(
        sender.send(&webhook, &delivery, at(40)).await,
        SendOutcome::Delivered
    );

    let shown_secret = encode_secret(&webhook.secret);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for (request, now) in requests.iter().zip([at(5), at(40)]) {
        assert_eq!(request.url.query(), Some("token=abc"));
        assert_eq!(header(request, "content-type"), "application/json");
        assert!(header(request, "user-agent").starts_with("maestro/"));
        let id = header(request, "webhook-id");
        let timestamp = header(request, "webhook-timestamp");
        assert_eq!(id, delivery.id.as_str());
        assert_eq!(timestamp, now.timestamp().to_string());
        assert_eq!(
            header(request, "webhook-signature"),
            expected_signature(&shown_secret, id, timestamp, &request.body)
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["type"], "run.succeeded");
        // The body is the same on every attempt: the change's time.
        assert_eq!(
            body["timestamp"],
            format_timestamp(&delivery.event.change.run.updated_at)
        );
        assert_eq!(
            body["data"]["run_id"],
            "manual__2024-12-18T10:30:00.000000+00:00"
        );
    }
}

#[tokio::test]
async fn answers_other_than_2xx_fail() {
    let server = MockServer::start().await;
    for (route, status) in [("/error", 500), ("/gone", 410), ("/slow-down", 429)] {
        Mock::given(method("POST"))
            .and(path(route))
            .respond_with(ResponseTemplate::new(status))
            .mount(&server)
            .await;
        let webhook = webhook(&format!("{}{route}", server.uri())).await;
        let outcome = sender(true)
            .send(&webhook, &delivery(&webhook), at(5))
            .await;
        let SendOutcome::Failed(reason) = outcome else {
            panic!("{route}: {outcome:?}");
        };
        assert!(reason.contains(&status.to_string()), "{reason}");
    }
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let webhook = webhook(&format!("{}/hooks", server.uri())).await;

    let outcome = sender(true)
        .send(&webhook, &delivery(&webhook), at(5))
        .await;

    let SendOutcome::Failed(reason) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("307"), "{reason}");
    assert!(reason.contains("redirects are not followed"), "{reason}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_fails_the_attempt() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let webhook = webhook(&format!("{}/hooks", server.uri())).await;
    let config = WebhooksConfig {
        timeout: Duration::from_millis(300),
        ..WebhooksConfig::new(true)
    };
    assert_eq!(WebhooksConfig::new(true).timeout, Duration::from_secs(10));

    let started = tokio::time::Instant::now();
    let outcome = HttpWebhookSender::new(config, render())
        .send(&webhook, &delivery(&webhook), at(5))
        .await;

    let SendOutcome::Failed(reason) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("did not answer within"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_refused_connection_fails_the_attempt() {
    // A port nobody listens on: bound, then released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let webhook = webhook(&format!("http://127.0.0.1:{port}/hooks")).await;

    let outcome = sender(true)
        .send(&webhook, &delivery(&webhook), at(5))
        .await;

    assert!(matches!(outcome, SendOutcome::Failed(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_name_is_called_at_the_address_it_was_checked_at() {
    // `localhost` goes through the resolve-check-pin path (insecure mode
    // lifts only the address rule; the pinning is the same).
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let port = server.address().port();
    let webhook = webhook(&format!("http://localhost:{port}/hooks")).await;

    let outcome = sender(true)
        .send(&webhook, &delivery(&webhook), at(5))
        .await;

    assert_eq!(outcome, SendOutcome::Delivered);
}

#[tokio::test]
async fn forbidden_hosts_are_refused_at_delivery_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let port = server.address().port();
    let secure = sender(false);
    for (url, expected) in [
        (
            format!("https://localhost:{port}/hooks?token=s3cr3t"),
            "loopback",
        ),
        (format!("https://127.0.0.1:{port}/hooks"), "loopback"),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/hooks"),
            "loopback",
        ),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        (format!("http://localhost:{port}/hooks"), "https"),
    ] {
        let webhook = webhook(&url).await;
        let outcome = secure.send(&webhook, &delivery(&webhook), at(5)).await;
        let SendOutcome::Refused(reason) = outcome else {
            panic!("{url}: {outcome:?}");
        };
        assert!(reason.contains(expected), "{url}: {reason}");
        assert!(!reason.contains("s3cr3t"), "{reason}");
        assert!(!reason.contains("/hooks"), "{reason}");
    }
    assert!(
        secure
            .check_url(&webhook(&format!("https://localhost:{port}/")).await.url)
            .await
            .is_err()
    );
}

/// A receiver answering 200 with a 1 GiB body, written until the client
/// hangs up; how many bytes it got out.
async fn endless_receiver() -> (u16, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0; 4096];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = socket.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the request ended early");
            request.extend_from_slice(&buffer[..read]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while written < 1 << 30 {
            match socket.write(&chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        written
    });
    (port, task)
}

#[tokio::test]
async fn only_a_bounded_part_of_a_huge_answer_is_read() {
    let (port, receiver) = endless_receiver().await;
    let webhook = webhook(&format!("http://127.0.0.1:{port}/hooks")).await;

    let outcome = sender(true)
        .send(&webhook, &delivery(&webhook), at(5))
        .await;

    assert_eq!(outcome, SendOutcome::Delivered);
    // The client hung up after 64 KiB: what the receiver got out is that
    // and what the sockets' buffers took, far from the gigabyte.
    let written = receiver.await.unwrap();
    assert!(written >= 64 * 1024, "{written}");
    assert!(written < 32 << 20, "{written}");
}
