//! `--code` of `hearth image create/update`: a code URI passed to the
//! server as is, or a local directory or zip that is packed (a directory,
//! `.dockerignore` applied) and uploaded to `POST /hearth/v1/uploads`,
//! giving an `upload://` URI. Runs on the command's task; packing runs on a
//! blocking thread.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::raw::{self, RawBody};
use crate::client::{Api, ApiCallError};

/// What `--code` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeArg {
    /// `file://`, `s3://` or `upload://`: the server fetches it.
    Uri(String),
    /// A local directory, zipped here.
    Dir(PathBuf),
    /// A local zip file, uploaded as is.
    Zip(PathBuf),
}

/// URI schemes the server fetches code from.
const URI_SCHEMES: [&str; 3] = ["file://", "s3://", "upload://"];

/// Why `--code` could not be turned into a code URI.
#[derive(Debug, thiserror::Error)]
pub enum CodeArgError {
    #[error("--code {arg:?}: the server fetches code from file://, s3:// or upload:// URIs only; give one of those or a local directory or zip")]
    UnsupportedScheme { arg: String },
    #[error("--code {path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error("--code {path}: neither a directory nor a regular file")]
    NotFileOrDir { path: PathBuf },
    #[error("could not pack {dir}: {source}")]
    Pack {
        dir: PathBuf,
        #[source]
        source: hearth_code::PackError,
    },
    #[error("could not pack {dir}: {source}")]
    PackIo {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: {source}")]
    Ignore {
        dir: PathBuf,
        #[source]
        source: hearth_dockerfile::DockerIgnoreError,
    },
    #[error("could not read {path}: {source}")]
    Hash {
        path: PathBuf,
        #[source]
        source: raw::RawError,
    },
    #[error("the upload's answer is not the expected JSON ({detail}): {body}")]
    UploadAnswer { detail: String, body: String },
    #[error(transparent)]
    Api(#[from] ApiCallError),
}

impl CodeArg {
    /// Classify `--code`: a URI by its scheme, else a path that must exist.
    pub fn parse(arg: &str) -> Result<CodeArg, CodeArgError> {
        if URI_SCHEMES.iter().any(|s| arg.starts_with(s)) {
            return Ok(CodeArg::Uri(arg.to_string()));
        }
        if arg.contains("://") {
            return Err(CodeArgError::UnsupportedScheme {
                arg: arg.to_string(),
            });
        }
        let path = PathBuf::from(arg);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(CodeArg::Dir(path)),
            Ok(m) if m.is_file() => Ok(CodeArg::Zip(path)),
            Ok(_) => Err(CodeArgError::NotFileOrDir { path }),
            Err(_) => Err(CodeArgError::Missing { path }),
        }
    }
}

/// The answer of `POST /hearth/v1/uploads`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    pub uri: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// Make `--code` a URI the server can fetch: pack and upload local code,
/// saying what it does on stderr.
pub async fn code_uri(api: &Api, arg: CodeArg) -> Result<String, CodeArgError> {
    let (zip, _tmp) = match arg {
        CodeArg::Uri(uri) => return Ok(uri),
        CodeArg::Zip(path) => (path, None),
        CodeArg::Dir(dir) => {
            let (zip, tmp, summary) = pack(dir.clone()).await?;
            eprintln!(
                "packed {} ({} files, {} bytes) into a {} byte zip",
                dir.display(),
                summary.file_count,
                summary.total_bytes,
                summary.archive_bytes
            );
            (zip, Some(tmp))
        }
    };
    let up = upload(api, &zip).await?;
    eprintln!("uploaded {} bytes as {}", up.size_bytes, up.uri);
    Ok(up.uri)
}

/// Zip `dir` into a temporary directory (kept alive by the returned guard).
async fn pack(
    dir: PathBuf,
) -> Result<(PathBuf, tempfile::TempDir, hearth_code::PackSummary), CodeArgError> {
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::Builder::new()
            .prefix("hearth-code-")
            .tempdir()
            .map_err(|source| CodeArgError::PackIo {
                dir: dir.clone(),
                source,
            })?;
        let zip = tmp.path().join("code.zip");
        let ignore = dockerignore(&dir)?;
        let summary =
            hearth_code::pack_dir(&dir, &zip, &*ignore).map_err(|source| CodeArgError::Pack {
                dir: dir.clone(),
                source,
            })?;
        Ok((zip, tmp, summary))
    })
    .await
    .map_err(|e| CodeArgError::PackIo {
        dir: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

/// What `.dockerignore` in `dir` leaves out of the zip (nothing without
/// one). With `!` exceptions every directory is walked, since something
/// under an ignored one may be included again.
#[allow(clippy::type_complexity)]
fn dockerignore(dir: &Path) -> Result<Box<dyn Fn(&Path) -> bool + Send>, CodeArgError> {
    let text = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => text,
        Err(_) => return Ok(Box::new(|_: &Path| false)),
    };
    let rules =
        hearth_dockerfile::parse_dockerignore(&text).map_err(|source| CodeArgError::Ignore {
            dir: dir.to_path_buf(),
            source,
        })?;
    let root = dir.to_path_buf();
    Ok(Box::new(move |rel: &Path| {
        if rules.has_exceptions()
            && std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.is_dir())
        {
            return false;
        }
        rules.ignored(&rel.to_string_lossy())
    }))
}

/// `POST /hearth/v1/uploads` with the zip as the body.
pub async fn upload(api: &Api, zip: &Path) -> Result<Uploaded, CodeArgError> {
    let (size_bytes, sha256_hex) =
        raw::hash_file(zip.to_path_buf())
            .await
            .map_err(|source| CodeArgError::Hash {
                path: zip.to_path_buf(),
                source,
            })?;
    eprintln!("uploading {} ({size_bytes} bytes)...", zip.display());
    let mut r = api
        .raw(
            "UploadCodeArtifact",
            "POST",
            "/hearth/v1/uploads",
            RawBody::File {
                path: zip.to_path_buf(),
                size_bytes,
                sha256_hex: sha256_hex.clone(),
                content_type: "application/zip",
            },
        )
        .await?;
    let body = r
        .read_to_end(1024 * 1024)
        .await
        .map_err(|e| CodeArgError::UploadAnswer {
            detail: e.to_string(),
            body: String::new(),
        })?;
    let up: Uploaded = serde_json::from_slice(&body).map_err(|e| CodeArgError::UploadAnswer {
        detail: e.to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })?;
    if up.sha256 != sha256_hex || up.size_bytes != size_bytes {
        return Err(CodeArgError::UploadAnswer {
            detail: format!(
                "the server stored {} bytes with SHA-256 {}, this client sent {size_bytes} bytes with {sha256_hex}",
                up.size_bytes, up.sha256
            ),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_pass_through_by_scheme_without_touching_the_disk() {
        for uri in [
            "file:///srv/code/app.zip",
            "s3://bucket/key/app.zip",
            "upload://upl-abcdefghijklmnopqrst",
        ] {
            assert_eq!(CodeArg::parse(uri).unwrap(), CodeArg::Uri(uri.into()));
        }
        for bad in ["http://example.com/app.zip", "https://x/y", "ftp://h/a.zip"] {
            assert!(
                matches!(
                    CodeArg::parse(bad),
                    Err(CodeArgError::UnsupportedScheme { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn local_paths_are_a_directory_or_a_zip_and_must_exist() {
        let d = tempfile::tempdir().unwrap();
        let zip = d.path().join("app.zip");
        std::fs::write(&zip, b"PK").unwrap();
        assert_eq!(
            CodeArg::parse(d.path().to_str().unwrap()).unwrap(),
            CodeArg::Dir(d.path().to_path_buf())
        );
        assert_eq!(
            CodeArg::parse(zip.to_str().unwrap()).unwrap(),
            CodeArg::Zip(zip.clone())
        );
        let missing = d.path().join("nope");
        assert!(matches!(
            CodeArg::parse(missing.to_str().unwrap()),
            Err(CodeArgError::Missing { .. })
        ));
        // A relative path that looks like nothing special is a path too.
        assert!(matches!(
            CodeArg::parse("surely-not-here.zip"),
            Err(CodeArgError::Missing { .. })
        ));
    }

    #[tokio::test]
    async fn a_directory_is_packed_without_what_dockerignore_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.path().join("secret.env"), "K=V\n").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "secret.env\n").unwrap();
        let (zip, _tmp, summary) = pack(d.path().to_path_buf()).await.unwrap();
        assert!(zip.is_file());
        // Dockerfile and .dockerignore; secret.env left out.
        assert_eq!(summary.file_count, 2, "{summary:?}");
    }

    #[tokio::test]
    async fn an_exception_under_an_ignored_directory_is_still_packed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("data/big.bin"), "x").unwrap();
        std::fs::write(d.path().join("data/keep.txt"), "k").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "data\n!data/keep.txt\n").unwrap();
        let (_zip, _tmp, summary) = pack(d.path().to_path_buf()).await.unwrap();
        // .dockerignore and data/keep.txt.
        assert_eq!(summary.file_count, 2, "{summary:?}");
    }

    #[tokio::test]
    async fn a_malformed_dockerignore_is_refused_before_anything_is_sent() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".dockerignore"), "!\n").unwrap();
        let e = pack(d.path().to_path_buf()).await.unwrap_err();
        assert!(matches!(e, CodeArgError::Ignore { .. }), "{e}");
    }
}
