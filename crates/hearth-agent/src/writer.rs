//! The frame writer and the quiesce gate.
//!
//! Exactly one thread (named `writer`) writes the channel. Every other thread
//! hands it whole encoded frames through an [`Outbox`] (a bounded channel), so
//! frames never interleave and their order is the order they were queued.
//!
//! Quiesce: the `Quiesced` response is queued as a *pause point*. After the
//! writer has written it, it stops taking frames until the reader releases the
//! gate (on `Thaw` or `Restore`). Producers then block on the full channel:
//! that is the intended back-pressure, and it holds every later frame, in
//! order, in guest memory (or, beyond the channel, in pipe and socket buffers).
//!
//! ```text
//!   producers ──frames──▶ [sync_channel] ──▶ writer ──▶ port
//!                                              │ after a pause point:
//!                                              └─ waits until released >= written pause points
//! ```
//!
//! Counting pause points (instead of a paused flag) makes a release that
//! arrives before the writer even reached the pause point work too.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use hearth_proto::{encode_frame, AgentError, AgentErrorKind, GuestMessage, Response};

use crate::{agent_log, lock};

/// Frames the writer channel holds before producers block.
const OUTBOX_FRAMES: usize = 32;
/// Pause between retries of a failed write on the real port.
const WRITE_RETRY_MS: u64 = 100;

enum Item {
    Frame(Vec<u8>),
    /// Write this frame, then wait for the gate to be released.
    FrameThenPause(Vec<u8>),
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

/// A handle for queueing frames; cheap to clone, usable from any thread.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: SyncSender<Item>,
    gate: Arc<Gate>,
}

impl Outbox {
    /// Start the writer thread on `out`.
    pub(crate) fn start<W: Write + Send + 'static>(
        out: W,
        on_error: OnWriteError,
    ) -> io::Result<Outbox> {
        let (tx, rx) = sync_channel(OUTBOX_FRAMES);
        let gate = Arc::new(Gate::default());
        let writer_gate = gate.clone();
        thread::Builder::new()
            .name("writer".into())
            .spawn(move || run_writer(out, rx, &writer_gate, on_error))?;
        Ok(Outbox { tx, gate })
    }

    /// Queue a message; blocks while the writer is paused and the channel is
    /// full. Returns false when the writer is gone.
    pub(crate) fn send(&self, msg: &GuestMessage) -> bool {
        match encode_frame(msg) {
            Ok(frame) => self.tx.send(Item::Frame(frame)).is_ok(),
            Err(e) => {
                agent_log!("dropping an unencodable outgoing message: {e}");
                true
            }
        }
    }

    /// Queue the response to request `id`.
    pub(crate) fn respond(&self, id: u64, body: Result<Response, AgentError>) -> bool {
        match encode_response(id, body) {
            Some(frame) => self.tx.send(Item::Frame(frame)).is_ok(),
            None => true,
        }
    }

    /// Queue the response to request `id` as a pause point: nothing queued
    /// after it is written before [`Outbox::release`].
    pub(crate) fn respond_then_pause(&self, id: u64, body: Result<Response, AgentError>) -> bool {
        let Some(frame) = encode_response(id, body) else {
            return true;
        };
        lock(&self.gate.state).pauses_queued += 1;
        self.tx.send(Item::FrameThenPause(frame)).is_ok()
    }

    /// Release every pause point queued so far (Thaw, Restore). Harmless
    /// when nothing is paused.
    pub(crate) fn release(&self) {
        let mut st = lock(&self.gate.state);
        st.pauses_released = st.pauses_queued;
        self.gate.released.notify_all();
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

fn run_writer<W: Write>(mut out: W, rx: Receiver<Item>, gate: &Gate, on_error: OnWriteError) {
    let mut pauses_written: u64 = 0;
    for item in rx {
        let (frame, pause) = match item {
            Item::Frame(f) => (f, false),
            Item::FrameThenPause(f) => (f, true),
        };
        if !write_frame(&mut out, &frame, on_error) {
            return;
        }
        if pause {
            pauses_written += 1;
            let mut st = lock(&gate.state);
            while st.pauses_released < pauses_written {
                st = gate
                    .released
                    .wait(st)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
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
