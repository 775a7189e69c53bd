//! The tokens a verifier checked lately, so that a client sending the same
//! token on every request pays for its signature once.
//!
//! An entry is the token's exact text and what its verified claims say. Its
//! lifetime is judged again on every use ([`ClaimRules::admitted`]), so a
//! cached token expires exactly when an uncached one would; the entry also
//! carries a stamp of the keys that verified it, which the verifier
//! compares with its keys now, so that a key withdrawn from a JWKS stops
//! admitting its tokens at once. Only tokens whose signature held are
//! kept: a refused token is checked in full every time.
//!
//! [`ClaimRules::admitted`]: crate::claims::ClaimRules::admitted

use std::sync::Arc;

use crate::claims::Claimed;

/// The most tokens kept; the least used go first (S3-FIFO). About half a
/// KiB each at most, so a few MiB when full.
pub(crate) const CAPACITY: usize = 16_384;

/// Verified tokens, by their text.
pub(crate) struct TokenCache<S> {
    entries: quick_cache::sync::Cache<String, Arc<Entry<S>>>,
}

/// What is known of a verified token.
pub(crate) struct Entry<S> {
    /// Which keys verified it.
    pub(crate) stamp: S,
    /// What its claims say.
    pub(crate) claimed: Claimed,
}

impl<S> TokenCache<S> {
    /// An empty cache of at most [`CAPACITY`] tokens.
    pub(crate) fn new() -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(CAPACITY),
        }
    }

    /// What is known of `token`, when it was verified lately.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<Entry<S>>> {
        self.entries.get(token)
    }

    /// Remembers that `token`'s signature held under the keys `stamp`, and
    /// what its claims say.
    pub(crate) fn insert(&self, token: &str, stamp: S, claimed: Claimed) {
        self.entries
            .insert(token.to_owned(), Arc::new(Entry { stamp, claimed }));
    }
}
