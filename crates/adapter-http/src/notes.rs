//! What Maestro's layers note on a request for the handlers and for each
//! other: its id, its place in its trace and its deadline, kept in the
//! request's extensions as one value.
//!
//! One value rather than one each: every extension is a box and an entry
//! in a map, and axum adds two more (the matched path and the path's
//! parameters), so a fourth made the map grow on every request. Each part
//! is still set by its own layer, and read through that layer's functions
//! ([`crate::observe::request_id`], [`crate::trace::trace_id`],
//! [`crate::RequestDeadline`]).

use axum::http::Extensions;
use domain::TraceContext;
use tower_http::request_id::RequestId;

use crate::RequestDeadline;

/// What the layers noted on a request; a part not set yet is empty.
#[derive(Clone, Default)]
pub(crate) struct RequestNotes {
    /// Its correlation id, set by [`crate::observe`].
    pub(crate) id: Option<RequestId>,
    /// Its place in its trace, set by [`crate::trace::start`].
    pub(crate) trace: Option<TraceContext>,
    /// Its deadline, set by [`crate::edge`]; none outside the edge.
    pub(crate) deadline: RequestDeadline,
}

impl RequestNotes {
    /// The notes on a request, if any layer made one.
    pub(crate) fn of(extensions: &Extensions) -> Option<&Self> {
        extensions.get()
    }

    /// The notes on a request, made empty by the first layer to note.
    pub(crate) fn of_mut(extensions: &mut Extensions) -> &mut Self {
        extensions.get_or_insert_default()
    }
}
