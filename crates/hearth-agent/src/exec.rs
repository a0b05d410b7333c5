//! Exec streams: processes, their pipes and their supervision.
//!
//! One `Exec` request makes one stream (named by the request id) and these
//! threads:
//!
//! * `exec-N`, the supervisor: starts the process (and, per the restart
//!   policy, its later incarnations), answers the request, sends `Started`
//!   and `Exited`, sleeps the restart back-off;
//! * `out-N` / `err-N` per incarnation: read a pipe in 64 KiB chunks and
//!   forward `Output`;
//! * `stdin-N` when stdin was asked for: writes host `StreamData` into the
//!   current incarnation's stdin.
//!
//! The supervisor learns of an exit from the reaper (an `Event` on its
//! bounded channel), then waits for both pipes to reach EOF, but at most
//! [`PIPE_GRACE_MS`] (a daemonised grandchild may hold them open), and only
//! then sends `Exited`, so `Exited` follows every byte the process wrote
//! before it exited. Time during which a pipe thread is blocked handing a
//! chunk to the writer (a quiesced or back-pressured channel) does not count
//! towards the grace period: otherwise a quiesce would let `Exited` overtake
//! (and, being final, drop) output the process wrote before it exited.
//! After the last `Exited` (or a host `StreamClose`) the stream's pipes are
//! still drained, but nothing more is sent for it.
//!
//! ```text
//!   spawn ─▶ running ──exit──▶ draining (<=200 ms) ──▶ Exited{restarting}
//!     ▲                                                    │ restarting
//!     └──────────── back-off 1 s, 2 s ... 30 s ◀───────────┘
//!                   (reset after 60 s of uptime)
//! ```
//!
//! Lock order: `ExecStream::proc` → reaper registry (spawn holds both);
//! `ExecStream::forward` and the stdin slot are leaves. The reader thread
//! never takes `forward` (a pipe thread may hold it while blocked on a
//! quiesced writer).

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hearth_proto::{
    AgentError, AgentErrorKind, ExecRequest, ExitStatus, GuestMessage, OutputFd, Response,
    RestartPolicy,
};

use crate::errors::{agent_error, invalid, io_error};
use crate::serve::{Ctx, StreamEntry};
use crate::spawn::{self, SpawnSpec, StdinMode};
use crate::writer::Outbox;
use crate::{agent_log, lock};

/// How long after an exit the supervisor waits for the pipes to reach EOF.
pub(crate) const PIPE_GRACE_MS: u64 = 200;
/// First restart delay.
const BACKOFF_START_MS: u64 = 1000;
/// Longest restart delay.
const BACKOFF_MAX_MS: u64 = 30_000;
/// An incarnation that ran this long resets the back-off.
const BACKOFF_RESET_UPTIME_MS: u64 = 60_000;
/// Read size for stdout/stderr.
const PIPE_READ_BYTES: usize = 64 * 1024;
/// Host stdin chunks queued per stream before the reader blocks.
const STDIN_QUEUE_CHUNKS: usize = 16;
/// Supervisor events queued (at most ~4 are ever outstanding).
const EVENT_QUEUE: usize = 16;
/// How often the supervisor re-checks the pipes during the grace period.
const GRACE_TICK_MS: u64 = 10;
/// Stack for pipe threads.
const PIPE_THREAD_STACK_BYTES: usize = 128 * 1024;

/// Host input for a process's stdin.
pub(crate) enum StdinMsg {
    Data(Vec<u8>),
    Eof,
}

enum Event {
    /// Incarnation `gen` exited (from the reaper).
    Exited { gen: u64, status: ExitStatus },
    /// One pipe of incarnation `gen` reached EOF.
    PipeDone { gen: u64 },
    /// Re-check the stream's state (the host closed it).
    Wake,
}

#[derive(Default)]
struct ProcState {
    /// The host sent `StreamClose`: kill, stop restarting, say nothing more.
    closed: bool,
    /// Pid (= process group id) of the current or last incarnation; 0 before the first.
    pgid: libc::pid_t,
    /// The current incarnation has not been reaped yet.
    running: bool,
}

/// Stdin write end of the current incarnation.
#[derive(Default)]
struct StdinSlot {
    inner: Mutex<StdinInner>,
}

#[derive(Default)]
struct StdinInner {
    pipe: Option<Arc<File>>,
    /// The host sent `StreamEof`: later incarnations get `/dev/null`.
    eof: bool,
}

/// One exec stream, shared by the reader (stdin, signals, close), the
/// supervisor and the pipe threads.
pub(crate) struct ExecStream {
    id: u64,
    outbox: Outbox,
    proc: Mutex<ProcState>,
    /// Mirror of `ProcState::closed`, readable without the lock.
    host_closed: AtomicBool,
    /// Whether output is still forwarded (false after the final `Exited`).
    forward: Mutex<bool>,
    events: SyncSender<Event>,
    stdin_tx: Option<SyncSender<StdinMsg>>,
    stdin: Arc<StdinSlot>,
}

enum Start {
    Running(spawn::Child),
    Failed(AgentError),
    Closed,
}

/// Handle `Exec` request `id` (reader thread). The response is sent by the
/// supervisor once the process started, or here on a validation error.
pub(crate) fn start(ctx: &Arc<Ctx>, id: u64, req: ExecRequest) {
    let spec = match SpawnSpec::prepare(&req, &ctx.etc_dir) {
        Ok(spec) => spec,
        Err(e) => {
            ctx.outbox.respond(id, Err(e));
            return;
        }
    };
    let (events, events_rx) = sync_channel(EVENT_QUEUE);
    let (stdin_tx, stdin_rx) = if req.stdin {
        let (tx, rx) = sync_channel(STDIN_QUEUE_CHUNKS);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let stream = Arc::new(ExecStream {
        id,
        outbox: ctx.outbox.clone(),
        proc: Mutex::new(ProcState::default()),
        host_closed: AtomicBool::new(false),
        forward: Mutex::new(true),
        events,
        stdin_tx,
        stdin: Arc::new(StdinSlot::default()),
    });
    if let Err(e) = ctx.insert_stream(id, StreamEntry::Exec(stream.clone())) {
        ctx.outbox.respond(id, Err(e));
        return;
    }
    let supervisor = Supervisor {
        ctx: ctx.clone(),
        stream: stream.clone(),
        spec,
        policy: req.restart,
        events: events_rx,
    };
    let spawned = thread::Builder::new()
        .name(format!("exec-{id}"))
        .spawn(move || supervisor.run(stdin_rx));
    if let Err(e) = spawned {
        ctx.remove_stream(id, &StreamEntry::Exec(stream));
        ctx.outbox
            .respond(id, Err(io_error("start a supervisor thread", &e)));
    }
}

impl ExecStream {
    /// The sender for host stdin data, if the stream has stdin.
    pub(crate) fn stdin_sender(&self) -> Option<SyncSender<StdinMsg>> {
        self.stdin_tx.clone()
    }

    /// Host `StreamClose` (reader thread): kill the process group, end
    /// supervision, send nothing more for this stream.
    pub(crate) fn close(&self) {
        self.host_closed.store(true, Ordering::Release);
        let mut st = lock(&self.proc);
        st.closed = true;
        if st.pgid > 0 {
            // SAFETY: kill takes plain integers and has no memory effects.
            unsafe { libc::kill(-st.pgid, libc::SIGKILL) };
        }
        drop(st);
        let _ = self.events.try_send(Event::Wake);
    }

    /// `Signal` request: signal the current incarnation's process group.
    pub(crate) fn signal(&self, signal: i32) -> Result<Response, AgentError> {
        if !(0..=64).contains(&signal) {
            return Err(invalid(format_args!("signal {signal} is out of range")));
        }
        let st = lock(&self.proc);
        if st.closed || !st.running {
            return Err(agent_error(
                AgentErrorKind::NotFound,
                format_args!("stream {} has no running process", self.id),
            ));
        }
        // SAFETY: kill takes plain integers and has no memory effects.
        if unsafe { libc::kill(-st.pgid, signal) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io_error(
                format_args!("kill process group {} with signal {signal}", st.pgid),
                &e,
            ));
        }
        Ok(Response::Signal)
    }

    fn is_closed(&self) -> bool {
        self.host_closed.load(Ordering::Acquire)
    }

    /// Forward output while the stream is live; otherwise drop it.
    fn output(&self, fd: OutputFd, data: &[u8]) {
        let forward = lock(&self.forward);
        if *forward && !self.is_closed() {
            self.outbox.send(&GuestMessage::Output {
                stream: self.id,
                fd,
                data: data.to_vec(),
            });
        }
    }

    /// Send a stream event (`Started`, `Exited`); `last` stops forwarding,
    /// so nothing follows the final `Exited`.
    fn control(&self, msg: GuestMessage, last: bool) {
        let mut forward = lock(&self.forward);
        if *forward && !self.is_closed() {
            self.outbox.send(&msg);
        }
        if last {
            *forward = false;
        }
    }

    /// Start incarnation `gen` unless the host closed the stream.
    fn start_incarnation(&self, spec: &SpawnSpec, gen: u64) -> Start {
        let mut st = lock(&self.proc);
        if st.closed {
            return Start::Closed;
        }
        let mut slot = lock(&self.stdin.inner);
        let stdin = if self.stdin_tx.is_some() && !slot.eof {
            StdinMode::Pipe
        } else {
            StdinMode::Null
        };
        let events = self.events.clone();
        let id = self.id;
        let on_exit = Box::new(move |status| {
            if events.try_send(Event::Exited { gen, status }).is_err() {
                agent_log!("stream {id}: exit status dropped (supervisor gone or queue full)");
            }
        });
        match spawn::spawn(spec, stdin, on_exit) {
            Ok(mut child) => {
                st.pgid = child.pid;
                st.running = true;
                slot.pipe = child.stdin.take().map(Arc::new);
                Start::Running(child)
            }
            Err(e) => Start::Failed(e),
        }
    }
}

struct Supervisor {
    ctx: Arc<Ctx>,
    stream: Arc<ExecStream>,
    spec: SpawnSpec,
    policy: RestartPolicy,
    events: Receiver<Event>,
}

impl Supervisor {
    fn run(self, stdin_rx: Option<Receiver<StdinMsg>>) {
        let id = self.stream.id;
        if let Some(rx) = stdin_rx {
            // The pump holds only the slot: holding the stream would keep
            // the stream's sender (and so the pump) alive forever.
            let slot = self.stream.stdin.clone();
            if let Err(e) = thread::Builder::new()
                .name(format!("stdin-{id}"))
                .stack_size(PIPE_THREAD_STACK_BYTES)
                .spawn(move || stdin_pump(&slot, rx))
            {
                agent_log!("stream {id}: no stdin thread ({e}); stdin data will be dropped");
            }
        }
        let mut gen: u64 = 0;
        let mut answered = false;
        let mut backoff = Duration::from_millis(BACKOFF_START_MS);
        loop {
            gen += 1;
            let started_at = Instant::now();
            let status = match self.stream.start_incarnation(&self.spec, gen) {
                Start::Closed => {
                    if !answered {
                        self.ctx.outbox.respond(
                            id,
                            Err(agent_error(
                                AgentErrorKind::Io,
                                format_args!(
                                    "stream {id} was closed before {} started",
                                    self.spec.argv0
                                ),
                            )),
                        );
                    }
                    break;
                }
                Start::Failed(e) if !answered => {
                    self.ctx.outbox.respond(id, Err(e));
                    break;
                }
                Start::Failed(e) => {
                    // No protocol message for "restart failed": tell the
                    // stream's reader on stderr and keep trying.
                    agent_log!("stream {id}: restart failed: {}", e.message);
                    let line = format!("hearth-agent: restart failed: {}\n", e.message);
                    self.stream.output(OutputFd::Stderr, line.as_bytes());
                    None
                }
                Start::Running(child) => {
                    let pid = child.pid as u32;
                    if answered {
                        self.stream
                            .control(GuestMessage::Started { stream: id, pid }, false);
                    } else {
                        self.ctx.outbox.respond(id, Ok(Response::Exec { pid }));
                        answered = true;
                    }
                    Some(self.run_incarnation(child, gen))
                }
            };
            if self.stream.is_closed() {
                break;
            }
            let failed = !matches!(status, Some(s) if s.success());
            let restart = match self.policy {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Always => true,
            };
            if let Some(status) = status {
                self.stream.control(
                    GuestMessage::Exited {
                        stream: id,
                        status,
                        restarting: restart,
                    },
                    !restart,
                );
            }
            if !restart {
                break;
            }
            if started_at.elapsed() >= Duration::from_millis(BACKOFF_RESET_UPTIME_MS) {
                backoff = Duration::from_millis(BACKOFF_START_MS);
            }
            if !self.sleep_unless_closed(backoff) {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
        }
        self.finish();
    }

    /// Forward the pipes of a running incarnation until it exits and its
    /// pipes drain (or the grace period ends); returns its status.
    fn run_incarnation(&self, child: spawn::Child, gen: u64) -> ExitStatus {
        let id = self.stream.id;
        let mut pipes_open = 0;
        // Pipe threads of this incarnation currently handing out a chunk.
        let sending = Arc::new(AtomicUsize::new(0));
        for (pipe, fd, name) in [
            (child.stdout, OutputFd::Stdout, "out"),
            (child.stderr, OutputFd::Stderr, "err"),
        ] {
            let stream = self.stream.clone();
            let sending = sending.clone();
            let started = thread::Builder::new()
                .name(format!("{name}-{id}"))
                .stack_size(PIPE_THREAD_STACK_BYTES)
                .spawn(move || output_pump(&stream, pipe, fd, gen, &sending));
            match started {
                Ok(_) => pipes_open += 1,
                Err(e) => agent_log!("stream {id}: no {name} pipe thread ({e}); output dropped"),
            }
        }
        let status = loop {
            match self.events.recv() {
                Ok(Event::Exited { gen: g, status }) if g == gen => break status,
                Ok(Event::PipeDone { gen: g }) if g == gen => pipes_open -= 1,
                Ok(_) => {}
                // Unreachable: the stream itself holds a sender.
                Err(_) => {
                    break ExitStatus {
                        code: None,
                        signal: None,
                    }
                }
            }
        };
        lock(&self.stream.proc).running = false;
        // Grace period, counting only time in which no pipe thread is
        // blocked on the writer.
        let grace = Duration::from_millis(PIPE_GRACE_MS);
        let mut unblocked = Duration::ZERO;
        let mut last = Instant::now();
        while pipes_open > 0 && unblocked < grace {
            let tick = Duration::from_millis(GRACE_TICK_MS).min(grace - unblocked);
            match self.events.recv_timeout(tick) {
                Ok(Event::PipeDone { gen: g }) if g == gen => pipes_open -= 1,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if sending.load(Ordering::Acquire) == 0 {
                unblocked += now - last;
            }
            last = now;
        }
        status
    }

    /// Sleep for `delay`; false if the host closed the stream meanwhile.
    fn sleep_unless_closed(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            if self.stream.is_closed() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.events.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return !self.stream.is_closed(),
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn finish(&self) {
        *lock(&self.stream.forward) = false;
        lock(&self.stream.stdin.inner).pipe = None;
        self.ctx
            .remove_stream(self.stream.id, &StreamEntry::Exec(self.stream.clone()));
    }
}

/// `out-N`/`err-N`: forward one pipe until EOF; keeps draining (and
/// dropping) after the stream ended so a grandchild never blocks on it.
fn output_pump(stream: &ExecStream, mut pipe: File, fd: OutputFd, gen: u64, sending: &AtomicUsize) {
    let mut buf = vec![0u8; PIPE_READ_BYTES];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                sending.fetch_add(1, Ordering::AcqRel);
                stream.output(fd, &buf[..n]);
                sending.fetch_sub(1, Ordering::AcqRel);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                agent_log!("stream {}: reading {fd:?} failed: {e}", stream.id);
                break;
            }
        }
    }
    let _ = stream.events.send(Event::PipeDone { gen });
}

/// `stdin-N`: write host data into the current incarnation's stdin.
fn stdin_pump(slot: &StdinSlot, rx: Receiver<StdinMsg>) {
    for msg in rx {
        match msg {
            StdinMsg::Data(data) => {
                let pipe = lock(&slot.inner).pipe.clone();
                // Without a pipe (between incarnations, after EOF) or when
                // the process stopped reading (EPIPE), the data is dropped.
                if let Some(pipe) = pipe {
                    let _ = (&*pipe).write_all(&data);
                }
            }
            StdinMsg::Eof => {
                let mut inner = lock(&slot.inner);
                inner.eof = true;
                inner.pipe = None;
            }
        }
    }
}
