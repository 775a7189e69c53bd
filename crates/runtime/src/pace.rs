//! What the loops of the feed and of webhooks share: how they learn of
//! shutdown, and how they back off after a failure.

use std::time::Duration;

use tokio::sync::watch;

/// Completes once shutdown is asked for: `true` was sent, or the sender is
/// gone (nobody is left to ask, so the loops end rather than run
/// unstoppable).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: that ends the loops too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Delays between attempts after failures: the first, then doubling up to
/// the most, until a success resets it.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The delay after a first failure.
    pub(crate) const FIRST: Duration = Duration::from_millis(500);
    /// The longest delay.
    pub(crate) const MAX: Duration = Duration::from_secs(30);

    /// The delay before the next attempt; the one after is twice as long.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        delay
    }

    /// An attempt succeeded: the next failure waits the first delay again.
    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_most_and_a_success_resets_it() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.next_delay().as_millis().try_into().unwrap())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), Backoff::FIRST);
    }

    #[tokio::test]
    async fn shutdown_is_a_true_sent_or_a_sender_gone() {
        let (stop, mut shutdown) = watch::channel(false);
        stop.send_replace(true);
        stopped(&mut shutdown).await;

        let (stop, mut shutdown) = watch::channel(false);
        drop(stop);
        stopped(&mut shutdown).await;
    }
}
