//! TCP streams: a host-side connection to `127.0.0.1:<port>` in the guest.
//!
//! One `TcpConnect` request makes one stream (named by the request id) and
//! two threads: `tcp-N` connects (5 s timeout), answers the request and
//! then is the stream's input pump (host `StreamData` written to the socket,
//! credit returned as it is written, host EOF applied as `shutdown(Write)`);
//! `tcp-rx-N` reads the socket, at most as much as the stream's send credit
//! allows (it waits on a condvar for more), and sends `StreamData` and, at
//! the guest's EOF, `StreamEof`.
//!
//! ```text
//!   Connecting ─connected─▶ Open{guest_eof, host_eof} ─both─▶ Ended: StreamClosed{Done}
//!        │                          │ error: StreamClosed{Error}
//!        └─ connect failed: error response      └─ host close / restore: Ended, silently
//! ```
//!
//! Every frame of the stream is sent under its scope's send lock, and a
//! transition that says something is made while holding it, so the frames
//! follow the transitions in order and nothing follows `StreamClosed`. The
//! reader thread never takes that lock to end a stream (a socket thread may
//! hold it while blocked on the writer): it flips the state to `Ended`,
//! cancels the scope and shuts the socket down, which wakes both threads.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use hearth_proto::{CloseReason, GuestMessage, Response, StreamKind};

use crate::credit::SendCredit;
use crate::errors::{invalid, io_error};
use crate::inbox::{self, Inbox, InputTarget, PushError};
use crate::session::Session;
use crate::stream::{End, Registration, Stream, StreamTable};
use crate::writer::{Outbox, Scope, ScopeSender, Sent};
use crate::{agent_log, lock};

/// Connect timeout for `TcpConnect`.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 5000;
/// Largest single read from the guest socket.
const SOCKET_READ_BYTES: usize = 64 * 1024;
/// Stack for the socket threads.
const TCP_THREAD_STACK_BYTES: usize = 128 * 1024;

/// Where a TCP stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open { guest_eof: bool, host_eof: bool },
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpEvent {
    Connected,
    /// The socket's read side reached EOF.
    GuestEof,
    /// The host's EOF was applied (`shutdown(Write)`).
    HostEof,
    /// An I/O or protocol error.
    Failed,
    /// The host closed the stream, or a restore/reattach/session end.
    Abandoned,
}

/// What the host is told after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Say {
    Nothing,
    Eof,
    /// `StreamEof`, then `StreamClosed{Done}`.
    EofThenDone,
    Done,
    Error,
}

/// The one transition function.
fn step(phase: Phase, event: TcpEvent) -> (Phase, Say) {
    match (phase, event) {
        (Phase::Connecting, TcpEvent::Connected) => (
            Phase::Open {
                guest_eof: false,
                host_eof: false,
            },
            Say::Nothing,
        ),
        (Phase::Open { host_eof: true, .. }, TcpEvent::GuestEof) => {
            (Phase::Ended, Say::EofThenDone)
        }
        (Phase::Open { host_eof, .. }, TcpEvent::GuestEof) => (
            Phase::Open {
                guest_eof: true,
                host_eof,
            },
            Say::Eof,
        ),
        (
            Phase::Open {
                guest_eof: true, ..
            },
            TcpEvent::HostEof,
        ) => (Phase::Ended, Say::Done),
        (Phase::Open { guest_eof, .. }, TcpEvent::HostEof) => (
            Phase::Open {
                guest_eof,
                host_eof: true,
            },
            Say::Nothing,
        ),
        (Phase::Connecting | Phase::Open { .. }, TcpEvent::Failed) => (Phase::Ended, Say::Error),
        (_, TcpEvent::Abandoned) => (Phase::Ended, Say::Nothing),
        (Phase::Ended, _) => (Phase::Ended, Say::Nothing),
        (Phase::Connecting, TcpEvent::GuestEof | TcpEvent::HostEof) => (phase, Say::Nothing),
        (Phase::Open { .. }, TcpEvent::Connected) => (phase, Say::Nothing),
    }
}

struct State {
    phase: Phase,
    credit: SendCredit,
}

/// One TCP stream, shared by the reader and the two socket threads.
pub(crate) struct TcpShared {
    id: u64,
    outbox: Outbox,
    scope: Arc<Scope>,
    inbox: Arc<Inbox>,
    registration: Registration,
    streams: Arc<StreamTable>,
    state: Mutex<State>,
    /// Signalled on credit and on the end of the stream.
    changed: Condvar,
    /// A handle for shutting the socket down from another thread.
    socket: Mutex<Option<TcpStream>>,
}

/// Handle `TcpConnect` request `id` (reader thread).
pub(crate) fn start(session: &Arc<Session>, id: u64, port: u16) {
    if port == 0 {
        session
            .outbox
            .respond(id, Err(invalid("TCP port 0 is not valid")));
        return;
    }
    let inbox = match Inbox::new() {
        Ok(inbox) => inbox,
        Err(e) => {
            session
                .outbox
                .respond(id, Err(io_error("create a stream input queue", &e)));
            return;
        }
    };
    let inserted = session.streams.insert_with(id, |registration| {
        Arc::new(TcpShared {
            id,
            outbox: session.outbox.clone(),
            scope: session.outbox.scope(),
            inbox,
            registration,
            streams: session.streams.clone(),
            state: Mutex::new(State {
                phase: Phase::Connecting,
                credit: SendCredit::new(),
            }),
            changed: Condvar::new(),
            socket: Mutex::new(None),
        })
    });
    let shared = match inserted {
        Ok(shared) => shared,
        Err(e) => {
            session.outbox.respond(id, Err(e));
            return;
        }
    };
    let thread_shared = shared.clone();
    let spawned = thread::Builder::new()
        .name(format!("tcp-{id}"))
        .stack_size(TCP_THREAD_STACK_BYTES)
        .spawn(move || run(&thread_shared, port));
    if let Err(e) = spawned {
        shared.streams.remove(&shared.registration);
        session
            .outbox
            .respond(id, Err(io_error("start a TCP stream thread", &e)));
    }
}

/// `tcp-N`: connect, answer, start the read side, then pump host input.
fn run(shared: &Arc<TcpShared>, port: u16) {
    let id = shared.id;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connected = TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .and_then(|sock| Ok((sock.try_clone()?, sock.try_clone()?, sock)));
    let (reader, control, sock) = match connected {
        Ok(socks) => socks,
        Err(e) => {
            shared.streams.remove(&shared.registration);
            shared.inbox.close();
            lock(&shared.state).phase = Phase::Ended;
            shared
                .scope
                .lock(&shared.outbox)
                .respond_last(id, Err(io_error(format_args!("connect to {addr}"), &e)));
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    {
        let mut slot = lock(&shared.socket);
        if lock(&shared.state).phase == Phase::Ended {
            // Abandoned while connecting.
            let _ = sock.shutdown(Shutdown::Both);
            return;
        }
        *slot = Some(control);
    }
    {
        let mut sender = shared.scope.lock(&shared.outbox);
        sender.respond(id, Ok(Response::TcpConnect));
        shared.transition(&mut sender, TcpEvent::Connected, None);
    }
    let rx_shared = shared.clone();
    let started = thread::Builder::new()
        .name(format!("tcp-rx-{id}"))
        .stack_size(TCP_THREAD_STACK_BYTES)
        .spawn(move || read_side(&rx_shared, reader, addr));
    if let Err(e) = started {
        shared.fail(format!("cannot start a socket reader thread: {e}"));
        return;
    }
    let target = TcpInput {
        shared: shared.clone(),
        fd: Arc::new(OwnedFd::from(sock)),
        addr,
    };
    inbox::pump(&shared.inbox, &target);
}

/// `tcp-rx-N`: socket bytes to the host, within the stream's credit.
fn read_side(shared: &Arc<TcpShared>, mut sock: TcpStream, addr: SocketAddr) {
    let mut buf = vec![0u8; SOCKET_READ_BYTES];
    loop {
        let Some(limit) = shared.reserve() else {
            return;
        };
        let n = match sock.read(&mut buf[..limit]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                shared.settle(limit, 0);
                continue;
            }
            Err(e) => {
                shared.settle(limit, 0);
                shared.fail(format!("read from {addr}: {e}"));
                return;
            }
        };
        shared.settle(limit, n);
        let mut sender = shared.scope.lock(&shared.outbox);
        if n == 0 {
            shared.transition(&mut sender, TcpEvent::GuestEof, None);
            return;
        }
        let msg = GuestMessage::StreamData {
            stream: shared.id,
            data: buf[..n].to_vec(),
        };
        if sender.send(&msg) != Sent::Queued {
            return;
        }
    }
}

impl TcpShared {
    /// Make a transition while holding the stream's send lock, say what it
    /// calls for, and clean up when the stream ended.
    fn transition(&self, sender: &mut ScopeSender<'_>, event: TcpEvent, error: Option<String>) {
        let (ended, say) = {
            let mut st = lock(&self.state);
            let was_live = st.phase != Phase::Ended;
            let (phase, say) = step(st.phase, event);
            st.phase = phase;
            self.changed.notify_all();
            (was_live && phase == Phase::Ended, say)
        };
        let eof = GuestMessage::StreamEof { stream: self.id };
        let closed = |reason| GuestMessage::StreamClosed {
            stream: self.id,
            reason,
        };
        match say {
            Say::Nothing => {}
            Say::Eof => {
                sender.send(&eof);
            }
            Say::EofThenDone => {
                sender.send(&eof);
                sender.send_last(&closed(CloseReason::Done));
            }
            Say::Done => {
                sender.send_last(&closed(CloseReason::Done));
            }
            Say::Error => {
                let reason = error.unwrap_or_else(|| String::from("stream failed"));
                agent_log!("stream {}: {reason}", self.id);
                sender.send_last(&closed(CloseReason::Error(reason)));
            }
        }
        if ended {
            self.release();
        }
    }

    /// End the stream with an error.
    fn fail(&self, reason: String) {
        let mut sender = self.scope.lock(&self.outbox);
        self.transition(&mut sender, TcpEvent::Failed, Some(reason));
    }

    /// Shut the socket down and leave the table.
    fn release(&self) {
        if let Some(sock) = lock(&self.socket).take() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        self.inbox.close();
        self.streams.remove(&self.registration);
    }

    /// Credit for one read; waits while there is none. `None` once ended.
    fn reserve(&self) -> Option<usize> {
        let mut st = lock(&self.state);
        loop {
            if st.phase == Phase::Ended {
                return None;
            }
            let n = st.credit.reserve(SOCKET_READ_BYTES);
            if n > 0 {
                return Some(n);
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn settle(&self, reserved_bytes: usize, used_bytes: usize) {
        lock(&self.state).credit.settle(reserved_bytes, used_bytes);
    }
}

impl Stream for TcpShared {
    fn kind(&self) -> StreamKind {
        StreamKind::Tcp
    }

    fn data(&self, data: Vec<u8>) {
        match self.inbox.push(data) {
            Ok(()) | Err(PushError::Closed) => {}
            Err(PushError::Exceeded(e)) => self.fail(e.to_string()),
            Err(PushError::AfterEof) => {
                agent_log!("stream {}: data after the host's EOF dropped", self.id)
            }
        }
    }

    fn eof(&self) {
        self.inbox.push_eof();
    }

    fn credit(&self, bytes: u32) {
        let mut st = lock(&self.state);
        if !st.credit.grant(bytes) {
            agent_log!(
                "stream {}: the host returned more credit than the window; capped",
                self.id
            );
        }
        self.changed.notify_all();
    }

    fn end(&self, _why: End) {
        {
            let mut st = lock(&self.state);
            st.phase = step(st.phase, TcpEvent::Abandoned).0;
            self.changed.notify_all();
        }
        self.scope.cancel();
        self.release();
    }
}

/// The socket as the target of the stream's input pump.
struct TcpInput {
    shared: Arc<TcpShared>,
    fd: Arc<OwnedFd>,
    addr: SocketAddr,
}

impl InputTarget for TcpInput {
    fn fd(&self) -> Option<Arc<OwnedFd>> {
        Some(self.fd.clone())
    }

    fn write_failed(&self, error: &io::Error) -> bool {
        self.shared.fail(format!("write to {}: {error}", self.addr));
        false
    }

    fn credit(&self, bytes: u32) {
        self.shared
            .scope
            .lock(&self.shared.outbox)
            .send(&GuestMessage::StreamCredit {
                stream: self.shared.id,
                bytes,
            });
    }

    fn eof(&self) {
        if let Some(sock) = lock(&self.shared.socket).as_ref() {
            let _ = sock.shutdown(Shutdown::Write);
        }
        let mut sender = self.shared.scope.lock(&self.shared.outbox);
        self.shared.transition(&mut sender, TcpEvent::HostEof, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_eofs_end_the_stream_once() {
        let (open, say) = step(Phase::Connecting, TcpEvent::Connected);
        assert_eq!(say, Say::Nothing);
        let (p, say) = step(open, TcpEvent::GuestEof);
        assert_eq!(say, Say::Eof);
        let (p, say) = step(p, TcpEvent::HostEof);
        assert_eq!((p, say), (Phase::Ended, Say::Done));
        // The other order.
        let (p, say) = step(open, TcpEvent::HostEof);
        assert_eq!(say, Say::Nothing);
        let (p, say) = step(p, TcpEvent::GuestEof);
        assert_eq!((p, say), (Phase::Ended, Say::EofThenDone));
        // Nothing after the end.
        for e in [
            TcpEvent::GuestEof,
            TcpEvent::HostEof,
            TcpEvent::Failed,
            TcpEvent::Abandoned,
        ] {
            assert_eq!(step(Phase::Ended, e), (Phase::Ended, Say::Nothing));
        }
    }

    #[test]
    fn errors_and_abandon_end_any_live_stream() {
        assert_eq!(
            step(Phase::Connecting, TcpEvent::Failed),
            (Phase::Ended, Say::Error)
        );
        let open = Phase::Open {
            guest_eof: true,
            host_eof: false,
        };
        assert_eq!(step(open, TcpEvent::Failed), (Phase::Ended, Say::Error));
        assert_eq!(
            step(open, TcpEvent::Abandoned),
            (Phase::Ended, Say::Nothing)
        );
        assert_eq!(
            step(Phase::Connecting, TcpEvent::Abandoned),
            (Phase::Ended, Say::Nothing)
        );
    }
}
