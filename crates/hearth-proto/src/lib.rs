//! The host <-> guest agent protocol.
//!
//! One virtio-serial port carries every conversation between Hearth and the
//! `hearth-agent` running as PID 1 in a microVM. This crate owns the bytes on
//! that port: the frame layout, the message types of every protocol version,
//! and the bounds both sides enforce. It does no I/O of its own, so the
//! (synchronous, threaded) agent, the (async) host and the per-microVM
//! supervisor that relays frames share exactly one definition.
//!
//! # Frames
//!
//! ```text
//!  0      2       3      4               8
//!  +------+-------+------+---------------+---------------------------+
//!  | "HR" | ver   | kind | payload len   | payload (postcard)        |
//!  |      | 1 | 2 | =0   | u32 LE        | <= MAX_PAYLOAD_BYTES      |
//!  +------+-------+------+---------------+---------------------------+
//! ```
//!
//! A reader checks magic, version, kind and length *before* it buffers the
//! payload, so a hostile guest can neither make the host allocate more than
//! [`MAX_PAYLOAD_BYTES`] nor keep it waiting for a frame that will never be
//! valid. Any violation is fatal for the channel: the host marks that microVM
//! failed and never resynchronises on a stream it can no longer trust. The
//! header is the same in every version, so a relay can find frame
//! boundaries ([`parse_header_any`]) without knowing the messages.
//!
//! # Versions
//!
//! The version byte names the message set of the payload: [`v1`] (frozen)
//! or [`v2`] (current, re-exported at the crate root). An agent speaks one
//! version, the one it was built with; it announces it in its boot `Hello`
//! and in its answer to `Restore`. The host speaks every version a stored
//! snapshot may contain: it learns the version from the first frame after a
//! boot, and from the snapshot's record before a restore.
//!
//! # Conversations (version 2)
//!
//! The host sends [`Request`]s, each with a fresh `id`; the agent answers each
//! with exactly one [`GuestMessage::Response`] carrying that id. Requests
//! that open a stream (`Exec`, `TcpConnect`, `Attach`) name the stream by the
//! request id; data then flows as `StreamData`/`Output` messages tagged with
//! it, until the stream ends (`Exited` that does not restart, or
//! `StreamClosed`).
//!
//! # Flow control (version 2)
//!
//! Every stream has a window of [`STREAM_WINDOW_BYTES`] in each direction:
//! a sender may have at most that many payload bytes of the stream's data
//! (`Output`, `StreamData`) that the receiver has not yet handed to its
//! consumer. The receiver returns credit (`StreamCredit`) as its consumer
//! takes the bytes. A stream whose consumer stalls (a slow HTTP client, a
//! process that never reads stdin) therefore stops only itself: neither side
//! ever blocks its channel reader on one stream, so other streams and the
//! control requests (`Quiesce`, `Restore`) always get through. Sending more
//! than the window is a protocol violation.
//!
//! # Snapshots
//!
//! Bytes the host wrote that still sit in the socket buffer when QEMU stops
//! are lost. The protocol therefore quiesces the channel before every
//! snapshot: the host sends `Quiesce` and then nothing more; the agent
//! answers `Quiesced` as the very last frame it writes, and holds every later
//! frame in guest memory until a `Thaw` (same VM) or `Restore` (restored
//! copy) arrives on the (new) connection. Nothing is in flight in either
//! direction while the state is captured.
//!
//! A restored copy's streams belong to a host connection that no longer
//! exists. In version 2 the agent ends them all when it handles `Restore`
//! (or `Reattach`, a new host connection to the same running agent): TCP
//! sockets are closed, PTY sessions hung up, processes lose their stdin,
//! and the answer lists the streams it closed. Named supervised processes
//! (the app) go on running; their output is kept (bounded) until a host
//! `Attach`es to them again.

#![forbid(unsafe_code)]

pub mod v1;
pub mod v2;

pub use v2::*;

use serde::{Deserialize, Serialize};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"HR";
/// The newest protocol version: what this crate's agent speaks.
pub const PROTO_VERSION: u8 = v2::VERSION;
/// The oldest protocol version a host still speaks.
pub const MIN_PROTO_VERSION: u8 = v1::VERSION;
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
    #[error("unsupported protocol version {found} (expected {expected})")]
    BadVersion { found: u8, expected: String },
    #[error("unknown frame kind {found}")]
    BadKind { found: u8 },
    #[error("frame payload of {len} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("undecodable message payload: {reason}")]
    BadPayload { reason: String },
}

/// Encode one message as a complete frame of protocol `version`.
///
/// The caller picks the message type of that version (`v1::HostMessage`
/// for version 1, ...); this function only frames it.
pub fn encode_frame_version<T: Serialize>(version: u8, msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out =
        postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(|e| FrameError::BadPayload {
            reason: e.to_string(),
        })?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = version;
    out[3] = KIND_MESSAGE;
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Encode one current-version message as a complete frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame_version(PROTO_VERSION, msg)
}

/// Validate a header of any known version; returns (version, payload length).
pub fn parse_header_any(header: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = header[2];
    if !(MIN_PROTO_VERSION..=PROTO_VERSION).contains(&version) {
        return Err(FrameError::BadVersion {
            found: version,
            expected: format!("{MIN_PROTO_VERSION}..={PROTO_VERSION}"),
        });
    }
    if header[3] != KIND_MESSAGE {
        return Err(FrameError::BadKind { found: header[3] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    Ok((version, len))
}

/// Validate a header of exactly `version`; returns the payload length.
pub fn parse_header(version: u8, header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let (found, len) = parse_header_any(header)?;
    if found != version {
        return Err(FrameError::BadVersion {
            found,
            expected: version.to_string(),
        });
    }
    Ok(len)
}

/// Incremental frame decoder for one protocol version: feed it whatever
/// bytes arrive, take out whole messages. Never buffers more than one
/// header plus [`MAX_PAYLOAD_BYTES`].
#[derive(Debug)]
pub struct FrameDecoder {
    version: u8,
    buf: Vec<u8>,
    /// Payload length of the frame being assembled, once its header checked out.
    want: Option<usize>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for the current version.
    pub fn new() -> Self {
        Self::for_version(PROTO_VERSION)
    }

    /// A decoder for frames of `version`.
    pub fn for_version(version: u8) -> Self {
        Self {
            version,
            buf: Vec::new(),
            want: None,
        }
    }

    pub fn version(&self) -> u8 {
        self.version
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

    /// The version of the frame whose header is buffered, if one is: lets a
    /// reader that does not know its peer's version yet pick a decoder.
    pub fn peek_version(&self) -> Option<u8> {
        (self.buf.len() >= 3 && self.buf[..2] == MAGIC).then(|| self.buf[2])
    }

    /// Switch to another version before the first frame is decoded.
    pub fn set_version(&mut self, version: u8) {
        self.version = version;
    }

    /// Take out the next whole message, if one is buffered.
    pub fn decode_next<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        if self.want.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&self.buf[..HEADER_LEN]);
            self.want = Some(parse_header(self.version, &header)?);
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

/// A name for a supervised process ([`ExecRequest::name`]): 1-64 of
/// `[A-Za-z0-9._-]`.
pub fn valid_process_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
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
                    pty: Some(PtySize { cols: 80, rows: 24 }),
                    name: Some("app".into()),
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
            HostMessage::Request {
                id: 10,
                body: Request::Resize {
                    stream: 8,
                    size: PtySize {
                        cols: 120,
                        rows: 40,
                    },
                },
            },
            HostMessage::StreamData {
                stream: 3,
                data: vec![0, 1, 2],
            },
            HostMessage::StreamCredit {
                stream: 3,
                bytes: 4096,
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
            GuestMessage::Response {
                id: 3,
                body: Ok(Response::Restored(AgentInfo {
                    proto_version: PROTO_VERSION,
                    agent_version: "0.1.0".into(),
                    capabilities: vec![CAP_CREDIT_WINDOWS.into()],
                    closed_streams: vec![ClosedStream {
                        stream: 9,
                        kind: StreamKind::Tcp,
                    }],
                })),
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
            GuestMessage::StreamClosed {
                stream: 4,
                reason: CloseReason::Restored,
            },
        ];
        for m in msgs {
            assert_eq!(roundtrip(&m), m);
        }
    }

    /// Version 1 frames are byte-for-byte what the first agent spoke: this
    /// ping was answered by that agent in a real microVM.
    #[test]
    fn version_1_bytes_are_frozen() {
        let ping = encode_frame_version(
            v1::VERSION,
            &v1::HostMessage::Request {
                id: 5,
                body: v1::Request::Ping { nonce: 77 },
            },
        )
        .unwrap();
        assert_eq!(ping, b"HR\x01\x00\x04\x00\x00\x00\x00\x05\x00\x4d");
        let mut dec = FrameDecoder::for_version(v1::VERSION);
        dec.push(b"HR\x01\x00\x05\x00\x00\x00\x01\x05\x00\x00\x4d");
        assert_eq!(
            dec.decode_next::<v1::GuestMessage>().unwrap(),
            Some(v1::GuestMessage::Response {
                id: 5,
                body: Ok(v1::Response::Pong { nonce: 77 })
            })
        );
        // A version-2 decoder refuses a version-1 frame (and vice versa).
        let mut dec = FrameDecoder::new();
        dec.push(&ping);
        assert_eq!(dec.peek_version(), Some(1));
        assert!(matches!(
            dec.decode_next::<HostMessage>(),
            Err(FrameError::BadVersion { found: 1, .. })
        ));
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
        assert!(matches!(
            parse_header_any(&header),
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
        assert!(matches!(
            dec.decode_next::<GuestMessage>(),
            Err(FrameError::BadVersion { found: 9, .. })
        ));
        assert!(parse_header_any(&[b'H', b'R', 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            parse_header_any(&[b'H', b'R', 1, 0, 3, 0, 0, 0]),
            Ok((1, 3))
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
        assert!(valid_process_name("app.web-1_x"));
        assert!(!valid_process_name(""));
        assert!(!valid_process_name("a/b"));
        assert!(!valid_process_name(&"a".repeat(65)));
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
