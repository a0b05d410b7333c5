//! Versioned schema migrations of the SQLite store.
//!
//! [`MIGRATIONS`] is an append-only list: entry `i` brings the schema from
//! version `i` to version `i + 1`. Never edit a released entry; add a new one.
//! The applied versions are recorded in
//! `schema_migrations(version INTEGER PRIMARY KEY, applied_at INTEGER)`.
//! Each migration runs in its own `BEGIN IMMEDIATE` transaction together with
//! its `schema_migrations` row, so a crash leaves the schema at a whole version
//! and two processes opening the same file at once cannot both apply one.
//!
//! Conventions of the schema: every `*_at` column is INTEGER epoch seconds;
//! `doc` columns hold the JSON document of the resource as TEXT; every
//! resource table has an `account_id` column referencing `accounts`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::{Result, StoreError};
use crate::sqlite::{now_secs, sql_err};

/// The schema, one entry per version (index 0 = version 1).
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: accounts, keys, images, versions, builds, microVMs, tags.
    r#"
CREATE TABLE accounts (
    account_id  TEXT PRIMARY KEY NOT NULL
                CHECK (length(account_id) = 12 AND account_id NOT GLOB '*[^0-9]*'),
    name        TEXT NOT NULL UNIQUE,
    is_admin    INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX accounts_page ON accounts (created_at, account_id);

CREATE TABLE access_keys (
    access_key_id      TEXT PRIMARY KEY NOT NULL,
    account_id         TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    secret_access_key  TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    revoked_at         INTEGER
) STRICT;
CREATE INDEX access_keys_by_account ON access_keys (account_id, created_at, access_key_id);

CREATE TABLE microvm_images (
    account_id    TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    image_id      TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    arn           TEXT NOT NULL,
    state         TEXT NOT NULL,
    last_version  INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    doc           TEXT NOT NULL,
    PRIMARY KEY (account_id, image_id),
    UNIQUE (account_id, name),
    UNIQUE (account_id, arn)
) STRICT;
CREATE INDEX microvm_images_page ON microvm_images (account_id, created_at, image_id);

CREATE TABLE microvm_image_versions (
    account_id  TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    state       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (account_id, image_id, version),
    FOREIGN KEY (account_id, image_id)
        REFERENCES microvm_images (account_id, image_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX microvm_image_versions_page
    ON microvm_image_versions (account_id, image_id, created_at, version);

CREATE TABLE microvm_image_builds (
    account_id  TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    build_id    TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (account_id, image_id, version, build_id),
    FOREIGN KEY (account_id, image_id, version)
        REFERENCES microvm_image_versions (account_id, image_id, version) ON DELETE CASCADE
) STRICT;
CREATE INDEX microvm_image_builds_page
    ON microvm_image_builds (account_id, image_id, version, created_at, build_id);
CREATE INDEX microvm_image_builds_by_state ON microvm_image_builds (state, created_at, build_id);

CREATE TABLE microvms (
    microvm_id     TEXT PRIMARY KEY NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    image_arn      TEXT NOT NULL,
    image_version  TEXT NOT NULL,
    state          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    doc            TEXT NOT NULL
) STRICT;
CREATE INDEX microvms_page ON microvms (account_id, created_at, microvm_id);
CREATE INDEX microvms_by_state ON microvms (state, created_at, microvm_id);

CREATE TABLE tags (
    account_id    TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    resource_arn  TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (account_id, resource_arn, key)
) STRICT, WITHOUT ROWID;
"#,
    // 2: idempotency records for clientToken.
    r#"
CREATE TABLE idempotency_records (
    account_id           TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    operation            TEXT NOT NULL,
    client_token         TEXT NOT NULL,
    request_fingerprint  TEXT NOT NULL,
    response_status      INTEGER,
    response_body        BLOB,
    created_at           INTEGER NOT NULL,
    PRIMARY KEY (account_id, operation, client_token)
) STRICT;
CREATE INDEX idempotency_records_by_age ON idempotency_records (created_at);
"#,
];

/// Newest schema version this build knows.
pub(crate) fn known_version(migrations: &[&str]) -> i64 {
    migrations.len() as i64
}

/// The newest applied version, 0 for a fresh database.
pub(crate) fn current_version(conn: &Connection) -> Result<i64> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err("read schema version"))?;
    if exists.is_none() {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(sql_err("read schema version"))
}

/// Brings the database to the newest version of `migrations`, one
/// transaction per migration. Fails with `SchemaTooNew` (and changes nothing)
/// if the database is newer than `migrations`.
pub(crate) fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<()> {
    let known = known_version(migrations);
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     INTEGER PRIMARY KEY,
             applied_at  INTEGER NOT NULL
         ) STRICT;",
    )
    .map_err(sql_err("create schema_migrations"))?;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("begin migration"))?;
        let current = current_version(&tx)?;
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        if current == known {
            return Ok(());
        }
        let next = current + 1;
        tx.execute_batch(migrations[current as usize])
            .map_err(sql_err("apply migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![next, now_secs()],
        )
        .map_err(sql_err("record migration"))?;
        tx.commit().map_err(sql_err("commit migration"))?;
    }
}
