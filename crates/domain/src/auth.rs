//! Who is calling: the customer a verified credential names, and the port
//! that verifies credentials.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

use crate::TraceContext;

/// The customer that owns pipelines. It only ever comes from a verified
/// credential, never from what the request itself says.
///
/// Shared, not copied, when cloned: every request clones its caller's
/// from the cache of verified tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(Arc<str>);

/// The text was not a usable customer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("customer id must be 1 to 255 bytes with no control, invisible or format characters")]
pub struct InvalidCustomerId;

impl CustomerId {
    const MAX_LEN: usize = 255;

    /// Accepts 1 to 255 bytes of text without control characters or
    /// format characters (Unicode category Cf: zero-width spaces, direction
    /// overrides, soft hyphens...). The id is taken as it is otherwise: no
    /// trimming or case folding, since it names a tenant; refusing what
    /// cannot be seen is what keeps `acme` and `acme` followed by a
    /// zero-width space from being two look-alike tenants.
    ///
    /// # Errors
    /// [`InvalidCustomerId`] for an empty or overlong id, or one holding a
    /// control or format character.
    pub fn parse(raw: &str) -> Result<Self, InvalidCustomerId> {
        let invisible = |c: char| c.is_control() || c.general_category() == GeneralCategory::Format;
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.chars().any(invisible) {
            return Err(InvalidCustomerId);
        }
        Ok(Self(raw.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A verified caller: the customer a credential names, and who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    customer: CustomerId,
    subject: Option<Arc<str>>,
}

impl Caller {
    /// A caller acting for `customer`, with no subject.
    pub fn new(customer: CustomerId) -> Self {
        Self {
            customer,
            subject: None,
        }
    }

    /// The same caller, naming who acted (a token's `sub`), for the audit
    /// trail.
    #[must_use]
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into().into());
        self
    }

    /// The customer the credential names.
    pub fn customer(&self) -> &CustomerId {
        &self.customer
    }

    /// Who acted, when the credential says.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

/// Everything a use case knows about the request it serves: who calls, the
/// request's correlation id, and its place in a distributed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    caller: Caller,
    request_id: Option<String>,
    trace: Option<TraceContext>,
}

impl RequestContext {
    /// A context for `caller` without a request id.
    pub fn new(caller: Caller) -> Self {
        Self {
            caller,
            request_id: None,
            trace: None,
        }
    }

    /// The same context with the request's correlation id, which backends
    /// that take one are passed.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// The same context with the request's place in its trace, which
    /// backends that take one pass on, so that their work joins the trace.
    #[must_use]
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Who is calling; every port call is scoped to this caller's customer.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The customer every port call is scoped to.
    pub fn customer(&self) -> &CustomerId {
        &self.caller.customer
    }

    /// The request's correlation id, if it has one.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The request's place in its trace, if it has one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }
}

/// Why a credential was refused. Clients only ever learn that it was; the
/// reason is for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential was presented.
    #[error("no credential")]
    Missing,
    /// The credential is not a well-formed token.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with any configured key.
    #[error("bad signature")]
    BadSignature,
    /// The token's algorithm is not the one the key is for (this covers `none`).
    #[error("refused algorithm")]
    RefusedAlgorithm,
    /// `exp` is in the past, or missing.
    #[error("expired or without exp")]
    Expired,
    /// `nbf` is in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The customer claim is missing, empty or not a usable id.
    #[error("missing or invalid customer claim")]
    MissingCustomer,
    /// No key could be had to verify with (for example the key set is down).
    #[error("verification keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::RefusedAlgorithm => "refused_algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingCustomer => "missing_customer",
            Self::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// Verifies a caller's credential and says who is calling.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AuthContext: Send + Sync {
    /// Verifies a bearer token.
    ///
    /// # Errors
    /// An [`AuthError`] naming why the token was refused: malformed, badly
    /// signed, of a refused algorithm, expired, not yet valid, for another
    /// issuer or audience, without a usable customer claim, or unverifiable
    /// because no key could be had.
    async fn authenticate(&self, bearer_token: &str) -> Result<Caller, AuthError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_are_taken_as_they_are() {
        assert_eq!(
            CustomerId::parse("Acme Corp").unwrap().as_str(),
            "Acme Corp"
        );
    }

    #[test]
    fn empty_overlong_and_control_customer_ids_are_refused() {
        assert_eq!(CustomerId::parse(""), Err(InvalidCustomerId));
        assert_eq!(CustomerId::parse(&"x".repeat(256)), Err(InvalidCustomerId));
        assert_eq!(CustomerId::parse("acme\n"), Err(InvalidCustomerId));
        assert!(CustomerId::parse(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn customer_ids_with_invisible_format_characters_are_refused() {
        for raw in [
            "acme_corp\u{200b}", // zero-width space
            "\u{feff}acme_corp", // byte order mark
            "acme\u{202e}proc",  // right-to-left override
            "ac\u{00ad}me",      // soft hyphen
            "acme\u{2060}",      // word joiner
            "acme\u{e0041}",     // tag character
        ] {
            assert_eq!(CustomerId::parse(raw), Err(InvalidCustomerId), "{raw:?}");
        }
        // Visible letters of any script are fine.
        assert!(CustomerId::parse("société-acmé").is_ok());
        assert!(CustomerId::parse("株式会社").is_ok());
    }

    #[test]
    fn a_caller_and_its_context_carry_what_they_were_given() {
        let acme = CustomerId::parse("acme").unwrap();
        let ctx = RequestContext::new(Caller::new(acme.clone()).with_subject("alice"))
            .with_request_id("req-1");
        assert_eq!(ctx.customer(), &acme);
        assert_eq!(ctx.caller().subject(), Some("alice"));
        assert_eq!(ctx.request_id(), Some("req-1"));
        assert_eq!(RequestContext::new(Caller::new(acme)).request_id(), None);
    }
}
