//! The token signing key and its file.
//!
//! The key file holds exactly [`KEY_SIZE_BYTES`] random bytes, mode 0600. It
//! is created at most once: the bytes are written and synced to a private
//! temporary file beside it, which is then hard-linked to the final name (a
//! link fails if the name exists, so two processes starting at once end up
//! with the same key, and nobody ever reads a half-written one), and the
//! directory is synced. Loading refuses a file of the wrong size or one that
//! group or others may access, naming the path. Runs on the caller's thread
//! (blocking file I/O: call it at start-up or from `spawn_blocking`).

use crate::TokenError;
use rand::RngCore;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of a token key and of its file.
pub const KEY_SIZE_BYTES: usize = 32;

/// The secret that signs and verifies tokens. `Debug` does not show it.
#[derive(Clone)]
pub struct TokenKey([u8; KEY_SIZE_BYTES]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_SIZE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_SIZE_BYTES] {
        &self.0
    }

    /// Loads the key at `path`, or creates it (0600, exclusively, synced)
    /// when there is none. Refuses a file of the wrong size or with any
    /// group/other permission bit.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        match load(path) {
            Err(TokenError::Key { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
        let key = Self::generate();
        match create_exclusive(path, key.bytes()) {
            Ok(()) => Ok(key),
            // Someone else created it first: theirs is the key.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => load(path),
            Err(source) => Err(key_err(path, source)),
        }
    }
}

fn key_err(path: &Path, source: std::io::Error) -> TokenError {
    TokenError::Key {
        path: path.to_path_buf(),
        source,
    }
}

fn load(path: &Path) -> Result<TokenKey, TokenError> {
    let mut file = File::open(path).map_err(|e| key_err(path, e))?;
    let meta = file.metadata().map_err(|e| key_err(path, e))?;
    if !meta.is_file() {
        return Err(TokenError::KeyNotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() != KEY_SIZE_BYTES as u64 {
        return Err(TokenError::KeyWrongSize {
            path: path.to_path_buf(),
            size_bytes: meta.len(),
            expected_bytes: KEY_SIZE_BYTES,
        });
    }
    let mut bytes = [0u8; KEY_SIZE_BYTES];
    file.read_exact(&mut bytes).map_err(|e| key_err(path, e))?;
    // The file must not have grown between the size check and the read.
    let mut probe = [0u8; 1];
    match file.read(&mut probe) {
        Ok(0) => Ok(TokenKey(bytes)),
        Ok(_) => Err(TokenError::KeyWrongSize {
            path: path.to_path_buf(),
            size_bytes: meta.len() + 1,
            expected_bytes: KEY_SIZE_BYTES,
        }),
        Err(e) => Err(key_err(path, e)),
    }
}

/// Writes `bytes` to a synced private temporary file beside `path`, links it
/// to `path` (failing with `AlreadyExists` if that exists), removes the
/// temporary name and syncs the directory.
fn create_exclusive(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(ErrorKind::InvalidInput, "the key path names no file")
    })?;
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{:016x}", u64::from_le_bytes(suffix)));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::hard_link(&tmp, path)
    })();
    // The temporary name goes whether or not the link was made.
    let _ = std::fs::remove_file(&tmp);
    result?;
    File::open(&dir)?.sync_all()
}
