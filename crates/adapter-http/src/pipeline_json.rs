//! Pipelines written as JSON by hand for list pipelines: the
//! PIPELINE_SUMMARY objects of
//! [`PipelineSummaryBody`](crate::dto::PipelineSummaryBody), byte for byte
//! what their derived serialization writes (the tests compare the two), as
//! runs are in [`run_json`](crate::run_json) (ADR 0018). A customer's
//! 1,000 pipelines took some 4,000 instructions each through the derived
//! path: every id copied into a string of its own through `Display` and
//! dropped again, and every key and value escaped a byte at a time. Here
//! the keys and the pipeline id are written as they are, and the texts
//! are copied at once unless they hold something to escape.

use domain::{PipelineSummary, RunStatus};

use crate::run_json::{array_of, string, string_or_null};

/// What one pipeline takes as JSON besides its texts and jobs, at most:
/// its keys and punctuation, the pipeline id, the quotes of three texts,
/// `null` for no schedule, the longest status and the comma before the
/// next. With the texts' lengths added, the buffer is sized once unless a
/// text needs escapes or the pipeline has jobs.
const PIPELINE_BYTES: usize = 145;

/// `pipelines` as a JSON array of PIPELINE_SUMMARY objects.
pub(crate) fn array(pipelines: &[PipelineSummary]) -> Vec<u8> {
    array_of(pipelines, size_guess, write)
}

fn size_guess(summary: &PipelineSummary) -> usize {
    let pipeline = &summary.pipeline;
    PIPELINE_BYTES
        + pipeline.customer_id.as_str().len()
        + pipeline.name.len()
        + pipeline.description.len()
        + pipeline.cron.as_ref().map_or(0, String::len)
}

/// Appends `summary` as a PIPELINE_SUMMARY object, its fields in
/// [`PipelineSummaryBody`]'s order.
///
/// [`PipelineSummaryBody`]: crate::dto::PipelineSummaryBody
fn write(out: &mut Vec<u8>, summary: &PipelineSummary) {
    let pipeline = &summary.pipeline;
    // A pipeline id is lowercase hexadecimal digits and underscores.
    out.extend_from_slice(br#"{"pipeline_id":""#);
    out.extend_from_slice(pipeline.id.as_bytes());
    out.extend_from_slice(br#"","customer_id":"#);
    string(out, pipeline.customer_id.as_str());
    out.extend_from_slice(br#","name":"#);
    string(out, &pipeline.name);
    out.extend_from_slice(br#","description":"#);
    string(out, &pipeline.description);
    out.extend_from_slice(br#","cron":"#);
    string_or_null(out, pipeline.cron.as_deref());
    out.extend_from_slice(br#","last_status":"#);
    string_or_null(out, summary.last_status.map(RunStatus::as_str));
    // Jobs are the backend's own JSON, passed through as serde_json writes
    // them.
    out.extend_from_slice(br#","jobs":["#);
    for (index, job) in pipeline.jobs.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        // Writing a value into a vector cannot fail.
        let _ = serde_json::to_writer(&mut *out, job);
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use domain::{CustomerId, Pipeline, PipelineId, Timestamp};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::dto::PipelineSummaryBody;

    /// What the derived serialization writes of `pipelines`.
    fn derived(pipelines: &[PipelineSummary]) -> Vec<u8> {
        let bodies: Vec<PipelineSummaryBody> = pipelines.iter().cloned().map(Into::into).collect();
        serde_json::to_vec(&bodies).unwrap()
    }

    fn created() -> Timestamp {
        DateTime::parse_from_rfc3339("2024-12-18T10:30:00+00:00")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn pipeline(customer: &str, name: &str) -> Pipeline {
        let id = PipelineId::parse("0B6A3C5E-1F2D-4A7B-9C8D-7E6F5A4B3C2D").unwrap();
        Pipeline::new(id, CustomerId::parse(customer).unwrap(), name, created())
    }

    /// Pipelines of every status and none, with and without a schedule,
    /// with jobs, escapes and text beyond ASCII.
    fn pipelines() -> Vec<PipelineSummary> {
        let mut described = pipeline("acme", "nightly \"load\" \\ é ✓");
        described.description = "line one\nline\ttwo \u{1f} \u{7f} ✓".to_owned();
        described.cron = Some("0 3 * * *".to_owned());
        let mut with_jobs = pipeline("customer \"two\" ✓", "");
        with_jobs.jobs = vec![
            json!({"name": "extract", "image": "etl:1.2", "args": ["--since", "a \"quote\"\n"]}),
            json!({"nested": {"é": [1, 2.5, -3e-7, null, true]}}),
            json!("just text"),
        ];
        with_jobs.cron = Some(String::new());
        let mut summaries = vec![
            PipelineSummary::new(pipeline("acme", "never ran"), None),
            PipelineSummary::new(described, Some(RunStatus::Failed)),
            PipelineSummary::new(with_jobs, Some(RunStatus::Queued)),
        ];
        summaries.extend(
            RunStatus::ALL.into_iter().map(|status| {
                PipelineSummary::new(pipeline("acme", status.as_str()), Some(status))
            }),
        );
        summaries
    }

    #[test]
    fn a_listing_is_written_byte_for_byte_as_its_derived_serialization() {
        let pipelines = pipelines();
        assert_eq!(
            String::from_utf8(array(&pipelines)).unwrap(),
            String::from_utf8(derived(&pipelines)).unwrap()
        );
        for one in &pipelines {
            let one = std::slice::from_ref(one);
            assert_eq!(array(one), derived(one));
        }
        assert_eq!(array(&[]), b"[]");
    }

    #[test]
    fn a_listing_without_escapes_or_jobs_is_sized_once() {
        let pipelines: Vec<_> = RunStatus::ALL
            .into_iter()
            .map(|status| {
                let mut pipeline = pipeline("a-customer", "a name");
                pipeline.description = "what it does".to_owned();
                pipeline.cron = Some("*/5 * * * *".to_owned());
                PipelineSummary::new(pipeline, Some(status))
            })
            .collect();
        let guess = 2 + pipelines.iter().map(size_guess).sum::<usize>();
        let written = array(&pipelines);
        assert!(written.len() <= guess, "{} > {guess}", written.len());
        // Over by at most a byte of status, two of a schedule's quotes
        // against `null`, and the last comma, a pipeline.
        assert!(
            guess - written.len() <= 4 * pipelines.len(),
            "{guess} for {}",
            written.len()
        );
    }

    proptest! {
        #[test]
        fn any_texts_are_written_as_the_derived_serialization_writes_them(
            customer in "[^\\p{Cc}\\p{Cf}]{1,40}",
            name in any::<String>(),
            description in any::<String>(),
            cron in proptest::option::of(any::<String>()),
            status in proptest::option::of(proptest::sample::select(RunStatus::ALL.to_vec())),
        ) {
            let mut one = pipeline(&customer, &name);
            one.description = description;
            one.cron = cron;
            let pipelines = [PipelineSummary::new(one, status)];
            prop_assert_eq!(array(&pipelines), derived(&pipelines));
        }
    }
}
