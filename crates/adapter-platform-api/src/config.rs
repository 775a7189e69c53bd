//! The backend's settings and what can be wrong with them.

use std::time::Duration;

use secrecy::SecretString;

/// Where the upstream is and how to call it. `app` fills it from the
/// environment (or the same flags on `maestro serve`).
#[derive(Debug, Clone)]
pub struct PlatformApiConfig {
    /// The upstream's base URL (`MAESTRO_PLATFORM_API_URL`): `http` or
    /// `https`, optionally with a path prefix, without user information,
    /// query or fragment. Routes are appended to it.
    pub base_url: String,
    /// The service token sent as `Authorization: Bearer <token>` on every
    /// call (`MAESTRO_PLATFORM_API_TOKEN`).
    pub token: SecretString,
    /// The longest one call may take, retries included
    /// (`MAESTRO_UPSTREAM_TIMEOUT_MS`, default [`Self::DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
}

impl PlatformApiConfig {
    /// The timeout when `MAESTRO_UPSTREAM_TIMEOUT_MS` is not set.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// The settings cannot make a working backend. The messages name the
/// setting but never echo the token.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base URL does not parse.
    #[error("MAESTRO_PLATFORM_API_URL is not a URL: {0}")]
    InvalidUrl(String),
    /// The base URL parses but cannot be a base for the routes.
    #[error(
        "MAESTRO_PLATFORM_API_URL must be an http or https URL without user information, query or fragment"
    )]
    UnsupportedUrl,
    /// The token is empty or cannot travel in a header.
    #[error("MAESTRO_PLATFORM_API_TOKEN must be a non-empty token of visible ASCII characters")]
    InvalidToken,
    /// A zero timeout would fail every call.
    #[error("MAESTRO_UPSTREAM_TIMEOUT_MS must be more than 0")]
    ZeroTimeout,
    /// The HTTP client could not be built (for example no TLS backend).
    #[error("cannot build the HTTP client for the Platform-API backend")]
    Client(#[source] reqwest::Error),
}
