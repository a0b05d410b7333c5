//! The serve loop (reader thread): read host frames, decode them, route
//! them. Nothing else lives here.
//!
//! [`serve`] runs on the calling thread (the main thread as PID 1): it
//! starts the writer, queues `Hello`, then reads and decodes frames forever
//! (port) or until EOF (socket in tests). Requests go to their handlers:
//! files ([`crate::files`]) and the connection lifecycle
//! ([`crate::control`]) are handled inline; `Exec`, `TcpConnect` and
//! `Attach` open streams ([`crate::exec`], [`crate::tcp`],
//! [`crate::attach`]) whose threads do the rest. Stream messages go to the
//! stream's [`crate::stream::Stream`] methods, none of which waits for a
//! process, a peer or credit, so one stalled stream never holds up the
//! others or the control requests.
//!
//! A malformed host frame is logged and the decoder is reset (header
//! errors) or the bad frame skipped (payload errors): PID 1 never crashes
//! on input.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hearth_proto::{
    FrameDecoder, FrameError, GuestMessage, HostMessage, Request, Response, HEADER_LEN, MAGIC,
    PROTO_VERSION,
};

use crate::errors::agent_error;
use crate::process::Processes;
use crate::restore::{RealSystem, SystemOps};
use crate::session::Session;
use crate::stream::{End, Stream, StreamTable};
use crate::writer::{OnWriteError, Outbox};
use crate::{agent_log, attach, control, exec, files, tcp};

/// Pause after a 0-byte read on the real port (host disconnected).
pub const PORT_RETRY_MS: u64 = 10;
/// Largest single read from the channel.
const READ_BUF_BYTES: usize = 64 * 1024;

/// How [`serve`] behaves.
#[derive(Clone)]
pub struct ServeConfig {
    /// `true` for a socket (tests): a 0-byte read is EOF and ends `serve`,
    /// a failed write stops the writer. `false` for the virtio-serial port:
    /// a 0-byte read means "host disconnected", so wait and read again.
    pub eof_is_final: bool,
    /// Clock, entropy, identity and filesystem effects (faked in tests).
    pub system: Arc<dyn SystemOps>,
    /// Where user names are looked up (`/etc`).
    pub etc_dir: PathBuf,
}

impl ServeConfig {
    /// For the real virtio-serial port.
    pub fn port() -> Self {
        ServeConfig {
            eof_is_final: false,
            system: Arc::new(RealSystem),
            etc_dir: PathBuf::from("/etc"),
        }
    }

    /// For a stream socket whose EOF ends the session.
    pub fn socket(system: Arc<dyn SystemOps>) -> Self {
        ServeConfig {
            eof_is_final: true,
            system,
            etc_dir: PathBuf::from("/etc"),
        }
    }
}

/// Serve the agent protocol: `reader` carries host frames, `writer` guest
/// frames. Returns only when `config.eof_is_final` and the reader hits EOF
/// or an error; every stream of the session is closed first.
pub fn serve<R, W>(mut reader: R, writer: W, config: ServeConfig) -> io::Result<()>
where
    R: Read,
    W: Write + Send + 'static,
{
    let on_error = if config.eof_is_final {
        OnWriteError::Stop
    } else {
        OnWriteError::Retry
    };
    let outbox = Outbox::start(writer, on_error)?;
    let session = Arc::new(Session {
        outbox,
        streams: Arc::new(StreamTable::default()),
        processes: Arc::new(Processes::default()),
        system: config.system,
        etc_dir: config.etc_dir,
    });
    session.outbox.send(&GuestMessage::Hello(control::hello()));

    let result = read_loop(&mut reader, &session, config.eof_is_final);
    control::end_all_streams(&session, End::SessionOver);
    session.processes.shutdown_all();
    result
}

fn read_loop<R: Read>(
    reader: &mut R,
    session: &Arc<Session>,
    eof_is_final: bool,
) -> io::Result<()> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUF_BYTES];
    // Bytes to feed the decoder before reading more (after a resync).
    let mut pending: Vec<u8> = Vec::new();
    // The header being assembled (the decoder never holds more than one
    // header while in that phase, because reads are capped at `room()`).
    let mut header: Vec<u8> = Vec::with_capacity(HEADER_LEN);
    let mut in_header = true;
    let mut resyncing = false;
    let mut last_error_log: Option<Instant> = None;
    loop {
        let want = decoder.room().clamp(1, buf.len());
        let n = if !pending.is_empty() {
            let n = want.min(pending.len());
            buf[..n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            n
        } else {
            match reader.read(&mut buf[..want]) {
                Ok(0) if eof_is_final => return Ok(()),
                Ok(0) => {
                    thread::sleep(Duration::from_millis(PORT_RETRY_MS));
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if eof_is_final => return Err(e),
                Err(e) => {
                    let quiet = Duration::from_secs(10);
                    if !matches!(last_error_log, Some(t) if t.elapsed() <= quiet) {
                        agent_log!("channel read failed ({e}); retrying");
                        last_error_log = Some(Instant::now());
                    }
                    thread::sleep(Duration::from_millis(PORT_RETRY_MS));
                    continue;
                }
            }
        };
        if in_header {
            header.extend_from_slice(&buf[..n]);
        }
        decoder.push(&buf[..n]);
        loop {
            match decoder.decode_next::<HostMessage>() {
                Ok(Some(msg)) => {
                    in_header = true;
                    header.clear();
                    resyncing = false;
                    dispatch(session, msg);
                }
                Ok(None) => {
                    if in_header && header.len() >= HEADER_LEN {
                        // Header accepted; the payload follows.
                        in_header = false;
                        header.clear();
                    }
                    break;
                }
                Err(FrameError::BadPayload { reason }) => {
                    // The frame was well delimited and has been skipped.
                    agent_log!("dropping an undecodable host frame: {reason}");
                    in_header = true;
                    header.clear();
                }
                Err(e) => {
                    if !resyncing {
                        agent_log!("bad host frame ({e}); resynchronising");
                        resyncing = true;
                    }
                    decoder = FrameDecoder::new();
                    let mut again = resync_tail(&header);
                    again.append(&mut pending);
                    pending = again;
                    in_header = true;
                    header.clear();
                    break;
                }
            }
        }
    }
}

/// After a bad header: the bytes after its first one, starting where a
/// valid header could start, to be decoded again (so garbage costs at
/// least one byte per attempt and a real frame behind it is found).
fn resync_tail(header: &[u8]) -> Vec<u8> {
    const START: [u8; 3] = [MAGIC[0], MAGIC[1], PROTO_VERSION];
    (1..header.len())
        .find(|&i| header[i..].iter().zip(START).all(|(a, b)| *a == b))
        .map_or_else(Vec::new, |i| header[i..].to_vec())
}

fn dispatch(session: &Arc<Session>, msg: HostMessage) {
    match msg {
        HostMessage::Request { id, body } => request(session, id, body),
        HostMessage::StreamData { stream, data } => match session.streams.get(stream) {
            Some(s) => s.data(data),
            None => agent_log!("data for unknown stream {stream} dropped"),
        },
        HostMessage::StreamEof { stream } => match session.streams.get(stream) {
            Some(s) => s.eof(),
            None => agent_log!("EOF for unknown stream {stream} ignored"),
        },
        HostMessage::StreamClose { stream } => match session.streams.take(stream) {
            Some(s) => s.end(End::HostClose),
            None => agent_log!("close of unknown stream {stream} ignored"),
        },
        HostMessage::StreamCredit { stream, bytes } => {
            // Credit for a stream that just ended is normal: no log.
            if let Some(s) = session.streams.get(stream) {
                s.credit(bytes);
            }
        }
    }
}

/// A stream request (`Signal`, `Resize`) on stream `stream`.
fn on_stream(
    session: &Session,
    stream: u64,
    op: impl FnOnce(&dyn Stream) -> Result<Response, hearth_proto::AgentError>,
) -> Result<Response, hearth_proto::AgentError> {
    match session.streams.get(stream) {
        Some(s) => op(s.as_ref()),
        None => Err(agent_error(
            hearth_proto::AgentErrorKind::NotFound,
            format_args!("no stream {stream}"),
        )),
    }
}

fn request(session: &Arc<Session>, id: u64, body: Request) {
    let outbox = &session.outbox;
    match body {
        Request::Ping { nonce } => {
            outbox.respond(id, Ok(Response::Pong { nonce }));
        }
        Request::Exec(req) => exec::start(session, id, req),
        Request::WriteFile(req) => {
            outbox.respond(id, files::write(&req));
        }
        Request::ReadFile(req) => {
            outbox.respond(id, files::read(&req));
        }
        Request::TcpConnect { port } => tcp::start(session, id, port),
        Request::Attach { name } => attach::start(session, id, &name),
        Request::Signal { stream, signal } => {
            outbox.respond(id, on_stream(session, stream, |s| s.signal(signal)));
        }
        Request::Resize { stream, size } => {
            outbox.respond(id, on_stream(session, stream, |s| s.resize(size)));
        }
        Request::Quiesce { drop_caches } => control::quiesce(session, id, drop_caches),
        Request::Thaw => control::thaw(session, id),
        Request::Restore(req) => control::restore(session, id, &req),
        Request::Reattach => control::reattach(session, id),
        Request::PowerOff => control::power_off(session, id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_finds_the_next_possible_header() {
        assert_eq!(resync_tail(b"GET / HT"), b"");
        assert_eq!(resync_tail(b"xxHR\x02\0\0\0"), b"HR\x02\0\0\0");
        assert_eq!(resync_tail(b"xxxxxxxH"), b"H");
        assert_eq!(resync_tail(b"HR\x09\0HR\x02\0"), b"HR\x02\0");
        // A version-1 header is not a start for a version-2 agent.
        assert_eq!(resync_tail(b"xxHR\x01\0\0\0"), b"");
        // A valid-looking start with a bad length slides by at least one.
        assert_eq!(resync_tail(b"HR\x02\0\xff\xff\xff\xff"), b"");
    }
}
