//! [`CodeError`]: why a code URI was refused or could not be fetched.
//!
//! Every message is safe to show to the API caller: it may repeat what the
//! caller wrote (their own `file://` path, bucket, key or upload id, quoted
//! and escaped), never a directory of the server or the S3 endpoint. The
//! underlying error, for the server's log, is the `#[source]`.

use std::io;

use crate::names::ShownName;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("unsupported code URI scheme {scheme}: accepted are file:///path.zip, s3://bucket/key and upload://<upload-id>")]
    UnsupportedScheme { scheme: ShownName },

    #[error("file:// artifacts are disabled: start the server with --artifact-root DIR")]
    FileDisabled,
    #[error("file:// path {path} is refused: {reason}")]
    FileBadPath {
        path: ShownName,
        reason: &'static str,
    },
    #[error("file:// path {path} is not under an artifact root")]
    FileOutsideRoots { path: ShownName },
    #[error("file:// path {path} does not exist")]
    FileNotFound { path: ShownName },
    #[error("file:// path {path} is not a regular file")]
    FileNotRegular { path: ShownName },
    #[error("file:// path {path} could not be read: {source}")]
    FileUnreadable {
        path: ShownName,
        #[source]
        source: io::Error,
    },

    #[error("s3:// artifacts are disabled: the server has no S3 endpoint configured")]
    S3Disabled,
    #[error("invalid s3:// URI: {reason}")]
    InvalidS3Uri { reason: String },
    #[error("object {key} in bucket {bucket} was not found")]
    S3NotFound { bucket: String, key: ShownName },
    #[error("access to object {key} in bucket {bucket} was denied")]
    S3AccessDenied { bucket: String, key: ShownName },
    #[error("the S3 endpoint could not be reached to fetch object {key} in bucket {bucket}")]
    S3Unreachable {
        bucket: String,
        key: ShownName,
        #[source]
        source: BoxError,
    },
    #[error("fetching object {key} in bucket {bucket} failed{}", code.as_ref().map(|c| format!(": S3 answered {c}")).unwrap_or_default())]
    S3Failed {
        bucket: String,
        key: ShownName,
        code: Option<String>,
        #[source]
        source: BoxError,
    },

    #[error("invalid upload id: upload ids are `upl-` followed by 20 characters a-z and 2-7")]
    InvalidUploadId,
    #[error("invalid account id")]
    InvalidAccount,
    #[error("upload {id} was not found")]
    /// `id` is the upload's id as text.
    UploadNotFound { id: String },

    #[error("the artifact is larger than the limit of {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    #[error("the artifact's destination already exists")]
    DestinationExists,
    /// A file-system operation on the server failed. The message names the
    /// operation, not the path.
    #[error("could not {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}
