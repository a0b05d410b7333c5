//! Plain records the store reads and writes, the inputs of its writes, list
//! filters and pagination types. No behaviour, no I/O.
//!
//! Conventions:
//! - Every timestamp is whole seconds since the Unix epoch (`*_secs`).
//! - States are the API's enum strings (`"CREATING"`, `"RUNNING"`, ...),
//!   stored as text and never interpreted by the store; the domain layer owns
//!   the state machines.
//! - `doc` is the rest of the resource as the API answers it (a JSON object).
//!   The store keeps it verbatim; the columns beside it (ids, state, times)
//!   are what the store indexes and filters on. The server is free to repeat
//!   those fields inside `doc`; keeping them in step is its job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{AccountId, AccountName, SecretAccessKey};

/// Largest page a list call returns; larger limits are clamped.
pub const MAX_PAGE_LIMIT: u32 = 50;

/// Position after which the next page starts: the sort key of the last item
/// returned. Lists are ordered by `(created_at_secs, id)` ascending.
///
/// This is *not* opaque by itself: the server seals it (serde + HMAC) into
/// the `nextToken` it hands out, and unseals it before calling the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    pub created_at_secs: i64,
    /// The id column of the listed kind (image id, version number as
    /// decimal text, build id, microvm id, account id).
    pub id: String,
}

/// Which page to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// 1..=50; 0 is treated as 1 and anything above 50 as 50.
    pub limit: u32,
    /// `None` for the first page, otherwise the `next` of the previous page.
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        PageRequest { limit, after: None }
    }

    pub fn after(limit: u32, cursor: Cursor) -> Self {
        PageRequest {
            limit,
            after: Some(cursor),
        }
    }

    /// The limit actually applied.
    pub fn clamped_limit(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_LIMIT)
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `Some` if more items may follow; pass it back as `PageRequest::after`.
    /// `None` on the last page (the API then omits `nextToken`).
    pub next: Option<Cursor>,
}

// ---------------------------------------------------------------- accounts

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub account_id: AccountId,
    pub name: AccountName,
    pub is_admin: bool,
    pub created_at_secs: i64,
}

/// An access key's metadata (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub access_key_id: String,
    pub account_id: AccountId,
    pub created_at_secs: i64,
    pub revoked_at_secs: Option<i64>,
}

/// A key just created: the only time the secret is handed out by value.
#[derive(Debug, Clone)]
pub struct CreatedAccessKey {
    pub key: AccessKey,
    pub secret_access_key: SecretAccessKey,
}

// ------------------------------------------------------------------ images

/// A MicroVM image (`GetMicrovmImageOutput` minus what lives in `doc`).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub account_id: AccountId,
    pub image_id: String,
    /// Unique per account.
    pub name: String,
    /// Unique per account (and, containing the account id, in practice globally).
    pub arn: String,
    pub state: String,
    pub created_at_secs: i64,
    pub updated_at_secs: i64,
    pub doc: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    /// Typically [`crate::ids::new_image_id`]; unique across the store.
    pub image_id: String,
    pub name: String,
    pub arn: String,
    pub state: String,
    pub created_at_secs: i64,
    pub doc: Value,
    /// Tags written in the same transaction as the image, on `arn`.
    pub tags: BTreeMap<String, String>,
}

/// Filters of `list_images`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFilter {
    /// Only images whose name contains this string (case-sensitive), as the
    /// API's `nameFilter`.
    pub name_contains: Option<String>,
}

/// A version of an image. Versions are numbered "1", "2", ... per image in
/// allocation order; numbers are never reused, even after a delete.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageVersion {
    pub account_id: AccountId,
    pub image_id: String,
    pub version: String,
    pub state: String,
    /// `ACTIVE` / `INACTIVE`.
    pub status: String,
    pub created_at_secs: i64,
    pub updated_at_secs: i64,
    pub doc: Value,
}

/// Input of `create_image_version`; the version number is allocated by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImageVersion {
    pub state: String,
    pub status: String,
    pub created_at_secs: i64,
    pub doc: Value,
}

/// Update of a version: new state, status and document, optionally
/// conditional on the current state.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionUpdate {
    pub state: String,
    pub status: String,
    pub doc: Value,
    pub updated_at_secs: i64,
    /// If set, the update happens only if the current state equals it;
    /// otherwise `Conflict(StateMismatch)`.
    pub expected_state: Option<String>,
}

// ------------------------------------------------------------------ builds

/// A build of an image version (`GetMicrovmImageBuildOutput`).
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    pub account_id: AccountId,
    pub image_id: String,
    pub version: String,
    /// Unique across the store.
    pub build_id: String,
    pub state: String,
    pub created_at_secs: i64,
    pub updated_at_secs: i64,
    pub doc: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewBuild {
    pub image_id: String,
    pub version: String,
    /// Typically [`crate::ids::new_build_id`].
    pub build_id: String,
    pub state: String,
    pub created_at_secs: i64,
    pub doc: Value,
}

/// Filters of `list_builds`, matched against the top-level members of the
/// build's `doc` with the same names as the API's query parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildFilter {
    /// `doc.architecture`
    pub architecture: Option<String>,
    /// `doc.chipset`
    pub chipset: Option<String>,
    /// `doc.chipsetGeneration`
    pub chipset_generation: Option<String>,
}

// ---------------------------------------------------------------- microvms

#[derive(Debug, Clone, PartialEq)]
pub struct Microvm {
    pub account_id: AccountId,
    pub microvm_id: String,
    pub image_arn: String,
    pub image_version: String,
    pub state: String,
    pub created_at_secs: i64,
    pub updated_at_secs: i64,
    pub doc: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewMicrovm {
    /// Typically [`crate::ids::new_microvm_id`]; unique across the store.
    pub microvm_id: String,
    pub image_arn: String,
    pub image_version: String,
    pub state: String,
    pub created_at_secs: i64,
    pub doc: Value,
}

/// Filters of `list_microvms` (all must match; empty = no filter).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MicrovmFilter {
    pub image_arn: Option<String>,
    pub image_version: Option<String>,
    /// Only microVMs in one of these states; empty = any state.
    pub states: Vec<String>,
}

// ------------------------------------------------------------------ shared

/// Update of an image, build or microVM: new state and document, optionally
/// conditional on the current state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateUpdate {
    pub state: String,
    pub doc: Value,
    pub updated_at_secs: i64,
    /// If set, the update happens only if the current state equals it;
    /// otherwise `Conflict(StateMismatch)` and nothing changes.
    pub expected_state: Option<String>,
}

// ------------------------------------------------------------- idempotency

/// A response saved for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Outcome of `idempotency_begin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// No record existed; one was inserted. The caller runs the operation,
    /// then calls `idempotency_complete` (or `idempotency_abort` if it failed
    /// in a way the client may retry).
    Started,
    /// Same token, same request, still running (or its first caller died
    /// before completing; `idempotency_abort` clears it).
    InProgress { created_at_secs: i64 },
    /// Same token, same request, finished: answer this response again.
    Completed(StoredResponse),
    /// Same token, different request body: answer a `ConflictException`.
    Mismatch { fingerprint: String },
}
