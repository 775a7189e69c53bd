//! Wires the feed of run changes and the webhooks: where events, webhooks
//! and pending deliveries are kept (Redis when configured, so that every
//! instance shares them; this process otherwise), where changes come from
//! (the backend), and the loops that move them: the pump (one holder per
//! cluster), the dispatcher (on the holder) and a delivery worker (on every
//! instance).

use std::{sync::Arc, time::Duration};

use adapter_airflow::{AirflowBackend, AirflowChanges};
use adapter_http::Metrics;
use adapter_memory::{
    MemoryBackend, MemoryChanges, MemoryDeliveryQueue, MemoryEventLog, MemoryWebhookStore,
};
use adapter_platform_api::{PlatformApiBackend, PlatformApiChanges};
use adapter_redis::{Redis, RedisDeliveryQueue, RedisEventLog, RedisWebhookStore};
use adapter_webhooks::{HttpWebhookSender, WebhooksConfig};
use domain::{
    Clock, CustomerId, DeliveryQueue, EventLog, Events, Listeners, RunChangeSource, StorageError,
    WebhookSender, WebhookStore, Webhooks,
};
use runtime::{
    deliver::DeliveryWorker,
    dispatch::Dispatcher,
    feed::FeedPump,
    metrics::{DeliveryOutcome, WebhookMetrics},
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

/// The most events a log kept in this process holds (besides the hour of
/// retention): enough for an hour of about 30 changes a second.
const MEMORY_LOG_EVENTS: usize = 100_000;

/// The most deliveries a queue kept in this process holds.
const MEMORY_QUEUE_DELIVERIES: usize = 100_000;

/// Where run changes come from: the backend the service runs on.
pub(crate) enum Engine {
    Memory(Arc<MemoryBackend>),
    PlatformApi(PlatformApiBackend),
    Airflow(Arc<AirflowBackend>),
}

/// The settings of the feed and the webhooks.
pub(crate) struct FeedSettings<'a> {
    /// How often a polled engine is asked for changes.
    pub(crate) poll_interval: Duration,
    /// `MAESTRO_WEBHOOKS_ALLOW_INSECURE`.
    pub(crate) allow_insecure: bool,
    /// The shared store, when there is one.
    pub(crate) redis: Option<&'a Redis>,
    /// This instance's name among those sharing the store.
    pub(crate) instance: &'a str,
}

/// The feed and the webhooks, wired: what the API serves, and the loops
/// that run beside it.
pub(crate) struct Feed {
    pub(crate) events: Events,
    pub(crate) listeners: Arc<dyn Listeners>,
    pub(crate) webhooks: Webhooks,
    pub(crate) loops: Loops,
}

/// Builds the feed over `engine`, with stores and loops as `settings` say,
/// and starts the loops.
pub(crate) fn start(
    engine: Engine,
    settings: &FeedSettings<'_>,
    clock: &Arc<dyn Clock>,
    metrics: &Metrics,
) -> Feed {
    let Stores {
        log,
        listeners,
        webhooks: store,
        queue,
    } = match settings.redis {
        Some(redis) => {
            // One log per instance: it reads the stream for all of this
            // instance's streams on one connection.
            let log = Arc::new(RedisEventLog::new(redis));
            Stores {
                log: log.clone(),
                listeners: log,
                webhooks: Arc::new(RedisWebhookStore::new(redis)),
                queue: Arc::new(RedisDeliveryQueue::new(redis)),
            }
        }
        None => {
            let log = Arc::new(MemoryEventLog::new(MEMORY_LOG_EVENTS).with_clock(clock.clone()));
            Stores {
                log: log.clone(),
                listeners: log,
                webhooks: Arc::new(MemoryWebhookStore::new()),
                queue: Arc::new(MemoryDeliveryQueue::new(MEMORY_QUEUE_DELIVERIES)),
            }
        }
    };
    let source: Arc<dyn RunChangeSource> = match engine {
        Engine::Memory(backend) => Arc::new(MemoryChanges::new(&backend)),
        Engine::Airflow(backend) => Arc::new(AirflowChanges::new(backend, settings.poll_interval)),
        Engine::PlatformApi(backend) => {
            // The upstream is asked only about the customers someone
            // listens for: with a stream open anywhere, or a webhook.
            let watched = Watched {
                listeners: listeners.clone(),
                webhooks: store.clone(),
            };
            Arc::new(PlatformApiChanges::new(
                backend,
                Arc::new(move || {
                    let watched = watched.clone();
                    async move { watched.customers().await }
                }),
                settings.poll_interval,
            ))
        }
    };
    let sender = Arc::new(HttpWebhookSender::new(
        WebhooksConfig::new(settings.allow_insecure),
        Arc::new(adapter_http::webhook_body),
    ));
    let metrics: Arc<dyn WebhookMetrics> = Arc::new(LoopMetrics(metrics.clone()));
    let (stop, shutdown) = watch::channel(false);
    let pump = FeedPump::new(settings.instance, source, log.clone());
    let leadership = pump.leadership();
    // This instance's enqueues wake its worker at once; another
    // instance's are taken at the next poll.
    let enqueued = Arc::new(Notify::new());
    let handles = vec![
        pump.spawn(shutdown.clone()),
        Dispatcher::new(
            log.clone(),
            store.clone(),
            queue.clone(),
            clock.clone(),
            leadership,
        )
        .with_metrics(metrics.clone())
        .with_wake(Arc::clone(&enqueued))
        .spawn(shutdown.clone()),
        DeliveryWorker::new(
            settings.instance,
            queue,
            store.clone(),
            sender.clone() as Arc<dyn WebhookSender>,
            clock.clone(),
        )
        .with_metrics(metrics)
        .with_wake(enqueued)
        .spawn(shutdown),
    ];
    Feed {
        events: Events::new(log),
        listeners,
        webhooks: Webhooks::new(store, settings.allow_insecure).checking_urls_with(sender),
        loops: Loops { stop, handles },
    }
}

/// Where the feed and the webhooks are kept.
struct Stores {
    log: Arc<dyn EventLog>,
    listeners: Arc<dyn Listeners>,
    webhooks: Arc<dyn WebhookStore>,
    queue: Arc<dyn DeliveryQueue>,
}

/// The customers someone listens for.
#[derive(Clone)]
struct Watched {
    listeners: Arc<dyn Listeners>,
    webhooks: Arc<dyn WebhookStore>,
}

impl Watched {
    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError> {
        let mut customers = self.listeners.listening().await?;
        customers.extend(self.webhooks.customers().await?);
        customers.sort_unstable();
        customers.dedup();
        Ok(customers)
    }
}

/// The loops running beside the API.
#[derive(Debug)]
pub(crate) struct Loops {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Loops {
    /// Stops the loops and waits for them: deliveries under way finish
    /// (within the worker's drain), the rest stays pending for the next
    /// start or another instance.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        for handle in self.handles {
            if let Err(err) = handle.await {
                tracing::error!(error = %err, "a feed or webhook loop ended badly");
            }
        }
    }
}

/// The loops' metrics, counted with the API's.
#[derive(Debug)]
struct LoopMetrics(Metrics);

impl WebhookMetrics for LoopMetrics {
    fn delivery(&self, outcome: DeliveryOutcome) {
        self.0.webhook_delivery(outcome.as_str());
    }

    fn pending(&self, count: usize, oldest_age: Option<Duration>) {
        self.0.webhook_pending(count, oldest_age);
    }

    fn dispatch_gap(&self) {
        self.0.webhook_dispatch_gap();
    }
}
