//! Protocol version 1, frozen.
//!
//! The messages exactly as the first `hearth-agent` spoke them (frames with
//! version byte 1). Snapshots taken while such an agent ran contain it, and
//! such a snapshot must restore for as long as it may be stored, so the host
//! keeps speaking this version (see `hearth_vmm::agent`). Never change a type
//! here: postcard encodes enums by variant index and structs by field order,
//! so any edit changes the bytes on the wire.
//!
//! Version 1 has no flow control (a stalled reader stalls the channel), no
//! PTY, no power-off, no re-attach, and `WriteFile.mode` has no default.
//! Its types repeat the current ones on purpose: a shared type could change
//! under this version.

use serde::{Deserialize, Serialize};

/// Protocol version of these types.
pub const VERSION: u8 = 1;

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    /// A request; answered by exactly one [`GuestMessage::Response`] with the same id.
    Request { id: u64, body: Request },
    /// Bytes for a stream (stdin of an `Exec`, payload of a `TcpConnect`).
    StreamData { stream: u64, data: Vec<u8> },
    /// The host will send nothing more on this stream (half close).
    StreamEof { stream: u64 },
    /// The host abandons this stream; the agent closes its end.
    StreamClose { stream: u64 },
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
    /// Send a signal to the process of an `Exec` stream.
    Signal { stream: u64, signal: i32 },
    /// Prepare for a snapshot: sync filesystems, optionally drop caches, then stop writing.
    Quiesce { drop_caches: bool },
    /// Resume writing after a `Quiesce` on the same, unrestored VM.
    Thaw,
    /// First message to a restored copy: clock, entropy, identity; then resume writing.
    Restore(RestoreRequest),
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
    pub stdin: bool,
    /// Supervision: restart per policy; output keeps flowing on the same stream.
    pub restart: RestartPolicy,
}

/// Write file bytes at `offset`; `truncate` empties the file first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WriteFileRequest {
    pub path: String,
    pub data: Vec<u8>,
    pub offset: u64,
    pub truncate: bool,
    /// Mode bits when the file is created.
    pub mode: u32,
    /// Create missing parent directories (mode 0755).
    pub create_parents: bool,
    /// Owner as `uid:gid`, applied when set.
    pub owner: Option<(u32, u32)>,
}

/// Read at most `max_len` (<= [`MAX_CHUNK_BYTES`]) bytes from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReadFileRequest {
    pub path: String,
    pub offset: u64,
    pub max_len: u32,
}

/// Post-restore duties: what a restored guest must redo before it serves
/// (docs/WIRE-FORMAT.md, "The agent channel").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RestoreRequest {
    /// Host wall clock when the message was built.
    pub unix_time_ns: u64,
    /// Fresh host entropy, exactly [`RESTORE_ENTROPY_BYTES`] long.
    pub entropy: Vec<u8>,
    /// New hostname (validated with [`valid_hostname`]).
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
    /// Output of an `Exec` stream.
    Output {
        stream: u64,
        fd: OutputFd,
        data: Vec<u8>,
    },
    /// A supervised process was (re)started.
    Started { stream: u64, pid: u32 },
    /// A process exited; `restarting` tells whether supervision starts it again.
    Exited {
        stream: u64,
        status: ExitStatus,
        restarting: bool,
    },
    /// TCP stream bytes.
    StreamData { stream: u64, data: Vec<u8> },
    /// The guest side of a TCP stream reached EOF.
    StreamEof { stream: u64 },
    /// The stream is gone on the guest side (error or both halves closed).
    StreamClosed { stream: u64, reason: Option<String> },
}

/// Agent identification, sent once per boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub proto_version: u8,
    pub agent_version: String,
    pub kernel_release: String,
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong { nonce: u64 },
    Exec { pid: u32 },
    WriteFile { bytes_written: u64 },
    ReadFile { data: Vec<u8>, eof: bool },
    TcpConnect,
    Signal,
    Quiesced,
    Thawed,
    Restored,
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
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
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
    pub code: Option<i32>,
    pub signal: Option<i32>,
}
