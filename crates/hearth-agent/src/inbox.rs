//! Host input of one stream: the queue the reader fills and the pump
//! thread (`in-N`) that writes it on.
//!
//! The reader thread only ever *queues* host `StreamData`/`StreamEof`
//! ([`Inbox::push`] never blocks): the queue is unbounded, and bounded in
//! practice by the stream's window ([`RecvWindow`]), whose overrun is the
//! host's error and ends the stream. The pump takes chunks in order, writes
//! them to whatever [`InputTarget`] says is the current fd (a stdin pipe, a
//! PTY master, a socket), and returns the credit once a chunk is written on
//! (or dropped because nothing consumes it any more). A consumer that never
//! reads stalls only this pump; [`Inbox::close`] wakes it at once.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use crate::credit::{RecvWindow, WindowExceeded};
use crate::fdio::{self, Waker, WriteEnd};
use crate::lock;

/// One queued piece of host input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Data(Vec<u8>),
    Eof,
}

/// Why [`Inbox::push`] refused data.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The host went over the window: the stream must end with an error.
    Exceeded(WindowExceeded),
    /// Data after the host's own `StreamEof` (dropped).
    AfterEof,
    /// The stream's input is closed (dropped).
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Input>,
    window: RecvWindow,
    eof_queued: bool,
    closed: bool,
}

/// The input queue of one stream.
pub(crate) struct Inbox {
    state: Mutex<State>,
    ready: Condvar,
    waker: Waker,
}

impl Inbox {
    pub(crate) fn new() -> io::Result<Arc<Inbox>> {
        Ok(Arc::new(Inbox {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            waker: Waker::new()?,
        }))
    }

    /// Queue host data (reader thread; never blocks).
    pub(crate) fn push(&self, data: Vec<u8>) -> Result<(), PushError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(PushError::Closed);
        }
        if st.eof_queued {
            return Err(PushError::AfterEof);
        }
        st.window.receive(data.len()).map_err(PushError::Exceeded)?;
        st.queue.push_back(Input::Data(data));
        self.ready.notify_all();
        Ok(())
    }

    /// Queue the host's EOF (reader thread; never blocks).
    pub(crate) fn push_eof(&self) {
        let mut st = lock(&self.state);
        if !st.closed && !st.eof_queued {
            st.eof_queued = true;
            st.queue.push_back(Input::Eof);
            self.ready.notify_all();
        }
    }

    /// Drop queued input and stop the pump, even in the middle of a write
    /// (any thread; never blocks).
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.queue.clear();
        self.ready.notify_all();
        drop(st);
        self.waker.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// The waker a blocked write of this stream's input polls.
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }

    /// The next input, waiting for it; `None` once closed.
    fn next(&self) -> Option<Input> {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return None;
            }
            if let Some(input) = st.queue.pop_front() {
                return Some(input);
            }
            st = self
                .ready
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// `n` bytes were written on or dropped: the credit to return (0 once
    /// the stream's input is closed).
    fn done(&self, n: usize) -> u32 {
        let mut st = lock(&self.state);
        let credit = st.window.release(n);
        if st.closed {
            0
        } else {
            credit
        }
    }
}

/// Where a stream's input goes.
pub(crate) trait InputTarget {
    /// The fd to write into now; `None` drops the input (no consumer, e.g.
    /// between two incarnations of a process).
    fn fd(&self) -> Option<Arc<OwnedFd>>;
    /// A write failed: true drops the chunk and goes on (a process closed
    /// its stdin), false ends the pump (the stream failed).
    fn write_failed(&self, error: &io::Error) -> bool;
    /// Return `bytes` of credit to the host.
    fn credit(&self, bytes: u32);
    /// Apply the host's EOF (after every earlier chunk was handled).
    fn eof(&self);
}

/// The pump loop: runs until the inbox is closed or EOF was applied.
pub(crate) fn pump(inbox: &Inbox, target: &dyn InputTarget) {
    while let Some(input) = inbox.next() {
        match input {
            Input::Data(data) => {
                let keep = write_chunk(inbox, target, &data);
                let credit = inbox.done(data.len());
                if credit > 0 {
                    target.credit(credit);
                }
                if !keep {
                    return;
                }
            }
            Input::Eof => {
                target.eof();
                return;
            }
        }
    }
}

/// Write one chunk to the current target; false when the pump must end.
fn write_chunk(inbox: &Inbox, target: &dyn InputTarget, data: &[u8]) -> bool {
    let mut rest = data;
    while !rest.is_empty() {
        let Some(fd) = target.fd() else {
            // Nothing consumes input now: the chunk is dropped.
            return true;
        };
        let same_target = || {
            !inbox.is_closed()
                && target
                    .fd()
                    .is_some_and(|current| Arc::ptr_eq(&current, &fd))
        };
        match fdio::write_all(fd.as_fd(), rest, &inbox.waker, &same_target) {
            WriteEnd::Done => return true,
            WriteEnd::Stopped { written_bytes } => {
                if inbox.is_closed() {
                    return false;
                }
                // The target changed (a new incarnation): the rest goes there.
                rest = &rest[written_bytes..];
            }
            WriteEnd::Failed { error, .. } => return target.write_failed(&error),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credit::WINDOW_BYTES;
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn push_never_blocks_and_enforces_the_window() {
        let inbox = Inbox::new().unwrap();
        inbox.push(vec![0; WINDOW_BYTES - 1]).unwrap();
        inbox.push(vec![0; 1]).unwrap();
        assert!(matches!(
            inbox.push(vec![0; 1]),
            Err(PushError::Exceeded(_))
        ));
        inbox.push_eof();
        assert!(matches!(inbox.push(vec![]), Err(PushError::AfterEof)));
        assert_eq!(inbox.next(), Some(Input::Data(vec![0; WINDOW_BYTES - 1])));
        assert_eq!(inbox.done(WINDOW_BYTES - 1), (WINDOW_BYTES - 1) as u32);
        inbox.close();
        assert_eq!(inbox.next(), None);
        assert!(matches!(inbox.push(vec![1]), Err(PushError::Closed)));
    }

    struct PipeTarget {
        fd: Arc<OwnedFd>,
        credited: AtomicU32,
        eof: AtomicU32,
    }

    impl InputTarget for PipeTarget {
        fn fd(&self) -> Option<Arc<OwnedFd>> {
            Some(self.fd.clone())
        }
        fn write_failed(&self, _: &io::Error) -> bool {
            true
        }
        fn credit(&self, bytes: u32) {
            self.credited.fetch_add(bytes, Ordering::SeqCst);
        }
        fn eof(&self) {
            self.eof.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_pump_writes_credits_and_stops_on_close_even_when_blocked() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are new and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        fdio::set_nonblocking(w.as_fd()).unwrap();
        let target = Arc::new(PipeTarget {
            fd: Arc::new(w),
            credited: AtomicU32::new(0),
            eof: AtomicU32::new(0),
        });
        let inbox = Inbox::new().unwrap();
        inbox.push(b"hello".to_vec()).unwrap();
        // Never read: the second chunk fills the pipe and blocks the pump.
        inbox.push(vec![7; WINDOW_BYTES - 5]).unwrap();
        let (pump_inbox, pump_target) = (inbox.clone(), target.clone());
        let pumping = thread::spawn(move || pump(&pump_inbox, &*pump_target));
        let mut waited_ms = 0;
        while target.credited.load(Ordering::SeqCst) < 5 {
            assert!(waited_ms < 10_000, "no credit for the first chunk");
            thread::sleep(Duration::from_millis(5));
            waited_ms += 5;
        }
        inbox.close();
        pumping.join().unwrap();
        // The blocked chunk is not credited after the close.
        assert_eq!(target.credited.load(Ordering::SeqCst), 5);
        assert_eq!(target.eof.load(Ordering::SeqCst), 0);
        let mut buf = [0u8; 5];
        assert_eq!(fdio::read(r.as_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"hello");
    }
}
