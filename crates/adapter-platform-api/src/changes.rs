//! The feed's source over the Platform-API upstream: [`PlatformApiChanges`]
//! polls, once per poll interval, the pipelines of the customers someone
//! listens to (an open event stream, a webhook), with the contract's own
//! routes: each customer's pipelines (`GET /pipelines`), then the newest
//! page of runs of each (`GET /pipeline/{id}/pipeline_run?limit=20&offset=0`),
//! and tells the runs that appeared or changed status since the last look.
//!
//! The upstream has no "changed since" route, so the cursor is what the
//! source last saw: per customer and pipeline, the window of its newest
//! runs (at least the newest [`WINDOW`], and every older run still
//! unfinished, as far back as [`MAX_PAGES`] pages reach) with each run's
//! status. A poll reads the pages down to the oldest run of the window,
//! tells each run that is not in the window, or is in another status, and
//! keeps the new window. `docs/backends/platform-api.md` ("Run changes")
//! gives the load this puts on the upstream.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{
    BackendError, Caller, CustomerId, ListRunsError, Orchestrator as _, PipelineId,
    PipelineRepository as _, RequestContext, Run, RunChange, RunChangeSource, RunQuery, RunStatus,
    SourceCursor, StorageError, Timestamp,
};
use futures_util::stream::{self, StreamExt as _};
use serde::{Deserialize, Serialize};

use crate::PlatformApiBackend;

/// How long a poll waits before it asks the upstream, when nothing else is
/// configured (`MAESTRO_EVENTS_POLL_MS`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The runs asked for per page, newest first: the least the window of a
/// pipeline holds.
pub const WINDOW: u32 = 20;

/// The most pages of one pipeline's runs a poll reads: more are read only
/// when more than [`WINDOW`] runs appeared since the last poll, or when an
/// older run of the window has not finished.
pub const MAX_PAGES: u64 = 5;

/// How many customers, and how many pipelines of one customer, are polled
/// at once.
const CONCURRENCY: usize = 4;

/// The cursor's format, so that a later one can tell it from its own.
const CURSOR_VERSION: u32 = 1;

/// Who the source polls for: the customers listening now, with an open
/// event stream on any instance or a webhook. The service combines
/// [`domain::Listeners::listening`] and [`domain::WebhookStore::customers`].
///
/// Any `Fn() -> impl Future<Output = Result<Vec<CustomerId>, StorageError>>`
/// is one.
#[async_trait]
pub trait WatchedCustomers: Send + Sync {
    /// The customers to poll for now (in any order, perhaps repeated).
    ///
    /// # Errors
    /// [`StorageError`] when they cannot be read; the poll fails, and is
    /// made again with the same cursor.
    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError>;
}

#[async_trait]
impl<F, Fut> WatchedCustomers for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Vec<CustomerId>, StorageError>> + Send,
{
    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError> {
        self().await
    }
}

/// The feed's source over the Platform-API upstream, through the backend's
/// client (its service token, timeout and retries of reads).
///
/// Each call of [`RunChangeSource::changes`] waits the poll interval, then
/// polls once for every watched customer. A customer new to the watch is
/// polled from now: its runs' past is not told. Meant to be run by one
/// holder at a time (the event log's lease), not per instance.
pub struct PlatformApiChanges {
    backend: PlatformApiBackend,
    watched: Arc<dyn WatchedCustomers>,
    interval: Duration,
}

impl fmt::Debug for PlatformApiChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformApiChanges")
            .field("backend", &self.backend)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Where a run stands in a pipeline's list: the contract orders runs by
/// `created_at`, then run id, newest (greatest) first.
type Position = (Timestamp, String);

/// The runs of one pipeline the source last saw, with their statuses.
type Window = BTreeMap<Position, RunStatus>;

/// What the source last saw: per watched customer, per pipeline, its
/// window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    customers: BTreeMap<String, BTreeMap<String, Window>>,
}

/// One pipeline's window as text: `[[created_at, run_id, status], ...]`.
type WindowText = Vec<(String, String, String)>;

/// The cursor as text: `{"v": 1, "customers": {"acme": {"<pipeline>":
/// [[created_at, run_id, status], ...]}}}`.
#[derive(Debug, Serialize, Deserialize)]
struct CursorText {
    v: u32,
    customers: BTreeMap<String, BTreeMap<String, WindowText>>,
}

impl State {
    fn encode(&self) -> SourceCursor {
        let customers = self
            .customers
            .iter()
            .map(|(customer, pipelines)| {
                let pipelines = pipelines
                    .iter()
                    .map(|(pipeline, window)| {
                        let runs = window
                            .iter()
                            .map(|((created_at, run_id), status)| {
                                (
                                    stamp(created_at),
                                    run_id.clone(),
                                    status.as_str().to_owned(),
                                )
                            })
                            .collect();
                        (pipeline.clone(), runs)
                    })
                    .collect();
                (customer.clone(), pipelines)
            })
            .collect();
        let text = CursorText {
            v: CURSOR_VERSION,
            customers,
        };
        // A struct of strings always serializes.
        SourceCursor::new(serde_json::to_string(&text).unwrap_or_default())
    }

    /// The state a cursor of this source holds; `None` for any other text.
    fn decode(cursor: &SourceCursor) -> Option<Self> {
        let text: CursorText = serde_json::from_str(cursor.as_str()).ok()?;
        if text.v != CURSOR_VERSION {
            return None;
        }
        let mut customers = BTreeMap::new();
        for (customer, pipelines) in text.customers {
            let mut read = BTreeMap::new();
            for (pipeline, runs) in pipelines {
                let mut window = Window::new();
                for (created_at, run_id, status) in runs {
                    let created_at = DateTime::parse_from_rfc3339(&created_at)
                        .ok()?
                        .with_timezone(&Utc);
                    window.insert((created_at, run_id), RunStatus::parse(&status).ok()?);
                }
                read.insert(pipeline, window);
            }
            customers.insert(customer, read);
        }
        Some(Self { customers })
    }
}

fn stamp(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn position(run: &Run) -> Position {
    (run.created_at, run.id.as_str().to_owned())
}

/// What one poll found for one customer.
struct Polled {
    /// The runs to tell.
    changes: Vec<Run>,
    /// The customer's pipelines and windows now.
    pipelines: BTreeMap<String, Window>,
}

impl PlatformApiChanges {
    /// The source over `backend`'s upstream, polling every `poll_interval`
    /// (`MAESTRO_EVENTS_POLL_MS`, default [`DEFAULT_POLL_INTERVAL`]) for the
    /// customers `watched` names.
    pub fn new(
        backend: PlatformApiBackend,
        watched: Arc<dyn WatchedCustomers>,
        poll_interval: Duration,
    ) -> Self {
        Self {
            backend,
            watched,
            interval: poll_interval,
        }
    }

    /// One poll from `state` (`None`: from now, telling nothing).
    async fn poll(&self, state: Option<State>) -> Result<(Vec<RunChange>, State), BackendError> {
        let watched = self.watched.customers().await.map_err(|err| {
            BackendError::unavailable("the customers to poll for cannot be read").with_source(err)
        })?;
        let watched: BTreeSet<CustomerId> = watched.into_iter().collect();
        let previous = state.unwrap_or_default();
        let polls = stream::iter(watched)
            .map(|customer| {
                let known = previous.customers.get(customer.as_str());
                async move {
                    let polled = self.poll_customer(&customer, known).await;
                    (customer, polled)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;

        let mut next = State::default();
        let mut changes = Vec::new();
        let mut first_error = None;
        let mut answered = 0;
        let asked = polls.len();
        for (customer, polled) in polls {
            match polled {
                Ok(polled) => {
                    answered += 1;
                    changes.extend(
                        polled
                            .changes
                            .into_iter()
                            .map(|run| RunChange::new(customer.clone(), run)),
                    );
                    next.customers
                        .insert(customer.as_str().to_owned(), polled.pipelines);
                }
                Err(err) => {
                    tracing::warn!(
                        customer = %customer,
                        error = %err,
                        "cannot poll the customer's runs; asking again next time"
                    );
                    // What was seen stays, so that the next poll tells what
                    // happened meanwhile.
                    if let Some(known) = previous.customers.get(customer.as_str()) {
                        next.customers
                            .insert(customer.as_str().to_owned(), known.clone());
                    }
                    first_error.get_or_insert(err);
                }
            }
        }
        if answered == 0
            && asked > 0
            && let Some(err) = first_error
        {
            return Err(err);
        }
        changes.sort_by_key(|change| change.run.updated_at);
        Ok((changes, next))
    }

    /// Polls one customer's pipelines; `known` is what the source saw of
    /// them, `None` for a customer new to the watch (nothing is told then).
    async fn poll_customer(
        &self,
        customer: &CustomerId,
        known: Option<&BTreeMap<String, Window>>,
    ) -> Result<Polled, BackendError> {
        let ctx = RequestContext::new(Caller::new(customer.clone()));
        let summaries = self.backend.list(&ctx).await?;
        let mut seen = HashSet::new();
        let pipelines: Vec<PipelineId> = summaries
            .into_iter()
            .map(|summary| summary.pipeline.id)
            .filter(|id| seen.insert(id.clone()))
            .collect();
        let ctx = &ctx;
        let polls = stream::iter(pipelines)
            .map(|id| {
                let old = known.and_then(|known| known.get(id.as_str()));
                async move {
                    let polled = self.poll_pipeline(ctx, &id, old).await;
                    (id, old, polled)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut found = Polled {
            changes: Vec::new(),
            pipelines: BTreeMap::new(),
        };
        for (id, old, polled) in polls {
            match polled {
                Ok(Some((changes, window))) => {
                    if known.is_some() {
                        found.changes.extend(changes);
                    }
                    found.pipelines.insert(id.as_str().to_owned(), window);
                }
                // Gone between the two reads.
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(
                        pipeline_id = %id,
                        error = %err,
                        "cannot poll the pipeline's runs; asking again next time"
                    );
                    if let Some(old) = old {
                        found.pipelines.insert(id.as_str().to_owned(), old.clone());
                    }
                }
            }
        }
        Ok(found)
    }

    /// Reads the pipeline's newest runs down to the oldest of `old`, the
    /// window last seen (`None`: a pipeline not seen before, whose runs
    /// are all new), and tells the runs that are not in it or in another
    /// status, and the window to keep. `None` when the pipeline is gone.
    async fn poll_pipeline(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        old: Option<&Window>,
    ) -> Result<Option<(Vec<Run>, Window)>, BackendError> {
        let floor = old.and_then(|window| window.keys().next().cloned());
        let mut fetched: Vec<Run> = Vec::new();
        let mut ids = HashSet::new();
        for page in 0..MAX_PAGES {
            let query = RunQuery::new(Some(WINDOW), Some(page * u64::from(WINDOW)), None)
                .map_err(|err| BackendError::upstream("the run query").with_source(err))?;
            let runs = match self.backend.list_runs(ctx, id, &query).await {
                Ok(page) => page.runs,
                Err(ListRunsError::NotFound(_)) => return Ok(None),
                Err(ListRunsError::Backend(err)) => return Err(err),
                Err(other) => {
                    return Err(BackendError::upstream("listing runs").with_source(other));
                }
            };
            let full = runs.len() == WINDOW as usize;
            let oldest = runs.last().map(position);
            // A run made between two pages shifts the later one by one.
            fetched.extend(runs.into_iter().filter(|run| ids.insert(run.id.clone())));
            let beyond_floor = match (&floor, &oldest) {
                (Some(floor), Some(oldest)) => oldest > floor,
                _ => false,
            };
            if !(full && beyond_floor) {
                break;
            }
            if page + 1 == MAX_PAGES {
                tracing::warn!(
                    pipeline_id = %id,
                    pages = MAX_PAGES,
                    "the runs seen last are deeper than a poll reads; older ones are no longer watched"
                );
            }
        }

        let in_window = |run: &Run| floor.as_ref().is_none_or(|floor| position(run) >= *floor);
        let changes: Vec<Run> = fetched
            .iter()
            .filter(|run| in_window(run))
            .filter(|run| old.and_then(|window| window.get(&position(run))) != Some(&run.status))
            .cloned()
            .collect();

        // The newest page, and every older run still unfinished, and what
        // lies between them.
        let new_floor = fetched
            .iter()
            .enumerate()
            .filter(|(index, run)| {
                *index < WINDOW as usize || (!run.status.is_finished() && in_window(run))
            })
            .map(|(_, run)| position(run))
            .min();
        let window: Window = fetched
            .iter()
            .filter(|run| {
                new_floor
                    .as_ref()
                    .is_some_and(|floor| position(run) >= *floor)
            })
            .map(|run| (position(run), run.status))
            .collect();
        Ok(Some((changes, window)))
    }
}

#[async_trait]
impl RunChangeSource for PlatformApiChanges {
    /// Waits the poll interval, then polls once (see the module's
    /// documentation). A cursor that is not this source's counts as none:
    /// every customer is polled from now. A customer that cannot be polled
    /// keeps what was seen of it, and is polled again next time; the call
    /// fails only when no customer could be.
    async fn changes(
        &self,
        cursor: Option<SourceCursor>,
    ) -> Result<(Vec<RunChange>, SourceCursor), BackendError> {
        tokio::time::sleep(self.interval).await;
        let state = cursor.and_then(|cursor| {
            let state = State::decode(&cursor);
            if state.is_none() {
                tracing::warn!("the feed's cursor is not a Platform-API cursor; starting from now");
            }
            state
        });
        let (changes, state) = self.poll(state).await?;
        Ok((changes, state.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_it_was_written() {
        let at = DateTime::parse_from_rfc3339("2024-12-18T10:30:00.123456+00:00")
            .unwrap()
            .with_timezone(&Utc);
        let window = Window::from([
            ((at, "manual__a".to_owned()), RunStatus::Running),
            ((at, "manual__b".to_owned()), RunStatus::Failed),
        ]);
        let state = State {
            customers: BTreeMap::from([(
                "Acme Corp".to_owned(),
                BTreeMap::from([
                    ("1b33ad2f_33d3_4837_9eeb_83c82c8b909d".to_owned(), window),
                    (
                        "2c44be3a_44e4_4948_8ffc_94d93d9ca1ae".to_owned(),
                        Window::new(),
                    ),
                ]),
            )]),
        };
        assert_eq!(State::decode(&state.encode()), Some(state));
    }

    #[test]
    fn another_sources_cursor_is_no_cursor() {
        for text in [
            "",
            "1733051234567-0",
            r#"{"v":1,"high":null,"told":[]}"#,
            r#"{"v":2,"customers":{}}"#,
            r#"{"v":1,"customers":{"acme":{"p":[["2024-12-18T10:30:00Z","r","DONE"]]}}}"#,
        ] {
            assert_eq!(State::decode(&SourceCursor::new(text)), None, "{text}");
        }
    }
}
