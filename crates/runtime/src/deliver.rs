//! [`DeliveryWorker`]: the loop that makes webhook deliveries, on every
//! instance.
//!
//! Each worker takes the deliveries that are due from the shared
//! [`DeliveryQueue`], each kept from the other workers for a lease, and
//! makes a bounded number at once. A delivery the endpoint takes is done;
//! one it refuses is retried on the schedule of [`next_attempt`] for a day,
//! then given up. A worker that dies holding deliveries loses none: they
//! are due again when their lease ends.

use std::{fmt, sync::Arc, time::Duration};

use domain::{
    Clock, Delivery, DeliveryQueue, SendOutcome, StorageError, WebhookSender, WebhookStore,
    next_attempt,
};
use tokio::{
    sync::{Notify, watch},
    task::{JoinError, JoinHandle, JoinSet},
    time::{MissedTickBehavior, sleep},
};

use crate::{
    metrics::{DeliveryOutcome, NoMetrics, WebhookMetrics},
    pace::{Backoff, stopped},
};

/// Makes the deliveries that are due, a bounded number at once.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn wire(
/// #     queue: Arc<dyn domain::DeliveryQueue>,
/// #     webhooks: Arc<dyn domain::WebhookStore>,
/// #     sender: Arc<dyn domain::WebhookSender>,
/// #     metrics: Arc<dyn runtime::metrics::WebhookMetrics>,
/// #     shutdown: tokio::sync::watch::Receiver<bool>,
/// # ) {
/// use runtime::{TokioClock, deliver::DeliveryWorker};
///
/// let delivering = DeliveryWorker::new("instance-a", queue, webhooks, sender, Arc::new(TokioClock::start()))
///     .with_metrics(metrics)
///     .spawn(shutdown);
/// # }
/// ```
pub struct DeliveryWorker {
    worker: String,
    queue: Arc<dyn DeliveryQueue>,
    webhooks: Arc<dyn WebhookStore>,
    sender: Arc<dyn WebhookSender>,
    clock: Arc<dyn Clock>,
    metrics: Arc<dyn WebhookMetrics>,
    concurrency: usize,
    poll: Duration,
    lease: Duration,
    drain: Duration,
    /// Notified when deliveries were enqueued in this process.
    wake: Option<Arc<Notify>>,
}

impl fmt::Debug for DeliveryWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryWorker")
            .field("worker", &self.worker)
            .field("concurrency", &self.concurrency)
            .field("poll", &self.poll)
            .field("lease", &self.lease)
            .field("drain", &self.drain)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl DeliveryWorker {
    /// How many deliveries one worker makes at once, by default.
    pub const DEFAULT_CONCURRENCY: usize = 16;

    /// How often an idle worker asks for due deliveries, by default.
    pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

    /// How long a taken delivery is kept from the other workers, by
    /// default: well beyond an attempt's 10 s, so that a live worker
    /// finishes it first; a dead worker's is due again after it.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

    /// How long, on shutdown, the attempts under way may take to finish,
    /// by default; those still running then are abandoned (and made again
    /// once their lease ends).
    pub const DEFAULT_DRAIN: Duration = Duration::from_secs(15);

    /// How often a worker reads [`DeliveryQueue::pending`] for
    /// [`WebhookMetrics::pending`].
    pub const PENDING_EVERY: Duration = Duration::from_secs(15);

    /// A worker named `worker` (unique in the cluster), taking deliveries
    /// from `queue`, looking their webhook up in `webhooks` and sending
    /// with `sender`, at `clock`'s now.
    pub fn new(
        worker: impl Into<String>,
        queue: Arc<dyn DeliveryQueue>,
        webhooks: Arc<dyn WebhookStore>,
        sender: Arc<dyn WebhookSender>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            worker: worker.into(),
            queue,
            webhooks,
            sender,
            clock,
            metrics: Arc::new(NoMetrics),
            concurrency: Self::DEFAULT_CONCURRENCY,
            poll: Self::DEFAULT_POLL,
            lease: Self::DEFAULT_LEASE,
            drain: Self::DEFAULT_DRAIN,
            wake: None,
        }
    }

    /// Asks for due deliveries as soon as `enqueued` is notified (by the
    /// [`Dispatcher`](crate::dispatch::Dispatcher) of the same process,
    /// given it with
    /// [`with_wake`](crate::dispatch::Dispatcher::with_wake)), besides every
    /// poll interval: deliveries enqueued here go out within milliseconds,
    /// those enqueued by another instance within the interval.
    #[must_use]
    pub fn with_wake(mut self, enqueued: Arc<Notify>) -> Self {
        self.wake = Some(enqueued);
        self
    }

    /// Reports outcomes and the pending deliveries to `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<dyn WebhookMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// At most `concurrency` (at least 1) attempts at once.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Asks for due deliveries every `poll` while idle.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// Keeps a taken delivery from the other workers for `lease`.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Lets the attempts under way on shutdown take up to `drain`.
    #[must_use]
    pub fn with_drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Runs the worker on its own task until `shutdown` (see
    /// [`DeliveryWorker::run`]).
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Takes and makes due deliveries until `true` is sent on `shutdown`
    /// (or its sender is dropped); then takes no more, and returns once the
    /// attempts under way finished, or after the drain time.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut attempts = JoinSet::new();
        let mut backoff = Backoff::default();
        let mut report = tokio::time::interval(Self::PENDING_EVERY);
        report.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            while let Some(ended) = attempts.try_join_next() {
                this.ended(ended);
            }
            let room = this.concurrency.saturating_sub(attempts.len());
            let mut idle = this.poll;
            if room > 0 {
                match this
                    .queue
                    .take_due(this.clock.now(), room, &this.worker, this.lease)
                    .await
                {
                    Ok(due) => {
                        backoff.reset();
                        for delivery in due {
                            attempts.spawn(Arc::clone(&this).attempt(delivery));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot take due webhook deliveries");
                        idle = backoff.next_delay().max(this.poll);
                    }
                }
            }
            let full = attempts.len() >= this.concurrency;
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                _ = report.tick() => this.report_pending().await,
                // At the bound, more may be due: take them as soon as an
                // attempt ends.
                Some(ended) = attempts.join_next(), if full => this.ended(ended),
                // Below it, all that was due is under way.
                () = sleep(idle), if !full => {}
                () = woken(this.wake.as_deref()), if !full => {}
            }
        }
        this.drain(attempts).await;
        tracing::info!(worker = %this.worker, "the webhook delivery worker stopped");
    }

    /// Lets the attempts under way finish, for the drain time at most.
    async fn drain(&self, mut attempts: JoinSet<()>) {
        let all_ended = async {
            while let Some(ended) = attempts.join_next().await {
                self.ended(ended);
            }
        };
        if tokio::time::timeout(self.drain, all_ended).await.is_err() {
            tracing::warn!(
                unfinished = attempts.len(),
                "webhook deliveries still under way at shutdown are abandoned; they are made again once their lease ends"
            );
            attempts.shutdown().await;
        }
    }

    /// One attempt of `delivery`, and what follows in the queue.
    async fn attempt(self: Arc<Self>, delivery: Delivery) {
        let webhook = match self.webhooks.list(&delivery.customer).await {
            Ok(webhooks) => webhooks.into_iter().find(|w| w.id == delivery.webhook),
            Err(err) => {
                tracing::warn!(error = %err, delivery = delivery.id.as_str(), "cannot look up a delivery's webhook; the delivery is due again once its lease ends");
                return;
            }
        };
        let Some(webhook) = webhook else {
            // Deleted since it was dispatched: nobody is to be told.
            self.metrics.delivery(DeliveryOutcome::Dropped);
            let dropped = self.queue.give_up(&delivery.id).await;
            self.settled(&delivery, "drop", dropped);
            return;
        };
        let outcome = self
            .sender
            .send(&webhook, &delivery, self.clock.now())
            .await;
        let (counted, why) = match outcome {
            SendOutcome::Delivered => {
                self.metrics.delivery(DeliveryOutcome::Delivered);
                let done = self.queue.done(&delivery.id).await;
                self.settled(&delivery, "forget", done);
                return;
            }
            SendOutcome::Failed(why) => (DeliveryOutcome::Failed, why),
            SendOutcome::Refused(why) => (DeliveryOutcome::Refused, why),
            other => (DeliveryOutcome::Failed, format!("{other:?}")),
        };
        self.metrics.delivery(counted);
        let attempts = delivery.attempts.saturating_add(1);
        match next_attempt(attempts, delivery.first_due, self.clock.now()) {
            Some(due) => {
                tracing::info!(
                    delivery = delivery.id.as_str(),
                    webhook = webhook.id.as_str(),
                    attempts,
                    outcome = %counted,
                    reason = %why,
                    next_attempt = %due,
                    "a webhook delivery failed; it will be retried"
                );
                let retried = self.queue.retry(&delivery.id, attempts, due).await;
                self.settled(&delivery, "retry", retried);
            }
            None => {
                tracing::warn!(
                    delivery = delivery.id.as_str(),
                    webhook = webhook.id.as_str(),
                    attempts,
                    outcome = %counted,
                    reason = %why,
                    "a webhook delivery failed for a day: given up"
                );
                self.metrics.delivery(DeliveryOutcome::GivenUp);
                let given_up = self.queue.give_up(&delivery.id).await;
                self.settled(&delivery, "give up", given_up);
            }
        }
    }

    /// Logs a queue's failure to record how an attempt ended.
    fn settled(&self, delivery: &Delivery, what: &str, result: Result<(), StorageError>) {
        if let Err(err) = result {
            tracing::warn!(
                error = %err,
                delivery = delivery.id.as_str(),
                "cannot {what} a webhook delivery; it is due again once its lease ends"
            );
        }
    }

    /// Logs an attempt's task that did not end normally.
    fn ended(&self, ended: Result<(), JoinError>) {
        if let Err(err) = ended
            && err.is_panic()
        {
            tracing::error!(error = %err, "a webhook delivery attempt panicked; it is due again once its lease ends");
        }
    }

    /// Tells the metrics how many deliveries wait and since when.
    async fn report_pending(&self) {
        match self.queue.pending().await {
            Ok((count, oldest)) => {
                let age = oldest.map(|first_due| {
                    (self.clock.now() - first_due)
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                });
                self.metrics.pending(count, age);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot count the pending webhook deliveries");
            }
        }
    }
}

/// Completes when `wake` is notified; never without one.
async fn woken(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use domain::{EventId, RunEvent, RunStatus, Webhook};

    use super::*;
    use crate::{
        TokioClock,
        testing::{
            FakeQueue, FakeSender, FakeStore, PIPELINE_A, Recorder, change, until, until_every,
        },
    };

    struct Setup {
        queue: Arc<FakeQueue>,
        store: Arc<FakeStore>,
        sender: Arc<FakeSender>,
        clock: Arc<TokioClock>,
        metrics: Arc<Recorder>,
    }

    impl Setup {
        fn new(send_time: Duration) -> Self {
            Self {
                queue: FakeQueue::new(),
                store: FakeStore::new(),
                sender: FakeSender::new(send_time),
                clock: Arc::new(TokioClock::start()),
                metrics: Arc::default(),
            }
        }

        fn worker(&self) -> DeliveryWorker {
            DeliveryWorker::new(
                "worker-1",
                self.queue.clone(),
                self.store.clone(),
                self.sender.clone(),
                self.clock.clone(),
            )
            .with_metrics(self.metrics.clone())
        }

        /// Events `1..=count` of `webhook`'s customer, due now.
        async fn enqueue(&self, webhook: &Webhook, count: usize) {
            let deliveries: Vec<_> = (1..=count)
                .map(|n| {
                    let event = RunEvent::new(
                        EventId::parse(&n.to_string()).unwrap(),
                        change("acme", PIPELINE_A, RunStatus::Success, n),
                    );
                    Delivery::new(webhook, event, self.clock.now())
                })
                .collect();
            let up_to = EventId::parse(&count.to_string()).unwrap();
            self.queue.enqueue(&deliveries, &up_to).await.unwrap();
        }
    }

    fn failed() -> SendOutcome {
        SendOutcome::Failed("500 Internal Server Error".to_owned())
    }

    async fn stop(stop: watch::Sender<bool>, working: JoinHandle<()>) {
        stop.send_replace(true);
        tokio::time::timeout(DeliveryWorker::DEFAULT_DRAIN, working)
            .await
            .expect("the worker ends on shutdown")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_delivery_is_retried_on_the_schedule_until_delivered() {
        let setup = Setup::new(Duration::ZERO);
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        setup.sender.answer([
            failed(),
            failed(),
            SendOutcome::Refused("resolves to 10.0.0.7".to_owned()),
        ]);
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup.worker().spawn(shutdown);

        until(Duration::from_secs(600), || setup.queue.done().len() == 1).await;
        let sent = setup.sender.sent();
        assert_eq!(sent.len(), 4);
        assert!(
            sent.iter().all(|(id, _)| *id == sent[0].0),
            "one id on every attempt"
        );
        let delays: Vec<i64> = sent
            .windows(2)
            .map(|pair| (pair[1].1 - pair[0].1).num_seconds())
            .collect();
        // The schedule's delays, late by at most the poll interval.
        for (delay, planned) in delays.iter().zip([5, 30, 120]) {
            assert!((planned..=planned + 1).contains(delay), "{delays:?}");
        }
        assert_eq!(
            setup.metrics.outcomes(),
            [
                DeliveryOutcome::Failed,
                DeliveryOutcome::Failed,
                DeliveryOutcome::Refused,
                DeliveryOutcome::Delivered
            ]
        );
        assert!(setup.queue.waiting().is_empty());
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_woken_by_an_enqueue_takes_it_at_once_not_at_its_next_poll() {
        let setup = Setup::new(Duration::ZERO);
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        let wake = Arc::new(Notify::new());
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup
            .worker()
            .with_poll_interval(Duration::from_secs(60))
            .with_wake(Arc::clone(&wake))
            .spawn(shutdown);
        // The worker's first look finds nothing; it is idle for a minute.
        until(Duration::from_secs(1), || setup.queue.takes() >= 1).await;

        setup.enqueue(&webhook, 1).await;
        wake.notify_one();
        let took = until(Duration::from_secs(1), || setup.sender.sent().len() == 1).await;
        assert!(took < Duration::from_millis(100), "sent after {took:?}");

        // Without a wake, the loop's next turn takes it: the pending
        // report's (every 15 s) comes before the poll's.
        setup.enqueue(&webhook, 2).await;
        let took = until(Duration::from_secs(61), || setup.sender.sent().len() == 3).await;
        assert!(took >= Duration::from_secs(10), "sent after {took:?}");
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_failing_for_a_day_is_given_up() {
        let setup = Setup::new(Duration::ZERO);
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        setup.sender.fail_all();
        let (stop_it, shutdown) = watch::channel(false);
        // A slow poll, so that a day passes in few turns of the loop.
        let working = setup
            .worker()
            .with_poll_interval(Duration::from_secs(60))
            .spawn(shutdown);

        let took = until_every(
            Duration::from_secs(60),
            Duration::from_secs(25 * 3600),
            || setup.queue.given_up().len() == 1,
        )
        .await;
        assert!(
            took >= Duration::from_secs(23 * 3600),
            "given up after {took:?}"
        );
        let sent = setup.sender.sent();
        let (first, last) = (sent[0].1, sent[sent.len() - 1].1);
        assert!(last - first <= chrono::TimeDelta::hours(24));
        assert!((last - sent[sent.len() - 2].1).num_seconds() >= 3600);
        let outcomes = setup.metrics.outcomes();
        assert_eq!(outcomes.last(), Some(&DeliveryOutcome::GivenUp));
        assert_eq!(outcomes.len(), sent.len() + 1);
        assert!(setup.queue.waiting().is_empty());

        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            setup.sender.sent().len(),
            sent.len(),
            "nothing after giving up"
        );
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_sent_once_the_webhook_is_deleted() {
        let setup = Setup::new(Duration::ZERO);
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        setup.sender.answer([failed()]);
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup.worker().spawn(shutdown);
        until(Duration::from_secs(5), || setup.sender.sent().len() == 1).await;

        setup
            .store
            .delete(&webhook.customer, &webhook.id)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(setup.sender.sent().len(), 1);
        assert_eq!(setup.queue.given_up().len(), 1);
        assert!(setup.queue.waiting().is_empty());
        assert_eq!(
            setup.metrics.outcomes(),
            [DeliveryOutcome::Failed, DeliveryOutcome::Dropped]
        );
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_bound_of_attempts_are_under_way_and_the_next_start_as_they_end() {
        let setup = Setup::new(Duration::from_secs(2));
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 40).await;
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup
            .worker()
            .with_concurrency(4)
            .with_poll_interval(Duration::from_secs(30))
            .spawn(shutdown);

        let took = until(Duration::from_secs(600), || setup.queue.done().len() == 40).await;
        assert_eq!(setup.sender.most_under_way(), 4);
        // Ten rounds of two seconds: an ended attempt makes room at once,
        // without waiting for the (slow) poll.
        assert!(took < Duration::from_secs(21), "took {took:?}");
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_queue_is_asked_again() {
        let setup = Setup::new(Duration::ZERO);
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        setup.queue.fail_takes(3);
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup.worker().spawn(shutdown);
        until(Duration::from_secs(30), || setup.queue.done().len() == 1).await;
        assert_eq!(setup.sender.sent().len(), 1);
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_of_the_oldest_pending_delivery_is_reported() {
        let setup = Setup::new(Duration::ZERO);
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        setup.sender.fail_all();
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup.worker().spawn(shutdown);
        tokio::time::sleep(DeliveryWorker::PENDING_EVERY * 2 + Duration::from_secs(1)).await;
        assert_eq!(
            setup.metrics.pending_seen(),
            Some((1, Some(DeliveryWorker::PENDING_EVERY * 2)))
        );
        stop(stop_it, working).await;
    }

    #[tokio::test(start_paused = true)]
    async fn on_shutdown_attempts_under_way_finish_within_the_drain_and_longer_ones_are_abandoned()
    {
        // An attempt that ends within the drain time is recorded.
        let setup = Setup::new(Duration::from_secs(5));
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup.worker().spawn(shutdown);
        until(Duration::from_secs(5), || setup.sender.sent().len() == 1).await;
        stop(stop_it, working).await;
        assert_eq!(setup.queue.done().len(), 1);

        // One that hangs is abandoned, still waiting for another worker.
        let setup = Setup::new(Duration::from_secs(3600));
        let webhook = setup.store.register("acme", &[], &[], 1).await;
        setup.enqueue(&webhook, 1).await;
        let (stop_it, shutdown) = watch::channel(false);
        let working = setup.worker().spawn(shutdown);
        until(Duration::from_secs(5), || setup.sender.sent().len() == 1).await;
        let stopping = tokio::time::Instant::now();
        stop_it.send_replace(true);
        tokio::time::timeout(DeliveryWorker::DEFAULT_DRAIN * 2, working)
            .await
            .expect("the worker ends after the drain time")
            .unwrap();
        assert_eq!(stopping.elapsed(), DeliveryWorker::DEFAULT_DRAIN);
        assert!(setup.queue.done().is_empty());
        assert_eq!(setup.queue.waiting().len(), 1);
    }
}
