//! [`SqliteStore`]: the embedded, single-host implementation of
//! [`crate::Store`] on SQLite (bundled, so no system library is needed).
//!
//! Owns the database file `<data_dir>/hearth.db` (created with mode 0600; it
//! holds secret access keys), its schema migrations ([`migrations`]) and the
//! connections to it:
//!
//! - one writer connection behind a mutex; every write is one
//!   `BEGIN IMMEDIATE` transaction, so writes are serialised in-process and
//!   against other processes using the same file;
//! - a small pool of read-only connections; thanks to WAL mode, reads run in
//!   parallel with each other and with the writer and never see a
//!   half-finished write.
//!
//! Pragmas: `journal_mode=WAL`, `synchronous=NORMAL` (durable at checkpoint,
//! never corrupt), `foreign_keys=ON`, `busy_timeout=5000`.
//!
//! Every method blocks (disk I/O, lock waits): call it from
//! `spawn_blocking` in async code.

mod migrations;
mod ops;
mod tags;

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Result, StoreError};

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "hearth.db";

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Number of read-only connections in the pool.
const READER_COUNT: usize = 4;

/// The SQLite store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    reader_returned: Condvar,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub(crate) fn sql_err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn restrict_mode(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|source| StoreError::Io {
        op: "set database file mode",
        source,
    })
}

impl SqliteStore {
    /// Newest schema version this build knows (and brings every database to).
    pub const SCHEMA_VERSION: i64 = migrations::MIGRATIONS.len() as i64;

    /// Opens (creating if needed, mode 0600) the database at `path` and
    /// applies the migrations it lacks. Fails with
    /// [`StoreError::SchemaTooNew`] if a newer build wrote it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), migrations::MIGRATIONS)
    }

    /// Opens `<data_dir>/hearth.db` (see [`SqliteStore::open`]). The
    /// directory must exist.
    pub fn open_in_dir(data_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(data_dir.as_ref().join(DB_FILE_NAME))
    }

    pub(crate) fn open_with(path: &Path, migrations: &[&str]) -> Result<Self> {
        // Create the file ourselves so it never exists with a wider mode, and
        // tighten an existing one (and its WAL side files) just in case.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Io {
                op: "create database file",
                source,
            })?;
        restrict_mode(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            if side.exists() {
                restrict_mode(&side)?;
            }
        }

        let mut writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err("open database"))?;
        writer
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_err("set busy_timeout"))?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql_err("set journal_mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Sqlite {
                op: "set journal_mode",
                source: rusqlite::Error::InvalidParameterName(format!(
                    "journal_mode is {mode}, not wal"
                )),
            });
        }
        writer
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(sql_err("set pragmas"))?;
        migrations::migrate(&mut writer, migrations)?;

        let mut readers = Vec::with_capacity(READER_COUNT);
        for _ in 0..READER_COUNT {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql_err("open reader"))?;
            reader
                .busy_timeout(BUSY_TIMEOUT)
                .map_err(sql_err("set busy_timeout"))?;
            readers.push(reader);
        }

        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(readers),
            reader_returned: Condvar::new(),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64> {
        self.read(migrations::current_version)
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a write leaves no open transaction behind (the
        // `Transaction` rolls back on drop), so the connection stays usable.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_reader(&self) -> ReaderGuard<'_> {
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(conn) = pool.pop() {
                return ReaderGuard {
                    store: self,
                    conn: Some(conn),
                };
            }
            pool = self
                .reader_returned
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs `f` on a reader connection (a single statement is atomic on its own).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let guard = self.take_reader();
        f(guard.conn())
    }

    /// Runs `f` in a read transaction: all its statements see one snapshot.
    pub(crate) fn read_tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut guard = self.take_reader();
        let tx = guard
            .conn_mut()
            .transaction()
            .map_err(sql_err("begin read"))?;
        let out = f(&tx)?;
        tx.finish().map_err(sql_err("end read"))?;
        Ok(out)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed if `f`
    /// succeeds and rolled back otherwise.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("begin write"))?;
        let out = f(&tx)?;
        tx.commit().map_err(sql_err("commit"))?;
        Ok(out)
    }
}

/// A reader borrowed from the pool; returned on drop.
struct ReaderGuard<'a> {
    store: &'a SqliteStore,
    conn: Option<Connection>,
}

impl ReaderGuard<'_> {
    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("reader present until drop")
    }
    fn conn_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("reader present until drop")
    }
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self
                .store
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pool.push(conn);
            self.store.reader_returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::migrations::{current_version, MIGRATIONS};
    use super::*;
    use crate::ids::AccountName;
    use crate::Store;

    #[test]
    fn fresh_database_gets_every_migration() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_dir(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(SqliteStore::SCHEMA_VERSION, MIGRATIONS.len() as i64);
        let applied: i64 = store
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
                    .map_err(sql_err("t"))
            })
            .unwrap();
        assert_eq!(applied, MIGRATIONS.len() as i64);
    }

    #[test]
    fn reopen_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let name = AccountName::new("alice").unwrap();
        let id = {
            let store = SqliteStore::open_in_dir(dir.path()).unwrap();
            store.create_account(&name, false).unwrap().account_id
        };
        for _ in 0..3 {
            let store = SqliteStore::open_in_dir(dir.path()).unwrap();
            assert_eq!(store.schema_version().unwrap(), SqliteStore::SCHEMA_VERSION);
            assert_eq!(store.get_account(&id).unwrap().name, name);
            let rows: i64 = store
                .read(|c| {
                    c.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
                        .map_err(sql_err("t"))
                })
                .unwrap();
            assert_eq!(rows, SqliteStore::SCHEMA_VERSION);
        }
    }

    #[test]
    fn old_database_is_upgraded() {
        assert!(
            MIGRATIONS.len() >= 2,
            "this test needs at least two migrations"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        let account = {
            let old = SqliteStore::open_with(&path, &MIGRATIONS[..1]).unwrap();
            assert_eq!(old.schema_version().unwrap(), 1);
            // Migration 2's table is not there yet.
            let has_idem: i64 = old
                .read(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'idempotency_records'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sql_err("t"))
                })
                .unwrap();
            assert_eq!(has_idem, 0);
            old.create_account(&AccountName::new("old").unwrap(), true)
                .unwrap()
                .account_id
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        // Data written under the old schema survives; the new table works.
        assert!(store.get_account(&account).unwrap().is_admin);
        assert_eq!(
            store
                .idempotency_begin(&account, "RunMicrovm", "tok", "ab", 1)
                .unwrap(),
            crate::IdempotencyBegin::Started
        );
    }

    #[test]
    fn newer_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        drop(SqliteStore::open(&path).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)",
                [],
            )
            .unwrap();
        }
        match SqliteStore::open(&path) {
            Err(StoreError::SchemaTooNew { found, known }) => {
                assert_eq!(found, 99);
                assert_eq!(known, MIGRATIONS.len() as i64);
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        let c = Connection::open(&path).unwrap();
        assert_eq!(current_version(&c).unwrap(), 99);
        // The message says what to do.
        let msg = StoreError::SchemaTooNew {
            found: 99,
            known: 2,
        }
        .to_string();
        assert!(msg.contains("99") && msg.contains("newer"), "{msg}");
    }

    #[test]
    fn failed_migration_rolls_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        let bad: Vec<&str> = vec![
            MIGRATIONS[0],
            "CREATE TABLE half_done (x INTEGER); THIS IS NOT SQL;",
        ];
        assert!(matches!(
            SqliteStore::open_with(&path, &bad),
            Err(StoreError::Sqlite { .. })
        ));
        let c = Connection::open(&path).unwrap();
        assert_eq!(current_version(&c).unwrap(), 1);
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
        drop(c);
        SqliteStore::open(&path).unwrap();
    }

    #[test]
    fn pragmas_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_dir(dir.path()).unwrap();
        let conn = store.writer();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let timeout: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, 5000);
    }
}
