//! Stream handles: what callers hold for an open exec, PTY, attach or TCP
//! stream, and the host's half of per-stream flow control.
//!
//! Receiving: the channel's reader task queues a stream's events; a
//! [`StreamReceiver`] hands them to the caller and, as the caller takes
//! output bytes, returns credit to the guest (in batches of a quarter
//! window), so the guest never has more than one window of unread output
//! in host memory. Sending: [`super::AgentClient`] waits for credit before
//! each chunk of stdin or socket data. Both run on the caller's task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hearth_proto::{CloseReason, ExitStatus, OutputFd, PtySize, Request, Response};
use tokio::sync::mpsc;

use super::{unexpected, AgentClient, AgentClientError};

/// Most output [`Process::wait_output`] keeps per stream before it truncates.
pub const MAX_CAPTURE_BYTES: usize = 16 * 1024 * 1024;

/// An event on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Process output (exec, PTY, attach).
    Output { fd: OutputFd, data: Vec<u8> },
    /// A supervised process was (re)started.
    Started { pid: u32 },
    /// A process exited; the stream ends unless `restarting`.
    Exited {
        status: ExitStatus,
        restarting: bool,
    },
    /// TCP bytes.
    Data(Vec<u8>),
    /// The guest side of a TCP stream reached EOF.
    Eof,
    /// The stream ended: the guest closed it, the channel failed, or the
    /// host ended it (the microVM was suspended, snapshotted or stopped).
    Closed { reason: CloseReason },
}

impl StreamEvent {
    fn data_len(&self) -> usize {
        match self {
            StreamEvent::Output { data, .. } | StreamEvent::Data(data) => data.len(),
            _ => 0,
        }
    }
}

/// What dropping a stream's receiver does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDrop {
    /// Keep the stream, drained: its output dropped and credited back at
    /// once, so the process of a dropped [`Process`] keeps running.
    Drain,
    /// Tell the guest to close it (a TCP connection is shut, a named
    /// process detached, an exec's process killed) and forget it at once:
    /// the guest says nothing more about a stream the host closed.
    Close,
}

/// The receiving end of one stream.
pub struct StreamReceiver {
    pub(super) stream: u64,
    pub(super) rx: mpsc::Receiver<StreamEvent>,
    pub(super) client: AgentClient,
    /// Output bytes taken by the caller and not yet credited back.
    uncredited_bytes: u32,
    /// Messages without data queued by the reader and not yet taken.
    unread_control: Arc<AtomicUsize>,
    on_drop: OnDrop,
}

impl StreamReceiver {
    pub(super) fn new(
        stream: u64,
        rx: mpsc::Receiver<StreamEvent>,
        unread_control: Arc<AtomicUsize>,
        client: AgentClient,
        on_drop: OnDrop,
    ) -> Self {
        Self {
            stream,
            rx,
            client,
            uncredited_bytes: 0,
            unread_control,
            on_drop,
        }
    }

    /// Close the stream when dropped instead of draining it.
    pub fn close_on_drop(&mut self) {
        self.on_drop = OnDrop::Close;
    }

    /// The next event, or `None` once the stream is over and drained.
    /// Cancel-safe: the only await is the queue's, and credit earned by
    /// the event is handed to a task of its own.
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        let ev = self.rx.recv().await?;
        let n = ev.data_len() as u32;
        if n == 0 {
            // (Events the host queues itself, a `Closed`, were not counted.)
            let _ = self
                .unread_control
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        } else {
            self.uncredited_bytes += n;
            if self.uncredited_bytes >= hearth_proto::STREAM_WINDOW_BYTES / 4 {
                let bytes = std::mem::take(&mut self.uncredited_bytes);
                self.client.credit_taken(self.stream, bytes);
            }
        }
        Some(ev)
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Drain => self.client.forget_stream(self.stream),
            OnDrop::Close => self.client.close_stream(self.stream),
        }
    }
}

/// A process started with [`AgentClient::exec`]. Dropping it leaves the
/// process running (its output is drained).
pub struct Process {
    pub pid: u32,
    pub stream: u64,
    pub events: StreamReceiver,
}

/// The input side of a [`Process`] ([`Process::into_split`]). The stream
/// stays open as long as its [`StreamReceiver`] does.
#[derive(Clone)]
pub struct ProcessInput {
    client: AgentClient,
    stream: u64,
}

impl ProcessInput {
    /// As [`Process::write_stdin`].
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), AgentClientError> {
        self.client.stream_write(self.stream, data).await
    }

    /// As [`Process::resize`].
    pub async fn resize(&self, size: PtySize, timeout: Duration) -> Result<(), AgentClientError> {
        match self
            .client
            .request(
                Request::Resize {
                    stream: self.stream,
                    size,
                },
                timeout,
            )
            .await?
        {
            Response::Resized => Ok(()),
            other => Err(unexpected("resize", &other)),
        }
    }
}

/// Collected result of [`AgentClient::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond [`MAX_CAPTURE_BYTES`] was dropped.
    pub truncated: bool,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Process {
    fn client(&self) -> &AgentClient {
        &self.events.client
    }

    /// Send bytes to the process's stdin (or its terminal), waiting for
    /// flow-control credit as needed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), AgentClientError> {
        self.client().stream_write(self.stream, data).await
    }

    /// Close the process's stdin (on a terminal: one end-of-file character).
    pub async fn close_stdin(&self) -> Result<(), AgentClientError> {
        self.client().stream_eof(self.stream).await
    }

    /// Send a signal to the process group.
    pub async fn signal(&self, signal: i32, timeout: Duration) -> Result<(), AgentClientError> {
        signal_stream(self.client(), self.stream, signal, timeout).await
    }

    /// Set the terminal size of a PTY process.
    pub async fn resize(&self, size: PtySize, timeout: Duration) -> Result<(), AgentClientError> {
        ProcessInput {
            client: self.client().clone(),
            stream: self.stream,
        }
        .resize(size, timeout)
        .await
    }

    /// Split into the way in (stdin or terminal input, resizes) and the
    /// events, so that one task can write while another reads: a terminal
    /// whose program is blocked writing output reads no input until its
    /// output is read.
    pub fn into_split(self) -> (ProcessInput, StreamReceiver) {
        let input = ProcessInput {
            client: self.events.client.clone(),
            stream: self.stream,
        };
        (input, self.events)
    }

    /// Collect output until the (final) exit.
    pub async fn wait_output(&mut self) -> Result<Output, AgentClientError> {
        collect_output(&mut self.events).await
    }
}

async fn signal_stream(
    client: &AgentClient,
    stream: u64,
    signal: i32,
    timeout: Duration,
) -> Result<(), AgentClientError> {
    match client
        .request(Request::Signal { stream, signal }, timeout)
        .await?
    {
        Response::Signal => Ok(()),
        other => Err(unexpected("signal", &other)),
    }
}

/// Read a stream to its final `Exited`, keeping at most
/// [`MAX_CAPTURE_BYTES`] of each output.
async fn collect_output(events: &mut StreamReceiver) -> Result<Output, AgentClientError> {
    let mut out = Output {
        status: ExitStatus {
            code: None,
            signal: None,
        },
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    while let Some(ev) = events.recv().await {
        match ev {
            StreamEvent::Output { fd, data } => {
                let buf = match fd {
                    OutputFd::Stdout => &mut out.stdout,
                    OutputFd::Stderr => &mut out.stderr,
                };
                let room = MAX_CAPTURE_BYTES.saturating_sub(buf.len());
                if data.len() > room {
                    out.truncated = true;
                }
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
            StreamEvent::Exited {
                status,
                restarting: false,
            } => {
                out.status = status;
                return Ok(out);
            }
            StreamEvent::Closed { reason } => {
                return Err(AgentClientError::StreamClosed {
                    stream: events.stream,
                    reason,
                })
            }
            _ => {}
        }
    }
    events.client.check_health()?;
    Err(AgentClientError::Closed)
}

/// A stream on the output of a named process ([`AgentClient::attach`]).
/// Dropping it detaches the process again (its output goes to its ring).
pub struct Attachment {
    /// The running incarnation, `None` when the process has ended.
    pub pid: Option<u32>,
    pub stream: u64,
    pub events: StreamReceiver,
}

impl Attachment {
    /// Send a signal to the process group.
    pub async fn signal(&self, signal: i32, timeout: Duration) -> Result<(), AgentClientError> {
        signal_stream(&self.events.client, self.stream, signal, timeout).await
    }
}

/// A TCP connection to a guest port; dropping it closes the connection.
pub struct TcpStream {
    pub stream: u64,
    pub events: StreamReceiver,
}

impl TcpStream {
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentClientError> {
        self.events.client.stream_write(self.stream, data).await
    }

    pub async fn shutdown_write(&self) -> Result<(), AgentClientError> {
        self.events.client.stream_eof(self.stream).await
    }

    /// Read everything until the guest closes its side (at most `max_bytes`).
    pub async fn read_to_end(&mut self, max_bytes: usize) -> Result<Vec<u8>, AgentClientError> {
        let mut out = Vec::new();
        while let Some(ev) = self.events.recv().await {
            match ev {
                StreamEvent::Data(d) => {
                    let room = max_bytes.saturating_sub(out.len());
                    out.extend_from_slice(&d[..d.len().min(room)]);
                }
                StreamEvent::Eof | StreamEvent::Closed { .. } => return Ok(out),
                _ => {}
            }
        }
        self.events.client.check_health()?;
        Ok(out)
    }
}

/// Unread messages without data (a restarting process's `Started` and
/// `Exited`, an `Eof`) a stream may queue besides its data. A supervised
/// process restarts at most once a second (then less often), so a stream
/// read by nobody for many minutes reaches this; past it the guest is
/// taken to break the protocol.
pub const MAX_QUEUED_CONTROL_EVENTS: usize = 1024;

/// The queue of one stream's events.
pub(super) fn channel(
    codec_has_credit: bool,
) -> (mpsc::Sender<StreamEvent>, mpsc::Receiver<StreamEvent>) {
    // With credit the queue is bounded by bytes: a stream's unread output
    // never exceeds its window (the reader checks), and every data message
    // holds at least a byte (empty ones are refused), so at most a window
    // of data messages queue, whatever their size, plus the messages
    // without data, which the reader counts. (Tokio allocates the queue as
    // it fills.) Without credit (protocol 1) the reader waits on a short
    // queue instead.
    mpsc::channel(if codec_has_credit {
        hearth_proto::STREAM_WINDOW_BYTES as usize + MAX_QUEUED_CONTROL_EVENTS
    } else {
        64
    })
}
