//! `Attach` requests (reader thread): open a stream on the output of a
//! named process, replacing its current route (see `process.rs`).
//!
//! The stream is a [`ProcessStream`] of kind `Attach`: `Signal` reaches the
//! process group, a PTY process also takes input and `Resize` through it,
//! and its end (a host `StreamClose`, a restore) only detaches the process
//! again. A PTY attach stream gets its own input pump (`in-N`).

use std::sync::Arc;

use hearth_proto::{valid_process_name, AgentError, AgentErrorKind, StreamKind};

use crate::agent_log;
use crate::errors::{agent_error, invalid, io_error};
use crate::exec::{ProcessStream, ProcessStreamParts};
use crate::inbox::Inbox;
use crate::process;
use crate::session::Session;

/// Handle `Attach { name }` request `id`: the process answers it (with the
/// replay) when the stream opens; errors are answered here.
pub(crate) fn start(session: &Arc<Session>, id: u64, name: &str) {
    if let Err(e) = open(session, id, name) {
        session.outbox.respond(id, Err(e));
    }
}

fn open(session: &Arc<Session>, id: u64, name: &str) -> Result<(), AgentError> {
    if !valid_process_name(name) {
        return Err(invalid(format_args!(
            "process name {name:?} is not 1-64 of [A-Za-z0-9._-]"
        )));
    }
    let Some(process) = session.processes.find(name) else {
        return Err(agent_error(
            AgentErrorKind::NotFound,
            format_args!("no process named {name:?}"),
        ));
    };
    let inbox = if process.is_pty() {
        Some(Inbox::new().map_err(|e| io_error("create a stream input queue", &e))?)
    } else {
        None
    };
    let scope = session.outbox.scope();
    let mut registration = None;
    session.streams.insert_with(id, |reg| {
        registration = Some(reg);
        Arc::new(ProcessStream::new(
            session,
            ProcessStreamParts {
                id,
                kind: StreamKind::Attach,
                exec: false,
                process: process.clone(),
                scope: scope.clone(),
                inbox: inbox.clone(),
                registration: reg,
            },
        ))
    })?;
    let Some(registration) = registration else {
        return Err(invalid("internal error: no stream registration"));
    };
    match process.attach(id, &scope, inbox.clone(), registration) {
        Err(e) => {
            session.streams.remove(&registration);
            Err(e)
        }
        Ok(open) => {
            if let (true, Some(inbox)) = (open, &inbox) {
                if let Err(e) = process::start_input_pump(&process, &scope, id, inbox) {
                    agent_log!("stream {id}: no input thread ({e}); input will be dropped");
                    inbox.close();
                }
            }
            Ok(())
        }
    }
}
