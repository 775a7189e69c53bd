//! The feed of run changes: what event streams and webhooks tell.
//!
//! The engine is watched once per cluster: one [`RunChangeSource`] read by
//! whichever instance holds the [`EventLog`]'s lease, its changes appended
//! to the log with the cursor to resume from, so that a restart (of the
//! instance or of the engine) neither loses nor repeats a change. Every
//! instance reads the log: streams from where their client left off,
//! webhooks from where they were dispatched up to.

use std::{fmt, time::Duration};

use async_trait::async_trait;

use crate::{BackendError, CustomerId, PipelineId, RequestContext, Run, RunStatus};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The id of an event of the feed, as the [`EventLog`] gave it: ids of
/// later events compare greater when both are in the log's own form;
/// opaque otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

/// The text cannot be an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event id is 1 to 64 visible ASCII characters")]
pub struct InvalidEventId;

impl EventId {
    /// The longest event id, in characters.
    pub const MAX_LEN: usize = 64;

    /// Accepts 1 to 64 visible ASCII characters, as a client may send back
    /// in `Last-Event-ID`; whether the log knows the id is the log's
    /// business.
    ///
    /// # Errors
    /// [`InvalidEventId`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, InvalidEventId> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(InvalidEventId);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened to a run, as webhooks name it: the status it has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunEventType {
    /// `run.queued`: the run waits behind earlier runs.
    Queued,
    /// `run.running`: the run started.
    Running,
    /// `run.succeeded`: the run finished without error.
    Succeeded,
    /// `run.failed`: the run finished with an error, or was cancelled.
    Failed,
}

/// The text is not an event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event type is one of run.queued, run.running, run.succeeded, run.failed")]
pub struct InvalidRunEventType;

impl RunEventType {
    /// Every type, in the order of a run's life.
    pub const ALL: [Self; 4] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed];

    /// The type's name: `run.queued`, `run.running`, `run.succeeded` or
    /// `run.failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "run.queued",
            Self::Running => "run.running",
            Self::Succeeded => "run.succeeded",
            Self::Failed => "run.failed",
        }
    }

    /// The type named exactly so.
    ///
    /// # Errors
    /// [`InvalidRunEventType`] for any other text.
    pub fn parse(raw: &str) -> Result<Self, InvalidRunEventType> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == raw)
            .ok_or(InvalidRunEventType)
    }

    /// The type of a change that left a run in `status`.
    pub fn of(status: RunStatus) -> Self {
        match status {
            RunStatus::Queued => Self::Queued,
            RunStatus::Running => Self::Running,
            RunStatus::Success => Self::Succeeded,
            RunStatus::Failed => Self::Failed,
        }
    }
}

impl fmt::Display for RunEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of one run: it appeared, or its status changed. The run is as
/// it was right after the change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunChange {
    /// The customer whose pipeline it is: the only one ever told of it.
    pub customer: CustomerId,
    /// The run, as the change left it.
    pub run: Run,
}

impl RunChange {
    /// `run` of `customer`'s pipeline, as a change left it.
    pub fn new(customer: CustomerId, run: Run) -> Self {
        Self { customer, run }
    }

    /// What happened, by the status the change left.
    pub fn event_type(&self) -> RunEventType {
        RunEventType::of(self.run.status)
    }
}

/// An event of the feed: a change, and its id in the log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunEvent {
    /// Its id in the log.
    pub id: EventId,
    /// What changed.
    pub change: RunChange,
}

impl RunEvent {
    /// The event `id` telling of `change`.
    pub fn new(id: EventId, change: RunChange) -> Self {
        Self { id, change }
    }
}

/// Where a [`RunChangeSource`] resumes: text the source writes and reads
/// back, kept by the log, opaque to everyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCursor(String);

impl SourceCursor {
    /// A cursor with the source's text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The source's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a store of the feed or of webhooks did not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct StorageError {
    context: String,
    #[source]
    source: Option<BoxError>,
}

impl StorageError {
    /// A failure, described for the log.
    pub fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    /// The same, with its cause kept for the log's cause chain.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// The engine, watched: where the changes of runs come from.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait RunChangeSource: Send + Sync {
    /// The changes of runs after `cursor`, in the order they happened, and
    /// the cursor to resume after them: every run of every pipeline of
    /// every customer, whoever started it. Without a cursor, the source
    /// starts from now and tells nothing of the past.
    ///
    /// A source that hears of changes answers as soon as there is one (or
    /// after a while with none); one that must be polled answers after its
    /// poll interval, with what it found, perhaps nothing.
    ///
    /// # Errors
    /// [`BackendError`] when the engine fails; the caller asks again with
    /// the same cursor, and nothing is lost.
    async fn changes(
        &self,
        cursor: Option<SourceCursor>,
    ) -> Result<(Vec<RunChange>, SourceCursor), BackendError>;
}

/// What a read of the feed found.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedRead {
    /// The events after the position asked for, oldest first (perhaps
    /// none yet).
    Events(Vec<RunEvent>),
    /// The position asked for is older than what the log keeps: events
    /// were missed. The reader goes on from the log's head.
    Gap,
}

/// Where the feed's events are kept for a while (at least
/// [`MIN_EVENT_RETENTION`]) and shared: this process's memory, or a
/// store that every instance reads.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Takes the lease to watch the engine for `ttl`, or renews it when
    /// `holder` holds it already; whether `holder` holds it now. At most
    /// one holder at a time, in the whole cluster.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails; the holder then stops
    /// watching until it holds the lease again.
    async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, StorageError>;

    /// Where the source resumes, as the last append recorded.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn source_cursor(&self) -> Result<Option<SourceCursor>, StorageError>;

    /// Appends `changes` as events, in order, and records `cursor` as where
    /// the source resumes, atomically, and only while `holder` holds the
    /// lease: a holder that lost it appends nothing, so that no change is
    /// told twice. Answers the new events' ids, or `None` when `holder`
    /// did not hold the lease.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails; nothing was appended.
    async fn append(
        &self,
        holder: &str,
        changes: &[RunChange],
        cursor: &SourceCursor,
    ) -> Result<Option<Vec<EventId>>, StorageError>;

    /// The newest event's id, where a reader "from now" starts; `None`
    /// while the log holds no event.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn head(&self) -> Result<Option<EventId>, StorageError>;

    /// The events after `after` (`None`: from the oldest kept), oldest
    /// first, at most `limit`; when there is none yet, waits up to `wait`
    /// for one. [`FeedRead::Gap`] when events after `after` were dropped
    /// from the log already.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn read(
        &self,
        after: Option<EventId>,
        limit: usize,
        wait: Duration,
    ) -> Result<FeedRead, StorageError>;
}

/// The least time an [`EventLog`] keeps an event: the contract's hour, so
/// that a client that reconnects within it misses nothing.
pub const MIN_EVENT_RETENTION: Duration = Duration::from_secs(60 * 60);

/// Who listens to the feed: the customers with an open event stream on any
/// instance. A source that must poll per customer (the Platform-API) polls
/// only theirs, and those with webhooks.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Listeners: Send + Sync {
    /// Notes that `customer` listens, for `ttl` (a stream renews it while
    /// it is open).
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn listen(&self, customer: &CustomerId, ttl: Duration) -> Result<(), StorageError>;

    /// The customers listening now.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn listening(&self) -> Result<Vec<CustomerId>, StorageError>;
}

/// Which of the caller's events a reader wants: every pipeline, or these.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    pipelines: Vec<PipelineId>,
}

impl EventFilter {
    /// Events of every pipeline of the caller.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of these pipelines of the caller only (none: every
    /// pipeline).
    pub fn pipelines(pipelines: Vec<PipelineId>) -> Self {
        Self { pipelines }
    }

    /// Whether `change`, already known to be the caller's, is one the
    /// reader wants.
    fn wants(&self, change: &RunChange) -> bool {
        self.pipelines.is_empty() || self.pipelines.contains(&change.run.pipeline_id)
    }
}

/// The feed as one customer sees it: only its own runs, ever.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Events {
    log: std::sync::Arc<dyn EventLog>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// The feed kept in `log`.
    pub fn new(log: std::sync::Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    /// The newest event's id: where a reader that wants only what comes
    /// next starts.
    ///
    /// # Errors
    /// [`StorageError`] when the log fails.
    pub async fn head(&self) -> Result<Option<EventId>, StorageError> {
        self.log.head().await
    }

    /// The caller's events after `after` that `filter` wants, oldest first,
    /// with the id of the last event read (the caller's or not), to read on
    /// from; waits up to `wait` when there is none yet. Another customer's
    /// run never comes back, whatever the filter says.
    ///
    /// # Errors
    /// [`StorageError`] when the log fails.
    pub async fn read(
        &self,
        ctx: &RequestContext,
        filter: &EventFilter,
        after: Option<&EventId>,
        wait: Duration,
    ) -> Result<CustomerRead, StorageError> {
        match self.log.read(after.cloned(), Self::PAGE, wait).await? {
            FeedRead::Gap => Ok(CustomerRead::Gap),
            FeedRead::Events(events) => {
                let last = events.last().map(|event| event.id.clone());
                let events = events
                    .into_iter()
                    .filter(|event| {
                        event.change.customer == *ctx.customer() && filter.wants(&event.change)
                    })
                    .collect();
                Ok(CustomerRead::Events { events, last })
            }
        }
    }

    /// The most events read from the log at once.
    const PAGE: usize = 500;
}

/// What a customer's read of the feed found.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomerRead {
    /// The caller's events that the filter wants, and the id of the last
    /// event read, to read on after (`None` when the log had nothing new).
    Events {
        /// The caller's events, oldest first.
        events: Vec<RunEvent>,
        /// Where to read on from.
        last: Option<EventId>,
    },
    /// Events after the position asked for were dropped already.
    Gap,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::{Caller, RunId};

    fn change(customer: &str, pipeline: &str, status: RunStatus) -> RunChange {
        let at = Utc.with_ymd_and_hms(2024, 12, 18, 10, 30, 0).unwrap();
        RunChange::new(
            CustomerId::parse(customer).unwrap(),
            Run::new(
                RunId::manual(&at),
                PipelineId::parse(pipeline).unwrap(),
                status,
                at,
            ),
        )
    }

    const A: &str = "1b33ad2f_33d3_4837_9eeb_83c82c8b909d";
    const B: &str = "2c44be3a_44e4_4948_8ffc_94d93d9ca1ae";

    #[test]
    fn event_types_are_named_as_webhooks_name_them() {
        assert_eq!(
            RunEventType::ALL.map(RunEventType::as_str),
            ["run.queued", "run.running", "run.succeeded", "run.failed"]
        );
        assert_eq!(RunEventType::parse("run.failed"), Ok(RunEventType::Failed));
        assert_eq!(RunEventType::parse("run.FAILED"), Err(InvalidRunEventType));
        assert_eq!(
            change("acme", A, RunStatus::Success).event_type(),
            RunEventType::Succeeded
        );
    }

    #[test]
    fn event_ids_are_visible_ascii_of_a_bounded_length() {
        assert!(EventId::parse("1733051234567-0").is_ok());
        assert_eq!(EventId::parse(""), Err(InvalidEventId));
        assert_eq!(EventId::parse("a b"), Err(InvalidEventId));
        assert_eq!(EventId::parse(&"1".repeat(65)), Err(InvalidEventId));
    }

    #[tokio::test]
    async fn a_reader_sees_only_its_customers_events_of_the_pipelines_it_asked_for() {
        let events: Vec<RunEvent> = [
            change("acme", A, RunStatus::Queued),
            change("globex", A, RunStatus::Running),
            change("acme", B, RunStatus::Running),
            change("acme", A, RunStatus::Success),
            change("globex", B, RunStatus::Failed),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, change)| RunEvent::new(EventId::parse(&format!("{i}-0")).unwrap(), change))
        .collect();
        let mut log = MockEventLog::new();
        log.expect_read()
            .returning(move |_, _, _| Ok(FeedRead::Events(events.clone())));
        let feed = Events::new(Arc::new(log));
        let acme = RequestContext::new(Caller::new(CustomerId::parse("acme").unwrap()));

        let CustomerRead::Events { events, last } = feed
            .read(
                &acme,
                &EventFilter::pipelines(vec![PipelineId::parse(A).unwrap()]),
                None,
                Duration::ZERO,
            )
            .await
            .unwrap()
        else {
            panic!("no gap here");
        };
        let statuses: Vec<RunStatus> = events.iter().map(|e| e.change.run.status).collect();
        assert_eq!(statuses, [RunStatus::Queued, RunStatus::Success]);
        assert!(events.iter().all(|e| e.change.customer.as_str() == "acme"));
        // Reading goes on after the last event read, another customer's.
        assert_eq!(last.unwrap().as_str(), "4-0");
    }

    #[tokio::test]
    async fn a_gap_is_told_as_it_is() {
        let mut log = MockEventLog::new();
        log.expect_read().returning(|_, _, _| Ok(FeedRead::Gap));
        let feed = Events::new(Arc::new(log));
        let acme = RequestContext::new(Caller::new(CustomerId::parse("acme").unwrap()));
        let read = feed
            .read(&acme, &EventFilter::all(), None, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(read, CustomerRead::Gap);
    }
}
