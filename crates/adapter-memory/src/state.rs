//! One pipeline's state and its run simulation: a lazy, exact queue that is
//! brought up to date on every access instead of by timers.
//!
//! Runs start in the order they were created, one at a time, so the runs,
//! kept in creation order, always read
//! `[finished..., at most one RUNNING, QUEUED or FAILED...]`: a finished
//! prefix (`SUCCESS` and `FAILED` runs), the running run, then the runs
//! waiting their turn, among which stand the queued runs that were cancelled
//! (`FAILED`, and never to start). Bringing the state up to date to an
//! instant ([`PipelineState::advance`]) walks the end of the prefix forward:
//! the running run ends `run_duration` after it started, cancelled runs are
//! stepped over, and the next queued run starts at that very instant (or
//! later, when it was created later or the pipeline was paused then). Every
//! instant is worked out, never sampled, so the result does not depend on
//! when, or how often, the state is looked at.
//!
//! Since only cancels fail runs, and cancelled queued runs sit among the
//! waiting ones, no status holds one contiguous range of the runs any more.
//! Each kept run has a number, the number of the first kept run plus its
//! index, so numbers increase by one along the runs, and the numbers of the
//! `FAILED` runs are kept sorted beside them. Then every count is rank
//! arithmetic: the `SUCCESS` runs are the prefix less its failed runs, the
//! `QUEUED` runs the waiting ones less theirs; a page of either is found by
//! binary search and read by skipping each stretch of failed runs at once.
//! See `docs/decisions/0002-memory-backend-simulation.md`.
//!
//! While a feed reads the pipeline, every change of a run (its appearance,
//! start, end or cancel) is also written down at its instant in a
//! [`Journal`], for the feed to tell ([`PipelineState::feed`]).

mod journal;

use std::collections::VecDeque;
use std::ops::Range;

use chrono::{DateTime, TimeDelta, Utc};
use domain::{
    BackendError, CancelRunError, ExecuteError, ManualRunClock, Pipeline, PipelineStatus, Run,
    RunConf, RunId, RunPage, RunQuery, RunStatus, SetPausedError, Timestamp,
};

pub(crate) use journal::Change;
use journal::Journal;

/// Up to how many kept runs the runs' room grows one run at a time.
const EXACT_GROWTH: usize = 16;

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
#[derive(Debug, Clone)]
pub(crate) struct PipelineState {
    pipeline: Pipeline,
    /// Every kept run, oldest first; see the module documentation for the
    /// order of their statuses.
    runs: VecDeque<Run>,
    /// How many runs at the front of `runs` have finished: the index of the
    /// running run, or of the first queued one when none runs.
    settled: usize,
    /// The number of `runs[0]`; `runs[i]` is number `first + i`.
    first: u64,
    /// The numbers of the kept `FAILED` runs, in increasing order.
    failed: VecDeque<u64>,
    /// The earliest instant a queued run may start: when the last run
    /// finished (or was cancelled) or the pipeline was last unpaused,
    /// whichever is later.
    free_since: Timestamp,
    run_clock: ManualRunClock,
    /// The latest instant the state was brought to. The run clock may hand
    /// out an instant a few microseconds past the caller's `now` (for
    /// triggers within one microsecond); later calls take it as their
    /// `now` when theirs is earlier, so the pipeline's time never goes back.
    latest: Timestamp,
    limits: Limits,
    /// The changes of runs, while a feed reads the pipeline; `None`
    /// otherwise, when nothing is written down.
    journal: Option<Journal>,
    /// The run a trigger is making, while it does: its changes at the
    /// instant it appears are told as its appearance.
    appearing: Option<RunId>,
}

/// A run as it is now, and when the simulation will next change it by
/// itself (nothing else but a trigger, pause, unpause or cancel could).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Watched {
    /// The run now.
    pub(crate) run: Run,
    /// When it will next change by itself: the end of a running run, the
    /// start of a queued one, or the instant a finished one is forgotten;
    /// `None` when it will not (a paused pipeline starts nothing).
    pub(crate) next_change: Option<Timestamp>,
}

impl PipelineState {
    /// A pipeline without runs.
    pub(crate) fn new(pipeline: Pipeline, limits: Limits) -> Self {
        Self {
            pipeline,
            runs: VecDeque::new(),
            settled: 0,
            first: 0,
            failed: VecDeque::new(),
            free_since: DateTime::<Utc>::MIN_UTC,
            run_clock: ManualRunClock::default(),
            latest: DateTime::<Utc>::MIN_UTC,
            limits,
            journal: None,
            appearing: None,
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

    /// Triggers a run at `now`, with the parameters `conf`.
    ///
    /// The run is `RUNNING` when nothing else was active and `QUEUED`
    /// otherwise; with a zero run duration it comes back already `SUCCESS`,
    /// since that is what it is from the instant it was created.
    ///
    /// # Errors
    /// [`ExecuteError::Paused`] when the pipeline is paused;
    /// [`ExecuteError::QueueFull`] when the run would have to wait and
    /// `queue_limit` runs already do. Nothing is created then.
    pub(crate) fn trigger(&mut self, conf: &RunConf, now: Timestamp) -> Result<Run, ExecuteError> {
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
        // A feed has told everything up to the instant it closed the
        // journal at: the run is made after it, even when `now` is within
        // the same microsecond (run instants are whole microseconds).
        let made_at = match &self.journal {
            Some(journal) => now.max(after(journal.closed(), TimeDelta::microseconds(1))),
            None => now,
        };
        // The state is brought to the run's instant, which may be a few
        // microseconds past `now`, so that its status is true at creation.
        let (created_at, id) = self.run_clock.next(made_at);
        let now = self.tick(created_at);
        let mut run = Run::new(id, self.pipeline.id.clone(), RunStatus::Queued, created_at);
        run.conf = conf.clone();
        if let Some(journal) = self.journal.as_mut() {
            journal.record(created_at, &run);
            self.appearing = Some(run.id.clone());
        }
        if self.runs.len() == self.runs.capacity() && self.runs.len() < EXACT_GROWTH {
            // Most pipelines keep a few runs: room for exactly one more,
            // not for twice as many (at least four), which with a hundred
            // thousand pipelines is tens of megabytes of empty room.
            self.runs.reserve_exact(1);
        }
        self.runs.push_back(run);
        self.advance(now);
        self.appearing = None;
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

    /// Cancels a queued or running run at `now`: it ends `FAILED` then,
    /// with the trace [`Run::CANCELLED_TRACE`]. A cancelled queued run never
    /// starts; after a cancelled running run the next queued one starts at
    /// once, unless the pipeline is paused. Answers the run as it is after
    /// the cancel.
    ///
    /// # Errors
    /// [`CancelRunError::RunNotFound`] when no such run is kept;
    /// [`CancelRunError::AlreadyFinished`] when it had finished (nothing
    /// changes then).
    pub(crate) fn cancel(&mut self, run_id: &RunId, now: Timestamp) -> Result<Run, CancelRunError> {
        let now = self.tick(now);
        self.settle(now);
        let index = self
            .position(run_id)
            .ok_or_else(|| CancelRunError::run_not_found(&self.pipeline.id, run_id))?;
        let number = self.number(index);
        let Some(run) = self.runs.get_mut(index) else {
            return Err(CancelRunError::run_not_found(&self.pipeline.id, run_id));
        };
        let was_running = match run.status {
            RunStatus::Queued => false,
            RunStatus::Running => true,
            status @ (RunStatus::Success | RunStatus::Failed) => {
                return Err(CancelRunError::AlreadyFinished {
                    pipeline_id: self.pipeline.id.clone(),
                    run_id: run_id.clone(),
                    status,
                });
            }
        };
        run.status = RunStatus::Failed;
        run.updated_at = now;
        run.trace = Some(Run::CANCELLED_TRACE.to_owned());
        let cancelled = run.clone();
        if let Some(journal) = self.journal.as_mut() {
            journal.record(now, &cancelled);
        }
        // Usually the newest failed run, or one of the newest: the sorted
        // insert moves only the failed runs queued after it.
        let at = self.failed.partition_point(|failed| *failed < number);
        self.failed.insert(at, number);
        if was_running {
            self.free_since = self.free_since.max(now);
        }
        // Steps past the cancelled run when it ended the finished prefix,
        // and starts the next queued one.
        self.settle(now);
        Ok(cancelled)
    }

    /// One page of the runs at `now`, newest first.
    pub(crate) fn list_runs(&mut self, query: &RunQuery, now: Timestamp) -> RunPage {
        let now = self.tick(now);
        self.settle(now);
        let offset = usize::try_from(query.offset()).unwrap_or(usize::MAX);
        let limit = usize::try_from(query.limit()).unwrap_or(usize::MAX);
        let waiting = self.waiting_start();
        let (runs, total) = match query.status() {
            None => self.page_of_range(0..self.runs.len(), offset, limit),
            Some(RunStatus::Running) => self.page_of_range(self.settled..waiting, offset, limit),
            // The finished prefix holds every succeeded run, and the waiting
            // runs every queued one, each among failed runs.
            Some(RunStatus::Success) => self.page_not_failed(0..self.settled, offset, limit),
            Some(RunStatus::Queued) => {
                self.page_not_failed(waiting..self.runs.len(), offset, limit)
            }
            Some(RunStatus::Failed) => self.page_of_failed(offset, limit),
        };
        RunPage::new(runs, u64::try_from(total).unwrap_or(u64::MAX))
    }

    /// The run with this id at `now`, if it is kept.
    pub(crate) fn get_run(&mut self, run_id: &RunId, now: Timestamp) -> Option<Run> {
        let now = self.tick(now);
        self.settle(now);
        let index = self.position(run_id)?;
        self.runs.get(index).cloned()
    }

    /// The run with this id at `now`, if it is kept, and when it will next
    /// change by itself.
    pub(crate) fn watch(&mut self, run_id: &RunId, now: Timestamp) -> Option<Watched> {
        let now = self.tick(now);
        self.settle(now);
        let index = self.position(run_id)?;
        let run = self.runs.get(index)?.clone();
        Some(Watched {
            run,
            next_change: self.next_change(index),
        })
    }

    /// For a feed: writes changes down from now on (if it did not
    /// already), plays the simulation to `now`, forgets the changes before
    /// `keep_from`, adds to `out` those from `from` to `now` (both
    /// included), in order, and closes the instants up to `now`: whatever
    /// happens to the pipeline from here on is recorded at a later instant
    /// (an operation in the very same nanosecond is dated the next one), so
    /// that what was told of an instant never grows. Answers the first
    /// instant after `now` at which the pipeline will change by itself, as
    /// things stand: a change already written down for it (a new run's
    /// instant may be a microsecond ahead), or the end of the running run.
    pub(crate) fn feed(
        &mut self,
        now: Timestamp,
        from: Timestamp,
        keep_from: Option<Timestamp>,
        out: &mut Vec<Change>,
    ) -> Option<Timestamp> {
        // Turned on before the state is brought to `now`, so that the
        // changes made up to `now` are there to count, not to tell: a feed
        // starting now tells none of them.
        self.journal
            .get_or_insert_with(|| Journal::new(DateTime::<Utc>::MIN_UTC));
        let latest = self.tick(now);
        self.settle(latest);
        let journal = self.journal.as_mut()?;
        if let Some(keep_from) = keep_from {
            journal.forget_before(keep_from);
        }
        journal.copy(from, now, out);
        journal.close(now);
        let ahead = journal.next_after(now);
        self.latest = self.latest.max(after(now, TimeDelta::nanoseconds(1)));
        let end = self.nth_end(0);
        match (ahead, end) {
            (Some(ahead), Some(end)) => Some(ahead.min(end)),
            (ahead, end) => ahead.or(end),
        }
    }

    /// For an operation, while a feed reads the backend: writes changes
    /// down from now on (if it did not already), and closes the instants
    /// up to `closed`, the latest instant a feed read the pipelines at
    /// (`None` before the first read), as that read would have, had it
    /// read this pipeline: the operation is dated after it.
    pub(crate) fn catch_up(&mut self, closed: Option<Timestamp>) {
        let journal = self
            .journal
            .get_or_insert_with(|| Journal::new(DateTime::<Utc>::MIN_UTC));
        if let Some(closed) = closed {
            journal.close(closed);
            self.latest = self.latest.max(after(closed, TimeDelta::nanoseconds(1)));
        }
    }

    /// Whether changes are written down that no feed may have read past
    /// yet.
    pub(crate) fn holds_changes(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|journal| !journal.is_empty())
    }

    /// Stops writing changes down, and forgets those written: no feed
    /// reads the pipeline any more.
    pub(crate) fn stop_journal(&mut self) {
        self.journal = None;
    }

    /// The latest instant the state was brought to, or an operation dated.
    pub(crate) fn latest(&self) -> Timestamp {
        self.latest
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
    /// its time is up, steps over cancelled runs, starts the next queued one
    /// at the instant the slot became free, and so on. Idempotent, and a
    /// `now` earlier than one already reached changes nothing.
    fn advance(&mut self, now: Timestamp) {
        let duration = self.limits.run_duration;
        while let Some(run) = self.runs.get_mut(self.settled) {
            match run.status {
                RunStatus::Running => {
                    let end =
                        duration.and_then(|duration| run.updated_at.checked_add_signed(duration));
                    let Some(end) = end.filter(|end| *end <= now) else {
                        break;
                    };
                    run.status = RunStatus::Success;
                    run.updated_at = end;
                    record(&mut self.journal, self.appearing.as_ref(), end, run);
                    self.settled += 1;
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
                    let started = run.updated_at;
                    record(&mut self.journal, self.appearing.as_ref(), started, run);
                }
                // A run cancelled while it waited, or the running run just
                // cancelled: finished, so part of the prefix.
                RunStatus::Success | RunStatus::Failed => self.settled += 1,
            }
        }
    }

    /// Drops the oldest finished runs beyond the history limit. Unfinished
    /// runs are never dropped.
    fn evict(&mut self) {
        while self.finished() > self.limits.history_limit {
            if self.settled > 0 {
                // The oldest run has finished: it is the oldest finished one.
                self.runs.pop_front();
                if self.failed.front() == Some(&self.first) {
                    self.failed.pop_front();
                }
                self.first += 1;
                self.settled -= 1;
            } else {
                // No finished prefix: the oldest finished run is the oldest
                // cancelled queued one, behind unfinished runs only. The runs
                // after it keep their numbers (one place down, with `first`
                // one up); those before it, unfinished and so never in
                // `failed`, take the next number: numbers stay one apart.
                let Some(index) = self.failed.front().map(|number| self.index_of(*number)) else {
                    break;
                };
                if self.runs.remove(index).is_none() {
                    break;
                }
                self.failed.pop_front();
                self.first += 1;
            }
        }
    }

    /// Where the run with this id stands in `runs`.
    fn position(&self, run_id: &RunId) -> Option<usize> {
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
            .map(|_| index)
    }

    /// The running run, if any.
    fn active(&self) -> Option<&Run> {
        self.runs
            .get(self.settled)
            .filter(|run| run.status == RunStatus::Running)
    }

    /// Where the runs waiting behind the running one (queued, or cancelled
    /// while queued) begin.
    fn waiting_start(&self) -> usize {
        self.settled + usize::from(self.active().is_some())
    }

    /// How many runs wait.
    fn queued(&self) -> usize {
        self.not_failed_in(self.waiting_start()..self.runs.len())
    }

    /// How many kept runs have finished: the prefix, and the cancelled
    /// queued runs behind it.
    fn finished(&self) -> usize {
        self.settled + (self.failed.len() - self.failed_before(self.settled))
    }

    /// The number of the run at `index`.
    fn number(&self, index: usize) -> u64 {
        self.first + u64::try_from(index).unwrap_or(u64::MAX)
    }

    /// The index of the run numbered `number`.
    fn index_of(&self, number: u64) -> usize {
        usize::try_from(number - self.first).unwrap_or(usize::MAX)
    }

    /// How many failed runs stand before `index`.
    fn failed_before(&self, index: usize) -> usize {
        let number = self.number(index);
        self.failed.partition_point(|failed| *failed < number)
    }

    /// How many runs in `range` have not failed.
    fn not_failed_in(&self, range: Range<usize>) -> usize {
        let failed = self.failed_before(range.end) - self.failed_before(range.start);
        range.len() - failed
    }

    /// A page of the runs in `range`, newest first, and how many it holds.
    fn page_of_range(&self, range: Range<usize>, offset: usize, limit: usize) -> (Vec<Run>, usize) {
        // Newest first: the page ends `offset` runs before the end of the
        // range and reaches back at most `limit` runs.
        let end = range.end.saturating_sub(offset).max(range.start);
        let start = end.saturating_sub(limit).max(range.start);
        let page = self.runs.range(start..end).rev().cloned().collect();
        (page, range.len())
    }

    /// A page of the failed runs, newest first, and how many there are.
    fn page_of_failed(&self, offset: usize, limit: usize) -> (Vec<Run>, usize) {
        let total = self.failed.len();
        let end = total.saturating_sub(offset);
        let start = end.saturating_sub(limit);
        let page = self
            .failed
            .range(start..end)
            .rev()
            .filter_map(|number| self.runs.get(self.index_of(*number)))
            .cloned()
            .collect();
        (page, total)
    }

    /// A page of the runs in `range` that have not failed, newest first,
    /// and how many there are: O(log² n) to find where the page begins,
    /// then O(log n) per run answered, however many failed runs stand
    /// among them.
    fn page_not_failed(
        &self,
        range: Range<usize>,
        offset: usize,
        limit: usize,
    ) -> (Vec<Run>, usize) {
        let total = self.not_failed_in(range.clone());
        let wanted = limit.min(total.saturating_sub(offset));
        let mut page = Vec::with_capacity(wanted);
        if wanted == 0 {
            return (page, total);
        }
        // The page's newest run is the last index with more than `offset`
        // runs that have not failed from it to the end of the range.
        let after_newest = first_false(range.start, range.end, |index| {
            self.not_failed_in(index..range.end) > offset
        });
        // Walk back from it; `failed[..below]` stand before `end`.
        let mut end = after_newest;
        let mut below = self.failed_before(end);
        while page.len() < wanted && end > range.start {
            let index = end - 1;
            let ends_a_stretch = below > 0
                && self
                    .failed
                    .get(below - 1)
                    .is_some_and(|number| *number == self.number(index));
            if ends_a_stretch {
                // `failed[j] - j` never decreases along `failed`, and is the
                // same for failed runs that stand next to each other: the
                // stretch ending here is where it equals this one's.
                let key = |j: usize| self.failed.get(j).map_or(u64::MAX, |n| n - j as u64);
                let stretch_key = key(below - 1);
                let stretch_start = first_false(0, below, |j| key(j) < stretch_key);
                end = self
                    .failed
                    .get(stretch_start)
                    .map_or(range.start, |number| self.index_of(*number));
                below = stretch_start;
            } else {
                if let Some(run) = self.runs.get(index) {
                    page.push(run.clone());
                }
                end = index;
            }
        }
        (page, total)
    }

    /// When the run at `index` will next change by itself, as things stand.
    fn next_change(&self, index: usize) -> Option<Timestamp> {
        let run = self.runs.get(index)?;
        match run.status {
            RunStatus::Running => self.nth_end(0),
            RunStatus::Queued => {
                if self.pipeline.status.is_paused() {
                    return None;
                }
                // It starts as the unfinished run just before it ends.
                let ahead = self.not_failed_in(self.settled..index);
                self.nth_end(ahead.checked_sub(1)?)
            }
            RunStatus::Success | RunStatus::Failed => {
                // The newest `history_limit` finished runs are kept: it is
                // forgotten when enough runs newer than it have finished.
                let as_new = if index < self.settled {
                    (self.settled - index) + (self.failed.len() - self.failed_before(self.settled))
                } else {
                    self.failed.len() - self.failed_before(index)
                };
                let more = self
                    .limits
                    .history_limit
                    .saturating_add(1)
                    .checked_sub(as_new)?;
                let unfinished_before = self.not_failed_in(self.settled.min(index)..index);
                self.nth_end(unfinished_before.saturating_add(more).checked_sub(1)?)
            }
        }
    }

    /// When the unfinished run `n` places behind the running one (0: the
    /// running one) will end by itself, as things stand: each starts as the
    /// one before ends, unless the pipeline is paused.
    fn nth_end(&self, n: usize) -> Option<Timestamp> {
        let running = self.active()?;
        let duration = self.limits.run_duration?;
        let end = running.updated_at.checked_add_signed(duration)?;
        if n == 0 {
            return Some(end);
        }
        if self.pipeline.status.is_paused() || n > self.queued() {
            return None;
        }
        end.checked_add_signed(duration.checked_mul(i32::try_from(n).ok()?)?)
    }
}

/// `by` after `at`, or `at` at the end of time.
fn after(at: Timestamp, by: TimeDelta) -> Timestamp {
    at.checked_add_signed(by).unwrap_or(at)
}

/// Writes down in `journal`, if it is kept, that `run` changed at `at`;
/// a change of the `appearing` run at its creation instant is part of its
/// appearance.
fn record(journal: &mut Option<Journal>, appearing: Option<&RunId>, at: Timestamp, run: &Run) {
    let Some(journal) = journal.as_mut() else {
        return;
    };
    if appearing == Some(&run.id) && at == run.created_at {
        journal.amend_appearance(at, run);
    } else {
        journal.record(at, run);
    }
}

/// The first index in `start..end` where `holds` is false, given that it
/// holds up to some index and not from there on; `end` when it always
/// holds.
fn first_false(start: usize, end: usize, holds: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (start, end);
    while low < high {
        let middle = low + (high - low) / 2;
        if holds(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
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
