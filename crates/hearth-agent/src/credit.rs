//! Flow-control arithmetic of one stream (plain data; the owner locks it).
//!
//! Every stream has a window of [`STREAM_WINDOW_BYTES`] in each direction
//! (see `hearth_proto`, "Flow control"):
//!
//! * [`SendCredit`], guest → host: what the agent may still send. Payload
//!   bytes consume it, host `StreamCredit` returns it. A producer reserves
//!   what it may read *before* reading, so two producers of one stream (the
//!   output pumps of two incarnations of a supervised process) can never
//!   together exceed the window, and refunds what it did not use.
//! * [`RecvWindow`], host → guest: bytes the host sent that the agent has
//!   not yet written on. Going over the window is the host's protocol
//!   violation; written bytes become the credit the agent returns.

use hearth_proto::STREAM_WINDOW_BYTES;

/// The window as a byte count.
pub(crate) const WINDOW_BYTES: usize = STREAM_WINDOW_BYTES as usize;

/// Guest → host credit of one stream.
#[derive(Debug)]
pub(crate) struct SendCredit {
    /// Bytes the agent may still send.
    available_bytes: usize,
    /// Bytes reserved by producers and not yet sent or refunded.
    reserved_bytes: usize,
}

impl Default for SendCredit {
    fn default() -> Self {
        Self::new()
    }
}

impl SendCredit {
    /// A fresh stream: the whole window.
    pub(crate) fn new() -> Self {
        SendCredit {
            available_bytes: WINDOW_BYTES,
            reserved_bytes: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.available_bytes
    }

    /// Take up to `max_bytes` of credit for a read; 0 when there is none.
    pub(crate) fn reserve(&mut self, max_bytes: usize) -> usize {
        let n = self.available_bytes.min(max_bytes);
        self.available_bytes -= n;
        self.reserved_bytes += n;
        n
    }

    /// A reservation of `reserved_bytes` ended with `used_bytes` sent: the
    /// rest is available again.
    pub(crate) fn settle(&mut self, reserved_bytes: usize, used_bytes: usize) {
        let reserved_bytes = reserved_bytes.min(self.reserved_bytes);
        let used_bytes = used_bytes.min(reserved_bytes);
        self.reserved_bytes -= reserved_bytes;
        self.available_bytes += reserved_bytes - used_bytes;
    }

    /// Consume `n` bytes outright (data sent without a prior reservation,
    /// e.g. buffered output replayed to an `Attach`); at most what is
    /// available. Returns what was taken.
    pub(crate) fn take(&mut self, n: usize) -> usize {
        let n = n.min(self.available_bytes);
        self.available_bytes -= n;
        n
    }

    /// Host `StreamCredit`. Credit beyond the window (a host returning more
    /// than it was sent) is capped; returns false when that happened.
    pub(crate) fn grant(&mut self, bytes: u32) -> bool {
        let room = WINDOW_BYTES - self.reserved_bytes.min(WINDOW_BYTES);
        let wanted = self.available_bytes.saturating_add(bytes as usize);
        self.available_bytes = wanted.min(room);
        wanted <= room
    }
}

/// The host sent more than the window allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowExceeded {
    pub outstanding_bytes: usize,
    pub received_bytes: usize,
}

impl std::fmt::Display for WindowExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the host sent {} bytes with {} bytes outstanding, over the {WINDOW_BYTES}-byte stream window",
            self.received_bytes, self.outstanding_bytes
        )
    }
}

/// Host → guest window of one stream.
#[derive(Debug, Default)]
pub(crate) struct RecvWindow {
    /// Received and not yet written on.
    outstanding_bytes: usize,
}

impl RecvWindow {
    /// The host sent `n` bytes.
    pub(crate) fn receive(&mut self, n: usize) -> Result<(), WindowExceeded> {
        match self.outstanding_bytes.checked_add(n) {
            Some(total) if total <= WINDOW_BYTES => {
                self.outstanding_bytes = total;
                Ok(())
            }
            _ => Err(WindowExceeded {
                outstanding_bytes: self.outstanding_bytes,
                received_bytes: n,
            }),
        }
    }

    /// `n` bytes were written on (or dropped): the credit to return.
    pub(crate) fn release(&mut self, n: usize) -> u32 {
        let n = n.min(self.outstanding_bytes);
        self.outstanding_bytes -= n;
        // n <= WINDOW_BYTES, which fits in a u32.
        n as u32
    }

    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_credit_is_reserved_settled_and_granted() {
        let mut c = SendCredit::new();
        assert_eq!(c.available(), WINDOW_BYTES);
        assert_eq!(c.reserve(64 * 1024), 64 * 1024);
        // A second producer can only reserve what is left.
        assert_eq!(c.reserve(WINDOW_BYTES), WINDOW_BYTES - 64 * 1024);
        assert_eq!(c.reserve(1), 0);
        // The first read used 10 bytes; the second used everything.
        c.settle(64 * 1024, 10);
        assert_eq!(c.available(), 64 * 1024 - 10);
        c.settle(WINDOW_BYTES - 64 * 1024, WINDOW_BYTES - 64 * 1024);
        assert_eq!(c.available(), 64 * 1024 - 10);
        assert!(c.grant(10));
        assert_eq!(c.take(WINDOW_BYTES * 2), 64 * 1024);
        assert_eq!(c.available(), 0);
        assert!(c.grant(STREAM_WINDOW_BYTES));
        assert_eq!(c.available(), WINDOW_BYTES);
    }

    #[test]
    fn send_credit_never_exceeds_the_window() {
        let mut c = SendCredit::new();
        assert!(!c.grant(1));
        assert_eq!(c.available(), WINDOW_BYTES);
        let r = c.reserve(100);
        // A grant while bytes are reserved cannot push past the window.
        assert!(!c.grant(u32::MAX));
        assert_eq!(c.available() + r, WINDOW_BYTES);
        c.settle(r, 0);
        assert_eq!(c.available(), WINDOW_BYTES);
    }

    #[test]
    fn receive_window_counts_outstanding_bytes() {
        let mut w = RecvWindow::default();
        assert!(w.receive(WINDOW_BYTES - 1).is_ok());
        assert!(w.receive(1).is_ok());
        let e = w.receive(1).unwrap_err();
        assert_eq!(e.outstanding_bytes, WINDOW_BYTES);
        assert_eq!(
            w.outstanding(),
            WINDOW_BYTES,
            "a refused chunk is not counted"
        );
        assert_eq!(w.release(1000), 1000);
        assert!(w.receive(1000).is_ok());
        assert!(w.receive(usize::MAX).is_err());
        assert_eq!(w.release(usize::MAX), WINDOW_BYTES as u32);
        assert_eq!(w.outstanding(), 0);
    }
}
