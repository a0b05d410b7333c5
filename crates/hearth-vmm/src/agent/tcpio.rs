//! A guest TCP stream ([`TcpStream`]) as a Tokio byte stream
//! (`AsyncRead + AsyncWrite`), for callers that speak a protocol over it
//! (the endpoint proxy runs an HTTP client on it).
//!
//! [`TcpStream::into_io`] spawns two pump tasks on the caller's runtime
//! between the agent stream and one half of a bounded in-memory pipe
//! (`tokio::io::duplex`); the caller gets the other half. Flow control holds
//! end to end: the guest-to-caller pump takes the next event only once the
//! pipe has room (and only taking events returns credit to the guest), and
//! the caller-to-guest pump reads the pipe again only once the agent has
//! granted credit for the previous chunk. Memory per stream is bounded by
//! the pipe ([`PIPE_BYTES`] each way) plus one window of the agent's credit.
//!
//! Ends: the guest's EOF becomes the caller's EOF; the caller's shutdown of
//! its write side (or dropping its half) becomes the guest's EOF. The guest
//! connection is closed once both directions are done, or at once when the
//! caller's half is dropped or the guest ends the stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::stream::{StreamEvent, TcpStream};

/// Capacity of the in-memory pipe between a caller and its guest stream.
pub const PIPE_BYTES: usize = 64 * 1024;

/// How often a pump that waits for nothing but the caller checks whether
/// the caller's half still exists.
const CALLER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl TcpStream {
    /// This stream as an `AsyncRead + AsyncWrite` ([module docs](self)).
    /// Must be called within a Tokio runtime.
    pub fn into_io(self) -> DuplexStream {
        let (caller, pump) = tokio::io::duplex(PIPE_BYTES);
        let (mut from_caller, mut to_caller) = tokio::io::split(pump);
        let TcpStream { stream, mut events } = self;
        let client = events.client.clone();
        let (up_done_tx, mut up_done) = watch::channel(false);

        // Caller -> guest.
        tokio::spawn(async move {
            let mut buf = vec![0u8; super::WRITE_CHUNK_BYTES];
            loop {
                match from_caller.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = client.stream_eof(stream).await;
                        break;
                    }
                    Ok(n) => {
                        if client.stream_write(stream, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = up_done_tx.send(true);
        });

        // Guest -> caller. Owns the receiver, so the guest connection is
        // closed when this task ends.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CALLER_CHECK_INTERVAL);
            let mut guest_eof = false;
            loop {
                let caller_done = *up_done.borrow();
                if guest_eof && caller_done {
                    break;
                }
                tokio::select! {
                    ev = events.recv(), if !guest_eof => match ev {
                        Some(StreamEvent::Data(data)) => {
                            if to_caller.write_all(&data).await.is_err() {
                                break;
                            }
                        }
                        Some(StreamEvent::Eof) => {
                            guest_eof = true;
                            let _ = to_caller.shutdown().await;
                        }
                        Some(StreamEvent::Closed { .. }) | None => {
                            let _ = to_caller.shutdown().await;
                            break;
                        }
                        Some(StreamEvent::Output { .. })
                        | Some(StreamEvent::Started { .. })
                        | Some(StreamEvent::Exited { .. }) => {}
                    },
                    _ = up_done.changed(), if !caller_done => {}
                    _ = tick.tick(), if caller_done && !guest_eof => {
                        // The caller sent its EOF; has it also dropped its
                        // half? An empty write fails once it has.
                        if to_caller.write(&[]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            drop(events);
        });
        caller
    }
}
