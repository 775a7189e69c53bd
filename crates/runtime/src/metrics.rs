//! [`WebhookMetrics`]: what the webhook loops tell the service's metrics,
//! implemented by the binary (which owns the Prometheus registry).

use std::{fmt, time::Duration};

/// How one delivery attempt ended, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx: the delivery is done.
    Delivered,
    /// The endpoint failed (not 2xx, too slow, unreachable): retried later.
    Failed,
    /// The endpoint may not be called (it resolves to a forbidden address):
    /// retried later, in case that changes.
    Refused,
    /// The delivery failed for a day: dropped. Counted besides the
    /// `failed` or `refused` of its last attempt.
    GivenUp,
    /// The webhook was deleted before the delivery was made: dropped
    /// without an attempt.
    Dropped,
}

impl DeliveryOutcome {
    /// The label: `delivered`, `failed`, `refused`, `given_up` or
    /// `dropped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::GivenUp => "given_up",
            Self::Dropped => "dropped",
        }
    }
}

impl fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the webhook loops report: called from their tasks, so cheap and
/// never blocking (a counter's increment, a gauge's set).
pub trait WebhookMetrics: Send + Sync + fmt::Debug {
    /// One delivery attempt ended so (or a delivery was dropped).
    fn delivery(&self, outcome: DeliveryOutcome);

    /// The deliveries waiting, cluster-wide, and how long ago the oldest
    /// of them was first due (`None` when none waits); read by every
    /// [`DeliveryWorker`](crate::deliver::DeliveryWorker) every
    /// [`DeliveryWorker::PENDING_EVERY`](crate::deliver::DeliveryWorker::PENDING_EVERY).
    fn pending(&self, count: usize, oldest_age: Option<Duration>);

    /// The dispatcher fell behind the event log's retention: events were
    /// never turned into deliveries.
    fn dispatch_gap(&self);
}

/// Metrics that go nowhere: the default of the loops.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMetrics;

impl WebhookMetrics for NoMetrics {
    fn delivery(&self, _: DeliveryOutcome) {}
    fn pending(&self, _: usize, _: Option<Duration>) {}
    fn dispatch_gap(&self) {}
}
