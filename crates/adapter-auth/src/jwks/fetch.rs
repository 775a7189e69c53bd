//! The HTTP side of the JWKS verifier: where the set is, and getting a
//! bounded document from there (the set itself, or an OIDC discovery
//! document naming it).
//!
//! Whoever can change the key set can mint tokens, so the set only comes
//! over https (plain http only from this machine, for tests and sidecars),
//! and a redirect is a failed fetch, never followed: the configured URL is
//! the only place keys come from.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::redirect;
use serde::Deserialize;

use super::{JwksConfigError, JwksFetchError, JwksSource};

/// The largest JWKS or discovery document read. Real ones are a few
/// kilobytes; the cap keeps a broken or hostile endpoint from filling memory.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The path an OIDC issuer serves its discovery document under (OpenID
/// Connect Discovery 1.0, section 4).
const DISCOVERY_PATH: &str = ".well-known/openid-configuration";

pub(super) const JWKS_ENDPOINT: &str = "JWKS endpoint";
pub(super) const DISCOVERY_ENDPOINT: &str = "OIDC discovery endpoint";

/// Where the set is, checked.
#[derive(Debug)]
pub(super) enum Source {
    /// The set's own URL.
    Url(Url),
    /// An OIDC issuer, and the URL of its discovery document.
    Discovery { issuer: String, document: Url },
}

impl Source {
    /// Checks the configured source.
    pub(super) fn new(source: &JwksSource) -> Result<Self, JwksConfigError> {
        Ok(match source {
            JwksSource::Url(raw) => Self::Url(secure_url(raw)?),
            JwksSource::Discovery(issuer) => {
                secure_url(issuer)?;
                // OpenID Connect Discovery 1.0, section 4.1: the issuer with
                // any terminating `/` removed, then the well-known path.
                let document = format!("{}/{DISCOVERY_PATH}", issuer.trim_end_matches('/'));
                Self::Discovery {
                    document: secure_url(&document)?,
                    issuer: issuer.clone(),
                }
            }
        })
    }

    /// What the source is and where, for `Debug` output.
    pub(super) fn describe(&self) -> (&'static str, &str) {
        match self {
            Self::Url(url) => ("jwks", url.as_str()),
            Self::Discovery { issuer, .. } => ("discovery", issuer.as_str()),
        }
    }
}

/// The HTTP client of the JWKS and discovery endpoints.
#[derive(Debug)]
pub(super) struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client whose every request ends within `timeout`, and which
    /// follows no redirect.
    pub(super) fn new(timeout: Duration) -> Result<Self, JwksConfigError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|err| JwksConfigError::HttpClient(err.to_string()))?;
        Ok(Self { client })
    }

    /// Finds the `jwks_uri` in the issuer's discovery document.
    pub(super) async fn discover(
        &self,
        issuer: &str,
        document: &Url,
    ) -> Result<Url, JwksFetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }

        let body = self.get(document.clone(), DISCOVERY_ENDPOINT).await?;
        let discovery: Discovery = serde_json::from_slice(&body)
            .map_err(|_| JwksFetchError::BadDiscovery("is not the expected JSON object"))?;
        // OpenID Connect Discovery 1.0, section 4.3: the issuer the document
        // names must be identical to the one it was fetched for, or it
        // belongs to someone else. Identical means the very string: no
        // trailing `/` forgiven, no case folded.
        match discovery.issuer.as_deref() {
            Some(named) if named == issuer => {}
            Some(_) => return Err(JwksFetchError::BadDiscovery("names another issuer")),
            None => return Err(JwksFetchError::BadDiscovery("names no issuer")),
        }
        let jwks_uri = discovery
            .jwks_uri
            .ok_or(JwksFetchError::BadDiscovery("has no jwks_uri"))?;
        secure_url(&jwks_uri).map_err(|_| {
            JwksFetchError::BadDiscovery(
                "has a jwks_uri that is not https (or http on a loopback host)",
            )
        })
    }

    /// The body of a 2xx answer to a GET of `url`, at most
    /// [`MAX_DOCUMENT_BYTES`] long.
    pub(super) async fn get(
        &self,
        url: Url,
        endpoint: &'static str,
    ) -> Result<Vec<u8>, JwksFetchError> {
        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                JwksFetchError::Timeout { endpoint }
            } else {
                JwksFetchError::Unreachable {
                    endpoint,
                    reason: error_chain(&err.without_url()),
                }
            }
        };
        let mut response = self
            .client
            .get(url)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(JwksFetchError::Redirected {
                endpoint,
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(JwksFetchError::Status {
                endpoint,
                status: status.as_u16(),
            });
        }
        let too_large = JwksFetchError::TooLarge { endpoint };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Parses `raw` as an absolute https URL, or an http one whose host is on
/// this machine (`localhost`, 127.0.0.0/8 or `::1`).
fn secure_url(raw: &str) -> Result<Url, JwksConfigError> {
    let url = match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
        _ => return Err(JwksConfigError::InvalidUrl(raw.to_owned())),
    };
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(JwksConfigError::InsecureUrl(raw.to_owned()));
    }
    Ok(url)
}

/// Whether `url` names this machine: `localhost`, or a loopback address.
/// The URL parser has already lower-cased the host and turned every IPv4
/// spelling into dotted decimal.
fn is_loopback_host(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error and its causes, `: `-separated: reqwest's own text for a refused
/// connection is only "error sending request".
fn error_chain(err: &dyn std::error::Error) -> String {
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
    use super::*;

    #[test]
    fn https_urls_are_taken_and_http_only_on_a_loopback_host() {
        for raw in [
            "https://idp.example/jwks",
            "https://10.0.0.1:8443/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.10.20.30/jwks",
            "http://2130706433/jwks",
            "http://[::1]:9000/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:80/jwks",
        ] {
            assert!(secure_url(raw).is_ok(), "{raw}");
        }
        for raw in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "http://128.0.0.1/jwks",
            "http://[::2]/jwks",
            "http://[::ffff:127.0.0.1]/jwks",
            "http://localhost.idp.example/jwks",
            "http://0.0.0.0/jwks",
        ] {
            assert_eq!(
                secure_url(raw).err(),
                Some(JwksConfigError::InsecureUrl(raw.to_owned())),
                "{raw}"
            );
        }
        assert_eq!(
            Source::new(&JwksSource::Discovery("http://idp.example".to_owned())).err(),
            Some(JwksConfigError::InsecureUrl(
                "http://idp.example".to_owned()
            ))
        );
    }

    #[test]
    fn discovery_looks_under_the_issuer_path() {
        let source = Source::new(&JwksSource::Discovery(
            "https://idp.example/realms/a/".to_owned(),
        ))
        .unwrap();
        let Source::Discovery { document, .. } = &source else {
            panic!("a discovery source");
        };
        assert_eq!(
            document.as_str(),
            "https://idp.example/realms/a/.well-known/openid-configuration"
        );
    }
}
