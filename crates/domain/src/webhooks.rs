//! Webhooks: endpoints a customer registers to be told when its runs
//! change, and the deliveries that tell them, at least once.
//!
//! A delivery is one event for one endpoint. It keeps its id on every
//! attempt (the `webhook-id` a receiver deduplicates on), and is retried
//! on the schedule of [`next_attempt`] for a day until the endpoint takes
//! it. Where deliveries wait is a [`DeliveryQueue`]; how one is signed and
//! sent is a [`WebhookSender`]'s business.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use chrono::TimeDelta;

use crate::{
    CustomerId, PipelineId, RequestContext, RunEvent, RunEventType, StorageError, Timestamp,
};

/// The most webhooks one customer may have.
pub const MAX_WEBHOOKS_PER_CUSTOMER: usize = 10;

/// The id of a webhook: `wh_` and 32 lower-case hexadecimal digits, as
/// [`WebhookId::new`] makes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebhookId(String);

/// The text is not a webhook id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook id is wh_ and 32 hexadecimal digits")]
pub struct InvalidWebhookId;

impl WebhookId {
    /// The id made of 16 random bytes.
    pub fn new(random: [u8; 16]) -> Self {
        Self(format!("wh_{}", hex(&random)))
    }

    /// Reads an id in the form [`WebhookId::new`] makes.
    ///
    /// # Errors
    /// [`InvalidWebhookId`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, InvalidWebhookId> {
        let digits = raw.strip_prefix("wh_").ok_or(InvalidWebhookId)?;
        if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidWebhookId);
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A webhook's signing secret: 32 random bytes, shown to the customer once
/// as `whsec_` and their standard base64 (the Standard Webhooks form).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret([u8; 32]);

impl WebhookSecret {
    /// The secret of these random bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key that signs deliveries.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    // A secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// A webhook's URL, as registered: `https://` (or `http://` where
/// insecure webhooks are allowed, for development), a host, no user
/// information, at most 2,048 characters, nothing invisible. Whether the
/// host may be called (no private, loopback or link-local address) is
/// checked where it is resolved, at registration and at every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

/// Why a URL cannot be a webhook's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidWebhookUrl {
    /// Not `https://` (nor `http://` where that is allowed).
    #[error("the url must start with https://")]
    Scheme,
    /// No host, user information, or characters a URL cannot hold.
    #[error("the url must name a host, without user information or spaces")]
    Malformed,
    /// Longer than [`WebhookUrl::MAX_LEN`].
    #[error("the url must be at most 2048 characters")]
    TooLong,
    /// The host is, or resolves to, an address webhooks may not call.
    #[error("the url's host must not be a private, loopback, link-local or unspecified address")]
    ForbiddenAddress,
}

impl WebhookUrl {
    /// The longest URL accepted.
    pub const MAX_LEN: usize = 2048;

    /// Checks the URL's form; `allow_http` takes `http://` too.
    ///
    /// # Errors
    /// [`InvalidWebhookUrl`] saying what is wrong.
    pub fn parse(raw: &str, allow_http: bool) -> Result<Self, InvalidWebhookUrl> {
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidWebhookUrl::TooLong);
        }
        let rest = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, rest)) if allow_http && scheme.eq_ignore_ascii_case("http") => rest,
            _ => return Err(InvalidWebhookUrl::Scheme),
        };
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidWebhookUrl::Malformed);
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') || authority.starts_with(':') {
            return Err(InvalidWebhookUrl::Malformed);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The URL as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An endpoint a customer registered, told of its runs' changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Webhook {
    /// Its id.
    pub id: WebhookId,
    /// The customer it belongs to: the only one whose runs it is told of.
    pub customer: CustomerId,
    /// Where deliveries go.
    pub url: WebhookUrl,
    /// The changes it is told of.
    pub events: Vec<RunEventType>,
    /// The pipelines it is told of; none: every pipeline of the customer.
    pub pipeline_ids: Vec<PipelineId>,
    /// The key its deliveries are signed with.
    pub secret: WebhookSecret,
    /// When it was registered.
    pub created_at: Timestamp,
}

impl Webhook {
    /// `customer`'s webhook `id`, told of every change of every pipeline
    /// (set [`Webhook::events`] and [`Webhook::pipeline_ids`] to narrow
    /// it): how a store that keeps webhooks outside this process reads one
    /// back.
    pub fn new(
        id: WebhookId,
        customer: CustomerId,
        url: WebhookUrl,
        secret: WebhookSecret,
        created_at: Timestamp,
    ) -> Self {
        Self {
            id,
            customer,
            url,
            events: RunEventType::ALL.to_vec(),
            pipeline_ids: Vec::new(),
            secret,
            created_at,
        }
    }

    /// Whether `event` (of any customer) is one this webhook is told of.
    pub fn wants(&self, event: &RunEvent) -> bool {
        event.change.customer == self.customer
            && self.events.contains(&event.change.event_type())
            && (self.pipeline_ids.is_empty()
                || self.pipeline_ids.contains(&event.change.run.pipeline_id))
    }
}

/// Why a webhook was not registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterWebhookError {
    /// The customer has [`MAX_WEBHOOKS_PER_CUSTOMER`] webhooks already.
    #[error("the customer has {limit} webhooks already, the most")]
    TooMany {
        /// The bound.
        limit: usize,
    },
    /// The URL cannot be a webhook's.
    #[error(transparent)]
    InvalidUrl(#[from] InvalidWebhookUrl),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Where webhooks are kept: this process's memory, or a store every
/// instance reads.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Keeps `webhook`, unless its customer has `limit` already: the count
    /// and the insert are one atomic step.
    ///
    /// # Errors
    /// [`RegisterWebhookError::TooMany`] at the bound;
    /// [`RegisterWebhookError::Storage`] when the store fails.
    async fn create(&self, webhook: &Webhook, limit: usize) -> Result<(), RegisterWebhookError>;

    /// The customer's webhooks, oldest first.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn list(&self, customer: &CustomerId) -> Result<Vec<Webhook>, StorageError>;

    /// The customers that have at least one webhook.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn customers(&self) -> Result<Vec<CustomerId>, StorageError>;

    /// Forgets the customer's webhook `id`; whether there was one.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn delete(&self, customer: &CustomerId, id: &WebhookId) -> Result<bool, StorageError>;
}

/// The id of a delivery, the same on every attempt: the `webhook-id` a
/// receiver deduplicates on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// The id of the delivery of event `event` to `webhook`: `msg_` and the
    /// two, so that the same event to the same endpoint always has it.
    pub fn of(webhook: &WebhookId, event: &crate::EventId) -> Self {
        Self(format!("msg_{}_{}", webhook.as_str(), event.as_str()))
    }

    /// An id read back from where deliveries wait.
    pub fn from_stored(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One event for one webhook, until the endpoint takes it or a day passes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delivery {
    /// Its id, the same on every attempt.
    pub id: DeliveryId,
    /// The webhook it is for.
    pub webhook: WebhookId,
    /// The webhook's customer.
    pub customer: CustomerId,
    /// What it tells.
    pub event: RunEvent,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was due: the day of retries counts from it.
    pub first_due: Timestamp,
    /// When the next attempt is due.
    pub due: Timestamp,
}

impl Delivery {
    /// The first delivery of `event` to `webhook`, due `now`.
    pub fn new(webhook: &Webhook, event: RunEvent, now: Timestamp) -> Self {
        Self {
            id: DeliveryId::of(&webhook.id, &event.id),
            webhook: webhook.id.clone(),
            customer: webhook.customer.clone(),
            event,
            attempts: 0,
            first_due: now,
            due: now,
        }
    }

    /// The delivery of `event` to webhook `webhook` of `customer`, first
    /// due at `first_due`, with no attempt made yet (set
    /// [`Delivery::attempts`] and [`Delivery::due`] as kept): how a store
    /// that keeps deliveries outside this process reads one back.
    pub fn stored(
        webhook: WebhookId,
        customer: CustomerId,
        event: RunEvent,
        first_due: Timestamp,
    ) -> Self {
        Self {
            id: DeliveryId::of(&webhook, &event.id),
            webhook,
            customer,
            event,
            attempts: 0,
            first_due,
            due: first_due,
        }
    }
}

/// How long after its first attempt a delivery is retried at most.
pub const DELIVERY_RETRY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// When the attempt after `attempts` failed ones is due, counted from
/// `failed_at`: about 5 s, 30 s, 2 min, 10 min, 30 min, then hourly, while
/// within [`DELIVERY_RETRY_WINDOW`] of `first_due`; `None` once past it.
pub fn next_attempt(
    attempts: u32,
    first_due: Timestamp,
    failed_at: Timestamp,
) -> Option<Timestamp> {
    const SCHEDULE: [i64; 5] = [5, 30, 120, 600, 1800];
    let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let delay = SCHEDULE.get(index).copied().unwrap_or(3600);
    let at = failed_at.checked_add_signed(TimeDelta::seconds(delay))?;
    let window = TimeDelta::from_std(DELIVERY_RETRY_WINDOW).ok()?;
    (at <= first_due.checked_add_signed(window)?).then_some(at)
}

/// Where deliveries wait until they are made: this process's memory, or a
/// store every instance shares, so that a pending delivery survives a
/// restart and each is made by one instance at a time.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Where dispatching resumes: the last event already turned into
    /// deliveries.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn dispatched(&self) -> Result<Option<crate::EventId>, StorageError>;

    /// Adds `deliveries` and records `up_to` as dispatched, atomically, so
    /// that a crash neither loses nor doubles a delivery. A delivery whose
    /// id is known already is not added again.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails; nothing was added.
    async fn enqueue(
        &self,
        deliveries: &[Delivery],
        up_to: &crate::EventId,
    ) -> Result<(), StorageError>;

    /// Takes up to `limit` deliveries due at `now` for `worker`, each kept
    /// from the others for `lease` (after which an unfinished one is due
    /// again, for whoever takes it: a worker that died loses nothing).
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn take_due(
        &self,
        now: Timestamp,
        limit: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StorageError>;

    /// The delivery was made: forget it.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails; it is made again later.
    async fn done(&self, id: &DeliveryId) -> Result<(), StorageError>;

    /// The attempt failed: the delivery is due again at `due`, with
    /// `attempts` made so far.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails; it is due again once its
    /// lease ends.
    async fn retry(
        &self,
        id: &DeliveryId,
        attempts: u32,
        due: Timestamp,
    ) -> Result<(), StorageError>;

    /// The delivery failed for a day: drop it.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn give_up(&self, id: &DeliveryId) -> Result<(), StorageError>;

    /// How many deliveries wait, and when the oldest was first due.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn pending(&self) -> Result<(usize, Option<Timestamp>), StorageError>;
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// It answered something else, or not in time, or could not be
    /// reached: try again later. The text is for the log.
    Failed(String),
    /// It may not be called (its host resolves to a forbidden address):
    /// try again later, in case it changes, and say so in the log.
    Refused(String),
}

/// Signs and sends a delivery to its webhook's URL.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait WebhookSender: Send + Sync {
    /// One attempt of `delivery` to `webhook`, signed with its secret, at
    /// `now` (the signature's timestamp).
    async fn send(&self, webhook: &Webhook, delivery: &Delivery, now: Timestamp) -> SendOutcome;

    /// Whether deliveries to `url` could be made, as far as can be told at
    /// registration (where its host resolves, say); every delivery checks
    /// again. By default, every URL of a valid form can.
    ///
    /// # Errors
    /// [`InvalidWebhookUrl`] saying why not.
    async fn check_url(&self, url: &WebhookUrl) -> Result<(), InvalidWebhookUrl> {
        let _ = url;
        Ok(())
    }
}

/// Registering, listing and deleting a customer's webhooks.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    store: std::sync::Arc<dyn WebhookStore>,
    allow_http: bool,
    sender: Option<std::sync::Arc<dyn WebhookSender>>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// What a registration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewWebhook {
    /// The URL, as sent.
    pub url: String,
    /// The changes to be told of; empty: all.
    pub events: Vec<RunEventType>,
    /// The pipelines to be told of; empty: all of the customer's.
    pub pipeline_ids: Vec<PipelineId>,
}

impl NewWebhook {
    /// A registration of `url` for every change of every pipeline.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            events: Vec::new(),
            pipeline_ids: Vec::new(),
        }
    }
}

impl Webhooks {
    /// Webhooks kept in `store`; `allow_http` lets their URLs be `http://`
    /// (development and tests).
    pub fn new(store: std::sync::Arc<dyn WebhookStore>, allow_http: bool) -> Self {
        Self {
            store,
            allow_http,
            sender: None,
        }
    }

    /// The same, refusing at registration the URLs `sender` could not
    /// deliver to ([`WebhookSender::check_url`]).
    #[must_use]
    pub fn checking_urls_with(mut self, sender: std::sync::Arc<dyn WebhookSender>) -> Self {
        self.sender = Some(sender);
        self
    }

    /// Registers a webhook for the caller's customer, with the id and
    /// secret of the random bytes given, at `now`.
    ///
    /// # Errors
    /// See [`RegisterWebhookError`].
    pub async fn register(
        &self,
        ctx: &RequestContext,
        new: NewWebhook,
        random: ([u8; 16], [u8; 32]),
        now: Timestamp,
    ) -> Result<Webhook, RegisterWebhookError> {
        let url = WebhookUrl::parse(&new.url, self.allow_http)?;
        if let Some(sender) = &self.sender {
            sender.check_url(&url).await?;
        }
        let mut events = if new.events.is_empty() {
            RunEventType::ALL.to_vec()
        } else {
            new.events
        };
        events.sort_unstable();
        events.dedup();
        let mut pipeline_ids = new.pipeline_ids;
        pipeline_ids.sort_unstable();
        pipeline_ids.dedup();
        let webhook = Webhook {
            id: WebhookId::new(random.0),
            customer: ctx.customer().clone(),
            url,
            events,
            pipeline_ids,
            secret: WebhookSecret::new(random.1),
            created_at: now,
        };
        self.store
            .create(&webhook, MAX_WEBHOOKS_PER_CUSTOMER)
            .await?;
        Ok(webhook)
    }

    /// The caller's webhooks, oldest first.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    pub async fn list(&self, ctx: &RequestContext) -> Result<Vec<Webhook>, StorageError> {
        let mut webhooks = self.store.list(ctx.customer()).await?;
        webhooks.retain(|webhook| webhook.customer == *ctx.customer());
        Ok(webhooks)
    }

    /// Deletes the caller's webhook `id`; whether the caller had one.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    pub async fn delete(&self, ctx: &RequestContext, id: &WebhookId) -> Result<bool, StorageError> {
        self.store.delete(ctx.customer(), id).await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Utc.timestamp_opt(1_734_517_800 + seconds, 0).unwrap()
    }

    #[test]
    fn retries_come_after_5s_30s_2m_10m_30m_then_hourly_for_a_day() {
        let first = at(0);
        let mut failed_at = first;
        let mut delays = Vec::new();
        for attempts in 1.. {
            let Some(next) = next_attempt(attempts, first, failed_at) else {
                break;
            };
            delays.push((next - failed_at).num_seconds());
            failed_at = next;
        }
        assert_eq!(&delays[..6], [5, 30, 120, 600, 1800, 3600]);
        assert!(delays[6..].iter().all(|delay| *delay == 3600));
        // The last attempt is within the day, and the next would not be.
        let last = first + TimeDelta::seconds(delays.iter().sum());
        assert!(last <= first + TimeDelta::hours(24));
        assert!(last + TimeDelta::hours(1) > first + TimeDelta::hours(24));
    }

    #[test]
    fn urls_must_be_https_name_a_host_and_hide_nothing() {
        assert!(WebhookUrl::parse("https://hooks.example/maestro?x=1", false).is_ok());
        for (raw, err) in [
            ("http://hooks.example/", InvalidWebhookUrl::Scheme),
            ("ftp://hooks.example/", InvalidWebhookUrl::Scheme),
            ("hooks.example", InvalidWebhookUrl::Scheme),
            ("https:///path", InvalidWebhookUrl::Malformed),
            (
                "https://user:pw@hooks.example/",
                InvalidWebhookUrl::Malformed,
            ),
            ("https://hooks.example/a b", InvalidWebhookUrl::Malformed),
        ] {
            assert_eq!(WebhookUrl::parse(raw, false), Err(err), "{raw}");
        }
        assert!(WebhookUrl::parse("http://127.0.0.1:9/", true).is_ok());
        let long = format!("https://h.example/{}", "a".repeat(2048));
        assert_eq!(
            WebhookUrl::parse(&long, false),
            Err(InvalidWebhookUrl::TooLong)
        );
    }

    #[test]
    fn a_webhook_and_a_delivery_read_back_by_a_store_are_those_made() {
        let pipeline = PipelineId::parse("1b33ad2f_33d3_4837_9eeb_83c82c8b909d").unwrap();
        let customer = CustomerId::parse("acme").unwrap();
        let mut webhook = Webhook::new(
            WebhookId::new([1; 16]),
            customer.clone(),
            WebhookUrl::parse("https://hooks.example/", false).unwrap(),
            WebhookSecret::new([2; 32]),
            at(0),
        );
        assert_eq!(webhook.events, RunEventType::ALL);
        assert!(webhook.pipeline_ids.is_empty());
        webhook.pipeline_ids = vec![pipeline.clone()];
        let run = crate::Run::new(
            crate::RunId::manual(&at(0)),
            pipeline,
            crate::RunStatus::Success,
            at(0),
        );
        let event = RunEvent::new(
            crate::EventId::parse("1734517800000-0").unwrap(),
            crate::RunChange::new(customer.clone(), run),
        );
        let made = Delivery::new(&webhook, event.clone(), at(5));
        let stored = Delivery::stored(webhook.id.clone(), customer, event, at(5));
        assert_eq!(stored, made);
    }

    #[test]
    fn ids_and_secrets_round_trip_and_a_secret_never_shows() {
        let id = WebhookId::new([0xab; 16]);
        assert_eq!(id.as_str(), format!("wh_{}", "ab".repeat(16)));
        assert_eq!(WebhookId::parse(id.as_str()), Ok(id));
        assert_eq!(WebhookId::parse("wh_xyz"), Err(InvalidWebhookId));
        assert_eq!(
            format!("{:?}", WebhookSecret::new([7; 32])),
            "WebhookSecret(..)"
        );
    }

    #[tokio::test]
    async fn a_url_the_sender_refuses_is_not_registered() {
        let mut sender = MockWebhookSender::new();
        sender
            .expect_check_url()
            .returning(|_| Err(InvalidWebhookUrl::ForbiddenAddress));
        // A store that is never asked to keep anything.
        let store = MockWebhookStore::new();
        let webhooks = Webhooks::new(std::sync::Arc::new(store), false)
            .checking_urls_with(std::sync::Arc::new(sender));
        let ctx = RequestContext::new(crate::Caller::new(CustomerId::parse("acme").unwrap()));
        let refused = webhooks
            .register(
                &ctx,
                NewWebhook::new("https://10.0.0.1/hook"),
                ([1; 16], [2; 32]),
                at(0),
            )
            .await;
        assert!(matches!(
            refused,
            Err(RegisterWebhookError::InvalidUrl(
                InvalidWebhookUrl::ForbiddenAddress
            ))
        ));
    }
}
