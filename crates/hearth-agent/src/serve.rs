//! The serve loop: read host frames, dispatch them, keep the stream table.
//!
//! [`serve`] runs on the calling thread (the main thread as PID 1): it
//! starts the writer, queues `Hello`, then reads and decodes frames forever
//! (port) or until EOF (socket in tests). Short requests (ping, files,
//! signals, quiesce, thaw, restore) are handled inline; `Exec` and
//! `TcpConnect` get their own threads ([`crate::exec`], [`crate::tcp`]).
//!
//! A malformed host frame is logged and the decoder is reset (header
//! errors) or the bad frame skipped (payload errors): PID 1 never crashes
//! on input.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hearth_proto::{
    AgentError, FrameDecoder, FrameError, GuestMessage, Hello, HostMessage, Request, Response,
    HEADER_LEN, MAGIC, PROTO_VERSION,
};

use crate::errors::invalid;
use crate::exec::{self, ExecStream, StdinMsg};
use crate::restore::{self, RealSystem, SystemOps};
use crate::tcp::{self, TcpMsg, TcpShared};
use crate::writer::{OnWriteError, Outbox};
use crate::{agent_log, files, lock};

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

/// An open stream, by the id of the request that opened it.
#[derive(Clone)]
pub(crate) enum StreamEntry {
    Exec(Arc<ExecStream>),
    Tcp {
        tx: std::sync::mpsc::SyncSender<TcpMsg>,
        shared: Arc<TcpShared>,
    },
}

impl StreamEntry {
    fn same(&self, other: &StreamEntry) -> bool {
        match (self, other) {
            (StreamEntry::Exec(a), StreamEntry::Exec(b)) => Arc::ptr_eq(a, b),
            (StreamEntry::Tcp { shared: a, .. }, StreamEntry::Tcp { shared: b, .. }) => {
                Arc::ptr_eq(a, b)
            }
            _ => false,
        }
    }

    /// Host `StreamClose`, or the end of the session.
    fn close(&self) {
        match self {
            StreamEntry::Exec(s) => s.close(),
            StreamEntry::Tcp { shared, .. } => shared.abandon(),
        }
    }
}

/// State of one serve session, shared with stream threads.
pub(crate) struct Ctx {
    pub outbox: Outbox,
    pub etc_dir: PathBuf,
    system: Arc<dyn SystemOps>,
    streams: Mutex<HashMap<u64, StreamEntry>>,
}

impl Ctx {
    /// Register a new stream; its id must not be in use.
    pub(crate) fn insert_stream(&self, id: u64, entry: StreamEntry) -> Result<(), AgentError> {
        let mut streams = lock(&self.streams);
        if streams.contains_key(&id) {
            return Err(invalid(format_args!("stream id {id} is already in use")));
        }
        streams.insert(id, entry);
        Ok(())
    }

    /// Remove stream `id` if it is still `entry` (the id may have been
    /// closed and reused meanwhile).
    pub(crate) fn remove_stream(&self, id: u64, entry: &StreamEntry) {
        let mut streams = lock(&self.streams);
        if streams.get(&id).is_some_and(|e| e.same(entry)) {
            streams.remove(&id);
        }
    }

    pub(crate) fn remove_tcp(&self, id: u64, shared: &Arc<TcpShared>) {
        let mut streams = lock(&self.streams);
        let same = matches!(streams.get(&id), Some(StreamEntry::Tcp { shared: s, .. }) if Arc::ptr_eq(s, shared));
        if same {
            streams.remove(&id);
        }
    }

    fn stream(&self, id: u64) -> Option<StreamEntry> {
        lock(&self.streams).get(&id).cloned()
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
    let ctx = Arc::new(Ctx {
        outbox,
        etc_dir: config.etc_dir,
        system: config.system,
        streams: Mutex::new(HashMap::new()),
    });
    ctx.outbox.send(&GuestMessage::Hello(hello()));

    let result = read_loop(&mut reader, &ctx, config.eof_is_final);
    let streams: Vec<StreamEntry> = lock(&ctx.streams).drain().map(|(_, e)| e).collect();
    for entry in streams {
        entry.close();
    }
    result
}

fn read_loop<R: Read>(reader: &mut R, ctx: &Arc<Ctx>, eof_is_final: bool) -> io::Result<()> {
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
                    dispatch(ctx, msg);
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

fn hello() -> Hello {
    Hello {
        proto_version: PROTO_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: kernel_release(),
        uptime_ms: uptime_ms(),
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it (NUL-terminated fields).
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct we pass.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Milliseconds since boot (CLOCK_BOOTTIME, which counts suspend too).
fn uptime_ms() -> u64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes only into the struct we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

fn dispatch(ctx: &Arc<Ctx>, msg: HostMessage) {
    match msg {
        HostMessage::Request { id, body } => request(ctx, id, body),
        HostMessage::StreamData { stream, data } => match ctx.stream(stream) {
            Some(StreamEntry::Exec(s)) => match s.stdin_sender() {
                // Blocks while the queue is full: back-pressure on the host.
                Some(tx) => {
                    let _ = tx.send(StdinMsg::Data(data));
                }
                None => agent_log!("stream {stream}: data for a process without stdin dropped"),
            },
            Some(StreamEntry::Tcp { tx, .. }) => {
                let _ = tx.send(TcpMsg::Data(data));
            }
            None => agent_log!("data for unknown stream {stream} dropped"),
        },
        HostMessage::StreamEof { stream } => match ctx.stream(stream) {
            Some(StreamEntry::Exec(s)) => {
                if let Some(tx) = s.stdin_sender() {
                    let _ = tx.send(StdinMsg::Eof);
                }
            }
            Some(StreamEntry::Tcp { tx, .. }) => {
                let _ = tx.send(TcpMsg::Eof);
            }
            None => agent_log!("EOF for unknown stream {stream} ignored"),
        },
        HostMessage::StreamClose { stream } => {
            let entry = lock(&ctx.streams).remove(&stream);
            match entry {
                Some(entry) => entry.close(),
                None => agent_log!("close of unknown stream {stream} ignored"),
            }
        }
    }
}

fn request(ctx: &Arc<Ctx>, id: u64, body: Request) {
    let outbox = &ctx.outbox;
    match body {
        Request::Ping { nonce } => {
            outbox.respond(id, Ok(Response::Pong { nonce }));
        }
        Request::Exec(req) => exec::start(ctx, id, req),
        Request::WriteFile(req) => {
            outbox.respond(id, files::write(&req));
        }
        Request::ReadFile(req) => {
            outbox.respond(id, files::read(&req));
        }
        Request::TcpConnect { port } => tcp::start(ctx, id, port),
        Request::Signal { stream, signal } => {
            let result = match ctx.stream(stream) {
                Some(StreamEntry::Exec(s)) => s.signal(signal),
                Some(StreamEntry::Tcp { .. }) => Err(invalid(format_args!(
                    "stream {stream} is a TCP stream, not a process"
                ))),
                None => Err(crate::errors::agent_error(
                    hearth_proto::AgentErrorKind::NotFound,
                    format_args!("no stream {stream}"),
                )),
            };
            outbox.respond(id, result);
        }
        Request::Quiesce { drop_caches } => {
            if let Err(e) = ctx.system.quiesce_filesystems(drop_caches) {
                agent_log!("quiesce: {e}");
            }
            outbox.respond_then_pause(id, Ok(Response::Quiesced));
        }
        Request::Thaw => {
            outbox.release();
            outbox.respond(id, Ok(Response::Thawed));
        }
        Request::Restore(req) => {
            let result = restore::apply(ctx.system.as_ref(), &req);
            let ok = result.is_ok();
            // Always resume: even a failed restore must be able to answer.
            outbox.release();
            outbox.respond(id, result.map(|()| Response::Restored));
            if ok {
                restore::persist_identity(ctx.system.as_ref(), &req);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_finds_the_next_possible_header() {
        assert_eq!(resync_tail(b"GET / HT"), b"");
        assert_eq!(resync_tail(b"xxHR\x01\0\0\0"), b"HR\x01\0\0\0");
        assert_eq!(resync_tail(b"xxxxxxxH"), b"H");
        assert_eq!(resync_tail(b"HR\x09\0HR\x01\0"), b"HR\x01\0");
        // A valid-looking start with a bad length slides by at least one.
        assert_eq!(resync_tail(b"HR\x01\0\xff\xff\xff\xff"), b"");
    }
}
