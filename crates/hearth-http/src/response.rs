//! A response body: whole, or produced over time by another task and
//! written as it comes. The producer holds a [`BodySender`] (any task); the
//! connection's task holds the [`ResponseBody`] and writes what it receives
//! ([`crate::conn`]).
//!
//! The channel between them is bounded in chunks, so a client that reads
//! slowly holds at most `capacity_chunks` chunks of the producer's in
//! memory: the producer's `send` waits for room. A client that stops
//! reading for [`crate::Limits::write_timeout`] on one chunk is dropped, and
//! the producer's next `send` fails ([`StreamClosed`]).

use bytes::Bytes;
use tokio::sync::mpsc;

/// The body of a [`crate::Response`].
pub enum ResponseBody {
    /// All of it, in memory: sent with a `Content-Length`.
    Full(Bytes),
    /// Produced over time ([`body_channel`]): sent with
    /// `Transfer-Encoding: chunked` to HTTP/1.1 clients (to HTTP/1.0
    /// clients, until the connection closes), each chunk as it arrives.
    Stream(BodyStream),
}

impl ResponseBody {
    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(Bytes::new())
    }

    /// The whole body, if it is one (not a stream).
    pub fn into_full(self) -> Option<Bytes> {
        match self {
            ResponseBody::Full(b) => Some(b),
            ResponseBody::Stream(_) => None,
        }
    }

    /// The whole body, if it is one (not a stream).
    pub fn as_full(&self) -> Option<&Bytes> {
        match self {
            ResponseBody::Full(b) => Some(b),
            ResponseBody::Stream(_) => None,
        }
    }

    /// Whether it is produced over time.
    pub fn is_stream(&self) -> bool {
        matches!(self, ResponseBody::Stream(_))
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::empty()
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Full(b) => f.debug_tuple("Full").field(&b.len()).finish(),
            ResponseBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        ResponseBody::Full(b)
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(b: Vec<u8>) -> Self {
        ResponseBody::Full(Bytes::from(b))
    }
}

impl From<&'static [u8]> for ResponseBody {
    fn from(b: &'static [u8]) -> Self {
        ResponseBody::Full(Bytes::from_static(b))
    }
}

impl From<&'static str> for ResponseBody {
    fn from(s: &'static str) -> Self {
        ResponseBody::Full(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for ResponseBody {
    fn from(s: String) -> Self {
        ResponseBody::Full(Bytes::from(s))
    }
}

/// What the producer sends: data, or the mark of a clean end.
pub(crate) enum Frame {
    Data(Bytes),
    End,
}

/// The receiving end of a streamed body, inside [`ResponseBody::Stream`].
pub struct BodyStream {
    pub(crate) rx: mpsc::Receiver<Frame>,
}

/// The producing end of a streamed body. Send chunks with
/// [`BodySender::send`], then end the body with [`BodySender::finish`].
///
/// Dropping it without `finish` *aborts* the body: the client gets no final
/// chunk (it sees a truncated body, never a complete one) and the connection
/// is closed. So a producer that fails or panics half-way is never mistaken
/// for a complete answer.
#[derive(Debug)]
pub struct BodySender {
    tx: mpsc::Sender<Frame>,
}

/// The client is gone (it closed the connection, stopped reading for longer
/// than the write timeout, or the server is shutting down): stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client of this streamed response is gone")]
pub struct StreamClosed;

/// A streamed body and its producer. At most `capacity_chunks` chunks
/// (at least 1) wait between them; the producer's `send` waits for room.
pub fn body_channel(capacity_chunks: usize) -> (BodySender, ResponseBody) {
    let (tx, rx) = mpsc::channel(capacity_chunks.max(1));
    (BodySender { tx }, ResponseBody::Stream(BodyStream { rx }))
}

impl BodySender {
    /// Send one chunk; waits while the channel is full. An empty chunk is
    /// sent as nothing (in chunked framing it would end the body).
    pub async fn send(&self, chunk: impl Into<Bytes>) -> Result<(), StreamClosed> {
        let chunk = chunk.into();
        if chunk.is_empty() {
            return if self.tx.is_closed() {
                Err(StreamClosed)
            } else {
                Ok(())
            };
        }
        self.tx
            .send(Frame::Data(chunk))
            .await
            .map_err(|_| StreamClosed)
    }

    /// End the body cleanly: the client gets the final chunk once every
    /// chunk before it is written. `Err` if the client is already gone.
    pub async fn finish(self) -> Result<(), StreamClosed> {
        self.tx.send(Frame::End).await.map_err(|_| StreamClosed)
    }

    /// Resolves once the client is gone (see [`StreamClosed`]): for a
    /// producer that waits for something to send, to stop waiting.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Whether the client is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
