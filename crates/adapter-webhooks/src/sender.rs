//! [`HttpWebhookSender`]: one signed attempt of a delivery over HTTP(S),
//! to checked addresses only.
//!
//! Every attempt resolves the URL's host and checks every address again
//! (a DNS answer that changed since registration is caught), then
//! connects only to those addresses. The HTTP client is built for the
//! attempt with the checked addresses as the only answer for the host
//! (`resolve_to_addrs`), on a resolver that answers nothing else, so no
//! second lookup can hand the connection another address between the
//! check and the connect (DNS rebinding). A literal IP host is connected
//! to as written, and that address is the one checked. No proxy is used
//! (it would resolve the name itself), redirects are not followed (a 3xx
//! is a failure), and connections are not pooled, so every attempt goes
//! through the check.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use domain::{
    Delivery, InvalidWebhookUrl, RunEvent, SendOutcome, Timestamp, Webhook, WebhookSender,
    WebhookUrl,
};
use reqwest::{
    Client, Response, Url,
    dns::{Name, Resolve, Resolving},
    header::CONTENT_TYPE,
    redirect,
};

use crate::{
    guard::{AddressGuard, Refusal, Target},
    signing::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign},
};

/// What the requests say they come from.
const USER_AGENT: &str = concat!("maestro/", env!("CARGO_PKG_VERSION"));

/// Renders a delivery's body: the JSON
/// `{"type": <event type>, "timestamp": <RFC 3339 of the change>, "data": <the run>}`,
/// the same on every attempt (the attempt's time is in the
/// `webhook-timestamp` header). The run's JSON shape is the HTTP API's, so
/// the binary passes a renderer from there.
pub type RenderBody = Arc<dyn Fn(&RunEvent) -> Vec<u8> + Send + Sync>;

/// How deliveries are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Lets webhooks use `http` and any address, private and loopback ones
    /// included (`MAESTRO_WEBHOOKS_ALLOW_INSECURE=true`): development and
    /// tests only.
    pub allow_insecure: bool,
    /// The longest one attempt may take, from resolving the host to the
    /// end of reading the answer ([`Self::DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// How much of an answer's body is read before the connection is
    /// dropped ([`Self::DEFAULT_MAX_RESPONSE_BYTES`]).
    pub max_response_bytes: usize,
}

impl WebhooksConfig {
    /// The contract's bound on one attempt.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// How much of an answer is read by default: 64 KiB.
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

    /// The defaults, with `allow_insecure` as given.
    pub fn new(allow_insecure: bool) -> Self {
        Self {
            allow_insecure,
            timeout: Self::DEFAULT_TIMEOUT,
            max_response_bytes: Self::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self::new(false)
    }
}

/// Signs deliveries as Standard Webhooks says and posts them to their
/// webhook's URL, within the address guard's rules.
#[derive(Clone)]
pub struct HttpWebhookSender {
    config: WebhooksConfig,
    guard: AddressGuard,
    render: RenderBody,
}

impl fmt::Debug for HttpWebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpWebhookSender")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpWebhookSender {
    /// A sender with `config`, rendering bodies with `render`.
    pub fn new(config: WebhooksConfig, render: RenderBody) -> Self {
        Self {
            guard: AddressGuard::new(config.allow_insecure),
            config,
            render,
        }
    }

    /// The guard deliveries go through, for checks at registration.
    pub fn guard(&self) -> AddressGuard {
        self.guard
    }

    async fn attempt(&self, webhook: &Webhook, delivery: &Delivery, now: Timestamp) -> SendOutcome {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let Ok(url) = Url::parse(webhook.url.as_str()) else {
            return SendOutcome::Refused("the url does not parse".to_owned());
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let target = match tokio::time::timeout_at(deadline, self.guard.resolve(&url)).await {
            Ok(Ok(target)) => target,
            Ok(Err(unresolved @ Refusal::Unresolved { .. })) => {
                return SendOutcome::Failed(unresolved.to_string());
            }
            Ok(Err(refusal)) => return SendOutcome::Refused(refusal.to_string()),
            Err(_) => {
                return SendOutcome::Failed(format!(
                    "the host {host} did not resolve within {:?}",
                    self.config.timeout
                ));
            }
        };
        let client = match self.client(&target) {
            Ok(client) => client,
            Err(err) => {
                return SendOutcome::Failed(format!(
                    "no HTTP client for {host}: {}",
                    describe(err)
                ));
            }
        };

        let body = (self.render)(&delivery.event);
        let timestamp = now.timestamp();
        let signature = sign(
            webhook.secret.bytes(),
            delivery.id.as_str(),
            timestamp,
            &body,
        );
        let request = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(ID_HEADER, delivery.id.as_str())
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body);
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) if !err.is_timeout() => {
                return SendOutcome::Failed(format!("{host}: {}", describe(err)));
            }
            // The client's own timeout (the backstop) may fire first.
            Ok(Err(_)) | Err(_) => {
                return SendOutcome::Failed(format!(
                    "{host} did not answer within {:?}",
                    self.config.timeout
                ));
            }
        };
        let status = response.status();
        // The status decides; the body is read only so that the receiver
        // can finish writing, up to the bound and the deadline, then the
        // connection is dropped.
        let _ = tokio::time::timeout_at(deadline, drain(response, self.config.max_response_bytes))
            .await;
        if status.is_success() {
            SendOutcome::Delivered
        } else if status.is_redirection() {
            SendOutcome::Failed(format!(
                "{host} answered {status}; redirects are not followed"
            ))
        } else {
            SendOutcome::Failed(format!("{host} answered {status}"))
        }
    }

    /// A client that can reach only `target`'s checked addresses.
    fn client(&self, target: &Target) -> reqwest::Result<Client> {
        let mut builder = Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .redirect(redirect::Policy::none())
            // A proxy would resolve the host itself, past the guard.
            .no_proxy()
            .https_only(!self.config.allow_insecure)
            // A backstop: every step already runs under the attempt's
            // deadline.
            .timeout(self.config.timeout)
            .pool_max_idle_per_host(0)
            // Any name but the checked host fails to resolve.
            .dns_resolver(Arc::new(CheckedHostOnly));
        if !target.is_ip {
            builder = builder.resolve_to_addrs(&target.host, &target.addrs);
        }
        builder.build()
    }
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn send(&self, webhook: &Webhook, delivery: &Delivery, now: Timestamp) -> SendOutcome {
        let outcome = self.attempt(webhook, delivery, now).await;
        // The URL is not logged: its path or query may hold a token.
        tracing::debug!(
            webhook = %webhook.id,
            delivery = delivery.id.as_str(),
            attempts = delivery.attempts,
            ?outcome,
            "webhook delivery attempted"
        );
        outcome
    }

    /// Checks a URL at registration, as [`AddressGuard::check_url`] does.
    async fn check_url(&self, url: &WebhookUrl) -> Result<(), InvalidWebhookUrl> {
        self.guard.check_url(url).await
    }
}

/// The resolver under the checked host's pinned addresses: any other name
/// does not resolve, so nothing reaches an unchecked address.
#[derive(Debug)]
struct CheckedHostOnly;

impl Resolve for CheckedHostOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let err = format!("{} is not the checked host", name.as_str());
        Box::pin(std::future::ready(Err(err.into())))
    }
}

/// Reads the body until it ends or `limit` bytes have come, keeping
/// nothing; how much was read.
async fn drain(mut response: Response, limit: usize) -> usize {
    let mut read = 0;
    while read < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    read
}

/// The error and its causes, without the URL (whose path or query may hold
/// a token).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    use super::*;

    fn sender() -> HttpWebhookSender {
        HttpWebhookSender::new(WebhooksConfig::new(true), Arc::new(|_| Vec::new()))
    }

    #[tokio::test]
    async fn the_client_reaches_the_checked_host_at_its_checked_addresses_only() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let port = server.address().port();
        // `.invalid` never resolves (RFC 6761): only the pinned answer can
        // take the request to the receiver.
        let client = sender()
            .client(&Target {
                host: "hooks.example.invalid".to_owned(),
                is_ip: false,
                addrs: vec![*server.address()],
            })
            .unwrap();

        let pinned = client
            .get(format!("http://hooks.example.invalid:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(pinned.status(), 200);

        // Any other name finds no address, not even one that the system
        // resolver would answer.
        let other = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(other.is_connect(), "{other:?}");
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn errors_are_described_without_the_url() {
        let client = sender()
            .client(&Target {
                host: "127.0.0.1".to_owned(),
                is_ip: true,
                addrs: Vec::new(),
            })
            .unwrap();
        let err = client
            .get("http://nowhere.example.invalid/hook?token=s3cr3t")
            .send()
            .await
            .unwrap_err();
        let text = describe(err);
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("is not the checked host"), "{text}");
    }
}
