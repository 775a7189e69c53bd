//! `GET /platform/events`: the caller's run changes as Server-Sent Events,
//! resumable with `Last-Event-ID`, and the JSON bodies events and
//! webhook deliveries carry.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{FromRequestParts, State},
    http::{HeaderName, request::Parts},
    response::sse::{Event, KeepAlive, Sse},
};
use domain::{CustomerRead, EventFilter, EventId, PipelineId, RequestContext, RunEvent};
use futures_util::{Stream, StreamExt as _, stream};
use serde::Deserialize;

use crate::{
    AppState,
    dto::EventsParams,
    edge::RequestDeadline,
    error::{ApiError, ErrorEnvelope},
    extract::Authenticated,
    limits::Slot,
    routes::PlatformFailures,
    run_json,
};

/// How often a stream with nothing to tell sends a comment, so that
/// proxies keep it open and clients know it is alive: the contract's 15 s.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long one read of the feed waits for an event before it reads again
/// (and the stream renews that its customer listens).
const READ_WAIT: Duration = Duration::from_secs(10);

/// How long a stream's customer counts as listening after the stream last
/// said so: a few reads' worth, so that a stream that ends stops being
/// polled for soon after.
const LISTEN_TTL: Duration = Duration::from_secs(60);

/// `Last-Event-ID`.
static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The `pipeline_id` query values of a stream, each checked: none means
/// every pipeline of the caller.
#[derive(Debug)]
pub(crate) struct PipelineFilter(pub(crate) EventFilter);

#[derive(Debug, Deserialize)]
struct RawFilter {
    #[serde(default)]
    pipeline_id: Vec<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PipelineFilter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let raw: RawFilter = serde_urlencoded_multi(query)
            .map_err(|_| ApiError::invalid_query("The query string could not be decoded"))?;
        let pipelines = raw
            .pipeline_id
            .iter()
            .map(|raw| PipelineId::parse(raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                ApiError::invalid_query("pipeline_id must be a UUID, hyphenated or underscored")
            })?;
        Ok(Self(EventFilter::pipelines(pipelines)))
    }
}

/// Repeated query keys (`pipeline_id=a&pipeline_id=b`) into a list:
/// axum's `Query` keeps only one value per key.
fn serde_urlencoded_multi(query: &str) -> Result<RawFilter, ()> {
    let mut pipeline_id = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(&text.replace('+', " "))
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| ())
        };
        if decode(key)? == "pipeline_id" {
            pipeline_id.push(decode(value)?);
        }
    }
    Ok(RawFilter { pipeline_id })
}

/// The `Last-Event-ID` a reconnecting client sends, if usable.
#[derive(Debug)]
pub(crate) struct LastEventId(pub(crate) Option<EventId>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(&LAST_EVENT_ID) else {
            return Ok(Self(None));
        };
        let id = value
            .to_str()
            .ok()
            .and_then(|raw| EventId::parse(raw.trim()).ok())
            .ok_or_else(|| {
                ApiError::invalid_header("Last-Event-ID must be an event id this service sent")
            })?;
        Ok(Self(Some(id)))
    }
}

/// Stream the caller's run changes as Server-Sent Events.
///
/// Each event is `id: <event id>`, `event: run`, `data: RUN` (one line of
/// JSON), sent when a run appears (triggered here, by a schedule or on the
/// engine) and each time its `last_status` changes; a run's last is
/// `SUCCESS` or `FAILED`. A comment (`: keep-alive`) comes at least every
/// 15 s. Reconnect with `Last-Event-ID` to get what was missed while it is
/// kept (at least the last hour); when it is not, the stream starts with
/// `event: gap` and goes on from now. The stream ends when the service
/// shuts down; reconnect with `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/platform/events",
    tag = "events",
    params(EventsParams),
    responses(
        (status = 200, description = "The stream: `text/event-stream`, open until the client or the service ends it", content_type = "text/event-stream", body = String),
        (status = 400, description = "`InvalidQueryParameter` (a `pipeline_id` that is not one) or `InvalidHeader` (a `Last-Event-ID` that is not an event id)", body = ErrorEnvelope),
        PlatformFailures,
        (status = 429, description = "`TooManyStreams`: the customer has 10 streams open (the configured bound); or `RateLimited`. Both with `Retry-After`", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "`EventStoreUnavailable`: where events are kept cannot be reached; or `ServiceTimeout`", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    Authenticated(ctx): Authenticated,
    PipelineFilter(filter): PipelineFilter,
    LastEventId(last): LastEventId,
    deadline: RequestDeadline,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let feed = state.feed().ok_or_else(ApiError::route_not_found)?.clone();
    let streams = state.streams();
    let slot = streams
        .enter(ctx.customer())
        .ok_or_else(|| ApiError::too_many_streams(streams.limit()))?;
    // A stream lasts as long as its client listens.
    deadline.lift();
    // Without `Last-Event-ID`, from now: after the newest event (or, in a
    // log with none yet, from its first).
    let after = match last {
        Some(id) => Some(id),
        None => feed
            .events
            .head()
            .await
            .map_err(|err| ApiError::feed_unavailable(&err))?,
    };
    let stream = EventStream {
        state: state.clone(),
        ctx: Arc::new(ctx),
        filter,
        after,
        _slot: Arc::new(slot),
        _open: Arc::new(state.metrics().stream_opened()),
    };
    Ok(Sse::new(stream.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

/// One client's stream: reads the feed from where it is, tells the
/// caller's events, and ends when the service drains.
struct EventStream {
    state: AppState,
    ctx: Arc<RequestContext>,
    filter: EventFilter,
    /// The last event read (the caller's or not); `None`: from the first
    /// the log keeps.
    after: Option<EventId>,
    /// The stream's place among its customer's, freed when it ends.
    _slot: Arc<Slot>,
    /// The stream counted open while it is.
    _open: Arc<crate::metrics::OpenStream>,
}

impl EventStream {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut stream| async move {
            let events = stream.next_events().await?;
            Some((stream::iter(events.into_iter().map(Ok)), stream))
        })
        .flatten()
    }

    /// The next events to send, waiting for some; `None` once the stream
    /// is over (the service drains).
    async fn next_events(&mut self) -> Option<Vec<Event>> {
        let feed = self.state.feed()?.clone();
        loop {
            if self.state.is_draining() {
                return None;
            }
            if let Err(err) = feed.listeners.listen(self.ctx.customer(), LISTEN_TTL).await {
                tracing::warn!(error = %err, "a stream could not say its customer listens");
            }
            let read = tokio::select! {
                read = feed.events.read(&self.ctx, &self.filter, self.after.as_ref(), READ_WAIT) => read,
                () = self.state.drained() => return None,
            };
            match read {
                Ok(CustomerRead::Gap) => {
                    // Events were dropped: say so, and go on from now.
                    let head = feed.events.head().await.ok().flatten();
                    self.after = head;
                    return Some(vec![gap_event()]);
                }
                Ok(CustomerRead::Events { events, last }) => {
                    if let Some(last) = last {
                        self.after = Some(last);
                    }
                    if !events.is_empty() {
                        return Some(events.iter().map(run_event).collect());
                    }
                }
                Err(err) => {
                    // The feed's store failing: the client reconnects with
                    // its last id once it is back.
                    tracing::warn!(error = %err, "reading the feed failed; ending the stream");
                    return None;
                }
            }
        }
    }
}

/// `event: run` with the run as it is after the change.
fn run_event(event: &RunEvent) -> Event {
    // Written from `&str`s and ASCII, so always UTF-8.
    let body = String::from_utf8(run_json::object(&event.change.run)).unwrap_or_default();
    Event::default()
        .id(event.id.as_str())
        .event("run")
        .data(body)
}

/// `event: gap`: events after the client's `Last-Event-ID` are no longer
/// kept; the stream goes on from now.
fn gap_event() -> Event {
    Event::default()
        .event("gap")
        .data(r#"{"detail":"Events after Last-Event-ID are no longer kept; the stream goes on from now."}"#)
}

/// The body of a webhook delivery: `{"type", "timestamp", "data": RUN}`,
/// the run as the API's run routes show it. The app hands this to the
/// webhook sender, so that deliveries and the API show runs alike.
///
/// `timestamp` is when the change happened, the same on every attempt.
pub fn webhook_body(event: &RunEvent) -> Vec<u8> {
    run_json::delivery(event.change.event_type().as_str(), &event.change.run)
}
