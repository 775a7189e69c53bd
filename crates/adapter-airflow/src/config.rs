//! What the Airflow backend needs to know: where Airflow is, how to
//! authenticate to it, which tags name customers, and how long a call may
//! take.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The tag prefix that names a DAG's customer when none is configured.
pub const DEFAULT_CUSTOMER_TAG_PREFIX: &str = "customer:";

/// The longest a call may take when no timeout is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a DAG read unpaused is trusted to stay so, for triggers, when
/// nothing else is configured.
pub const DEFAULT_DAG_CACHE_TTL: Duration = Duration::from_secs(1);

/// The settings of the Airflow backend.
#[derive(Debug, Clone)]
pub struct AirflowConfig {
    /// The Airflow 3 API server's base URL (`MAESTRO_AIRFLOW_URL`), for
    /// example `https://airflow.example.com`; REST API v2 lives under its
    /// `/api/v2`. A path prefix (an Airflow behind a proxy at `/airflow`) is
    /// kept.
    pub url: String,
    /// How Maestro authenticates to Airflow.
    pub auth: AirflowAuth,
    /// The prefix of the tag that names a DAG's customer
    /// (`MAESTRO_AIRFLOW_CUSTOMER_TAG_PREFIX`, default `customer:`).
    pub customer_tag_prefix: String,
    /// The longest one call of the backend may take, all its requests to
    /// Airflow included (`MAESTRO_UPSTREAM_TIMEOUT_MS`).
    pub timeout: Duration,
    /// How long a DAG read unpaused and owned by the caller's customer is
    /// taken to still be so, sparing a trigger the read before it posts the
    /// run (`MAESTRO_AIRFLOW_DAG_CACHE_MS`, default 1 s). Only that answer is
    /// kept, and this backend's own pause drops it at once; a pause made
    /// elsewhere is seen within this time. Zero reads the DAG before every
    /// trigger.
    pub dag_cache_ttl: Duration,
}

impl AirflowConfig {
    /// Settings for the Airflow at `url`, with the default tag prefix and
    /// timeout.
    pub fn new(url: impl Into<String>, auth: AirflowAuth) -> Self {
        Self {
            url: url.into(),
            auth,
            customer_tag_prefix: DEFAULT_CUSTOMER_TAG_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            dag_cache_ttl: DEFAULT_DAG_CACHE_TTL,
        }
    }
}

/// How Maestro proves itself to Airflow.
#[derive(Debug, Clone)]
pub enum AirflowAuth {
    /// A fixed bearer token (`MAESTRO_AIRFLOW_TOKEN`), sent as it is and
    /// never renewed.
    Token(SecretString),
    /// A username and password (`MAESTRO_AIRFLOW_USERNAME`,
    /// `MAESTRO_AIRFLOW_PASSWORD`), exchanged at Airflow's `/auth/token` for
    /// a bearer token that is cached and renewed before it expires.
    Credentials {
        /// The Airflow account's name.
        username: String,
        /// The Airflow account's password.
        password: SecretString,
    },
}

/// The settings cannot work. No variant's message holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not an absolute `http` or `https` URL.
    #[error("the Airflow URL must be an absolute http:// or https:// URL")]
    InvalidUrl,
    /// The URL carries a username or password, which would end up in logs.
    #[error(
        "the Airflow URL must not carry credentials; set the username and password or the token instead"
    )]
    CredentialsInUrl,
    /// The URL has a query or fragment, which cannot prefix API paths.
    #[error("the Airflow URL must not have a query or fragment")]
    UrlWithQuery,
    /// The fixed token is empty.
    #[error("the Airflow token is empty")]
    EmptyToken,
    /// The fixed token holds characters an HTTP header cannot carry.
    #[error("the Airflow token holds characters an HTTP header cannot carry")]
    InvalidToken,
    /// The username or password is empty.
    #[error("the Airflow username and password must both be set")]
    EmptyCredentials,
    /// The customer tag prefix is empty, so every tag would name a customer.
    #[error("the customer tag prefix must not be empty")]
    EmptyTagPrefix,
    /// The timeout is zero.
    #[error("the upstream timeout must be more than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built (for example, no TLS roots).
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl AirflowConfig {
    /// Checks the settings and returns the base URL without a trailing
    /// slash.
    pub(crate) fn validate(&self) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(self.url.trim()).map_err(|_| ConfigError::InvalidUrl)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::InvalidUrl);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::CredentialsInUrl);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::UrlWithQuery);
        }
        match &self.auth {
            AirflowAuth::Token(token) if token.expose_secret().trim().is_empty() => {
                return Err(ConfigError::EmptyToken);
            }
            AirflowAuth::Credentials { username, password }
                if username.is_empty() || password.expose_secret().is_empty() =>
            {
                return Err(ConfigError::EmptyCredentials);
            }
            AirflowAuth::Token(_) | AirflowAuth::Credentials { .. } => {}
        }
        if self.customer_tag_prefix.is_empty() {
            return Err(ConfigError::EmptyTagPrefix);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> AirflowConfig {
        AirflowConfig::new(url, AirflowAuth::Token(SecretString::from("t")))
    }

    #[test]
    fn a_plain_url_keeps_its_path_prefix_without_the_trailing_slash() {
        assert_eq!(
            config("https://airflow.example.com/airflow/")
                .validate()
                .unwrap(),
            "https://airflow.example.com/airflow"
        );
        assert_eq!(
            config("http://127.0.0.1:8080").validate().unwrap(),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn urls_that_cannot_prefix_api_paths_are_refused() {
        assert!(matches!(
            config("airflow:8080").validate(),
            Err(ConfigError::InvalidUrl)
        ));
        assert!(matches!(
            config("ftp://airflow").validate(),
            Err(ConfigError::InvalidUrl)
        ));
        assert!(matches!(
            config("").validate(),
            Err(ConfigError::InvalidUrl)
        ));
        assert!(matches!(
            config("https://admin:secret@airflow").validate(),
            Err(ConfigError::CredentialsInUrl)
        ));
        assert!(matches!(
            config("https://airflow/?x=1").validate(),
            Err(ConfigError::UrlWithQuery)
        ));
    }

    #[test]
    fn empty_secrets_prefix_and_timeout_are_refused() {
        let mut empty_token = config("http://airflow");
        empty_token.auth = AirflowAuth::Token(SecretString::from(" "));
        assert!(matches!(
            empty_token.validate(),
            Err(ConfigError::EmptyToken)
        ));

        let mut empty_password = config("http://airflow");
        empty_password.auth = AirflowAuth::Credentials {
            username: "maestro".to_owned(),
            password: SecretString::from(""),
        };
        assert!(matches!(
            empty_password.validate(),
            Err(ConfigError::EmptyCredentials)
        ));

        let mut empty_prefix = config("http://airflow");
        empty_prefix.customer_tag_prefix.clear();
        assert!(matches!(
            empty_prefix.validate(),
            Err(ConfigError::EmptyTagPrefix)
        ));

        let mut zero = config("http://airflow");
        zero.timeout = Duration::ZERO;
        assert!(matches!(zero.validate(), Err(ConfigError::ZeroTimeout)));
    }

    #[test]
    fn debug_output_hides_the_secrets() {
        let config = AirflowConfig::new(
            "http://airflow",
            AirflowAuth::Credentials {
                username: "maestro".to_owned(),
                password: SecretString::from("hunter2"),
            },
        );
        let debug = format!("{config:?}");
        assert!(debug.contains("maestro"));
        assert!(!debug.contains("hunter2"));
    }
}
