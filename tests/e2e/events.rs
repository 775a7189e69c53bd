//! The two ends of the feed as a customer meets them, for the end-to-end
//! tests: a reader of `GET /platform/events` that keeps every event with
//! the instant it arrived, and a webhook receiver on loopback that records
//! every attempt (headers, body, answer, when), answers as the test scripts
//! it, checks signatures, and notices two attempts of one delivery under
//! way at once. Beside the black-box suite's `feed` harness, these keep
//! when each event and attempt arrived (for lags and retry delays), wait
//! as long as a test says (a lease takeover, a run on Airflow), and survive
//! the instance they read being killed.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use reqwest::Client;
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::timeout_at,
};

use crate::helpers::token;

/// One event of a stream, as the client read it.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) id: Option<String>,
    pub(crate) event: String,
    pub(crate) data: String,
    /// When the client read it, on the wall clock, to compare with the
    /// instants an engine records.
    pub(crate) received: SystemTime,
}

impl Frame {
    /// The run an `event: run` carries.
    pub(crate) fn run(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    pub(crate) fn run_id(&self) -> String {
        text(&self.run()["pipeline_run_id"])
    }

    pub(crate) fn status(&self) -> String {
        text(&self.run()["last_status"])
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// The statuses the frames tell of `run_id`, in the order told.
pub(crate) fn statuses(frames: &[Frame], run_id: &str) -> Vec<String> {
    frames
        .iter()
        .filter(|frame| frame.event == "run" && frame.run_id() == run_id)
        .map(Frame::status)
        .collect()
}

/// Whether the frames tell that `run_id` finished.
pub(crate) fn finished(frames: &[Frame], run_id: &str) -> bool {
    statuses(frames, run_id)
        .iter()
        .any(|status| status == "SUCCESS" || status == "FAILED")
}

/// What identifies each event of a stream: its id, its run and status.
pub(crate) fn told(frames: &[Frame]) -> Vec<(String, String, String)> {
    frames
        .iter()
        .map(|frame| {
            (
                frame.id.clone().unwrap_or_default(),
                frame.run_id(),
                frame.status(),
            )
        })
        .collect()
}

/// A stream of `GET /platform/events` being read: a task reads the
/// response as it comes and hands each event over; dropping the stream
/// closes the connection.
pub(crate) struct EventStream {
    frames: mpsc::UnboundedReceiver<Frame>,
    seen: Vec<Frame>,
    reader: JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EventStream {
    /// Opens the stream of `customer` at `base` (`query` is the query
    /// string, with its `?`, or `""`), resuming after `last_event_id` when
    /// given; panics unless it is answered as a stream.
    pub(crate) async fn open(
        base: &str,
        customer: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut request = Client::new()
            .get(format!("{base}/platform/events{query}"))
            .bearer_auth(token(customer));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut response = request.send().await.unwrap();
        if response.status() != 200 {
            let status = response.status();
            panic!(
                "the stream was refused: {status} {:?}",
                response.text().await
            );
        }
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let (sender, frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buffer: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
                    let block: Vec<u8> = buffer.drain(..end + 2).collect();
                    let Some(frame) = parse(&String::from_utf8_lossy(&block)) else {
                        continue;
                    };
                    if sender.send(frame).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            frames,
            seen: Vec::new(),
            reader,
        }
    }

    /// Every event read so far.
    pub(crate) fn seen(&self) -> &[Frame] {
        &self.seen
    }

    /// Reads events until `done` holds of all those read so far, and
    /// answers them; panics, naming `what`, when it does not within
    /// `within` or the stream ends first.
    pub(crate) async fn read_until(
        &mut self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Frame]) -> bool,
    ) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen) {
            match timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(frame)) => self.seen.push(frame),
                Ok(None) => panic!("the stream ended before {what}: {:#?}", told(&self.seen)),
                Err(_) => panic!(
                    "not {what} within {within:?}; the stream told {:#?}",
                    told(&self.seen)
                ),
            }
        }
        self.seen.clone()
    }

    /// Waits until the stream ends (the connection closes), within
    /// `within`.
    pub(crate) async fn ended(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(frame)) => self.seen.push(frame),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// One event of the stream's text (`id:`, `event:`, `data:` lines); `None`
/// for a block of comments alone (`: keep-alive`).
fn parse(block: &str) -> Option<Frame> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    if event.is_none() && data.is_empty() {
        return None;
    }
    Some(Frame {
        id,
        event: event.unwrap_or_else(|| "message".to_owned()),
        data: data.join("\n"),
        received: SystemTime::now(),
    })
}

/// Registers a webhook for `customer` at `base` with `body`
/// (`{"url", "events"?, "pipeline_ids"?}`), and answers its id and secret.
pub(crate) async fn register_webhook(base: &str, customer: &str, body: &Value) -> (String, String) {
    let response = Client::new()
        .post(format!("{base}/platform/webhooks"))
        .bearer_auth(token(customer))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{answer}");
    (text(&answer["data"]["id"]), text(&answer["data"]["secret"]))
}

/// One attempt of a delivery, as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// `webhook-id`: the same on every attempt of one delivery.
    pub(crate) id: String,
    /// `webhook-timestamp`: the attempt's time, Unix seconds.
    pub(crate) timestamp: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    /// The status the receiver answered.
    pub(crate) answered: u16,
    pub(crate) began: Instant,
    pub(crate) ended: Instant,
    /// When it came in, on the wall clock.
    pub(crate) received: SystemTime,
    /// Whether another attempt of the same delivery was under way when
    /// this one came in.
    pub(crate) overlapped: bool,
}

impl Attempt {
    /// The body: `{"type", "timestamp", "data": RUN}`.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The type of the event delivered, `run.succeeded` say.
    pub(crate) fn event_type(&self) -> String {
        text(&self.json()["type"])
    }

    pub(crate) fn run_id(&self) -> String {
        text(&self.json()["data"]["pipeline_run_id"])
    }

    /// Whether the attempt verifies with the webhook's `secret` (as
    /// registration showed it) by the Standard Webhooks reference library,
    /// a signer that is not the service's: its headers, the signature of
    /// its body, and a timestamp within five minutes of the wall clock.
    pub(crate) fn verifies(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .is_ok_and(|webhook| webhook.verify(&self.body, &self.headers).is_ok())
    }
}

/// The attempts of each delivery, by `webhook-id`, in the order they came.
pub(crate) fn by_delivery(attempts: &[Attempt]) -> BTreeMap<String, Vec<Attempt>> {
    let mut deliveries: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
    for attempt in attempts {
        deliveries
            .entry(attempt.id.clone())
            .or_default()
            .push(attempt.clone());
    }
    deliveries
}

/// How long the receiver takes to answer: long enough that two attempts of
/// one delivery made at about the same time are under way together, and
/// seen to be.
const ANSWER_AFTER: Duration = Duration::from_millis(200);

/// A webhook endpoint on loopback: `POST /hook` records the attempt and
/// answers the next status of its script, or, once the script is used
/// up, the status it answers otherwise.
pub(crate) struct Receiver {
    url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Shared {
    /// A std mutex: held to read or change the record only, never across
    /// an `.await`.
    record: Mutex<Record>,
    /// The number of attempts recorded, for those who wait for more.
    count: watch::Sender<usize>,
}

struct Record {
    attempts: Vec<Attempt>,
    under_way: HashMap<String, usize>,
    script: VecDeque<u16>,
    otherwise: u16,
}

impl Receiver {
    /// Starts the receiver: it answers `script` in turn, then `otherwise`.
    pub(crate) async fn start(script: &[u16], otherwise: u16) -> Self {
        let shared = Arc::new(Shared {
            record: Mutex::new(Record {
                attempts: Vec::new(),
                under_way: HashMap::new(),
                script: script.iter().copied().collect(),
                otherwise,
            }),
            count: watch::channel(0).0,
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}/hook"),
            shared,
            server,
        }
    }

    /// The URL to register.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// From now on, once the script is used up, answers `status`.
    pub(crate) fn answer_otherwise(&self, status: u16) {
        self.shared.record.lock().unwrap().otherwise = status;
    }

    /// Every attempt so far, in the order they came.
    pub(crate) fn attempts(&self) -> Vec<Attempt> {
        self.shared.record.lock().unwrap().attempts.clone()
    }

    /// Waits until `done` holds of the attempts so far, and answers them;
    /// panics, naming `what`, when it does not within `within`.
    pub(crate) async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Attempt]) -> bool,
    ) -> Vec<Attempt> {
        let deadline = tokio::time::Instant::now() + within;
        let mut count = self.shared.count.subscribe();
        loop {
            let attempts = self.attempts();
            if done(&attempts) {
                return attempts;
            }
            let summary: Vec<(String, u16)> = attempts
                .iter()
                .map(|attempt| (attempt.id.clone(), attempt.answered))
                .collect();
            if timeout_at(deadline, count.changed()).await.is_err() {
                panic!("not {what} within {within:?}; the receiver got {summary:#?}");
            }
        }
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    let began = Instant::now();
    let received = SystemTime::now();
    let (answered, overlapped) = {
        let mut record = shared.record.lock().unwrap();
        let under_way = record.under_way.entry(id.clone()).or_default();
        *under_way += 1;
        let overlapped = *under_way > 1;
        let answered = match record.script.pop_front() {
            Some(status) => status,
            None => record.otherwise,
        };
        (answered, overlapped)
    };
    // The endpoint's own time to answer (see `ANSWER_AFTER`), not the
    // test's waiting.
    tokio::time::sleep(ANSWER_AFTER).await;
    let attempt = Attempt {
        id: id.clone(),
        timestamp: header("webhook-timestamp"),
        headers: headers.clone(),
        body: body.to_vec(),
        answered,
        began,
        ended: Instant::now(),
        received,
        overlapped,
    };
    {
        let mut record = shared.record.lock().unwrap();
        if let Some(under_way) = record.under_way.get_mut(&id) {
            *under_way -= 1;
        }
        record.attempts.push(attempt);
        shared.count.send_replace(record.attempts.len());
    }
    StatusCode::from_u16(answered).unwrap()
}
