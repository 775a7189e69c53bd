//! [`MemoryChanges`]: the memory backend's simulation as the feed's
//! [`RunChangeSource`], told at the instant each change happens.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use domain::{BackendError, RunChange, RunChangeSource, SourceCursor, Timestamp};
use tokio::time::Instant;

use crate::MemoryBackend;
use crate::state::Change;

/// Every change of every run of every pipeline of a [`MemoryBackend`], in
/// the order the simulation makes them: a run appearing, starting,
/// finishing, being cancelled.
///
/// **What is told.** A run's appearance is told once, with the status it
/// has at the instant it was made: `QUEUED` behind another run, `RUNNING`
/// when it started at once, and `SUCCESS` with a zero run length (it was
/// never `RUNNING` for any reader, and execute answered it `SUCCESS`).
/// Then each change of its status at its instant: `RUNNING` when it
/// starts, `SUCCESS` when it ends, `FAILED` when it is cancelled (a
/// cancelled queued run goes from `QUEUED` to `FAILED`). The last change of
/// every run is `SUCCESS` or `FAILED`.
///
/// **Order.** By instant; changes at one instant by pipeline id, then run
/// id, then the stage of the run's life (appearing, starting, finishing).
/// The time-driven changes (a run's end, the next one's start) have the
/// instants the simulation works out, not those at which someone looked.
///
/// **Cursor.** An instant and how many changes at that instant were told
/// (`<seconds>.<nanoseconds>-<count>`). Reading a pipeline closes its
/// instants up to the time read: anything done to it afterwards is
/// recorded later (an operation in the very same nanosecond is dated the
/// next one, and a run made in the same microsecond the next microsecond),
/// so the changes at a told instant never grow and the count resumes
/// exactly. Without a cursor (or with one this source cannot read), it
/// starts from now and tells nothing of the past. A cursor from another
/// process (the backend restarted) tells what this process did after it;
/// one ahead of the clock tells nothing until the clock has passed it.
///
/// **Wake-ups.** No polling: a call waits on the backend's change signal,
/// which every trigger, pause, unpause and cancel bumps, and on a timer set
/// to the next instant the simulation changes a run by itself, across all
/// pipelines (worked out under each pipeline's lock, as the waiters of
/// runs do). It answers as soon as there is a change after the cursor, or
/// with none after [`MemoryChanges::DEFAULT_IDLE`]. A change made through
/// the backend is told at once; a time-driven one within tokio's timer
/// resolution (a millisecond).
///
/// **Memory.** While at least one `MemoryChanges` exists, each pipeline
/// writes its changes down, and forgets those before the earliest position
/// any of them last read from (or was made at, before its first read);
/// with none, nothing is written down. Each `MemoryChanges` is one reader:
/// a call resumes from any cursor at or after where this reader's last
/// call started (the cursor it was given, or the one it asked with, to
/// retry), and every reader from any cursor no reader has read past. A
/// pipeline keeps at most 100,000 changes: a reader further behind (one
/// that stopped reading for long) misses the oldest. Keep one
/// `MemoryChanges` for as long as the feed runs.
pub struct MemoryChanges {
    backend: MemoryBackend,
    reader: u64,
    batch_limit: usize,
    idle: Duration,
}

impl MemoryChanges {
    /// The most changes one call answers, by default.
    pub const DEFAULT_BATCH_LIMIT: usize = 1000;
    /// How long a call waits for a change before it answers none, by
    /// default: the default poll interval of the sources that must poll, so
    /// that the feed's pump sees one rhythm whatever the backend.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(2);

    /// A reader of `backend`'s changes (it shares the backend's runs and
    /// clock).
    pub fn new(backend: &MemoryBackend) -> Self {
        Self {
            reader: backend.add_reader(),
            backend: backend.clone(),
            batch_limit: Self::DEFAULT_BATCH_LIMIT,
            idle: Self::DEFAULT_IDLE,
        }
    }

    /// The same reader, answering at most `limit` changes a call (at least
    /// one).
    #[must_use]
    pub fn with_batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit.max(1);
        self
    }

    /// The same reader, answering after `idle` when nothing changes.
    #[must_use]
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How many calls of any reader of this backend wait for a change now:
    /// the readiness signal a test waits on before it makes one.
    pub fn waiting(&self) -> usize {
        self.backend.feeds_waiting()
    }

    /// Reads the pipelines that may have changed since this reader's last
    /// read (every pipeline, the first time), at the backend's time now (or
    /// the latest instant an operation was dated, when the clock is behind
    /// it).
    fn scan(&self, after: Option<Cursor>) -> Scan {
        let mut found = Vec::new();
        let (now, next) = self
            .backend
            .read(self.reader, after.map(|cursor| cursor.at), &mut found);
        found.sort_by(|(_, a), (_, b)| {
            (a.at, &a.run.pipeline_id, &a.run.id, a.stage()).cmp(&(
                b.at,
                &b.run.pipeline_id,
                &b.run.id,
                b.stage(),
            ))
        });
        let Some(after) = after else {
            // From now: what happened at this instant is the past too.
            let told = found.iter().filter(|(_, change)| change.at == now).count();
            return Scan {
                changes: Vec::new(),
                cursor: Cursor { at: now, told },
                next,
                now,
            };
        };
        let mut cursor = after;
        let mut skipped = 0;
        let mut changes = Vec::new();
        let mut complete = true;
        for (customer, Change { at, run }) in found {
            if at == after.at && skipped < after.told {
                skipped += 1;
                continue;
            }
            if changes.len() == self.batch_limit {
                complete = false;
                break;
            }
            cursor = if at == cursor.at {
                Cursor {
                    at,
                    told: cursor.told + 1,
                }
            } else {
                Cursor { at, told: 1 }
            };
            changes.push(RunChange::new(customer, run));
        }
        if complete && now > cursor.at {
            // Everything up to now is told, and nothing happened at `now`:
            // the feeds may forget what came before it.
            cursor = Cursor { at: now, told: 0 };
        }
        Scan {
            changes,
            cursor,
            next,
            now,
        }
    }
}

impl Drop for MemoryChanges {
    fn drop(&mut self) {
        self.backend.remove_reader(self.reader);
    }
}

impl fmt::Debug for MemoryChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryChanges")
            .field("reader", &self.reader)
            .field("batch_limit", &self.batch_limit)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RunChangeSource for MemoryChanges {
    async fn changes(
        &self,
        cursor: Option<SourceCursor>,
    ) -> Result<(Vec<RunChange>, SourceCursor), BackendError> {
        let idle_until = Instant::now() + self.idle;
        let mut after = cursor.and_then(|cursor| Cursor::parse(cursor.as_str()));
        loop {
            // Subscribed before the pipelines are read: a change made after
            // a pipeline was read bumps the signal after this point.
            let mut signal = self.backend.subscribe();
            let scan = self.scan(after);
            let first = after.is_none();
            after = Some(scan.cursor);
            if !scan.changes.is_empty() {
                return Ok((scan.changes, scan.cursor.to_source()));
            }
            if !first && Instant::now() >= idle_until {
                return Ok((Vec::new(), scan.cursor.to_source()));
            }
            let next = scan
                .next
                .map(|at| (at - scan.now).to_std().unwrap_or(Duration::ZERO));
            tokio::select! {
                // Never an error: the sender lives as long as the backend.
                _ = signal.changed() => {}
                () = sleep_for(next) => {}
                () = tokio::time::sleep_until(idle_until) => {}
            }
        }
    }
}

/// What one read of every pipeline found.
#[derive(Debug)]
struct Scan {
    /// The changes after the cursor, in order, at most a batch.
    changes: Vec<RunChange>,
    /// Where to read on from.
    cursor: Cursor,
    /// When a pipeline will next change by itself.
    next: Option<Timestamp>,
    /// The time the pipelines were read at.
    now: Timestamp,
}

/// A position in the changes: every change before `at`, and the first
/// `told` at `at` (in the source's order), were told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    at: Timestamp,
    told: usize,
}

impl Cursor {
    /// `<seconds>.<nanoseconds>-<count>`: exact to the nanosecond, and
    /// readable by eye.
    fn to_source(self) -> SourceCursor {
        SourceCursor::new(format!(
            "{}.{:09}-{}",
            self.at.timestamp(),
            self.at.timestamp_subsec_nanos(),
            self.told
        ))
    }

    /// The cursor [`Cursor::to_source`] wrote; `None` for any other text.
    fn parse(text: &str) -> Option<Self> {
        let (instant, told) = text.rsplit_once('-')?;
        let (seconds, nanos) = instant.split_once('.')?;
        if nanos.len() != 9 {
            return None;
        }
        let at = DateTime::from_timestamp(seconds.parse().ok()?, nanos.parse().ok()?)?;
        Some(Self {
            at,
            told: told.parse().ok()?,
        })
    }
}

/// Sleeps for `duration`, or for ever when there is none.
async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use chrono::Utc;

    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_to_the_nanosecond() {
        for at in [
            Utc.timestamp_opt(1_734_517_800, 123_456_789).unwrap(),
            Utc.timestamp_opt(1_734_517_800, 0).unwrap(),
            Utc.timestamp_opt(-5, 7).unwrap(),
        ] {
            let cursor = Cursor { at, told: 3 };
            assert_eq!(Cursor::parse(cursor.to_source().as_str()), Some(cursor));
        }
        assert_eq!(
            Cursor {
                at: Utc.timestamp_opt(1_734_517_800, 5).unwrap(),
                told: 0
            }
            .to_source()
            .as_str(),
            "1734517800.000000005-0"
        );
    }

    #[test]
    fn text_that_is_not_a_cursor_reads_as_none() {
        for text in [
            "",
            "1-2",
            "1.5-2",
            "x.000000000-1",
            "1.000000000-x",
            "1.000000000",
        ] {
            assert_eq!(Cursor::parse(text), None, "{text:?}");
        }
    }
}
