//! Open streams: the [`Stream`] operations every kind implements and the
//! [`StreamTable`] of one serve session.
//!
//! A stream is opened by a request (`Exec`, `TcpConnect`, `Attach`) and
//! named by its id. The reader thread routes host stream messages to it
//! through this interface; every method is called on the reader thread and
//! must return promptly: it may queue, flip state and wake threads, but
//! never wait for a process, a socket peer or the stream's credit. It may
//! take a lock that is only held for such short steps, and, to send a
//! stream's last frame (`StreamClosed` on an error or a replaced attach),
//! the stream's send lock, which a producer holds at most while the writer
//! takes its frame: the same wait as for any answer the reader queues.
//!
//! The table is a leaf lock: nothing is called while it is held. A stream
//! removes itself when it ends on its own (final `Exited`, `StreamClosed`)
//! with the [`Registration`] it got at insertion, so a stream id the host
//! reused meanwhile is never removed by mistake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hearth_proto::{AgentError, AgentErrorKind, PtySize, Response, StreamKind};

use crate::errors::{agent_error, invalid};
use crate::lock;

/// Why the agent ends a stream without a word on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The host sent `StreamClose`.
    HostClose,
    /// `Restore`: the stream belonged to the snapshot's connection.
    Restored,
    /// `Reattach`: the stream belonged to the previous host connection.
    Reattached,
    /// The serve session is over (its channel reached EOF).
    SessionOver,
}

/// An open stream, as the reader thread sees it.
pub(crate) trait Stream: Send + Sync {
    fn kind(&self) -> StreamKind;
    /// Host `StreamData`: queue it (a window overrun ends the stream).
    fn data(&self, data: Vec<u8>);
    /// Host `StreamEof`.
    fn eof(&self);
    /// Host `StreamCredit`: the stream may send `bytes` more.
    fn credit(&self, bytes: u32);
    /// End the stream now; nothing more is sent for it, frames already
    /// queued included. The stream is already out of the table.
    fn end(&self, why: End);
    /// `Signal` request.
    fn signal(&self, _signal: i32) -> Result<Response, AgentError> {
        Err(invalid(format_args!(
            "a {:?} stream has no process to signal",
            self.kind()
        )))
    }
    /// `Resize` request.
    fn resize(&self, _size: PtySize) -> Result<Response, AgentError> {
        Err(invalid(format_args!(
            "a {:?} stream has no terminal to resize",
            self.kind()
        )))
    }
}

/// A stream's ticket for removing itself from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    pub id: u64,
    serial: u64,
}

struct Entry {
    serial: u64,
    stream: Arc<dyn Stream>,
}

/// The open streams of one serve session, by id.
#[derive(Default)]
pub(crate) struct StreamTable {
    entries: Mutex<HashMap<u64, Entry>>,
    next_serial: AtomicU64,
}

impl StreamTable {
    /// Register stream `id`, built by `make` from its registration; the id
    /// must not be in use. `make` runs under the table lock: it must only
    /// build the stream.
    pub(crate) fn insert_with<S, F>(&self, id: u64, make: F) -> Result<Arc<S>, AgentError>
    where
        S: Stream + 'static,
        F: FnOnce(Registration) -> Arc<S>,
    {
        let mut entries = lock(&self.entries);
        if entries.contains_key(&id) {
            return Err(agent_error(
                AgentErrorKind::Conflict,
                format_args!("stream id {id} is already in use"),
            ));
        }
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let stream = make(Registration { id, serial });
        entries.insert(
            id,
            Entry {
                serial,
                stream: stream.clone(),
            },
        );
        Ok(stream)
    }

    /// Remove the stream of `reg`, if it is still registered.
    pub(crate) fn remove(&self, reg: &Registration) {
        let mut entries = lock(&self.entries);
        if entries.get(&reg.id).is_some_and(|e| e.serial == reg.serial) {
            entries.remove(&reg.id);
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<dyn Stream>> {
        lock(&self.entries).get(&id).map(|e| e.stream.clone())
    }

    /// Remove and return stream `id`.
    pub(crate) fn take(&self, id: u64) -> Option<Arc<dyn Stream>> {
        lock(&self.entries).remove(&id).map(|e| e.stream)
    }

    /// Remove and return every stream, by id.
    pub(crate) fn take_all(&self) -> Vec<(u64, Arc<dyn Stream>)> {
        let mut all: Vec<_> = lock(&self.entries)
            .drain()
            .map(|(id, e)| (id, e.stream))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy;
    impl Stream for Dummy {
        fn kind(&self) -> StreamKind {
            StreamKind::Tcp
        }
        fn data(&self, _: Vec<u8>) {}
        fn eof(&self) {}
        fn credit(&self, _: u32) {}
        fn end(&self, _: End) {}
    }

    #[test]
    fn registrations_only_remove_their_own_stream() {
        let table = StreamTable::default();
        let mut first = None;
        table
            .insert_with(3, |reg| {
                first = Some(reg);
                Arc::new(Dummy)
            })
            .unwrap();
        let e = table.insert_with(3, |_| Arc::new(Dummy)).err().unwrap();
        assert_eq!(e.kind, AgentErrorKind::Conflict);
        assert!(table.take(3).is_some());
        table.insert_with(3, |_| Arc::new(Dummy)).unwrap();
        // The first stream 3 ended late: the new stream 3 stays.
        table.remove(&first.unwrap());
        assert!(table.get(3).is_some());
        assert!(table.get(3).unwrap().signal(1).is_err());
        table.insert_with(1, |_| Arc::new(Dummy)).unwrap();
        let ids: Vec<u64> = table.take_all().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [1, 3]);
        assert!(table.get(3).is_none());
    }
}
