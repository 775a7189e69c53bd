//! JWT verification: the [`domain::AuthContext`] the HTTP API uses.
