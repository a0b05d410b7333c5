//! The server's data directory.
//!
//! Owns first-start provisioning and the secrets on disk: the SQLite store
//! (`hearth.db`), the key that seals pagination tokens (`keys/token.key`),
//! and the admin account whose key pair is written to `credentials` as an AWS
//! shared-credentials file (profile `default`). Directory 0700, secrets 0600.
//! Blocking; called once at start-up and by the `account`/`key` commands.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_store::{AccountName, SqliteStore, Store};

/// Data directory failures.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store in {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: hearth_store::StoreError,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// An opened data directory.
pub struct DataDir {
    pub path: PathBuf,
    pub store: Arc<dyn Store>,
    pub token_key: [u8; 32],
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_path_buf();
    move |source| DataDirError::Io { op, path, source }
}

/// Write a secret file (0600) atomically; never replaces an existing one.
fn write_secret_new(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io("write", &tmp))?;
    fs::hard_link(&tmp, path).map_err(io("publish", path))?;
    let _ = fs::remove_file(&tmp);
    Ok(())
}

impl DataDir {
    /// Open (creating on first start) the data directory.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io("create", path))?;
        let keys = path.join("keys");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .map_err(io("create", &keys))?;
        let token_path = keys.join("token.key");
        if !token_path.exists() {
            let key: [u8; 32] = rand::random();
            match write_secret_new(&token_path, &key) {
                Ok(()) => {}
                // Another process won the race; use its key.
                Err(DataDirError::Io { op: "publish", .. }) if token_path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = fs::read(&token_path).map_err(io("read", &token_path))?;
        let token_key: [u8; 32] = bytes.try_into().map_err(|_| DataDirError::Corrupt {
            path: token_path.clone(),
            reason: "expected 32 bytes".into(),
        })?;
        let db = path.join(hearth_store::DB_FILE_NAME);
        let store = SqliteStore::open(&db).map_err(|source| DataDirError::Store {
            path: db.clone(),
            source,
        })?;
        let dd = Self {
            path: path.to_path_buf(),
            store: Arc::new(store),
            token_key,
        };
        dd.ensure_admin()?;
        Ok(dd)
    }

    /// The shared-credentials file of the admin account.
    pub fn credentials_path(&self) -> PathBuf {
        self.path.join("credentials")
    }

    /// First start: an admin account with one key, written to `credentials`.
    fn ensure_admin(&self) -> Result<(), DataDirError> {
        let creds = self.credentials_path();
        if creds.exists() {
            return Ok(());
        }
        let st = |source| DataDirError::Store {
            path: self.path.clone(),
            source,
        };
        let name = AccountName::new("admin").expect("valid name");
        let account = match self.store.get_account_by_name("admin") {
            Ok(a) => a,
            Err(hearth_store::StoreError::NotFound { .. }) => {
                self.store.create_account(&name, true).map_err(st)?
            }
            Err(e) => return Err(st(e)),
        };
        let key = self
            .store
            .create_access_key(&account.account_id)
            .map_err(st)?;
        let text = format!(
            "# Hearth admin account {}; created by `hearth serve` on first start.\n[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            account.account_id,
            key.key.access_key_id,
            key.secret_access_key.expose()
        );
        write_secret_new(&creds, text.as_bytes())?;
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", &creds))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn first_start_writes_admin_credentials_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let creds = fs::read_to_string(d.credentials_path()).unwrap();
        assert!(creds.contains("[default]") && creds.contains("aws_secret_access_key = "));
        assert_eq!(
            fs::metadata(d.credentials_path()).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.path().join("keys/token.key"))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
        let key = d.token_key;
        drop(d);
        let d2 = DataDir::open(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(d2.credentials_path()).unwrap(), creds);
        assert_eq!(d2.token_key, key);
        let akid = creds
            .lines()
            .find_map(|l| l.strip_prefix("aws_access_key_id = "))
            .unwrap();
        assert!(d2.store.secret_for(akid).unwrap().is_some());
    }
}
