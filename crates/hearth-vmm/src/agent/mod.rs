//! Host side of the agent channel.
//!
//! Owns one connection to a guest's `hearth-agent` (through the microVM's
//! supervisor, which relays whole frames) and multiplexes requests and
//! streams over it. A reader task (spawned on the Tokio runtime, one per
//! connection) decodes frames and routes them; callers write through a
//! mutex from their own tasks.
//!
//! Versions: the host speaks every protocol version a stored snapshot may
//! contain ([`codec`]). A booting guest's version is read from its first
//! frame; a restored or re-attached guest's version comes from the record
//! of the snapshot or microVM.
//!
//! Flow control (version 2): the reader never waits on a stream. A
//! stream's unread output is bounded by its window (a guest that exceeds it
//! breaks the protocol); its consumer returns credit as it reads
//! ([`stream::StreamReceiver`]); writers wait for the guest's credit. A
//! stalled consumer therefore stops only its own stream. With a version-1
//! guest the reader waits on a short per-stream queue instead, as version 1
//! always did.
//!
//! The guest is hostile. The reader enforces the frame bounds of
//! `hearth-proto` before buffering anything; the first violation marks the
//! channel [`ChannelHealth::Failed`], fails every pending request and
//! stream, and stops reading. Messages for unknown requests or streams are
//! dropped.
//!
//! Snapshots: [`AgentClient::quiesce`] closes a gate so no caller can write
//! after the `Quiesce` request; the gate opens again on `thaw`, and a
//! channel to a restored (or re-attached) guest starts closed until
//! [`AgentClient::restore`] (or [`AgentClient::reattach`]).

pub mod codec;
pub mod stream;
pub mod tcpio;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use hearth_proto::{
    AgentError, AgentInfo, CloseReason, ExecRequest, GuestMessage, Hello, HostMessage,
    ReadFileRequest, Request, Response, RestoreRequest, WriteFileRequest, MAX_CHUNK_BYTES,
    STREAM_WINDOW_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Semaphore};

pub use codec::{Codec, Unsupported};
pub use stream::{
    Attachment, Output, Process, StreamEvent, StreamReceiver, TcpStream, MAX_CAPTURE_BYTES,
};

/// Host data put in one `StreamData` message.
pub(crate) const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Agent channel failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentClientError {
    #[error("agent channel failed: {0}")]
    ChannelFailed(String),
    #[error("agent channel closed")]
    Closed,
    #[error("agent request {what} timed out after {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("agent refused {what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: AgentError,
    },
    #[error("agent answered {what} with an unexpected response: {detail}")]
    Unexpected { what: String, detail: String },
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error("stream {stream} ended: {reason:?}")]
    StreamClosed { stream: u64, reason: CloseReason },
}

/// State of the channel as seen by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelHealth {
    Up,
    /// The guest broke the protocol (or I/O failed); the reason says how.
    Failed(String),
    /// The connection ended (QEMU exited or the host closed it).
    Closed,
}

/// How a connection begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStart {
    /// A booting guest: its first frame (`Hello`) tells its version.
    Boot,
    /// A restored copy of a guest that spoke `version`: the first request
    /// must be [`AgentClient::restore`].
    Restored { version: u8 },
    /// A running guest speaking `version`, on a new connection: the first
    /// request must be [`AgentClient::reattach`].
    Reattach { version: u8 },
}

/// Whether callers may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// Quiesced for a snapshot, or a restored copy not yet given `Restore`.
    Closed,
}

/// The host's state of one open stream.
struct Slot {
    /// Where its events go; `None` once its consumer is gone (the stream
    /// is drained: its output dropped and credited back at once, so a
    /// process whose handle was dropped keeps running, as with protocol 1).
    tx: Option<mpsc::Sender<StreamEvent>>,
    /// Output bytes queued or taken but not yet credited back.
    outstanding_bytes: u32,
    /// Messages without data queued and not yet taken (version 2).
    unread_control: Arc<AtomicUsize>,
    /// Bytes the host may still send (version 2).
    send_credit: Arc<Semaphore>,
}

struct Shared {
    writer: Mutex<OwnedWriteHalf>,
    codec: watch::Sender<Option<Codec>>,
    pending: StdMutex<HashMap<u64, oneshot::Sender<Result<Response, AgentError>>>>,
    streams: StdMutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    health: watch::Sender<ChannelHealth>,
    gate: watch::Sender<Gate>,
    hello: watch::Sender<Option<Hello>>,
}

/// A multiplexed connection to one agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
}

impl AgentClient {
    /// Serve a connected socket to the agent (through its supervisor).
    pub fn start(
        stream: std::os::unix::net::UnixStream,
        how: ChannelStart,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = UnixStream::from_std(stream)?;
        let (mut reader, writer) = stream.into_split();
        let (codec, gate_open) = match how {
            ChannelStart::Boot => (None, true),
            ChannelStart::Restored { version } | ChannelStart::Reattach { version } => {
                let codec = Codec::new(version).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "agent protocol {version} is not spoken by this host ({}..={})",
                        hearth_proto::MIN_PROTO_VERSION,
                        hearth_proto::PROTO_VERSION
                    ))
                })?;
                (Some(codec), false)
            }
        };
        // Ids only need to be unique per connection; a random start also keeps
        // them from matching ids a restored guest still holds from its parent.
        let first_id = rand::random::<u32>() as u64 + 1;
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            codec: watch::channel(codec).0,
            pending: StdMutex::new(HashMap::new()),
            streams: StdMutex::new(HashMap::new()),
            next_id: AtomicU64::new(first_id),
            health: watch::channel(ChannelHealth::Up).0,
            gate: watch::channel(if gate_open { Gate::Open } else { Gate::Closed }).0,
            hello: watch::channel(None).0,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut dec = codec.map_or_else(hearth_proto::FrameDecoder::new, |c| c.decoder());
            let mut buf = vec![0u8; 64 * 1024];
            let end = loop {
                let Some(shared) = weak.upgrade() else { return };
                // Copy out: the watch's guard must not be held across send.
                let known = *shared.codec.borrow();
                let codec =
                    match known {
                        Some(c) => Some(c),
                        None => match dec.peek_version() {
                            Some(v) => match Codec::new(v) {
                                Some(c) => {
                                    dec.set_version(v);
                                    shared.codec.send_replace(Some(c));
                                    Some(c)
                                }
                                None => {
                                    break ChannelHealth::Failed(format!(
                                    "the guest speaks agent protocol {v}, which this host does not"
                                ))
                                }
                            },
                            // A whole header that does not even start like a
                            // frame: the guest is not speaking the protocol.
                            None if dec.room() == 0 => break ChannelHealth::Failed(
                                "protocol violation: bad frame magic in the guest's first frame"
                                    .into(),
                            ),
                            None => None,
                        },
                    };
                let msg = match codec.map(|c| c.decode(&mut dec)) {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        break ChannelHealth::Failed(format!("protocol violation: {e}"))
                    }
                    None => None,
                };
                if let Some(m) = msg {
                    let credit = codec.is_some_and(|c| c.has_credit());
                    let mut drained = Vec::new();
                    if let Err(reason) = dispatch(&shared, m, credit, &mut drained).await {
                        break ChannelHealth::Failed(reason);
                    }
                    let client = AgentClient {
                        shared: shared.clone(),
                    };
                    for (stream, bytes) in drained {
                        client.credit_later(stream, bytes);
                    }
                    continue;
                }
                drop(shared);
                let want = dec.room().min(buf.len());
                match reader.read(&mut buf[..want]).await {
                    Ok(0) => break ChannelHealth::Closed,
                    Ok(n) => dec.push(&buf[..n]),
                    Err(e) => break ChannelHealth::Failed(format!("read error: {e}")),
                }
            };
            if let Some(shared) = weak.upgrade() {
                shared.fail_all(end);
            }
        });
        Ok(Self { shared })
    }

    /// The protocol version, once known.
    pub fn version(&self) -> Option<u8> {
        self.shared.codec.borrow().map(|c| c.version())
    }

    /// Current health.
    pub fn health(&self) -> ChannelHealth {
        self.shared.health.borrow().clone()
    }

    /// Wait until the channel is no longer healthy and return why.
    pub async fn wait_unhealthy(&self) -> ChannelHealth {
        let mut rx = self.shared.health.subscribe();
        loop {
            let h = rx.borrow_and_update().clone();
            if h != ChannelHealth::Up {
                return h;
            }
            if rx.changed().await.is_err() {
                return ChannelHealth::Closed;
            }
        }
    }

    /// Wait for the agent's boot greeting.
    pub async fn wait_hello(&self, timeout: Duration) -> Result<Hello, AgentClientError> {
        let mut rx = self.shared.hello.subscribe();
        let mut health = self.shared.health.subscribe();
        let fut = async {
            loop {
                if let Some(h) = rx.borrow_and_update().clone() {
                    return Ok(h);
                }
                match health.borrow_and_update().clone() {
                    ChannelHealth::Up => {}
                    ChannelHealth::Failed(r) => return Err(AgentClientError::ChannelFailed(r)),
                    ChannelHealth::Closed => return Err(AgentClientError::Closed),
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = health.changed() => {}
                }
            }
        };
        with_timeout("hello", timeout, fut).await
    }

    async fn wait_gate_open(&self) -> Result<(), AgentClientError> {
        let mut rx = self.shared.gate.subscribe();
        let mut health = self.shared.health.subscribe();
        loop {
            if *rx.borrow_and_update() == Gate::Open {
                return Ok(());
            }
            self.check_health()?;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(AgentClientError::Closed) },
                _ = health.changed() => {}
            }
        }
    }

    async fn codec(&self) -> Result<Codec, AgentClientError> {
        let mut rx = self.shared.codec.subscribe();
        let mut health = self.shared.health.subscribe();
        loop {
            if let Some(c) = *rx.borrow_and_update() {
                return Ok(c);
            }
            self.check_health()?;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(AgentClientError::Closed) },
                _ = health.changed() => {}
            }
        }
    }

    fn check_health(&self) -> Result<(), AgentClientError> {
        match self.health() {
            ChannelHealth::Up => Ok(()),
            ChannelHealth::Failed(r) => Err(AgentClientError::ChannelFailed(r)),
            ChannelHealth::Closed => Err(AgentClientError::Closed),
        }
    }

    /// Write one message. A `gated` one (everything but the requests that
    /// quiesce, thaw, restore or reattach) waits while the quiesce gate is
    /// closed, and the gate is checked again under the writer lock: the
    /// `Quiesce` frame is written under that lock after the gate closed, so
    /// nothing gated can follow it before the gate opens again.
    async fn send(&self, msg: &HostMessage, gated: bool) -> Result<(), AgentClientError> {
        let codec = self.codec().await?;
        let frame = match codec.encode(msg) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(codec::EncodeError::Unsupported(u)) => return Err(u.into()),
            Err(codec::EncodeError::Frame(e)) => {
                return Err(AgentClientError::Unexpected {
                    what: "encode".into(),
                    detail: e.to_string(),
                })
            }
        };
        let mut w = loop {
            if gated {
                self.wait_gate_open().await?;
            }
            self.check_health()?;
            let w = self.shared.writer.lock().await;
            if !gated || *self.shared.gate.borrow() == Gate::Open {
                break w;
            }
        };
        w.write_all(&frame).await.map_err(|e| {
            let reason = format!("write error: {e}");
            self.shared.fail_all(ChannelHealth::Failed(reason.clone()));
            AgentClientError::ChannelFailed(reason)
        })
    }

    /// Send a request (after the gate, unless `bypass_gate`), optionally
    /// opening a stream with its id, and await its answer.
    async fn request_full(
        &self,
        body: Request,
        timeout: Duration,
        bypass_gate: bool,
        stream: Option<(mpsc::Sender<StreamEvent>, Arc<AtomicUsize>)>,
    ) -> Result<(u64, Response), AgentClientError> {
        let what = request_name(&body);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let opens_stream = stream.is_some();
        let fut = async {
            if !bypass_gate {
                self.wait_gate_open().await?;
            }
            self.codec().await?.supports(&body)?;
            let (tx, rx) = oneshot::channel();
            self.shared.pending.lock().unwrap().insert(id, tx);
            if let Some((tx, unread_control)) = stream {
                self.shared.streams.lock().unwrap().insert(
                    id,
                    Slot {
                        tx: Some(tx),
                        outstanding_bytes: 0,
                        unread_control,
                        send_credit: Arc::new(Semaphore::new(STREAM_WINDOW_BYTES as usize)),
                    },
                );
            }
            // Re-check after registering so a failure in between is not missed.
            if let Err(e) = self.check_health() {
                self.shared.forget(id);
                return Err(e);
            }
            if let Err(e) = self
                .send(&HostMessage::Request { id, body }, !bypass_gate)
                .await
            {
                self.shared.forget(id);
                return Err(e);
            }
            // From here a stream the guest may open is closed again if this
            // request gives up (times out or is cancelled) before its answer:
            // nobody would read it, and an exec's process would run on.
            let abandon = opens_stream.then(|| CloseOnDrop {
                client: self,
                stream: id,
            });
            let answer = rx.await;
            std::mem::forget(abandon); // answered: the stream is the caller's
            match answer {
                Ok(Ok(resp)) => Ok((id, resp)),
                Ok(Err(source)) => {
                    self.shared.forget(id);
                    Err(AgentClientError::Agent {
                        what: what.into(),
                        source,
                    })
                }
                Err(_) => Err(match self.health() {
                    ChannelHealth::Failed(r) => AgentClientError::ChannelFailed(r),
                    _ => AgentClientError::Closed,
                }),
            }
        };
        let r = with_timeout(what, timeout, fut).await;
        if r.is_err() {
            // A failed or timed-out request's stream, if any, is abandoned.
            self.shared.forget(id);
        }
        r
    }

    /// A request that opens no stream.
    pub(crate) async fn request(
        &self,
        body: Request,
        timeout: Duration,
    ) -> Result<Response, AgentClientError> {
        self.request_full(body, timeout, false, None)
            .await
            .map(|(_, r)| r)
    }

    /// A request that opens a stream named by its id.
    async fn open_stream(
        &self,
        body: Request,
        timeout: Duration,
    ) -> Result<(Response, StreamReceiver), AgentClientError> {
        let on_drop = match body {
            Request::Exec(_) => stream::OnDrop::Drain,
            _ => stream::OnDrop::Close,
        };
        let credit = self.codec().await?.has_credit();
        let (tx, rx) = stream::channel(credit);
        let unread = Arc::new(AtomicUsize::new(0));
        let (id, resp) = self
            .request_full(body, timeout, false, Some((tx, unread.clone())))
            .await?;
        Ok((
            resp,
            StreamReceiver::new(id, rx, unread, self.clone(), on_drop),
        ))
    }

    /// Round trip a ping.
    pub async fn ping(&self, timeout: Duration) -> Result<(), AgentClientError> {
        let nonce = rand::random();
        match self.request(Request::Ping { nonce }, timeout).await? {
            Response::Pong { nonce: n } if n == nonce => Ok(()),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Start a process; its events arrive on the returned [`Process`].
    pub async fn exec(
        &self,
        req: ExecRequest,
        timeout: Duration,
    ) -> Result<Process, AgentClientError> {
        match self.open_stream(Request::Exec(req), timeout).await? {
            (Response::Exec { pid }, events) => Ok(Process {
                pid,
                stream: events.stream,
                events,
            }),
            (other, _) => Err(unexpected("exec", &other)),
        }
    }

    /// Run a command to completion and collect its output (capped). A run
    /// that times out kills its process (its stream is closed).
    pub async fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, AgentClientError> {
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let what = format!("run {}", argv.first().unwrap_or(&""));
        with_timeout(&what, timeout, async {
            let mut p = self.exec(req, timeout).await?;
            p.events.close_on_drop();
            p.wait_output().await
        })
        .await
    }

    /// Attach to the output of the named supervised process.
    pub async fn attach(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Attachment, AgentClientError> {
        match self
            .open_stream(Request::Attach { name: name.into() }, timeout)
            .await?
        {
            (Response::Attached { pid }, events) => Ok(Attachment {
                pid,
                stream: events.stream,
                events,
            }),
            (other, _) => Err(unexpected("attach", &other)),
        }
    }

    /// Write a whole file, in chunks (`mode` for a new file; 0644 if unset).
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
        timeout: Duration,
    ) -> Result<(), AgentClientError> {
        let mut offset = 0usize;
        loop {
            let end = (offset + MAX_CHUNK_BYTES).min(data.len());
            let req = WriteFileRequest {
                path: path.into(),
                data: data[offset..end].to_vec(),
                offset: offset as u64,
                truncate: offset == 0,
                mode,
                create_parents: true,
                owner: None,
            };
            match self.request(Request::WriteFile(req), timeout).await? {
                Response::WriteFile { .. } => {}
                other => return Err(unexpected("write_file", &other)),
            }
            offset = end;
            if offset >= data.len() {
                return Ok(());
            }
        }
    }

    /// Read a whole file, up to `max_bytes`.
    pub async fn read_file(
        &self,
        path: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, AgentClientError> {
        let mut out = Vec::new();
        loop {
            let max_len = (max_bytes - out.len()).min(MAX_CHUNK_BYTES) as u32;
            let req = ReadFileRequest {
                path: path.into(),
                offset: out.len() as u64,
                max_len,
            };
            match self.request(Request::ReadFile(req), timeout).await? {
                Response::ReadFile { data, eof } => {
                    let done = eof || data.is_empty() || out.len() + data.len() >= max_bytes;
                    out.extend_from_slice(&data);
                    if done {
                        out.truncate(max_bytes);
                        return Ok(out);
                    }
                }
                other => return Err(unexpected("read_file", &other)),
            }
        }
    }

    /// Open a TCP connection to `127.0.0.1:port` in the guest.
    pub async fn tcp_connect(
        &self,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, AgentClientError> {
        match self
            .open_stream(Request::TcpConnect { port }, timeout)
            .await?
        {
            (Response::TcpConnect, events) => Ok(TcpStream {
                stream: events.stream,
                events,
            }),
            (other, _) => Err(unexpected("tcp_connect", &other)),
        }
    }

    /// Quiesce for a snapshot: after this returns, nothing is in flight in
    /// either direction and no caller can write until `thaw` or drop.
    pub async fn quiesce(
        &self,
        drop_caches: bool,
        timeout: Duration,
    ) -> Result<(), AgentClientError> {
        self.wait_gate_open().await?;
        self.shared.gate.send_replace(Gate::Closed);
        match self
            .request_full(Request::Quiesce { drop_caches }, timeout, true, None)
            .await
        {
            Ok((_, Response::Quiesced)) => Ok(()),
            Ok((_, other)) => {
                self.shared.gate.send_replace(Gate::Open);
                Err(unexpected("quiesce", &other))
            }
            Err(e) => {
                self.shared.gate.send_replace(Gate::Open);
                Err(e)
            }
        }
    }

    /// Undo a `quiesce` on the same (unrestored) guest.
    pub async fn thaw(&self, timeout: Duration) -> Result<(), AgentClientError> {
        let r = self.request_full(Request::Thaw, timeout, true, None).await;
        // Open whatever the answer: anything written from now on follows
        // the Thaw, so a slow agent still thaws before it reads it (and
        // thawing twice is harmless).
        self.shared.gate.send_replace(Gate::Open);
        match r? {
            (_, Response::Thawed) => Ok(()),
            (_, other) => Err(unexpected("thaw", &other)),
        }
    }

    /// First request to a restored copy: clock, entropy, identity. The
    /// agent ends every stream of the snapshot's connection and says so.
    pub async fn restore(
        &self,
        req: RestoreRequest,
        timeout: Duration,
    ) -> Result<AgentInfo, AgentClientError> {
        match self
            .request_full(Request::Restore(req), timeout, true, None)
            .await?
        {
            (_, Response::Restored(info)) => {
                self.shared.gate.send_replace(Gate::Open);
                Ok(info)
            }
            (_, other) => Err(unexpected("restore", &other)),
        }
    }

    /// First request on a new connection to a running guest (the host
    /// process restarted): `Reattach` releases a quiesce the old host may
    /// have left behind and ends the old connection's streams. A version-1
    /// guest has no such request: it gets a `Thaw` (harmless when nothing
    /// is paused), and its old streams are simply no longer read.
    pub async fn reattach(&self, timeout: Duration) -> Result<AgentInfo, AgentClientError> {
        let codec = self.codec().await?;
        if codec.supports(&Request::Reattach).is_err() {
            self.thaw(timeout).await?;
            return Ok(codec::v1_agent_info());
        }
        match self
            .request_full(Request::Reattach, timeout, true, None)
            .await?
        {
            (_, Response::Reattached(info)) => {
                self.shared.gate.send_replace(Gate::Open);
                Ok(info)
            }
            (_, other) => Err(unexpected("reattach", &other)),
        }
    }

    /// Ask the agent to stop every process and power the microVM off.
    pub async fn power_off(&self, timeout: Duration) -> Result<(), AgentClientError> {
        match self.request(Request::PowerOff, timeout).await? {
            Response::PoweringOff => Ok(()),
            other => Err(unexpected("power_off", &other)),
        }
    }

    /// End every open stream on the host side (the microVM is going away:
    /// suspended, snapshotted or stopped); their consumers see `reason`.
    pub fn close_streams(&self, reason: &str) {
        let slots: Vec<Slot> = self
            .shared
            .streams
            .lock()
            .unwrap()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in slots {
            s.send_credit.close();
            if let Some(tx) = s.tx {
                let _ = tx.try_send(StreamEvent::Closed {
                    reason: CloseReason::Error(reason.to_string()),
                });
            }
        }
    }

    /// Bytes for a stream, in chunks, each after the guest's credit.
    pub(crate) async fn stream_write(
        &self,
        stream: u64,
        data: &[u8],
    ) -> Result<(), AgentClientError> {
        let credit = self.codec().await?.has_credit();
        for chunk in data.chunks(WRITE_CHUNK_BYTES) {
            if credit {
                let sem = self
                    .shared
                    .streams
                    .lock()
                    .unwrap()
                    .get(&stream)
                    .map(|s| s.send_credit.clone())
                    .ok_or(AgentClientError::StreamClosed {
                        stream,
                        reason: CloseReason::Done,
                    })?;
                let mut health = self.shared.health.subscribe();
                let permit = tokio::select! {
                    p = sem.acquire_many(chunk.len() as u32) => p.map_err(|_| AgentClientError::StreamClosed {
                        stream,
                        reason: CloseReason::Done,
                    })?,
                    _ = health.wait_for(|h| *h != ChannelHealth::Up) => {
                        self.check_health()?;
                        return Err(AgentClientError::Closed);
                    }
                };
                permit.forget();
            }
            self.send(
                &HostMessage::StreamData {
                    stream,
                    data: chunk.to_vec(),
                },
                true,
            )
            .await?;
        }
        Ok(())
    }

    /// Half-close a stream from the host side.
    pub(crate) async fn stream_eof(&self, stream: u64) -> Result<(), AgentClientError> {
        self.send(&HostMessage::StreamEof { stream }, true).await
    }

    /// The consumer took `bytes` of output: let the guest send that much
    /// more. Never waits (the credit goes out from a task of its own, after
    /// the gate), so a receive that returns credit stays cancel-safe.
    pub(crate) fn credit_taken(&self, stream: u64, bytes: u32) {
        {
            let mut streams = self.shared.streams.lock().unwrap();
            match streams.get_mut(&stream) {
                Some(s) => s.outstanding_bytes = s.outstanding_bytes.saturating_sub(bytes),
                None => return,
            }
        }
        self.credit_later(stream, bytes);
    }

    /// The consumer is gone: drain the stream from now on.
    pub(crate) fn forget_stream(&self, stream: u64) {
        let credit = self.version().is_some_and(|v| v >= 2);
        let mut streams = self.shared.streams.lock().unwrap();
        if !credit {
            streams.remove(&stream);
            return;
        }
        let owed = streams.get_mut(&stream).map(|s| {
            s.tx = None;
            std::mem::take(&mut s.outstanding_bytes)
        });
        drop(streams);
        if let Some(bytes) = owed.filter(|b| *b > 0) {
            self.credit_later(stream, bytes);
        }
    }

    /// Return credit from a task of its own (the reader never waits).
    fn credit_later(&self, stream: u64, bytes: u32) {
        let client = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client
                    .send(&HostMessage::StreamCredit { stream, bytes }, true)
                    .await;
            });
        }
    }

    /// The stream is not wanted any more: forget it now and tell the guest
    /// to close it (from a task of its own, after the quiesce gate). The
    /// guest says nothing more about a stream the host closed, so keeping
    /// its slot until the guest ends it would keep it forever.
    pub(crate) fn close_stream(&self, stream: u64) {
        let Some(slot) = self.shared.streams.lock().unwrap().remove(&stream) else {
            return; // it ended already
        };
        slot.send_credit.close();
        let client = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client
                    .send(&HostMessage::StreamClose { stream }, true)
                    .await;
            });
        }
    }
}

/// Closes the stream a request opens if the request is dropped before its
/// answer (see [`AgentClient::close_stream`]); forgotten once answered.
struct CloseOnDrop<'a> {
    client: &'a AgentClient,
    stream: u64,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.client.close_stream(self.stream);
    }
}

impl Shared {
    fn forget(&self, id: u64) {
        self.pending.lock().unwrap().remove(&id);
        self.streams.lock().unwrap().remove(&id);
    }

    fn fail_all(&self, health: ChannelHealth) {
        self.health.send_if_modified(|h| {
            if *h == ChannelHealth::Up {
                *h = health.clone();
                true
            } else {
                false
            }
        });
        self.pending.lock().unwrap().clear();
        let reason = match &health {
            ChannelHealth::Failed(r) => format!("agent channel failed: {r}"),
            _ => "agent channel closed".to_string(),
        };
        for (_, s) in self.streams.lock().unwrap().drain() {
            s.send_credit.close();
            if let Some(tx) = s.tx {
                let _ = tx.try_send(StreamEvent::Closed {
                    reason: CloseReason::Error(reason.clone()),
                });
            }
        }
    }
}

async fn with_timeout<T>(
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, AgentClientError>>,
) -> Result<T, AgentClientError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| AgentClientError::Timeout {
            what: what.into(),
            timeout_ms: timeout.as_millis() as u64,
        })?
}

/// Route one guest message. An `Err` means the guest broke the protocol.
/// With credit (version 2) this never waits.
async fn dispatch(
    shared: &Shared,
    msg: GuestMessage,
    credit: bool,
    drained: &mut Vec<(u64, u32)>,
) -> Result<(), String> {
    let (stream, ev, terminal) = match msg {
        GuestMessage::Hello(h) => {
            if shared.hello.borrow().is_some() {
                return Err("second Hello on one connection".into());
            }
            shared.hello.send_replace(Some(h));
            return Ok(());
        }
        GuestMessage::Response { id, body } => {
            if let Some(tx) = shared.pending.lock().unwrap().remove(&id) {
                let _ = tx.send(body);
            }
            return Ok(());
        }
        GuestMessage::StreamCredit { stream, bytes } => {
            if let Some(s) = shared.streams.lock().unwrap().get(&stream) {
                // Never more than a window, whatever the guest claims.
                let room = STREAM_WINDOW_BYTES as usize - s.send_credit.available_permits();
                s.send_credit.add_permits((bytes as usize).min(room));
            }
            return Ok(());
        }
        GuestMessage::Output { stream, fd, data } => {
            if data.len() > MAX_CHUNK_BYTES {
                return Err("output chunk over the size limit".into());
            }
            // An empty chunk costs no credit: refused, so that a stream's
            // queued data messages are bounded by its window.
            if credit && data.is_empty() {
                return Err("empty output chunk".into());
            }
            (stream, StreamEvent::Output { fd, data }, false)
        }
        GuestMessage::Started { stream, pid } => (stream, StreamEvent::Started { pid }, false),
        GuestMessage::Exited {
            stream,
            status,
            restarting,
        } => (
            stream,
            StreamEvent::Exited { status, restarting },
            !restarting,
        ),
        GuestMessage::StreamData { stream, data } => {
            if data.len() > MAX_CHUNK_BYTES {
                return Err("stream chunk over the size limit".into());
            }
            if credit && data.is_empty() {
                return Err("empty stream chunk".into());
            }
            (stream, StreamEvent::Data(data), false)
        }
        GuestMessage::StreamEof { stream } => (stream, StreamEvent::Eof, false),
        GuestMessage::StreamClosed { stream, reason } => {
            (stream, StreamEvent::Closed { reason }, true)
        }
    };
    let len = match &ev {
        StreamEvent::Output { data, .. } | StreamEvent::Data(data) => data.len() as u32,
        _ => 0,
    };
    let tx = {
        let mut streams = shared.streams.lock().unwrap();
        let Some(slot) = streams.get_mut(&stream) else {
            return Ok(());
        };
        if credit {
            let total = slot.outstanding_bytes.saturating_add(len);
            if total > STREAM_WINDOW_BYTES {
                return Err(format!(
                    "stream {stream} exceeded its {STREAM_WINDOW_BYTES}-byte flow-control window"
                ));
            }
            slot.outstanding_bytes = total;
        }
        let tx = slot.tx.clone();
        if credit && len == 0 && tx.is_some() {
            // Messages without data cost no credit: their number is
            // bounded instead (the receiver counts them back down).
            let unread = slot.unread_control.fetch_add(1, Ordering::SeqCst);
            if unread >= stream::MAX_QUEUED_CONTROL_EVENTS {
                return Err(format!(
                    "stream {stream} has more than {} unread messages without data",
                    stream::MAX_QUEUED_CONTROL_EVENTS
                ));
            }
        }
        if terminal {
            if let Some(s) = streams.remove(&stream) {
                s.send_credit.close();
            }
        }
        tx
    };
    let Some(tx) = tx else {
        // Nobody reads this stream any more: drop its output, and give the
        // credit back so the guest's process is never held up by it.
        if credit && len > 0 && !terminal {
            let mut streams = shared.streams.lock().unwrap();
            if let Some(slot) = streams.get_mut(&stream) {
                slot.outstanding_bytes = slot.outstanding_bytes.saturating_sub(len);
                drained.push((stream, len));
                return Ok(());
            }
        }
        return Ok(());
    };
    if credit {
        match tx.try_send(ev) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            // Cannot happen: the queue holds a window of data messages
            // (each holds a byte or more) plus the bounded others.
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(format!("stream {stream} has too many unread messages"))
            }
        }
    } else {
        // Protocol 1: back-pressure; a slow consumer slows the guest.
        let _ = tx.send(ev).await;
        Ok(())
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Ping { .. } => "ping",
        Request::Exec(_) => "exec",
        Request::WriteFile(_) => "write_file",
        Request::ReadFile(_) => "read_file",
        Request::TcpConnect { .. } => "tcp_connect",
        Request::Signal { .. } => "signal",
        Request::Resize { .. } => "resize",
        Request::Quiesce { .. } => "quiesce",
        Request::Thaw => "thaw",
        Request::Restore(_) => "restore",
        Request::Reattach => "reattach",
        Request::Attach { .. } => "attach",
        Request::PowerOff => "power_off",
    }
}

#[cfg(test)]
mod tests;

fn unexpected(what: &str, r: &Response) -> AgentClientError {
    AgentClientError::Unexpected {
        what: what.into(),
        detail: format!("{r:?}"),
    }
}
