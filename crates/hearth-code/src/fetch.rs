//! Fetching an artifact to a file on the host: [`Fetcher`].
//!
//! A fetch copies (`file://`, `upload://`) or downloads (`s3://`) the
//! artifact to a new file, in pieces, hashing as it goes; it refuses an
//! artifact over [`FetchLimits::max_archive_bytes`] as soon as the count
//! passes it, and removes the destination on any failure (also when the
//! future is dropped). Runs on the calling task (an image build's task).

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::error::CodeError;
use crate::names::ShownName;
use crate::source::{canonical_roots, under_any, CodeSource, S3Config, SourceConfig};
use crate::uploads::Uploads;

/// Bounds on a fetch. The default is the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Largest artifact accepted, in bytes (default 256 MiB).
    pub max_archive_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_archive_bytes: 256 << 20,
        }
    }
}

/// What a fetch wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub size_bytes: u64,
    /// SHA-256 of the bytes written, lowercase hex.
    pub sha256_hex: String,
}

/// Fetches artifacts from every source the server is configured for.
#[derive(Debug, Clone)]
pub struct Fetcher {
    cfg: SourceConfig,
    uploads: Uploads,
    s3: Option<aws_sdk_s3::Client>,
}

const COPY_CHUNK_BYTES: usize = 64 * 1024;

impl Fetcher {
    /// A fetcher for the sources `cfg` allows, with uploads kept in `uploads`.
    pub fn new(cfg: SourceConfig, uploads: Uploads) -> Fetcher {
        let s3 = cfg.s3.as_ref().map(s3_client);
        Fetcher { cfg, uploads, s3 }
    }

    /// [`CodeSource::parse`] with this fetcher's configuration.
    pub fn parse(&self, uri: &str) -> Result<CodeSource, CodeError> {
        CodeSource::parse(uri, &self.cfg)
    }

    pub fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// Copy or download `source`, as seen by `account`, to `dest` (which
    /// must not exist; it is created with mode `0o600`).
    pub async fn fetch(
        &self,
        source: &CodeSource,
        account: &str,
        dest: &Path,
        limits: &FetchLimits,
    ) -> Result<Fetched, CodeError> {
        match source {
            CodeSource::File { path, canonical } => {
                let shown = ShownName::new(path);
                let file = self.open_under_roots(canonical, &shown).await?;
                copy_to(file, dest, limits).await
            }
            CodeSource::Upload { id } => {
                let path = self.uploads.path(account, id)?;
                let file = open_regular(&path).await.map_err(|e| match e {
                    OpenError::NotFound | OpenError::NotRegular => {
                        CodeError::UploadNotFound { id: id.to_string() }
                    }
                    OpenError::Io(source) => CodeError::Io {
                        op: "open the upload",
                        source,
                    },
                })?;
                copy_to(file, dest, limits).await
            }
            CodeSource::S3 { bucket, key } => {
                let Some(client) = &self.s3 else {
                    return Err(CodeError::S3Disabled);
                };
                fetch_s3(client, bucket, key, dest, limits).await
            }
        }
    }

    /// Open a file:// artifact again at fetch time and check that what was
    /// opened is still under a root (a directory on its path may have been
    /// replaced by a symbolic link since it was parsed).
    async fn open_under_roots(
        &self,
        canonical: &Path,
        shown: &ShownName,
    ) -> Result<tokio::fs::File, CodeError> {
        if self.cfg.artifact_roots.is_empty() {
            return Err(CodeError::FileDisabled);
        }
        let file = open_regular(canonical).await.map_err(|e| match e {
            OpenError::NotFound => CodeError::FileNotFound {
                path: shown.clone(),
            },
            OpenError::NotRegular => CodeError::FileNotRegular {
                path: shown.clone(),
            },
            OpenError::Io(source) => CodeError::FileUnreadable {
                path: shown.clone(),
                source,
            },
        })?;
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(
            |source| CodeError::Io {
                op: "check the opened artifact",
                source,
            },
        )?;
        if !under_any(&opened, &canonical_roots(&self.cfg.artifact_roots)) {
            return Err(CodeError::FileOutsideRoots {
                path: shown.clone(),
            });
        }
        Ok(file)
    }
}

enum OpenError {
    NotFound,
    NotRegular,
    Io(io::Error),
}

/// Open `path` for reading without following a final symbolic link and
/// without blocking on a FIFO; only a regular file is returned.
async fn open_regular(path: &Path) -> Result<tokio::fs::File, OpenError> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .await
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => OpenError::NotFound,
            Some(libc::ELOOP) => OpenError::NotRegular,
            _ => OpenError::Io(e),
        })?;
    let meta = file.metadata().await.map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(OpenError::NotRegular);
    }
    Ok(file)
}

/// Removes a file this module created unless disarmed.
struct RemoveOnDrop {
    path: PathBuf,
    armed: bool,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new destination file, removed again unless [`Sink::finish`] is reached.
struct Sink {
    file: tokio::fs::File,
    guard: RemoveOnDrop,
    hasher: Sha256,
    size_bytes: u64,
    max_bytes: u64,
}

impl Sink {
    async fn create(dest: &Path, limits: &FetchLimits) -> Result<Sink, CodeError> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dest)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => CodeError::DestinationExists,
                _ => CodeError::Io {
                    op: "create the artifact file",
                    source: e,
                },
            })?;
        Ok(Sink {
            file,
            guard: RemoveOnDrop {
                path: dest.to_owned(),
                armed: true,
            },
            hasher: Sha256::new(),
            size_bytes: 0,
            max_bytes: limits.max_archive_bytes,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), CodeError> {
        self.size_bytes += bytes.len() as u64;
        if self.size_bytes > self.max_bytes {
            return Err(CodeError::TooLarge {
                max_bytes: self.max_bytes,
            });
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .await
            .map_err(|source| CodeError::Io {
                op: "write the artifact file",
                source,
            })
    }

    async fn finish(mut self) -> Result<Fetched, CodeError> {
        self.file
            .flush()
            .await
            .and(self.file.sync_all().await)
            .map_err(|source| CodeError::Io {
                op: "write the artifact file",
                source,
            })?;
        self.guard.armed = false;
        Ok(Fetched {
            size_bytes: self.size_bytes,
            sha256_hex: hex::encode(self.hasher.finalize()),
        })
    }
}

async fn copy_to(
    mut from: impl AsyncRead + Unpin,
    dest: &Path,
    limits: &FetchLimits,
) -> Result<Fetched, CodeError> {
    let mut sink = Sink::create(dest, limits).await?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    loop {
        let n = from.read(&mut buf).await.map_err(|source| CodeError::Io {
            op: "read the artifact",
            source,
        })?;
        if n == 0 {
            break;
        }
        sink.write(&buf[..n]).await?;
    }
    sink.finish().await
}

fn s3_client(cfg: &S3Config) -> aws_sdk_s3::Client {
    let credentials = Credentials::new(
        cfg.access_key_id.clone(),
        cfg.secret_access_key.clone(),
        None,
        None,
        "hearth-config",
    );
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build();
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(cfg.force_path_style)
        .timeout_config(timeouts);
    if let Some(url) = &cfg.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

async fn fetch_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    dest: &Path,
    limits: &FetchLimits,
) -> Result<Fetched, CodeError> {
    let output = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| s3_error(bucket, key, e))?;
    if output
        .content_length()
        .is_some_and(|len| len < 0 || len as u64 > limits.max_archive_bytes)
    {
        return Err(CodeError::TooLarge {
            max_bytes: limits.max_archive_bytes,
        });
    }
    let mut body = output.body;
    let mut sink = Sink::create(dest, limits).await?;
    while let Some(chunk) = body.try_next().await.map_err(|e| CodeError::S3Failed {
        bucket: bucket.to_owned(),
        key: ShownName::new(key),
        code: None,
        source: Box::new(e),
    })? {
        sink.write(&chunk).await?;
    }
    sink.finish().await
}

fn s3_error(bucket: &str, key: &str, err: SdkError<GetObjectError>) -> CodeError {
    let bucket = bucket.to_owned();
    let key = ShownName::new(key);
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let inner = service.err();
            let code = inner.code().map(str::to_owned);
            let not_found = inner.is_no_such_key()
                || matches!(
                    code.as_deref(),
                    Some("NoSuchKey" | "NoSuchBucket" | "NotFound")
                )
                || status == 404;
            if not_found {
                return CodeError::S3NotFound { bucket, key };
            }
            if matches!(code.as_deref(), Some("AccessDenied" | "Forbidden")) || status == 403 {
                return CodeError::S3AccessDenied { bucket, key };
            }
            CodeError::S3Failed {
                bucket,
                key,
                code: code.or_else(|| Some(format!("HTTP {status}"))),
                source: Box::new(err),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => CodeError::S3Unreachable {
            bucket,
            key,
            source: Box::new(err),
        },
        _ => CodeError::S3Failed {
            bucket,
            key,
            code: None,
            source: Box::new(err),
        },
    }
}
