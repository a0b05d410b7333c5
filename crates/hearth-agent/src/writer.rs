//! The frame writer, the quiesce gate, connections and stream scopes.
//!
//! Exactly one thread (named `writer`) writes the channel. Every other thread
//! hands it whole encoded frames through an [`Outbox`] (a bounded channel), so
//! frames never interleave and their order is the order they were queued.
//!
//! Quiesce: the `Quiesced` response is queued as a *pause point*. After the
//! writer has written it, it stops taking frames until the reader releases the
//! gate (on `Thaw`, `Restore` or `Reattach`). Producers then block on the full
//! channel: that is the intended back-pressure, and it holds every later
//! frame, in order, in guest memory (or, beyond the channel, in pipe and
//! socket buffers).
//!
//! ```text
//!   producers ──frames──▶ [sync_channel] ──▶ writer ──▶ port
//!                                              │ after a pause point:
//!                                              └─ waits until released >= written pause points
//! ```
//!
//! Counting pause points (instead of a paused flag) makes a release that
//! arrives before the writer even reached the pause point work too.
//!
//! Every frame belongs to a *connection* (an epoch, bumped by
//! [`Outbox::new_connection`] at `Restore` and `Reattach`), and a stream's
//! frames also to that stream's [`Scope`]. The writer drops, at the moment it
//! would write it, every frame of an older connection or of a cancelled
//! scope: so once the reader has ended a stream (a host `StreamClose`, a
//! restore) nothing more of it reaches the host, not even frames that were
//! already queued, and the reader did that without taking any lock a
//! producer may hold while it waits for the writer.
//!
//! A scope also serialises its producers (a process's output pump, its
//! supervisor, the reader answering an `Attach`): [`Scope::lock`] gives a
//! [`ScopeSender`], and a frame sent as the stream's *last* seals the scope,
//! so nothing can follow it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use hearth_proto::{encode_frame, AgentError, AgentErrorKind, GuestMessage, Response};

use crate::{agent_log, lock};

/// Frames the writer channel holds before producers block.
const OUTBOX_FRAMES: usize = 32;
/// Pause between retries of a failed write on the real port.
const WRITE_RETRY_MS: u64 = 100;

/// One queued frame.
struct Item {
    frame: Vec<u8>,
    /// The connection the frame was queued for.
    epoch: u64,
    /// The stream the frame belongs to, if any.
    scope: Option<Arc<Scope>>,
    /// Write this frame, then wait for the gate to be released.
    pause: bool,
    /// Set once the writer is done with the frame (written or dropped).
    done: Option<Arc<Flag>>,
}

/// A one-shot flag a thread can wait for.
#[derive(Default)]
struct Flag {
    set: Mutex<bool>,
    cond: Condvar,
}

impl Flag {
    fn set(&self) {
        *lock(&self.set) = true;
        self.cond.notify_all();
    }

    /// Wait until set or `timeout` passed; true if set.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut set = lock(&self.set);
        while !*set {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = self
                .cond
                .wait_timeout(set, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

#[derive(Default)]
struct GateState {
    /// Pause points queued so far (by the reader).
    pauses_queued: u64,
    /// Pause points released so far (by the reader, on Thaw/Restore).
    pauses_released: u64,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    released: Condvar,
}

/// What the writer does when a write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWriteError {
    /// Real port: log, wait, retry the same bytes (the host may reconnect).
    Retry,
    /// Socket in tests: the peer is gone, stop writing.
    Stop,
}

/// What became of a frame handed to a [`ScopeSender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued for the writer.
    Queued,
    /// The stream has ended (its last frame was sent, or it was cancelled):
    /// the frame was dropped.
    Ended,
    /// The writer is gone (the channel closed): the frame was dropped.
    WriterGone,
}

/// The frames of one stream.
pub(crate) struct Scope {
    /// The connection the stream belongs to.
    epoch: u64,
    /// Set by the reader when the stream ends without a last frame: the
    /// writer drops the stream's queued frames. Never needs `open`'s lock.
    cancelled: AtomicBool,
    /// Mirror of `!open`, readable without the lock.
    sealed: AtomicBool,
    /// False once the stream's last frame was queued.
    open: Mutex<bool>,
}

impl Scope {
    /// End the stream now: drop its queued frames, accept no more. Never
    /// blocks (any thread, the reader included).
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether frames sent now can still go out (not cancelled, no last
    /// frame sent yet). Lock-free, so only a hint for producers.
    pub(crate) fn is_open(&self) -> bool {
        !self.is_cancelled() && !self.sealed.load(Ordering::SeqCst)
    }

    /// Take the stream's send lock. Waits while another producer of the
    /// same stream is blocked handing a frame to a full outbox.
    pub(crate) fn lock<'a>(self: &'a Arc<Self>, outbox: &'a Outbox) -> ScopeSender<'a> {
        ScopeSender {
            scope: self,
            outbox,
            open: lock(&self.open),
        }
    }
}

/// The send lock of one stream ([`Scope::lock`]).
pub(crate) struct ScopeSender<'a> {
    scope: &'a Arc<Scope>,
    outbox: &'a Outbox,
    open: MutexGuard<'a, bool>,
}

impl ScopeSender<'_> {
    fn queue(&mut self, frame: Option<Vec<u8>>, last: bool) -> Sent {
        if !*self.open || self.scope.is_cancelled() {
            return Sent::Ended;
        }
        if last {
            *self.open = false;
            self.scope.sealed.store(true, Ordering::SeqCst);
        }
        let Some(frame) = frame else {
            return Sent::Queued;
        };
        let item = Item {
            frame,
            epoch: self.scope.epoch,
            scope: Some(self.scope.clone()),
            pause: false,
            done: None,
        };
        if self.outbox.tx.send(item).is_ok() {
            Sent::Queued
        } else {
            Sent::WriterGone
        }
    }

    /// Queue a frame of the stream.
    pub(crate) fn send(&mut self, msg: &GuestMessage) -> Sent {
        let frame = encode_message(msg);
        self.queue(frame, false)
    }

    /// Queue the stream's last frame: nothing after it is sent.
    pub(crate) fn send_last(&mut self, msg: &GuestMessage) -> Sent {
        let frame = encode_message(msg);
        self.queue(frame, true)
    }

    /// Queue the response that opened the stream (`Exec`, `Attach`, ...).
    pub(crate) fn respond(&mut self, id: u64, body: Result<Response, AgentError>) -> Sent {
        let frame = encode_response(id, body);
        self.queue(frame, false)
    }

    /// Queue a response that is also the stream's last frame (a stream
    /// request that failed after its scope was made).
    pub(crate) fn respond_last(&mut self, id: u64, body: Result<Response, AgentError>) -> Sent {
        let frame = encode_response(id, body);
        self.queue(frame, true)
    }
}

/// A handle for queueing frames; cheap to clone, usable from any thread.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: SyncSender<Item>,
    gate: Arc<Gate>,
    /// The current connection.
    epoch: Arc<AtomicU64>,
}

impl Outbox {
    /// Start the writer thread on `out`.
    pub(crate) fn start<W: Write + Send + 'static>(
        out: W,
        on_error: OnWriteError,
    ) -> io::Result<Outbox> {
        let (tx, rx) = sync_channel(OUTBOX_FRAMES);
        let gate = Arc::new(Gate::default());
        let epoch = Arc::new(AtomicU64::new(0));
        let writer_gate = gate.clone();
        let writer_epoch = epoch.clone();
        thread::Builder::new()
            .name("writer".into())
            .spawn(move || run_writer(out, rx, &writer_gate, &writer_epoch, on_error))?;
        Ok(Outbox { tx, gate, epoch })
    }

    /// A scope for a new stream of the current connection.
    pub(crate) fn scope(&self) -> Arc<Scope> {
        Arc::new(Scope {
            epoch: self.epoch.load(Ordering::SeqCst),
            cancelled: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            open: Mutex::new(true),
        })
    }

    /// A new host connection (`Restore`, `Reattach`): every frame queued so
    /// far, and every later frame of a stream opened before, is dropped.
    pub(crate) fn new_connection(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn enqueue(&self, frame: Vec<u8>, pause: bool, done: Option<Arc<Flag>>) -> bool {
        let item = Item {
            frame,
            epoch: self.epoch.load(Ordering::SeqCst),
            scope: None,
            pause,
            done,
        };
        self.tx.send(item).is_ok()
    }

    /// Queue a connection-level message (`Hello`); blocks while the writer
    /// is paused and the channel is full. Returns false when the writer is
    /// gone.
    pub(crate) fn send(&self, msg: &GuestMessage) -> bool {
        match encode_message(msg) {
            Some(frame) => self.enqueue(frame, false, None),
            None => true,
        }
    }

    /// Queue the response to request `id`.
    pub(crate) fn respond(&self, id: u64, body: Result<Response, AgentError>) -> bool {
        match encode_response(id, body) {
            Some(frame) => self.enqueue(frame, false, None),
            None => true,
        }
    }

    /// Queue the response to request `id` and wait (at most `timeout`)
    /// until the writer has written it. True if it was written in time.
    pub(crate) fn respond_and_flush(
        &self,
        id: u64,
        body: Result<Response, AgentError>,
        timeout: Duration,
    ) -> bool {
        let Some(frame) = encode_response(id, body) else {
            return false;
        };
        let done = Arc::new(Flag::default());
        self.enqueue(frame, false, Some(done.clone())) && done.wait(timeout)
    }

    /// Queue the response to request `id` as a pause point: nothing queued
    /// after it is written before [`Outbox::release`].
    pub(crate) fn respond_then_pause(&self, id: u64, body: Result<Response, AgentError>) -> bool {
        let Some(frame) = encode_response(id, body) else {
            return true;
        };
        lock(&self.gate.state).pauses_queued += 1;
        self.enqueue(frame, true, None)
    }

    /// Release every pause point queued so far (Thaw, Restore, Reattach).
    /// Harmless when nothing is paused.
    pub(crate) fn release(&self) {
        let mut st = lock(&self.gate.state);
        st.pauses_released = st.pauses_queued;
        self.gate.released.notify_all();
    }
}

fn encode_message(msg: &GuestMessage) -> Option<Vec<u8>> {
    match encode_frame(msg) {
        Ok(frame) => Some(frame),
        Err(e) => {
            agent_log!("dropping an unencodable outgoing message: {e}");
            None
        }
    }
}

/// Frame the response to `id`; a body too large for a frame is replaced by
/// an `Io` error, so a request is never left unanswered.
fn encode_response(id: u64, body: Result<Response, AgentError>) -> Option<Vec<u8>> {
    match encode_frame(&GuestMessage::Response { id, body }) {
        Ok(frame) => Some(frame),
        Err(e) => {
            let msg = GuestMessage::Response {
                id,
                body: Err(AgentError::new(
                    AgentErrorKind::Io,
                    format!("response does not fit in a frame: {e}"),
                )),
            };
            match encode_frame(&msg) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    agent_log!("cannot encode the response to request {id}: {e}");
                    None
                }
            }
        }
    }
}

fn run_writer<W: Write>(
    mut out: W,
    rx: Receiver<Item>,
    gate: &Gate,
    epoch: &AtomicU64,
    on_error: OnWriteError,
) {
    let mut pauses_written: u64 = 0;
    for item in rx {
        let stale = item.epoch < epoch.load(Ordering::SeqCst)
            || item.scope.as_ref().is_some_and(|s| s.is_cancelled());
        if !stale && !write_frame(&mut out, &item.frame, on_error) {
            return;
        }
        if item.pause {
            // Counted even when dropped as stale (a Quiesce answered on a
            // connection that is already gone): the release that came
            // with the new connection covers it, and every later pause
            // point still pauses.
            pauses_written += 1;
            let mut st = lock(&gate.state);
            while st.pauses_released < pauses_written {
                st = gate
                    .released
                    .wait(st)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        if let Some(done) = item.done {
            done.set();
        }
    }
}

/// Write a whole frame. Returns false when the writer must stop.
fn write_frame<W: Write>(out: &mut W, frame: &[u8], on_error: OnWriteError) -> bool {
    let mut done = 0;
    let mut logged = false;
    while done < frame.len() {
        let err = match out.write(&frame[done..]) {
            Ok(0) => io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"),
            Ok(n) => {
                done += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        match on_error {
            OnWriteError::Stop => return false,
            OnWriteError::Retry => {
                if !logged {
                    agent_log!("channel write failed ({err}); retrying");
                    logged = true;
                }
                thread::sleep(Duration::from_millis(WRITE_RETRY_MS));
            }
        }
    }
    let _ = out.flush();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::FrameDecoder;

    /// A writer that records frames into a shared buffer.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn decoded(sink: &Sink) -> Vec<GuestMessage> {
        let mut dec = FrameDecoder::new();
        dec.push(&lock(&sink.0));
        let mut out = Vec::new();
        while let Some(m) = dec.decode_next().unwrap() {
            out.push(m);
        }
        out
    }

    fn wait_for(sink: &Sink, n: usize) -> Vec<GuestMessage> {
        for _ in 0..500 {
            let got = decoded(sink);
            if got.len() >= n {
                return got;
            }
            thread::sleep(Duration::from_millis(2));
        }
        decoded(sink)
    }

    fn eof(stream: u64) -> GuestMessage {
        GuestMessage::StreamEof { stream }
    }

    #[test]
    fn pause_point_holds_later_frames_until_release() {
        let sink = Sink::default();
        let outbox = Outbox::start(sink.clone(), OnWriteError::Stop).unwrap();
        assert!(outbox.send(&eof(1)));
        assert!(outbox.respond_then_pause(7, Ok(Response::Quiesced)));
        assert!(outbox.send(&eof(2)));
        assert_eq!(wait_for(&sink, 2).len(), 2);
        thread::sleep(Duration::from_millis(50));
        let held = decoded(&sink);
        assert_eq!(held.len(), 2, "a frame got past the pause point: {held:?}");
        assert_eq!(
            held[1],
            GuestMessage::Response {
                id: 7,
                body: Ok(Response::Quiesced)
            }
        );
        outbox.release();
        let all = wait_for(&sink, 3);
        assert_eq!(all.get(2), Some(&eof(2)));
    }

    #[test]
    fn release_before_the_writer_reaches_the_pause_point_is_not_lost() {
        let sink = Sink::default();
        let outbox = Outbox::start(sink.clone(), OnWriteError::Stop).unwrap();
        assert!(outbox.respond_then_pause(1, Ok(Response::Quiesced)));
        outbox.release();
        assert!(outbox.send(&eof(3)));
        assert_eq!(wait_for(&sink, 2).len(), 2);
    }

    #[test]
    fn a_new_connection_drops_frames_held_for_the_old_one() {
        let sink = Sink::default();
        let outbox = Outbox::start(sink.clone(), OnWriteError::Stop).unwrap();
        let old_stream = outbox.scope();
        assert!(outbox.respond_then_pause(1, Ok(Response::Quiesced)));
        assert_eq!(wait_for(&sink, 1).len(), 1);
        // Held behind the pause point: a response and a stream frame.
        assert!(outbox.respond(2, Ok(Response::Signal)));
        assert_eq!(old_stream.lock(&outbox).send(&eof(9)), Sent::Queued);
        outbox.new_connection();
        outbox.release();
        assert!(outbox.respond(3, Ok(Response::Thawed)));
        // Frames of the old stream are dropped even when queued later.
        assert_eq!(old_stream.lock(&outbox).send(&eof(9)), Sent::Queued);
        let new_stream = outbox.scope();
        assert_eq!(new_stream.lock(&outbox).send(&eof(10)), Sent::Queued);
        let got = wait_for(&sink, 3);
        assert_eq!(
            got,
            vec![
                GuestMessage::Response {
                    id: 1,
                    body: Ok(Response::Quiesced)
                },
                GuestMessage::Response {
                    id: 3,
                    body: Ok(Response::Thawed)
                },
                eof(10),
            ]
        );
    }

    #[test]
    fn a_dropped_pause_point_does_not_disarm_the_next_one() {
        let sink = Sink::default();
        let outbox = Outbox::start(sink.clone(), OnWriteError::Stop).unwrap();
        // Hold the writer on a first pause point, queue a second one and
        // make it stale before the writer reaches it.
        assert!(outbox.respond_then_pause(1, Ok(Response::Quiesced)));
        assert_eq!(wait_for(&sink, 1).len(), 1);
        assert!(outbox.respond_then_pause(2, Ok(Response::Quiesced)));
        outbox.new_connection();
        outbox.release();
        assert!(outbox.respond(3, Ok(Response::Reattached(test_info()))));
        assert_eq!(wait_for(&sink, 2).len(), 2);
        // A later quiesce still holds what follows it.
        assert!(outbox.respond_then_pause(4, Ok(Response::Quiesced)));
        assert!(outbox.send(&eof(5)));
        assert_eq!(wait_for(&sink, 3).len(), 3);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(decoded(&sink).len(), 3, "the pause point did not hold");
        outbox.release();
        assert_eq!(wait_for(&sink, 4).get(3), Some(&eof(5)));
    }

    fn test_info() -> hearth_proto::AgentInfo {
        hearth_proto::AgentInfo {
            proto_version: hearth_proto::PROTO_VERSION,
            agent_version: String::new(),
            capabilities: vec![],
            closed_streams: vec![],
        }
    }

    #[test]
    fn cancel_drops_queued_frames_and_last_seals() {
        let sink = Sink::default();
        let outbox = Outbox::start(sink.clone(), OnWriteError::Stop).unwrap();
        let a = outbox.scope();
        let b = outbox.scope();
        assert!(outbox.respond_then_pause(1, Ok(Response::Quiesced)));
        assert_eq!(a.lock(&outbox).send(&eof(1)), Sent::Queued);
        a.cancel();
        assert_eq!(a.lock(&outbox).send(&eof(1)), Sent::Ended);
        assert_eq!(b.lock(&outbox).send_last(&eof(2)), Sent::Queued);
        assert_eq!(b.lock(&outbox).send(&eof(2)), Sent::Ended);
        outbox.release();
        assert!(outbox.send(&eof(3)));
        let got = wait_for(&sink, 3);
        assert_eq!(got[1..], [eof(2), eof(3)]);
    }

    #[test]
    fn flush_waits_for_the_frame_to_be_written() {
        let sink = Sink::default();
        let outbox = Outbox::start(sink.clone(), OnWriteError::Stop).unwrap();
        assert!(outbox.respond_and_flush(5, Ok(Response::PoweringOff), Duration::from_secs(10)));
        assert_eq!(decoded(&sink).len(), 1);
        // Held by a pause point: not written in time.
        assert!(outbox.respond_then_pause(6, Ok(Response::Quiesced)));
        assert!(!outbox.respond_and_flush(7, Ok(Response::PoweringOff), Duration::from_millis(50)));
    }

    #[test]
    fn oversized_response_becomes_an_error() {
        let frame = encode_response(
            4,
            Ok(Response::ReadFile {
                data: vec![0; hearth_proto::MAX_PAYLOAD_BYTES + 1],
                eof: true,
            }),
        )
        .unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        match dec.decode_next::<GuestMessage>().unwrap().unwrap() {
            GuestMessage::Response {
                id: 4,
                body: Err(e),
            } => {
                assert_eq!(e.kind, AgentErrorKind::Io)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
