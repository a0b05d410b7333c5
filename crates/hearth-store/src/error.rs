//! Error type of every store operation.
//!
//! One enum, [`StoreError`], for all backends. The API layer maps it to AWS
//! error shapes: `NotFound` -> `ResourceNotFoundException` (404),
//! `Conflict(NameTaken)` on images -> `ValidationException` (the real service's
//! answer for a duplicate image name), other conflicts -> `ConflictException`,
//! `InvalidArgument` -> `ValidationException`, everything else ->
//! `InternalServerException`.

use std::fmt;

/// The kind of record an error talks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Account,
    AccessKey,
    Image,
    ImageVersion,
    Build,
    Microvm,
    IdempotencyRecord,
}

impl ResourceKind {
    /// A human-readable name, e.g. `"microvm image"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Account => "account",
            ResourceKind::AccessKey => "access key",
            ResourceKind::Image => "microvm image",
            ResourceKind::ImageVersion => "microvm image version",
            ResourceKind::Build => "microvm image build",
            ResourceKind::Microvm => "microvm",
            ResourceKind::IdempotencyRecord => "idempotency record",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a write was refused because of existing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// The name is already used by another record of this kind in the same
    /// account (image names, account names).
    NameTaken { kind: ResourceKind, name: String },
    /// A record with this id already exists (id collision or a repeated
    /// create with the same id).
    AlreadyExists { kind: ResourceKind, id: String },
    /// A conditional update (`expected_state`) found another state.
    StateMismatch {
        kind: ResourceKind,
        id: String,
        expected: String,
        found: String,
    },
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictKind::NameTaken { kind, name } => {
                write!(f, "a {kind} with the name '{name}' already exists")
            }
            ConflictKind::AlreadyExists { kind, id } => write!(f, "{kind} '{id}' already exists"),
            ConflictKind::StateMismatch {
                kind,
                id,
                expected,
                found,
            } => write!(f, "{kind} '{id}' is in state {found}, expected {expected}"),
        }
    }
}

/// Error of every [`crate::Store`] method.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such record in the caller's account (records of other accounts are
    /// reported exactly like missing ones).
    #[error("{kind} not found: {id}")]
    NotFound { kind: ResourceKind, id: String },
    /// The write conflicts with existing state.
    #[error("conflict: {0}")]
    Conflict(ConflictKind),
    /// A caller-supplied value the store cannot use (e.g. a cursor that does
    /// not belong to the listed collection).
    #[error("invalid argument: {detail}")]
    InvalidArgument { detail: String },
    /// The SQLite backend failed.
    #[error("sqlite error during {op}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// File-system error around the database file.
    #[error("i/o error during {op}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A stored row cannot be decoded (bad JSON document, malformed id, ...).
    #[error("corrupt row: {detail}")]
    Corrupt { detail: String },
    /// The database was written by a newer build: refuse to touch it.
    #[error(
        "database schema version {found} is newer than the newest this build knows ({known}); \
         run a newer hearth or restore a backup"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

impl StoreError {
    pub(crate) fn not_found(kind: ResourceKind, id: impl Into<String>) -> Self {
        StoreError::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            detail: detail.into(),
        }
    }

    /// True for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
