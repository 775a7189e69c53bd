//! Runs written as JSON by hand, for the routes that answer them: the RUN
//! object of [`RunBody`](crate::dto::RunBody), and execute's answer
//! ([`ExecuteResponse`](crate::dto::ExecuteResponse)), byte for byte what
//! their derived serialization writes (the tests compare the two), without
//! its costs. The derived path escapes every key and every value a byte at a
//! time and formats each instant into a string of its own; a page of 100
//! runs spent most of its time there. Here the keys are written as they
//! are, the pipeline id, status and instants are written from what is
//! known to need no escape, and only the run id and the trace, text an
//! engine may have made, go through serde_json's escaping.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse as _, Response},
};
use domain::{Run, Timestamp, format_timestamp, timestamp_text};

/// What one run takes as JSON besides its run id, trace and parameters,
/// at most: its keys and punctuation, the pipeline id, the longest status,
/// two instants and `null` for no trace. With those three added, the buffer
/// is sized once (unless the run id or trace need escapes).
const RUN_BYTES: usize = 217;

/// A 200 answer of `json`, typed as `axum::Json` types its answers.
pub(crate) fn answer(json: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

/// `runs` as a JSON array of RUN objects, each written anew. The routes
/// answer through [`KeptRuns`](crate::kept_runs::KeptRuns), which the tests
/// hold to this.
#[cfg(test)]
pub(crate) fn array(runs: &[Run]) -> Vec<u8> {
    array_of(runs, size_guess, write)
}

/// `items` as a JSON array, each written by `write` into a buffer sized
/// once from `size_guess`.
pub(crate) fn array_of<T>(
    items: &[T],
    size_guess: impl Fn(&T) -> usize,
    write: impl Fn(&mut Vec<u8>, &T),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + items.iter().map(size_guess).sum::<usize>());
    out.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write(&mut out, item);
    }
    out.push(b']');
    out
}

/// `run` as a RUN object.
pub(crate) fn object(run: &Run) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_guess(run));
    write(&mut out, run);
    out
}

/// A webhook delivery's body: `{"data": RUN, "timestamp", "type"}`, RUN
/// written as the API's routes write it, `timestamp` being when the run
/// changed.
pub(crate) fn delivery(event_type: &str, run: &Run) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_guess(run) + 80);
    out.extend_from_slice(br#"{"data":"#);
    write(&mut out, run);
    out.extend_from_slice(br#","timestamp":"#);
    timestamp(&mut out, &run.updated_at);
    out.extend_from_slice(br#","type":"#);
    string(&mut out, event_type);
    out.push(b'}');
    out
}

/// Execute's answer for `run`, the run it triggered.
pub(crate) fn execute(run: &Run) -> Vec<u8> {
    // A run id that needs escapes grows it once.
    let mut out = Vec::with_capacity(EXECUTE_BYTES + run.id.as_str().len());
    out.extend_from_slice(
        br#"{"status":true,"data":{"message":"Pipeline execution triggered successfully","pipeline_id":""#,
    );
    // A pipeline id is lowercase hexadecimal digits and underscores.
    out.extend_from_slice(run.pipeline_id.as_bytes());
    out.extend_from_slice(br#"","run_id":"#);
    string(&mut out, run.id.as_str());
    out.extend_from_slice(b"}}");
    out
}

/// Execute's answer without its run id (with its 36-character pipeline
/// id, and the quotes around the run id).
const EXECUTE_BYTES: usize = 143;

pub(crate) fn size_guess(run: &Run) -> usize {
    RUN_BYTES
        + run.id.as_str().len()
        + run.conf.as_json().len()
        + run.trace.as_ref().map_or(0, String::len)
}

/// Appends `run` as a RUN object, its fields in [`RunBody`]'s order.
///
/// A field written here must also be compared by
/// [`KeptRuns`](crate::kept_runs::KeptRuns) before it uses a kept text
/// (`written_alike`), or a run that differs only in that field would be
/// answered with another's text.
///
/// [`RunBody`]: crate::dto::RunBody
pub(crate) fn write(out: &mut Vec<u8>, run: &Run) {
    out.extend_from_slice(br#"{"pipeline_run_id":"#);
    string(out, run.id.as_str());
    // A pipeline id is lowercase hexadecimal digits and underscores.
    out.extend_from_slice(br#","pipeline_id":""#);
    out.extend_from_slice(run.pipeline_id.as_bytes());
    out.extend_from_slice(br#"","last_status":""#);
    out.extend_from_slice(run.status.as_str().as_bytes());
    out.extend_from_slice(br#"","created_at":"#);
    let created = out.len();
    timestamp(out, &run.created_at);
    let created = created..out.len();
    out.extend_from_slice(br#","updated_at":"#);
    if run.updated_at == run.created_at {
        // A queued run, or one that changed in the instant it was made:
        // the text just written, again.
        out.extend_from_within(created);
    } else {
        timestamp(out, &run.updated_at);
    }
    out.extend_from_slice(br#","trace":"#);
    string_or_null(out, run.trace.as_deref());
    // The parameters are kept as compact JSON text, written as it is.
    out.extend_from_slice(br#","conf":"#);
    out.extend_from_slice(run.conf.as_json().as_bytes());
    out.push(b'}');
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn string(out: &mut Vec<u8>, text: &str) {
    // serde_json escapes control characters, quotes and backslashes, and
    // nothing else; a run id (Maestro's own are `manual__` and an instant)
    // seldom holds any, and is then written as it is.
    // Folded without stopping early, so that the compiler checks many
    // bytes at once.
    let plain = text.bytes().fold(true, |plain, byte| {
        plain & (byte >= 0x20) & (byte != b'"') & (byte != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a vector cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// Appends `text` as a JSON string as [`string`] does, or `null` for none.
pub(crate) fn string_or_null(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `at` as a JSON string, as [`format_timestamp`] writes it.
fn timestamp(out: &mut Vec<u8>, at: &Timestamp) {
    match timestamp_text(at) {
        Some(text) => {
            // The text and its quotes, copied in one piece.
            let mut quoted = [b'"'; 34];
            quoted[1..33].copy_from_slice(text.as_bytes());
            out.extend_from_slice(&quoted);
        }
        None => string(out, &format_timestamp(at)),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
    use domain::{PipelineId, RunConf, RunId, RunStatus};
    use serde_json::json;

    use super::*;
    use crate::dto::RunBody;

    /// What the derived serialization writes of `runs`.
    fn derived(runs: &[Run]) -> Vec<u8> {
        let bodies: Vec<RunBody> = runs.iter().cloned().map(Into::into).collect();
        serde_json::to_vec(&bodies).unwrap()
    }

    fn instant(text: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn run(id: &str, status: RunStatus, at: Timestamp) -> Run {
        let pipeline = PipelineId::parse("0B6A3C5E-1F2D-4A7B-9C8D-7E6F5A4B3C2D").unwrap();
        let mut run = Run::new(RunId::parse(id).unwrap(), pipeline, status, at);
        run.updated_at = at + TimeDelta::microseconds(1_234_567);
        run
    }

    /// Runs of every status, with escapes, non-ASCII text, parameters,
    /// and instants at the edges of what is written quickly.
    fn runs() -> Vec<Run> {
        let at = instant("2024-12-18T10:30:00.000001+00:00");
        let mut failed = run("it \"quoted\" \\ and é ✓", RunStatus::Failed, at);
        failed.trace = Some("line one\nline\ttwo \"q\" \u{1f} ✓".to_owned());
        let mut with_conf = run(RunId::manual(&at).as_str(), RunStatus::Success, at);
        with_conf.conf = RunConf::parse(json!({
            "date": "2024-12-18", "note": "a \"quote\"\n", "n": [1, 2.5, -3e-7, null],
            "nested": {"é": true},
        }))
        .unwrap();
        // Made and not changed since: one instant, written twice.
        let mut unchanged = run("unchanged", RunStatus::Queued, at);
        unchanged.updated_at = unchanged.created_at;
        vec![
            run("queued", RunStatus::Queued, at),
            unchanged,
            run(
                "running",
                RunStatus::Running,
                instant("1970-01-01T00:00:00+00:00"),
            ),
            failed,
            with_conf,
            run(
                "y0",
                RunStatus::Success,
                instant("0000-01-01T00:00:00.999999+00:00"),
            ),
            run(
                "y9999",
                RunStatus::Success,
                instant("9999-12-31T23:59:59.999999+00:00"),
            ),
            run(
                "nanos",
                RunStatus::Success,
                instant("2026-12-01T20:30:00.123456789+00:00"),
            ),
        ]
    }

    #[test]
    fn runs_are_written_byte_for_byte_as_the_derived_serialization_writes_them() {
        let runs = runs();
        for one in &runs {
            let body = serde_json::to_vec(&RunBody::from(one.clone())).unwrap();
            assert_eq!(String::from_utf8(object(one)), String::from_utf8(body));
        }
        assert_eq!(
            String::from_utf8(array(&runs)).unwrap(),
            String::from_utf8(derived(&runs)).unwrap()
        );
        assert_eq!(array(&[]), b"[]");
    }

    #[test]
    fn a_page_of_runs_without_escapes_is_written_into_the_room_it_was_given_at_first() {
        let at = instant("2026-12-02T04:30:00.123456+00:00");
        let mut failed = run(RunId::manual(&at).as_str(), RunStatus::Failed, at);
        failed.trace = Some(Run::CANCELLED_TRACE.to_owned());
        let mut with_conf = run("scheduled__2026-12-02", RunStatus::Queued, at);
        with_conf.conf = RunConf::parse(json!({"date": "2026-12-02", "n": 1})).unwrap();
        let page: Vec<Run> = [
            run("running", RunStatus::Running, at),
            run("success", RunStatus::Success, at),
            failed,
            with_conf,
        ]
        .into_iter()
        .cycle()
        .take(100)
        .collect();
        let room = 2 + page.iter().map(size_guess).sum::<usize>();
        let written = array(&page);
        // Grown, the buffer would have doubled its room.
        assert_eq!(written.capacity(), room);
        assert_eq!(written, derived(&page));
        for one in &page {
            assert!(object(one).len() <= size_guess(one));
        }
    }

    #[test]
    fn an_escape_is_found_wherever_it_sits_in_a_run_id() {
        for len in [1, 15, 16, 17, 31, 32, 33, 41, 64] {
            for at in 0..len {
                for byte in [b'"', b'\\', b'\n', 0x00, 0x1f] {
                    let mut text = vec![b'a'; len];
                    text[at] = byte;
                    let text = String::from_utf8(text).unwrap();
                    let mut out = Vec::new();
                    string(&mut out, &text);
                    assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
                }
            }
            let plain = "a".repeat(len);
            let mut out = Vec::new();
            string(&mut out, &plain);
            assert_eq!(out, format!("\"{plain}\"").into_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_written_as_serde_json_writes_it(text in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = Vec::new();
            string(&mut out, &text);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    #[test]
    fn executes_answer_is_written_byte_for_byte_as_its_derived_serialization_writes_it() {
        for one in &runs() {
            let body = serde_json::to_vec(&crate::dto::ExecuteResponse::new(one)).unwrap();
            let written = execute(one);
            assert_eq!(String::from_utf8(written.clone()), String::from_utf8(body));
            // Sized at once: a 36-character pipeline id, and the run id
            // with its escapes.
            let escaped = serde_json::to_string(one.id.as_str()).unwrap().len() - 2;
            assert_eq!(written.len(), EXECUTE_BYTES + escaped);
        }
    }

    #[test]
    fn deliveries_hold_what_the_json_tree_held_with_the_run_as_the_api_writes_it() {
        let types = ["run.succeeded", "run.failed", "a \"b\""];
        for (one, event_type) in runs().iter().zip(types.iter().cycle()) {
            let tree = json!({
                "type": event_type,
                "timestamp": format_timestamp(&one.updated_at),
                "data": RunBody::from(one.clone()),
            });
            let body = delivery(event_type, one);
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                tree
            );
            let run = [br#"{"data":"#.as_slice(), &object(one), b","].concat();
            assert!(body.starts_with(&run), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn instants_outside_four_digit_years_and_leap_seconds_are_written_as_format_timestamp_writes_them()
     {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 1_500_000)
            .unwrap()
            .and_utc();
        let far = NaiveDate::from_ymd_opt(12_345, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap()
            .and_utc();
        let before = NaiveDate::from_ymd_opt(-1, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap()
            .and_utc();
        for at in [leap, far, before] {
            let mut unchanged = run("unchanged", RunStatus::Queued, at);
            unchanged.updated_at = at;
            let runs = [run("r", RunStatus::Success, at), unchanged];
            assert_eq!(array(&runs), derived(&runs), "{}", format_timestamp(&at));
        }
    }

    #[test]
    fn every_microsecond_of_a_second_and_every_second_of_a_day_is_written_alike() {
        let start = instant("2026-02-28T00:00:00+00:00");
        let runs: Vec<Run> = (0..86_400 * 2)
            .step_by(7)
            .map(|second| {
                let at = start
                    + TimeDelta::seconds(second)
                    + TimeDelta::microseconds(second * 13 % 1_000_000);
                run("r", RunStatus::Running, at)
            })
            .collect();
        assert_eq!(array(&runs), derived(&runs));
    }
}
