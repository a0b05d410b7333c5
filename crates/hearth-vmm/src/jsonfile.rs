//! Versioned JSON records on disk, for every persisted struct of the engine
//! (microVM and snapshot records, memory diffs): read with the version
//! checked before the shape, written compactly, atomically and durably
//! (temporary file, fsync, rename, directory fsync). Blocking; callers run
//! it where they may block.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a record could not be read or written. Becomes
/// [`crate::VmError::Record`] or [`crate::VmError::Io`].
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// The record is missing, unreadable, malformed or of another version.
    #[error("{what} {}: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    /// Writing it failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Read a versioned JSON record and refuse versions this build does not know.
pub fn load_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
    version: u32,
    version_of: impl Fn(&T) -> u32,
) -> Result<T, JsonFileError> {
    let bad = |reason: String| JsonFileError::Invalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    // Look at the version before the shape, so an old or new record is
    // named as such rather than as malformed.
    // (Only the version is read here; serde skips the rest without building
    // it.)
    #[derive(Deserialize)]
    struct Version {
        version: Option<u64>,
    }
    if let Some(found) = serde_json::from_slice::<Version>(&bytes)
        .ok()
        .and_then(|v| v.version)
    {
        if found != u64::from(version) {
            return Err(bad(format!(
                "record version {found} (this build reads {version})"
            )));
        }
    }
    let record: T = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if version_of(&record) != version {
        return Err(bad(format!(
            "record version {} (this build reads {version})",
            version_of(&record)
        )));
    }
    Ok(record)
}

/// Write a record atomically and durably.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), JsonFileError> {
    let tmp = prepare_json(path, value)?;
    publish_json(&tmp, path)
}

/// Write `value` durably beside `path` (not yet in its place); returns the
/// temporary file. Removed again on failure.
pub fn prepare_json<T: Serialize>(
    path: &Path,
    value: &T,
) -> Result<std::path::PathBuf, JsonFileError> {
    let io = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| JsonFileError::Io { op, path, source }
    };
    let tmp = path.with_extension("json.tmp");
    let r = fs::File::create(&tmp)
        .map_err(io("create"))
        .and_then(|mut f| {
            f.write_all(&serde_json::to_vec(value).expect("serialize record"))
                .and_then(|()| f.sync_all())
                .map_err(io("write"))
        });
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Put a prepared record in place (a rename: needs no space).
pub fn publish_json(tmp: &Path, path: &Path) -> Result<(), JsonFileError> {
    fs::rename(tmp, path).map_err(|source| JsonFileError::Io {
        op: "rename",
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(parent) = path.parent() {
        let _ = fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}
