//! One pipeline's state and its run simulation: a lazy, exact queue that is
//! brought up to date on every access instead of by timers.
//!
//! Runs finish in the order they were created, so the runs, kept in
//! creation order, always read
//! `[finished..., at most one RUNNING, QUEUED...]`. Bringing the state up to
//! date to an instant ([`PipelineState::advance`]) walks that boundary
//! forward: the running run ends `run_duration` after it started, and the
//! next queued run starts at that very instant (or later, when it was
//! created later or the pipeline was paused then). Every instant is worked
//! out, never sampled, so the result does not depend on when, or how often,
//! the state is looked at.

use std::collections::VecDeque;
use std::ops::Range;

use chrono::{DateTime, TimeDelta, Utc};
use domain::{
    BackendError, ExecuteError, ManualRunClock, Pipeline, PipelineStatus, Run, RunId, RunPage,
    RunQuery, RunStatus, SetPausedError, Timestamp,
};

/// The bounds and timing every pipeline's simulation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How long a run stays `RUNNING`; `None` when it is too long to add to
    /// an instant, which means that runs never finish.
    pub(crate) run_duration: Option<TimeDelta>,
    /// The most runs that may wait `QUEUED` behind the running one.
    pub(crate) queue_limit: usize,
    /// The most finished runs that are kept.
    pub(crate) history_limit: usize,
}

/// A pipeline and its runs.
#[derive(Debug)]
pub(crate) struct PipelineState {
    pipeline: Pipeline,
    /// Every kept run, oldest first; see the module documentation for the
    /// order of their statuses.
    runs: VecDeque<Run>,
    /// How many runs at the front of `runs` have finished.
    finished: usize,
    /// The earliest instant a queued run may start: when the last run
    /// finished or the pipeline was last unpaused, whichever is later.
    free_since: Timestamp,
    run_clock: ManualRunClock,
    /// The latest instant the state was brought to. The run clock may hand
    /// out an instant a few microseconds past the caller's `now` (for
    /// triggers within one microsecond); later calls take it as their
    /// `now` when theirs is earlier, so the pipeline's time never goes back.
    latest: Timestamp,
    limits: Limits,
}

impl PipelineState {
    /// A pipeline without runs.
    pub(crate) fn new(pipeline: Pipeline, limits: Limits) -> Self {
        Self {
            pipeline,
            runs: VecDeque::new(),
            finished: 0,
            free_since: DateTime::<Utc>::MIN_UTC,
            run_clock: ManualRunClock::default(),
            latest: DateTime::<Utc>::MIN_UTC,
            limits,
        }
    }

    /// The pipeline itself. Its metadata does not depend on its runs, so
    /// reading it needs no [`Self::advance`].
    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The status of the newest run at `now`, if the pipeline ever ran.
    pub(crate) fn last_status(&mut self, now: Timestamp) -> Option<RunStatus> {
        let now = self.tick(now);
        self.settle(now);
        self.runs.back().map(|run| run.status)
    }

    /// Triggers a run at `now`.
    ///
    /// The run is `RUNNING` when nothing else was active and `QUEUED`
    /// otherwise; with a zero run duration it comes back already `SUCCESS`,
    /// since that is what it is from the instant it was created.
    ///
    /// # Errors
    /// [`ExecuteError::Paused`] when the pipeline is paused;
    /// [`ExecuteError::QueueFull`] when the run would have to wait and
    /// `queue_limit` runs already do. Nothing is created then.
    pub(crate) fn trigger(&mut self, now: Timestamp) -> Result<Run, ExecuteError> {
        let now = self.tick(now);
        self.advance(now);
        if self.pipeline.status.is_paused() {
            return Err(ExecuteError::Paused(self.pipeline.id.clone()));
        }
        // Only a run that would wait counts against the queue, so a limit of
        // 0 still lets an idle pipeline run.
        if self.active().is_some() && self.queued() >= self.limits.queue_limit {
            return Err(ExecuteError::QueueFull {
                pipeline_id: self.pipeline.id.clone(),
                limit: self.limits.queue_limit,
            });
        }
        // The state is brought to the run's instant, which may be a few
        // microseconds past `now`, so that its status is true at creation.
        let (created_at, id) = self.run_clock.next(now);
        let now = self.tick(created_at);
        self.runs.push_back(Run::new(
            id,
            self.pipeline.id.clone(),
            RunStatus::Queued,
            created_at,
        ));
        self.advance(now);
        // Read before evicting: with no history kept, a run that finished at
        // once is evicted straight away, yet it was created.
        let run = self.runs.back().cloned();
        self.evict();
        run.ok_or_else(|| {
            BackendError::upstream("a triggered run vanished from the memory backend").into()
        })
    }

    /// Pauses or unpauses the pipeline at `now`. Pausing lets the running
    /// run finish; queued runs wait until the pipeline is unpaused. A
    /// pipeline in `error` is not paused, and unpausing makes it `active`.
    ///
    /// # Errors
    /// [`SetPausedError::AlreadyPaused`] or [`SetPausedError::NotPaused`]
    /// when it already was in that state.
    pub(crate) fn set_paused(
        &mut self,
        paused: bool,
        now: Timestamp,
    ) -> Result<(), SetPausedError> {
        let now = self.tick(now);
        // Up to `now` the old state holds: runs that ended while it was
        // unpaused have let the next ones start.
        self.settle(now);
        if self.pipeline.status.is_paused() == paused {
            return Err(SetPausedError::unchanged(self.pipeline.id.clone(), paused));
        }
        self.pipeline.status = if paused {
            PipelineStatus::Paused
        } else {
            PipelineStatus::Active
        };
        self.pipeline.updated_at = self.pipeline.updated_at.max(now);
        if !paused {
            // Queued runs that waited out the pause start now, not at the
            // instant the slot freed up during the pause.
            self.free_since = self.free_since.max(now);
            self.settle(now);
        }
        Ok(())
    }

    /// One page of the runs at `now`, newest first.
    pub(crate) fn list_runs(&mut self, query: &RunQuery, now: Timestamp) -> RunPage {
        let now = self.tick(now);
        self.settle(now);
        let matching = match query.status() {
            Some(status) => self.range_of(status),
            None => 0..self.runs.len(),
        };
        let offset = usize::try_from(query.offset()).unwrap_or(usize::MAX);
        let limit = usize::try_from(query.limit()).unwrap_or(usize::MAX);
        // Newest first: the page ends `offset` runs before the end of the
        // matching range and reaches back at most `limit` runs.
        let end = matching.end.saturating_sub(offset).max(matching.start);
        let start = end.saturating_sub(limit).max(matching.start);
        RunPage::new(
            self.runs.range(start..end).rev().cloned().collect(),
            u64::try_from(matching.len()).unwrap_or(u64::MAX),
        )
    }

    /// The run with this id at `now`, if it is kept.
    pub(crate) fn get_run(&mut self, run_id: &RunId, now: Timestamp) -> Option<Run> {
        let now = self.tick(now);
        self.settle(now);
        // Run ids are made from their creation instants, which increase
        // along `runs`: find the instant, then check that the id is exactly
        // the one asked for (the same instant can be spelled otherwise).
        let created_at = parse_manual_run_id(run_id)?;
        let index = self
            .runs
            .binary_search_by_key(&created_at, |run| run.created_at)
            .ok()?;
        self.runs
            .get(index)
            .filter(|run| run.id == *run_id)
            .cloned()
    }

    /// The pipeline's own `now`: the caller's, or the latest instant already
    /// reached when that is later.
    fn tick(&mut self, now: Timestamp) -> Timestamp {
        self.latest = self.latest.max(now);
        self.latest
    }

    /// [`Self::advance`], then drops the finished runs beyond the history
    /// limit.
    fn settle(&mut self, now: Timestamp) {
        self.advance(now);
        self.evict();
    }

    /// Plays the simulation forward to `now`: finishes the running run if
    /// its time is up, starts the next queued one at the instant the slot
    /// became free, and so on. Idempotent, and a `now` earlier than one
    /// already reached changes nothing.
    fn advance(&mut self, now: Timestamp) {
        let duration = self.limits.run_duration;
        while let Some(run) = self.runs.get_mut(self.finished) {
            match run.status {
                RunStatus::Running => {
                    let end =
                        duration.and_then(|duration| run.updated_at.checked_add_signed(duration));
                    let Some(end) = end.filter(|end| *end <= now) else {
                        break;
                    };
                    run.status = RunStatus::Success;
                    run.updated_at = end;
                    self.finished += 1;
                    self.free_since = end;
                }
                RunStatus::Queued => {
                    // Airflow's behaviour: a paused pipeline starts nothing,
                    // and its queued runs wait for the unpause.
                    if self.pipeline.status.is_paused() {
                        break;
                    }
                    run.status = RunStatus::Running;
                    run.updated_at = self.free_since.max(run.created_at);
                }
                // Never reached: finished runs all stand before `finished`.
                // Counting one as finished keeps the loop going regardless.
                RunStatus::Success | RunStatus::Failed => self.finished += 1,
            }
        }
    }

    /// Drops the oldest finished runs beyond the history limit. Unfinished
    /// runs are never dropped.
    fn evict(&mut self) {
        while self.finished > self.limits.history_limit {
            self.runs.pop_front();
            self.finished -= 1;
        }
    }

    /// The running run, if any.
    fn active(&self) -> Option<&Run> {
        self.runs
            .get(self.finished)
            .filter(|run| run.status == RunStatus::Running)
    }

    /// How many runs wait.
    fn queued(&self) -> usize {
        self.runs.len() - self.finished - usize::from(self.active().is_some())
    }

    /// Where the runs with this status stand in `runs`: each status holds
    /// one contiguous range.
    fn range_of(&self, status: RunStatus) -> Range<usize> {
        let running_end = self.finished + usize::from(self.active().is_some());
        match status {
            // The simulation never fails a run: every finished run succeeded.
            RunStatus::Success => 0..self.finished,
            RunStatus::Failed => 0..0,
            RunStatus::Running => self.finished..running_end,
            RunStatus::Queued => running_end..self.runs.len(),
        }
    }
}

/// The creation instant a manual run id names, if it is one.
fn parse_manual_run_id(run_id: &RunId) -> Option<Timestamp> {
    let instant = run_id.as_str().strip_prefix("manual__")?;
    DateTime::parse_from_rfc3339(instant)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

#[cfg(test)]
mod tests;
