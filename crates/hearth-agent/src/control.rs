//! The connection's lifecycle requests, handled inline on the reader
//! thread: `Hello`, `Quiesce`, `Thaw`, `Restore`, `Reattach`, `PowerOff`.
//!
//! `Restore` and `Reattach` start a new host connection: every open stream
//! of the old one ends ([`crate::stream::End`]: sockets shut down, terminals
//! of unnamed processes hung up, processes lose their stdin, named processes
//! detach), every frame still queued for the old connection is dropped
//! (`Outbox::new_connection`), the quiesce gate opens, and the answer lists
//! the streams that were ended. Nothing of those streams is sent afterwards.

use std::sync::Arc;
use std::time::Duration;

use hearth_proto::{
    capabilities, AgentErrorKind, AgentInfo, ClosedStream, Hello, Response, RestoreRequest,
    PROTO_VERSION,
};

use crate::agent_log;
use crate::errors::agent_error;
use crate::restore;
use crate::session::Session;
use crate::stream::{End, Stream};

/// How long `PowerOff` waits for its answer to be written before it stops
/// everything anyway.
const POWER_OFF_FLUSH_MS: u64 = 2000;

/// The boot `Hello`.
pub(crate) fn hello() -> Hello {
    Hello {
        proto_version: PROTO_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: kernel_release(),
        uptime_ms: uptime_ms(),
        capabilities: capabilities(),
    }
}

fn agent_info(closed_streams: Vec<ClosedStream>) -> AgentInfo {
    AgentInfo {
        proto_version: PROTO_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: capabilities(),
        closed_streams,
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

/// Every open stream, taken out of the table (no host message reaches
/// them any more) but not yet ended, and the list an answer gives of them.
pub(crate) struct TakenStreams {
    streams: Vec<Arc<dyn Stream>>,
    pub closed: Vec<ClosedStream>,
}

/// Take every open stream out of the table; [`TakenStreams::end`] them.
pub(crate) fn take_all_streams(session: &Session) -> TakenStreams {
    let (closed, streams) = session
        .streams
        .take_all()
        .into_iter()
        .map(|(stream, s)| {
            let closed = ClosedStream {
                stream,
                kind: s.kind(),
            };
            (closed, s)
        })
        .unzip();
    TakenStreams { streams, closed }
}

impl TakenStreams {
    /// End them: sockets shut down, terminals hung up, stdin closed,
    /// named processes detached.
    pub(crate) fn end(self, why: End) {
        for s in self.streams {
            s.end(why);
        }
    }
}

/// End every open stream; returns them (by id).
pub(crate) fn end_all_streams(session: &Session, why: End) -> Vec<ClosedStream> {
    let taken = take_all_streams(session);
    let closed = taken.closed.clone();
    taken.end(why);
    closed
}

/// `Quiesce`: sync, then make the answer the last frame written.
pub(crate) fn quiesce(session: &Session, id: u64, drop_caches: bool) {
    if let Err(e) = session.system.quiesce_filesystems(drop_caches) {
        agent_log!("quiesce: {e}");
    }
    session
        .outbox
        .respond_then_pause(id, Ok(Response::Quiesced));
}

/// `Thaw`: the same VM goes on; its streams too.
pub(crate) fn thaw(session: &Session, id: u64) {
    session.outbox.release();
    session.outbox.respond(id, Ok(Response::Thawed));
}

/// `Restore`: validate and apply clock, entropy and hostname; take the old
/// connection's streams out; answer; then end those streams and persist
/// the identity files, before the next request is read. (Ending streams
/// hangs up terminals and shuts sockets down: off the ready path, and
/// nothing they send reaches the new connection.)
pub(crate) fn restore(session: &Session, id: u64, req: &RestoreRequest) {
    match restore::apply(session.system.as_ref(), req) {
        Ok(()) => {
            let taken = take_all_streams(session);
            session.outbox.new_connection();
            session.outbox.release();
            session
                .outbox
                .respond(id, Ok(Response::Restored(agent_info(taken.closed.clone()))));
            taken.end(End::Restored);
            restore::persist_identity(session.system.as_ref(), req);
        }
        Err(e) => {
            // Always resume: even a failed restore must be able to answer.
            session.outbox.release();
            session.outbox.respond(id, Err(e));
        }
    }
}

/// `Reattach`: a new host connection to this running agent; the old
/// connection's streams are taken out before the answer and ended after.
pub(crate) fn reattach(session: &Session, id: u64) {
    let taken = take_all_streams(session);
    session.outbox.new_connection();
    session.outbox.release();
    session.outbox.respond(
        id,
        Ok(Response::Reattached(agent_info(taken.closed.clone()))),
    );
    taken.end(End::Reattached);
}

/// `PowerOff`: answer (and see the answer written), stop supervising, then
/// let the system stop every process, sync and power off.
pub(crate) fn power_off(session: &Arc<Session>, id: u64) {
    if !session.system.can_power_off() {
        session.outbox.respond(
            id,
            Err(agent_error(
                AgentErrorKind::Unsupported,
                "this agent is not PID 1 and cannot power the machine off",
            )),
        );
        return;
    }
    if !session.outbox.respond_and_flush(
        id,
        Ok(Response::PoweringOff),
        Duration::from_millis(POWER_OFF_FLUSH_MS),
    ) {
        agent_log!("power-off: the answer was not written in time; powering off anyway");
    }
    session.processes.stop_supervision_all();
    if let Err(e) = session.system.power_off() {
        agent_log!("power-off failed: {e}");
    }
}
