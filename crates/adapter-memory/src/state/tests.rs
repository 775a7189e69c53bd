//! Tests of the run simulation on one pipeline, with explicit instants.

use std::collections::HashMap;

use chrono::TimeZone;
use domain::{CustomerId, PipelineId};
use proptest::prelude::*;

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

/// The statuses, oldest first.
fn statuses(state: &mut PipelineState, now: Timestamp) -> Vec<RunStatus> {
    let query = RunQuery::new(Some(RunQuery::MAX_LIMIT), None, None).unwrap();
    let mut runs = state.list_runs(&query, now).runs;
    runs.reverse();
    runs.into_iter().map(|run| run.status).collect()
}

use RunStatus::{Queued, Running, Success};

#[test]
fn a_run_ends_exactly_run_duration_after_it_started_and_the_next_starts_then() {
    let mut state = state(limits(10, 10, 10));
    let first = state.trigger(t(0)).unwrap();
    let second = state.trigger(t(3 * SECOND)).unwrap();
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
    state.trigger(t(0)).unwrap();
    // Nobody looked between the first run's end (10 s) and this trigger.
    let second = state.trigger(t(30 * SECOND)).unwrap();
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
        watched.trigger(t(at)).unwrap();
        unwatched.trigger(t(at)).unwrap();
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
    let runs: Vec<Run> = (0..3).map(|_| state.trigger(t(0)).unwrap()).collect();
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
        let run = state.trigger(t(0)).unwrap();
        assert_eq!(run.status, Success);
        assert_eq!(run.updated_at, run.created_at);
    }
    assert_eq!(statuses(&mut state, t(0)), [Success; 3]);
}

#[test]
fn with_no_history_kept_a_finished_run_is_still_returned_by_its_trigger() {
    let mut state = state(limits(0, 10, 0));
    assert_eq!(state.trigger(t(0)).unwrap().status, Success);
    assert_eq!(state.list_runs(&RunQuery::default(), t(0)).total, 0);
}

#[test]
fn runs_too_long_to_add_to_an_instant_never_finish() {
    let mut state = state(Limits {
        run_duration: None,
        queue_limit: 10,
        history_limit: 10,
    });
    state.trigger(t(0)).unwrap();
    assert_eq!(statuses(&mut state, Timestamp::MAX_UTC), [Running]);
}

#[test]
fn a_queue_limit_of_zero_still_lets_an_idle_pipeline_run() {
    let mut state = state(limits(10, 0, 10));
    assert_eq!(state.trigger(t(0)).unwrap().status, Running);
    assert!(matches!(
        state.trigger(t(SECOND)),
        Err(ExecuteError::QueueFull { limit: 0, .. })
    ));
    assert_eq!(state.trigger(t(10 * SECOND)).unwrap().status, Running);
}

#[test]
fn memory_stays_flat_under_endless_triggers() {
    let mut state = state(limits(0, 3, 5));
    for step in 0..100_000 {
        state.trigger(t(step)).unwrap();
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
    state.trigger(t(0)).unwrap();
    state.trigger(t(0)).unwrap();
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
    let ids: Vec<RunId> = (0..5).map(|_| state.trigger(t(0)).unwrap().id).collect();
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

/// One step of a random history of a pipeline.
#[derive(Debug, Clone)]
enum Op {
    Trigger,
    /// Moves time on by this many nanoseconds.
    Wait(i64),
    Pause,
    Unpause,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Trigger),
        3 => prop_oneof![0i64..2_000, 0i64..15_000_000_000].prop_map(Op::Wait),
        1 => Just(Op::Pause),
        1 => Just(Op::Unpause),
    ]
}

fn rank(status: RunStatus) -> u8 {
    match status {
        Queued => 0,
        Running => 1,
        Success | RunStatus::Failed => 2,
    }
}

/// When the pipeline was paused, and unpaused if it was.
type Pauses = [(Timestamp, Option<Timestamp>)];

/// Checks everything that must hold of `state` at `now`, after it was
/// settled there, given the runs accepted so far and the pauses.
fn check_invariants(state: &PipelineState, now: Timestamp, accepted: &[RunId], pauses: &Pauses) {
    let runs: Vec<&Run> = state.runs.iter().collect();
    let limits = state.limits;

    // Shape: [SUCCESS..., at most one RUNNING, QUEUED...].
    let finished = runs.iter().take_while(|run| run.status == Success).count();
    assert_eq!(finished, state.finished);
    let rest: Vec<RunStatus> = runs[finished..].iter().map(|run| run.status).collect();
    let running = usize::from(rest.first() == Some(&Running));
    assert!(
        rest[running..].iter().all(|status| *status == Queued),
        "{rest:?}"
    );

    // Bounds.
    assert!(finished <= limits.history_limit);
    assert!(rest.len() - running <= limits.queue_limit);

    // Kept runs are the newest accepted ones, in creation order: nothing
    // but the oldest finished runs was ever dropped.
    let kept: Vec<&RunId> = runs.iter().map(|run| &run.id).collect();
    assert!(accepted.ends_with(&kept.iter().map(|id| (*id).clone()).collect::<Vec<_>>()));
    assert!(
        runs.windows(2)
            .all(|pair| pair[0].created_at < pair[1].created_at)
    );
    for run in &runs {
        assert_eq!(Some(run.created_at), parse_manual_run_id(&run.id));
    }

    // Work-conserving: an unpaused pipeline never leaves a run waiting
    // while nothing runs.
    if !state.pipeline.status.is_paused() && rest.len() > running {
        assert_eq!(running, 1, "{rest:?}");
    }

    let duration = limits.run_duration.unwrap();
    // Fully advanced: the running run's time is not up yet.
    if running == 1 {
        assert!(runs[finished].updated_at + duration > now);
    }
    // FIFO without overlap: each run starts no earlier than its creation
    // and the end of the run before it.
    let mut previous_end: Option<Timestamp> = None;
    for run in &runs[..finished + running] {
        let start = if run.status == Success {
            run.updated_at - duration
        } else {
            run.updated_at
        };
        assert!(start >= run.created_at);
        // Nothing starts while the pipeline is paused.
        for (paused_at, unpaused_at) in pauses {
            let during = *paused_at < start && unpaused_at.is_none_or(|unpaused| start < unpaused);
            assert!(
                !during,
                "{run:?} started during the pause {paused_at}..{unpaused_at:?}"
            );
        }
        if let Some(end) = previous_end {
            assert!(start >= end);
        }
        previous_end = Some(run.updated_at);
    }
}

proptest! {
    #[test]
    fn random_histories_keep_the_simulation_invariants(
        run_millis in prop_oneof![Just(0i64), 1i64..20_000],
        queue_limit in 0usize..5,
        history_limit in 0usize..5,
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
        let mut accepted: Vec<RunId> = Vec::new();
        let mut seen: HashMap<RunId, RunStatus> = HashMap::new();
        let mut pauses: Vec<(Timestamp, Option<Timestamp>)> = Vec::new();
        for op in ops {
            let paused_before = state.pipeline().status.is_paused();
            match op {
                Op::Trigger => {
                    let queued_before = state.list_runs(
                        &RunQuery::new(Some(1), None, Some(Queued)).unwrap(), now).total;
                    let active_before = state.list_runs(
                        &RunQuery::new(Some(1), None, Some(Running)).unwrap(), now).total;
                    match state.trigger(now) {
                        Ok(run) => {
                            prop_assert!(!paused_before);
                            prop_assert!(accepted.last().is_none_or(|last| *last < run.id));
                            prop_assert_eq!(run.created_at, parse_manual_run_id(&run.id).unwrap());
                            accepted.push(run.id);
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
                        pauses.push((state.pipeline().updated_at, None));
                    }
                }
                Op::Unpause => {
                    let changed = state.set_paused(false, now).is_ok();
                    prop_assert_eq!(changed, paused_before);
                    if let (true, Some(pause)) = (changed, pauses.last_mut()) {
                        pause.1 = Some(state.pipeline().updated_at);
                    }
                }
            }
            let page = state.list_runs(&RunQuery::new(Some(1000), None, None).unwrap(), now);
            prop_assert_eq!(page.total, u64::try_from(state.runs.len()).unwrap());
            check_invariants(&state, now, &accepted, &pauses);

            // Statuses only move forward, and a paused pipeline starts
            // nothing that was waiting.
            let still_paused = paused_before && state.pipeline().status.is_paused();
            for run in &page.runs {
                if let Some(before) = seen.get(&run.id) {
                    prop_assert!(rank(*before) <= rank(run.status));
                    if still_paused && *before == Queued {
                        prop_assert_eq!(run.status, Queued);
                    }
                }
                seen.insert(run.id.clone(), run.status);
            }
        }
    }
}
