//! `Exec` requests (reader thread), and [`ProcessStream`], the stream
//! through which the reader reaches a process: the `Exec` stream itself and,
//! built by `attach.rs`, `Attach` streams.
//!
//! Handling an `Exec` validates the request (name, then arguments), makes
//! the [`Process`] with its `Exec` route, registers the stream and the
//! process, and starts the supervisor (`exec-N`, which answers once the
//! process runs) and, when the stream takes input (stdin or a terminal),
//! its input pump (`in-N`). Everything else lives in `process.rs`.

use std::sync::Arc;

use hearth_proto::{
    valid_process_name, AgentError, CloseReason, ExecRequest, GuestMessage, PtySize, Response,
    StreamKind,
};

use crate::agent_log;
use crate::credit::SendCredit;
use crate::errors::{invalid, io_error};
use crate::inbox::{Inbox, PushError};
use crate::process::{self, Process, ProcessSpec, RouteEnd};
use crate::session::Session;
use crate::sink::Route;
use crate::spawn::SpawnSpec;
use crate::stream::{End, Registration, Stream, StreamTable};
use crate::writer::{Outbox, Scope};

/// A host stream of a process (its `Exec` stream or an `Attach` stream).
pub(crate) struct ProcessStream {
    id: u64,
    kind: StreamKind,
    /// The `Exec` stream (a host close kills the process) or an `Attach`.
    exec: bool,
    process: Arc<Process>,
    scope: Arc<Scope>,
    inbox: Option<Arc<Inbox>>,
    registration: Registration,
    outbox: Outbox,
    streams: Arc<StreamTable>,
}

/// What [`ProcessStream::new`] needs.
pub(crate) struct ProcessStreamParts {
    pub id: u64,
    pub kind: StreamKind,
    pub exec: bool,
    pub process: Arc<Process>,
    pub scope: Arc<Scope>,
    pub inbox: Option<Arc<Inbox>>,
    pub registration: Registration,
}

impl ProcessStream {
    pub(crate) fn new(session: &Session, parts: ProcessStreamParts) -> ProcessStream {
        ProcessStream {
            id: parts.id,
            kind: parts.kind,
            exec: parts.exec,
            process: parts.process,
            scope: parts.scope,
            inbox: parts.inbox,
            registration: parts.registration,
            outbox: session.outbox.clone(),
            streams: session.streams.clone(),
        }
    }

    /// End the stream with an error (the host broke its window).
    fn fail(&self, reason: String) {
        agent_log!("stream {}: {reason}; ending the stream", self.id);
        self.streams.remove(&self.registration);
        let how = if self.exec {
            RouteEnd::Kill
        } else {
            RouteEnd::Detach
        };
        self.process.route_ended(&self.scope, how);
        if let Some(inbox) = &self.inbox {
            inbox.close();
        }
        self.scope
            .lock(&self.outbox)
            .send_last(&GuestMessage::StreamClosed {
                stream: self.id,
                reason: CloseReason::Error(reason),
            });
    }
}

impl Stream for ProcessStream {
    fn kind(&self) -> StreamKind {
        self.kind
    }

    fn data(&self, data: Vec<u8>) {
        let Some(inbox) = &self.inbox else {
            agent_log!(
                "stream {}: data for a process without stdin dropped",
                self.id
            );
            return;
        };
        match inbox.push(data) {
            Ok(()) | Err(PushError::Closed) => {}
            Err(PushError::Exceeded(e)) => self.fail(e.to_string()),
            Err(PushError::AfterEof) => {
                agent_log!("stream {}: data after the host's EOF dropped", self.id)
            }
        }
    }

    fn eof(&self) {
        if let Some(inbox) = &self.inbox {
            inbox.push_eof();
        }
    }

    fn credit(&self, bytes: u32) {
        self.process.credit(&self.scope, bytes);
    }

    fn end(&self, why: End) {
        let how = match (why, self.exec) {
            (End::HostClose, true) => RouteEnd::Kill,
            _ => RouteEnd::Detach,
        };
        self.process.route_ended(&self.scope, how);
        self.scope.cancel();
        if let Some(inbox) = &self.inbox {
            inbox.close();
        }
    }

    fn signal(&self, signal: i32) -> Result<Response, AgentError> {
        self.process.signal(self.id, signal)
    }

    fn resize(&self, size: PtySize) -> Result<Response, AgentError> {
        self.process.resize(self.id, size)
    }
}

/// Handle `Exec` request `id` (reader thread). The response is sent by the
/// supervisor once the process started, or here on a validation error.
pub(crate) fn start(session: &Arc<Session>, id: u64, req: ExecRequest) {
    if let Err(e) = validate_and_start(session, id, req) {
        session.outbox.respond(id, Err(e));
    }
}

fn validate_and_start(session: &Arc<Session>, id: u64, req: ExecRequest) -> Result<(), AgentError> {
    if let Some(name) = &req.name {
        if !valid_process_name(name) {
            return Err(invalid(format_args!(
                "process name {name:?} is not 1-64 of [A-Za-z0-9._-]"
            )));
        }
        session.processes.check_name(name)?;
    }
    let spec = SpawnSpec::prepare(&req, &session.etc_dir)?;
    let inbox = if req.stdin || req.pty.is_some() {
        Some(Inbox::new().map_err(|e| io_error("create a stream input queue", &e))?)
    } else {
        None
    };
    let kind = if req.pty.is_some() {
        StreamKind::Pty
    } else {
        StreamKind::Exec
    };
    let scope = session.outbox.scope();
    let mut events = None;
    let stream = session.streams.insert_with(id, |registration| {
        let route = Route {
            stream: id,
            scope: scope.clone(),
            credit: SendCredit::new(),
            inbox: inbox.clone(),
            registration,
        };
        let spec = ProcessSpec {
            origin: id,
            name: req.name.clone(),
            spec,
            policy: req.restart,
            stdin: req.stdin,
            pty: req.pty,
        };
        let (process, rx) = Process::new(
            spec,
            route,
            session.outbox.clone(),
            session.streams.clone(),
            &session.processes,
        );
        events = Some(rx);
        Arc::new(ProcessStream::new(
            session,
            ProcessStreamParts {
                id,
                kind,
                exec: true,
                process,
                scope: scope.clone(),
                inbox: inbox.clone(),
                registration,
            },
        ))
    })?;
    let Some(events) = events else {
        return Err(invalid("internal error: no supervisor channel"));
    };
    let process = &stream.process;
    session.processes.add(process);
    if let Some(inbox) = &inbox {
        if let Err(e) = process::start_input_pump(process, &scope, id, inbox) {
            agent_log!("stream {id}: no input thread ({e}); input will be dropped");
            inbox.close();
        }
    }
    if let Err(e) = process.start_supervisor(events) {
        session.processes.remove(process);
        session.streams.remove(&stream.registration);
        if let Some(inbox) = &inbox {
            inbox.close();
        }
        return Err(io_error("start a supervisor thread", &e));
    }
    Ok(())
}
