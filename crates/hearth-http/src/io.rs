//! A connection's socket and its read buffer: bounded reads, timed writes,
//! answers written as HTTP/1.1 (whole, or streamed chunk by chunk), and the
//! lingering close. Used by the
//! connection's task only ([`crate::conn`], and [`crate::Body`] on that task).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::limits::{Limits, READ_CHUNK_BYTES};
use crate::reply::REQUEST_ID_HEADER;
use crate::response::{BodyStream, Frame};
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

    /// Write the whole answer `resp` for the request `rid`; `close` adds
    /// `connection: close`. `resp` must have a whole body.
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

    /// Write one chunk of a streamed body (`chunked`: in chunked framing,
    /// else as it is), within [`Limits::write_timeout`].
    async fn write_chunk(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        let size_line = format!("{:x}\r\n", data.len());
        let (prefix, suffix): (&[u8], &[u8]) = if chunked {
            (size_line.as_bytes(), b"\r\n")
        } else {
            (b"", b"")
        };
        let mut all = Buf::chain(Buf::chain(prefix, data), suffix);
        match timeout(self.limits.write_timeout, async {
            self.stream.write_all_buf(&mut all).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "writing a chunk of the answer timed out",
            )),
        }
    }

    /// Write a streamed body as it is produced, until the producer finishes
    /// it ([`StreamEnd::Clean`]) or it has to stop. The head is written.
    /// Each chunk is flushed as it arrives; the producer sees
    /// [`crate::StreamClosed`] once this returns (its receiver is dropped).
    ///
    /// While it waits for the producer, it watches the socket: a client that
    /// closes its end (or resets) is gone, and so is the stream. Bytes the
    /// client sends meanwhile (a pipelined request) stop the watch and stay
    /// unread.
    pub(crate) async fn write_stream(
        &mut self,
        mut body: BodyStream,
        chunked: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> StreamEnd {
        enum Event {
            Frame(Option<Frame>),
            ClientGone,
            ClientSent,
            Shutdown,
        }
        let mut watch_client = self.buf.is_empty();
        loop {
            if *shutdown.borrow() {
                return StreamEnd::Aborted;
            }
            let event = {
                let stream = &self.stream;
                tokio::select! {
                    f = body.rx.recv() => Event::Frame(f),
                    r = peek_one(stream), if watch_client => match r {
                        Ok(0) | Err(_) => Event::ClientGone,
                        Ok(_) => Event::ClientSent,
                    },
                    _ = shutdown.changed() => Event::Shutdown,
                }
            };
            match event {
                Event::Frame(Some(Frame::Data(data))) => {
                    if data.is_empty() {
                        continue;
                    }
                    if self.write_chunk(data, chunked).await.is_err() {
                        return StreamEnd::ClientGone;
                    }
                }
                Event::Frame(Some(Frame::End)) => {
                    if chunked && self.write_timed(b"0\r\n\r\n").await.is_err() {
                        return StreamEnd::ClientGone;
                    }
                    return StreamEnd::Clean;
                }
                // The producer dropped its sender without finishing.
                Event::Frame(None) => return StreamEnd::Aborted,
                Event::ClientGone => return StreamEnd::ClientGone,
                Event::ClientSent => watch_client = false,
                Event::Shutdown => return StreamEnd::Aborted,
            }
        }
    }
}

/// How a streamed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The producer finished it and all of it was written.
    Clean,
    /// The producer dropped its sender without finishing, or the server is
    /// shutting down: the client got no final chunk.
    Aborted,
    /// The client closed, reset, or did not read a chunk in time.
    ClientGone,
}

/// Wait until the client sends something or closes: `Ok(0)` when it closed.
async fn peek_one(stream: &TcpStream) -> io::Result<usize> {
    let mut one = [0u8; 1];
    stream.peek(&mut one).await
}

/// How the body of an answer is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the connection closes (a stream to an
    /// HTTP/1.0 client), or there is none (204, 304, 1xx).
    None,
}

/// Whether answers with `status` never have a body.
pub(crate) fn status_has_no_body(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
}

/// The head of an answer as HTTP/1.1 bytes for the request `rid`: its own
/// framing headers (the service's `content-length`, `connection` and
/// `transfer-encoding` are dropped), `connection: close` when `close`, the
/// request id unless the service set one.
pub(crate) fn encode_head(
    parts: &http::response::Parts,
    rid: &str,
    framing: Framing,
    close: bool,
    body_hint_bytes: usize,
) -> Vec<u8> {
    let status = parts.status;
    let mut out = Vec::with_capacity(256 + body_hint_bytes);
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
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The whole answer `resp` as HTTP/1.1 bytes for the request `rid`: its own
/// framing (`content-length`, and `connection: close` when `close`), the
/// request id unless the service set one, no body for HEAD, 1xx, 204 and
/// 304. A streamed body is left out (see [`ConnIo::write_stream`]).
pub(crate) fn encode_response(resp: Response, rid: &str, close: bool, head_only: bool) -> Vec<u8> {
    let (parts, body) = resp.into_parts();
    let body = body.into_full().unwrap_or_default();
    let no_body = status_has_no_body(parts.status);
    let framing = if no_body {
        Framing::None
    } else {
        Framing::Length(body.len() as u64)
    };
    let mut out = encode_head(&parts, rid, framing, close, body.len());
    if !no_body && !head_only {
        out.extend_from_slice(&body);
    }
    out
}
