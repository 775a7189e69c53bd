//! The one connection to Redis that the idempotency store and the shared
//! rate limiter use: made on first use (and again after a failed first
//! attempt), multiplexed, and reconnected on its own after a failure.

use std::{fmt, sync::Arc, time::Duration};

use redis::{
    Client,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::OnceCell;

use crate::{ConnectError, RedisConfig};

/// How often the connection is tried again, after the first attempt, before
/// a reconnection gives up (the next request starts another). Few, and
/// soon: requests wait for a reconnection, within the operation timeout.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A handle on one multiplexed connection to the server of a
/// [`RedisConfig`]. Cheap to clone: clones share the connection, so the
/// idempotency store and the rate limiter of one instance make one
/// connection between them.
///
/// Nothing is sent before the first use, so the service starts (and says
/// it is not ready) while Redis is down; each use tries to connect until
/// Redis answers.
#[derive(Clone)]
pub struct Redis {
    connection: Arc<OnceCell<ConnectionManager>>,
    client: Client,
    manager_config: ConnectionManagerConfig,
}

impl fmt::Debug for Redis {
    // The client's own Debug output could show the URL, and with it a
    // password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("connected", &self.connection.initialized())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A handle for the server of `config`; nothing is sent yet.
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] or [`ConnectError::TlsUnsupported`] for
    /// a URL this adapter cannot use.
    pub fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
        let url = config.url();
        if url.starts_with("rediss://") || url.starts_with("valkeys://") {
            return Err(ConnectError::TlsUnsupported);
        }
        let client = Client::open(url).map_err(|_| ConnectError::InvalidUrl)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        Ok(Self {
            connection: Arc::new(OnceCell::new()),
            client,
            manager_config,
        })
    }

    /// The connection, made now if it was not yet.
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.connection
            .get_or_try_init(|| {
                self.client
                    .get_connection_manager_with_config(self.manager_config.clone())
            })
            .await
            .cloned()
    }
}
