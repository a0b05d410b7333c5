//! Artifacts uploaded to the Hearth server: `upload://<id>` sources.
//!
//! [`Uploads`] owns `<data>/uploads/<account-id>/<upload-id>.zip`. An upload
//! is moved in whole (it appears under its final name complete or not at
//! all), is only ever found through the account that uploaded it, and its
//! id is random, so ids cannot be guessed across accounts either. Methods
//! are async and called from API handler tasks.

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::error::CodeError;

/// The id of an uploaded artifact: `upl-` and 20 lowercase base32
/// characters (`a-z`, `2-7`; 100 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

const PREFIX: &str = "upl-";
const RANDOM_CHARS: usize = 20;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl UploadId {
    /// A new random id.
    pub fn generate() -> UploadId {
        let mut rng = rand::rngs::OsRng;
        let random: String = (0..RANDOM_CHARS)
            .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
            .collect();
        UploadId(format!("{PREFIX}{random}"))
    }

    /// Check the syntax of an id (not that it exists).
    pub fn parse(s: &str) -> Result<UploadId, CodeError> {
        let valid = s.strip_prefix(PREFIX).is_some_and(|rest| {
            rest.len() == RANDOM_CHARS && rest.bytes().all(|b| ALPHABET.contains(&b))
        });
        if valid {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(CodeError::InvalidUploadId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The store of uploaded artifacts, one directory per account.
#[derive(Debug, Clone)]
pub struct Uploads {
    dir: PathBuf,
}

impl Uploads {
    /// Uploads kept under `dir` (conventionally `<data>/uploads`). The
    /// directory is created on the first upload.
    pub fn new(dir: impl Into<PathBuf>) -> Uploads {
        Uploads { dir: dir.into() }
    }

    /// Move `tmp_file` in as a new upload of `account` and return its id.
    ///
    /// The upload appears under its final name complete: it is hard-linked
    /// into place (never replacing anything), or, when `tmp_file` is on
    /// another file system, copied to a temporary name beside it first.
    /// `tmp_file` is gone afterwards.
    pub async fn put_from_file(
        &self,
        account: &str,
        tmp_file: &Path,
    ) -> Result<UploadId, CodeError> {
        let account_dir = self.account_dir(account)?;
        let tmp_file = tmp_file.to_owned();
        tokio::task::spawn_blocking(move || put_blocking(&account_dir, &tmp_file))
            .await
            .map_err(|e| CodeError::Io {
                op: "store the upload",
                source: io::Error::other(e),
            })?
    }

    /// Where upload `id` of `account` is. An upload of another account, or
    /// one that was removed, is [`CodeError::UploadNotFound`].
    pub fn path(&self, account: &str, id: &UploadId) -> Result<PathBuf, CodeError> {
        let path = self.account_dir(account)?.join(format!("{id}.zip"));
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => Ok(path),
            Ok(_) => Err(CodeError::UploadNotFound { id: id.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(CodeError::UploadNotFound { id: id.to_string() })
            }
            Err(source) => Err(CodeError::Io {
                op: "look up the upload",
                source,
            }),
        }
    }

    /// Remove upload `id` of `account`.
    pub fn remove(&self, account: &str, id: &UploadId) -> Result<(), CodeError> {
        let path = self.path(account, id)?;
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(CodeError::UploadNotFound { id: id.to_string() })
            }
            Err(source) => Err(CodeError::Io {
                op: "remove the upload",
                source,
            }),
        }
    }

    fn account_dir(&self, account: &str) -> Result<PathBuf, CodeError> {
        let valid = !account.is_empty()
            && account.len() <= 64
            && account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(CodeError::InvalidAccount);
        }
        Ok(self.dir.join(account))
    }
}

fn put_blocking(account_dir: &Path, tmp_file: &Path) -> Result<UploadId, CodeError> {
    let meta = std::fs::symlink_metadata(tmp_file).map_err(|source| CodeError::Io {
        op: "read the uploaded file",
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(CodeError::Io {
            op: "read the uploaded file",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(account_dir)
        .map_err(|source| CodeError::Io {
            op: "create the uploads directory",
            source,
        })?;
    loop {
        let id = UploadId::generate();
        let dest = account_dir.join(format!("{id}.zip"));
        match std::fs::hard_link(tmp_file, &dest) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp_file);
                return Ok(id);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                copy_in(tmp_file, account_dir, &dest)?;
                let _ = std::fs::remove_file(tmp_file);
                return Ok(id);
            }
            Err(source) => {
                return Err(CodeError::Io {
                    op: "store the upload",
                    source,
                })
            }
        }
    }
}

/// Copy `from` to a temporary name in `dir`, then link it to `dest`.
fn copy_in(from: &Path, dir: &Path, dest: &Path) -> Result<(), CodeError> {
    let tmp = dir.join(format!(".incoming-{}", UploadId::generate()));
    let result = (|| {
        let mut src = std::fs::File::open(from)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.sync_all()?;
        std::fs::hard_link(&tmp, dest)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|source| CodeError::Io {
        op: "store the upload",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = UploadId::generate();
        let b = UploadId::generate();
        assert_ne!(a, b);
        assert_eq!(UploadId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.as_str().len(), 24);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "upl-",
            "upl-abc",
            "upl-ABCDEFGHIJKLMNOPQRST",
            "upl-abcdefghijklmnopqrs1",
            "upl-abcdefghijklmnopqrstu",
            "xyz-abcdefghijklmnopqrst",
            "upl-abcdefghijklmnopq/..",
            "../upl-abcdefghijklmnopqrst",
        ] {
            assert!(
                matches!(UploadId::parse(bad), Err(CodeError::InvalidUploadId)),
                "{bad:?} was accepted"
            );
        }
        assert!(UploadId::parse("upl-abcdefghijklmnopq234").is_ok());
    }

    #[tokio::test]
    async fn an_upload_is_found_by_its_account_only_and_can_be_removed() {
        let data = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(data.path().join("uploads"));
        let tmp = data.path().join("incoming.zip");
        std::fs::write(&tmp, b"zip bytes").unwrap();

        let id = uploads.put_from_file("111122223333", &tmp).await.unwrap();
        assert!(!tmp.exists(), "the temporary file is moved in");
        let path = uploads.path("111122223333", &id).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"zip bytes");
        assert_eq!(
            path,
            data.path()
                .join("uploads/111122223333")
                .join(format!("{id}.zip"))
        );

        assert!(matches!(
            uploads.path("444455556666", &id),
            Err(CodeError::UploadNotFound { .. })
        ));
        assert!(matches!(
            uploads.remove("444455556666", &id),
            Err(CodeError::UploadNotFound { .. })
        ));
        uploads.remove("111122223333", &id).unwrap();
        assert!(matches!(
            uploads.path("111122223333", &id),
            Err(CodeError::UploadNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn account_ids_that_could_escape_are_refused() {
        let data = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(data.path());
        let id = UploadId::generate();
        for bad in ["", "..", "a/b", "../x", "a.b"] {
            assert!(
                matches!(uploads.path(bad, &id), Err(CodeError::InvalidAccount)),
                "{bad:?}"
            );
        }
        let tmp = data.path().join("f");
        std::fs::write(&tmp, b"x").unwrap();
        assert!(matches!(
            uploads.put_from_file("..", &tmp).await,
            Err(CodeError::InvalidAccount)
        ));
        assert!(tmp.exists(), "a refused upload leaves the file alone");
    }
}
