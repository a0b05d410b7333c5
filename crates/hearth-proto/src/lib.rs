//! The host <-> guest agent protocol.
//!
//! One virtio-serial port carries every conversation between Hearth and the
//! `hearth-agent` running as PID 1 in a microVM. This crate owns the bytes on
//! that port: the frame layout, the message types, and the bounds both sides
//! enforce. It does no I/O of its own, so the (synchronous, threaded) agent and
//! the (async) host side share exactly one definition.
//!
//! # Frames
//!
//! ```text
//!  0      2       3      4               8
//!  +------+-------+------+---------------+---------------------------+
//!  | "HR" | ver=1 | kind | payload len   | payload (postcard)        |
//!  |      |       | =0   | u32 LE        | <= MAX_PAYLOAD_BYTES      |
//!  +------+-------+------+---------------+---------------------------+
//! ```
//!
//! A reader checks magic, version, kind and length *before* it buffers the
//! payload, so a hostile guest can neither make the host allocate more than
//! [`MAX_PAYLOAD_BYTES`] nor keep it waiting for a frame that will never be
//! valid. Any violation is fatal for the channel: the host marks that microVM
//! failed and never resynchronises on a stream it can no longer trust.
//!
//! # Conversations
//!
//! The host sends [`HostMessage::Request`]s, each with a fresh `id`; the agent
//! answers each with exactly one [`GuestMessage::Response`] carrying that id.
//! Requests that open a stream (`Exec`, `TcpConnect`) name the stream by the
//! request id; data then flows as `StreamData`/`Output` messages tagged with it.
//!
//! # Snapshots
//!
//! Bytes the host wrote that still sit in the socket buffer when QEMU stops are
//! lost (DESIGN.md §2). The protocol therefore quiesces the channel before every
//! snapshot: the host sends `Quiesce` and then nothing more; the agent answers
//! `Quiesced` as the very last frame it writes, and holds every later frame in
//! guest memory until a `Thaw` (same VM) or `Restore` (restored copy) arrives on
//! the (new) connection. Nothing is in flight in either direction while the
//! state is captured.

use serde::{Deserialize, Serialize};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"HR";
/// Protocol version carried by every frame; bumped on incompatible change.
pub const PROTO_VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload either side accepts.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Largest data chunk put in one message (leaves room for the envelope).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// Entropy the host must send with a `Restore` (bytes).
pub const RESTORE_ENTROPY_BYTES: usize = 64;
/// Name of the virtio-serial port the agent listens on.
pub const AGENT_PORT_NAME: &str = "hearth.agent";

const KIND_MESSAGE: u8 = 0;

/// Errors while encoding or decoding frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad frame magic {found:02x?}")]
    BadMagic { found: [u8; 2] },
    #[error("unsupported protocol version {found} (this side speaks {PROTO_VERSION})")]
    BadVersion { found: u8 },
    #[error("unknown frame kind {found}")]
    BadKind { found: u8 },
    #[error("frame payload of {len} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("undecodable message payload: {reason}")]
    BadPayload { reason: String },
}

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

/// Post-restore duties (DESIGN.md §3 "After every restore").
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

/// Encode one message as a complete frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out =
        postcard::to_extend(msg, std::mem::take(&mut out)).map_err(|e| FrameError::BadPayload {
            reason: e.to_string(),
        })?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = PROTO_VERSION;
    out[3] = KIND_MESSAGE;
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Validate a header and return the payload length it announces.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if header[2] != PROTO_VERSION {
        return Err(FrameError::BadVersion { found: header[2] });
    }
    if header[3] != KIND_MESSAGE {
        return Err(FrameError::BadKind { found: header[3] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Incremental frame decoder: feed it whatever bytes arrive, take out whole
/// messages. Never buffers more than one header plus [`MAX_PAYLOAD_BYTES`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Payload length of the frame being assembled, once its header checked out.
    want: Option<usize>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes the decoder can take before it must be drained
    /// with [`FrameDecoder::decode_next`]; callers read at most this much.
    pub fn room(&self) -> usize {
        match self.want {
            None => HEADER_LEN - self.buf.len().min(HEADER_LEN),
            Some(len) => HEADER_LEN + len - self.buf.len(),
        }
    }

    /// Append bytes. Callers must not push more than [`FrameDecoder::room`]
    /// at a time; extra bytes are kept, but the header is re-checked first.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Take out the next whole message, if one is buffered.
    pub fn decode_next<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        if self.want.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&self.buf[..HEADER_LEN]);
            self.want = Some(parse_header(&header)?);
        }
        let len = self.want.expect("header parsed above");
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = postcard::from_bytes(&self.buf[HEADER_LEN..HEADER_LEN + len]).map_err(|e| {
            FrameError::BadPayload {
                reason: e.to_string(),
            }
        });
        self.buf.drain(..HEADER_LEN + len);
        self.want = None;
        msg.map(Some)
    }
}

/// RFC 1123 host name label check (1-63 chars, alnum and inner hyphens).
pub fn valid_hostname(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A systemd machine id: 32 lowercase hex digits, not all zero.
pub fn valid_machine_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        && id.bytes().any(|c| c != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip<T>(msg: &T) -> T
    where
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let frame = encode_frame(msg).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        dec.decode_next().unwrap().unwrap()
    }

    #[test]
    fn host_messages_round_trip() {
        let msgs = vec![
            HostMessage::Request {
                id: 7,
                body: Request::Ping { nonce: 9 },
            },
            HostMessage::Request {
                id: 8,
                body: Request::Exec(ExecRequest {
                    argv: vec!["uname".into(), "-a".into()],
                    env: vec![("A".into(), "b".into())],
                    user: Some("nobody".into()),
                    restart: RestartPolicy::OnFailure,
                    ..Default::default()
                }),
            },
            HostMessage::Request {
                id: 9,
                body: Request::Restore(RestoreRequest {
                    unix_time_ns: 1,
                    entropy: vec![1; RESTORE_ENTROPY_BYTES],
                    hostname: Some("vm-1".into()),
                    machine_id: None,
                }),
            },
            HostMessage::StreamData {
                stream: 3,
                data: vec![0, 1, 2],
            },
            HostMessage::StreamEof { stream: 3 },
        ];
        for m in msgs {
            assert_eq!(roundtrip(&m), m);
        }
    }

    #[test]
    fn guest_messages_round_trip() {
        let msgs = vec![
            GuestMessage::Response {
                id: 1,
                body: Ok(Response::Exec { pid: 42 }),
            },
            GuestMessage::Response {
                id: 2,
                body: Err(AgentError::new(AgentErrorKind::NotFound, "no such file")),
            },
            GuestMessage::Exited {
                stream: 3,
                status: ExitStatus {
                    code: Some(0),
                    signal: None,
                },
                restarting: false,
            },
            GuestMessage::Output {
                stream: 3,
                fd: OutputFd::Stderr,
                data: b"x".to_vec(),
            },
        ];
        for m in msgs {
            assert_eq!(roundtrip(&m), m);
        }
    }

    #[test]
    fn decoder_handles_split_and_concatenated_frames() {
        let a = encode_frame(&HostMessage::StreamEof { stream: 1 }).unwrap();
        let b = encode_frame(&HostMessage::StreamEof { stream: 2 }).unwrap();
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in all {
            dec.push(&[byte]);
            while let Some(m) = dec.decode_next::<HostMessage>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                HostMessage::StreamEof { stream: 1 },
                HostMessage::StreamEof { stream: 2 }
            ]
        );
    }

    #[test]
    fn oversized_header_is_rejected_before_buffering() {
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2] = PROTO_VERSION;
        header[4..8].copy_from_slice(&(u32::MAX).to_le_bytes());
        let mut dec = FrameDecoder::new();
        dec.push(&header);
        assert!(matches!(
            dec.decode_next::<GuestMessage>(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut dec = FrameDecoder::new();
        dec.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(
            dec.decode_next::<GuestMessage>(),
            Err(FrameError::BadMagic { .. })
        ));
        let mut dec = FrameDecoder::new();
        dec.push(&[b'H', b'R', 9, 0, 0, 0, 0, 0]);
        assert_eq!(
            dec.decode_next::<GuestMessage>(),
            Err(FrameError::BadVersion { found: 9 })
        );
    }

    #[test]
    fn room_never_exceeds_one_frame() {
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.room(), HEADER_LEN);
        let f = encode_frame(&GuestMessage::StreamEof { stream: 5 }).unwrap();
        dec.push(&f[..HEADER_LEN]);
        assert_eq!(dec.decode_next::<GuestMessage>().unwrap(), None);
        assert_eq!(dec.room(), f.len() - HEADER_LEN);
    }

    #[test]
    fn identity_validators() {
        assert!(valid_hostname("vm-01abc"));
        assert!(!valid_hostname("-bad"));
        assert!(!valid_hostname("a.b"));
        assert!(!valid_hostname(&"a".repeat(64)));
        assert!(valid_machine_id(&"0123456789abcdef".repeat(2)));
        assert!(!valid_machine_id(&"0".repeat(32)));
        assert!(!valid_machine_id("ABCDEF0123456789abcdef0123456789"));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder and never make it hold
        /// more than one maximal frame.
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
            let mut dec = FrameDecoder::new();
            for c in chunks {
                dec.push(&c);
                loop {
                    match dec.decode_next::<GuestMessage>() {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(dec.buf.len() <= HEADER_LEN + MAX_PAYLOAD_BYTES + 64);
            }
        }

        #[test]
        fn data_chunks_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), stream in any::<u64>()) {
            let m = GuestMessage::StreamData { stream, data };
            prop_assert_eq!(roundtrip(&m), m);
        }
    }
}
