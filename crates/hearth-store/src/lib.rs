//! Hearth's control-plane state: accounts, access keys, MicroVM images, image
//! versions, builds, microVMs, tags and idempotency records.
//!
//! - [`Store`] (module [`store`]) is the backend-neutral interface the API
//!   server, reconciler and builder use. Its methods are **synchronous and
//!   blocking**; async code calls them from `spawn_blocking`.
//! - [`SqliteStore`] (module [`sqlite`]) is the embedded implementation: one
//!   SQLite file `<data_dir>/hearth.db`, mode 0600, WAL, versioned migrations.
//!   A PostgreSQL implementation of the same trait is the planned multi-host
//!   backend.
//! - [`model`] holds the plain records, write inputs, filters and the
//!   pagination types ([`PageRequest`], [`Page`], [`Cursor`]).
//! - [`ids`] holds the validated id newtypes ([`AccountId`], [`AccountName`])
//!   and the generators of random ids and secrets.
//! - [`error`] holds [`StoreError`].
//!
//! Every row belongs to exactly one account, and every account-scoped method
//! takes the caller's [`AccountId`]: rows of other accounts are invisible
//! (reported as not found). Timestamps are epoch seconds everywhere.
//!
//! No HTTP, no clock policy, no state machines live here: the store records
//! what the domain layer decided.

#![forbid(unsafe_code)]

pub mod error;
pub mod ids;
pub mod model;
pub mod sqlite;
pub mod store;

pub use error::{ConflictKind, ResourceKind, Result, StoreError};
pub use ids::{AccountId, AccountName, InvalidId, SecretAccessKey};
pub use model::*;
pub use sqlite::{SqliteStore, DB_FILE_NAME};
pub use store::Store;

use sha2::{Digest, Sha256};

/// How long a client token is remembered: a retry within this time gets the
/// first answer again; after it, the token is free and its record is purged
/// ([`Store::purge_idempotency`], which `hearth serve` runs every hour).
pub const IDEMPOTENCY_RECORD_TTL_SECS: i64 = 24 * 60 * 60;

/// A started request whose record is still "in progress" after this long
/// was abandoned (its server died mid-request: a live server runs every
/// request to its end and completes or releases its token); the next
/// request with the token runs the operation again.
pub const IDEMPOTENCY_IN_PROGRESS_TTL_SECS: i64 = 5 * 60;

/// The idempotency fingerprint of a request: lowercase hex SHA-256 of the
/// bytes given. Pass a canonical form of the request (e.g. the parsed body
/// re-serialised with sorted keys and without the `clientToken` member), so
/// that the same logical request always gives the same fingerprint.
pub fn request_fingerprint(canonical_request: &[u8]) -> String {
    hex::encode(Sha256::digest(canonical_request))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_is_hex_sha256() {
        assert_eq!(
            super::request_fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
