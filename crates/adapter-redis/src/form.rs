//! The JSON this crate writes for runs, webhooks and deliveries: its own
//! forms, not the HTTP API's, so that what Redis holds changes only when
//! this crate says so. Readable with `redis-cli`; fields unknown to this
//! version are ignored, and fields it adds are optional, so that two
//! versions side by side during a rolling upgrade read each other's.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{
    CustomerId, Delivery, EventId, PipelineId, Run, RunConf, RunEvent, RunEventType, RunId,
    RunStatus, Timestamp, Webhook, WebhookId, WebhookSecret, WebhookUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A stored value could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unreadable(String, #[source] Option<BoxError>);

impl Unreadable {
    fn because(what: &str, err: impl Into<BoxError>) -> Self {
        Self(format!("invalid {what}"), Some(err.into()))
    }
}

/// An instant exactly as it was, to the nanosecond, in RFC 3339 UTC.
pub(crate) fn instant(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn read_instant(raw: &str) -> Result<Timestamp, Unreadable> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| Unreadable::because("instant", err))
}

/// A run: `{"id", "pipeline_id", "status", "created_at", "updated_at",
/// "trace"?, "conf"?}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunForm {
    id: String,
    pipeline_id: String,
    status: String,
    created_at: String,
    updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    conf: Map<String, Value>,
}

impl From<&Run> for RunForm {
    fn from(run: &Run) -> Self {
        Self {
            id: run.id.as_str().to_owned(),
            pipeline_id: run.pipeline_id.as_str().to_owned(),
            status: run.status.as_str().to_owned(),
            created_at: instant(&run.created_at),
            updated_at: instant(&run.updated_at),
            trace: run.trace.clone(),
            conf: run.conf.as_map().clone(),
        }
    }
}

impl TryFrom<RunForm> for Run {
    type Error = Unreadable;

    fn try_from(form: RunForm) -> Result<Self, Unreadable> {
        let mut run = Run::new(
            RunId::parse(&form.id).map_err(|err| Unreadable::because("run id", err))?,
            PipelineId::parse(&form.pipeline_id)
                .map_err(|err| Unreadable::because("pipeline id", err))?,
            RunStatus::parse(&form.status).map_err(|err| Unreadable::because("status", err))?,
            read_instant(&form.created_at)?,
        );
        run.updated_at = read_instant(&form.updated_at)?;
        run.trace = form.trace;
        // What was stored was a run's conf already: taken as it is.
        run.conf = RunConf::from_engine(form.conf);
        Ok(run)
    }
}

/// A run as JSON.
pub(crate) fn run_json(run: &Run) -> String {
    // Strings and JSON values into a String cannot fail.
    serde_json::to_string(&RunForm::from(run)).unwrap_or_default()
}

/// A run read back from [`run_json`].
pub(crate) fn read_run(json: &str) -> Result<Run, Unreadable> {
    let form: RunForm =
        serde_json::from_str(json).map_err(|err| Unreadable::because("run JSON", err))?;
    Run::try_from(form)
}

pub(crate) fn read_customer(raw: &str) -> Result<CustomerId, Unreadable> {
    CustomerId::parse(raw).map_err(|err| Unreadable::because("customer id", err))
}

/// A webhook: `{"id", "customer", "url", "events", "pipeline_ids",
/// "secret" (its 32 bytes in standard base64), "created_at"}`.
#[derive(Debug, Serialize, Deserialize)]
struct WebhookForm {
    id: String,
    customer: String,
    url: String,
    events: Vec<String>,
    #[serde(default)]
    pipeline_ids: Vec<String>,
    secret: String,
    created_at: String,
}

pub(crate) fn webhook_json(webhook: &Webhook) -> String {
    let form = WebhookForm {
        id: webhook.id.as_str().to_owned(),
        customer: webhook.customer.as_str().to_owned(),
        url: webhook.url.as_str().to_owned(),
        events: webhook
            .events
            .iter()
            .map(|kind| kind.as_str().to_owned())
            .collect(),
        pipeline_ids: webhook
            .pipeline_ids
            .iter()
            .map(|id| id.as_str().to_owned())
            .collect(),
        secret: STANDARD.encode(webhook.secret.bytes()),
        created_at: instant(&webhook.created_at),
    };
    serde_json::to_string(&form).unwrap_or_default()
}

pub(crate) fn read_webhook(json: &str) -> Result<Webhook, Unreadable> {
    let form: WebhookForm =
        serde_json::from_str(json).map_err(|err| Unreadable::because("webhook JSON", err))?;
    let secret: [u8; 32] = STANDARD
        .decode(&form.secret)
        .map_err(|err| Unreadable::because("webhook secret", err))?
        .try_into()
        .map_err(|_| Unreadable("a webhook secret not of 32 bytes".to_owned(), None))?;
    let events = form
        .events
        .iter()
        .map(|kind| RunEventType::parse(kind))
        .collect::<Result<_, _>>()
        .map_err(|err| Unreadable::because("event type", err))?;
    let pipeline_ids = form
        .pipeline_ids
        .iter()
        .map(|id| PipelineId::parse(id))
        .collect::<Result<_, _>>()
        .map_err(|err| Unreadable::because("pipeline id", err))?;
    let mut webhook = Webhook::new(
        WebhookId::parse(&form.id).map_err(|err| Unreadable::because("webhook id", err))?,
        read_customer(&form.customer)?,
        // A stored URL was checked at registration; http:// was allowed
        // then, or it would not be stored.
        WebhookUrl::parse(&form.url, true)
            .map_err(|err| Unreadable::because("webhook url", err))?,
        WebhookSecret::new(secret),
        read_instant(&form.created_at)?,
    );
    webhook.events = events;
    webhook.pipeline_ids = pipeline_ids;
    Ok(webhook)
}

/// What a delivery is, apart from its attempts and when it is due, which
/// change and are kept beside it: `{"webhook", "customer", "event": {"id",
/// "customer", "run"}, "first_due"}`.
#[derive(Debug, Serialize, Deserialize)]
struct DeliveryForm {
    webhook: String,
    customer: String,
    event: EventForm,
    first_due: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct EventForm {
    id: String,
    customer: String,
    run: RunForm,
}

pub(crate) fn delivery_json(delivery: &Delivery) -> String {
    let form = DeliveryForm {
        webhook: delivery.webhook.as_str().to_owned(),
        customer: delivery.customer.as_str().to_owned(),
        event: EventForm {
            id: delivery.event.id.as_str().to_owned(),
            customer: delivery.event.change.customer.as_str().to_owned(),
            run: RunForm::from(&delivery.event.change.run),
        },
        first_due: instant(&delivery.first_due),
    };
    serde_json::to_string(&form).unwrap_or_default()
}

/// A delivery read back from [`delivery_json`], with no attempt made yet
/// and due when it was first due: the caller sets what is kept beside it.
pub(crate) fn read_delivery(json: &str) -> Result<Delivery, Unreadable> {
    let form: DeliveryForm =
        serde_json::from_str(json).map_err(|err| Unreadable::because("delivery JSON", err))?;
    let change = domain::RunChange::new(
        read_customer(&form.event.customer)?,
        Run::try_from(form.event.run)?,
    );
    Ok(Delivery::stored(
        WebhookId::parse(&form.webhook).map_err(|err| Unreadable::because("webhook id", err))?,
        read_customer(&form.customer)?,
        RunEvent::new(
            EventId::parse(&form.event.id).map_err(|err| Unreadable::because("event id", err))?,
            change,
        ),
        read_instant(&form.first_due)?,
    ))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use domain::RunChange;
    use serde_json::json;

    use super::*;

    fn at(seconds: i64, nanos: u32) -> Timestamp {
        Utc.timestamp_opt(1_734_517_800 + seconds, nanos).unwrap()
    }

    fn pipeline() -> PipelineId {
        PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap()
    }

    /// A run with every field set, instants to the nanosecond, and a conf
    /// of every kind of JSON value.
    fn full_run() -> Run {
        let mut run = Run::new(
            RunId::parse("scheduled__2024-12-18T10:30:00+00:00 é").unwrap(),
            pipeline(),
            RunStatus::Failed,
            at(0, 123_456_789),
        );
        run.updated_at = at(90, 1);
        run.trace = Some("Cancelled through the API\n\"quoted\"".to_owned());
        run.conf = RunConf::parse(json!({
            "date": "2024-12-18",
            "full_refresh": true,
            "n": 18_446_744_073_709_551_615_u64,
            "x": -1.5,
            "nested": {"list": [1, null, "two"]},
        }))
        .unwrap();
        run
    }

    #[test]
    fn a_run_reads_back_exactly_whatever_it_holds() {
        let run = full_run();
        assert_eq!(read_run(&run_json(&run)).unwrap(), run);
        let bare = Run::new(
            RunId::manual(&at(0, 0)),
            pipeline(),
            RunStatus::Queued,
            at(0, 0),
        );
        assert_eq!(read_run(&run_json(&bare)).unwrap(), bare);
    }

    #[test]
    fn a_run_is_stored_as_readable_json_without_empty_fields() {
        let run = Run::new(
            RunId::manual(&at(0, 0)),
            pipeline(),
            RunStatus::Success,
            at(0, 500_000_000),
        );
        assert_eq!(
            run_json(&run),
            r#"{"id":"manual__2024-12-18T10:30:00.000000+00:00","pipeline_id":"1b33ad2f_33d3_4837_9eeb_83c82c8b909d","status":"SUCCESS","created_at":"2024-12-18T10:30:00.500Z","updated_at":"2024-12-18T10:30:00.500Z"}"#
        );
    }

    #[test]
    fn a_run_written_by_a_later_version_with_more_fields_still_reads() {
        let json = r#"{"id":"r1","pipeline_id":"1b33ad2f_33d3_4837_9eeb_83c82c8b909d","status":"RUNNING","created_at":"2024-12-18T10:30:00Z","updated_at":"2024-12-18T10:30:00Z","owner":"someone"}"#;
        let run = read_run(json).unwrap();
        assert_eq!(run.status, RunStatus::Running);
        assert!(run.conf.is_empty());
    }

    #[test]
    fn an_unreadable_run_says_what_is_wrong() {
        let err = read_run(r#"{"id":"r1"}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid run JSON");
        let json = run_json(&full_run()).replace("FAILED", "EXPLODED");
        assert_eq!(read_run(&json).unwrap_err().to_string(), "invalid status");
    }

    fn webhook() -> Webhook {
        let mut webhook = Webhook::new(
            WebhookId::new([0xab; 16]),
            CustomerId::parse("acme").unwrap(),
            WebhookUrl::parse("https://hooks.example/maestro?x=1", false).unwrap(),
            WebhookSecret::new(std::array::from_fn(|n| u8::try_from(n).unwrap())),
            at(5, 7),
        );
        webhook.events = vec![RunEventType::Succeeded, RunEventType::Failed];
        webhook.pipeline_ids = vec![pipeline()];
        webhook
    }

    #[test]
    fn a_webhook_reads_back_exactly_with_its_secret_in_base64() {
        let webhook = webhook();
        let json = webhook_json(&webhook);
        assert!(
            json.contains(r#""secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=""#),
            "{json}"
        );
        assert!(
            json.contains(r#""events":["run.succeeded","run.failed"]"#),
            "{json}"
        );
        assert_eq!(read_webhook(&json).unwrap(), webhook);
        let short = json.replace("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "AAEC");
        assert!(read_webhook(&short).is_err());
    }

    #[test]
    fn a_delivery_reads_back_exactly() {
        let event = RunEvent::new(
            EventId::parse("1734517800000-3").unwrap(),
            RunChange::new(CustomerId::parse("acme").unwrap(), full_run()),
        );
        let delivery = Delivery::new(&webhook(), event, at(10, 42));
        assert_eq!(read_delivery(&delivery_json(&delivery)).unwrap(), delivery);
    }
}
