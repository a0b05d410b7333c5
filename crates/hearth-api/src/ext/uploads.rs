//! `POST /hearth/v1/uploads`: a code artifact uploaded to the server, for
//! `upload://` code URIs.
//!
//! Owns the upload's way from the connection to `<data-dir>/uploads`: the
//! `Content-Length` checks, the per-server limit of concurrent uploads, the
//! body streamed to a temporary file under `<data-dir>/uploads/tmp/` while
//! it is hashed, the hash checked against the signed
//! `x-amz-content-sha256`, and the file handed to [`hearth_code::Uploads`]
//! (which moves it to `<data-dir>/uploads/<account-id>/<upload-id>.zip`).
//! An upload never sits in memory, so it does not count against the
//! unverified-body budget. Runs on the request's connection task; file
//! writes go through Tokio's blocking pool.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_http::Response;
use http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::StreamedRequest;
use crate::error::body_error;
use crate::error::ApiError;

/// Largest upload, by its `Content-Length`.
pub const MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// Uploads one server receives at once; one more is answered 429.
pub const MAX_CONCURRENT_UPLOADS: usize = 8;

/// What the file writes are buffered in, per upload.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Where uploads go, and how many may arrive at once.
pub struct UploadStore {
    uploads: hearth_code::Uploads,
    tmp_dir: PathBuf,
    slots: Arc<Semaphore>,
}

impl UploadStore {
    /// Uploads kept under `uploads_dir` (`<data-dir>/uploads`), arriving in
    /// `uploads_dir/tmp`; the directories are made on the first upload.
    pub fn new(uploads_dir: &Path) -> Self {
        UploadStore {
            uploads: hearth_code::Uploads::new(uploads_dir),
            tmp_dir: uploads_dir.join("tmp"),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_UPLOADS)),
        }
    }
}

/// An upload's temporary file, removed when dropped (a refused or failed
/// upload leaves nothing behind; an accepted one was moved away already).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The handler.
pub(crate) async fn put(
    store: Arc<UploadStore>,
    req: StreamedRequest,
) -> Result<Response, ApiError> {
    let StreamedRequest {
        caller,
        parts,
        mut body,
        declared,
        ..
    } = req;
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        return Err(ApiError::Body {
            status: StatusCode::LENGTH_REQUIRED,
            shape: "ValidationException",
            message: "An upload must be sent with a Content-Length".into(),
        });
    }
    let len_bytes = body.len_bytes();
    if len_bytes > MAX_UPLOAD_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "The upload is {len_bytes} bytes; the limit is {MAX_UPLOAD_BYTES} bytes"
        )));
    }
    let Ok(_slot) = store.slots.clone().try_acquire_owned() else {
        return Err(ApiError::Throttling {
            retry_after_secs: 1,
        });
    };

    let tmp = TempFile(
        store
            .tmp_dir
            .join(format!("{}.part", hex::encode(rand::random::<[u8; 16]>()))),
    );
    let file = create_tmp(&store.tmp_dir, &tmp.0).await?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let mut hasher = Sha256::new();
    let mut size_bytes = 0u64;
    while let Some(chunk) = body.next_chunk().await.map_err(body_error)? {
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal("writing an upload", e))?;
        size_bytes += chunk.len() as u64;
    }
    out.flush()
        .await
        .map_err(|e| ApiError::internal("writing an upload", e))?;
    let file = out.into_inner();
    file.sync_all()
        .await
        .map_err(|e| ApiError::internal("writing an upload", e))?;
    drop(file);

    let sha256: [u8; 32] = hasher.finalize().into();
    if !declared.matches(&sha256) {
        return Err(ApiError::Validation(
            "The body does not match x-amz-content-sha256".into(),
        ));
    }
    let id = store
        .uploads
        .put_from_file(caller.account_id.as_str(), &tmp.0)
        .await
        .map_err(|e| ApiError::internal("storing an upload", e))?;
    drop(tmp);

    let answer = serde_json::json!({
        "uri": format!("upload://{id}"),
        "sizeBytes": size_bytes,
        "sha256": hex::encode(sha256),
    });
    let mut r = http::Response::new(hearth_http::ResponseBody::from(
        serde_json::to_vec(&answer).expect("a JSON object serializes"),
    ));
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(r)
}

/// Create the temporary file (0600, never an existing one) in `tmp_dir`
/// (0700, made if missing).
async fn create_tmp(tmp_dir: &Path, path: &Path) -> Result<tokio::fs::File, ApiError> {
    let dir = tmp_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
    })
    .await
    .map_err(|e| ApiError::internal("creating the uploads directory", e))?
    .map_err(|e| ApiError::internal("creating the uploads directory", e))?;
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| ApiError::internal("creating an upload's temporary file", e))
}
