//! [`Dispatcher`]: the loop that turns the feed's events into webhook
//! deliveries, on the instance that holds the feed's lease.
//!
//! It reads the [`EventLog`] after where the [`DeliveryQueue`] says
//! dispatching stopped, and for each page of events enqueues one
//! [`Delivery`] per webhook that wants an event, recording the page's last
//! event as dispatched in the same atomic step, even when no webhook
//! wanted any. A crash between two pages loses nothing (the next holder
//! reads on from the queue's record) and doubles nothing (the queue adds a
//! delivery id once).
//!
//! While no customer has a webhook, the log is not read page by page: the
//! dispatcher waits for a next event, then records the log's head as
//! dispatched in one step.
//!
//! Why only on the lease holder: the record of what was dispatched is one
//! position, so two dispatchers would move it back and forth, and a
//! delivery made and forgotten already would be enqueued again. Over a
//! change of holder the two may overlap for a moment: a delivery may then
//! be made twice, which "at least once" allows and the `webhook-id` lets a
//! receiver see.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use domain::{
    Clock, CustomerId, Delivery, DeliveryQueue, EventId, EventLog, FeedRead, RunEvent,
    StorageError, Webhook, WebhookStore,
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::sleep,
};

use crate::{
    feed::Leadership,
    metrics::{NoMetrics, WebhookMetrics},
    pace::{Backoff, stopped},
};

/// Turns the feed's events into deliveries while this instance holds the
/// feed's lease.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn wire(
/// #     pump: &runtime::feed::FeedPump,
/// #     log: Arc<dyn domain::EventLog>,
/// #     webhooks: Arc<dyn domain::WebhookStore>,
/// #     queue: Arc<dyn domain::DeliveryQueue>,
/// #     shutdown: tokio::sync::watch::Receiver<bool>,
/// # ) {
/// use runtime::{TokioClock, dispatch::Dispatcher};
///
/// let dispatching = Dispatcher::new(log, webhooks, queue, Arc::new(TokioClock::start()), pump.leadership())
///     .spawn(shutdown);
/// # }
/// ```
pub struct Dispatcher {
    log: Arc<dyn EventLog>,
    webhooks: Arc<dyn WebhookStore>,
    queue: Arc<dyn DeliveryQueue>,
    clock: Arc<dyn Clock>,
    leadership: Leadership,
    metrics: Arc<dyn WebhookMetrics>,
    /// Notified after a page that made deliveries.
    enqueued: Option<Arc<Notify>>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("leading", &self.leadership.is_held())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// Why the dispatcher stopped leading.
enum End {
    Stopped,
    Lost,
}

impl Dispatcher {
    /// The most events read, and dispatched in one atomic step, at once.
    pub const PAGE: usize = 100;

    /// How long one read of the log waits for an event before it asks
    /// again (and looks at the lease and shutdown meanwhile anyway).
    pub const READ_WAIT: Duration = Duration::from_secs(5);

    /// How long events gather after a page shorter than [`Self::PAGE`]
    /// before the log is read again: under load one read, one look-up of
    /// each customer's webhooks and one enqueue carry every event of the
    /// window, rather than each event waking the dispatcher on its own.
    /// A delivery is late by at most this much.
    pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

    /// A dispatcher reading `log`, matching against `webhooks`, enqueuing
    /// in `queue` with deliveries first due at `clock`'s now, while
    /// `leadership` is held.
    pub fn new(
        log: Arc<dyn EventLog>,
        webhooks: Arc<dyn WebhookStore>,
        queue: Arc<dyn DeliveryQueue>,
        clock: Arc<dyn Clock>,
        leadership: Leadership,
    ) -> Self {
        Self {
            log,
            webhooks,
            queue,
            clock,
            leadership,
            metrics: Arc::new(NoMetrics),
            enqueued: None,
        }
    }

    /// Notifies `enqueued` after each page that made deliveries: a
    /// [`DeliveryWorker`](crate::deliver::DeliveryWorker) of the same
    /// process given it with
    /// [`with_wake`](crate::deliver::DeliveryWorker::with_wake) takes them
    /// at once rather than at its next poll.
    #[must_use]
    pub fn with_wake(mut self, enqueued: Arc<Notify>) -> Self {
        self.enqueued = Some(enqueued);
        self
    }

    /// Counts gaps (see [`WebhookMetrics::dispatch_gap`]) in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<dyn WebhookMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs the dispatcher on its own task until `shutdown` (see
    /// [`Dispatcher::run`]).
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Dispatches while the lease is held, waits while it is not. Returns
    /// once `true` is sent on `shutdown` (or its sender is dropped); a page
    /// half done is simply done again by the next holder.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                () = self.leadership.acquired() => {}
            }
            match self.lead(&mut shutdown, &mut backoff).await {
                End::Stopped => break,
                End::Lost => tracing::info!("the feed's lease went elsewhere: not dispatching"),
            }
        }
        tracing::info!("the webhook dispatcher stopped");
    }

    /// Dispatches page after page until the lease is lost or shutdown.
    async fn lead(&mut self, shutdown: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> End {
        // Where dispatching resumes: `None` until read from the queue, and
        // read again after any failure, in case the failed step was done
        // after all.
        let mut after: Option<Option<EventId>> = None;
        // Whether no customer had a webhook at the last look: the log is
        // then only watched for a next event (a page of one), not read.
        let mut unwatched = false;
        loop {
            let step = match after.clone() {
                None => self.queue.dispatched().await,
                Some(from) => {
                    let page = if unwatched { 1 } else { Self::PAGE };
                    let read = tokio::select! {
                        biased;
                        () = stopped(shutdown) => return End::Stopped,
                        () = self.leadership.lost() => return End::Lost,
                        read = self.log.read(from.clone(), page, Self::READ_WAIT) => read,
                    };
                    match read {
                        Ok(read) => {
                            let short = matches!(&read, FeedRead::Events(events) if !events.is_empty() && events.len() < Self::PAGE);
                            let advanced = match self.skip_unwatched(&read).await {
                                Ok(Some(head)) => {
                                    unwatched = true;
                                    Ok(Some(head))
                                }
                                Ok(None) => {
                                    unwatched = false;
                                    self.advance(from, read).await
                                }
                                Err(err) => Err(err),
                            };
                            if short && advanced.is_ok() {
                                tokio::select! {
                                    biased;
                                    () = stopped(shutdown) => return End::Stopped,
                                    () = self.leadership.lost() => return End::Lost,
                                    () = sleep(Self::BATCH_WINDOW) => {}
                                }
                            }
                            advanced
                        }
                        Err(err) => Err(err),
                    }
                }
            };
            match step {
                Ok(position) => {
                    after = Some(position);
                    backoff.reset();
                }
                Err(err) => {
                    after = None;
                    tracing::warn!(error = %err, "the webhook dispatcher failed; trying again");
                    tokio::select! {
                        biased;
                        () = stopped(shutdown) => return End::Stopped,
                        () = self.leadership.lost() => return End::Lost,
                        () = sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// Dispatches what a read after `from` found; answers where to read on
    /// from.
    async fn advance(
        &self,
        from: Option<EventId>,
        read: FeedRead,
    ) -> Result<Option<EventId>, StorageError> {
        match read {
            FeedRead::Events(events) if events.is_empty() => Ok(from),
            FeedRead::Events(events) => self.dispatch(&events).await.map(Some),
            FeedRead::Gap => self.skip_gap(from).await,
        }
    }

    /// When `read` brought events and no customer has a webhook: records
    /// the log's head as dispatched, and answers it. Every event up to the
    /// head was appended before the last look at the webhooks, when none
    /// wanted it; a webhook registered since is told of what comes after.
    /// `None` when the events are to be dispatched as usual, after one look
    /// at the webhooks and no read of the head.
    async fn skip_unwatched(&self, read: &FeedRead) -> Result<Option<EventId>, StorageError> {
        if !matches!(read, FeedRead::Events(events) if !events.is_empty())
            || !self.unwatched().await?
        {
            return Ok(None);
        }
        // The head, then a second look: an event after the head may be for
        // a webhook made after the first look.
        let Some(head) = self.log.head().await? else {
            return Ok(None);
        };
        if !self.unwatched().await? {
            return Ok(None);
        }
        self.queue.enqueue(&[], &head).await?;
        tracing::debug!(up_to = %head, "no webhooks: events skipped");
        Ok(Some(head))
    }

    /// Whether no customer has a webhook.
    async fn unwatched(&self) -> Result<bool, StorageError> {
        Ok(self.webhooks.customers().await?.is_empty())
    }

    /// Enqueues the deliveries of `events` (a page, not empty) and records
    /// the last as dispatched; answers it.
    async fn dispatch(&self, events: &[RunEvent]) -> Result<EventId, StorageError> {
        let Some(last) = events.last() else {
            unreachable!("only pages with events are dispatched");
        };
        // Each customer's webhooks are read once per page: fresh enough
        // that a webhook registered a moment ago is told of the next run,
        // and one read per customer however busy.
        let mut webhooks: HashMap<&CustomerId, Vec<Webhook>> = HashMap::new();
        let mut deliveries = Vec::new();
        let now = self.clock.now();
        for event in events {
            let customer = &event.change.customer;
            if !webhooks.contains_key(customer) {
                let theirs = self.webhooks.list(customer).await?;
                webhooks.insert(customer, theirs);
            }
            deliveries.extend(
                webhooks[customer]
                    .iter()
                    .filter(|webhook| webhook.wants(event))
                    .map(|webhook| Delivery::new(webhook, event.clone(), now)),
            );
        }
        self.queue.enqueue(&deliveries, &last.id).await?;
        if let Some(enqueued) = self.enqueued.as_ref().filter(|_| !deliveries.is_empty()) {
            enqueued.notify_one();
        }
        tracing::debug!(
            events = events.len(),
            deliveries = deliveries.len(),
            up_to = %last.id,
            "dispatched events to webhooks"
        );
        Ok(last.id.clone())
    }

    /// The log dropped events after `from` before they were dispatched:
    /// says so loudly, counts it, and records the head as dispatched so
    /// that dispatching goes on from now (and a restart does not meet the
    /// same gap). Answers where to read on from.
    async fn skip_gap(&self, from: Option<EventId>) -> Result<Option<EventId>, StorageError> {
        let head = self.log.head().await?;
        if let Some(head) = &head {
            self.queue.enqueue(&[], head).await?;
        }
        tracing::error!(
            after = from.as_ref().map(EventId::as_str),
            resumed_after = head.as_ref().map(EventId::as_str),
            "the webhook dispatcher fell behind the event log's retention: the events in between were never delivered to webhooks"
        );
        self.metrics.dispatch_gap();
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use domain::{RunEventType, RunStatus, WebhookId};

    use super::*;
    use crate::{
        TokioClock,
        testing::{FakeLog, FakeQueue, FakeStore, PIPELINE_A, PIPELINE_B, Recorder, change, until},
    };

    struct Setup {
        log: Arc<FakeLog>,
        store: Arc<FakeStore>,
        queue: Arc<FakeQueue>,
        metrics: Arc<Recorder>,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                log: FakeLog::new(),
                store: FakeStore::new(),
                queue: FakeQueue::new(),
                metrics: Arc::default(),
            }
        }

        fn start(&self, leadership: Leadership) -> (watch::Sender<bool>, JoinHandle<()>) {
            let (stop, shutdown) = watch::channel(false);
            let dispatching = Dispatcher::new(
                self.log.clone(),
                self.store.clone(),
                self.queue.clone(),
                Arc::new(TokioClock::start()),
                leadership,
            )
            .with_metrics(self.metrics.clone())
            .spawn(shutdown);
            (stop, dispatching)
        }

        async fn dispatched(&self, id: &str) {
            until(Duration::from_secs(60), || {
                self.queue.dispatched_now().as_deref() == Some(id)
            })
            .await;
        }

        /// The deliveries waiting, as (webhook, event id).
        fn waiting(&self) -> Vec<(WebhookId, String)> {
            let mut waiting: Vec<_> = self
                .queue
                .waiting()
                .into_iter()
                .map(|(webhook, event, _)| (webhook, event))
                .collect();
            waiting.sort();
            waiting
        }
    }

    async fn stop(stop: watch::Sender<bool>, dispatching: JoinHandle<()>) {
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_millis(1), dispatching)
            .await
            .expect("the dispatcher ends on shutdown")
            .unwrap();
    }

    fn sorted(mut pairs: Vec<(WebhookId, &str)>) -> Vec<(WebhookId, String)> {
        pairs.sort();
        pairs
            .into_iter()
            .map(|(webhook, event)| (webhook, event.to_owned()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn each_event_makes_one_delivery_per_webhook_that_wants_it() {
        let setup = Setup::new();
        let all = setup.store.register("acme", &[], &[], 1).await;
        let succeeded = setup
            .store
            .register("acme", &[RunEventType::Succeeded], &[], 2)
            .await;
        let _pipeline_b = setup.store.register("acme", &[], &[PIPELINE_B], 3).await;
        let globex = setup.store.register("globex", &[], &[], 4).await;
        let (stop_it, dispatching) = setup.start(Leadership::always());

        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Queued, 1));
        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Success, 1));
        setup
            .log
            .push(change("globex", PIPELINE_A, RunStatus::Running, 2));
        setup
            .log
            .push(change("initech", PIPELINE_A, RunStatus::Queued, 3));
        setup.dispatched("4").await;

        assert_eq!(
            setup.waiting(),
            sorted(vec![
                (all.id.clone(), "1"),
                (all.id.clone(), "2"),
                (succeeded.id.clone(), "2"),
                (globex.id.clone(), "3"),
            ])
        );
        stop(stop_it, dispatching).await;
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_recorded_when_no_webhook_wants_an_event() {
        let setup = Setup::new();
        setup.store.register("acme", &[], &[], 1).await;
        let (stop_it, dispatching) = setup.start(Leadership::always());
        setup
            .log
            .push(change("globex", PIPELINE_A, RunStatus::Queued, 1));
        setup.dispatched("1").await;
        assert!(setup.waiting().is_empty());
        assert_eq!(setup.queue.enqueues(), 1);
        stop(stop_it, dispatching).await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_any_webhook_the_log_is_skipped_to_its_head_and_a_new_webhook_gets_what_follows()
     {
        let setup = Setup::new();
        for n in 1..=250 {
            setup
                .log
                .push(change("acme", PIPELINE_A, RunStatus::Queued, n));
        }
        let (stop_it, dispatching) = setup.start(Leadership::always());
        setup.dispatched("250").await;
        assert_eq!(
            setup.queue.enqueues(),
            1,
            "one step to the head, not one per page"
        );
        assert!(setup.waiting().is_empty());

        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Success, 1));
        setup.dispatched("251").await;
        assert_eq!(setup.waiting(), sorted(vec![(webhook.id.clone(), "251")]));
        stop(stop_it, dispatching).await;
    }

    #[tokio::test(start_paused = true)]
    async fn dispatching_resumes_after_what_the_queue_recorded() {
        let setup = Setup::new();
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        for n in 1..=4 {
            setup
                .log
                .push(change("acme", PIPELINE_A, RunStatus::Queued, n));
        }
        setup.queue.set_dispatched(EventId::parse("2").unwrap());
        let (stop_it, dispatching) = setup.start(Leadership::always());
        setup.dispatched("4").await;
        assert_eq!(
            setup.waiting(),
            sorted(vec![(webhook.id.clone(), "3"), (webhook.id.clone(), "4")])
        );
        stop(stop_it, dispatching).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_asked_again_and_nothing_is_lost_or_doubled() {
        let setup = Setup::new();
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.store.fail_lists(3);
        let (stop_it, dispatching) = setup.start(Leadership::always());
        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Queued, 1));
        setup.dispatched("1").await;
        assert_eq!(setup.waiting(), sorted(vec![(webhook.id.clone(), "1")]));
        stop(stop_it, dispatching).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_is_counted_and_dispatching_goes_on_from_the_head() {
        let setup = Setup::new();
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        for n in 1..=5 {
            setup
                .log
                .push(change("acme", PIPELINE_A, RunStatus::Queued, n));
        }
        setup.queue.set_dispatched(EventId::parse("1").unwrap());
        setup.log.drop_through(3);
        let (stop_it, dispatching) = setup.start(Leadership::always());
        setup.dispatched("5").await;
        assert_eq!(setup.metrics.gaps(), 1);
        assert!(
            setup.waiting().is_empty(),
            "the events at the gap are skipped"
        );

        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Running, 6));
        setup.dispatched("6").await;
        assert_eq!(setup.waiting(), sorted(vec![(webhook.id.clone(), "6")]));
        assert_eq!(setup.metrics.gaps(), 1);
        stop(stop_it, dispatching).await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_dispatched_while_another_instance_holds_the_lease() {
        let setup = Setup::new();
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        let (lead, held) = watch::channel(false);
        let (stop_it, dispatching) = setup.start(Leadership::of(held));
        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Queued, 1));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(setup.queue.enqueues(), 0);

        lead.send_replace(true);
        setup.dispatched("1").await;
        lead.send_replace(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        setup
            .log
            .push(change("acme", PIPELINE_A, RunStatus::Running, 1));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(setup.queue.dispatched_now().as_deref(), Some("1"));

        lead.send_replace(true);
        setup.dispatched("2").await;
        assert_eq!(
            setup.waiting(),
            sorted(vec![(webhook.id.clone(), "1"), (webhook.id.clone(), "2")])
        );
        stop(stop_it, dispatching).await;
    }
}
