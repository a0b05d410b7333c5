//! The [`Store`] operations on SQLite: SQL text, row decoding, keyset
//! pagination. Blocking, like the rest of the store.

use std::collections::BTreeMap;

use rusqlite::types::{FromSql, Value as SqlValue};
use rusqlite::{params, params_from_iter, Connection, ErrorCode, OptionalExtension, Row};
use serde_json::Value;

use super::{now_secs, sql_err, tags, SqliteStore};
use crate::error::{ConflictKind, ResourceKind, Result, StoreError};
use crate::ids::{self, AccountId, AccountName, SecretAccessKey};
use crate::model::*;
use crate::store::{Store, TooManyTags};

/// How many times a create retries after a random-id collision.
const ID_ATTEMPTS: usize = 8;

// ------------------------------------------------------------------ helpers

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// Reads column `idx`, reporting type mismatches as corruption.
fn col<T: FromSql>(row: &Row<'_>, idx: usize, table: &str) -> Result<T> {
    row.get(idx).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            StoreError::corrupt(format!("{table}: column {idx}: {e}"))
        }
        other => StoreError::Sqlite {
            op: "decode row",
            source: other,
        },
    })
}

fn account_col(row: &Row<'_>, idx: usize, table: &str) -> Result<AccountId> {
    let s: String = col(row, idx, table)?;
    AccountId::new(&s).map_err(|e| StoreError::corrupt(format!("{table}: {e}: {s:?}")))
}

fn doc_col(row: &Row<'_>, idx: usize, table: &str, id: &str) -> Result<Value> {
    let s: String = col(row, idx, table)?;
    serde_json::from_str(&s)
        .map_err(|e| StoreError::corrupt(format!("{table} {id}: bad JSON document: {e}")))
}

fn doc_text(doc: &Value) -> String {
    doc.to_string()
}

fn ensure_account(conn: &Connection, account_id: &AccountId) -> Result<()> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM accounts WHERE account_id = ?1")
        .and_then(|mut s| s.query_row([account_id.as_str()], |r| r.get(0)).optional())
        .map_err(sql_err("check account"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::not_found(
            ResourceKind::Account,
            account_id.as_str(),
        )),
    }
}

fn version_key(image_id: &str, version: &str) -> String {
    format!("{image_id}/{version}")
}

/// The version number, or NotFound: a non-canonical version names nothing.
fn version_num(image_id: &str, version: &str) -> Result<i64> {
    ids::parse_version(version).ok_or_else(|| {
        StoreError::not_found(ResourceKind::ImageVersion, version_key(image_id, version))
    })
}

fn check_expected(
    kind: ResourceKind,
    id: &str,
    current: &str,
    expected: &Option<String>,
) -> Result<()> {
    match expected {
        Some(exp) if exp != current => Err(StoreError::Conflict(ConflictKind::StateMismatch {
            kind,
            id: id.to_owned(),
            expected: exp.clone(),
            found: current.to_owned(),
        })),
        _ => Ok(()),
    }
}

/// Runs a query expected to return at most one row and decodes it.
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_err("prepare"))?;
    let mut rows = stmt.query(params).map_err(sql_err("query"))?;
    match rows.next().map_err(sql_err("query"))? {
        Some(row) => decode(row).map(Some),
        None => Ok(None),
    }
}

fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_err("prepare"))?;
    let mut rows = stmt.query(params).map_err(sql_err("query"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err("query"))? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// `state IN (?, ?, ...)` for a non-empty list.
fn push_in(conds: &mut Vec<String>, params: &mut Vec<SqlValue>, column: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    let marks = vec!["?"; values.len()].join(", ");
    conds.push(format!("{column} IN ({marks})"));
    params.extend(values.iter().map(|v| SqlValue::Text(v.clone())));
}

/// A keyset-paginated listing: `SELECT cols FROM table WHERE conds AND
/// (created_at, id) > cursor ORDER BY created_at, id LIMIT limit + 1`.
struct Listing {
    table: &'static str,
    cols: &'static str,
    id_col: &'static str,
    /// The id column is INTEGER (image versions); cursor ids are then parsed.
    int_id: bool,
    conds: Vec<String>,
    params: Vec<SqlValue>,
}

impl Listing {
    fn new(table: &'static str, cols: &'static str, id_col: &'static str) -> Self {
        Listing {
            table,
            cols,
            id_col,
            int_id: false,
            conds: Vec::new(),
            params: Vec::new(),
        }
    }

    fn cond(mut self, cond: &str, value: impl Into<SqlValue>) -> Self {
        self.conds.push(cond.to_owned());
        self.params.push(value.into());
        self
    }

    fn run<T>(
        mut self,
        conn: &Connection,
        page: &PageRequest,
        decode: fn(&Row<'_>) -> Result<T>,
        key: fn(&T) -> Cursor,
    ) -> Result<Page<T>> {
        let limit = page.clamped_limit() as usize;
        if let Some(after) = &page.after {
            let id = if self.int_id {
                SqlValue::Integer(after.id.parse().map_err(|_| StoreError::InvalidArgument {
                    detail: "pagination cursor does not belong to this list".into(),
                })?)
            } else {
                SqlValue::Text(after.id.clone())
            };
            self.conds
                .push(format!("(created_at, {}) > (?, ?)", self.id_col));
            self.params.push(SqlValue::Integer(after.created_at_secs));
            self.params.push(id);
        }
        let where_clause = if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        };
        self.params.push(SqlValue::Integer(limit as i64 + 1));
        let sql = format!(
            "SELECT {cols} FROM {table}{where_clause} ORDER BY created_at, {id} LIMIT ?",
            cols = self.cols,
            table = self.table,
            id = self.id_col,
        );
        let mut items = query_all(conn, &sql, params_from_iter(self.params.iter()), decode)?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(key)
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

// ------------------------------------------------------------- row decoding

const ACCOUNT_COLS: &str = "account_id, name, is_admin, created_at";

fn account_row(row: &Row<'_>) -> Result<Account> {
    let name: String = col(row, 1, "accounts")?;
    Ok(Account {
        account_id: account_col(row, 0, "accounts")?,
        name: AccountName::new(&name)
            .map_err(|e| StoreError::corrupt(format!("accounts: {e}: {name:?}")))?,
        is_admin: col(row, 2, "accounts")?,
        created_at_secs: col(row, 3, "accounts")?,
    })
}

fn account_key(a: &Account) -> Cursor {
    Cursor {
        created_at_secs: a.created_at_secs,
        id: a.account_id.to_string(),
    }
}

const KEY_COLS: &str = "access_key_id, account_id, created_at, revoked_at";

fn key_row(row: &Row<'_>) -> Result<AccessKey> {
    Ok(AccessKey {
        access_key_id: col(row, 0, "access_keys")?,
        account_id: account_col(row, 1, "access_keys")?,
        created_at_secs: col(row, 2, "access_keys")?,
        revoked_at_secs: col(row, 3, "access_keys")?,
    })
}

const IMAGE_COLS: &str = "account_id, image_id, name, arn, state, created_at, updated_at, doc";

fn image_row(row: &Row<'_>) -> Result<Image> {
    const T: &str = "microvm_images";
    let image_id: String = col(row, 1, T)?;
    Ok(Image {
        account_id: account_col(row, 0, T)?,
        name: col(row, 2, T)?,
        arn: col(row, 3, T)?,
        state: col(row, 4, T)?,
        created_at_secs: col(row, 5, T)?,
        updated_at_secs: col(row, 6, T)?,
        doc: doc_col(row, 7, T, &image_id)?,
        image_id,
    })
}

fn image_key(i: &Image) -> Cursor {
    Cursor {
        created_at_secs: i.created_at_secs,
        id: i.image_id.clone(),
    }
}

const VERSION_COLS: &str =
    "account_id, image_id, version, state, status, created_at, updated_at, doc";

fn version_row(row: &Row<'_>) -> Result<ImageVersion> {
    const T: &str = "microvm_image_versions";
    let image_id: String = col(row, 1, T)?;
    let version: i64 = col(row, 2, T)?;
    let version = version.to_string();
    Ok(ImageVersion {
        account_id: account_col(row, 0, T)?,
        state: col(row, 3, T)?,
        status: col(row, 4, T)?,
        created_at_secs: col(row, 5, T)?,
        updated_at_secs: col(row, 6, T)?,
        doc: doc_col(row, 7, T, &version_key(&image_id, &version))?,
        image_id,
        version,
    })
}

fn version_cursor(v: &ImageVersion) -> Cursor {
    Cursor {
        created_at_secs: v.created_at_secs,
        id: v.version.clone(),
    }
}

const BUILD_COLS: &str =
    "account_id, image_id, version, build_id, state, created_at, updated_at, doc";

fn build_row(row: &Row<'_>) -> Result<Build> {
    const T: &str = "microvm_image_builds";
    let version: i64 = col(row, 2, T)?;
    let build_id: String = col(row, 3, T)?;
    Ok(Build {
        account_id: account_col(row, 0, T)?,
        image_id: col(row, 1, T)?,
        version: version.to_string(),
        state: col(row, 4, T)?,
        created_at_secs: col(row, 5, T)?,
        updated_at_secs: col(row, 6, T)?,
        doc: doc_col(row, 7, T, &build_id)?,
        build_id,
    })
}

fn build_key(b: &Build) -> Cursor {
    Cursor {
        created_at_secs: b.created_at_secs,
        id: b.build_id.clone(),
    }
}

const MICROVM_COLS: &str =
    "account_id, microvm_id, image_arn, image_version, state, created_at, updated_at, doc";

fn microvm_row(row: &Row<'_>) -> Result<Microvm> {
    const T: &str = "microvms";
    let microvm_id: String = col(row, 1, T)?;
    Ok(Microvm {
        account_id: account_col(row, 0, T)?,
        image_arn: col(row, 2, T)?,
        image_version: col(row, 3, T)?,
        state: col(row, 4, T)?,
        created_at_secs: col(row, 5, T)?,
        updated_at_secs: col(row, 6, T)?,
        doc: doc_col(row, 7, T, &microvm_id)?,
        microvm_id,
    })
}

fn microvm_key(m: &Microvm) -> Cursor {
    Cursor {
        created_at_secs: m.created_at_secs,
        id: m.microvm_id.clone(),
    }
}

// ---------------------------------------------------- single-row lookups

fn load_image(conn: &Connection, account_id: &AccountId, image_id: &str) -> Result<Image> {
    query_one(
        conn,
        &format!("SELECT {IMAGE_COLS} FROM microvm_images WHERE account_id = ?1 AND image_id = ?2"),
        params![account_id.as_str(), image_id],
        image_row,
    )?
    .ok_or_else(|| StoreError::not_found(ResourceKind::Image, image_id))
}

fn load_version(
    conn: &Connection,
    account_id: &AccountId,
    image_id: &str,
    version: &str,
) -> Result<ImageVersion> {
    let num = version_num(image_id, version)?;
    query_one(
        conn,
        &format!(
            "SELECT {VERSION_COLS} FROM microvm_image_versions \
             WHERE account_id = ?1 AND image_id = ?2 AND version = ?3"
        ),
        params![account_id.as_str(), image_id, num],
        version_row,
    )?
    .ok_or_else(|| {
        StoreError::not_found(ResourceKind::ImageVersion, version_key(image_id, version))
    })
}

fn load_build(
    conn: &Connection,
    account_id: &AccountId,
    image_id: &str,
    version: &str,
    build_id: &str,
) -> Result<Build> {
    let not_found = || StoreError::not_found(ResourceKind::Build, build_id);
    let num = ids::parse_version(version).ok_or_else(not_found)?;
    query_one(
        conn,
        &format!(
            "SELECT {BUILD_COLS} FROM microvm_image_builds \
             WHERE account_id = ?1 AND image_id = ?2 AND version = ?3 AND build_id = ?4"
        ),
        params![account_id.as_str(), image_id, num, build_id],
        build_row,
    )?
    .ok_or_else(not_found)
}

fn load_microvm(conn: &Connection, account_id: &AccountId, microvm_id: &str) -> Result<Microvm> {
    query_one(
        conn,
        &format!("SELECT {MICROVM_COLS} FROM microvms WHERE account_id = ?1 AND microvm_id = ?2"),
        params![account_id.as_str(), microvm_id],
        microvm_row,
    )?
    .ok_or_else(|| StoreError::not_found(ResourceKind::Microvm, microvm_id))
}

fn ensure_version(
    conn: &Connection,
    account_id: &AccountId,
    image_id: &str,
    num: i64,
    version: &str,
) -> Result<()> {
    let found: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM microvm_image_versions \
             WHERE account_id = ?1 AND image_id = ?2 AND version = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![account_id.as_str(), image_id, num], |r| r.get(0))
                .optional()
        })
        .map_err(sql_err("check image version"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::not_found(
            ResourceKind::ImageVersion,
            version_key(image_id, version),
        )),
    }
}

fn changed(n: usize, kind: ResourceKind, id: &str) -> Result<()> {
    if n == 0 {
        Err(StoreError::not_found(kind, id))
    } else {
        Ok(())
    }
}

// ------------------------------------------------------------- the store

impl Store for SqliteStore {
    // ---------------------------------------------------------- accounts

    fn create_account(&self, name: &AccountName, is_admin: bool) -> Result<Account> {
        let created_at_secs = now_secs();
        self.write(|tx| {
            let taken: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM accounts WHERE name = ?1",
                    [name.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("check account name"))?;
            if taken.is_some() {
                return Err(StoreError::Conflict(ConflictKind::NameTaken {
                    kind: ResourceKind::Account,
                    name: name.to_string(),
                }));
            }
            for _ in 0..ID_ATTEMPTS {
                let account_id = AccountId::generate();
                match tx.execute(
                    "INSERT INTO accounts (account_id, name, is_admin, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        account_id.as_str(),
                        name.as_str(),
                        is_admin,
                        created_at_secs
                    ],
                ) {
                    Ok(_) => {
                        return Ok(Account {
                            account_id,
                            name: name.clone(),
                            is_admin,
                            created_at_secs,
                        })
                    }
                    Err(e) if is_constraint(&e) => continue,
                    Err(e) => return Err(sql_err("insert account")(e)),
                }
            }
            Err(StoreError::Conflict(ConflictKind::AlreadyExists {
                kind: ResourceKind::Account,
                id: "(random id collisions)".into(),
            }))
        })
    }

    fn get_account(&self, account_id: &AccountId) -> Result<Account> {
        self.read(|c| {
            query_one(
                c,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE account_id = ?1"),
                [account_id.as_str()],
                account_row,
            )?
            .ok_or_else(|| StoreError::not_found(ResourceKind::Account, account_id.as_str()))
        })
    }

    fn get_account_by_name(&self, name: &str) -> Result<Account> {
        self.read(|c| {
            query_one(
                c,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE name = ?1"),
                [name],
                account_row,
            )?
            .ok_or_else(|| StoreError::not_found(ResourceKind::Account, name))
        })
    }

    fn list_accounts(&self, page: &PageRequest) -> Result<Page<Account>> {
        self.read(|c| {
            Listing::new("accounts", ACCOUNT_COLS, "account_id").run(
                c,
                page,
                account_row,
                account_key,
            )
        })
    }

    // ------------------------------------------------------- access keys

    fn create_access_key(&self, account_id: &AccountId) -> Result<CreatedAccessKey> {
        let created_at_secs = now_secs();
        self.write(|tx| {
            ensure_account(tx, account_id)?;
            for _ in 0..ID_ATTEMPTS {
                let access_key_id = ids::new_access_key_id();
                let secret = SecretAccessKey::generate();
                match tx.execute(
                    "INSERT INTO access_keys \
                     (access_key_id, account_id, secret_access_key, created_at, revoked_at) \
                     VALUES (?1, ?2, ?3, ?4, NULL)",
                    params![
                        access_key_id,
                        account_id.as_str(),
                        secret.expose(),
                        created_at_secs
                    ],
                ) {
                    Ok(_) => {
                        return Ok(CreatedAccessKey {
                            key: AccessKey {
                                access_key_id,
                                account_id: account_id.clone(),
                                created_at_secs,
                                revoked_at_secs: None,
                            },
                            secret_access_key: secret,
                        })
                    }
                    Err(e) if is_constraint(&e) => continue,
                    Err(e) => return Err(sql_err("insert access key")(e)),
                }
            }
            Err(StoreError::Conflict(ConflictKind::AlreadyExists {
                kind: ResourceKind::AccessKey,
                id: "(random id collisions)".into(),
            }))
        })
    }

    fn list_access_keys(&self, account_id: &AccountId) -> Result<Vec<AccessKey>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {KEY_COLS} FROM access_keys WHERE account_id = ?1 \
                     ORDER BY created_at, access_key_id"
                ),
                [account_id.as_str()],
                key_row,
            )
        })
    }

    fn revoke_access_key(&self, account_id: &AccountId, access_key_id: &str) -> Result<AccessKey> {
        let now = now_secs();
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE access_keys SET revoked_at = COALESCE(revoked_at, ?1) \
                     WHERE account_id = ?2 AND access_key_id = ?3",
                    params![now, account_id.as_str(), access_key_id],
                )
                .map_err(sql_err("revoke access key"))?;
            changed(n, ResourceKind::AccessKey, access_key_id)?;
            query_one(
                tx,
                &format!("SELECT {KEY_COLS} FROM access_keys WHERE access_key_id = ?1"),
                [access_key_id],
                key_row,
            )?
            .ok_or_else(|| StoreError::not_found(ResourceKind::AccessKey, access_key_id))
        })
    }

    fn secret_for(&self, access_key_id: &str) -> Result<Option<(AccountId, SecretAccessKey)>> {
        self.read(|c| {
            query_one(
                c,
                "SELECT account_id, secret_access_key FROM access_keys \
                 WHERE access_key_id = ?1 AND revoked_at IS NULL",
                [access_key_id],
                |row| {
                    Ok((
                        account_col(row, 0, "access_keys")?,
                        SecretAccessKey::new(col(row, 1, "access_keys")?),
                    ))
                },
            )
        })
    }

    // ------------------------------------------------------------ images

    fn create_image(&self, account_id: &AccountId, new: &NewImage) -> Result<Image> {
        self.write(|tx| {
            ensure_account(tx, account_id)?;
            let taken: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM microvm_images WHERE account_id = ?1 AND name = ?2",
                    params![account_id.as_str(), new.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("check image name"))?;
            if taken.is_some() {
                return Err(StoreError::Conflict(ConflictKind::NameTaken {
                    kind: ResourceKind::Image,
                    name: new.name.clone(),
                }));
            }
            tx.execute(
                "INSERT INTO microvm_images \
                 (account_id, image_id, name, arn, state, last_version, created_at, updated_at, doc) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6, ?7)",
                params![
                    account_id.as_str(),
                    new.image_id,
                    new.name,
                    new.arn,
                    new.state,
                    new.created_at_secs,
                    doc_text(&new.doc)
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Conflict(ConflictKind::AlreadyExists {
                        kind: ResourceKind::Image,
                        id: new.image_id.clone(),
                    })
                } else {
                    sql_err("insert image")(e)
                }
            })?;
            tags::write(tx, account_id, &new.arn, &new.tags)?;
            Ok(Image {
                account_id: account_id.clone(),
                image_id: new.image_id.clone(),
                name: new.name.clone(),
                arn: new.arn.clone(),
                state: new.state.clone(),
                created_at_secs: new.created_at_secs,
                updated_at_secs: new.created_at_secs,
                doc: new.doc.clone(),
            })
        })
    }

    fn get_image(&self, account_id: &AccountId, image_id: &str) -> Result<Image> {
        self.read(|c| load_image(c, account_id, image_id))
    }

    fn get_image_by_arn(&self, account_id: &AccountId, arn: &str) -> Result<Image> {
        self.read(|c| {
            query_one(
                c,
                &format!(
                    "SELECT {IMAGE_COLS} FROM microvm_images WHERE account_id = ?1 AND arn = ?2"
                ),
                params![account_id.as_str(), arn],
                image_row,
            )?
            .ok_or_else(|| StoreError::not_found(ResourceKind::Image, arn))
        })
    }

    fn get_image_by_name(&self, account_id: &AccountId, name: &str) -> Result<Image> {
        self.read(|c| {
            query_one(
                c,
                &format!(
                    "SELECT {IMAGE_COLS} FROM microvm_images WHERE account_id = ?1 AND name = ?2"
                ),
                params![account_id.as_str(), name],
                image_row,
            )?
            .ok_or_else(|| StoreError::not_found(ResourceKind::Image, name))
        })
    }

    fn list_images(
        &self,
        account_id: &AccountId,
        filter: &ImageFilter,
        page: &PageRequest,
    ) -> Result<Page<Image>> {
        self.read(|c| {
            let mut l = Listing::new("microvm_images", IMAGE_COLS, "image_id")
                .cond("account_id = ?", account_id.to_string());
            if let Some(part) = &filter.name_contains {
                l = l.cond("instr(name, ?) > 0", part.clone());
            }
            l.run(c, page, image_row, image_key)
        })
    }

    fn list_images_all_accounts(
        &self,
        states: &[String],
        page: &PageRequest,
    ) -> Result<Page<Image>> {
        self.read(|c| {
            let mut l = Listing::new("microvm_images", IMAGE_COLS, "image_id");
            push_in(&mut l.conds, &mut l.params, "state", states);
            l.run(c, page, image_row, image_key)
        })
    }

    fn update_image(
        &self,
        account_id: &AccountId,
        image_id: &str,
        update: &StateUpdate,
    ) -> Result<Image> {
        self.write(|tx| {
            let current = load_image(tx, account_id, image_id)?;
            check_expected(
                ResourceKind::Image,
                image_id,
                &current.state,
                &update.expected_state,
            )?;
            tx.execute(
                "UPDATE microvm_images SET state = ?1, doc = ?2, updated_at = ?3 \
                 WHERE account_id = ?4 AND image_id = ?5",
                params![
                    update.state,
                    doc_text(&update.doc),
                    update.updated_at_secs,
                    account_id.as_str(),
                    image_id
                ],
            )
            .map_err(sql_err("update image"))?;
            Ok(Image {
                state: update.state.clone(),
                doc: update.doc.clone(),
                updated_at_secs: update.updated_at_secs,
                ..current
            })
        })
    }

    fn delete_image(&self, account_id: &AccountId, image_id: &str) -> Result<()> {
        self.write(|tx| {
            let arn: Option<String> = tx
                .query_row(
                    "SELECT arn FROM microvm_images WHERE account_id = ?1 AND image_id = ?2",
                    params![account_id.as_str(), image_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("find image"))?;
            let arn = arn.ok_or_else(|| StoreError::not_found(ResourceKind::Image, image_id))?;
            tx.execute(
                "DELETE FROM tags WHERE account_id = ?1 AND resource_arn = ?2",
                params![account_id.as_str(), arn],
            )
            .map_err(sql_err("delete image tags"))?;
            // Versions and builds go by ON DELETE CASCADE.
            tx.execute(
                "DELETE FROM microvm_images WHERE account_id = ?1 AND image_id = ?2",
                params![account_id.as_str(), image_id],
            )
            .map_err(sql_err("delete image"))?;
            Ok(())
        })
    }

    // ---------------------------------------------------- image versions

    fn create_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        new: &NewImageVersion,
    ) -> Result<ImageVersion> {
        self.write(|tx| {
            let num: Option<i64> = tx
                .query_row(
                    "UPDATE microvm_images SET last_version = last_version + 1 \
                     WHERE account_id = ?1 AND image_id = ?2 RETURNING last_version",
                    params![account_id.as_str(), image_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("allocate image version"))?;
            let num = num.ok_or_else(|| StoreError::not_found(ResourceKind::Image, image_id))?;
            tx.execute(
                "INSERT INTO microvm_image_versions \
                 (account_id, image_id, version, state, status, created_at, updated_at, doc) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![
                    account_id.as_str(),
                    image_id,
                    num,
                    new.state,
                    new.status,
                    new.created_at_secs,
                    doc_text(&new.doc)
                ],
            )
            .map_err(sql_err("insert image version"))?;
            Ok(ImageVersion {
                account_id: account_id.clone(),
                image_id: image_id.to_owned(),
                version: num.to_string(),
                state: new.state.clone(),
                status: new.status.clone(),
                created_at_secs: new.created_at_secs,
                updated_at_secs: new.created_at_secs,
                doc: new.doc.clone(),
            })
        })
    }

    fn get_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
    ) -> Result<ImageVersion> {
        self.read(|c| load_version(c, account_id, image_id, version))
    }

    fn list_image_versions(
        &self,
        account_id: &AccountId,
        image_id: &str,
        page: &PageRequest,
    ) -> Result<Page<ImageVersion>> {
        self.read_tx(|tx| {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM microvm_images WHERE account_id = ?1 AND image_id = ?2",
                    params![account_id.as_str(), image_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("find image"))?;
            if exists.is_none() {
                return Err(StoreError::not_found(ResourceKind::Image, image_id));
            }
            let mut l = Listing::new("microvm_image_versions", VERSION_COLS, "version")
                .cond("account_id = ?", account_id.to_string())
                .cond("image_id = ?", image_id.to_owned());
            l.int_id = true;
            l.run(tx, page, version_row, version_cursor)
        })
    }

    fn update_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        update: &VersionUpdate,
    ) -> Result<ImageVersion> {
        self.write(|tx| {
            let current = load_version(tx, account_id, image_id, version)?;
            check_expected(
                ResourceKind::ImageVersion,
                &version_key(image_id, version),
                &current.state,
                &update.expected_state,
            )?;
            let num = version_num(image_id, version)?;
            tx.execute(
                "UPDATE microvm_image_versions SET state = ?1, status = ?2, doc = ?3, updated_at = ?4 \
                 WHERE account_id = ?5 AND image_id = ?6 AND version = ?7",
                params![
                    update.state,
                    update.status,
                    doc_text(&update.doc),
                    update.updated_at_secs,
                    account_id.as_str(),
                    image_id,
                    num
                ],
            )
            .map_err(sql_err("update image version"))?;
            Ok(ImageVersion {
                state: update.state.clone(),
                status: update.status.clone(),
                doc: update.doc.clone(),
                updated_at_secs: update.updated_at_secs,
                ..current
            })
        })
    }

    fn delete_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
    ) -> Result<()> {
        let num = version_num(image_id, version)?;
        self.write(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM microvm_image_versions \
                     WHERE account_id = ?1 AND image_id = ?2 AND version = ?3",
                    params![account_id.as_str(), image_id, num],
                )
                .map_err(sql_err("delete image version"))?;
            changed(
                n,
                ResourceKind::ImageVersion,
                &version_key(image_id, version),
            )
        })
    }

    // ------------------------------------------------------------ builds

    fn create_build(&self, account_id: &AccountId, new: &NewBuild) -> Result<Build> {
        let num = version_num(&new.image_id, &new.version)?;
        self.write(|tx| {
            ensure_version(tx, account_id, &new.image_id, num, &new.version)?;
            tx.execute(
                "INSERT INTO microvm_image_builds \
                 (account_id, image_id, version, build_id, state, created_at, updated_at, doc) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![
                    account_id.as_str(),
                    new.image_id,
                    num,
                    new.build_id,
                    new.state,
                    new.created_at_secs,
                    doc_text(&new.doc)
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Conflict(ConflictKind::AlreadyExists {
                        kind: ResourceKind::Build,
                        id: new.build_id.clone(),
                    })
                } else {
                    sql_err("insert build")(e)
                }
            })?;
            Ok(Build {
                account_id: account_id.clone(),
                image_id: new.image_id.clone(),
                version: num.to_string(),
                build_id: new.build_id.clone(),
                state: new.state.clone(),
                created_at_secs: new.created_at_secs,
                updated_at_secs: new.created_at_secs,
                doc: new.doc.clone(),
            })
        })
    }

    fn get_build(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
    ) -> Result<Build> {
        self.read(|c| load_build(c, account_id, image_id, version, build_id))
    }

    fn list_builds(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        filter: &BuildFilter,
        page: &PageRequest,
    ) -> Result<Page<Build>> {
        let num = version_num(image_id, version)?;
        self.read_tx(|tx| {
            ensure_version(tx, account_id, image_id, num, version)?;
            let mut l = Listing::new("microvm_image_builds", BUILD_COLS, "build_id")
                .cond("account_id = ?", account_id.to_string())
                .cond("image_id = ?", image_id.to_owned())
                .cond("version = ?", num);
            for (path, value) in [
                ("$.architecture", &filter.architecture),
                ("$.chipset", &filter.chipset),
                ("$.chipsetGeneration", &filter.chipset_generation),
            ] {
                if let Some(v) = value {
                    l = l.cond(&format!("json_extract(doc, '{path}') = ?"), v.clone());
                }
            }
            l.run(tx, page, build_row, build_key)
        })
    }

    fn update_build(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
        update: &StateUpdate,
    ) -> Result<Build> {
        self.write(|tx| {
            let current = load_build(tx, account_id, image_id, version, build_id)?;
            check_expected(
                ResourceKind::Build,
                build_id,
                &current.state,
                &update.expected_state,
            )?;
            tx.execute(
                "UPDATE microvm_image_builds SET state = ?1, doc = ?2, updated_at = ?3 \
                 WHERE account_id = ?4 AND build_id = ?5",
                params![
                    update.state,
                    doc_text(&update.doc),
                    update.updated_at_secs,
                    account_id.as_str(),
                    build_id
                ],
            )
            .map_err(sql_err("update build"))?;
            Ok(Build {
                state: update.state.clone(),
                doc: update.doc.clone(),
                updated_at_secs: update.updated_at_secs,
                ..current
            })
        })
    }

    fn delete_build(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
    ) -> Result<()> {
        let num = ids::parse_version(version)
            .ok_or_else(|| StoreError::not_found(ResourceKind::Build, build_id))?;
        self.write(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM microvm_image_builds \
                     WHERE account_id = ?1 AND image_id = ?2 AND version = ?3 AND build_id = ?4",
                    params![account_id.as_str(), image_id, num, build_id],
                )
                .map_err(sql_err("delete build"))?;
            changed(n, ResourceKind::Build, build_id)
        })
    }

    fn list_builds_all_accounts(
        &self,
        states: &[String],
        page: &PageRequest,
    ) -> Result<Page<Build>> {
        self.read(|c| {
            let mut l = Listing::new("microvm_image_builds", BUILD_COLS, "build_id");
            push_in(&mut l.conds, &mut l.params, "state", states);
            l.run(c, page, build_row, build_key)
        })
    }

    // ---------------------------------------------------------- microvms

    fn create_microvm(&self, account_id: &AccountId, new: &NewMicrovm) -> Result<Microvm> {
        self.write(|tx| {
            ensure_account(tx, account_id)?;
            tx.execute(
                "INSERT INTO microvms \
                 (microvm_id, account_id, image_arn, image_version, state, created_at, updated_at, doc) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![
                    new.microvm_id,
                    account_id.as_str(),
                    new.image_arn,
                    new.image_version,
                    new.state,
                    new.created_at_secs,
                    doc_text(&new.doc)
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Conflict(ConflictKind::AlreadyExists {
                        kind: ResourceKind::Microvm,
                        id: new.microvm_id.clone(),
                    })
                } else {
                    sql_err("insert microvm")(e)
                }
            })?;
            Ok(Microvm {
                account_id: account_id.clone(),
                microvm_id: new.microvm_id.clone(),
                image_arn: new.image_arn.clone(),
                image_version: new.image_version.clone(),
                state: new.state.clone(),
                created_at_secs: new.created_at_secs,
                updated_at_secs: new.created_at_secs,
                doc: new.doc.clone(),
            })
        })
    }

    fn get_microvm(&self, account_id: &AccountId, microvm_id: &str) -> Result<Microvm> {
        self.read(|c| load_microvm(c, account_id, microvm_id))
    }

    fn list_microvms(
        &self,
        account_id: &AccountId,
        filter: &MicrovmFilter,
        page: &PageRequest,
    ) -> Result<Page<Microvm>> {
        self.read(|c| {
            let mut l = Listing::new("microvms", MICROVM_COLS, "microvm_id")
                .cond("account_id = ?", account_id.to_string());
            if let Some(arn) = &filter.image_arn {
                l = l.cond("image_arn = ?", arn.clone());
            }
            if let Some(v) = &filter.image_version {
                l = l.cond("image_version = ?", v.clone());
            }
            push_in(&mut l.conds, &mut l.params, "state", &filter.states);
            l.run(c, page, microvm_row, microvm_key)
        })
    }

    fn count_microvms(&self, account_id: &AccountId, states: &[String]) -> Result<u64> {
        self.read(|c| {
            let mut conds = vec!["account_id = ?".to_owned()];
            let mut params = vec![SqlValue::Text(account_id.to_string())];
            push_in(&mut conds, &mut params, "state", states);
            let sql = format!(
                "SELECT COUNT(*) FROM microvms WHERE {}",
                conds.join(" AND ")
            );
            let n: i64 = c
                .prepare_cached(&sql)
                .and_then(|mut s| s.query_row(params_from_iter(params.iter()), |r| r.get(0)))
                .map_err(sql_err("count microvms"))?;
            Ok(n.max(0) as u64)
        })
    }

    fn update_microvm(
        &self,
        account_id: &AccountId,
        microvm_id: &str,
        update: &StateUpdate,
    ) -> Result<Microvm> {
        self.write(|tx| {
            let current = load_microvm(tx, account_id, microvm_id)?;
            check_expected(
                ResourceKind::Microvm,
                microvm_id,
                &current.state,
                &update.expected_state,
            )?;
            tx.execute(
                "UPDATE microvms SET state = ?1, doc = ?2, updated_at = ?3 \
                 WHERE account_id = ?4 AND microvm_id = ?5",
                params![
                    update.state,
                    doc_text(&update.doc),
                    update.updated_at_secs,
                    account_id.as_str(),
                    microvm_id
                ],
            )
            .map_err(sql_err("update microvm"))?;
            Ok(Microvm {
                state: update.state.clone(),
                doc: update.doc.clone(),
                updated_at_secs: update.updated_at_secs,
                ..current
            })
        })
    }

    fn delete_microvm(&self, account_id: &AccountId, microvm_id: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM microvms WHERE account_id = ?1 AND microvm_id = ?2",
                    params![account_id.as_str(), microvm_id],
                )
                .map_err(sql_err("delete microvm"))?;
            changed(n, ResourceKind::Microvm, microvm_id)
        })
    }

    fn list_microvms_all_accounts(
        &self,
        states: &[String],
        page: &PageRequest,
    ) -> Result<Page<Microvm>> {
        self.read(|c| {
            let mut l = Listing::new("microvms", MICROVM_COLS, "microvm_id");
            push_in(&mut l.conds, &mut l.params, "state", states);
            l.run(c, page, microvm_row, microvm_key)
        })
    }

    // -------------------------------------------------------------- tags

    fn put_tags(
        &self,
        account_id: &AccountId,
        resource_arn: &str,
        tags: &BTreeMap<String, String>,
        max_tags: usize,
    ) -> Result<Result<(), TooManyTags>> {
        self.write(|tx| {
            ensure_account(tx, account_id)?;
            tags::put_limited(tx, account_id, resource_arn, tags, max_tags)
        })
    }

    fn list_tags(
        &self,
        account_id: &AccountId,
        resource_arn: &str,
    ) -> Result<BTreeMap<String, String>> {
        self.read(|c| tags::list(c, account_id, resource_arn))
    }

    fn remove_tags(
        &self,
        account_id: &AccountId,
        resource_arn: &str,
        keys: &[String],
    ) -> Result<()> {
        self.write(|tx| tags::remove(tx, account_id, resource_arn, keys))
    }

    // ------------------------------------------------------- idempotency

    fn idempotency_begin(
        &self,
        account_id: &AccountId,
        operation: &str,
        client_token: &str,
        request_fingerprint: &str,
        now_secs: i64,
    ) -> Result<IdempotencyBegin> {
        self.write(|tx| {
            type Existing = (String, Option<i64>, Option<Vec<u8>>, i64);
            let existing: Option<Existing> = query_one(
                tx,
                "SELECT request_fingerprint, response_status, response_body, created_at \
                 FROM idempotency_records \
                 WHERE account_id = ?1 AND operation = ?2 AND client_token = ?3",
                params![account_id.as_str(), operation, client_token],
                |row| {
                    const T: &str = "idempotency_records";
                    Ok((
                        col(row, 0, T)?,
                        col(row, 1, T)?,
                        col(row, 2, T)?,
                        col(row, 3, T)?,
                    ))
                },
            )?;
            // A record past its lifetime, or abandoned in progress, is as
            // good as absent.
            let existing = match existing {
                Some((_, status, _, created_at))
                    if created_at < now_secs - crate::IDEMPOTENCY_RECORD_TTL_SECS
                        || (status.is_none()
                            && created_at < now_secs - crate::IDEMPOTENCY_IN_PROGRESS_TTL_SECS) =>
                {
                    tx.execute(
                        "DELETE FROM idempotency_records \
                         WHERE account_id = ?1 AND operation = ?2 AND client_token = ?3",
                        params![account_id.as_str(), operation, client_token],
                    )
                    .map_err(sql_err("delete an expired idempotency record"))?;
                    None
                }
                other => other,
            };
            match existing {
                None => {
                    ensure_account(tx, account_id)?;
                    tx.execute(
                        "INSERT INTO idempotency_records \
                         (account_id, operation, client_token, request_fingerprint, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            account_id.as_str(),
                            operation,
                            client_token,
                            request_fingerprint,
                            now_secs
                        ],
                    )
                    .map_err(sql_err("insert idempotency record"))?;
                    Ok(IdempotencyBegin::Started)
                }
                Some((fingerprint, _, _, _)) if fingerprint != request_fingerprint => {
                    Ok(IdempotencyBegin::Mismatch { fingerprint })
                }
                Some((_, Some(status), body, _)) => {
                    let status = u16::try_from(status).map_err(|_| {
                        StoreError::corrupt(format!(
                            "idempotency_records {operation}/{client_token}: status {status}"
                        ))
                    })?;
                    Ok(IdempotencyBegin::Completed(StoredResponse {
                        status,
                        body: body.unwrap_or_default(),
                    }))
                }
                Some((_, None, _, created_at_secs)) => {
                    Ok(IdempotencyBegin::InProgress { created_at_secs })
                }
            }
        })
    }

    fn idempotency_complete(
        &self,
        account_id: &AccountId,
        operation: &str,
        client_token: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE idempotency_records SET response_status = ?1, response_body = ?2 \
                     WHERE account_id = ?3 AND operation = ?4 AND client_token = ?5 \
                       AND response_status IS NULL",
                    params![
                        i64::from(response.status),
                        response.body,
                        account_id.as_str(),
                        operation,
                        client_token
                    ],
                )
                .map_err(sql_err("complete idempotency record"))?;
            if n == 1 {
                return Ok(());
            }
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM idempotency_records \
                     WHERE account_id = ?1 AND operation = ?2 AND client_token = ?3",
                    params![account_id.as_str(), operation, client_token],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("find idempotency record"))?;
            let id = format!("{operation}/{client_token}");
            Err(match exists {
                Some(_) => StoreError::Conflict(ConflictKind::AlreadyExists {
                    kind: ResourceKind::IdempotencyRecord,
                    id,
                }),
                None => StoreError::not_found(ResourceKind::IdempotencyRecord, id),
            })
        })
    }

    fn idempotency_abort(
        &self,
        account_id: &AccountId,
        operation: &str,
        client_token: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM idempotency_records \
                 WHERE account_id = ?1 AND operation = ?2 AND client_token = ?3 \
                   AND response_status IS NULL",
                params![account_id.as_str(), operation, client_token],
            )
            .map_err(sql_err("abort idempotency record"))?;
            Ok(())
        })
    }

    fn purge_idempotency(&self, older_than_secs: i64) -> Result<u64> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM idempotency_records WHERE created_at < ?1",
                    [older_than_secs],
                )
                .map_err(sql_err("purge idempotency records"))?;
            Ok(n as u64)
        })
    }
}
