//! Bounds on the long requests each customer may hold open at once: runs
//! waited on (`?wait_seconds=N`) and event streams.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use domain::CustomerId;

/// The default bound on requests waiting on runs, per customer.
pub const DEFAULT_WAITS_PER_CUSTOMER: usize = 100;

/// The default bound on open event streams, per customer: the contract's 10.
pub const DEFAULT_STREAMS_PER_CUSTOMER: usize = 10;

/// How many long requests of one kind each customer holds open, up to a
/// bound.
#[derive(Debug)]
pub(crate) struct PerCustomer {
    limit: usize,
    /// A std mutex: taken for a map update when a wait starts or ends,
    /// never across an `.await`.
    by_customer: Mutex<HashMap<CustomerId, usize>>,
}

impl PerCustomer {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            by_customer: Mutex::new(HashMap::new()),
        })
    }

    /// The bound per customer.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more request of `customer`, or `None` when it holds
    /// its bound already.
    pub(crate) fn enter(self: &Arc<Self>, customer: &CustomerId) -> Option<Slot> {
        let mut by_customer = self
            .by_customer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = by_customer.entry(customer.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            bound: Arc::clone(self),
            customer: customer.clone(),
        })
    }
}

/// One open request; dropping it (answered, or the client gone) frees its
/// place.
#[derive(Debug)]
pub(crate) struct Slot {
    bound: Arc<PerCustomer>,
    customer: CustomerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_customer = self
            .bound
            .by_customer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_customer.get_mut(&self.customer) {
            *count -= 1;
            if *count == 0 {
                by_customer.remove(&self.customer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_customer_waits_up_to_its_bound_and_a_finished_wait_frees_a_place() {
        let waits = PerCustomer::new(2);
        let acme = CustomerId::parse("acme").unwrap();
        let globex = CustomerId::parse("globex").unwrap();
        let first = waits.enter(&acme).unwrap();
        let _second = waits.enter(&acme).unwrap();
        assert!(waits.enter(&acme).is_none());
        // Another customer is not held back by acme's waits.
        let _other = waits.enter(&globex).unwrap();
        drop(first);
        assert!(waits.enter(&acme).is_some());
    }

    #[test]
    fn nothing_is_kept_for_a_customer_with_no_wait() {
        let waits = PerCustomer::new(1);
        let acme = CustomerId::parse("acme").unwrap();
        drop(waits.enter(&acme));
        assert!(waits.by_customer.lock().unwrap().is_empty());
    }
}
