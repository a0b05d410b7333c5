//! Host side of the agent channel.
//!
//! Owns one connection to a guest's `hearth-agent` (the host end of the
//! virtio-serial socket pair handed to QEMU) and multiplexes requests and
//! streams over it. A reader task (spawned on the Tokio runtime, one per
//! connection) decodes frames and routes them; callers write through a mutex.
//!
//! The guest is hostile. The reader enforces the frame bounds of
//! `hearth-proto` before buffering anything; the first violation marks the
//! channel [`ChannelHealth::Failed`], fails every pending request, and stops
//! reading — the microVM is then reported failed by its owner. Messages for
//! unknown requests or streams are dropped. Buffered process output is capped
//! ([`MAX_CAPTURE_BYTES`]).
//!
//! Snapshots: [`AgentClient::quiesce`] closes a gate so no caller can write
//! after the `Quiesce` request; the gate opens again on `thaw`, and a channel
//! to a restored copy starts closed until [`AgentClient::restore`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use hearth_proto::{
    encode_frame, AgentError, ExecRequest, ExitStatus, FrameDecoder, GuestMessage, Hello,
    HostMessage, OutputFd, ReadFileRequest, Request, Response, RestoreRequest, WriteFileRequest,
    MAX_CHUNK_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

/// Most output [`AgentClient::run`] keeps per stream before it truncates.
pub const MAX_CAPTURE_BYTES: usize = 16 * 1024 * 1024;
/// Events buffered per stream before the reader waits for the consumer.
const STREAM_QUEUE_DEPTH: usize = 64;

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

/// Whether callers may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// Quiesced for a snapshot, or a restored copy not yet given `Restore`.
    Closed,
}

/// An event on an exec or TCP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Output {
        fd: OutputFd,
        data: Vec<u8>,
    },
    Started {
        pid: u32,
    },
    Exited {
        status: ExitStatus,
        restarting: bool,
    },
    Data(Vec<u8>),
    Eof,
    Closed {
        reason: Option<String>,
    },
}

struct Shared {
    writer: Mutex<OwnedWriteHalf>,
    pending: StdMutex<HashMap<u64, oneshot::Sender<Result<Response, AgentError>>>>,
    streams: StdMutex<HashMap<u64, mpsc::Sender<StreamEvent>>>,
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

/// A process started with [`AgentClient::exec`].
pub struct Process {
    pub pid: u32,
    pub stream: u64,
    pub events: mpsc::Receiver<StreamEvent>,
    client: AgentClient,
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

/// A TCP connection to a guest port.
pub struct TcpStream {
    pub stream: u64,
    pub events: mpsc::Receiver<StreamEvent>,
    client: AgentClient,
}

impl AgentClient {
    /// Start serving the host end of the agent socket pair. `gate_open` is
    /// false for a restored copy, whose first request must be `restore`.
    pub fn start(fd: OwnedFd, gate_open: bool) -> std::io::Result<Self> {
        let std_stream = std::os::unix::net::UnixStream::from(fd);
        std_stream.set_nonblocking(true)?;
        let stream = UnixStream::from_std(std_stream)?;
        let (mut reader, writer) = stream.into_split();
        // Ids only need to be unique per connection; a random start also keeps
        // them from matching ids a restored guest still holds from its parent.
        let first_id = rand::random::<u32>() as u64 + 1;
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            pending: StdMutex::new(HashMap::new()),
            streams: StdMutex::new(HashMap::new()),
            next_id: AtomicU64::new(first_id),
            health: watch::channel(ChannelHealth::Up).0,
            gate: watch::channel(if gate_open { Gate::Open } else { Gate::Closed }).0,
            hello: watch::channel(None).0,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut dec = FrameDecoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            let end = loop {
                // Decode everything buffered first.
                let msg = match dec.decode_next::<GuestMessage>() {
                    Ok(Some(m)) => Some(m),
                    Ok(None) => None,
                    Err(e) => break ChannelHealth::Failed(format!("protocol violation: {e}")),
                };
                let Some(shared) = weak.upgrade() else { return };
                if let Some(m) = msg {
                    if let Err(reason) = dispatch(&shared, m).await {
                        break ChannelHealth::Failed(reason);
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
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| AgentClientError::Timeout {
                what: "hello".into(),
                timeout_ms: timeout.as_millis() as u64,
            })?
    }

    async fn wait_gate_open(&self) -> Result<(), AgentClientError> {
        let mut rx = self.shared.gate.subscribe();
        loop {
            if *rx.borrow_and_update() == Gate::Open {
                return Ok(());
            }
            self.check_health()?;
            let mut health = self.shared.health.subscribe();
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

    async fn send(&self, msg: &HostMessage) -> Result<(), AgentClientError> {
        let frame = encode_frame(msg).map_err(|e| AgentClientError::Unexpected {
            what: "encode".into(),
            detail: e.to_string(),
        })?;
        self.check_health()?;
        let mut w = self.shared.writer.lock().await;
        w.write_all(&frame).await.map_err(|e| {
            let reason = format!("write error: {e}");
            self.shared.fail_all(ChannelHealth::Failed(reason.clone()));
            AgentClientError::ChannelFailed(reason)
        })
    }

    /// Send a request (after the gate, unless `bypass_gate`) and await its answer.
    async fn request_inner(
        &self,
        body: Request,
        timeout: Duration,
        bypass_gate: bool,
        stream: Option<mpsc::Sender<StreamEvent>>,
    ) -> Result<(u64, Response), AgentClientError> {
        let what = request_name(&body);
        let fut = async {
            if !bypass_gate {
                self.wait_gate_open().await?;
            }
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.shared.pending.lock().unwrap().insert(id, tx);
            if let Some(s) = stream {
                self.shared.streams.lock().unwrap().insert(id, s);
            }
            // Re-check after registering so a failure in between is not missed.
            if let Err(e) = self.check_health() {
                self.shared.forget(id);
                return Err(e);
            }
            if let Err(e) = self.send(&HostMessage::Request { id, body }).await {
                self.shared.forget(id);
                return Err(e);
            }
            match rx.await {
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
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| AgentClientError::Timeout {
                what: what.into(),
                timeout_ms: timeout.as_millis() as u64,
            })?
    }

    /// Round trip a ping.
    pub async fn ping(&self, timeout: Duration) -> Result<(), AgentClientError> {
        let nonce = rand::random();
        match self
            .request_inner(Request::Ping { nonce }, timeout, false, None)
            .await?
        {
            (_, Response::Pong { nonce: n }) if n == nonce => Ok(()),
            (_, other) => Err(unexpected("ping", &other)),
        }
    }

    /// Start a process; its events arrive on the returned [`Process`].
    pub async fn exec(
        &self,
        req: ExecRequest,
        timeout: Duration,
    ) -> Result<Process, AgentClientError> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_DEPTH);
        match self
            .request_inner(Request::Exec(req), timeout, false, Some(tx))
            .await?
        {
            (id, Response::Exec { pid }) => Ok(Process {
                pid,
                stream: id,
                events: rx,
                client: self.clone(),
            }),
            (id, other) => {
                self.shared.forget(id);
                Err(unexpected("exec", &other))
            }
        }
    }

    /// Run a command to completion and collect its output (capped).
    pub async fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, AgentClientError> {
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let fut = async {
            let mut p = self.exec(req, timeout).await?;
            p.wait_output().await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| AgentClientError::Timeout {
                what: format!("run {}", argv.first().unwrap_or(&"")),
                timeout_ms: timeout.as_millis() as u64,
            })?
    }

    /// Write a whole file, in chunks.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
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
            match self
                .request_inner(Request::WriteFile(req), timeout, false, None)
                .await?
            {
                (_, Response::WriteFile { .. }) => {}
                (_, other) => return Err(unexpected("write_file", &other)),
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
            match self
                .request_inner(Request::ReadFile(req), timeout, false, None)
                .await?
            {
                (_, Response::ReadFile { data, eof }) => {
                    let done = eof || data.is_empty() || out.len() + data.len() >= max_bytes;
                    out.extend_from_slice(&data);
                    if done {
                        out.truncate(max_bytes);
                        return Ok(out);
                    }
                }
                (_, other) => return Err(unexpected("read_file", &other)),
            }
        }
    }

    /// Open a TCP connection to `127.0.0.1:port` in the guest.
    pub async fn tcp_connect(
        &self,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, AgentClientError> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_DEPTH);
        match self
            .request_inner(Request::TcpConnect { port }, timeout, false, Some(tx))
            .await?
        {
            (id, Response::TcpConnect) => Ok(TcpStream {
                stream: id,
                events: rx,
                client: self.clone(),
            }),
            (id, other) => {
                self.shared.forget(id);
                Err(unexpected("tcp_connect", &other))
            }
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
            .request_inner(Request::Quiesce { drop_caches }, timeout, true, None)
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
        match self
            .request_inner(Request::Thaw, timeout, true, None)
            .await?
        {
            (_, Response::Thawed) => {
                self.shared.gate.send_replace(Gate::Open);
                Ok(())
            }
            (_, other) => Err(unexpected("thaw", &other)),
        }
    }

    /// First request to a restored copy: clock, entropy, identity.
    pub async fn restore(
        &self,
        req: RestoreRequest,
        timeout: Duration,
    ) -> Result<(), AgentClientError> {
        match self
            .request_inner(Request::Restore(req), timeout, true, None)
            .await?
        {
            (_, Response::Restored) => {
                self.shared.gate.send_replace(Gate::Open);
                Ok(())
            }
            (_, other) => Err(unexpected("restore", &other)),
        }
    }

    async fn stream_send(&self, msg: HostMessage) -> Result<(), AgentClientError> {
        self.wait_gate_open().await?;
        self.send(&msg).await
    }

    /// Bytes for a stream, in protocol-sized chunks.
    async fn stream_data(&self, stream: u64, data: &[u8]) -> Result<(), AgentClientError> {
        for chunk in data.chunks(MAX_CHUNK_BYTES) {
            self.stream_send(HostMessage::StreamData {
                stream,
                data: chunk.to_vec(),
            })
            .await?;
        }
        Ok(())
    }

    /// Half-close a stream from the host side.
    async fn stream_eof(&self, stream: u64) -> Result<(), AgentClientError> {
        self.stream_send(HostMessage::StreamEof { stream }).await
    }
}

impl Process {
    /// Send bytes to the process's stdin (requires `stdin: true`).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), AgentClientError> {
        self.client.stream_data(self.stream, data).await
    }

    /// Close the process's stdin.
    pub async fn close_stdin(&self) -> Result<(), AgentClientError> {
        self.client.stream_eof(self.stream).await
    }

    /// Send a signal to the process group.
    pub async fn signal(&self, signal: i32, timeout: Duration) -> Result<(), AgentClientError> {
        match self
            .client
            .request_inner(
                Request::Signal {
                    stream: self.stream,
                    signal,
                },
                timeout,
                false,
                None,
            )
            .await?
        {
            (_, Response::Signal) => Ok(()),
            (_, other) => Err(unexpected("signal", &other)),
        }
    }

    /// Collect output until the (final) exit.
    pub async fn wait_output(&mut self) -> Result<Output, AgentClientError> {
        let mut out = Output {
            status: ExitStatus {
                code: None,
                signal: None,
            },
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
        };
        while let Some(ev) = self.events.recv().await {
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
                    self.client.shared.forget(self.stream);
                    return Ok(out);
                }
                _ => {}
            }
        }
        self.client.check_health()?;
        Err(AgentClientError::Closed)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.client
            .shared
            .streams
            .lock()
            .unwrap()
            .remove(&self.stream);
    }
}

impl TcpStream {
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentClientError> {
        self.client.stream_data(self.stream, data).await
    }

    pub async fn shutdown_write(&self) -> Result<(), AgentClientError> {
        self.client.stream_eof(self.stream).await
    }

    /// Read everything until the guest closes its side.
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
        self.client.check_health()?;
        Ok(out)
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let removed = self
            .client
            .shared
            .streams
            .lock()
            .unwrap()
            .remove(&self.stream);
        if removed.is_some() {
            let client = self.client.clone();
            let stream = self.stream;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.send(&HostMessage::StreamClose { stream }).await;
                });
            }
        }
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
                *h = health;
                true
            } else {
                false
            }
        });
        self.pending.lock().unwrap().clear();
        self.streams.lock().unwrap().clear();
    }
}

/// Route one guest message. An `Err` means the guest broke the protocol.
async fn dispatch(shared: &Shared, msg: GuestMessage) -> Result<(), String> {
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
        GuestMessage::Output { stream, fd, data } => {
            if data.len() > MAX_CHUNK_BYTES {
                return Err("output chunk over the size limit".into());
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
            (stream, StreamEvent::Data(data), false)
        }
        GuestMessage::StreamEof { stream } => (stream, StreamEvent::Eof, false),
        GuestMessage::StreamClosed { stream, reason } => {
            (stream, StreamEvent::Closed { reason }, true)
        }
    };
    let tx = shared.streams.lock().unwrap().get(&stream).cloned();
    if let Some(tx) = tx {
        // Back-pressure: a slow consumer slows the guest, never grows memory.
        if tx.send(ev).await.is_err() || terminal {
            shared.streams.lock().unwrap().remove(&stream);
        }
    }
    Ok(())
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Ping { .. } => "ping",
        Request::Exec(_) => "exec",
        Request::WriteFile(_) => "write_file",
        Request::ReadFile(_) => "read_file",
        Request::TcpConnect { .. } => "tcp_connect",
        Request::Signal { .. } => "signal",
        Request::Quiesce { .. } => "quiesce",
        Request::Thaw => "thaw",
        Request::Restore(_) => "restore",
    }
}

fn unexpected(what: &str, r: &Response) -> AgentClientError {
    AgentClientError::Unexpected {
        what: what.into(),
        detail: format!("{r:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::HEADER_LEN;

    /// A scripted guest end: reads host frames and answers.
    struct FakeGuest {
        stream: UnixStream,
        dec: FrameDecoder,
    }

    impl FakeGuest {
        fn new(fd: OwnedFd) -> Self {
            let s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(true).unwrap();
            Self {
                stream: UnixStream::from_std(s).unwrap(),
                dec: FrameDecoder::new(),
            }
        }
        async fn recv(&mut self) -> HostMessage {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(m) = self.dec.decode_next().unwrap() {
                    return m;
                }
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "host closed");
                self.dec.push(&buf[..n]);
            }
        }
        async fn send(&mut self, m: &GuestMessage) {
            self.stream
                .write_all(&encode_frame(m).unwrap())
                .await
                .unwrap();
        }
    }

    fn pair() -> (AgentClient, FakeGuest) {
        let (a, b) = crate::process::socketpair().unwrap();
        (AgentClient::start(a, true).unwrap(), FakeGuest::new(b))
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn exec_collects_output_in_order() {
        let (client, mut guest) = pair();
        let g = tokio::spawn(async move {
            let HostMessage::Request {
                id,
                body: Request::Exec(req),
            } = guest.recv().await
            else {
                panic!()
            };
            assert_eq!(req.argv, vec!["echo", "hi"]);
            guest
                .send(&GuestMessage::Response {
                    id,
                    body: Ok(Response::Exec { pid: 7 }),
                })
                .await;
            guest
                .send(&GuestMessage::Output {
                    stream: id,
                    fd: OutputFd::Stdout,
                    data: b"h".to_vec(),
                })
                .await;
            guest
                .send(&GuestMessage::Output {
                    stream: id,
                    fd: OutputFd::Stdout,
                    data: b"i\n".to_vec(),
                })
                .await;
            guest
                .send(&GuestMessage::Exited {
                    stream: id,
                    status: ExitStatus {
                        code: Some(0),
                        signal: None,
                    },
                    restarting: false,
                })
                .await;
            guest
        });
        let out = client.run(&["echo", "hi"], T).await.unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert!(out.status.success());
        g.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_fails_the_channel_and_pending_requests() {
        let (client, mut guest) = pair();
        let c2 = client.clone();
        let pending = tokio::spawn(async move { c2.ping(T).await });
        let _ = guest.recv().await;
        guest
            .stream
            .write_all(b"\x00garbage that is not a frame")
            .await
            .unwrap();
        let err = pending.await.unwrap().unwrap_err();
        assert!(matches!(err, AgentClientError::ChannelFailed(_)), "{err}");
        assert!(matches!(client.health(), ChannelHealth::Failed(r) if r.contains("magic")));
        // Later calls fail fast instead of hanging.
        let err = client.ping(T).await.unwrap_err();
        assert!(matches!(err, AgentClientError::ChannelFailed(_)));
    }

    #[tokio::test]
    async fn oversized_frame_header_fails_without_buffering() {
        let (client, mut guest) = pair();
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&hearth_proto::MAGIC);
        header[2] = hearth_proto::PROTO_VERSION;
        header[4..8].copy_from_slice(&(512u32 << 20).to_le_bytes());
        guest.stream.write_all(&header).await.unwrap();
        let h = client.wait_unhealthy().await;
        assert!(
            matches!(h, ChannelHealth::Failed(ref r) if r.contains("exceeds")),
            "{h:?}"
        );
    }

    #[tokio::test]
    async fn quiesce_blocks_writers_until_thaw() {
        let (client, mut guest) = pair();
        let c = client.clone();
        let q = tokio::spawn(async move { c.quiesce(false, T).await });
        let HostMessage::Request {
            id,
            body: Request::Quiesce { .. },
        } = guest.recv().await
        else {
            panic!()
        };
        guest
            .send(&GuestMessage::Response {
                id,
                body: Ok(Response::Quiesced),
            })
            .await;
        q.await.unwrap().unwrap();
        // A ping issued now must not reach the guest before the thaw.
        let c = client.clone();
        let ping = tokio::spawn(async move { c.ping(T).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = client.clone();
        let thaw = tokio::spawn(async move { c.thaw(T).await });
        let HostMessage::Request {
            id,
            body: Request::Thaw,
        } = guest.recv().await
        else {
            panic!("the first message after quiesce must be the thaw")
        };
        guest
            .send(&GuestMessage::Response {
                id,
                body: Ok(Response::Thawed),
            })
            .await;
        thaw.await.unwrap().unwrap();
        let HostMessage::Request {
            id,
            body: Request::Ping { nonce },
        } = guest.recv().await
        else {
            panic!()
        };
        guest
            .send(&GuestMessage::Response {
                id,
                body: Ok(Response::Pong { nonce }),
            })
            .await;
        ping.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn messages_for_unknown_streams_are_dropped() {
        let (client, mut guest) = pair();
        guest
            .send(&GuestMessage::Output {
                stream: 999,
                fd: OutputFd::Stdout,
                data: vec![1; 10],
            })
            .await;
        guest
            .send(&GuestMessage::Response {
                id: 12345,
                body: Ok(Response::Thawed),
            })
            .await;
        let c = client.clone();
        let ping = tokio::spawn(async move { c.ping(T).await });
        let HostMessage::Request {
            id,
            body: Request::Ping { nonce },
        } = guest.recv().await
        else {
            panic!()
        };
        guest
            .send(&GuestMessage::Response {
                id,
                body: Ok(Response::Pong { nonce }),
            })
            .await;
        ping.await.unwrap().unwrap();
        assert_eq!(client.health(), ChannelHealth::Up);
    }
}
