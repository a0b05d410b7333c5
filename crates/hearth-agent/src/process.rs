//! Supervised processes: incarnations, their output and input pumps, the
//! routes to host streams, and the per-session registry of processes.
//!
//! One `Exec` request makes one [`Process`] and these threads:
//!
//! * `exec-N`, the supervisor: starts the process (and, per the restart
//!   policy, its later incarnations), answers the request, sends `Started`
//!   and `Exited`, sleeps the restart back-off;
//! * `out-N` per incarnation: polls stdout and stderr (or the PTY master)
//!   and delivers what it reads to the process's [`Sink`]: on a live route
//!   only as much as the route's credit allows (it waits on a condvar for
//!   more, which blocks nothing else), into the ring while a named process
//!   is detached, nowhere when nobody will ever want it;
//! * `in-N` per route that takes input (see `exec.rs`, `attach.rs`): writes
//!   host data into the current stdin pipe or PTY master ([`ProcessInput`]).
//!
//! The supervisor learns of an exit from the reaper (an `Event` on its
//! bounded channel), then waits for the output pump to reach EOF, but at
//! most [`PIPE_GRACE_MS`] (a daemonised grandchild may hold the pipes or the
//! terminal open), and only then sends `Exited`, so `Exited` follows every
//! byte the process wrote before it exited. Time during which the pump waits
//! for the host (for credit, or for a full or quiesced writer) does not
//! count towards the grace period: otherwise a stalled host would let
//! `Exited` overtake (and, being final, drop) output written before the exit.
//!
//! ```text
//!   Starting ─spawn─▶ Running ──exit──▶ Draining (<=200 ms) ──▶ Exited{restarting}
//!      │                ▲                                           │ restarting
//!      │                └─────── BackOff 1 s, 2 s ... 30 s ◀────────┘
//!      └─ first spawn fails / stop ─▶ Ended ◀── no restart / stop (reset after 60 s of uptime)
//! ```
//!
//! Routes: output goes to the `Exec` stream that started the process, or
//! to the last `Attach` stream ([`Sink`]). When a route ends without the
//! process ending (restore, reattach, host closing an attach stream) a
//! named process keeps running and supervised, its output kept in a ring;
//! an unnamed one keeps running too but is not restarted and its output is
//! dropped. Whenever the `Exec` route ends, a pipe process loses its stdin
//! (EOF). A PTY process keeps its terminal while it is named (an `Attach`
//! can type into it again); an unnamed one is hung up (its master closed).
//! A host `StreamClose` of the `Exec` stream kills the process group and
//! ends supervision.
//!
//! Locks: `state` is never held across a blocking call (spawn, a send, a
//! read or write). Order: a scope's send lock may be taken *before* `state`
//! (by `attach`, on a brand-new scope), never while holding it; the
//! registry lock before `state`. The reaper callback only `try_send`s.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use hearth_proto::{
    AgentError, AgentErrorKind, CloseReason, ExitStatus, GuestMessage, OutputFd, PtySize, Response,
    RestartPolicy, MAX_CHUNK_BYTES,
};

use crate::credit::SendCredit;
use crate::errors::{agent_error, invalid, io_error};
use crate::fdio::{self, Waker};
use crate::inbox::{self, Inbox, InputTarget};
use crate::pty;
use crate::sink::{Effects, Route, Sink, SinkEvent};
use crate::spawn::{self, ChildIo, SpawnSpec, Stdio};
use crate::stream::{Registration, StreamTable};
use crate::writer::{Outbox, Scope, Sent};
use crate::{agent_log, lock};

/// How long after an exit the supervisor waits for the output to reach EOF.
pub(crate) const PIPE_GRACE_MS: u64 = 200;
/// First restart delay.
const BACKOFF_START_MS: u64 = 1000;
/// Longest restart delay.
const BACKOFF_MAX_MS: u64 = 30_000;
/// An incarnation that ran this long resets the back-off.
const BACKOFF_RESET_UPTIME_MS: u64 = 60_000;
/// Largest single read of a process's output (<= MAX_CHUNK_BYTES).
const OUTPUT_READ_BYTES: usize = 64 * 1024;
/// Supervisor events queued (at most ~4 are ever outstanding).
const EVENT_QUEUE: usize = 16;
/// How often the supervisor re-checks the pump during the grace period.
const GRACE_TICK_MS: u64 = 10;
/// Longest wait of a pump that found its route's scope already ended
/// (the route's owner is about to change the sink).
const RECHECK_MS: u64 = 10;
/// Stack for pump threads.
pub(crate) const PUMP_THREAD_STACK_BYTES: usize = 128 * 1024;

const _: () = assert!(OUTPUT_READ_BYTES <= MAX_CHUNK_BYTES);

pub(crate) enum Event {
    /// Incarnation `gen` exited (from the reaper).
    Exited { gen: u64, status: ExitStatus },
    /// The output pump of incarnation `gen` reached EOF.
    PumpDone { gen: u64 },
    /// Re-check `stop`.
    Wake,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// The first incarnation has not been spawned yet.
    Starting,
    Running {
        gen: u64,
        pid: libc::pid_t,
    },
    /// Exited; its output is being drained before `Exited` is sent.
    Draining {
        gen: u64,
        pid: libc::pid_t,
        status: ExitStatus,
    },
    /// Waiting to restart after the exit of `pid`.
    BackOff {
        pid: libc::pid_t,
        status: ExitStatus,
    },
    /// Ended for good (`None`: it never ran).
    Ended {
        status: Option<ExitStatus>,
    },
}

#[derive(Debug, Clone, Copy)]
enum LifeEvent {
    Spawned { gen: u64, pid: libc::pid_t },
    SpawnFailed,
    Exited { status: ExitStatus },
    Drained { restart: bool },
    Stopped,
}

impl Life {
    /// The one transition function; events that do not apply are ignored.
    fn step(self, event: LifeEvent) -> Life {
        match (self, event) {
            (Life::Starting | Life::BackOff { .. }, LifeEvent::Spawned { gen, pid }) => {
                Life::Running { gen, pid }
            }
            (Life::Starting, LifeEvent::SpawnFailed | LifeEvent::Stopped) => {
                Life::Ended { status: None }
            }
            (Life::Running { gen, pid }, LifeEvent::Exited { status }) => {
                Life::Draining { gen, pid, status }
            }
            (Life::Draining { pid, status, .. }, LifeEvent::Drained { restart: true }) => {
                Life::BackOff { pid, status }
            }
            (Life::Draining { status, .. }, LifeEvent::Drained { restart: false }) => Life::Ended {
                status: Some(status),
            },
            (Life::BackOff { status, .. }, LifeEvent::Stopped) => Life::Ended {
                status: Some(status),
            },
            (life, _) => life,
        }
    }
}

/// How a route ends (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteEnd {
    /// The stream ends, the process goes on.
    Detach,
    /// The host closed the `Exec` stream: kill the process, stop supervising.
    Kill,
}

struct State {
    life: Life,
    /// The `Exec` answer is being queued (set under the exec stream's send
    /// lock): only then may an `Attach` replace that stream, which seals it
    /// (its `Replaced` waits for that lock, so it follows the answer).
    answered: bool,
    /// Supervision ends after the current incarnation.
    stop: bool,
    sink: Sink,
    /// Write end of the current incarnation's stdin pipe, or its PTY master.
    input: Option<Arc<OwnedFd>>,
    /// Pipe processes: whether the next incarnation gets a stdin pipe.
    stdin_open: bool,
    /// PTY processes: the terminal size (also for later incarnations).
    pty_size: Option<PtySize>,
    /// Wakes the PTY output pump of the current incarnation.
    pump_waker: Option<Arc<Waker>>,
    /// The terminal was hung up: the PTY pump drops the master.
    hung_up: bool,
}

/// What [`Process::new`] needs.
pub(crate) struct ProcessSpec {
    /// The `Exec` request id (the first route's stream).
    pub origin: u64,
    pub name: Option<String>,
    pub spec: SpawnSpec,
    pub policy: RestartPolicy,
    pub stdin: bool,
    pub pty: Option<PtySize>,
}

/// One supervised process (all its incarnations).
pub(crate) struct Process {
    origin: u64,
    name: Option<String>,
    spec: SpawnSpec,
    policy: RestartPolicy,
    stdin: bool,
    pty: bool,
    /// Scope of the `Exec` stream (its response goes there).
    exec_scope: Arc<Scope>,
    outbox: Outbox,
    streams: Arc<StreamTable>,
    registry: Weak<Processes>,
    state: Mutex<State>,
    /// Signalled on every change of `state` (pumps waiting for credit).
    changed: Condvar,
    events: SyncSender<Event>,
}

/// The result of one spawn attempt.
enum Start {
    Running(Incarnation),
    Failed(AgentError),
    Stopped,
}

struct Incarnation {
    pid: libc::pid_t,
    fds: PumpFds,
}

/// What the output pump of an incarnation reads.
enum PumpFds {
    Pipes {
        stdout: File,
        stderr: File,
    },
    Pty {
        master: Arc<OwnedFd>,
        waker: Arc<Waker>,
    },
}

/// Credit reserved for one read.
struct Limit {
    bytes: usize,
    /// The route the credit came from (`None`: no route, no credit needed).
    from: Option<Arc<Scope>>,
}

/// Counts a pump's time spent waiting for the host while alive.
struct Blocked<'a> {
    count: &'a AtomicUsize,
}

impl<'a> Blocked<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Blocked { count }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Process {
    /// A process whose first route is the `Exec` stream `route`; returns
    /// it with the supervisor's event receiver (for [`Process::supervise`]).
    pub(crate) fn new(
        spec: ProcessSpec,
        route: Route,
        outbox: Outbox,
        streams: Arc<StreamTable>,
        registry: &Arc<Processes>,
    ) -> (Arc<Process>, Receiver<Event>) {
        let (events, events_rx) = sync_channel(EVENT_QUEUE);
        let process = Arc::new(Process {
            origin: spec.origin,
            name: spec.name,
            spec: spec.spec,
            policy: spec.policy,
            stdin: spec.stdin,
            pty: spec.pty.is_some(),
            exec_scope: route.scope.clone(),
            outbox,
            streams,
            registry: Arc::downgrade(registry),
            state: Mutex::new(State {
                life: Life::Starting,
                answered: false,
                stop: false,
                sink: Sink::Live(route),
                input: None,
                stdin_open: true,
                pty_size: spec.pty,
                pump_waker: None,
                hung_up: false,
            }),
            changed: Condvar::new(),
            events,
        });
        (process, events_rx)
    }

    fn named(&self) -> bool {
        self.name.is_some()
    }

    pub(crate) fn is_pty(&self) -> bool {
        self.pty
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(st)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Apply a sink transition under the state lock.
    fn sink_step(&self, st: &mut State, event: SinkEvent<'_>) -> Effects {
        let sink = std::mem::replace(&mut st.sink, Sink::Dropping);
        let (sink, fx) = sink.step(self.named(), event);
        st.sink = sink;
        self.changed.notify_all();
        fx
    }

    /// Whether the process ended for good (its name may be reused).
    pub(crate) fn has_ended(&self) -> bool {
        matches!(self.state().life, Life::Ended { .. })
    }

    fn never_ran(&self) -> bool {
        matches!(self.state().life, Life::Ended { status: None })
    }

    /// Start the supervisor thread.
    pub(crate) fn start_supervisor(
        self: &Arc<Self>,
        events: Receiver<Event>,
    ) -> io::Result<thread::JoinHandle<()>> {
        let process = self.clone();
        thread::Builder::new()
            .name(format!("exec-{}", self.origin))
            .spawn(move || process.supervise(events))
    }

    // ----- requests and stream messages (reader thread) -----

    /// Host credit for the route with `scope`.
    pub(crate) fn credit(&self, scope: &Arc<Scope>, bytes: u32) {
        let mut st = self.state();
        if let Some(route) = st.sink.route_mut(scope) {
            if !route.credit.grant(bytes) {
                agent_log!(
                    "stream {}: the host returned more credit than the window; capped",
                    route.stream
                );
            }
            self.changed.notify_all();
        }
    }

    /// `Signal`: signal the current incarnation's process group.
    pub(crate) fn signal(&self, stream: u64, signal: i32) -> Result<Response, AgentError> {
        if !(0..=64).contains(&signal) {
            return Err(invalid(format_args!("signal {signal} is out of range")));
        }
        let st = self.state();
        let pid = match st.life {
            Life::Running { pid, .. } => pid,
            _ => {
                return Err(agent_error(
                    AgentErrorKind::NotFound,
                    format_args!("stream {stream} has no running process"),
                ))
            }
        };
        // SAFETY: kill takes plain integers and has no memory effects.
        if unsafe { libc::kill(-pid, signal) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io_error(
                format_args!("kill process group {pid} with signal {signal}"),
                &e,
            ));
        }
        Ok(Response::Signal)
    }

    /// `Resize`: set the terminal size (now and for later incarnations).
    pub(crate) fn resize(&self, stream: u64, size: PtySize) -> Result<Response, AgentError> {
        if !self.pty {
            return Err(invalid(format_args!(
                "stream {stream} is not a terminal (the process was started without pty)"
            )));
        }
        if size.cols == 0 || size.rows == 0 {
            return Err(invalid(format_args!(
                "terminal size {}x{} has a zero dimension",
                size.cols, size.rows
            )));
        }
        let mut st = self.state();
        st.pty_size = Some(size);
        if let Some(master) = st.input.clone() {
            pty::set_size(master.as_fd(), size)
                .map_err(|e| io_error("set the terminal size (TIOCSWINSZ)", &e))?;
        }
        Ok(Response::Resized)
    }

    /// The route with `scope` ended (see [`RouteEnd`]). Its owner cancels
    /// or seals the scope *after* this, so a pump never finds a live route
    /// whose frames would all be dropped.
    pub(crate) fn route_ended(&self, scope: &Arc<Scope>, how: RouteEnd) {
        let mut st = self.state();
        let fx = self.sink_step(&mut st, SinkEvent::Detach(scope));
        let Some(route) = fx.displaced else {
            // Not the live route (already replaced, or the process ended).
            return;
        };
        match how {
            RouteEnd::Kill => {
                st.stop = true;
                if let Life::Running { pid, .. } = st.life {
                    // SAFETY: kill takes plain integers and has no memory effects.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
            RouteEnd::Detach if !self.named() => st.stop = true,
            RouteEnd::Detach => {}
        }
        self.route_lost_locked(&mut st, &route);
        drop(st);
        if let Some(inbox) = &route.inbox {
            inbox.close();
        }
        let _ = self.events.try_send(Event::Wake);
    }

    /// What happens to the process's input when `route` stops being its
    /// route: the `Exec` route owns a pipe process's stdin; a PTY that
    /// nobody can reach any more is hung up.
    fn route_lost_locked(&self, st: &mut State, route: &Route) {
        if !self.pty && route.is(&self.exec_scope) {
            st.stdin_open = false;
            st.input = None;
        }
        if self.pty && st.stop {
            Self::hang_up_locked(st);
        }
    }

    fn hang_up_locked(st: &mut State) {
        st.hung_up = true;
        st.input = None;
        if let Some(waker) = &st.pump_waker {
            waker.wake();
        }
    }

    fn not_started(&self) -> AgentError {
        agent_error(
            AgentErrorKind::NotFound,
            format_args!(
                "process {} has not started yet",
                self.name.as_deref().unwrap_or("")
            ),
        )
    }

    /// `Attach`: make the stream `stream` (with `scope`, `inbox` and
    /// `registration`) the process's route. Answers the request, replays the
    /// output kept while detached (and the last exit, if the process is
    /// between incarnations or ended), then live output follows. Returns
    /// whether the route stays open (false: the process has ended).
    pub(crate) fn attach(
        &self,
        stream: u64,
        scope: &Arc<Scope>,
        inbox: Option<Arc<Inbox>>,
        registration: Registration,
    ) -> Result<bool, AgentError> {
        // A brand-new scope: uncontended. Held until the replay is queued,
        // so live output (which must take it too) comes after the replay.
        let mut sender = scope.lock(&self.outbox);
        let mut st = self.state();
        let (pid, replay_exit) = match st.life {
            Life::Starting => return Err(self.not_started()),
            _ if !st.answered => return Err(self.not_started()),
            Life::Running { pid, .. } | Life::Draining { pid, .. } => (Some(pid as u32), None),
            Life::BackOff { pid, status } => (Some(pid as u32), Some((status, true))),
            Life::Ended { status } => (None, status.map(|s| (s, false))),
        };
        let route = Route {
            stream,
            scope: scope.clone(),
            credit: SendCredit::new(),
            inbox,
            registration,
        };
        let fx = self.sink_step(&mut st, SinkEvent::Attach(route));
        let replay_bytes: usize = fx.replay.iter().map(|(_, d)| d.len()).sum();
        if let Some(route) = st.sink.route_mut(scope) {
            // Always fits: the ring is smaller than a window (ring.rs).
            route.credit.take(replay_bytes);
        }
        if let Some(old) = &fx.displaced {
            self.route_lost_locked(&mut st, old);
        }
        drop(st);

        if let Some(old) = fx.displaced {
            old.scope
                .lock(&self.outbox)
                .send_last(&GuestMessage::StreamClosed {
                    stream: old.stream,
                    reason: CloseReason::Replaced,
                });
            if let Some(inbox) = &old.inbox {
                inbox.close();
            }
            self.streams.remove(&old.registration);
        }
        sender.respond(stream, Ok(Response::Attached { pid }));
        for (fd, data) in fx.replay {
            for chunk in data.chunks(MAX_CHUNK_BYTES) {
                sender.send(&GuestMessage::Output {
                    stream,
                    fd,
                    data: chunk.to_vec(),
                });
            }
        }
        if let Some((status, restarting)) = replay_exit {
            let exited = GuestMessage::Exited {
                stream,
                status,
                restarting,
            };
            if restarting {
                sender.send(&exited);
            } else {
                sender.send_last(&exited);
            }
        }
        match fx.finished {
            Some(route) => {
                sender.send_last(&GuestMessage::StreamClosed {
                    stream,
                    reason: CloseReason::Done,
                });
                if let Some(inbox) = &route.inbox {
                    inbox.close();
                }
                self.streams.remove(&route.registration);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// The session is over: kill the process, stop supervising, drop its
    /// output and input.
    pub(crate) fn shutdown(&self) {
        let mut st = self.state();
        st.stop = true;
        if let Life::Running { pid, .. } = st.life {
            // SAFETY: kill takes plain integers and has no memory effects.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let fx = self.sink_step(&mut st, SinkEvent::Abandon);
        st.stdin_open = false;
        Self::hang_up_locked(&mut st);
        drop(st);
        if let Some(route) = fx.displaced {
            route.scope.cancel();
            if let Some(inbox) = &route.inbox {
                inbox.close();
            }
            self.streams.remove(&route.registration);
        }
        let _ = self.events.try_send(Event::Wake);
    }

    /// Power-off: no more restarts (the processes are about to be killed).
    pub(crate) fn stop_supervision(&self) {
        self.state().stop = true;
        self.changed.notify_all();
        let _ = self.events.try_send(Event::Wake);
    }

    // ----- input (the `in-N` pump threads) -----

    /// The fd host input of the route with `scope` goes to now.
    fn input_fd(&self, scope: &Arc<Scope>) -> Option<Arc<OwnedFd>> {
        let mut st = self.state();
        st.sink.route_mut(scope)?;
        st.input.clone()
    }

    /// Host EOF on the route with `scope`: close a pipe process's stdin
    /// (this and later incarnations), or type the terminal's EOF character.
    fn input_eof(&self, scope: &Arc<Scope>, inbox: &Inbox) {
        if !self.pty {
            let mut st = self.state();
            if st.sink.route_mut(scope).is_some() {
                st.stdin_open = false;
                st.input = None;
            }
            return;
        }
        let Some(master) = self.input_fd(scope) else {
            return;
        };
        let eof = [pty::eof_char(master.as_fd())];
        let same = || !inbox.is_closed();
        if let fdio::WriteEnd::Failed { error, .. } =
            fdio::write_all(master.as_fd(), &eof, inbox.waker(), &same)
        {
            agent_log!("process {}: cannot type EOF: {error}", self.origin);
        }
    }

    // ----- supervision (the `exec-N` thread) -----

    fn supervise(self: Arc<Self>, events: Receiver<Event>) {
        let id = self.origin;
        let mut gen: u64 = 0;
        let mut answered = false;
        let mut backoff = Duration::from_millis(BACKOFF_START_MS);
        loop {
            gen += 1;
            let started_at = Instant::now();
            let status = match self.start_incarnation(gen) {
                Start::Stopped => {
                    if !answered {
                        self.exec_scope.lock(&self.outbox).respond_last(
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
                    self.state().life = Life::Starting.step(LifeEvent::SpawnFailed);
                    self.exec_scope.lock(&self.outbox).respond_last(id, Err(e));
                    break;
                }
                Start::Failed(e) => {
                    // No protocol message for "restart failed": tell the
                    // stream's reader on stderr and keep trying.
                    agent_log!("process {id}: restart failed: {}", e.message);
                    let line = format!("hearth-agent: restart failed: {}\n", e.message);
                    let blocked = AtomicUsize::new(0);
                    let limit = Limit {
                        bytes: 0,
                        from: None,
                    };
                    self.deliver(OutputFd::Stderr, line.as_bytes(), limit, &blocked);
                    None
                }
                Start::Running(incarnation) => {
                    let pid = incarnation.pid as u32;
                    if answered {
                        self.started(pid);
                    } else {
                        // Marked under the stream's send lock: an Attach that
                        // sees it replaces the stream only after the answer.
                        let mut sender = self.exec_scope.lock(&self.outbox);
                        self.state().answered = true;
                        sender.respond(id, Ok(Response::Exec { pid }));
                        drop(sender);
                        answered = true;
                    }
                    Some(self.run_incarnation(incarnation, gen, &events))
                }
            };
            let stop = self.state().stop;
            let failed = !matches!(status, Some(s) if s.success());
            let restart = !stop
                && match self.policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => failed,
                    RestartPolicy::Always => true,
                };
            if let Some(status) = status {
                self.exited(status, restart);
            }
            if !restart {
                break;
            }
            if started_at.elapsed() >= Duration::from_millis(BACKOFF_RESET_UPTIME_MS) {
                backoff = Duration::from_millis(BACKOFF_START_MS);
            }
            if !self.back_off(backoff, &events) {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
        }
        self.finish();
    }

    /// Spawn incarnation `gen` unless supervision was stopped.
    fn start_incarnation(&self, gen: u64) -> Start {
        let (stdin, pty_size) = {
            let st = self.state();
            if st.stop {
                return Start::Stopped;
            }
            (self.stdin && st.stdin_open, st.pty_size)
        };
        let terminal = match pty_size {
            Some(size) => match pty::open(size).and_then(|t| Ok((t, Waker::new()?))) {
                Ok(t) => Some(t),
                Err(e) => {
                    let kind = match e.raw_os_error() {
                        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => {
                            AgentErrorKind::Unsupported
                        }
                        _ => crate::errors::kind_of_errno(e.raw_os_error().unwrap_or(0)),
                    };
                    return Start::Failed(agent_error(
                        kind,
                        format_args!("open a pseudo-terminal for {}: {e}", self.spec.argv0),
                    ));
                }
            },
            None => None,
        };
        let stdio = match &terminal {
            Some((t, _)) => Stdio::Pty {
                slave_path: &t.slave_path,
            },
            None => Stdio::Pipes { stdin },
        };
        let events = self.events.clone();
        let id = self.origin;
        let on_exit = Box::new(move |status| {
            if events.try_send(Event::Exited { gen, status }).is_err() {
                agent_log!("process {id}: exit status dropped (supervisor gone or queue full)");
            }
        });
        let child = match spawn::spawn(&self.spec, stdio, on_exit) {
            Ok(child) => child,
            Err(e) => return Start::Failed(e),
        };
        let (input, fds, pump_waker) = match (child.io, terminal) {
            (
                ChildIo::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                _,
            ) => {
                let input = stdin.map(|f| {
                    let fd = OwnedFd::from(f);
                    if let Err(e) = fdio::set_nonblocking(fd.as_fd()) {
                        agent_log!("process {id}: stdin stays blocking: {e}");
                    }
                    Arc::new(fd)
                });
                (input, PumpFds::Pipes { stdout, stderr }, None)
            }
            (ChildIo::Pty, Some((t, waker))) => {
                let master = Arc::new(t.master);
                let waker = Arc::new(waker);
                (
                    Some(master.clone()),
                    PumpFds::Pty {
                        master,
                        waker: waker.clone(),
                    },
                    Some(waker),
                )
            }
            (ChildIo::Pty, None) => {
                return Start::Failed(agent_error(
                    AgentErrorKind::Io,
                    "internal error: a terminal child without a terminal",
                ))
            }
        };
        let pid = child.pid;
        let mut st = self.state();
        st.life = st.life.step(LifeEvent::Spawned { gen, pid });
        // The `Exec` route may have ended while this incarnation was being
        // spawned: then its stdin pipe is dropped here (EOF at once).
        st.input = if self.pty || st.stdin_open {
            input
        } else {
            None
        };
        st.pump_waker = pump_waker;
        st.hung_up = false;
        if st.stop {
            // Closed while it was starting.
            // SAFETY: kill takes plain integers and has no memory effects.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            if self.pty {
                Self::hang_up_locked(&mut st);
            }
        }
        self.changed.notify_all();
        Start::Running(Incarnation { pid, fds })
    }

    /// Pump the output of a running incarnation until it exits and its
    /// output drains (or the grace period ends); returns its status.
    fn run_incarnation(
        self: &Arc<Self>,
        incarnation: Incarnation,
        gen: u64,
        events: &Receiver<Event>,
    ) -> ExitStatus {
        let id = self.origin;
        // Pump threads of this incarnation currently waiting for the host.
        let blocked = Arc::new(AtomicUsize::new(0));
        let process = self.clone();
        let pump_blocked = blocked.clone();
        let fds = incarnation.fds;
        let started = thread::Builder::new()
            .name(format!("out-{id}"))
            .stack_size(PUMP_THREAD_STACK_BYTES)
            .spawn(move || {
                process.output_pump(fds, &pump_blocked);
                let _ = process.events.send(Event::PumpDone { gen });
            });
        let mut pump_running = match started {
            Ok(_) => true,
            Err(e) => {
                agent_log!("process {id}: no output pump thread ({e}); output dropped");
                false
            }
        };
        let status = loop {
            match events.recv() {
                Ok(Event::Exited { gen: g, status }) if g == gen => break status,
                Ok(Event::PumpDone { gen: g }) if g == gen => pump_running = false,
                Ok(_) => {}
                // Unreachable: the process itself holds a sender.
                Err(_) => {
                    break ExitStatus {
                        code: None,
                        signal: None,
                    }
                }
            }
        };
        {
            let mut st = self.state();
            st.life = st.life.step(LifeEvent::Exited { status });
        }
        // Grace period, counting only time in which the pump is not
        // waiting for the host.
        let grace = Duration::from_millis(PIPE_GRACE_MS);
        let mut unblocked = Duration::ZERO;
        let mut last = Instant::now();
        while pump_running && unblocked < grace {
            let tick = Duration::from_millis(GRACE_TICK_MS).min(grace - unblocked);
            match events.recv_timeout(tick) {
                Ok(Event::PumpDone { gen: g }) if g == gen => pump_running = false,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if blocked.load(Ordering::Acquire) == 0 {
                unblocked += now - last;
            }
            last = now;
        }
        // The incarnation's stdin (or the agent's reference to its
        // terminal; a still-draining pump keeps its own) is done.
        self.state().input = None;
        status
    }

    /// A later incarnation started.
    fn started(&self, pid: u32) {
        let target = {
            let mut st = self.state();
            st.sink.live().map(|r| (r.scope.clone(), r.stream))
        };
        if let Some((scope, stream)) = target {
            scope
                .lock(&self.outbox)
                .send(&GuestMessage::Started { stream, pid });
        }
    }

    /// An incarnation exited and drained: record it and tell the route.
    fn exited(&self, status: ExitStatus, restarting: bool) {
        let (target, finished) = {
            let mut st = self.state();
            st.life = st.life.step(LifeEvent::Drained {
                restart: restarting,
            });
            if restarting {
                let target = st.sink.live().map(|r| (r.scope.clone(), r.stream));
                (target, None)
            } else {
                let fx = self.sink_step(&mut st, SinkEvent::End);
                let target = fx.finished.as_ref().map(|r| (r.scope.clone(), r.stream));
                (target, fx.finished)
            }
        };
        if let Some((scope, stream)) = target {
            let msg = GuestMessage::Exited {
                stream,
                status,
                restarting,
            };
            let mut sender = scope.lock(&self.outbox);
            if restarting {
                sender.send(&msg);
            } else {
                sender.send_last(&msg);
            }
        }
        if let Some(route) = finished {
            self.finish_route(&route);
        }
    }

    fn finish_route(&self, route: &Route) {
        if let Some(inbox) = &route.inbox {
            inbox.close();
        }
        self.streams.remove(&route.registration);
    }

    /// Sleep for `delay`; false if supervision was stopped meanwhile.
    fn back_off(&self, delay: Duration, events: &Receiver<Event>) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            if self.state().stop {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match events.recv_timeout(left) {
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Supervision is over: the process ended for good.
    fn finish(self: &Arc<Self>) {
        let fx = {
            let mut st = self.state();
            st.life = st.life.step(LifeEvent::Stopped);
            st.input = None;
            self.sink_step(&mut st, SinkEvent::End)
        };
        if let Some(route) = fx.finished {
            // Still live: stopped during a back-off (power-off). A sealed
            // scope (a failed start already answered) drops this.
            route
                .scope
                .lock(&self.outbox)
                .send_last(&GuestMessage::StreamClosed {
                    stream: route.stream,
                    reason: CloseReason::Done,
                });
            self.finish_route(&route);
        }
        if let Some(registry) = self.registry.upgrade() {
            registry.finished(self);
        }
    }

    // ----- output (the `out-N` pump thread) -----

    fn output_pump(&self, fds: PumpFds, blocked: &AtomicUsize) {
        let mut buf = vec![0u8; OUTPUT_READ_BYTES];
        match fds {
            PumpFds::Pipes { stdout, stderr } => {
                let mut open = vec![(stdout, OutputFd::Stdout), (stderr, OutputFd::Stderr)];
                while !open.is_empty() {
                    let mut pfds: Vec<libc::pollfd> = open
                        .iter()
                        .map(|(f, _)| fdio::pollfd(f.as_raw_fd(), libc::POLLIN))
                        .collect();
                    if let Err(e) = fdio::poll(&mut pfds, -1) {
                        agent_log!("process {}: poll failed: {e}", self.origin);
                        return;
                    }
                    let mut done = Vec::new();
                    for (i, p) in pfds.iter().enumerate() {
                        let (file, which) = &open[i];
                        if p.revents & libc::POLLIN != 0 {
                            match self.pump_once(file.as_fd(), *which, &mut buf, blocked) {
                                Ok(true) => {}
                                Ok(false) => done.push(i),
                                Err(e) => {
                                    agent_log!("process {}: reading {which:?}: {e}", self.origin);
                                    done.push(i);
                                }
                            }
                        } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
                        {
                            done.push(i);
                        }
                    }
                    for i in done.into_iter().rev() {
                        open.remove(i);
                    }
                }
            }
            PumpFds::Pty { master, waker } => loop {
                let mut pfds = [
                    fdio::pollfd(master.as_raw_fd(), libc::POLLIN),
                    fdio::pollfd(waker.raw(), libc::POLLIN),
                ];
                if let Err(e) = fdio::poll(&mut pfds, -1) {
                    agent_log!("process {}: poll failed: {e}", self.origin);
                    return;
                }
                if pfds[1].revents != 0 {
                    waker.clear();
                    if self.state().hung_up {
                        return;
                    }
                }
                if pfds[0].revents & libc::POLLIN != 0 {
                    match self.pump_once(master.as_fd(), OutputFd::Stdout, &mut buf, blocked) {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if pty::is_hangup(&e) => return,
                        Err(e) => {
                            agent_log!("process {}: reading the terminal: {e}", self.origin);
                            return;
                        }
                    }
                } else if pfds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    return;
                }
            },
        }
    }

    /// Read one chunk from a readable fd (as much as the credit allows)
    /// and deliver it. `Ok(false)` at EOF.
    fn pump_once(
        &self,
        fd: BorrowedFd<'_>,
        which: OutputFd,
        buf: &mut [u8],
        blocked: &AtomicUsize,
    ) -> io::Result<bool> {
        let limit = self.output_limit(blocked);
        let n = match fdio::read(fd, &mut buf[..limit.bytes]) {
            Ok(n) => n,
            Err(e) => {
                self.settle(&limit, 0);
                return Err(e);
            }
        };
        if n == 0 {
            self.settle(&limit, 0);
            return Ok(false);
        }
        self.deliver(which, &buf[..n], limit, blocked);
        Ok(true)
    }

    /// Reserve credit for one read, waiting (counted as blocked) while
    /// the live route has none.
    fn output_limit(&self, blocked: &AtomicUsize) -> Limit {
        let mut st = self.state();
        let mut waiting = None;
        loop {
            match st.sink.live() {
                Some(route) => {
                    let bytes = route.credit.reserve(OUTPUT_READ_BYTES);
                    if bytes > 0 {
                        return Limit {
                            bytes,
                            from: Some(route.scope.clone()),
                        };
                    }
                }
                None => {
                    return Limit {
                        bytes: OUTPUT_READ_BYTES,
                        from: None,
                    }
                }
            }
            waiting.get_or_insert_with(|| Blocked::new(blocked));
            st = self.wait(st);
        }
    }

    /// Give back the unused part of a reservation.
    fn settle(&self, limit: &Limit, used_bytes: usize) {
        if let Some(scope) = &limit.from {
            let mut st = self.state();
            if let Some(route) = st.sink.route_mut(scope) {
                route.credit.settle(limit.bytes, used_bytes);
                self.changed.notify_all();
            }
        }
    }

    /// Deliver output that was read under `limit`: to the route it was
    /// reserved from if that is still live, else to whatever the sink is
    /// now (a new route's credit, the ring, nowhere).
    fn deliver(&self, which: OutputFd, data: &[u8], limit: Limit, blocked: &AtomicUsize) {
        let mut rest = data;
        let mut reservation = limit.from.map(|scope| (scope, limit.bytes));
        while !rest.is_empty() {
            let target = {
                let mut st = self.state();
                let mut waiting = None;
                loop {
                    if let Some((scope, reserved)) = reservation.take() {
                        if let Some(route) = st.sink.route_mut(&scope) {
                            route.credit.settle(reserved, rest.len());
                            break Some((scope, route.stream, rest.len()));
                        }
                        // The route changed while we read: its window is gone.
                    }
                    let mut recheck = false;
                    match &mut st.sink {
                        Sink::Live(route) if !route.scope.is_open() => recheck = true,
                        Sink::Live(route) => {
                            let n = route.credit.take(rest.len());
                            if n > 0 {
                                break Some((route.scope.clone(), route.stream, n));
                            }
                        }
                        Sink::Detached(ring) => {
                            ring.push(which, rest);
                            break None;
                        }
                        Sink::Ended(_) | Sink::Dropping => break None,
                    }
                    waiting.get_or_insert_with(|| Blocked::new(blocked));
                    st = if recheck {
                        self.changed
                            .wait_timeout(st, Duration::from_millis(RECHECK_MS))
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0
                    } else {
                        self.wait(st)
                    };
                }
            };
            let Some((scope, stream, n)) = target else {
                return;
            };
            let sent = {
                let _blocked = Blocked::new(blocked);
                scope.lock(&self.outbox).send(&GuestMessage::Output {
                    stream,
                    fd: which,
                    data: rest[..n].to_vec(),
                })
            };
            match sent {
                Sent::Queued => rest = &rest[n..],
                // The route ended meanwhile: deliver the same bytes again.
                Sent::Ended => {}
                Sent::WriterGone => return,
            }
        }
    }
}

/// Host input of one route of a process (an [`InputTarget`]).
pub(crate) struct ProcessInput {
    process: Arc<Process>,
    scope: Arc<Scope>,
    stream: u64,
    inbox: Arc<Inbox>,
    logged: AtomicBool,
}

impl InputTarget for ProcessInput {
    fn fd(&self) -> Option<Arc<OwnedFd>> {
        self.process.input_fd(&self.scope)
    }

    fn write_failed(&self, error: &io::Error) -> bool {
        // The process closed its stdin or exited: the chunk is dropped.
        if !self.logged.swap(true, Ordering::Relaxed) {
            agent_log!("stream {}: input dropped: {error}", self.stream);
        }
        true
    }

    fn credit(&self, bytes: u32) {
        self.scope
            .lock(&self.process.outbox)
            .send(&GuestMessage::StreamCredit {
                stream: self.stream,
                bytes,
            });
    }

    fn eof(&self) {
        self.process.input_eof(&self.scope, &self.inbox);
    }
}

/// Start the `in-N` pump of the route `stream` of `process`.
pub(crate) fn start_input_pump(
    process: &Arc<Process>,
    scope: &Arc<Scope>,
    stream: u64,
    inbox: &Arc<Inbox>,
) -> io::Result<()> {
    let target = ProcessInput {
        process: process.clone(),
        scope: scope.clone(),
        stream,
        inbox: inbox.clone(),
        logged: AtomicBool::new(false),
    };
    let inbox = inbox.clone();
    thread::Builder::new()
        .name(format!("in-{stream}"))
        .stack_size(PUMP_THREAD_STACK_BYTES)
        .spawn(move || inbox::pump(&inbox, &target))
        .map(|_| ())
}

/// The processes of one serve session, and the names of named ones.
#[derive(Default)]
pub(crate) struct Processes {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Processes still supervised.
    live: Vec<Arc<Process>>,
    /// Named processes, until the name is reused (ended ones stay, for Attach).
    names: HashMap<String, Arc<Process>>,
}

impl Processes {
    /// `Conflict` if `name` belongs to a process that has not ended for good.
    pub(crate) fn check_name(&self, name: &str) -> Result<(), AgentError> {
        let reg = lock(&self.inner);
        match reg.names.get(name) {
            Some(p) if !p.has_ended() => Err(agent_error(
                AgentErrorKind::Conflict,
                format_args!(
                    "a process named {name:?} is running (started by request {})",
                    p.origin
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Register a new process (and its name, which the caller checked).
    pub(crate) fn add(&self, process: &Arc<Process>) {
        let mut reg = lock(&self.inner);
        reg.live.push(process.clone());
        if let Some(name) = process.name() {
            reg.names.insert(name.to_string(), process.clone());
        }
    }

    /// Forget a process whose start failed before its supervisor ran.
    pub(crate) fn remove(&self, process: &Arc<Process>) {
        let mut reg = lock(&self.inner);
        reg.live.retain(|p| !Arc::ptr_eq(p, process));
        if let Some(name) = process.name() {
            if reg.names.get(name).is_some_and(|p| Arc::ptr_eq(p, process)) {
                reg.names.remove(name);
            }
        }
    }

    /// Supervision of `process` ended. A process that never ran frees its
    /// name at once; one that ran keeps it (ended) for `Attach`.
    fn finished(&self, process: &Arc<Process>) {
        if process.never_ran() {
            self.remove(process);
        } else {
            lock(&self.inner).live.retain(|p| !Arc::ptr_eq(p, process));
        }
    }

    pub(crate) fn find(&self, name: &str) -> Option<Arc<Process>> {
        lock(&self.inner).names.get(name).cloned()
    }

    fn all(&self) -> Vec<Arc<Process>> {
        let reg = lock(&self.inner);
        let mut all = reg.live.clone();
        for p in reg.names.values() {
            if !all.iter().any(|q| Arc::ptr_eq(p, q)) {
                all.push(p.clone());
            }
        }
        all
    }

    /// Session end: kill every process and stop supervising.
    pub(crate) fn shutdown_all(&self) {
        for p in self.all() {
            p.shutdown();
        }
    }

    /// Power-off: no more restarts.
    pub(crate) fn stop_supervision_all(&self) {
        for p in self.all() {
            p.stop_supervision();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_transitions() {
        let exited = ExitStatus {
            code: Some(1),
            signal: None,
        };
        let l = Life::Starting.step(LifeEvent::Spawned { gen: 1, pid: 10 });
        assert_eq!(l, Life::Running { gen: 1, pid: 10 });
        let l = l.step(LifeEvent::Exited { status: exited });
        assert!(matches!(l, Life::Draining { pid: 10, .. }));
        let b = l.step(LifeEvent::Drained { restart: true });
        assert_eq!(
            b,
            Life::BackOff {
                pid: 10,
                status: exited
            }
        );
        // A failed restart stays in back-off; a stop ends it with the last status.
        assert_eq!(b.step(LifeEvent::SpawnFailed), b);
        assert_eq!(
            b.step(LifeEvent::Stopped),
            Life::Ended {
                status: Some(exited)
            }
        );
        assert_eq!(
            l.step(LifeEvent::Drained { restart: false }),
            Life::Ended {
                status: Some(exited)
            }
        );
        assert_eq!(
            Life::Starting.step(LifeEvent::SpawnFailed),
            Life::Ended { status: None }
        );
        // Events that do not apply change nothing.
        let r = Life::Running { gen: 2, pid: 11 };
        assert_eq!(r.step(LifeEvent::Stopped), r);
        assert_eq!(r.step(LifeEvent::Drained { restart: true }), r);
    }
}
