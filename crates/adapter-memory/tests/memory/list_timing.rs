//! What listing runs costs with an empty, a one-page and a full history
//! (10,000 finished runs, some of them cancelled), filtered by status and
//! not. The timings are printed, never asserted:
//! `cargo test --release -p adapter-memory --test memory list_timing -- --nocapture`.

use std::sync::Arc;
use std::time::Duration;

use adapter_memory::{DEMO_CUSTOMER, DEMO_PIPELINE_ID, MemoryBackend, MemoryConfig};
use domain::{
    Caller, CustomerId, ManualClock, Orchestrator, PipelineId, RequestContext, RunQuery, RunStatus,
    TriggerRequest,
};

fn demo() -> RequestContext {
    RequestContext::new(Caller::new(CustomerId::parse(DEMO_CUSTOMER).unwrap()))
}

fn pipeline() -> PipelineId {
    PipelineId::parse(DEMO_PIPELINE_ID).unwrap()
}

/// A pipeline with `finished` finished runs (each `cancel_every`-th one
/// cancelled while it ran), then one running and `waiting` queued runs
/// (each third of those cancelled), on a clock of its own.
async fn history(finished: usize, cancel_every: usize, waiting: usize) -> MemoryBackend {
    let clock = ManualClock::at_epoch_seconds(1_734_517_800);
    let backend = MemoryBackend::demo(MemoryConfig {
        run_duration: Duration::from_secs(1),
        queue_limit: 1000,
        history_limit: 10_000,
    })
    .with_clock(Arc::new(clock.clone()));
    let request = TriggerRequest::new(pipeline());
    for index in 0..finished {
        let run = backend.trigger(&demo(), &request).await.unwrap();
        if index % cancel_every == cancel_every - 1 {
            backend
                .cancel_run(&demo(), &pipeline(), &run.id)
                .await
                .unwrap();
        } else {
            clock.advance(Duration::from_secs(1));
        }
    }
    if waiting > 0 {
        backend.trigger(&demo(), &request).await.unwrap();
        for index in 0..waiting {
            let run = backend.trigger(&demo(), &request).await.unwrap();
            if index % 3 == 2 {
                backend
                    .cancel_run(&demo(), &pipeline(), &run.id)
                    .await
                    .unwrap();
            }
        }
    }
    backend
}

/// The time of one listing: the least mean of a few batches, so that
/// another process's burst does not count.
async fn per_call(backend: &MemoryBackend, query: &RunQuery) -> Duration {
    // Few calls unoptimized, where only the figures of a release build
    // mean anything.
    const CALLS: u32 = if cfg!(debug_assertions) { 20 } else { 1000 };
    const BATCHES: usize = 5;
    let ctx = demo();
    let id = pipeline();
    let mut least = Duration::MAX;
    for _ in 0..BATCHES {
        let start = std::time::Instant::now();
        for _ in 0..CALLS {
            std::hint::black_box(backend.list_runs(&ctx, &id, query).await.unwrap());
        }
        least = least.min(start.elapsed() / CALLS);
    }
    least
}

#[tokio::test]
async fn list_timing_with_an_empty_a_one_page_and_a_full_history() {
    let histories = [
        ("empty", history(0, usize::MAX, 0).await),
        ("100 succeeded", history(100, usize::MAX, 0).await),
        ("10,000 succeeded", history(10_000, usize::MAX, 0).await),
        (
            "10,000, 1 in 3 cancelled, 300 waiting",
            history(10_000, 3, 300).await,
        ),
        ("10,000, 1 in 2 cancelled", history(10_000, 2, 0).await),
    ];
    let queries = [
        ("all", RunQuery::new(Some(100), None, None).unwrap()),
        (
            "SUCCESS",
            RunQuery::new(Some(100), None, Some(RunStatus::Success)).unwrap(),
        ),
        (
            "SUCCESS offset 3000",
            RunQuery::new(Some(100), Some(3000), Some(RunStatus::Success)).unwrap(),
        ),
        (
            "FAILED",
            RunQuery::new(Some(100), None, Some(RunStatus::Failed)).unwrap(),
        ),
        (
            "QUEUED",
            RunQuery::new(Some(100), None, Some(RunStatus::Queued)).unwrap(),
        ),
        (
            "RUNNING",
            RunQuery::new(Some(100), None, Some(RunStatus::Running)).unwrap(),
        ),
    ];
    println!("list_runs, limit 100, per call (least mean of 5 batches):");
    for (name, backend) in &histories {
        let mut line = format!("{name:>40}:");
        for (label, query) in &queries {
            let page = backend
                .list_runs(&demo(), &pipeline(), query)
                .await
                .unwrap();
            let took = per_call(backend, query).await;
            line.push_str(&format!(
                " {label} {took:.1?} ({}/{})",
                page.runs.len(),
                page.total
            ));
        }
        println!("{line}");
    }
}
