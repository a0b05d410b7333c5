//! A request body, read only when the service asks. Runs on the
//! connection's task (the service's future is polled there).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::Mutex;
use tokio::time::{timeout, Instant};

use crate::io::ConnIo;

/// The body of one request: bytes in memory (tests, in-process callers) or
/// `Content-Length` bytes still on the connection, read all at once
/// ([`Body::read_all`]) or piece by piece ([`Body::next_chunk`]).
pub struct Body {
    inner: Inner,
}

enum Inner {
    Full(Bytes),
    Conn {
        io: Arc<Mutex<ConnIo>>,
        len_bytes: u64,
        progress: Progress,
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
            inner: Inner::Conn {
                io,
                len_bytes,
                progress: Progress::default(),
            },
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

    /// Read all of it (all that [`Body::next_chunk`] has not returned yet),
    /// refusing (before reading anything) a body longer than `limit_bytes`.
    /// A slow or silent client gets [`BodyError::Timeout`] (see
    /// [`crate::Limits`]).
    pub async fn read_all(self, limit_bytes: usize) -> Result<Bytes, BodyError> {
        if self.len_bytes() > limit_bytes as u64 {
            return Err(BodyError::TooLarge {
                declared_bytes: self.len_bytes(),
                limit_bytes,
            });
        }
        match self.inner {
            Inner::Full(b) => Ok(b),
            Inner::Conn {
                io,
                len_bytes,
                mut progress,
            } => {
                let mut io = io.lock().await;
                let left = len_bytes - progress.received_bytes;
                let mut out = Vec::with_capacity(left.min(64 * 1024) as usize);
                loop {
                    let n = io.fill_body(len_bytes, &mut progress).await?;
                    if n == 0 {
                        return Ok(Bytes::from(out));
                    }
                    out.extend_from_slice(&io.buf[..n]);
                    io.consume_body(n, &mut progress);
                }
            }
        }
    }

    /// The next piece of the body as it arrives (at most one socket read,
    /// 16 KiB, at a time), or `None` once all of it was returned: for a
    /// service that passes a large body on without holding it in memory.
    /// The same limits hold as for [`Body::read_all`]: the body's idle
    /// timeout and minimum rate count from the first call, so a consumer
    /// that takes long between calls eats into the client's allowance.
    ///
    /// A service must be done with the body before it returns its answer:
    /// the connection writes the answer next (and ends after it if the body
    /// was not read to its end).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match &mut self.inner {
            Inner::Full(b) => Ok((!b.is_empty()).then(|| std::mem::take(b))),
            Inner::Conn {
                io,
                len_bytes,
                progress,
            } => {
                let mut io = io.lock().await;
                let n = io.fill_body(*len_bytes, progress).await?;
                if n == 0 {
                    return Ok(None);
                }
                let chunk = Bytes::copy_from_slice(&io.buf[..n]);
                io.consume_body(n, progress);
                Ok(Some(chunk))
            }
        }
    }
}

/// How far a body on the connection has been read, for its limits.
#[derive(Debug, Default)]
struct Progress {
    /// When it was first asked for: the idle timeout and the minimum rate
    /// count from here.
    start: Option<Instant>,
    received_bytes: u64,
}

impl ConnIo {
    /// Wait until some of the current request's body (`len_bytes` in all)
    /// is in the buffer; returns how many of the buffered bytes are body
    /// (0 once all of it is read). The client is told `100 Continue` first
    /// if it waits for that.
    async fn fill_body(
        &mut self,
        len_bytes: u64,
        progress: &mut Progress,
    ) -> Result<usize, BodyError> {
        debug_assert_eq!(len_bytes, progress.received_bytes + self.body_remaining);
        if self.body_remaining == 0 {
            return Ok(0);
        }
        if self.continue_pending {
            self.continue_pending = false;
            self.write_timed(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let limits = self.limits.clone();
        let start = *progress.start.get_or_insert_with(Instant::now);
        while self.buf.is_empty() {
            let (received_bytes, declared_bytes) = (progress.received_bytes, len_bytes);
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
        Ok(self.body_remaining.min(self.buf.len() as u64) as usize)
    }

    /// The first `n` buffered bytes (body bytes, see [`ConnIo::fill_body`])
    /// are used.
    fn consume_body(&mut self, n: usize, progress: &mut Progress) {
        self.buf.drain(..n);
        self.body_remaining -= n as u64;
        progress.received_bytes += n as u64;
    }
}
