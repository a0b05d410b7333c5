//! Where a process's output goes: the routing state machine (plain data;
//! the process locks it, see `process.rs`).
//!
//! ```text
//!             Attach (replay the ring)
//!   Detached ─────────────────────────▶ Live(route) ◀──┐ Attach: the old
//!     ▲  (named)                          │  │         │ route is Replaced
//!     └────────── Detach (named) ─────────┘  └─────────┘
//!                                          │
//!               Detach (unnamed) ──▶ Dropping ◀── Abandon (any state)
//!
//!   End (the process ended for good): Live/Detached ─▶ Ended(ring) if named,
//!                                                  ─▶ Dropping otherwise
//!   Attach to Ended: replay the ring, the new route ends at once.
//! ```
//!
//! A *route* is one host stream that carries the output: the `Exec` stream
//! that started the process, or an `Attach` stream. It owns the stream's
//! send credit and input queue. `Detach` ends a route but not the process
//! (a restore, a host closing an attach stream); a named process then keeps
//! its output in an [`OutputRing`] for the next `Attach`, an unnamed one
//! has nobody to keep it for.

use std::sync::Arc;

use hearth_proto::OutputFd;

use crate::credit::SendCredit;
use crate::inbox::Inbox;
use crate::ring::OutputRing;
use crate::stream::Registration;
use crate::writer::Scope;

/// A host stream carrying a process's output.
pub(crate) struct Route {
    pub stream: u64,
    pub scope: Arc<Scope>,
    /// Guest → host credit of the stream.
    pub credit: SendCredit,
    /// Host input of the stream (stdin pipe or terminal), if it takes any.
    pub inbox: Option<Arc<Inbox>>,
    pub registration: Registration,
}

impl Route {
    pub(crate) fn is(&self, scope: &Arc<Scope>) -> bool {
        Arc::ptr_eq(&self.scope, scope)
    }
}

/// The output state of a process.
pub(crate) enum Sink {
    /// Sent on a host stream.
    Live(Route),
    /// A named process without a stream: the newest output is kept.
    Detached(OutputRing),
    /// A named process that ended for good: what it wrote while detached,
    /// for the next `Attach`; later output (a daemonised grandchild) is dropped.
    Ended(OutputRing),
    /// Read and dropped.
    Dropping,
}

/// What happens to the sink.
pub(crate) enum SinkEvent<'a> {
    /// The stream with this scope ended; the process goes on.
    Detach(&'a Arc<Scope>),
    /// An `Attach` stream takes the output.
    Attach(Route),
    /// The process ended for good (its final `Exited` is being sent).
    End,
    /// The agent gives the process up (the session ends).
    Abandon,
}

/// The side effects of a transition, for the caller to carry out.
#[derive(Default)]
pub(crate) struct Effects {
    /// A route that lost the output while still open: the caller ends it.
    pub displaced: Option<Route>,
    /// A route that has nothing more to carry (attached to an ended
    /// process, or the process ended): the caller finishes it.
    pub finished: Option<Route>,
    /// Output kept while detached, for the new route.
    pub replay: Vec<(OutputFd, Vec<u8>)>,
}

impl Sink {
    /// The live route, if it is the stream with `scope`.
    pub(crate) fn route_mut(&mut self, scope: &Arc<Scope>) -> Option<&mut Route> {
        match self {
            Sink::Live(route) if route.is(scope) => Some(route),
            _ => None,
        }
    }

    /// The live route, whichever it is.
    pub(crate) fn live(&mut self) -> Option<&mut Route> {
        match self {
            Sink::Live(route) => Some(route),
            _ => None,
        }
    }

    /// The one transition function.
    pub(crate) fn step(self, named: bool, event: SinkEvent<'_>) -> (Sink, Effects) {
        let mut fx = Effects::default();
        let parked = || {
            if named {
                Sink::Detached(OutputRing::new())
            } else {
                Sink::Dropping
            }
        };
        let next = match (self, event) {
            (Sink::Live(route), SinkEvent::Detach(scope)) if route.is(scope) => {
                fx.displaced = Some(route);
                parked()
            }
            (same, SinkEvent::Detach(_)) => same,
            (Sink::Live(old), SinkEvent::Attach(new)) => {
                fx.displaced = Some(old);
                Sink::Live(new)
            }
            (Sink::Detached(mut ring), SinkEvent::Attach(new)) => {
                fx.replay = ring.take();
                Sink::Live(new)
            }
            (Sink::Ended(mut ring), SinkEvent::Attach(new)) => {
                fx.replay = ring.take();
                fx.finished = Some(new);
                Sink::Ended(ring)
            }
            (Sink::Dropping, SinkEvent::Attach(new)) => {
                fx.finished = Some(new);
                Sink::Dropping
            }
            (Sink::Live(route), SinkEvent::End) => {
                fx.finished = Some(route);
                if named {
                    Sink::Ended(OutputRing::new())
                } else {
                    Sink::Dropping
                }
            }
            (Sink::Detached(ring), SinkEvent::End) => {
                if named {
                    Sink::Ended(ring)
                } else {
                    Sink::Dropping
                }
            }
            (ended @ (Sink::Ended(_) | Sink::Dropping), SinkEvent::End) => ended,
            (Sink::Live(route), SinkEvent::Abandon) => {
                fx.displaced = Some(route);
                Sink::Dropping
            }
            (_, SinkEvent::Abandon) => Sink::Dropping,
        };
        (next, fx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{End, Stream, StreamTable};
    use crate::writer::{OnWriteError, Outbox};
    use hearth_proto::StreamKind;

    struct Nothing;
    impl Stream for Nothing {
        fn kind(&self) -> StreamKind {
            StreamKind::Attach
        }
        fn data(&self, _: Vec<u8>) {}
        fn eof(&self) {}
        fn credit(&self, _: u32) {}
        fn end(&self, _: End) {}
    }

    fn route(outbox: &Outbox, table: &StreamTable, id: u64) -> Route {
        let mut reg = None;
        table
            .insert_with(id, |r| {
                reg = Some(r);
                Arc::new(Nothing)
            })
            .unwrap();
        Route {
            stream: id,
            scope: outbox.scope(),
            credit: SendCredit::new(),
            inbox: None,
            registration: reg.unwrap(),
        }
    }

    fn outbox() -> Outbox {
        Outbox::start(std::io::sink(), OnWriteError::Stop).unwrap()
    }

    #[test]
    fn named_output_is_kept_while_detached_and_replayed_once() {
        let (ob, table) = (outbox(), StreamTable::default());
        let exec = route(&ob, &table, 1);
        let exec_scope = exec.scope.clone();
        let other = ob.scope();
        let sink = Sink::Live(exec);
        // Another stream's end changes nothing.
        let (mut sink, fx) = sink.step(true, SinkEvent::Detach(&other));
        assert!(fx.displaced.is_none());
        assert!(sink.route_mut(&exec_scope).is_some());
        let (mut sink, fx) = sink.step(true, SinkEvent::Detach(&exec_scope));
        assert_eq!(fx.displaced.map(|r| r.stream), Some(1));
        assert!(sink.live().is_none());
        if let Sink::Detached(ring) = &mut sink {
            ring.push(OutputFd::Stdout, b"while detached");
        } else {
            panic!("not detached");
        }
        let (sink, fx) = sink.step(true, SinkEvent::Attach(route(&ob, &table, 2)));
        assert_eq!(
            fx.replay,
            vec![(OutputFd::Stdout, b"while detached".to_vec())]
        );
        assert!(fx.displaced.is_none() && fx.finished.is_none());
        // A second attach replaces the first; nothing to replay.
        let (sink, fx) = sink.step(true, SinkEvent::Attach(route(&ob, &table, 3)));
        assert_eq!(fx.displaced.map(|r| r.stream), Some(2));
        assert!(fx.replay.is_empty());
        let (sink, fx) = sink.step(true, SinkEvent::End);
        assert_eq!(fx.finished.map(|r| r.stream), Some(3));
        let (sink, fx) = sink.step(true, SinkEvent::Attach(route(&ob, &table, 4)));
        assert!(matches!(sink, Sink::Ended(_)));
        assert_eq!(fx.finished.map(|r| r.stream), Some(4));
    }

    #[test]
    fn unnamed_output_is_dropped_once_its_stream_is_gone() {
        let (ob, table) = (outbox(), StreamTable::default());
        let exec = route(&ob, &table, 1);
        let scope = exec.scope.clone();
        let (sink, _) = Sink::Live(exec).step(false, SinkEvent::Detach(&scope));
        assert!(matches!(sink, Sink::Dropping));
        let (sink, fx) = sink.step(false, SinkEvent::End);
        assert!(matches!(sink, Sink::Dropping) && fx.finished.is_none());
        let (sink, fx) = Sink::Live(route(&ob, &table, 2)).step(true, SinkEvent::Abandon);
        assert!(matches!(sink, Sink::Dropping));
        assert_eq!(fx.displaced.map(|r| r.stream), Some(2));
    }

    #[test]
    fn a_named_process_ending_while_detached_keeps_its_output() {
        let mut ring = OutputRing::new();
        ring.push(OutputFd::Stderr, b"last words");
        let (sink, _) = Sink::Detached(ring).step(true, SinkEvent::End);
        let (ob, table) = (outbox(), StreamTable::default());
        let (_, fx) = sink.step(true, SinkEvent::Attach(route(&ob, &table, 5)));
        assert_eq!(fx.replay, vec![(OutputFd::Stderr, b"last words".to_vec())]);
        assert_eq!(fx.finished.map(|r| r.stream), Some(5));
    }
}
