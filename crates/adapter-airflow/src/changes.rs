//! The feed's source over Airflow: [`AirflowChanges`] asks Airflow, once per
//! poll interval, for the DAG runs changed since its cursor across all DAGs
//! (`GET /api/v2/dags/~/dagRuns?updated_at_gte=...`), and tells each run of
//! a Maestro-visible DAG that appeared or changed status since.
//!
//! Airflow filters and orders runs by their `updated_at`, but does not
//! answer it, and moves it for more than status changes (the scheduler
//! touches a running run on every loop). So a change is known by the
//! instant its status began, which Airflow does answer: `queued_at` for a
//! queued run, `start_date` for a running one, `end_date` for a finished
//! one. Each status change moves `updated_at` in the same transaction, so
//! a change that began at `t` has `updated_at >= t`.
//!
//! The cursor is the high-water mark (the latest of those instants, and of
//! `last_scheduling_decision`, seen on any run) and the changes already
//! told that began within [`OVERLAP`] of it. A poll asks for the runs
//! updated since the mark less the overlap, and tells a run when the
//! instant its status began is within that window and the change is not
//! among those told. The overlap covers the clocks of Airflow's
//! components running apart and transactions committed after a later
//! one. `docs/backends/airflow.md` ("Run changes") tells the whole story.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use domain::{
    BackendError, CustomerId, PipelineId, RunChange, RunChangeSource, RunStatus, SourceCursor,
    Timestamp,
};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::age::younger_than;
use crate::client::{Call, segment};
use crate::wire::{Dag, DagPage, DagRun, DagRunPage, run_status};
use crate::{AirflowBackend, PAGE_LIMIT};

/// How long a poll waits before it asks Airflow, when nothing else is
/// configured (`MAESTRO_EVENTS_POLL_MS`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How far before its high-water mark a poll looks again: more than the
/// clocks of Airflow's schedulers and API servers run apart, and more
/// than a transaction of theirs takes to commit.
pub const OVERLAP: Duration = Duration::from_secs(30);

/// The most pages of runs one poll reads. Airflow answers at most
/// `[api] maximum_page_limit` runs a page (100 by default).
const MAX_PAGES: usize = 20;

/// The most changes the cursor remembers; past it, the oldest are
/// forgotten (and would be told again should Airflow answer them again
/// within the overlap).
const MAX_TOLD: usize = 10_000;

/// How long a DAG's owner, once read, is trusted before a run of it makes
/// the source read the DAG again (a tag can change).
const DAG_REFRESH: Duration = Duration::from_secs(60);

/// Up to this many DAGs to read are read one by one; more, by listing
/// every DAG.
const FEW_DAGS: usize = 10;

/// The cursor's format, so that a later one can tell it from its own.
const CURSOR_VERSION: u32 = 1;

/// The feed's source over one Airflow cluster, through the backend's client
/// (its account, token and timeout).
///
/// Each call of [`RunChangeSource::changes`] waits the poll interval, then
/// polls once; a poll is bounded by the backend's timeout. Meant to be run
/// by one holder at a time (the event log's lease), not per instance.
pub struct AirflowChanges {
    backend: Arc<AirflowBackend>,
    interval: Duration,
    /// Which customer's pipeline each DAG is, as last read. A std mutex:
    /// held only to read or write the map, never across an `.await`.
    owners: Mutex<HashMap<String, Owner>>,
}

impl std::fmt::Debug for AirflowChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AirflowChanges")
            .field("backend", &self.backend)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// What the source knows of one DAG.
#[derive(Debug, Clone)]
struct Owner {
    /// The pipeline and its customer; `None` for a DAG visible to no one
    /// (or gone).
    pipeline: Option<(PipelineId, CustomerId)>,
    /// When it was read, on the backend's clock.
    read_at: Timestamp,
}

/// A change told: the run, its status, and when that status began. Ordered
/// by that instant first, so that the oldest are forgotten first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Told {
    moved_at: Timestamp,
    dag_id: String,
    run_id: String,
    status: &'static str,
}

/// Where a poll resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// The latest instant seen on any run (`None` while Airflow had no run
    /// at all): Airflow's clock had reached it.
    high: Option<Timestamp>,
    /// The changes told that began at or after `high - OVERLAP`.
    told: BTreeSet<Told>,
}

/// The cursor as text: `{"v": 1, "high": "...", "told": [[moved_at,
/// dag_id, run_id, status], ...]}`.
#[derive(Debug, Serialize, Deserialize)]
struct CursorText {
    v: u32,
    high: Option<String>,
    told: Vec<(String, String, String, String)>,
}

impl State {
    fn encode(&self) -> SourceCursor {
        let text = CursorText {
            v: CURSOR_VERSION,
            high: self.high.as_ref().map(stamp),
            told: self
                .told
                .iter()
                .map(|told| {
                    (
                        stamp(&told.moved_at),
                        told.dag_id.clone(),
                        told.run_id.clone(),
                        told.status.to_owned(),
                    )
                })
                .collect(),
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
        let high = match text.high.as_deref() {
            Some(raw) => Some(parse_stamp(raw)?),
            None => None,
        };
        let told = text
            .told
            .into_iter()
            .map(|(moved_at, dag_id, run_id, status)| {
                Some(Told {
                    moved_at: parse_stamp(&moved_at)?,
                    dag_id,
                    run_id,
                    status: RunStatus::parse(&status).ok()?.as_str(),
                })
            })
            .collect::<Option<BTreeSet<Told>>>()?;
        Some(Self { high, told })
    }
}

/// An instant as the cursor and Airflow's query parameters take it:
/// RFC 3339 in UTC with microseconds, `Z`.
fn stamp(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_stamp(raw: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

fn overlap() -> TimeDelta {
    TimeDelta::from_std(OVERLAP).unwrap_or(TimeDelta::MAX)
}

/// The latest instant Airflow wrote on the run, `run_after` aside (a run
/// can be made to run after a future instant): Airflow's clock had
/// reached it.
fn observed(run: &DagRun) -> Option<Timestamp> {
    [
        run.queued_at,
        run.start_date,
        run.end_date,
        run.last_scheduling_decision,
    ]
    .into_iter()
    .flatten()
    .max()
}

/// When the run's current status began: Airflow sets `queued_at` when a
/// run is queued, `start_date` when it starts and `end_date` when it
/// finishes, in the transaction that changes the state. A run without it
/// falls back to the latest instant on it.
fn moved_at(run: &DagRun, status: RunStatus) -> Timestamp {
    let began = match status {
        RunStatus::Queued => run.queued_at,
        RunStatus::Running => run.start_date,
        RunStatus::Success | RunStatus::Failed => run.end_date,
    };
    began.or_else(|| observed(run)).unwrap_or(run.run_after)
}

impl AirflowChanges {
    /// The source over `backend`'s Airflow, polling every `poll_interval`
    /// (`MAESTRO_EVENTS_POLL_MS`, default [`DEFAULT_POLL_INTERVAL`]).
    pub fn new(backend: Arc<AirflowBackend>, poll_interval: Duration) -> Self {
        Self {
            backend,
            interval: poll_interval,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// One poll from `state` (`None`: from now, telling nothing).
    async fn poll(&self, state: Option<State>) -> Result<(Vec<RunChange>, State), BackendError> {
        let (mut state, telling) = match state {
            Some(state) => (state, true),
            None => (
                State {
                    high: self.newest().await?,
                    told: BTreeSet::new(),
                },
                false,
            ),
        };
        let low = state.high.map(|high| high - overlap());
        let runs = self.changed_since(low).await?;
        self.learn_owners(&runs).await?;

        let mut changes = Vec::new();
        let mut high = state.high;
        for run in runs {
            high = high.max(observed(&run));
            let Some(status) = run_status(&run.state) else {
                tracing::debug!(dag_id = %run.dag_id, state = %run.state, "a DAG run in a state Maestro does not map");
                continue;
            };
            let Some((pipeline, customer)) = self.owner_of(&run.dag_id) else {
                continue;
            };
            let moved_at = moved_at(&run, status);
            // A run whose status began before the window was updated for
            // another reason (a note, the scheduler's bookkeeping).
            if low.is_some_and(|low| moved_at < low) {
                continue;
            }
            let told = Told {
                moved_at,
                dag_id: run.dag_id.clone(),
                run_id: run.dag_run_id.clone(),
                status: status.as_str(),
            };
            if !state.told.insert(told) || !telling {
                continue;
            }
            match run.into_run(pipeline) {
                Ok(run) => changes.push((moved_at, RunChange::new(customer, run))),
                Err(err) => {
                    tracing::warn!(error = %err, "a DAG run Maestro cannot read is left out of the feed")
                }
            }
        }
        state.high = high;
        if let Some(high) = high {
            let low = high - overlap();
            state.told.retain(|told| told.moved_at >= low);
        }
        if state.told.len() > MAX_TOLD {
            tracing::warn!(
                told = state.told.len(),
                "more run changes within the overlap than the cursor keeps; forgetting the oldest"
            );
            while state.told.len() > MAX_TOLD {
                state.told.pop_first();
            }
        }
        changes.sort_by_key(|(moved_at, _)| *moved_at);
        Ok((
            changes.into_iter().map(|(_, change)| change).collect(),
            state,
        ))
    }

    /// The latest instant on the most recently updated run: where a source
    /// without a cursor starts. `None` when Airflow has no run.
    async fn newest(&self) -> Result<Option<Timestamp>, BackendError> {
        let call = Call::new(Method::GET, "/api/v2/dags/~/dagRuns".to_owned(), None)
            .query("order_by", "-updated_at")
            .query("limit", 1);
        let answer = self.backend.http.send(&call).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.unexpected());
        }
        let page: DagRunPage = answer.json()?;
        Ok(page.dag_runs.first().and_then(observed))
    }

    /// Every run of every DAG updated at or after `low` (every run, without
    /// it), oldest update first, following Airflow's keyset pages up to
    /// [`MAX_PAGES`].
    async fn changed_since(&self, low: Option<Timestamp>) -> Result<Vec<DagRun>, BackendError> {
        let mut runs = Vec::new();
        let mut cursor = String::new();
        for _ in 0..MAX_PAGES {
            let mut call = Call::new(Method::GET, "/api/v2/dags/~/dagRuns".to_owned(), None)
                .query("order_by", "updated_at")
                .query("limit", PAGE_LIMIT)
                .query("cursor", &cursor);
            if let Some(low) = &low {
                call = call.query("updated_at_gte", stamp(low));
            }
            let answer = self.backend.http.send(&call).await?;
            if answer.status != StatusCode::OK {
                return Err(answer.unexpected());
            }
            let page: DagRunPage = answer.json()?;
            let received = page.dag_runs.len();
            runs.extend(page.dag_runs);
            match page.next_cursor {
                Some(next) if received > 0 && !next.is_empty() => cursor = next,
                _ => return Ok(runs),
            }
        }
        tracing::warn!(
            pages = MAX_PAGES,
            runs = runs.len(),
            "more changed DAG runs than one poll reads; the next poll goes on"
        );
        Ok(runs)
    }

    /// The pipeline and customer of the DAG, as last read.
    fn owner_of(&self, dag_id: &str) -> Option<(PipelineId, CustomerId)> {
        let owners = self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        owners.get(dag_id)?.pipeline.clone()
    }

    /// Reads the owner of each DAG of `runs` that the source does not know,
    /// or read longer than [`DAG_REFRESH`] ago.
    async fn learn_owners(&self, runs: &[DagRun]) -> Result<(), BackendError> {
        let now = self.backend.now();
        let wanted: BTreeSet<String> = {
            let owners = self
                .owners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            runs.iter()
                .map(|run| &run.dag_id)
                .filter(|dag_id| {
                    owners
                        .get(dag_id.as_str())
                        .is_none_or(|owner| !younger_than(owner.read_at, now, DAG_REFRESH))
                })
                .cloned()
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let mut read: HashMap<String, Option<(PipelineId, CustomerId)>> = HashMap::new();
        if wanted.len() <= FEW_DAGS {
            for dag_id in &wanted {
                read.insert(dag_id.clone(), self.dag(dag_id).await?);
            }
        } else {
            for dag in self.every_dag().await? {
                read.insert(dag.dag_id.clone(), dag.pipeline(&self.backend.prefix));
            }
        }
        let mut owners = self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for dag_id in wanted {
            let pipeline = read.remove(&dag_id).flatten();
            owners.insert(
                dag_id,
                Owner {
                    pipeline,
                    read_at: now,
                },
            );
        }
        for (dag_id, pipeline) in read {
            owners.insert(
                dag_id,
                Owner {
                    pipeline,
                    read_at: now,
                },
            );
        }
        Ok(())
    }

    /// One DAG's pipeline and customer; `None` when it is visible to no one
    /// or gone.
    async fn dag(&self, dag_id: &str) -> Result<Option<(PipelineId, CustomerId)>, BackendError> {
        let call = Call::new(
            Method::GET,
            format!("/api/v2/dags/{}", segment(dag_id)),
            None,
        );
        let answer = self.backend.http.send(&call).await?;
        Ok(answer
            .found::<Dag>()?
            .and_then(|dag| dag.pipeline(&self.backend.prefix)))
    }

    /// Every DAG Airflow has (stale ones aside), page after page.
    async fn every_dag(&self) -> Result<Vec<Dag>, BackendError> {
        let mut dags: Vec<Dag> = Vec::new();
        loop {
            let call = Call::new(Method::GET, "/api/v2/dags".to_owned(), None)
                .query("order_by", "dag_id")
                .query("limit", PAGE_LIMIT)
                .query("offset", dags.len());
            let answer = self.backend.http.send(&call).await?;
            if answer.status != StatusCode::OK {
                return Err(answer.unexpected());
            }
            let page: DagPage = answer.json()?;
            let received = page.dags.len();
            dags.extend(page.dags);
            if received == 0 || dags.len() as u64 >= page.total_entries {
                return Ok(dags);
            }
        }
    }
}

#[async_trait]
impl RunChangeSource for AirflowChanges {
    /// Waits the poll interval, then asks Airflow once (see the module's
    /// documentation). A cursor that is not this source's (another
    /// backend's, say) counts as none: the source starts from now.
    async fn changes(
        &self,
        cursor: Option<SourceCursor>,
    ) -> Result<(Vec<RunChange>, SourceCursor), BackendError> {
        tokio::time::sleep(self.interval).await;
        let state = cursor.and_then(|cursor| {
            let state = State::decode(&cursor);
            if state.is_none() {
                tracing::warn!("the feed's cursor is not an Airflow cursor; starting from now");
            }
            state
        });
        let (changes, state) = self
            .backend
            .within("poll run changes", self.poll(state))
            .await?;
        Ok((changes, state.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> Timestamp {
        parse_stamp(raw).unwrap()
    }

    #[test]
    fn a_cursor_reads_back_as_it_was_written() {
        let state = State {
            high: Some(at("2026-11-29T09:00:00.123456Z")),
            told: BTreeSet::from([Told {
                moved_at: at("2026-11-29T08:59:59.5Z"),
                dag_id: "d".to_owned(),
                run_id: "manual__2026-11-29T08:59:58.000000+00:00".to_owned(),
                status: RunStatus::Success.as_str(),
            }]),
        };
        assert_eq!(State::decode(&state.encode()), Some(state));
        let empty = State::default();
        assert_eq!(State::decode(&empty.encode()), Some(empty));
    }

    #[test]
    fn another_sources_cursor_is_no_cursor() {
        for text in [
            "",
            "42",
            r#"{"v":2,"high":null,"told":[]}"#,
            "1733051234567-0",
        ] {
            assert_eq!(State::decode(&SourceCursor::new(text)), None, "{text}");
        }
        let bad_status = r#"{"v":1,"high":null,"told":[["2026-11-29T09:00:00Z","d","r","DONE"]]}"#;
        assert_eq!(State::decode(&SourceCursor::new(bad_status)), None);
    }

    fn run(state: &str) -> DagRun {
        serde_json::from_value(serde_json::json!({
            "dag_run_id": "r",
            "dag_id": "d",
            "state": state,
            "run_after": "2026-11-29T09:00:00Z",
            "queued_at": "2026-11-29T09:00:01Z",
            "start_date": "2026-11-29T09:00:02Z",
            "end_date": if state == "success" { serde_json::json!("2026-11-29T09:00:03Z") } else { serde_json::Value::Null },
            "last_scheduling_decision": "2026-11-29T09:00:04Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_status_began_at_its_own_instant_and_the_run_was_seen_at_its_latest() {
        assert_eq!(
            moved_at(&run("queued"), RunStatus::Queued),
            at("2026-11-29T09:00:01Z")
        );
        assert_eq!(
            moved_at(&run("running"), RunStatus::Running),
            at("2026-11-29T09:00:02Z")
        );
        assert_eq!(
            moved_at(&run("success"), RunStatus::Success),
            at("2026-11-29T09:00:03Z")
        );
        assert_eq!(observed(&run("running")), Some(at("2026-11-29T09:00:04Z")));
        // Without the instant of its status, the latest one on the run.
        assert_eq!(
            moved_at(&run("running"), RunStatus::Success),
            at("2026-11-29T09:00:04Z")
        );
    }
}
