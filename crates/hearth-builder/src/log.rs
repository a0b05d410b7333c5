//! Where a build's output goes: the [`BuildLog`] sink the caller supplies
//! (the control plane stores and streams it), and the bounded tail the
//! builder keeps to quote in a failure's reason. Called from the build's
//! task only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::Phase;

/// The caller's side of a build's output. Implementations must not block:
/// they are called on the build's task between guest reads.
pub trait BuildLog: Send + Sync {
    /// A phase begins (the sink writes its own line for it).
    fn phase(&self, phase: &Phase);
    /// Bytes of build output (step output, and the builder's own lines,
    /// each ending in a newline).
    fn output(&self, bytes: &[u8]);
}

/// Lines kept for a failure's reason.
pub const TAIL_LINES: usize = 10;
/// Longest line kept in the tail (longer ones are cut).
pub const TAIL_LINE_BYTES: usize = 200;

/// The last [`TAIL_LINES`] lines of output, as the builder saw them.
#[derive(Default)]
pub struct Tail {
    inner: Mutex<TailInner>,
}

#[derive(Default)]
struct TailInner {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    pub fn push(&self, bytes: &[u8]) {
        let mut t = self.inner.lock().expect("tail lock");
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                let line = std::mem::take(&mut t.partial);
                t.keep(line);
            } else if t.partial.len() < TAIL_LINE_BYTES {
                t.partial.push(b);
            }
        }
    }

    /// Forget every line (a new phase begins: a failure quotes its own output).
    pub fn clear(&self) {
        let mut t = self.inner.lock().expect("tail lock");
        t.lines.clear();
        t.partial.clear();
    }

    /// The kept lines, oldest first, the unfinished one included.
    pub fn lines(&self) -> Vec<String> {
        let t = self.inner.lock().expect("tail lock");
        let mut out: Vec<String> = t.lines.iter().cloned().collect();
        if !t.partial.is_empty() {
            out.push(String::from_utf8_lossy(&t.partial).into_owned());
        }
        if out.len() > TAIL_LINES {
            out.drain(..out.len() - TAIL_LINES);
        }
        out
    }
}

impl TailInner {
    fn keep(&mut self, line: Vec<u8>) {
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            return;
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// A [`BuildLog`] that also feeds the tail. Cheap to clone (the app's
/// output is drained by a task of its own while the build waits).
#[derive(Clone)]
pub(crate) struct Logger {
    pub sink: Arc<dyn BuildLog>,
    pub tail: Arc<Tail>,
}

impl Logger {
    pub fn new(sink: Arc<dyn BuildLog>) -> Self {
        Self {
            sink,
            tail: Arc::default(),
        }
    }

    /// A phase begins: the sink records it (even when it keeps no output),
    /// and the tail starts over, so a failure quotes its own phase's output.
    pub fn phase(&self, phase: &Phase) {
        self.tail.clear();
        self.sink.phase(phase);
    }

    /// One line of the builder's own.
    pub fn line(&self, text: &str) {
        let mut b = text.as_bytes().to_vec();
        b.push(b'\n');
        self.output(&b);
    }

    pub fn output(&self, bytes: &[u8]) {
        self.tail.push(bytes);
        self.sink.output(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_and_cuts_long_ones() {
        let t = Tail::default();
        for i in 0..25 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(&[b'x'; 1000]);
        let lines = t.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 16");
        assert_eq!(lines.last().unwrap().len(), TAIL_LINE_BYTES);
    }

    #[test]
    fn blank_lines_and_carriage_returns_are_not_kept() {
        let t = Tail::default();
        t.push(b"a\r\n\r\n\nb\n");
        assert_eq!(t.lines(), vec!["a", "b"]);
    }
}
