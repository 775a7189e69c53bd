//! The harness of the run-event tests: a Server-Sent Events client that
//! reads `GET /platform/events` frame by frame, and a webhook receiver on
//! loopback that records every delivery, answers as it is told, and checks
//! signatures with the Standard Webhooks reference library. Nothing here
//! knows which backend or store the service runs on, so the end-to-end
//! tests use it as well.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use reqwest::{Client, Response, header::CONTENT_TYPE};
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle, time::timeout};

/// How long a test waits for what the service should do promptly: far
/// beyond what it takes, so that only a real failure runs out of it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// One frame of a stream: a dispatched event, or a comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An event, dispatched by a blank line.
    Event {
        /// Its `id:` field, if it had one.
        id: Option<String>,
        /// Its `event:` field; `message` when it had none.
        event: String,
        /// Its `data:` lines, joined by newlines.
        data: String,
        /// How many `data:` lines it had.
        data_lines: usize,
    },
    /// A line starting with `:`, without the colon and the one space after.
    Comment(String),
}

/// One `event: run`: its id and the run it carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunEvent {
    pub(crate) id: String,
    pub(crate) run: Value,
}

impl RunEvent {
    /// The run's id.
    pub(crate) fn run_id(&self) -> &str {
        self.run["pipeline_run_id"].as_str().unwrap()
    }

    /// The run's status after the change.
    pub(crate) fn status(&self) -> &str {
        self.run["last_status"].as_str().unwrap()
    }

    /// The run's pipeline.
    pub(crate) fn pipeline_id(&self) -> &str {
        self.run["pipeline_id"].as_str().unwrap()
    }
}

/// Cuts an SSE byte stream into [`Frame`]s, as the `text/event-stream`
/// format says (lines ended by LF, CRLF or CR; a blank line dispatches).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// A CR just ended a line: an LF right after belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// The frames that `bytes` complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = String::from_utf8(std::mem::take(&mut self.line))
                        .expect("an event stream is UTF-8");
                    frames.extend(self.line_ended(&line));
                }
                other => self.line.push(other),
            }
        }
        frames
    }

    fn line_ended(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            if self.id.is_none() && self.event.is_none() && self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data);
            return Some(Frame::Event {
                id: self.id.take(),
                event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                data_lines: data.len(),
                data: data.join("\n"),
            });
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            return Some(Frame::Comment(comment.to_owned()));
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match name {
            "id" => self.id = Some(value),
            "event" => self.event = Some(value),
            "data" => self.data.push(value),
            // `retry` and unknown fields change nothing a test reads.
            _ => {}
        }
        None
    }
}

/// An open event stream.
#[derive(Debug)]
pub(crate) struct EventStream {
    response: Response,
    parser: SseParser,
    frames: VecDeque<Frame>,
    ended: bool,
}

impl EventStream {
    /// `GET url` with `token`, and `Last-Event-ID` when given: the stream
    /// once the service answered 200 `text/event-stream`, or the answer.
    ///
    /// # Errors
    /// The response, when it is not a stream.
    pub(crate) async fn open(
        client: &Client,
        url: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, Response> {
        let mut request = client.get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = timeout(PATIENCE, request.send())
            .await
            .expect("the service answers a stream's request at once")
            .unwrap();
        if response.status() != 200 {
            return Err(response);
        }
        let content_type = response.headers()[CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "a stream answered {content_type}"
        );
        Ok(Self {
            response,
            parser: SseParser::default(),
            frames: VecDeque::new(),
            ended: false,
        })
    }

    /// The next frame, waiting up to `within`; `None` once the service
    /// ended the stream cleanly. Panics when nothing came in time, or the
    /// stream broke off.
    pub(crate) async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let read = async {
            loop {
                if let Some(frame) = self.frames.pop_front() {
                    return Some(frame);
                }
                if self.ended {
                    return None;
                }
                match self.response.chunk().await {
                    Ok(Some(bytes)) => {
                        let frames = self.parser.push(&bytes);
                        self.frames.extend(frames);
                    }
                    Ok(None) => self.ended = true,
                    Err(err) => panic!("the stream broke off: {err:?}"),
                }
            }
        };
        timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("nothing came on the stream within {within:?}"))
    }

    /// The next frame that is not a comment (see [`EventStream::next_frame`]).
    pub(crate) async fn next_event(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(Frame::Comment(_)) => {}
                other => return other,
            }
        }
    }

    /// The next `event: run`, within [`PATIENCE`]; panics on anything
    /// else, and unless its data is one line of JSON with an id.
    pub(crate) async fn next_run(&mut self) -> RunEvent {
        match self.next_event(PATIENCE).await {
            Some(Frame::Event {
                id: Some(id),
                event,
                data,
                data_lines: 1,
            }) if event == "run" => RunEvent {
                id,
                run: serde_json::from_str(&data).unwrap(),
            },
            other => panic!("expected an event: run with an id and one data line, got {other:?}"),
        }
    }

    /// The next `count` run events.
    pub(crate) async fn next_runs(&mut self, count: usize) -> Vec<RunEvent> {
        let mut runs = Vec::with_capacity(count);
        for _ in 0..count {
            runs.push(self.next_run().await);
        }
        runs
    }

    /// Waits for the service to end the stream cleanly, within
    /// [`PATIENCE`]; panics on any event before the end.
    pub(crate) async fn expect_end(&mut self) {
        if let Some(frame) = self.next_event(PATIENCE).await {
            panic!("expected the stream to end, got {frame:?}");
        }
    }
}

/// One request the receiver took.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The path it was sent to.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The status the receiver answered.
    pub(crate) answered: u16,
}

impl Delivery {
    /// Its `webhook-id`.
    pub(crate) fn id(&self) -> &str {
        self.header("webhook-id")
    }

    /// Its `webhook-timestamp`, in Unix seconds.
    pub(crate) fn timestamp(&self) -> i64 {
        self.header("webhook-timestamp").parse().unwrap()
    }

    /// A header that must be there.
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("a delivery without {name}"))
            .to_str()
            .unwrap()
    }

    /// The body, which must be JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Checks the signature with the Standard Webhooks reference library
    /// and `secret` as registration showed it (`whsec_...`); panics unless
    /// it verifies. The library also refuses a `webhook-timestamp` more
    /// than five minutes from the wall clock.
    pub(crate) fn verify(&self, secret: &str) {
        let webhook = standardwebhooks::Webhook::new(secret).expect("a Standard Webhooks secret");
        if let Err(err) = webhook.verify(&self.body, &self.headers) {
            panic!(
                "a delivery to {} does not verify: {err}; headers {:?}",
                self.path, self.headers
            );
        }
    }
}

/// What the receiver shares with its handler.
#[derive(Debug, Default)]
struct Received {
    deliveries: Vec<Delivery>,
    /// The statuses the next requests to each path get, in turn; 204 once
    /// none is left.
    answers: HashMap<String, VecDeque<u16>>,
}

#[derive(Debug)]
struct Shared {
    received: Mutex<Received>,
    /// Bumped after each request recorded.
    arrived: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        // Nothing panics under the lock: a poisoned one is still whole.
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A webhook endpoint on loopback: every path takes `POST`s, records them
/// and answers 204, or the statuses [`Receiver::answer`] set for the path.
#[derive(Debug)]
pub(crate) struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free port of 127.0.0.1.
    pub(crate) async fn start() -> Self {
        let shared = Arc::new(Shared {
            received: Mutex::new(Received::default()),
            arrived: watch::Sender::new(0),
        });
        let router = Router::new().fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The URL of `path` (starting with `/`) on this receiver.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests to `path` are answered `statuses`, in turn.
    pub(crate) fn answer(&self, path: &str, statuses: &[u16]) {
        self.shared
            .lock()
            .answers
            .entry(path.to_owned())
            .or_default()
            .extend(statuses);
    }

    /// Every request to `path` so far, in the order they came.
    pub(crate) fn deliveries(&self, path: &str) -> Vec<Delivery> {
        self.shared
            .lock()
            .deliveries
            .iter()
            .filter(|delivery| delivery.path == path)
            .cloned()
            .collect()
    }

    /// Every request to `path` once there are at least `count`, waiting up
    /// to [`PATIENCE`] for them.
    pub(crate) async fn wait_for(&self, path: &str, count: usize) -> Vec<Delivery> {
        let mut arrived = self.shared.arrived.subscribe();
        let waited = timeout(PATIENCE, async {
            loop {
                let deliveries = self.deliveries(path);
                if deliveries.len() >= count {
                    return deliveries;
                }
                arrived.changed().await.unwrap();
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "{path} had {} of {count} deliveries after {PATIENCE:?}",
                self.deliveries(path).len()
            )
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let answered = {
        let mut received = shared.lock();
        let answered = received
            .answers
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .unwrap_or(204);
        received.deliveries.push(Delivery {
            path,
            headers,
            body,
            answered,
        });
        answered
    };
    shared.arrived.send_modify(|count| *count += 1);
    StatusCode::from_u16(answered).unwrap()
}
