//! Protocol version 2: the current message set (re-exported at the crate
//! root).
//!
//! What it adds to [`crate::v1`]:
//!
//! * per-stream credit windows in both directions ([`STREAM_WINDOW_BYTES`],
//!   `StreamCredit`), so a stalled consumer stops only its own stream;
//! * stream ends with a reason ([`CloseReason`]); at `Restore` and
//!   `Reattach` the agent ends every stream of the previous host connection
//!   and lists them ([`AgentInfo::closed_streams`]);
//! * named supervised processes ([`ExecRequest::name`]) whose output can be
//!   attached again ([`Request::Attach`]) after a restore or host restart;
//! * PTY exec ([`ExecRequest::pty`]) and [`Request::Resize`];
//! * [`Request::PowerOff`];
//! * `WriteFile` without a mode creates files with [`DEFAULT_FILE_MODE`];
//! * the agent's version and capabilities in `Hello` and in the answers to
//!   `Restore` and `Reattach`.

use serde::{Deserialize, Serialize};

/// Protocol version of these types.
pub const VERSION: u8 = 2;

/// Flow-control window of every stream, in each direction: the payload
/// bytes a sender may have outstanding before the receiver returns credit.
pub const STREAM_WINDOW_BYTES: u32 = 256 * 1024;

/// Output of a detached named process the agent keeps for the next
/// `Attach` (the most recent bytes).
pub const DETACHED_OUTPUT_BYTES: usize = 64 * 1024;

/// Mode of a file `WriteFile` creates when the request names none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Capability names an agent announces (all of them, for this version).
pub const CAP_CREDIT_WINDOWS: &str = "credit-windows";
pub const CAP_PTY: &str = "pty";
pub const CAP_ATTACH: &str = "attach";
pub const CAP_REATTACH: &str = "reattach";
pub const CAP_POWER_OFF: &str = "power-off";
pub const CAPABILITIES: &[&str] = &[
    CAP_CREDIT_WINDOWS,
    CAP_PTY,
    CAP_ATTACH,
    CAP_REATTACH,
    CAP_POWER_OFF,
];

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    /// A request; answered by exactly one [`GuestMessage::Response`] with the same id.
    Request { id: u64, body: Request },
    /// Bytes for a stream (stdin of an `Exec`, input of a PTY, payload of a
    /// `TcpConnect`); counts against the stream's window.
    StreamData { stream: u64, data: Vec<u8> },
    /// The host will send nothing more on this stream (half close).
    StreamEof { stream: u64 },
    /// The host abandons this stream; the agent closes its end and sends
    /// nothing more for it.
    StreamClose { stream: u64 },
    /// The host's consumer took `bytes` of the stream's output: the agent may
    /// send that much more.
    StreamCredit { stream: u64, bytes: u32 },
}

/// Requests the host can make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check.
    Ping { nonce: u64 },
    /// Start a process; its output and exit arrive on stream `id`.
    Exec(ExecRequest),
    /// Write (a chunk of) a file.
    WriteFile(WriteFileRequest),
    /// Read (a chunk of) a file.
    ReadFile(ReadFileRequest),
    /// Open a TCP connection to `127.0.0.1:port` inside the guest; bytes flow on stream `id`.
    TcpConnect { port: u16 },
    /// Send a signal to the process of an `Exec` or `Attach` stream.
    Signal { stream: u64, signal: i32 },
    /// Set the terminal size of a PTY `Exec` stream.
    Resize { stream: u64, size: PtySize },
    /// Prepare for a snapshot: sync filesystems, optionally drop caches, then stop writing.
    Quiesce { drop_caches: bool },
    /// Resume writing after a `Quiesce` on the same, unrestored VM.
    Thaw,
    /// First message to a restored copy: clock, entropy, identity; every
    /// stream of the snapshot's connection ends; then resume writing.
    Restore(RestoreRequest),
    /// First message of a new host connection to a running agent (the host
    /// process restarted): every stream of the old connection ends.
    Reattach,
    /// Open stream `id` on the output of the named supervised process:
    /// what it wrote while detached (bounded), then what it writes next.
    Attach { name: String },
    /// Stop every process, sync and power the microVM off.
    PowerOff,
}

/// How the agent treats a process that exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RestartPolicy {
    /// Report the exit and forget the process.
    #[default]
    Never,
    /// Restart after a non-zero exit or a signal (with back-off).
    OnFailure,
    /// Restart after every exit (with back-off).
    Always,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// Run a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment; replaces the agent's own when `clear_env` is set.
    pub env: Vec<(String, String)>,
    pub clear_env: bool,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// User name or numeric uid (default root).
    pub user: Option<String>,
    /// Keep stdin open for `StreamData`; otherwise stdin is `/dev/null`.
    /// (A PTY process always has its terminal as stdin.)
    pub stdin: bool,
    /// Supervision: restart per policy; output keeps flowing on the same stream.
    pub restart: RestartPolicy,
    /// Run on a new pseudo-terminal of this size, as the leader of its
    /// session: stdin, stdout and stderr are the terminal, output arrives as
    /// `Output { fd: Stdout }`, `Resize` changes the size.
    pub pty: Option<PtySize>,
    /// A name ([`crate::valid_process_name`]) that outlives this stream: the
    /// process keeps running when its stream ends at a restore, and
    /// `Attach { name }` reaches its output again. Unique among the agent's
    /// named processes that have not ended.
    pub name: Option<String>,
}

/// Write file bytes at `offset`; `truncate` empties the file first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WriteFileRequest {
    pub path: String,
    pub data: Vec<u8>,
    pub offset: u64,
    pub truncate: bool,
    /// Mode bits when the file is created ([`DEFAULT_FILE_MODE`] when unset).
    pub mode: Option<u32>,
    /// Create missing parent directories (mode 0755).
    pub create_parents: bool,
    /// Owner as `uid:gid`, applied when set.
    pub owner: Option<(u32, u32)>,
}

/// Read at most `max_len` (<= [`crate::MAX_CHUNK_BYTES`]) bytes from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReadFileRequest {
    pub path: String,
    pub offset: u64,
    pub max_len: u32,
}

/// Post-restore duties: clock, entropy, identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RestoreRequest {
    /// Host wall clock when the message was built.
    pub unix_time_ns: u64,
    /// Fresh host entropy, exactly [`crate::RESTORE_ENTROPY_BYTES`] long.
    pub entropy: Vec<u8>,
    /// New hostname (validated with [`crate::valid_hostname`]).
    pub hostname: Option<String>,
    /// New machine id, 32 lowercase hex digits.
    pub machine_id: Option<String>,
}

/// Messages from the agent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// First frame after boot.
    Hello(Hello),
    /// The answer to request `id`.
    Response {
        id: u64,
        body: Result<Response, AgentError>,
    },
    /// Output of an `Exec` (or PTY, or `Attach`) stream; counts against the
    /// stream's window.
    Output {
        stream: u64,
        fd: OutputFd,
        data: Vec<u8>,
    },
    /// A supervised process was (re)started.
    Started { stream: u64, pid: u32 },
    /// A process exited; `restarting` tells whether supervision starts it
    /// again. The last message of its stream unless it restarts.
    Exited {
        stream: u64,
        status: ExitStatus,
        restarting: bool,
    },
    /// TCP stream bytes; count against the stream's window.
    StreamData { stream: u64, data: Vec<u8> },
    /// The guest side of a TCP stream reached EOF.
    StreamEof { stream: u64 },
    /// The stream is gone on the guest side; the last message of the stream.
    StreamClosed { stream: u64, reason: CloseReason },
    /// The agent wrote `bytes` of the host's stream data on: the host may
    /// send that much more.
    StreamCredit { stream: u64, bytes: u32 },
}

/// Why a stream ended on the guest side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// Both directions finished normally.
    Done,
    /// An I/O error or a protocol error on this stream.
    Error(String),
    /// The microVM was restored from a snapshot taken while the stream was open.
    Restored,
    /// A new host connection took over (`Reattach`).
    Reattached,
    /// Another `Attach` to the same process replaced this one.
    Replaced,
}

/// Which output of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputFd {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when killed.
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Agent identification, sent once per boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub proto_version: u8,
    pub agent_version: String,
    pub kernel_release: String,
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
    /// What this agent supports ([`CAPABILITIES`]).
    pub capabilities: Vec<String>,
}

/// The agent as a restored copy (or a re-attached host) finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub proto_version: u8,
    pub agent_version: String,
    pub capabilities: Vec<String>,
    /// The streams of the previous connection that the agent ended.
    pub closed_streams: Vec<ClosedStream>,
}

/// A stream the agent ended at a `Restore` or `Reattach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedStream {
    pub stream: u64,
    pub kind: StreamKind,
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    Exec,
    Pty,
    Tcp,
    Attach,
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong {
        nonce: u64,
    },
    Exec {
        pid: u32,
    },
    WriteFile {
        bytes_written: u64,
    },
    ReadFile {
        data: Vec<u8>,
        eof: bool,
    },
    TcpConnect,
    Signal,
    Resized,
    Quiesced,
    Thawed,
    Restored(AgentInfo),
    Reattached(AgentInfo),
    /// The attach stream is open; `pid` of the running incarnation, `None`
    /// when the process has ended (its last output and `Exited` follow).
    Attached {
        pid: Option<u32>,
    },
    /// The agent is stopping every process and will power off.
    PoweringOff,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    pub kind: AgentErrorKind,
    pub message: String,
}

/// Coarse classification of agent-side failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentErrorKind {
    NotFound,
    PermissionDenied,
    InvalidRequest,
    ConnectionRefused,
    Io,
    /// The name or stream is taken.
    Conflict,
    /// The agent cannot do this here (no PTY support, ...).
    Unsupported,
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The capability list an agent of this version announces.
pub fn capabilities() -> Vec<String> {
    CAPABILITIES.iter().map(|c| c.to_string()).collect()
}
