//! The detached output of a named process (plain data; the process locks
//! it): the most recent [`DETACHED_OUTPUT_BYTES`] it wrote while no host
//! stream was attached, with the fd each byte came from.

use std::collections::VecDeque;

use hearth_proto::{OutputFd, DETACHED_OUTPUT_BYTES, STREAM_WINDOW_BYTES};

// A fresh attach stream can always take the whole ring in its first window.
const _: () = assert!(DETACHED_OUTPUT_BYTES <= STREAM_WINDOW_BYTES as usize);

/// A bounded byte ring that keeps the newest bytes, in runs per fd.
#[derive(Debug)]
pub(crate) struct OutputRing {
    runs: VecDeque<(OutputFd, Vec<u8>)>,
    len_bytes: usize,
    cap_bytes: usize,
}

impl Default for OutputRing {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputRing {
    pub(crate) fn new() -> Self {
        Self::with_capacity(DETACHED_OUTPUT_BYTES)
    }

    pub(crate) fn with_capacity(cap_bytes: usize) -> Self {
        OutputRing {
            runs: VecDeque::new(),
            len_bytes: 0,
            cap_bytes,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len_bytes
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len_bytes == 0
    }

    /// Append output, dropping the oldest bytes beyond the capacity.
    pub(crate) fn push(&mut self, fd: OutputFd, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.cap_bytes)..];
        if data.is_empty() {
            return;
        }
        match self.runs.back_mut() {
            Some((last_fd, run)) if *last_fd == fd => run.extend_from_slice(data),
            _ => self.runs.push_back((fd, data.to_vec())),
        }
        self.len_bytes += data.len();
        while self.len_bytes > self.cap_bytes {
            let excess = self.len_bytes - self.cap_bytes;
            let Some((_, front)) = self.runs.front_mut() else {
                break;
            };
            if front.len() <= excess {
                self.len_bytes -= front.len();
                self.runs.pop_front();
            } else {
                front.drain(..excess);
                self.len_bytes -= excess;
            }
        }
    }

    /// Take everything out, oldest first.
    pub(crate) fn take(&mut self) -> Vec<(OutputFd, Vec<u8>)> {
        self.len_bytes = 0;
        self.runs.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutputFd::{Stderr, Stdout};

    #[test]
    fn keeps_the_newest_bytes_in_order_with_their_fd() {
        let mut r = OutputRing::with_capacity(8);
        r.push(Stdout, b"abc");
        r.push(Stdout, b"de");
        r.push(Stderr, b"XY");
        assert_eq!(r.len(), 7);
        r.push(Stdout, b"fgh");
        assert_eq!(r.len(), 8);
        assert_eq!(
            r.take(),
            vec![
                (Stdout, b"cde".to_vec()),
                (Stderr, b"XY".to_vec()),
                (Stdout, b"fgh".to_vec())
            ]
        );
        assert!(r.is_empty());
        assert!(r.take().is_empty());
    }

    #[test]
    fn a_push_larger_than_the_ring_keeps_its_tail() {
        let mut r = OutputRing::with_capacity(4);
        r.push(Stderr, b"old");
        r.push(Stdout, b"0123456789");
        assert_eq!(r.take(), vec![(Stdout, b"6789".to_vec())]);
        r.push(Stdout, b"");
        assert!(r.is_empty());
    }

    #[test]
    fn default_capacity_is_the_protocol_bound() {
        let mut r = OutputRing::new();
        r.push(Stdout, &vec![1u8; DETACHED_OUTPUT_BYTES * 3]);
        r.push(Stdout, b"end");
        assert_eq!(r.len(), DETACHED_OUTPUT_BYTES);
        let runs = r.take();
        assert!(runs[0].1.ends_with(b"end"));
    }
}
