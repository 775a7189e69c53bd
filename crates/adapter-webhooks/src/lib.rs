//! Webhook deliveries: signed as the Standard Webhooks specification says,
//! sent over HTTPS to addresses the guard allows, one attempt at a time.
//!
//! - [`signing`]: the `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature` headers, and the `whsec_` form of a secret.
//! - [`AddressGuard`]: which URLs may be called (`https`, no private,
//!   loopback, link-local or otherwise non-public address), checked at
//!   registration and again at every delivery.
//! - [`HttpWebhookSender`]: the [`domain::WebhookSender`] that makes one
//!   attempt, connecting only to the addresses it checked, following no
//!   redirect, within a timeout, reading a bounded part of the answer.
//!
//! Retries, and which instance makes a delivery, are the domain's and the
//! delivery queue's business; the sender only says how an attempt went.
//!
//! ```
//! use std::sync::Arc;
//!
//! use adapter_webhooks::{HttpWebhookSender, WebhooksConfig};
//!
//! // The binary renders the run as the HTTP API does; any renderer will do here.
//! let sender = HttpWebhookSender::new(
//!     WebhooksConfig::new(false),
//!     Arc::new(|event: &domain::RunEvent| {
//!         format!(
//!             r#"{{"type":"{}","timestamp":"{}","data":{{}}}}"#,
//!             event.change.event_type(),
//!             domain::format_timestamp(&event.change.run.updated_at),
//!         )
//!         .into_bytes()
//!     }),
//! );
//! let sender: Arc<dyn domain::WebhookSender> = Arc::new(sender);
//! # let _ = sender;
//! ```

mod guard;
mod sender;
pub mod signing;

pub use guard::{AddressGuard, is_forbidden};
pub use sender::{HttpWebhookSender, RenderBody, WebhooksConfig};
pub use signing::{InvalidSecret, decode_secret, encode_secret};
