//! A request body, read only when the service asks. Runs on the
//! connection's task (the service's future is polled there).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::Mutex;
use tokio::time::{timeout, Instant};

use crate::io::ConnIo;

/// The body of one request: bytes in memory (tests, in-process callers) or
/// `Content-Length` bytes still on the connection.
pub struct Body {
    inner: Inner,
}

enum Inner {
    Full(Bytes),
    Conn {
        io: Arc<Mutex<ConnIo>>,
        len_bytes: u64,
    },
}

/// Why a body could not be read. [`BodyError::status`] says what to answer.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is {declared_bytes} bytes, more than the {limit_bytes}-byte limit")]
    TooLarge {
        declared_bytes: u64,
        limit_bytes: usize,
    },
    #[error(
        "the request body did not arrive in time ({received_bytes} of {declared_bytes} bytes)"
    )]
    Timeout {
        received_bytes: u64,
        declared_bytes: u64,
    },
    #[error(
        "the client closed the connection after {received_bytes} of {declared_bytes} body bytes"
    )]
    Closed {
        received_bytes: u64,
        declared_bytes: u64,
    },
    #[error("reading the request body: {0}")]
    Io(#[from] std::io::Error),
}

impl BodyError {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Closed { .. } | BodyError::Io(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The AWS error type to answer with.
    pub fn error_type(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "RequestEntityTooLargeException",
            BodyError::Timeout { .. } => "RequestTimeoutException",
            BodyError::Closed { .. } | BodyError::Io(_) => "ValidationException",
        }
    }
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Body::from_bytes(Bytes::new())
    }

    /// A body already in memory.
    pub fn from_bytes(b: impl Into<Bytes>) -> Self {
        Body {
            inner: Inner::Full(b.into()),
        }
    }

    pub(crate) fn on_connection(io: Arc<Mutex<ConnIo>>, len_bytes: u64) -> Self {
        Body {
            inner: Inner::Conn { io, len_bytes },
        }
    }

    /// Its length in bytes (from `Content-Length`), known before any of it
    /// is read.
    pub fn len_bytes(&self) -> u64 {
        match &self.inner {
            Inner::Full(b) => b.len() as u64,
            Inner::Conn { len_bytes, .. } => *len_bytes,
        }
    }

    /// Whether it has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len_bytes() == 0
    }

    /// Read all of it, refusing (before reading anything) a body longer than
    /// `limit_bytes`. A slow or silent client gets [`BodyError::Timeout`]
    /// (see [`crate::Limits`]).
    pub async fn read_all(self, limit_bytes: usize) -> Result<Bytes, BodyError> {
        if self.len_bytes() > limit_bytes as u64 {
            return Err(BodyError::TooLarge {
                declared_bytes: self.len_bytes(),
                limit_bytes,
            });
        }
        match self.inner {
            Inner::Full(b) => Ok(b),
            Inner::Conn { io, len_bytes } => io.lock().await.read_body(len_bytes).await,
        }
    }
}

impl ConnIo {
    /// Read the current request's body (`len_bytes`, all of what is left).
    pub(crate) async fn read_body(&mut self, len_bytes: u64) -> Result<Bytes, BodyError> {
        debug_assert_eq!(len_bytes, self.body_remaining);
        if self.continue_pending {
            self.continue_pending = false;
            self.write_timed(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let limits = self.limits.clone();
        let start = Instant::now();
        let mut out = Vec::with_capacity(len_bytes.min(64 * 1024) as usize);
        while self.body_remaining > 0 {
            if !self.buf.is_empty() {
                let n = (self.body_remaining.min(self.buf.len() as u64)) as usize;
                out.extend_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                self.body_remaining -= n as u64;
                continue;
            }
            let (received_bytes, declared_bytes) = (out.len() as u64, len_bytes);
            // The minimum rate holds all along, not only at the end: the
            // next byte is due by `body_deadline(received + 1)`.
            let due = start + limits.body_deadline(received_bytes + 1);
            let wait = limits
                .body_idle_timeout
                .min(due.saturating_duration_since(Instant::now()));
            match timeout(wait, self.read_more()).await {
                Err(_) => {
                    return Err(BodyError::Timeout {
                        received_bytes,
                        declared_bytes,
                    })
                }
                Ok(Ok(0)) => {
                    return Err(BodyError::Closed {
                        received_bytes,
                        declared_bytes,
                    })
                }
                Ok(Err(e)) => return Err(BodyError::Io(e)),
                Ok(Ok(_)) => {}
            }
        }
        Ok(Bytes::from(out))
    }
}
