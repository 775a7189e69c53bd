//! A pipeline's journal: the changes of its runs, each at the instant the
//! simulation made it, kept while a feed reads the pipeline
//! ([`crate::MemoryChanges`]).
//!
//! The simulation is lazy, so a change is written down when the state is
//! brought past its instant, which may be later than the instant itself;
//! the journal keeps the changes sorted by instant (then run, then stage
//! of the run's life), so that a feed reads them in the order they
//! happened. The feed *closes* the journal up to the instant it has read
//! it to: every change recorded afterwards has a later instant (the state
//! sees to it), so what the feed told of an instant never grows.

use std::collections::VecDeque;

use domain::{Run, RunStatus, Timestamp};

/// One change of one run: the run as the change left it, and when.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    /// When it happened.
    pub(crate) at: Timestamp,
    /// The run right after it.
    pub(crate) run: Run,
}

impl Change {
    /// Where the change stands in its run's life: appearing queued (0),
    /// starting (1), finishing (2). A run has at most one change of each.
    pub(crate) fn stage(&self) -> u8 {
        match self.run.status {
            RunStatus::Queued => 0,
            RunStatus::Running => 1,
            RunStatus::Success | RunStatus::Failed => 2,
        }
    }

    /// Whether it sorts before `other` of the same pipeline: by instant,
    /// then run (run ids increase with creation), then stage.
    fn precedes(&self, other: &Self) -> bool {
        (self.at, &self.run.id, self.stage()) < (other.at, &other.run.id, other.stage())
    }
}

/// The changes of one pipeline's runs, sorted, bounded.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    changes: VecDeque<Change>,
    /// Every change recorded from now on is later than this instant.
    closed: Timestamp,
}

impl Journal {
    /// The most changes one pipeline's journal keeps: beyond, the oldest
    /// are forgotten, and a feed that had not read them yet never will.
    /// A feed reads within a millisecond of every change, so only a reader
    /// that stopped reading for a long while falls this far behind.
    pub(crate) const LIMIT: usize = 100_000;

    /// A journal with nothing in it, closed up to `closed`.
    pub(crate) fn new(closed: Timestamp) -> Self {
        Self {
            changes: VecDeque::new(),
            closed,
        }
    }

    /// The instant up to which the journal is closed.
    pub(crate) fn closed(&self) -> Timestamp {
        self.closed
    }

    /// Closes the journal up to `at`: the caller makes sure every change
    /// recorded afterwards is later.
    pub(crate) fn close(&mut self, at: Timestamp) {
        self.closed = self.closed.max(at);
    }

    /// Records that `run` changed at `at` to what it is now.
    pub(crate) fn record(&mut self, at: Timestamp, run: &Run) {
        debug_assert!(at > self.closed, "a change recorded in a closed instant");
        let change = Change {
            at,
            run: run.clone(),
        };
        // Changes arrive nearly in order (a new run's instant may be up to
        // a microsecond before the latest change): the place is at or near
        // the back.
        let place = self
            .changes
            .iter()
            .rposition(|kept| kept.precedes(&change))
            .map_or(0, |before| before + 1);
        self.changes.insert(place, change);
        if self.changes.len() > Self::LIMIT {
            self.changes.pop_front();
        }
    }

    /// Records that `run`, being triggered, changed again at `at`, the
    /// instant it appeared: its appearance is told once, with the status
    /// it had by the end of that instant (a run that started at once
    /// appears `RUNNING`; with a zero run length, `SUCCESS`).
    pub(crate) fn amend_appearance(&mut self, at: Timestamp, run: &Run) {
        if let Some(index) = self
            .changes
            .iter()
            .rposition(|kept| kept.at == at && kept.run.id == run.id)
        {
            self.changes.remove(index);
        }
        self.record(at, run);
    }

    /// Forgets the changes before `at`. An emptied journal gives its
    /// memory back: most pipelines change seldom, and each would otherwise
    /// keep room for the changes it once had.
    pub(crate) fn forget_before(&mut self, at: Timestamp) {
        let before = self.changes.partition_point(|change| change.at < at);
        if before == self.changes.len() {
            self.changes = VecDeque::new();
        } else {
            self.changes.drain(..before);
        }
    }

    /// Whether it holds no change.
    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Adds to `out` the changes from `from` to `to`, both included, in
    /// order.
    pub(crate) fn copy(&self, from: Timestamp, to: Timestamp, out: &mut Vec<Change>) {
        let start = self.changes.partition_point(|change| change.at < from);
        out.extend(
            self.changes
                .range(start..)
                .take_while(|change| change.at <= to)
                .cloned(),
        );
    }

    /// The instant of the first change after `at`, if one is recorded.
    pub(crate) fn next_after(&self, at: Timestamp) -> Option<Timestamp> {
        let index = self.changes.partition_point(|change| change.at <= at);
        self.changes.get(index).map(|change| change.at)
    }

    /// How many changes it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }
}
