//! Finished runs' RUN objects, written once and kept, so that a page of
//! them is copied rather than written again (ADR 0018, second addendum).
//!
//! A page of runs is mostly finished runs, and clients read the same newest
//! page again and again. A finished run's text is kept with a copy of the
//! run it was written from, under a hash of what tells runs apart. It is
//! used only when every field that [`run_json::write`] reads is the same,
//! byte for byte, as the run being answered: so the answer is always what
//! writing the run would give, whatever the backend did to the run since
//! (an engine may clear a finished run and run it again), and a key that
//! two runs share only costs a write. Queued and running runs change, and
//! are written every time.

use std::{hash::BuildHasher as _, sync::Arc};

use domain::Run;

use crate::run_json;

/// The most text kept, weighed as [`Weigh`] does: some 19,000 runs of a
/// usual size (about 250 bytes of text each). The least used go first (S3-FIFO).
const CAPACITY_BYTES: u64 = 8 * 1024 * 1024;

/// What an entry holds besides its text: the copy of the run (whose id
/// and parameters are shared, not copied), the entry's box and the
/// cache's slot.
const ENTRY_BYTES: u64 = 192;

/// Finished runs' texts, by [`KeptRuns::key`].
pub(crate) struct KeptRuns {
    texts: quick_cache::sync::Cache<u64, Arc<Kept>, Weigh>,
    hasher: foldhash::fast::RandomState,
}

/// A run and its RUN object.
struct Kept {
    run: Run,
    json: Box<[u8]>,
}

/// An entry's weight: its text and what it holds besides.
#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<u64, Arc<Kept>> for Weigh {
    fn weight(&self, _: &u64, kept: &Arc<Kept>) -> u64 {
        let trace = kept.run.trace.as_ref().map_or(0, String::len);
        (kept.json.len() + trace) as u64 + ENTRY_BYTES
    }
}

impl KeptRuns {
    /// An empty store of at most [`CAPACITY_BYTES`].
    pub(crate) fn new() -> Self {
        let typical = CAPACITY_BYTES / (ENTRY_BYTES + 256);
        Self {
            texts: quick_cache::sync::Cache::with_weighter(
                usize::try_from(typical).unwrap_or(usize::MAX),
                CAPACITY_BYTES,
                Weigh,
            ),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// `runs` as a JSON array of RUN objects, each as [`run_json::write`]
    /// writes it.
    pub(crate) fn array(&self, runs: &[Run]) -> Vec<u8> {
        run_json::array_of(runs, run_json::size_guess, |out, run| {
            self.write(out, run);
        })
    }

    /// `run` as a RUN object, as [`run_json::write`] writes it.
    pub(crate) fn object(&self, run: &Run) -> Vec<u8> {
        let mut out = Vec::with_capacity(run_json::size_guess(run));
        self.write(&mut out, run);
        out
    }

    /// Appends `run` as a RUN object: the kept text of a finished run
    /// written alike, or the run written (and kept, if finished).
    fn write(&self, out: &mut Vec<u8>, run: &Run) {
        if !run.status.is_finished() {
            return run_json::write(out, run);
        }
        let key = self.key(run);
        if let Some(kept) = self.texts.get(&key)
            && written_alike(&kept.run, run)
        {
            out.extend_from_slice(&kept.json);
            return;
        }
        let start = out.len();
        run_json::write(out, run);
        let json = out[start..].into();
        self.texts.insert(
            key,
            Arc::new(Kept {
                run: run.clone(),
                json,
            }),
        );
    }

    /// Where `run`'s text is kept: a hash of its pipeline id's two ends,
    /// its instant and the length of its id, not of the two ids whole,
    /// which cost more to hash than the rest of a kept run's answer. Runs
    /// that share a key only take turns in the store: a kept text is used
    /// only for a run that writes alike.
    fn key(&self, run: &Run) -> u64 {
        let pipeline = run.pipeline_id.as_bytes();
        let (head, tail) = (pipeline.first_chunk(), pipeline.last_chunk());
        self.hasher.hash_one((
            head.copied().map(u64::from_ne_bytes),
            tail.copied().map(u64::from_ne_bytes),
            run.created_at.timestamp_micros(),
            run.id.as_str().len(),
        ))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.texts.len()
    }
}

impl std::fmt::Debug for KeptRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptRuns")
            .field("runs", &self.texts.len())
            .finish_non_exhaustive()
    }
}

/// Whether `run` writes as `kept` does: every field [`run_json::write`]
/// reads is the same, byte for byte. Not `Run`'s `==`, which holds two
/// parameters alike when their maps are, though their texts (which are
/// written) may differ in order.
fn written_alike(kept: &Run, run: &Run) -> bool {
    same_text(kept.id.as_str(), run.id.as_str())
        && kept.pipeline_id == run.pipeline_id
        && kept.status == run.status
        && kept.created_at == run.created_at
        && kept.updated_at == run.updated_at
        && kept.trace == run.trace
        && same_text(kept.conf.as_json(), run.conf.as_json())
}

/// Whether two texts are the same: most often one text shared by both
/// runs, known alike without reading it.
fn same_text(one: &str, other: &str) -> bool {
    std::ptr::eq(one, other) || one == other
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta, Utc};
    use domain::{PipelineId, RunConf, RunConfSeed, RunId, RunStatus, Timestamp};
    use proptest::prelude::*;
    use serde::de::DeserializeSeed as _;
    use serde_json::json;

    use super::*;

    const PIPELINE: &str = "0b6a3c5e-1f2d-4a7b-9c8d-7e6f5a4b3c2d";
    const OTHER_PIPELINE: &str = "7e6f5a4b-3c2d-4a7b-9c8d-0b6a3c5e1f2d";

    fn at(seconds: i64) -> Timestamp {
        DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap() + TimeDelta::seconds(seconds)
    }

    /// A conf read from a request's text, kept in the order it was sent.
    fn sent(text: &str) -> RunConf {
        RunConfSeed::default()
            .deserialize(&mut serde_json::Deserializer::from_str(text))
            .unwrap()
            .unwrap()
    }

    /// A run made at an instant of its own (its id's length in seconds),
    /// changed seven seconds later.
    fn run(pipeline: &str, id: &str, status: RunStatus) -> Run {
        let made = at(id.len().try_into().unwrap());
        let mut run = Run::new(
            RunId::parse(id).unwrap(),
            PipelineId::parse(pipeline).unwrap(),
            status,
            made,
        );
        run.updated_at = made + TimeDelta::seconds(7);
        run
    }

    #[test]
    fn a_page_is_written_as_run_json_writes_it_first_and_again() {
        let kept = KeptRuns::new();
        let mut failed = run(PIPELINE, "manual__1", RunStatus::Failed);
        failed.trace = Some("boom \"quoted\"\n".to_owned());
        failed.conf = RunConf::parse(json!({"day": "2026-12-03", "n": 1})).unwrap();
        let page = [
            run(PIPELINE, "manual__4444", RunStatus::Queued),
            run(PIPELINE, "manual__333", RunStatus::Running),
            run(PIPELINE, "manual__22", RunStatus::Success),
            failed,
        ];
        let written = run_json::array(&page);
        assert_eq!(kept.array(&page), written);
        assert_eq!(kept.len(), 2, "the two finished runs are kept");
        assert_eq!(kept.array(&page), written, "read from what was kept");
        assert_eq!(kept.len(), 2);
        for run in &page {
            assert_eq!(kept.object(run), run_json::object(run));
        }
    }

    #[test]
    fn a_run_that_changed_is_written_again() {
        let kept = KeptRuns::new();
        let first = run(PIPELINE, "manual__1", RunStatus::Success);
        kept.object(&first);
        // Cleared and run again by the engine, failing this time.
        let mut again = first.clone();
        again.status = RunStatus::Failed;
        again.updated_at = at(60);
        again.trace = Some("task failed".to_owned());
        assert_eq!(kept.object(&again), run_json::object(&again));
        assert_eq!(kept.object(&first), run_json::object(&first));
    }

    #[test]
    fn parameters_alike_but_written_apart_are_written_as_they_are() {
        let kept = KeptRuns::new();
        let mut one = run(PIPELINE, "manual__1", RunStatus::Success);
        one.conf = sent(r#"{"a": 1, "b": 2}"#);
        let mut other = one.clone();
        other.conf = sent(r#"{"b": 2, "a": 1}"#);
        assert_eq!(one, other, "the same run to Run's `==`");
        assert_ne!(one.conf.as_json(), other.conf.as_json());
        kept.object(&one);
        assert_eq!(kept.object(&other), run_json::object(&other));
    }

    #[test]
    fn runs_that_share_a_key_take_turns() {
        let kept = KeptRuns::new();
        let one = run(PIPELINE, "manual__1", RunStatus::Success);
        let other = run(PIPELINE, "manual__2", RunStatus::Failed);
        assert_eq!(kept.key(&one), kept.key(&other), "made alike for the test");
        for _ in 0..3 {
            assert_eq!(kept.object(&one), run_json::object(&one));
            assert_eq!(kept.object(&other), run_json::object(&other));
        }
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn the_same_run_id_of_two_pipelines_is_kept_for_each() {
        let kept = KeptRuns::new();
        let id = "scheduled__2026-12-03T00:00:00+00:00";
        let one = run(PIPELINE, id, RunStatus::Success);
        let other = run(OTHER_PIPELINE, id, RunStatus::Success);
        kept.object(&one);
        kept.object(&other);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept.object(&one), run_json::object(&one));
        assert_eq!(kept.object(&other), run_json::object(&other));
    }

    #[test]
    fn what_is_kept_stays_within_its_bound() {
        let kept = KeptRuns::new();
        let mut big = run(PIPELINE, "manual__0", RunStatus::Failed);
        big.trace = Some("x".repeat(16 * 1024));
        for n in 0..2_000 {
            big.id = RunId::parse(&format!("manual__{n}")).unwrap();
            assert_eq!(kept.object(&big), run_json::object(&big));
        }
        let weight = kept.texts.weight();
        assert!(weight <= CAPACITY_BYTES, "{weight} bytes kept");
        assert!(kept.len() < 2_000, "{} runs kept", kept.len());
    }

    fn any_status() -> impl Strategy<Value = RunStatus> {
        prop::sample::select(RunStatus::ALL.to_vec())
    }

    proptest! {
        /// Any run, answered after any other of the same ids was kept,
        /// writes as `run_json` writes it.
        #[test]
        fn kept_or_not_the_text_is_the_runs(
            id in "[a-z_:+.0-9\"\\\\]{1,20}",
            statuses in (any_status(), any_status()),
            instants in ((0i64..3, 0i64..3), (0i64..3, 0i64..3)),
            traces in (proptest::option::of("[a-z\"]{0,5}"), proptest::option::of("[a-z\"]{0,5}")),
            confs in (0u8..3, 0u8..3),
        ) {
            let conf = |which: u8| match which {
                0 => RunConf::default(),
                1 => RunConf::parse(json!({"a": 1, "b": [true]})).unwrap(),
                _ => sent(r#"{"b":[true],"a":1}"#),
            };
            let make = |status, (created, later): (i64, i64), trace: Option<String>, which| {
                let mut made = run(PIPELINE, &id, status);
                made.created_at = at(created);
                made.updated_at = at(created + later);
                made.trace = trace;
                made.conf = conf(which);
                made
            };
            let first = make(statuses.0, instants.0, traces.0, confs.0);
            let second = make(statuses.1, instants.1, traces.1, confs.1);
            let kept = KeptRuns::new();
            prop_assert_eq!(kept.object(&first), run_json::object(&first));
            prop_assert_eq!(kept.object(&second), run_json::object(&second));
            prop_assert_eq!(kept.array(&[first.clone(), second.clone()]),
                run_json::array(&[first, second]));
        }
    }
}
