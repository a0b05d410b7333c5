//! TCP streams: a host-side connection to `127.0.0.1:<port>` in the guest.
//!
//! One `TcpConnect` request makes one stream (named by the request id) and
//! two threads: `tcp-N` connects (5 s timeout), answers the request and then
//! writes host `StreamData` to the socket; `tcp-rx-N` reads the socket and
//! sends `StreamData` / `StreamEof`. When both directions are done (guest EOF
//! sent and host EOF applied) the stream ends with one
//! `StreamClosed{reason: None}`; an error in either direction ends it at once
//! with `StreamClosed{reason: Some(..)}`. A host `StreamClose` abandons the
//! stream: the socket is shut down and nothing more is sent for it.
//!
//! `TcpShared::state` serialises every frame of the stream, so nothing
//! follows its `StreamClosed`. The reader thread never takes that lock (a
//! socket thread may hold it while blocked on a quiesced writer); it only
//! sets `abandoned` and shuts the socket down under `socket`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use hearth_proto::{GuestMessage, Response};

use crate::errors::{invalid, io_error};
use crate::serve::{Ctx, StreamEntry};
use crate::writer::Outbox;
use crate::{agent_log, lock};

/// Connect timeout for `TcpConnect`.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 5000;
/// Read size from the guest socket.
const SOCKET_READ_BYTES: usize = 64 * 1024;
/// Host data chunks queued per stream before the reader blocks.
const HOST_QUEUE_CHUNKS: usize = 16;
/// Stack for the socket threads.
const TCP_THREAD_STACK_BYTES: usize = 128 * 1024;

/// Host input for the socket.
pub(crate) enum TcpMsg {
    Data(Vec<u8>),
    Eof,
}

#[derive(Default)]
struct TcpState {
    /// `StreamEof` sent (guest side reached EOF).
    read_done: bool,
    /// Host EOF applied (`shutdown(Write)`).
    write_done: bool,
    /// `StreamClosed` sent; nothing more goes out.
    finished: bool,
}

/// State shared by the two socket threads and the reader.
pub(crate) struct TcpShared {
    id: u64,
    outbox: Outbox,
    state: Mutex<TcpState>,
    abandoned: AtomicBool,
    /// A handle for shutting the socket down from another thread.
    socket: Mutex<Option<TcpStream>>,
}

/// Handle `TcpConnect` request `id` (reader thread).
pub(crate) fn start(ctx: &Arc<Ctx>, id: u64, port: u16) {
    if port == 0 {
        ctx.outbox
            .respond(id, Err(invalid("TCP port 0 is not valid")));
        return;
    }
    let (tx, rx) = sync_channel(HOST_QUEUE_CHUNKS);
    let shared = Arc::new(TcpShared {
        id,
        outbox: ctx.outbox.clone(),
        state: Mutex::new(TcpState::default()),
        abandoned: AtomicBool::new(false),
        socket: Mutex::new(None),
    });
    let entry = StreamEntry::Tcp {
        tx,
        shared: shared.clone(),
    };
    if let Err(e) = ctx.insert_stream(id, entry) {
        ctx.outbox.respond(id, Err(e));
        return;
    }
    let thread_ctx = ctx.clone();
    let thread_shared = shared.clone();
    let spawned = thread::Builder::new()
        .name(format!("tcp-{id}"))
        .stack_size(TCP_THREAD_STACK_BYTES)
        .spawn(move || run(&thread_ctx, &thread_shared, port, rx));
    if let Err(e) = spawned {
        ctx.remove_tcp(id, &shared);
        ctx.outbox
            .respond(id, Err(io_error("start a TCP stream thread", &e)));
    }
}

/// `tcp-N`: connect, answer, start the read side, then write host data.
fn run(ctx: &Arc<Ctx>, shared: &Arc<TcpShared>, port: u16, rx: Receiver<TcpMsg>) {
    let id = shared.id;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connected = TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .and_then(|sock| Ok((sock.try_clone()?, sock.try_clone()?, sock)));
    let (reader, control, sock) = match connected {
        Ok(socks) => socks,
        Err(e) => {
            ctx.remove_tcp(id, shared);
            ctx.outbox
                .respond(id, Err(io_error(format_args!("connect to {addr}"), &e)));
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    ctx.outbox.respond(id, Ok(Response::TcpConnect));
    {
        let mut slot = lock(&shared.socket);
        if shared.abandoned.load(Ordering::Acquire) {
            let _ = sock.shutdown(Shutdown::Both);
            return;
        }
        *slot = Some(control);
    }
    let rx_shared = shared.clone();
    let rx_ctx = ctx.clone();
    let started = thread::Builder::new()
        .name(format!("tcp-rx-{id}"))
        .stack_size(TCP_THREAD_STACK_BYTES)
        .spawn(move || read_side(&rx_ctx, &rx_shared, reader, addr));
    if let Err(e) = started {
        shared.fail(ctx, format!("cannot start a socket reader thread: {e}"));
        return;
    }
    write_side(ctx, shared, sock, addr, rx);
}

fn write_side(
    ctx: &Arc<Ctx>,
    shared: &Arc<TcpShared>,
    mut sock: TcpStream,
    addr: SocketAddr,
    rx: Receiver<TcpMsg>,
) {
    // Ends when the stream leaves the map (finished or abandoned).
    for msg in rx {
        if shared.abandoned.load(Ordering::Acquire) {
            break;
        }
        match msg {
            TcpMsg::Data(data) => {
                if let Err(e) = sock.write_all(&data) {
                    shared.fail(ctx, format!("write to {addr}: {e}"));
                    break;
                }
            }
            TcpMsg::Eof => {
                let _ = sock.shutdown(Shutdown::Write);
                shared.direction_done(ctx, false);
            }
        }
    }
}

fn read_side(ctx: &Arc<Ctx>, shared: &Arc<TcpShared>, mut sock: TcpStream, addr: SocketAddr) {
    let mut buf = vec![0u8; SOCKET_READ_BYTES];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => {
                shared.direction_done(ctx, true);
                return;
            }
            Ok(n) => {
                if !shared.data(&buf[..n]) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.fail(ctx, format!("read from {addr}: {e}"));
                return;
            }
        }
    }
}

impl TcpShared {
    fn live(&self, st: &TcpState) -> bool {
        !st.finished && !self.abandoned.load(Ordering::Acquire)
    }

    /// Forward socket bytes; false once the stream is over.
    fn data(&self, data: &[u8]) -> bool {
        let st = lock(&self.state);
        self.live(&st)
            && self.outbox.send(&GuestMessage::StreamData {
                stream: self.id,
                data: data.to_vec(),
            })
    }

    /// One direction reached EOF (`guest_side`: the socket's read side).
    fn direction_done(self: &Arc<Self>, ctx: &Ctx, guest_side: bool) {
        let mut st = lock(&self.state);
        if !self.live(&st) {
            return;
        }
        if guest_side {
            st.read_done = true;
            self.outbox
                .send(&GuestMessage::StreamEof { stream: self.id });
        } else {
            st.write_done = true;
        }
        if st.read_done && st.write_done {
            st.finished = true;
            self.outbox.send(&GuestMessage::StreamClosed {
                stream: self.id,
                reason: None,
            });
            drop(st);
            self.release(ctx);
        }
    }

    /// End the stream with an error.
    fn fail(self: &Arc<Self>, ctx: &Ctx, reason: String) {
        let mut st = lock(&self.state);
        if !self.live(&st) {
            return;
        }
        agent_log!("stream {}: {reason}", self.id);
        st.finished = true;
        self.outbox.send(&GuestMessage::StreamClosed {
            stream: self.id,
            reason: Some(reason),
        });
        drop(st);
        self.release(ctx);
    }

    /// Close the socket and leave the stream map (which ends `write_side`).
    fn release(self: &Arc<Self>, ctx: &Ctx) {
        if let Some(sock) = lock(&self.socket).take() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        ctx.remove_tcp(self.id, self);
    }

    /// Host `StreamClose` (reader thread; the entry already left the map).
    pub(crate) fn abandon(&self) {
        let mut slot = lock(&self.socket);
        self.abandoned.store(true, Ordering::Release);
        if let Some(sock) = slot.take() {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }
}
