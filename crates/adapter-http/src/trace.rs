//! Tracing across the hop: each request's place in a W3C trace (the
//! caller's `traceparent` and `tracestate`, or a new trace), its trace id
//! on the request's span for the logs, and, when spans are exported
//! ([`crate::AppState::with_span_export`]), the OpenTelemetry side: the
//! request's span made the child of the caller's, and each backend call a
//! client span of its own ([`trace_repository`], [`trace_orchestrator`])
//! whose id the backend is given as its parent.
//!
//! Without export nothing here touches OpenTelemetry, and tracing adds no
//! layer: the ids are drawn at random in the step that also checks the
//! request id, and only the request's span and the backends see them.

use std::{cell::RefCell, str::FromStr as _, sync::Arc};

use async_trait::async_trait;
use axum::{
    extract::Request,
    http::{Extensions, HeaderMap, HeaderName},
};
use domain::{
    BackendError, CancelRunError, ExecuteError, GetPipelineError, GetRunError, ListRunsError,
    Orchestrator, Pipeline, PipelineId, PipelineRepository, PipelineSummary, RequestContext, Run,
    RunId, RunPage, RunQuery, SetPausedError, SpanId, TraceContext, TraceId, TraceParent,
    TriggerRequest,
};
use opentelemetry::trace::{self as otel, TraceContextExt as _};
use rand::{RngCore as _, SeedableRng as _, rngs::SmallRng};
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{instrument::Outcome, notes::RequestNotes};

/// The W3C `traceparent` header.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` header.
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The caller's place in its trace: its `traceparent` when the request
/// has exactly one and it is well-formed. A malformed one is no error: the
/// request starts a new trace.
fn caller(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let value = values.next()?;
    // Two parents make the request's place ambiguous: W3C says to start over.
    if values.next().is_some() {
        return None;
    }
    TraceParent::parse(value.as_bytes())
}

/// The caller's `tracestate`, its headers joined as one list; it only
/// counts beside a usable `traceparent`.
fn caller_state(headers: &HeaderMap) -> Option<String> {
    let mut values = headers
        .get_all(&TRACESTATE)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_owned(), |mut joined, next| {
        joined.push(',');
        joined.push_str(next);
        joined
    }))
}

/// Gives the request its place in its trace, before its span is made: the
/// caller's trace when it sent a usable `traceparent` (with its
/// `tracestate`), a new one otherwise, and a span id of Maestro's own,
/// drawn at random. The request's span logs the trace id, and
/// [`crate::extract::Authenticated`] hands the context to the backend.
/// When spans are exported, OpenTelemetry's ids replace these (see
/// [`adopt_caller`] and [`of_request`]).
pub(crate) fn start(request: &mut Request) {
    let parent = caller(request.headers());
    let mut trace = TraceContext::new(
        parent.map_or_else(random_trace_id, |parent| parent.trace_id()),
        random_span_id(),
        // A trace Maestro starts without recording it is marked so.
        parent.is_some_and(|parent| parent.is_sampled()),
    );
    if parent.is_some()
        && let Some(state) = caller_state(request.headers())
    {
        trace = trace.with_state(state);
    }
    RequestNotes::of_mut(request.extensions_mut()).trace = Some(trace);
}

/// The trace id [`start`] gave the request.
pub(crate) fn trace_id(extensions: &Extensions) -> Option<TraceId> {
    RequestNotes::of(extensions)?
        .trace
        .as_ref()
        .map(TraceContext::trace_id)
}

/// The request's place in its trace as the backend should see it: the one
/// [`start`] gave it or, when spans are exported, the ids of the current
/// span, the request's exported one.
pub(crate) fn of_request(extensions: &Extensions, exported: bool) -> Option<TraceContext> {
    let trace = RequestNotes::of(extensions)?.trace.as_ref()?;
    let Some((trace_id, span_id, sampled)) =
        exported.then(|| exported_ids(&Span::current())).flatten()
    else {
        return Some(trace.clone());
    };
    let exported = TraceContext::new(trace_id, span_id, sampled);
    Some(match trace.state() {
        Some(state) => exported.with_state(state),
        None => exported,
    })
}

thread_local! {
    /// Each thread's source of ids, seeded from the operating system: a
    /// fast generator, as OpenTelemetry's own `RandomIdGenerator` uses,
    /// rather than the cryptographic one, whose block refills were most of
    /// the cost of a request's three ids. Ids are unique, not secret;
    /// secrets (a webhook's) come from `rand::random`.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// Random bytes for an id: a trace or span id here, and the request id of
/// a request that came without one. Unique, not unpredictable: never for
/// a secret, a token or anything else whose guess would grant something
/// (ADR 0023).
pub(crate) fn random_id_bytes<const N: usize>() -> [u8; N] {
    IDS.with_borrow_mut(|ids| {
        let mut bytes = [0; N];
        ids.fill_bytes(&mut bytes);
        bytes
    })
}

/// A fresh trace id.
fn random_trace_id() -> TraceId {
    loop {
        if let Some(id) = TraceId::from_bytes(random_id_bytes()) {
            return id;
        }
    }
}

/// A fresh span id.
fn random_span_id() -> SpanId {
    loop {
        if let Some(id) = SpanId::from_bytes(random_id_bytes()) {
            return id;
        }
    }
}

/// Makes the request's span, about to be exported, the child of the
/// caller's span, or the root of a new trace when the caller sent none,
/// and logs its trace id. Must run before the span is first entered: the
/// span starts then.
pub(crate) fn adopt_caller(span: &Span, request: &Request) {
    let headers = request.headers();
    let parent = match caller(headers) {
        Some(parent) => remote(
            parent.trace_id(),
            parent.parent_id(),
            parent.is_sampled(),
            caller_state(headers).as_deref(),
        ),
        // Without it, the span would adopt whatever happens to be current.
        None => opentelemetry::Context::new(),
    };
    let _ = span.set_parent(parent);
    // Without an OpenTelemetry layer there is nothing to adopt: the ids are
    // then those `start` drew.
    let trace_id = exported_ids(span)
        .map(|(trace_id, _, _)| trace_id)
        .or_else(|| trace_id(request.extensions()));
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// An OpenTelemetry context whose span is another process's (or another
/// of Maestro's spans, for a backend call).
fn remote(
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    state: Option<&str>,
) -> opentelemetry::Context {
    let flags = if sampled {
        otel::TraceFlags::SAMPLED
    } else {
        otel::TraceFlags::default()
    };
    let state = state
        .and_then(|state| otel::TraceState::from_str(state).ok())
        .unwrap_or_default();
    opentelemetry::Context::new().with_remote_span_context(otel::SpanContext::new(
        otel::TraceId::from_bytes(trace_id.to_bytes()),
        otel::SpanId::from_bytes(span_id.to_bytes()),
        flags,
        true,
        state,
    ))
}

/// The trace id, span id and sampling decision OpenTelemetry gave `span`;
/// `None` when no OpenTelemetry layer records it.
fn exported_ids(span: &Span) -> Option<(TraceId, SpanId, bool)> {
    let context = span.context();
    let span = context.span();
    let ids = span.span_context();
    Some((
        TraceId::from_bytes(ids.trace_id().to_bytes())?,
        SpanId::from_bytes(ids.span_id().to_bytes())?,
        ids.is_sampled(),
    ))
}

/// Wraps a repository so that each call is an exported client span, the
/// child of the request's, and the backend is given that span as its
/// parent. Only for a service whose spans are exported.
pub fn trace_repository(inner: Arc<dyn PipelineRepository>) -> Arc<dyn PipelineRepository> {
    Arc::new(Traced { inner })
}

/// Wraps an orchestrator as [`trace_repository`] wraps a repository.
pub fn trace_orchestrator(inner: Arc<dyn Orchestrator>) -> Arc<dyn Orchestrator> {
    Arc::new(Traced { inner })
}

/// A port whose calls are spans.
#[derive(Debug)]
struct Traced<T: ?Sized> {
    inner: Arc<T>,
}

/// One backend call's span, and the request's context as the backend
/// should see it: with the call's span as Maestro's.
struct CallSpan {
    span: Span,
    ctx: Option<RequestContext>,
}

impl CallSpan {
    fn start(operation: &'static str, ctx: &RequestContext) -> Self {
        let span = tracing::info_span!(
            "backend call",
            otel.name = operation,
            otel.kind = "client",
            otel.status_code = Empty,
            operation,
            outcome = Empty,
        );
        let ctx = ctx.trace().and_then(|trace| {
            // The request's span is the parent: the current span when the
            // call is made in the request's task; named by its ids when it
            // is not (a poll made for everyone waiting on a run).
            let in_request = exported_ids(&Span::current())
                .is_some_and(|(_, current, _)| current == trace.span_id());
            if !in_request {
                let _ = span.set_parent(remote(
                    trace.trace_id(),
                    trace.span_id(),
                    trace.is_sampled(),
                    trace.state(),
                ));
            }
            let (_, span_id, _) = exported_ids(&span)?;
            Some(ctx.clone().with_trace(trace.with_span(span_id)))
        });
        Self { span, ctx }
    }

    /// The context to give the backend.
    fn ctx<'a>(&'a self, request: &'a RequestContext) -> &'a RequestContext {
        self.ctx.as_ref().unwrap_or(request)
    }

    /// Records how the call ended; a backend failure marks the span failed.
    fn end<R: Outcome>(&self, result: R) -> R {
        let outcome = result.outcome();
        self.span.record("outcome", outcome);
        if crate::instrument::is_failure(outcome) {
            self.span.record("otel.status_code", "ERROR");
        }
        result
    }
}

/// Runs a backend call's `future` in its span, and records how it ended.
async fn traced<R: Outcome>(call: &CallSpan, future: impl Future<Output = R>) -> R {
    call.end(future.instrument(call.span.clone()).await)
}

#[async_trait]
impl PipelineRepository for Traced<dyn PipelineRepository> {
    async fn get(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
    ) -> Result<Pipeline, GetPipelineError> {
        let call = CallSpan::start("get_pipeline", ctx);
        traced(&call, self.inner.get(call.ctx(ctx), id)).await
    }

    async fn list(&self, ctx: &RequestContext) -> Result<Vec<PipelineSummary>, BackendError> {
        let call = CallSpan::start("list_pipelines", ctx);
        traced(&call, self.inner.list(call.ctx(ctx))).await
    }

    async fn set_paused(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        paused: bool,
    ) -> Result<(), SetPausedError> {
        let call = CallSpan::start(if paused { "pause" } else { "unpause" }, ctx);
        traced(&call, self.inner.set_paused(call.ctx(ctx), id, paused)).await
    }
}

#[async_trait]
impl Orchestrator for Traced<dyn Orchestrator> {
    async fn trigger(
        &self,
        ctx: &RequestContext,
        request: &TriggerRequest,
    ) -> Result<Run, ExecuteError> {
        let call = CallSpan::start("execute", ctx);
        traced(&call, self.inner.trigger(call.ctx(ctx), request)).await
    }

    async fn list_runs(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        query: &RunQuery,
    ) -> Result<RunPage, ListRunsError> {
        let call = CallSpan::start("list_runs", ctx);
        traced(&call, self.inner.list_runs(call.ctx(ctx), id, query)).await
    }

    async fn get_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, GetRunError> {
        let call = CallSpan::start("get_run", ctx);
        traced(&call, self.inner.get_run(call.ctx(ctx), id, run_id)).await
    }

    async fn cancel_run(
        &self,
        ctx: &RequestContext,
        id: &PipelineId,
        run_id: &RunId,
    ) -> Result<Run, CancelRunError> {
        let call = CallSpan::start("cancel_run", ctx);
        traced(&call, self.inner.cancel_run(call.ctx(ctx), id, run_id)).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        // Readiness probes belong to no request: not worth a trace each.
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_drawn_in_turn_and_on_other_threads_all_differ() {
        let draw = || {
            (0..1_000)
                .map(|_| random_id_bytes::<16>())
                .collect::<Vec<_>>()
        };
        let other = std::thread::spawn(draw).join().unwrap();
        let ids: HashSet<_> = draw().into_iter().chain(other).collect();
        assert_eq!(ids.len(), 2_000);
        let span_ids: HashSet<_> = (0..1_000).map(|_| random_span_id()).collect();
        assert_eq!(span_ids.len(), 1_000);
    }
}
