//! [`MemoryWebhookStore`] and [`MemoryDeliveryQueue`]: registered webhooks
//! and their pending deliveries, in this process, for a single Maestro
//! instance.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::{
    CustomerId, Delivery, DeliveryId, DeliveryQueue, EventId, RegisterWebhookError, StorageError,
    Timestamp, Webhook, WebhookId, WebhookStore,
};

/// Locks `mutex`. A std mutex, not tokio's: no method awaits while
/// holding it, and each critical section is a few map operations. Nothing
/// under it panics, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The webhooks customers registered, in memory.
///
/// The count against the bound and the insert are one step under one
/// lock, so concurrent registrations stop exactly at the bound. Lost on a
/// restart, as everything of the embedded default is.
///
/// Cheap to clone: clones share the webhooks.
#[derive(Debug, Clone, Default)]
pub struct MemoryWebhookStore {
    state: Arc<Mutex<Registered>>,
}

#[derive(Debug, Default)]
struct Registered {
    /// Each customer's webhooks, oldest first; no customer without one.
    by_customer: HashMap<CustomerId, Vec<Webhook>>,
    ids: HashSet<WebhookId>,
}

impl MemoryWebhookStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WebhookStore for MemoryWebhookStore {
    async fn create(&self, webhook: &Webhook, limit: usize) -> Result<(), RegisterWebhookError> {
        let mut state = lock(&self.state);
        if state.ids.contains(&webhook.id) {
            // Ids are 16 random bytes: only a broken random source repeats
            // one, and a repeated id would deliver to the wrong endpoint.
            return Err(StorageError::new(format!("webhook {} exists already", webhook.id)).into());
        }
        let held = state.by_customer.get(&webhook.customer).map_or(0, Vec::len);
        if held >= limit {
            return Err(RegisterWebhookError::TooMany { limit });
        }
        state.ids.insert(webhook.id.clone());
        state
            .by_customer
            .entry(webhook.customer.clone())
            .or_default()
            .push(webhook.clone());
        Ok(())
    }

    async fn list(&self, customer: &CustomerId) -> Result<Vec<Webhook>, StorageError> {
        Ok(lock(&self.state)
            .by_customer
            .get(customer)
            .cloned()
            .unwrap_or_default())
    }

    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError> {
        let mut customers: Vec<CustomerId> =
            lock(&self.state).by_customer.keys().cloned().collect();
        customers.sort_unstable();
        Ok(customers)
    }

    async fn delete(&self, customer: &CustomerId, id: &WebhookId) -> Result<bool, StorageError> {
        let mut state = lock(&self.state);
        let Some(webhooks) = state.by_customer.get_mut(customer) else {
            return Ok(false);
        };
        let Some(index) = webhooks.iter().position(|webhook| webhook.id == *id) else {
            return Ok(false);
        };
        webhooks.remove(index);
        if webhooks.is_empty() {
            state.by_customer.remove(customer);
        }
        state.ids.remove(id);
        Ok(true)
    }
}

/// Pending deliveries, in memory, on the instants the caller gives (the
/// service's clock).
///
/// A delivery taken by [`DeliveryQueue::take_due`] is kept from other
/// takers for its lease, then due again unless it was done, retried or
/// given up; deliveries are taken earliest due first. [`DeliveryQueue::enqueue`]
/// adds deliveries and records the dispatched event in one step, and adds
/// no delivery whose id it knows: pending, or finished (done or given up)
/// among the last [`MemoryDeliveryQueue::max_pending`] finished.
///
/// At most [`MemoryDeliveryQueue::max_pending`] deliveries wait (by
/// default 100,000): an enqueue that would pass it fails whole, and the
/// dispatcher tries again as deliveries finish (events wait in the log
/// meanwhile, for as long as it keeps them).
///
/// Cheap to clone: clones share the queue. Lost on a restart, as
/// everything of the embedded default is.
#[derive(Debug, Clone)]
pub struct MemoryDeliveryQueue {
    state: Arc<Mutex<Queue>>,
    max_pending: usize,
}

#[derive(Debug, Default)]
struct Queue {
    pending: HashMap<DeliveryId, Pending>,
    /// Every pending delivery by when it may be taken: when it is due, or
    /// when its lease ends.
    by_ready: BTreeMap<(Timestamp, u64), DeliveryId>,
    /// Every pending delivery by when it was first due.
    by_first_due: BTreeMap<(Timestamp, u64), DeliveryId>,
    /// Recently finished deliveries, oldest first, so that an enqueue
    /// repeated after they finished does not make them again.
    finished: VecDeque<DeliveryId>,
    finished_ids: HashSet<DeliveryId>,
    dispatched: Option<EventId>,
    next_seq: u64,
}

#[derive(Debug)]
struct Pending {
    delivery: Delivery,
    ready_at: Timestamp,
    /// Tells apart deliveries ready, or first due, at the same instant.
    seq: u64,
}

impl MemoryDeliveryQueue {
    /// The default [`MemoryDeliveryQueue::max_pending`].
    pub const DEFAULT_MAX_PENDING: usize = 100_000;

    /// An empty queue holding at most `max_pending` deliveries (at least
    /// one).
    pub fn new(max_pending: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(Queue::default())),
            max_pending: max_pending.max(1),
        }
    }

    /// The most deliveries that may wait.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Removes a pending delivery, remembering it as finished.
    fn finish(&self, id: &DeliveryId) {
        let mut queue = lock(&self.state);
        let Some(pending) = queue.pending.remove(id) else {
            return;
        };
        queue.by_ready.remove(&(pending.ready_at, pending.seq));
        queue
            .by_first_due
            .remove(&(pending.delivery.first_due, pending.seq));
        queue.finished.push_back(id.clone());
        queue.finished_ids.insert(id.clone());
        while queue.finished.len() > self.max_pending {
            if let Some(oldest) = queue.finished.pop_front() {
                queue.finished_ids.remove(&oldest);
            }
        }
    }
}

impl Default for MemoryDeliveryQueue {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_PENDING)
    }
}

impl Queue {
    /// Moves a pending delivery to be ready at `at`.
    fn reschedule(&mut self, id: &DeliveryId, at: Timestamp) -> Option<&mut Pending> {
        let pending = self.pending.get_mut(id)?;
        self.by_ready.remove(&(pending.ready_at, pending.seq));
        pending.ready_at = at;
        self.by_ready.insert((at, pending.seq), id.clone());
        Some(pending)
    }
}

#[async_trait]
impl DeliveryQueue for MemoryDeliveryQueue {
    async fn dispatched(&self) -> Result<Option<EventId>, StorageError> {
        Ok(lock(&self.state).dispatched.clone())
    }

    async fn enqueue(&self, deliveries: &[Delivery], up_to: &EventId) -> Result<(), StorageError> {
        let mut queue = lock(&self.state);
        let mut fresh: Vec<&Delivery> = Vec::with_capacity(deliveries.len());
        let mut seen = HashSet::new();
        for delivery in deliveries {
            let known = queue.pending.contains_key(&delivery.id)
                || queue.finished_ids.contains(&delivery.id);
            if !known && seen.insert(&delivery.id) {
                fresh.push(delivery);
            }
        }
        if queue.pending.len() + fresh.len() > self.max_pending {
            return Err(StorageError::new(format!(
                "the delivery queue holds {} deliveries, and may hold {}",
                queue.pending.len(),
                self.max_pending
            )));
        }
        for delivery in fresh {
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue
                .by_ready
                .insert((delivery.due, seq), delivery.id.clone());
            queue
                .by_first_due
                .insert((delivery.first_due, seq), delivery.id.clone());
            queue.pending.insert(
                delivery.id.clone(),
                Pending {
                    delivery: delivery.clone(),
                    ready_at: delivery.due,
                    seq,
                },
            );
        }
        queue.dispatched = Some(up_to.clone());
        Ok(())
    }

    async fn take_due(
        &self,
        now: Timestamp,
        limit: usize,
        // One process: the lease keeps a delivery from the other workers
        // of this process, whoever they are.
        _worker: &str,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StorageError> {
        let until = TimeDelta::from_std(lease)
            .ok()
            .and_then(|lease| now.checked_add_signed(lease))
            .unwrap_or(Timestamp::MAX_UTC);
        let mut queue = lock(&self.state);
        let due: Vec<DeliveryId> = queue
            .by_ready
            .range(..=(now, u64::MAX))
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        let mut taken = Vec::with_capacity(due.len());
        for id in due {
            if let Some(pending) = queue.reschedule(&id, until) {
                taken.push(pending.delivery.clone());
            }
        }
        Ok(taken)
    }

    async fn done(&self, id: &DeliveryId) -> Result<(), StorageError> {
        self.finish(id);
        Ok(())
    }

    async fn retry(
        &self,
        id: &DeliveryId,
        attempts: u32,
        due: Timestamp,
    ) -> Result<(), StorageError> {
        let mut queue = lock(&self.state);
        if let Some(pending) = queue.reschedule(id, due) {
            pending.delivery.attempts = attempts;
            pending.delivery.due = due;
        }
        Ok(())
    }

    async fn give_up(&self, id: &DeliveryId) -> Result<(), StorageError> {
        self.finish(id);
        Ok(())
    }

    async fn pending(&self) -> Result<(usize, Option<Timestamp>), StorageError> {
        let queue = lock(&self.state);
        let oldest = queue.by_first_due.keys().next().map(|(at, _)| *at);
        Ok((queue.pending.len(), oldest))
    }
}

#[cfg(test)]
mod tests {
    //! The ports' rules run from `domain::feed_testkit`; what is these
    //! stores' own (the queue's bound, and remembering finished
    //! deliveries) is tested here.

    use chrono::DateTime;
    use domain::feed_testkit::Setup;
    use domain::{
        Caller, NewWebhook, PipelineId, RequestContext, Run, RunChange, RunEvent, RunId, RunStatus,
        Webhooks,
    };

    use super::*;

    domain::webhook_store_conformance_tests! {
        #[tokio::test]
        |scenario| {
            scenario(&MemoryWebhookStore::new(), &Setup::paused_clock("")).await;
        }
    }

    domain::delivery_queue_conformance_tests! {
        #[tokio::test]
        |scenario| {
            scenario(&MemoryDeliveryQueue::default(), &Setup::paused_clock("")).await;
        }
    }

    fn at(seconds: i64) -> Timestamp {
        DateTime::from_timestamp(1_734_517_800 + seconds, 0).unwrap()
    }

    /// A webhook of `customer`, made as the service makes them (the type
    /// has no constructor of its own outside the domain).
    async fn webhook(customer: &str, random: u8) -> Webhook {
        let scratch = Arc::new(MemoryWebhookStore::new());
        let ctx = RequestContext::new(Caller::new(CustomerId::parse(customer).unwrap()));
        Webhooks::new(scratch, false)
            .register(
                &ctx,
                NewWebhook::new("https://hooks.example/"),
                ([random; 16], [2; 32]),
                at(0),
            )
            .await
            .unwrap()
    }

    async fn delivery(n: u8) -> Delivery {
        let customer = CustomerId::parse("acme").unwrap();
        let webhook = webhook("acme", 1).await;
        let run = Run::new(
            RunId::manual(&at(0)),
            PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap(),
            RunStatus::Queued,
            at(0),
        );
        let id = EventId::parse(&format!("1734517800000-{n}")).unwrap();
        Delivery::new(
            &webhook,
            RunEvent::new(id, RunChange::new(customer, run)),
            at(0),
        )
    }

    #[tokio::test]
    async fn an_enqueue_past_the_bound_adds_nothing_and_records_nothing() {
        let queue = MemoryDeliveryQueue::new(2);
        let (a, b, c) = (delivery(0).await, delivery(1).await, delivery(2).await);
        queue
            .enqueue(std::slice::from_ref(&a), &a.event.id)
            .await
            .unwrap();
        let refused = queue.enqueue(&[b.clone(), c.clone()], &c.event.id).await;
        assert!(refused.is_err());
        assert_eq!(queue.pending().await.unwrap().0, 1);
        assert_eq!(queue.dispatched().await.unwrap(), Some(a.event.id.clone()));
        // A known delivery takes no room.
        queue
            .enqueue(&[a.clone(), b.clone()], &b.event.id)
            .await
            .unwrap();
        assert_eq!(queue.pending().await.unwrap().0, 2);
    }

    #[tokio::test]
    async fn a_finished_delivery_enqueued_again_is_not_made_again() {
        let queue = MemoryDeliveryQueue::default();
        let (a, b) = (delivery(0).await, delivery(1).await);
        queue
            .enqueue(&[a.clone(), b.clone()], &b.event.id)
            .await
            .unwrap();
        queue.done(&a.id).await.unwrap();
        queue.give_up(&b.id).await.unwrap();
        queue
            .enqueue(&[a.clone(), b.clone()], &b.event.id)
            .await
            .unwrap();
        assert_eq!(queue.pending().await.unwrap(), (0, None));
        let taken = queue
            .take_due(at(100), 10, "w", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(taken, []);
    }

    #[tokio::test]
    async fn only_the_last_finished_deliveries_are_remembered() {
        let queue = MemoryDeliveryQueue::new(2);
        let all = vec![delivery(0).await, delivery(1).await, delivery(2).await];
        for one in &all {
            queue
                .enqueue(std::slice::from_ref(one), &one.event.id)
                .await
                .unwrap();
            queue.done(&one.id).await.unwrap();
        }
        // The first was forgotten: it would be made again.
        queue.enqueue(&all, &all[2].event.id).await.unwrap();
        assert_eq!(queue.pending().await.unwrap().0, 1);
    }

    #[tokio::test]
    async fn the_same_delivery_twice_in_one_enqueue_is_added_once() {
        let queue = MemoryDeliveryQueue::default();
        let a = delivery(0).await;
        queue
            .enqueue(&[a.clone(), a.clone()], &a.event.id)
            .await
            .unwrap();
        assert_eq!(queue.pending().await.unwrap().0, 1);
    }

    #[tokio::test]
    async fn a_repeated_webhook_id_is_refused() {
        let store = MemoryWebhookStore::new();
        let webhook = webhook("acme", 1).await;
        store.create(&webhook, 10).await.unwrap();
        let other = self::webhook("globex", 1).await;
        assert!(matches!(
            store.create(&other, 10).await,
            Err(RegisterWebhookError::Storage(_))
        ));
        assert_eq!(store.customers().await.unwrap(), [webhook.customer]);
    }
}
