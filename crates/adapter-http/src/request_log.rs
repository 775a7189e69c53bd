//! What the log says of the request being answered, without a `tracing`
//! span: its method, route, request id and trace id, and the customer,
//! pipeline and run that the handlers record as they learn them.
//!
//! Every line logged while a request is answered names it, and so does its
//! access line. A span per request carried that context; made, filled and
//! closed by the log's library, it was some 8,000 of the 13,600
//! instructions that the access log added to an execute. The context is
//! now a value of the request's own task (a task-local); the log's line
//! formats read it where they would have read the span ([`current`]), and
//! write the same bytes.
//!
//! Where a format that only reads spans writes the lines (the library's
//! coloured text), or spans are exported, the request is a span, as before
//! ([`crate::AppState::with_request_spans`]). The handlers record the
//! customer, pipeline and run into whichever the request has.

use std::cell::RefCell;

use axum::{
    extract::MatchedPath,
    http::{HeaderValue, Method},
};
use domain::TraceId;
use tracing::{Instrument as _, Span};

tokio::task_local! {
    /// The context of the request whose task this is, unless the request
    /// is a span or the log does not need it.
    static REQUEST: Option<RequestLog>;
}

/// The log's context of one request; see the module's documentation.
#[derive(Debug, Clone)]
pub struct RequestLog {
    method: Method,
    route: Option<MatchedPath>,
    request_id: HeaderValue,
    trace_id: Option<TraceId>,
    learned: RefCell<Learned>,
}

/// What the handlers record, listed in the order every route learns it.
#[derive(Debug, Clone, Default)]
struct Learned {
    customer: Option<Box<str>>,
    pipeline_id: Option<Box<str>>,
    run_id: Option<Box<str>>,
}

/// One field's value, as the log writes it.
#[derive(Debug, Clone, Copy)]
pub enum LogValue<'a> {
    /// Written as it is (`method=POST`): the method, the trace id.
    Bare(&'a str),
    /// A string, quoted and escaped as `{:?}` writes it (`customer="acme"`).
    Text(&'a str),
}

impl RequestLog {
    pub(crate) fn new(
        method: Method,
        route: Option<MatchedPath>,
        request_id: HeaderValue,
        trace_id: Option<TraceId>,
    ) -> Self {
        Self {
            method,
            route,
            request_id,
            trace_id,
            learned: RefCell::default(),
        }
    }

    /// The span's name that this context stands for.
    pub const NAME: &'static str = "request";

    /// Gives each field to `each`, in the order the request's span listed
    /// them: method, route, request id and trace id, then what the handlers
    /// learned so far. The first error stops it.
    ///
    /// # Errors
    /// The first error `each` returns.
    pub fn fields<E>(
        &self,
        mut each: impl FnMut(&'static str, LogValue<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        each("method", LogValue::Bare(self.method.as_str()))?;
        let route = self.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        each("route", LogValue::Text(route))?;
        each(
            "request_id",
            LogValue::Text(self.request_id.to_str().unwrap_or_default()),
        )?;
        if let Some(trace_id) = &self.trace_id {
            each("trace_id", LogValue::Bare(trace_id.hex().as_str()))?;
        }
        // A line logged while a field is being recorded (there is none)
        // would go without what was learned.
        let Ok(learned) = self.learned.try_borrow() else {
            return Ok(());
        };
        for (name, value) in [
            ("customer", &learned.customer),
            ("pipeline_id", &learned.pipeline_id),
            ("run_id", &learned.run_id),
        ] {
            if let Some(value) = value {
                each(name, LogValue::Text(value))?;
            }
        }
        Ok(())
    }
}

/// The route of requests that match none.
pub(crate) const UNMATCHED: &str = "unmatched";

/// Runs `f` on the context of the request whose task calls it; `None`
/// outside a request, or in one that is a span.
pub fn current<R>(f: impl FnOnce(&RequestLog) -> R) -> Option<R> {
    REQUEST.try_with(|log| log.as_ref().map(f)).ok().flatten()
}

/// `future`, answering a request in the context `log`.
pub(crate) fn scope<F: Future>(
    log: Option<RequestLog>,
    future: F,
) -> impl Future<Output = F::Output> {
    REQUEST.scope(log, future)
}

/// `task`, run in the log context of the request that calls this, for a
/// task that may go on apart from the request's: in the request's span,
/// or with a copy of its [`RequestLog`] as it is now.
pub(crate) fn carried<F: Future>(task: F) -> impl Future<Output = F::Output> {
    scope(current(RequestLog::clone), task.instrument(Span::current()))
}

/// Records the verified customer of the request being answered.
pub(crate) fn record_customer(customer: &str) {
    record("customer", customer, |learned| &mut learned.customer);
}

/// Records the pipeline of the request being answered.
pub(crate) fn record_pipeline(pipeline_id: &str) {
    record("pipeline_id", pipeline_id, |learned| {
        &mut learned.pipeline_id
    });
}

/// Records the run of the request being answered.
pub(crate) fn record_run(run_id: &str) {
    record("run_id", run_id, |learned| &mut learned.run_id);
}

/// Records `value` into the request's context, or into its span when it
/// is one.
fn record(
    name: &'static str,
    value: &str,
    slot: impl FnOnce(&mut Learned) -> &mut Option<Box<str>>,
) {
    let recorded = REQUEST.try_with(|log| {
        let Some(log) = log else { return false };
        if let Ok(mut learned) = log.learned.try_borrow_mut() {
            *slot(&mut learned) = Some(value.into());
        }
        true
    });
    if recorded != Ok(true) {
        Span::current().record(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> RequestLog {
        RequestLog::new(
            Method::POST,
            None,
            HeaderValue::from_static("req-1"),
            TraceId::from_bytes([7; 16]),
        )
    }

    /// The fields as `name=value`, shown ones bare and texts quoted.
    fn written(log: &RequestLog) -> String {
        let mut text = Vec::new();
        log.fields(|name, value| {
            text.push(match value {
                LogValue::Bare(value) => format!("{name}={value}"),
                LogValue::Text(value) => format!("{name}={value:?}"),
            });
            Ok::<_, ()>(())
        })
        .unwrap();
        text.join(" ")
    }

    #[tokio::test]
    async fn fields_are_given_in_the_spans_order_with_what_was_learned() {
        let fields = scope(Some(log()), async {
            record_run("manual__1");
            record_customer("acme");
            record_pipeline("p_1");
            current(written)
        })
        .await;
        assert_eq!(
            fields.as_deref(),
            Some(
                "method=POST route=\"unmatched\" request_id=\"req-1\" \
                 trace_id=07070707070707070707070707070707 customer=\"acme\" \
                 pipeline_id=\"p_1\" run_id=\"manual__1\""
            )
        );
        assert_eq!(current(written), None, "no context outside a request");
    }

    #[tokio::test]
    async fn a_carried_task_has_the_request_as_it_was_in_a_task_of_its_own() {
        let (in_task, after) = scope(Some(log()), async {
            record_customer("acme");
            let task = carried(async { current(written) });
            record_pipeline("p_1");
            let in_task = tokio::spawn(task).await.unwrap();
            (in_task, current(written))
        })
        .await;
        let in_task = in_task.expect("the task has the request's context");
        assert!(in_task.ends_with("customer=\"acme\""), "{in_task}");
        assert!(after.unwrap().ends_with("pipeline_id=\"p_1\""));
        // Outside a request, a carried task runs as it is.
        assert_eq!(carried(async { current(written) }).await, None);
    }
}
