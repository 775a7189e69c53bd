//! The one error every port can raise: the backend itself failing.

use std::fmt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure a backend had; it decides the HTTP status (502, 503
/// or 504) and nothing else reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The backend refused the connection or could not be reached.
    Unavailable,
    /// The backend did not answer within the configured timeout.
    Timeout,
    /// The backend answered something unexpected: a 5xx, a malformed body,
    /// an unknown error type.
    Upstream,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "backend unavailable",
            Self::Timeout => "backend timed out",
            Self::Upstream => "unexpected backend answer",
        })
    }
}

/// A backend failure, with the context an operator needs in the log.
///
/// The context and source are for logs only: adapters that face clients
/// answer with a generic message chosen from [`BackendError::kind`].
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {context}")]
pub struct BackendError {
    kind: BackendErrorKind,
    context: String,
    #[source]
    source: Option<BoxError>,
}

impl BackendError {
    /// A failure of the given kind, described for the log.
    pub fn new(kind: BackendErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// The backend could not be reached.
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Unavailable, context)
    }

    /// The backend did not answer in time.
    pub fn timeout(context: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Timeout, context)
    }

    /// The backend answered something unexpected.
    pub fn upstream(context: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Upstream, context)
    }

    /// Attaches the underlying cause, kept for the log's cause chain.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }
}
