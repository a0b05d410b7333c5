//! A connection's socket and its read buffer: bounded reads, timed writes,
//! answers written as HTTP/1.1, and the lingering close. Used by the
//! connection's task only ([`crate::conn`], and [`crate::Body`] on that task).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::limits::{Limits, READ_CHUNK_BYTES};
use crate::reply::REQUEST_ID_HEADER;
use crate::Response;

/// How long a closing connection keeps reading (and discarding) what the
/// client is still sending.
const LINGER: Duration = Duration::from_secs(2);

/// The connection's socket and what was read from it but not yet used.
pub(crate) struct ConnIo {
    pub(crate) stream: TcpStream,
    /// Read but not yet used. Grows by exact reservations, so its
    /// capacity stays within a head limit plus one read.
    pub(crate) buf: Vec<u8>,
    pub(crate) limits: Arc<Limits>,
    /// The client sent `Expect: 100-continue` and has not been told to go on.
    pub(crate) continue_pending: bool,
    /// Bytes of the current request's body not yet read.
    pub(crate) body_remaining: u64,
}

impl ConnIo {
    pub(crate) fn new(stream: TcpStream, limits: Arc<Limits>) -> Self {
        ConnIo {
            stream,
            buf: Vec::new(),
            limits,
            continue_pending: false,
            body_remaining: 0,
        }
    }

    /// Read once more (at most one chunk).
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        // Straight into the buffer: no chunk on the task's stack, so a
        // waiting connection costs its buffer and little else.
        self.buf.reserve_exact(READ_CHUNK_BYTES);
        let mut room = (&mut self.buf).limit(READ_CHUNK_BYTES);
        self.stream.read_buf(&mut room).await
    }

    pub(crate) async fn write_timed(&mut self, bytes: &[u8]) -> io::Result<()> {
        match timeout(self.limits.write_timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "writing the answer timed out",
            )),
        }
    }

    /// Close after an answer while the client may still be sending (a body
    /// that was not read, a head that was refused): send FIN, then read and
    /// discard for a moment, so that the client's kernel does not answer our
    /// close with a reset that destroys the answer before it is read.
    pub(crate) async fn lingering_close(&mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER;
        loop {
            self.buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.read_more()).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Answer and close (see [`ConnIo::lingering_close`]).
    pub(crate) async fn refuse(&mut self, resp: Response, rid: &str) {
        if self.write_response(resp, rid, true, false).await.is_ok() {
            self.lingering_close().await;
        }
    }

    /// Write `resp` for the request `rid`; `close` adds `connection: close`.
    pub(crate) async fn write_response(
        &mut self,
        resp: Response,
        rid: &str,
        close: bool,
        head_only: bool,
    ) -> io::Result<()> {
        self.write_timed(&encode_response(resp, rid, close, head_only))
            .await
    }
}

/// `resp` as HTTP/1.1 bytes for the request `rid`: its own framing
/// (`content-length`, and `connection: close` when `close`), the request id
/// unless the service set one, no body for HEAD, 1xx, 204 and 304.
pub(crate) fn encode_response(resp: Response, rid: &str, close: bool, head_only: bool) -> Vec<u8> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (k, v) in &parts.headers {
        if k == http::header::CONTENT_LENGTH
            || k == http::header::CONNECTION
            || k == http::header::TRANSFER_ENCODING
        {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(REQUEST_ID_HEADER) {
        out.extend_from_slice(format!("{REQUEST_ID_HEADER}: {rid}\r\n").as_bytes());
    }
    let no_body = status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    if !no_body {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_only {
        out.extend_from_slice(&body);
    }
    out
}
