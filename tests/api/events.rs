//! `GET /platform/events` on the memory backend: a run's changes in order
//! as the run routes show them, resuming with `Last-Event-ID`, the gap,
//! the `pipeline_id` filters, tenant isolation, the bound on streams,
//! refusals, keep-alive comments, and the end when the service drains.

use std::{sync::Arc, time::Duration};

use app::{Cli, Command};
use axum::body::Body;
use clap::Parser as _;
use http_body_util::BodyExt as _;
use reqwest::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{
    feed::{Frame, RunEvent, SseParser},
    helpers::{
        ACME, ACTIVE, GLOBEX, GLOBEX_PIPELINE, PAUSED, SCHEDULED, SECRET, TestApp, envelope,
        fixture, json_of, manual_clock, shouted, token,
    },
};

/// How long a memory run stays `RUNNING` in the tests that let runs end:
/// they move the service's clock by this much to end one.
const RUN: Duration = Duration::from_millis(200);
const RUN_SECONDS: &str = "0.2";

/// `(run id, status)` of each event, in order.
fn changes(events: &[RunEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|event| (event.run_id().to_owned(), event.status().to_owned()))
        .collect()
}

/// The statuses the events tell of `run_id`, in order.
fn statuses_of(events: &[RunEvent], pipeline_id: &str, run_id: &str) -> Vec<String> {
    // Run ids are unique within a pipeline only: two pipelines' runs made
    // in the same microsecond share one.
    events
        .iter()
        .filter(|event| event.pipeline_id() == pipeline_id && event.run_id() == run_id)
        .map(|event| event.status().to_owned())
        .collect()
}

/// Checks that each event's run is the run as `GET .../pipeline_run/{id}`
/// shows it now.
async fn assert_as_the_route_shows(app: &TestApp, events: &[RunEvent]) {
    for event in events {
        let (status, run) =
            json_of(app.get_run(ACME, event.pipeline_id(), event.run_id()).await).await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(
            event.run, run,
            "event {} differs from the run route",
            event.id
        );
    }
}

#[tokio::test]
async fn a_stream_tells_a_runs_changes_in_order_as_the_run_route_shows_them() {
    let clock = manual_clock();
    let app = TestApp::spawn_with_clock(
        Arc::new(clock.clone()),
        &["--memory-run-seconds", RUN_SECONDS],
    )
    .await;
    let mut stream = app.events(ACME, "").await;

    let first = app.run_id_of_execute(ACME, ACTIVE).await;
    let second = app.run_id_of_execute(ACME, ACTIVE).await;
    let appeared = stream.next_runs(2).await;
    assert_eq!(
        changes(&appeared),
        [
            (first.clone(), "RUNNING".to_owned()),
            (second.clone(), "QUEUED".to_owned())
        ]
    );
    assert_as_the_route_shows(&app, &appeared).await;

    // The first ends; the second starts at the same instant.
    clock.advance(RUN);
    let handed_over = stream.next_runs(2).await;
    assert_eq!(statuses_of(&handed_over, ACTIVE, &first), ["SUCCESS"]);
    assert_eq!(statuses_of(&handed_over, ACTIVE, &second), ["RUNNING"]);
    assert_as_the_route_shows(&app, &handed_over).await;

    clock.advance(RUN);
    let ended = stream.next_runs(1).await;
    assert_eq!(changes(&ended), [(second.clone(), "SUCCESS".to_owned())]);
    assert_as_the_route_shows(&app, &ended).await;

    // Nothing more about either: the next event is a new run's.
    let later = app.run_id_of_execute(ACME, SCHEDULED).await;
    assert_eq!(stream.next_run().await.run_id(), later);

    let all: Vec<RunEvent> = [appeared, handed_over, ended].concat();
    assert_eq!(statuses_of(&all, ACTIVE, &first), ["RUNNING", "SUCCESS"]);
    assert_eq!(
        statuses_of(&all, ACTIVE, &second),
        ["QUEUED", "RUNNING", "SUCCESS"]
    );
    let mut ids: Vec<&str> = all.iter().map(|event| event.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "an event id was used twice");
}

#[tokio::test]
async fn a_stream_resumed_with_last_event_id_gets_exactly_what_it_missed() {
    // Runs stay RUNNING an hour, and the clock stands still: every change
    // below is one this test makes.
    let clock = manual_clock();
    let app = TestApp::spawn_with_clock(Arc::new(clock), &[]).await;
    let mut watching = app.events(ACME, "").await;
    let mut leaving = app.events(ACME, "").await;

    let first = app.run_id_of_execute(ACME, ACTIVE).await;
    let last_seen = leaving.next_run().await;
    assert_eq!(last_seen.run_id(), first);
    assert_eq!(watching.next_run().await, last_seen);
    drop(leaving);

    let second = app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(app.cancel(ACME, ACTIVE, &first).await.status(), 200);
    let third = app.run_id_of_execute(ACME, SCHEDULED).await;
    assert_eq!(app.cancel(ACME, ACTIVE, &second).await.status(), 200);
    let missed = watching.next_runs(5).await;
    assert_eq!(statuses_of(&missed, ACTIVE, &first), ["FAILED"]);
    assert_eq!(
        statuses_of(&missed, ACTIVE, &second),
        ["QUEUED", "RUNNING", "FAILED"]
    );
    assert_eq!(statuses_of(&missed, SCHEDULED, &third), ["RUNNING"]);

    let mut resumed = app.resume_events(ACME, "", Some(&last_seen.id)).await;
    assert_eq!(resumed.next_runs(5).await, missed);
    // Then what happens next, and nothing in between.
    let fourth = app.run_id_of_execute(ACME, SCHEDULED).await;
    let next = resumed.next_run().await;
    assert_eq!(
        changes(std::slice::from_ref(&next)),
        [(fourth, "QUEUED".to_owned())]
    );
    assert_eq!(watching.next_run().await, next);

    // Resumed from the newest, a stream has nothing to catch up on.
    let mut current = app.resume_events(ACME, "", Some(&next.id)).await;
    let fifth = app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(current.next_run().await.run_id(), fifth);
}

#[tokio::test]
async fn a_last_event_id_the_log_no_longer_holds_starts_with_a_gap_then_goes_on_from_now() {
    let clock = manual_clock();
    let earlier = TestApp::spawn_with_clock(Arc::new(clock.clone()), &[]).await;
    let mut stream = earlier.events(ACME, "").await;
    earlier.run_id_of_execute(ACME, ACTIVE).await;
    let from_earlier = stream.next_run().await;
    drop((stream, earlier));

    // The next instance starts a second later, with a log of its own and
    // an event in it that no client has seen.
    clock.advance(Duration::from_secs(1));
    let app = TestApp::spawn_with_clock(Arc::new(clock), &[]).await;
    let mut watching = app.events(ACME, "").await;
    app.run_id_of_execute(ACME, ACTIVE).await;
    watching.next_run().await;

    for last_event_id in [from_earlier.id.as_str(), "an-id-of-another-form"] {
        let mut resumed = app.resume_events(ACME, "", Some(last_event_id)).await;
        match resumed.next_event(Duration::from_secs(10)).await {
            Some(Frame::Event { event, .. }) if event == "gap" => {}
            other => panic!("expected event: gap after {last_event_id}, got {other:?}"),
        }
        let now = app.run_id_of_execute(ACME, SCHEDULED).await;
        assert_eq!(
            resumed.next_run().await.run_id(),
            now,
            "after {last_event_id}"
        );
        assert_eq!(watching.next_run().await.run_id(), now);
    }
}

#[tokio::test]
async fn repeated_pipeline_ids_keep_a_stream_to_those_pipelines() {
    let app = TestApp::spawn().await;
    assert_eq!(app.unpause(ACME, PAUSED).await.status(), 200);
    // Either spelling of an id.
    let mut two = app
        .events(
            ACME,
            &format!("?pipeline_id={ACTIVE}&pipeline_id={}", shouted(SCHEDULED)),
        )
        .await;
    let mut one = app.events(ACME, &format!("?pipeline_id={PAUSED}")).await;

    let on_paused = app.run_id_of_execute(ACME, PAUSED).await;
    let on_active = app.run_id_of_execute(ACME, ACTIVE).await;
    let on_scheduled = app.run_id_of_execute(ACME, SCHEDULED).await;
    assert_eq!(two.next_run().await.run_id(), on_active);
    assert_eq!(two.next_run().await.run_id(), on_scheduled);
    assert_eq!(one.next_run().await.run_id(), on_paused);
    // The other pipelines' runs were not in between.
    let again = app.run_id_of_execute(ACME, PAUSED).await;
    assert_eq!(one.next_run().await.run_id(), again);
}

#[tokio::test]
async fn a_stream_tells_only_its_customers_runs() {
    let app = TestApp::spawn().await;
    let mut acme = app.events(ACME, "").await;
    // Naming another customer's pipeline shows nothing of it.
    let mut acme_asking_for_globex = app
        .events(
            ACME,
            &format!("?pipeline_id={GLOBEX_PIPELINE}&pipeline_id={ACTIVE}"),
        )
        .await;
    let mut globex = app.events(GLOBEX, "").await;

    let globex_run = app.run_id_of_execute(GLOBEX, GLOBEX_PIPELINE).await;
    let acme_run = app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(acme.next_run().await.run_id(), acme_run);
    assert_eq!(acme_asking_for_globex.next_run().await.run_id(), acme_run);
    assert_eq!(globex.next_run().await.run_id(), globex_run);
    let globex_again = app.run_id_of_execute(GLOBEX, GLOBEX_PIPELINE).await;
    assert_eq!(globex.next_run().await.run_id(), globex_again);
    let acme_again = app.run_id_of_execute(ACME, SCHEDULED).await;
    assert_eq!(acme.next_run().await.run_id(), acme_again);
}

#[tokio::test]
async fn streams_past_the_customers_bound_are_429_until_one_closes() {
    let app = TestApp::spawn_with(&["--max-streams-per-customer", "2"]).await;
    let first = app.events(ACME, "").await;
    let _second = app.events(ACME, "").await;

    let refused = app.open_events(ACME, "", None).await.unwrap_err();
    assert!(refused.headers().contains_key(RETRY_AFTER));
    let (status, body) = json_of(refused).await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        envelope(
            "TooManyStreams",
            "Too many event streams open: at most 2 at a time."
        )
    );
    // Another customer's streams are counted apart.
    let _globex = app.events(GLOBEX, "").await;

    // Once the service has seen a stream close, its place is free.
    drop(first);
    app.wait_for_metric("maestro_event_streams_open", |open| open == 2.0)
        .await;
    let mut reopened = app.events(ACME, "").await;
    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(reopened.next_run().await.run_id(), run_id);
}

#[tokio::test]
async fn a_bad_pipeline_id_or_last_event_id_is_400_and_no_token_is_401() {
    let app = TestApp::spawn().await;
    for query in [
        "?pipeline_id=orders".to_owned(),
        format!("?pipeline_id={ACTIVE}&pipeline_id=nope"),
        "?pipeline_id=".to_owned(),
    ] {
        let refused = app.open_events(ACME, &query, None).await.unwrap_err();
        assert_eq!(
            json_of(refused).await,
            (
                400,
                envelope(
                    "InvalidQueryParameter",
                    "pipeline_id must be a UUID, hyphenated or underscored"
                )
            ),
            "{query}"
        );
    }
    let too_long = "1".repeat(65);
    for last_event_id in ["1-0 2-0", too_long.as_str()] {
        let refused = app
            .open_events(ACME, "", Some(last_event_id))
            .await
            .unwrap_err();
        assert_eq!(
            json_of(refused).await,
            (
                400,
                envelope(
                    "InvalidHeader",
                    "Last-Event-ID must be an event id this service sent"
                )
            ),
            "{last_event_id}"
        );
    }

    let anonymous = app
        .client
        .get(app.url("/platform/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()[WWW_AUTHENTICATE], "Bearer");
}

#[tokio::test]
async fn open_streams_end_cleanly_when_the_service_starts_draining() {
    let app = TestApp::spawn().await;
    let mut acme = app.events(ACME, "").await;
    let mut globex = app
        .events(GLOBEX, &format!("?pipeline_id={GLOBEX_PIPELINE}"))
        .await;
    let run_id = app.run_id_of_execute(ACME, ACTIVE).await;
    assert_eq!(acme.next_run().await.run_id(), run_id);

    app.start_draining();
    acme.expect_end().await;
    globex.expect_end().await;
}

/// On paused time, served in process: each comment is due on the
/// runtime's clock, which moves only when every task waits.
#[tokio::test(start_paused = true)]
async fn an_idle_stream_says_keep_alive_every_15_seconds() {
    let fixture = fixture();
    let args = [
        "maestro",
        "serve",
        "--jwt-hs256-secret",
        SECRET,
        "--memory-fixture",
        fixture.to_str().unwrap(),
    ];
    let Some(Command::Serve(config)) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!()
    };
    let built = app::build(&config).await.unwrap();
    let request = axum::http::Request::get("/platform/events")
        .header("authorization", format!("Bearer {}", token(ACME)))
        .body(Body::empty())
        .unwrap();
    let response = built.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut parser = SseParser::default();

    let started = tokio::time::Instant::now();
    // Past the minute: the stream outlives the request timeouts too.
    for nth in 1..=5 {
        let frames = loop {
            let frame = body.frame().await.expect("the stream goes on").unwrap();
            let frames = parser.push(frame.data_ref().expect("data"));
            if !frames.is_empty() {
                break frames;
            }
        };
        assert_eq!(frames, [Frame::Comment("keep-alive".to_owned())]);
        assert_eq!(started.elapsed(), Duration::from_secs(15 * nth));
    }
}

#[test]
fn the_sse_parser_cuts_events_and_comments_at_any_line_ending() {
    let mut parser = SseParser::default();
    let mut frames = parser.push(b": keep-alive\n\nid: 7-0\nevent: run\nda");
    frames.extend(parser.push(b"ta: {\"a\":1}\r\n\r"));
    frames.extend(parser.push(b"\nevent: gap\rdata: x\rdata: y\r\r"));
    let run: Value = json!({"a": 1});
    assert_eq!(
        frames,
        [
            Frame::Comment("keep-alive".to_owned()),
            Frame::Event {
                id: Some("7-0".to_owned()),
                event: "run".to_owned(),
                data: run.to_string(),
                data_lines: 1,
            },
            Frame::Event {
                id: None,
                event: "gap".to_owned(),
                data: "x\ny".to_owned(),
                data_lines: 2,
            },
        ]
    );
}
