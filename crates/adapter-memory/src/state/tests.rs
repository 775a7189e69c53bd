//! Tests of the run simulation on one pipeline, with explicit instants.

use std::collections::{HashMap, HashSet};

use chrono::TimeZone;
use domain::{CustomerId, PipelineId};
use proptest::prelude::*;
use serde_json::json;

use super::*;

const SECOND: i64 = 1_000_000;

fn t(micros: i64) -> Timestamp {
    Utc.timestamp_micros(1_734_517_800_000_000 + micros)
        .unwrap()
}

fn pipeline(status: PipelineStatus) -> Pipeline {
    let mut pipeline = Pipeline::new(
        PipelineId::parse("1b33ad2f-33d3-4837-9eeb-83c82c8b909d").unwrap(),
        CustomerId::parse("demo").unwrap(),
        "nightly",
        t(-SECOND),
    );
    pipeline.status = status;
    pipeline
}

fn limits(run_seconds: i64, queue_limit: usize, history_limit: usize) -> Limits {
    Limits {
        run_duration: Some(TimeDelta::seconds(run_seconds)),
        queue_limit,
        history_limit,
    }
}

fn state(limits: Limits) -> PipelineState {
    PipelineState::new(pipeline(PipelineStatus::Active), limits)
}

/// No parameters.
fn conf() -> RunConf {
    RunConf::default()
}

/// The statuses, oldest first.
fn statuses(state: &mut PipelineState, now: Timestamp) -> Vec<RunStatus> {
    let query = RunQuery::new(Some(RunQuery::MAX_LIMIT), None, None).unwrap();
    let mut runs = state.list_runs(&query, now).runs;
    runs.reverse();
    runs.into_iter().map(|run| run.status).collect()
}

use RunStatus::{Failed, Queued, Running, Success};

#[test]
fn a_run_ends_exactly_run_duration_after_it_started_and_the_next_starts_then() {
    let mut state = state(limits(10, 10, 10));
    let first = state.trigger(&conf(), t(0)).unwrap();
    let second = state.trigger(&conf(), t(3 * SECOND)).unwrap();
    assert_eq!((first.status, second.status), (Running, Queued));

    let page = state.list_runs(&RunQuery::default(), t(15 * SECOND));
    let [second_now, first_now] = page.runs.as_slice() else {
        panic!("two runs expected, got {page:?}");
    };
    assert_eq!(
        (first_now.status, first_now.updated_at),
        (Success, t(10 * SECOND))
    );
    assert_eq!(
        (second_now.status, second_now.updated_at),
        (Running, t(10 * SECOND))
    );
    assert_eq!(second_now.created_at, t(3 * SECOND));
}

#[test]
fn a_run_queued_after_the_slot_freed_starts_when_it_was_created() {
    let mut state = state(limits(10, 10, 10));
    state.trigger(&conf(), t(0)).unwrap();
    // Nobody looked between the first run's end (10 s) and this trigger.
    let second = state.trigger(&conf(), t(30 * SECOND)).unwrap();
    assert_eq!(
        (second.status, second.updated_at),
        (Running, t(30 * SECOND))
    );
}

#[test]
fn the_outcome_does_not_depend_on_how_often_the_state_is_looked_at() {
    let mut watched = state(limits(7, 10, 10));
    let mut unwatched = state(limits(7, 10, 10));
    for at in [0, SECOND, 2 * SECOND] {
        watched.trigger(&conf(), t(at)).unwrap();
        unwatched.trigger(&conf(), t(at)).unwrap();
    }
    for step in 0..40 {
        watched.list_runs(&RunQuery::default(), t(step * SECOND / 2));
    }
    let query = RunQuery::default();
    assert_eq!(
        watched.list_runs(&query, t(20 * SECOND)),
        unwatched.list_runs(&query, t(20 * SECOND))
    );
}

#[test]
fn triggers_in_the_same_microsecond_get_increasing_ids_and_queue() {
    let mut state = state(limits(10, 10, 10));
    let runs: Vec<Run> = (0..3)
        .map(|_| state.trigger(&conf(), t(0)).unwrap())
        .collect();
    assert!(runs[0].id < runs[1].id && runs[1].id < runs[2].id);
    assert_eq!(runs[2].created_at, t(2));
    assert_eq!(
        runs.iter().map(|run| run.status).collect::<Vec<_>>(),
        [Running, Queued, Queued]
    );
}

#[test]
fn a_zero_duration_run_comes_back_already_succeeded() {
    let mut state = state(limits(0, 10, 10));
    for _ in 0..3 {
        let run = state.trigger(&conf(), t(0)).unwrap();
        assert_eq!(run.status, Success);
        assert_eq!(run.updated_at, run.created_at);
    }
    assert_eq!(statuses(&mut state, t(0)), [Success; 3]);
}

#[test]
fn with_no_history_kept_a_finished_run_is_still_returned_by_its_trigger() {
    let mut state = state(limits(0, 10, 0));
    assert_eq!(state.trigger(&conf(), t(0)).unwrap().status, Success);
    assert_eq!(state.list_runs(&RunQuery::default(), t(0)).total, 0);
}

#[test]
fn runs_too_long_to_add_to_an_instant_never_finish() {
    let mut state = state(Limits {
        run_duration: None,
        queue_limit: 10,
        history_limit: 10,
    });
    state.trigger(&conf(), t(0)).unwrap();
    assert_eq!(statuses(&mut state, Timestamp::MAX_UTC), [Running]);
}

#[test]
fn a_queue_limit_of_zero_still_lets_an_idle_pipeline_run() {
    let mut state = state(limits(10, 0, 10));
    assert_eq!(state.trigger(&conf(), t(0)).unwrap().status, Running);
    assert!(matches!(
        state.trigger(&conf(), t(SECOND)),
        Err(ExecuteError::QueueFull { limit: 0, .. })
    ));
    assert_eq!(
        state.trigger(&conf(), t(10 * SECOND)).unwrap().status,
        Running
    );
}

#[test]
fn memory_stays_flat_under_endless_triggers() {
    let mut state = state(limits(0, 3, 5));
    for step in 0..100_000 {
        state.trigger(&conf(), t(step)).unwrap();
        assert!(state.runs.len() <= 5);
    }
}

#[test]
fn unpausing_an_error_pipeline_is_unchanged_and_pausing_it_works() {
    let mut state = PipelineState::new(pipeline(PipelineStatus::Error), limits(10, 10, 10));
    assert!(matches!(
        state.set_paused(false, t(0)),
        Err(SetPausedError::NotPaused(_))
    ));
    assert_eq!(state.pipeline().status, PipelineStatus::Error);
    state.set_paused(true, t(SECOND)).unwrap();
    assert_eq!(state.pipeline().status, PipelineStatus::Paused);
    assert_eq!(state.pipeline().updated_at, t(SECOND));
    state.set_paused(false, t(2 * SECOND)).unwrap();
    assert_eq!(state.pipeline().status, PipelineStatus::Active);
}

#[test]
fn a_run_that_ended_before_a_pause_lets_the_next_start_before_the_pause() {
    let mut state = state(limits(10, 10, 10));
    state.trigger(&conf(), t(0)).unwrap();
    state.trigger(&conf(), t(0)).unwrap();
    // Nobody looked at 10 s, when the second run started; the pause at 15 s
    // must not hold it back.
    state.set_paused(true, t(15 * SECOND)).unwrap();
    let page = state.list_runs(&RunQuery::default(), t(20 * SECOND));
    assert_eq!(page.runs[0].status, Success);
    assert_eq!(page.runs[0].updated_at, t(20 * SECOND));
}

#[test]
fn get_run_finds_kept_runs_by_their_exact_id_only() {
    let mut state = state(limits(10, 10, 10));
    let ids: Vec<RunId> = (0..5)
        .map(|_| state.trigger(&conf(), t(0)).unwrap().id)
        .collect();
    for id in &ids {
        assert_eq!(state.get_run(id, t(0)).unwrap().id, *id);
    }
    let same_instant_other_spelling = RunId::parse("manual__2024-12-18T10:30:00Z").unwrap();
    assert_eq!(state.get_run(&same_instant_other_spelling, t(0)), None);
    assert_eq!(
        state.get_run(&RunId::parse("scheduled__x").unwrap(), t(0)),
        None
    );
    assert_eq!(state.get_run(&RunId::manual(&t(99)), t(0)), None);
}

fn query(limit: u32, offset: u64, status: Option<RunStatus>) -> RunQuery {
    RunQuery::new(Some(limit), Some(offset), status).unwrap()
}

/// The ids of a page of the runs with `status`, and their total.
fn page_ids(
    state: &mut PipelineState,
    limit: u32,
    offset: u64,
    status: RunStatus,
    now: Timestamp,
) -> (Vec<RunId>, u64) {
    let page = state.list_runs(&query(limit, offset, Some(status)), now);
    (
        page.runs.into_iter().map(|run| run.id).collect(),
        page.total,
    )
}

#[test]
fn the_trigger_keeps_the_conf_and_every_read_answers_it() {
    let mut state = state(limits(10, 10, 10));
    let conf = RunConf::parse(json!({"date": "2024-12-18", "full_refresh": true})).unwrap();
    let first = state.trigger(&conf, t(0)).unwrap();
    let second = state.trigger(&RunConf::default(), t(0)).unwrap();
    assert_eq!(first.conf, conf);
    assert!(second.conf.is_empty());
    assert_eq!(state.get_run(&first.id, t(SECOND)).unwrap().conf, conf);
    let listed = state.list_runs(&RunQuery::default(), t(15 * SECOND)).runs;
    assert_eq!(listed[1].conf, conf);
    assert!(listed[0].conf.is_empty());
}

#[test]
fn a_cancelled_queued_run_fails_at_once_and_never_starts() {
    let mut state = state(limits(10, 10, 10));
    let first = state.trigger(&conf(), t(0)).unwrap();
    let second = state.trigger(&conf(), t(0)).unwrap();
    let third = state.trigger(&conf(), t(0)).unwrap();

    let cancelled = state.cancel(&second.id, t(4 * SECOND)).unwrap();
    assert_eq!(cancelled.status, Failed);
    assert_eq!(cancelled.updated_at, t(4 * SECOND));
    assert_eq!(cancelled.trace.as_deref(), Some(Run::CANCELLED_TRACE));

    // The first ends at 10 s and the third starts then, past the second.
    let page = state.list_runs(&RunQuery::default(), t(15 * SECOND));
    let statuses: Vec<_> = page
        .runs
        .iter()
        .map(|run| (run.status, run.updated_at))
        .collect();
    assert_eq!(
        statuses,
        [
            (Running, t(10 * SECOND)),
            (Failed, t(4 * SECOND)),
            (Success, t(10 * SECOND))
        ]
    );
    assert_eq!(
        state.get_run(&third.id, t(30 * SECOND)).unwrap().status,
        Success
    );
    assert_eq!(
        state.get_run(&second.id, t(30 * SECOND)).unwrap(),
        cancelled
    );
    assert_eq!(
        state.get_run(&first.id, t(30 * SECOND)).unwrap().status,
        Success
    );
}

#[test]
fn a_cancelled_running_run_lets_the_next_start_at_the_cancel_instant() {
    let mut state = state(limits(10, 10, 10));
    let first = state.trigger(&conf(), t(0)).unwrap();
    let second = state.trigger(&conf(), t(SECOND)).unwrap();

    let cancelled = state.cancel(&first.id, t(3 * SECOND + 7)).unwrap();
    assert_eq!(
        (cancelled.status, cancelled.updated_at),
        (Failed, t(3 * SECOND + 7))
    );
    let next = state.get_run(&second.id, t(3 * SECOND + 7)).unwrap();
    assert_eq!((next.status, next.updated_at), (Running, t(3 * SECOND + 7)));
    let next = state.get_run(&second.id, t(13 * SECOND + 7)).unwrap();
    assert_eq!(
        (next.status, next.updated_at),
        (Success, t(13 * SECOND + 7))
    );
}

#[test]
fn a_finished_or_unknown_run_cannot_be_cancelled() {
    let mut state = state(limits(10, 10, 10));
    let first = state.trigger(&conf(), t(0)).unwrap();
    let second = state.trigger(&conf(), t(0)).unwrap();
    state.cancel(&second.id, t(SECOND)).unwrap();
    for (run, status) in [(&first.id, Success), (&second.id, Failed)] {
        match state.cancel(run, t(20 * SECOND)) {
            Err(CancelRunError::AlreadyFinished {
                run_id,
                status: found,
                ..
            }) => assert_eq!((&run_id, found), (run, status)),
            other => panic!("expected AlreadyFinished, got {other:?}"),
        }
    }
    assert!(matches!(
        state.cancel(&RunId::manual(&t(5)), t(20 * SECOND)),
        Err(CancelRunError::RunNotFound { .. })
    ));
    // Nothing changed.
    assert_eq!(
        state
            .get_run(&second.id, t(30 * SECOND))
            .unwrap()
            .updated_at,
        t(SECOND)
    );
}

#[test]
fn on_a_paused_pipeline_cancelled_runs_fail_and_the_next_waits_for_the_unpause() {
    let mut state = state(limits(10, 10, 10));
    let ids: Vec<RunId> = (0..4)
        .map(|_| state.trigger(&conf(), t(0)).unwrap().id)
        .collect();
    state.set_paused(true, t(SECOND)).unwrap();
    // A queued run, then the running one.
    assert_eq!(state.cancel(&ids[1], t(2 * SECOND)).unwrap().status, Failed);
    assert_eq!(state.cancel(&ids[0], t(3 * SECOND)).unwrap().status, Failed);
    assert_eq!(
        statuses(&mut state, t(60 * SECOND)),
        [Failed, Failed, Queued, Queued]
    );
    // The paused queue's first run can go too.
    assert_eq!(
        state.cancel(&ids[2], t(61 * SECOND)).unwrap().status,
        Failed
    );
    assert_eq!(
        statuses(&mut state, t(62 * SECOND)),
        [Failed, Failed, Failed, Queued]
    );

    state.set_paused(false, t(70 * SECOND)).unwrap();
    let last = state.get_run(&ids[3], t(70 * SECOND)).unwrap();
    assert_eq!((last.status, last.updated_at), (Running, t(70 * SECOND)));
}

#[test]
fn status_pages_and_totals_skip_the_failed_runs_among_the_others() {
    let mut state = state(limits(10, 100, 100));
    let ids: Vec<RunId> = (0..12)
        .map(|_| state.trigger(&conf(), t(0)).unwrap().id)
        .collect();
    // Runs 1, 2, 3 and 6 are cancelled while queued, then 8 and 9.
    for index in [2, 1, 3, 6, 9, 8] {
        state.cancel(&ids[index], t(SECOND)).unwrap();
    }
    // 0, 4, 5 succeed (at 10, 20, 30 s); 7 runs; 10 and 11 wait.
    let now = t(35 * SECOND);
    let pick = |indexes: &[usize]| -> Vec<RunId> {
        indexes.iter().map(|index| ids[*index].clone()).collect()
    };
    assert_eq!(
        page_ids(&mut state, 100, 0, Success, now),
        (pick(&[5, 4, 0]), 3)
    );
    assert_eq!(page_ids(&mut state, 1, 1, Success, now), (pick(&[4]), 3));
    assert_eq!(page_ids(&mut state, 5, 2, Success, now), (pick(&[0]), 3));
    assert_eq!(page_ids(&mut state, 5, 3, Success, now), (pick(&[]), 3));
    assert_eq!(
        page_ids(&mut state, 100, 0, Failed, now),
        (pick(&[9, 8, 6, 3, 2, 1]), 6)
    );
    assert_eq!(page_ids(&mut state, 2, 3, Failed, now), (pick(&[3, 2]), 6));
    assert_eq!(page_ids(&mut state, 100, 0, Running, now), (pick(&[7]), 1));
    assert_eq!(
        page_ids(&mut state, 100, 0, Queued, now),
        (pick(&[11, 10]), 2)
    );
    assert_eq!(page_ids(&mut state, 1, 1, Queued, now), (pick(&[10]), 2));
    assert_eq!(state.list_runs(&RunQuery::default(), now).total, 12);
}

#[test]
fn with_no_finished_prefix_the_oldest_cancelled_queued_run_is_forgotten_first() {
    let mut state = state(limits(10, 10, 2));
    let ids: Vec<RunId> = (0..6)
        .map(|_| state.trigger(&conf(), t(0)).unwrap().id)
        .collect();
    for index in [2, 4, 3] {
        state.cancel(&ids[index], t(SECOND)).unwrap();
    }
    // Three failed runs behind the running one, two kept: the oldest went.
    let kept: Vec<RunId> = state
        .list_runs(&RunQuery::default(), t(SECOND))
        .runs
        .into_iter()
        .rev()
        .map(|run| run.id)
        .collect();
    assert_eq!(
        kept,
        [&ids[0], &ids[1], &ids[3], &ids[4], &ids[5]]
            .map(Clone::clone)
            .to_vec()
    );
    assert_eq!(state.get_run(&ids[2], t(SECOND)), None);
    // The runs that were ahead of it still run in order.
    // The first run's end makes three finished runs: the oldest, itself,
    // goes.
    assert_eq!(
        statuses(&mut state, t(10 * SECOND)),
        [Running, Failed, Failed, Queued]
    );
    let first_queued = state.list_runs(&query(1, 0, Some(Queued)), t(10 * SECOND));
    assert_eq!(first_queued.runs[0].id, ids[5]);
}

#[test]
fn the_next_change_of_a_run_is_its_end_its_start_or_when_it_is_forgotten() {
    let next = |state: &mut PipelineState, id: &RunId, now: Timestamp| {
        state.watch(id, now).unwrap().next_change
    };
    let mut state = state(limits(10, 10, 2));
    let ids: Vec<RunId> = (0..4)
        .map(|_| state.trigger(&conf(), t(0)).unwrap().id)
        .collect();
    state.cancel(&ids[2], t(SECOND)).unwrap();
    // The running run ends at 10 s; the second starts then; the fourth,
    // past the cancelled third, at 20 s.
    assert_eq!(next(&mut state, &ids[0], t(SECOND)), Some(t(10 * SECOND)));
    assert_eq!(next(&mut state, &ids[1], t(SECOND)), Some(t(10 * SECOND)));
    assert_eq!(next(&mut state, &ids[3], t(SECOND)), Some(t(20 * SECOND)));
    // Two finished runs are kept, and only one run newer than the third
    // is left to finish: it stays.
    assert_eq!(next(&mut state, &ids[2], t(SECOND)), None);
    // The first, finished, is forgotten when the second ends.
    assert_eq!(
        next(&mut state, &ids[0], t(10 * SECOND)),
        Some(t(20 * SECOND))
    );
    assert!(state.watch(&ids[0], t(20 * SECOND)).is_none());

    // Paused: the running run still ends, nothing queued starts.
    state.set_paused(true, t(21 * SECOND)).unwrap();
    assert_eq!(
        next(&mut state, &ids[3], t(21 * SECOND)),
        Some(t(30 * SECOND))
    );
    state.trigger(&conf(), t(22 * SECOND)).unwrap_err();
    state.set_paused(false, t(23 * SECOND)).unwrap();
    let last = state.trigger(&conf(), t(24 * SECOND)).unwrap();
    state.set_paused(true, t(25 * SECOND)).unwrap();
    assert_eq!(next(&mut state, &last.id, t(25 * SECOND)), None);
    assert_eq!(next(&mut state, &last.id, t(99 * SECOND)), None);
}

#[test]
fn a_cancelled_queued_run_is_forgotten_when_enough_newer_runs_finish() {
    let mut state = state(limits(10, 10, 1));
    let ids: Vec<RunId> = (0..3)
        .map(|_| state.trigger(&conf(), t(0)).unwrap().id)
        .collect();
    state.cancel(&ids[1], t(SECOND)).unwrap();
    // The first run's end makes two finished runs, but it is the older one
    // and goes; the third's end makes the cancelled run the older one.
    let watched = state.watch(&ids[1], t(SECOND)).unwrap();
    assert_eq!(watched.next_change, Some(t(20 * SECOND)));
    assert!(
        state
            .watch(&ids[1], t(20 * SECOND) - TimeDelta::nanoseconds(1))
            .is_some()
    );
    assert_eq!(state.watch(&ids[1], t(20 * SECOND)), None);
}

/// One step of a random history of a pipeline.
#[derive(Debug, Clone)]
enum Op {
    Trigger,
    /// Moves time on by this many nanoseconds.
    Wait(i64),
    Pause,
    Unpause,
    /// Cancels the run accepted this many triggers ago (0: the newest), or
    /// a run never made when there was none.
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Trigger),
        3 => prop_oneof![0i64..2_000, 0i64..15_000_000_000].prop_map(Op::Wait),
        1 => Just(Op::Pause),
        1 => Just(Op::Unpause),
        2 => (0usize..6).prop_map(Op::Cancel),
    ]
}

fn rank(status: RunStatus) -> u8 {
    match status {
        Queued => 0,
        Running => 1,
        Success | Failed => 2,
    }
}

/// What the test did and saw of a pipeline's runs.
#[derive(Debug, Default)]
struct Model {
    /// Every run a trigger made, oldest first.
    accepted: Vec<RunId>,
    /// The cancelled runs: the cancel's instant, and when the run had
    /// started if it was running.
    cancelled: HashMap<RunId, (Timestamp, Option<Timestamp>)>,
    /// When the pipeline was paused, and unpaused if it was.
    pauses: Vec<(Timestamp, Option<Timestamp>)>,
    /// Each run's status and `updated_at` when last seen.
    seen: HashMap<RunId, (RunStatus, Timestamp)>,
    /// The runs kept, and those finished, at the last check.
    kept: Vec<RunId>,
    finished: HashSet<RunId>,
}

/// Checks everything that must hold of `state` at `now`, given what was
/// done and seen before, and records what is seen now.
fn check_invariants(state: &mut PipelineState, now: Timestamp, model: &mut Model) {
    let listed = state.list_runs(&query(RunQuery::MAX_LIMIT, 0, None), now);
    let runs: Vec<Run> = state.runs.iter().cloned().collect();
    assert_eq!(listed.total, u64::try_from(runs.len()).unwrap());
    assert!(listed.runs.iter().rev().eq(runs.iter()));
    let limits = state.limits;
    let duration = limits.run_duration.unwrap();

    // Shape: [finished..., at most one RUNNING, QUEUED or FAILED...].
    let settled = runs
        .iter()
        .take_while(|run| run.status.is_finished())
        .count();
    assert_eq!(settled, state.settled);
    let running = usize::from(runs.get(settled).is_some_and(|run| run.status == Running));
    assert!(
        runs[settled + running..]
            .iter()
            .all(|run| matches!(run.status, Queued | Failed)),
        "{runs:?}"
    );

    // The index of failed runs holds exactly their numbers, in order.
    let failed: Vec<u64> = (0..runs.len())
        .filter(|index| runs[*index].status == Failed)
        .map(|index| state.number(index))
        .collect();
    assert!(state.failed.iter().eq(failed.iter()));

    // Only cancels fail runs, and a cancelled run stays as the cancel left
    // it: a cancelled queued run never runs.
    for run in &runs {
        match model.cancelled.get(&run.id) {
            Some((at, _)) => {
                assert_eq!((run.status, run.updated_at), (Failed, *at));
                assert_eq!(run.trace.as_deref(), Some(Run::CANCELLED_TRACE));
            }
            None => {
                assert_ne!(run.status, Failed);
                assert_eq!(run.trace, None);
            }
        }
    }

    // Totals by status add up, and each status's pages are exactly its
    // runs, newest first.
    let mut totals = 0;
    for status in RunStatus::ALL {
        let matching: Vec<&Run> = runs
            .iter()
            .rev()
            .filter(|run| run.status == status)
            .collect();
        let last = u64::try_from(matching.len().saturating_sub(1)).unwrap();
        for (limit, offset) in [(RunQuery::MAX_LIMIT, 0), (2, 1), (1, last)] {
            let page = state.list_runs(&query(limit, offset, Some(status)), now);
            assert_eq!(page.total, u64::try_from(matching.len()).unwrap());
            let expected = matching
                .iter()
                .skip(usize::try_from(offset).unwrap())
                .take(usize::try_from(limit).unwrap());
            assert!(
                page.runs.iter().eq(expected.copied()),
                "{status:?} {limit} {offset}"
            );
        }
        totals += matching.len();
    }
    assert_eq!(totals, runs.len());

    // Bounds.
    let finished = runs.iter().filter(|run| run.status.is_finished()).count();
    let queued = runs.iter().filter(|run| run.status == Queued).count();
    assert!(finished <= limits.history_limit);
    assert!(queued <= limits.queue_limit);

    // Kept runs are accepted ones, in creation order.
    let mut accepted = model.accepted.iter();
    assert!(runs.iter().all(|run| accepted.any(|id| *id == run.id)));
    assert!(
        runs.windows(2)
            .all(|pair| pair[0].created_at < pair[1].created_at)
    );
    for run in &runs {
        assert_eq!(Some(run.created_at), parse_manual_run_id(&run.id));
        assert!(run.created_at <= run.updated_at);
    }
    // No unfinished run was dropped: the unfinished runs are all the
    // newest runs not cancelled.
    let unfinished: Vec<&RunId> = runs
        .iter()
        .filter(|run| !run.status.is_finished())
        .map(|run| &run.id)
        .collect();
    let not_cancelled: Vec<&RunId> = model
        .accepted
        .iter()
        .filter(|id| !model.cancelled.contains_key(*id))
        .collect();
    assert!(not_cancelled.ends_with(&unfinished));
    // Oldest finished first, and only beyond the bound: a run dropped now
    // is older than every kept run that had finished already.
    let kept: HashSet<&RunId> = runs.iter().map(|run| &run.id).collect();
    let dropped: Vec<&RunId> = model.kept.iter().filter(|id| !kept.contains(id)).collect();
    if !dropped.is_empty() {
        assert_eq!(finished, limits.history_limit);
    }
    for run in runs.iter().filter(|run| model.finished.contains(&run.id)) {
        assert!(
            dropped.iter().all(|id| **id < run.id),
            "{dropped:?} {run:?}"
        );
    }

    // Work-conserving: an unpaused pipeline never leaves a run waiting
    // while nothing runs.
    if !state.pipeline.status.is_paused() && queued > 0 {
        assert_eq!(running, 1, "{runs:?}");
    }
    // Fully advanced: the running run's time is not up yet.
    if running == 1 {
        assert!(runs[settled].updated_at + duration > now);
    }

    // The runs that ran, in creation order, start no earlier than their
    // creation and the end of the run before, never while paused.
    let mut previous_end: Option<Timestamp> = None;
    for run in &runs {
        let (start, end) = match (run.status, model.cancelled.get(&run.id)) {
            (Success, _) => (run.updated_at - duration, run.updated_at),
            (Running, _) => (run.updated_at, Timestamp::MAX_UTC),
            (Failed, Some((at, Some(started)))) => (*started, *at),
            _ => continue,
        };
        assert!(start >= run.created_at);
        for (paused_at, unpaused_at) in &model.pauses {
            let during = *paused_at < start && unpaused_at.is_none_or(|unpaused| start < unpaused);
            assert!(
                !during,
                "{run:?} started during the pause {paused_at}..{unpaused_at:?}"
            );
        }
        if let Some(previous_end) = previous_end {
            assert!(start >= previous_end);
        }
        previous_end = Some(end);
    }

    // Statuses only move forward and instants never go back.
    for run in &runs {
        if let Some((status, updated_at)) = model.seen.get(&run.id) {
            assert!(rank(*status) <= rank(run.status));
            assert!(*updated_at <= run.updated_at);
        }
    }

    // A waiter's next instant is exact: up to it the run stays as it is,
    // and then it changes or is forgotten; without one it never changes by
    // itself.
    for run in &runs {
        let watched = state.clone().watch(&run.id, now).unwrap();
        assert_eq!(watched.run, *run);
        let later = match watched.next_change {
            Some(at) => {
                assert!(at > now);
                let before = state.clone().watch(&run.id, at - TimeDelta::nanoseconds(1));
                assert_eq!(before.map(|watched| watched.run).as_ref(), Some(run));
                at
            }
            None => now + TimeDelta::days(3650),
        };
        let after = state
            .clone()
            .watch(&run.id, later)
            .map(|watched| watched.run);
        if watched.next_change.is_some() {
            assert!(after.is_none_or(
                |after| after.status != run.status || after.updated_at > run.updated_at
            ));
        } else {
            assert_eq!(after.as_ref(), Some(run));
        }
    }

    model.kept = runs.iter().map(|run| run.id.clone()).collect();
    model.finished = runs
        .iter()
        .filter(|run| run.status.is_finished())
        .map(|run| run.id.clone())
        .collect();
    for run in &runs {
        model
            .seen
            .insert(run.id.clone(), (run.status, run.updated_at));
    }
}

/// Cancels a run at `now` and checks the answer against the run as it was.
fn cancel_and_check(state: &mut PipelineState, model: &mut Model, back: usize, now: Timestamp) {
    let id = model
        .accepted
        .iter()
        .rev()
        .nth(back)
        .cloned()
        .unwrap_or_else(|| RunId::manual(&t(-SECOND)));
    let before = state.get_run(&id, now);
    let next_queued = before.as_ref().and_then(|before| {
        state
            .runs
            .iter()
            .find(|run| run.created_at > before.created_at && run.status == Queued)
            .map(|run| run.id.clone())
    });
    let paused = state.pipeline.status.is_paused();
    match (before, state.cancel(&id, now)) {
        (None, Err(CancelRunError::RunNotFound { run_id, .. })) => assert_eq!(run_id, id),
        (Some(before), Err(CancelRunError::AlreadyFinished { status, .. })) => {
            assert!(before.status.is_finished());
            assert_eq!(status, before.status);
        }
        (Some(before), Ok(run)) => {
            assert!(!before.status.is_finished());
            let at = state.latest;
            assert_eq!((run.status, run.updated_at), (Failed, at));
            assert_eq!(run.conf, before.conf);
            let started = (before.status == Running).then_some(before.updated_at);
            model.cancelled.insert(id, (at, started));
            // The next queued run starts at the cancel instant.
            if let (Some(_), false, Some(next)) = (started, paused, next_queued) {
                let next = state.get_run(&next, now).unwrap();
                assert_eq!((next.status, next.updated_at), (Running, at));
            }
        }
        (before, after) => panic!("{before:?} cancelled: {after:?}"),
    }
}

/// What the journal says, from `from` to `now`, as (status, instant, run
/// index among `runs`).
fn told(
    state: &mut PipelineState,
    now: Timestamp,
    from: Timestamp,
    runs: &[&Run],
) -> (Vec<(RunStatus, Timestamp, usize)>, Option<Timestamp>) {
    let mut out = Vec::new();
    let next = state.feed(now, from, None, &mut out);
    let told = out
        .into_iter()
        .map(|change| {
            let index = runs.iter().position(|run| run.id == change.run.id).unwrap();
            assert_eq!(change.run.updated_at, change.at);
            (change.run.status, change.at, index)
        })
        .collect();
    (told, next)
}

#[test]
fn without_a_feed_nothing_is_written_down() {
    let mut state = state(limits(10, 10, 10));
    state.trigger(&conf(), t(0)).unwrap();
    assert!(state.journal.is_none());
    let (told, next) = told(&mut state, t(SECOND), t(0), &[]);
    assert_eq!(told, [], "what came before the feed is not told");
    assert_eq!(next, Some(t(10 * SECOND)), "the running run's end");
    state.stop_journal();
    assert!(state.journal.is_none());
}

#[test]
fn a_feed_reads_each_change_at_its_instant_and_the_next_one_to_come() {
    let mut state = state(limits(10, 10, 10));
    assert_eq!(told(&mut state, t(0), t(0), &[]), (vec![], None));
    let first = state.trigger(&conf(), t(SECOND)).unwrap();
    let second = state.trigger(&conf(), t(2 * SECOND)).unwrap();
    let third = state.trigger(&conf(), t(3 * SECOND)).unwrap();
    state.cancel(&third.id, t(4 * SECOND)).unwrap();
    let runs = [&first, &second, &third];
    let (changes, next) = told(&mut state, t(15 * SECOND), t(0), &runs);
    assert_eq!(
        changes,
        [
            (Running, t(SECOND), 0),
            (Queued, t(2 * SECOND), 1),
            (Queued, t(3 * SECOND), 2),
            (Failed, t(4 * SECOND), 2),
            (Success, t(11 * SECOND), 0),
            (Running, t(11 * SECOND), 1),
        ]
    );
    assert_eq!(next, Some(t(21 * SECOND)));
    // Read again from an instant: the changes from it on, and a forgotten
    // past.
    let mut out = Vec::new();
    state.feed(
        t(15 * SECOND),
        t(4 * SECOND),
        Some(t(11 * SECOND)),
        &mut out,
    );
    assert_eq!(out.len(), 2, "the changes at 11 s");
    assert_eq!(state.journal.as_ref().map(Journal::len), Some(2));
}

#[test]
fn an_operation_in_the_instant_a_feed_read_is_dated_after_it() {
    let mut state = state(limits(10, 10, 10));
    let first = state.trigger(&conf(), t(0)).unwrap();
    let second = state.trigger(&conf(), t(0)).unwrap();
    let read_at = t(SECOND) + TimeDelta::nanoseconds(300);
    told(&mut state, read_at, t(0), &[]);
    let cancelled = state.cancel(&first.id, read_at).unwrap();
    assert_eq!(cancelled.updated_at, read_at + TimeDelta::nanoseconds(1));
    let third = state.trigger(&conf(), read_at).unwrap();
    assert_eq!(third.created_at, t(SECOND + 1), "the next microsecond");
    let runs = [&first, &second, &third];
    let (changes, _) = told(&mut state, read_at, t(0), &runs);
    assert_eq!(changes, [], "nothing new at the instant read");
    let (changes, _) = told(&mut state, t(2 * SECOND), read_at, &runs);
    assert_eq!(
        changes,
        [
            (Failed, cancelled.updated_at, 0),
            (Running, cancelled.updated_at, 1),
            (Queued, third.created_at, 2),
        ]
    );
}

#[test]
fn a_run_appears_once_with_its_status_at_its_instant() {
    // Zero length: SUCCESS at once, told once.
    let mut state = state(limits(0, 10, 10));
    told(&mut state, t(0), t(0), &[]);
    let run = state.trigger(&conf(), t(SECOND)).unwrap();
    let (changes, _) = told(&mut state, t(2 * SECOND), t(0), &[&run]);
    assert_eq!(changes, [(Success, t(SECOND), 0)]);
}

proptest! {
    #[test]
    fn random_histories_keep_the_simulation_invariants(
        run_millis in prop_oneof![Just(0i64), 1i64..20_000],
        queue_limit in 0usize..5,
        history_limit in prop_oneof![0usize..5, 5usize..40],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut state = PipelineState::new(
            pipeline(PipelineStatus::Active),
            Limits {
                run_duration: Some(TimeDelta::milliseconds(run_millis)),
                queue_limit,
                history_limit,
            },
        );
        let mut now = t(0);
        let mut model = Model::default();
        for op in ops {
            let paused_before = state.pipeline().status.is_paused();
            match op {
                Op::Trigger => {
                    let queued_before = state.list_runs(&query(1, 0, Some(Queued)), now).total;
                    let active_before = state.list_runs(&query(1, 0, Some(Running)), now).total;
                    let conf = RunConf::parse(json!({"n": model.accepted.len()})).unwrap();
                    match state.trigger(&conf, now) {
                        Ok(run) => {
                            prop_assert!(!paused_before);
                            prop_assert!(model.accepted.last().is_none_or(|last| *last < run.id));
                            prop_assert_eq!(run.created_at, parse_manual_run_id(&run.id).unwrap());
                            prop_assert_eq!(&run.conf, &conf);
                            model.accepted.push(run.id);
                        }
                        Err(ExecuteError::Paused(_)) => prop_assert!(paused_before),
                        Err(ExecuteError::QueueFull { limit, .. }) => {
                            prop_assert_eq!(limit, queue_limit);
                            prop_assert_eq!(queued_before, u64::try_from(queue_limit).unwrap());
                            prop_assert_eq!(active_before, 1);
                        }
                        Err(other) => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Op::Wait(nanos) => now += TimeDelta::nanoseconds(nanos),
                Op::Pause => {
                    let changed = state.set_paused(true, now).is_ok();
                    prop_assert_eq!(changed, !paused_before);
                    if changed {
                        model.pauses.push((state.pipeline().updated_at, None));
                    }
                }
                Op::Unpause => {
                    let changed = state.set_paused(false, now).is_ok();
                    prop_assert_eq!(changed, paused_before);
                    if let (true, Some(pause)) = (changed, model.pauses.last_mut()) {
                        pause.1 = Some(state.pipeline().updated_at);
                    }
                }
                Op::Cancel(back) => cancel_and_check(&mut state, &mut model, back, now),
            }
            let seen_before = model.seen.clone();
            check_invariants(&mut state, now, &mut model);

            // A paused pipeline starts nothing that was waiting.
            let still_paused = paused_before && state.pipeline().status.is_paused();
            for run in &state.runs {
                if still_paused && seen_before.get(&run.id).is_some_and(|(status, _)| *status == Queued) {
                    prop_assert!(matches!(run.status, Queued | Failed), "{run:?}");
                }
            }
        }
    }
}
