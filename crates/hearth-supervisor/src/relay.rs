//! The frame-aligned agent relay, as two pure buffers (no I/O: the loop in
//! [`crate::run`] reads and writes the sockets and feeds these).
//!
//! Guest to host ([`GuestToHost`]): bytes from QEMU's agent socket are
//! passed on as they come, while a [`FrameCursor`] follows the frame
//! boundaries. When the attached `hearth` goes away in the middle of a
//! frame, the rest of that frame is dropped, so the next `hearth` starts on
//! a frame boundary; while nobody is attached, nothing is read from QEMU at
//! all, and the guest's writes wait (no byte is lost or buffered without
//! bound). A guest that sends an invalid header breaks the alignment for
//! good: its bytes are passed on unchanged, and the host, which checks
//! every frame, fails that microVM.
//!
//! Host to guest ([`HostToGuest`]): only whole frames reach the guest. A
//! frame is held until its last byte has arrived, so a `hearth` that dies
//! mid-write leaves nothing half-written in the guest's stream.

use hearth_proto::{parse_header_any, FrameError, HEADER_LEN, MAX_PAYLOAD_BYTES};

/// Bytes read from QEMU in one go.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Whole frames queued for QEMU before the relay stops reading the host.
pub const MAX_QUEUED_TO_GUEST_BYTES: usize = 2 * (HEADER_LEN + MAX_PAYLOAD_BYTES);

/// Follows frame boundaries through a byte stream.
#[derive(Debug, Default, Clone)]
pub struct FrameCursor {
    header: [u8; HEADER_LEN],
    header_have: usize,
    payload_left: usize,
}

impl FrameCursor {
    /// Between two frames.
    pub fn at_boundary(&self) -> bool {
        self.header_have == 0 && self.payload_left == 0
    }

    /// Consume bytes up to (not past) the next frame boundary; returns how
    /// many were consumed and whether a frame ended there.
    pub fn advance_to_boundary(&mut self, bytes: &[u8]) -> Result<(usize, bool), FrameError> {
        let mut used = 0;
        loop {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len() - used);
                self.payload_left -= take;
                used += take;
                if self.payload_left == 0 {
                    return Ok((used, true));
                }
                return Ok((used, false));
            }
            if used == bytes.len() {
                return Ok((used, false));
            }
            let take = (HEADER_LEN - self.header_have).min(bytes.len() - used);
            self.header[self.header_have..self.header_have + take]
                .copy_from_slice(&bytes[used..used + take]);
            self.header_have += take;
            used += take;
            if self.header_have < HEADER_LEN {
                return Ok((used, false));
            }
            let (_, len) = parse_header_any(&self.header)?;
            self.header_have = 0;
            self.payload_left = len;
            if len == 0 {
                return Ok((used, true));
            }
        }
    }

    /// Consume all of `bytes`; returns the number of frames that ended.
    pub fn advance(&mut self, mut bytes: &[u8]) -> Result<u64, FrameError> {
        let mut frames = 0;
        while !bytes.is_empty() {
            let (used, ended) = self.advance_to_boundary(bytes)?;
            frames += u64::from(ended);
            bytes = &bytes[used..];
        }
        Ok(frames)
    }
}

/// The guest-to-host direction.
#[derive(Debug, Default)]
pub struct GuestToHost {
    buf: Vec<u8>,
    start: usize,
    cursor: FrameCursor,
    /// The host left mid-frame: drop bytes until the next boundary.
    discarding: bool,
    /// The guest broke framing; bytes pass unchecked from now on.
    broken: bool,
    /// Whole frames passed to a host.
    pub frames: u64,
}

impl GuestToHost {
    /// Should the loop read QEMU's agent socket now?
    pub fn wants_read(&self, attached: bool) -> bool {
        self.start == self.buf.len() && (attached || self.discarding)
    }

    /// Bytes just read from QEMU. While discarding, drops what belongs to
    /// the abandoned frame at once.
    pub fn fill(&mut self, data: &[u8]) {
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(data);
        self.drop_abandoned();
    }

    /// Bytes waiting for the attached host.
    pub fn pending(&self) -> &[u8] {
        if self.discarding {
            &[]
        } else {
            &self.buf[self.start..]
        }
    }

    /// `n` bytes of [`GuestToHost::pending`] were written to the host.
    pub fn consumed(&mut self, n: usize) {
        let written = &self.buf[self.start..self.start + n];
        if !self.broken {
            match self.cursor.advance(written) {
                Ok(frames) => self.frames += frames,
                Err(_) => self.broken = true,
            }
        }
        self.start += n;
    }

    /// The attached host went away.
    pub fn detach(&mut self) {
        if !self.broken && !self.cursor.at_boundary() {
            self.discarding = true;
            self.drop_abandoned();
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn drop_abandoned(&mut self) {
        if !self.discarding {
            return;
        }
        match self.cursor.advance_to_boundary(&self.buf[self.start..]) {
            Ok((used, _)) => {
                self.start += used;
                if self.cursor.at_boundary() {
                    self.discarding = false;
                }
            }
            Err(_) => {
                self.broken = true;
                self.discarding = false;
            }
        }
    }
}

/// The host-to-guest direction.
#[derive(Debug, Default)]
pub struct HostToGuest {
    /// Bytes of a frame not yet complete.
    partial: Vec<u8>,
    /// Whole frames for QEMU.
    out: Vec<u8>,
    out_start: usize,
    /// Whole frames queued for the guest.
    pub frames: u64,
}

impl HostToGuest {
    /// Should the loop read the attached host now?
    pub fn wants_read(&self) -> bool {
        self.out.len() - self.out_start < MAX_QUEUED_TO_GUEST_BYTES
    }

    /// Bytes from the host; whole frames move to the guest queue. An
    /// invalid header is the host's bug: the caller drops that connection.
    pub fn fill(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.partial.extend_from_slice(data);
        loop {
            if self.partial.len() < HEADER_LEN {
                return Ok(());
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&self.partial[..HEADER_LEN]);
            let (_, len) = parse_header_any(&header)?;
            if self.partial.len() < HEADER_LEN + len {
                return Ok(());
            }
            if self.out_start == self.out.len() {
                self.out.clear();
                self.out_start = 0;
            }
            self.out.extend(self.partial.drain(..HEADER_LEN + len));
            self.frames += 1;
        }
    }

    /// Bytes waiting for QEMU.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.out_start..]
    }

    pub fn consumed(&mut self, n: usize) {
        self.out_start += n;
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        }
    }

    /// The host went away: a frame it had not finished is dropped.
    pub fn detach(&mut self) {
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::{encode_frame, FrameDecoder, GuestMessage};

    fn frame(stream: u64, len: usize) -> Vec<u8> {
        encode_frame(&GuestMessage::StreamData {
            stream,
            data: vec![stream as u8; len],
        })
        .unwrap()
    }

    fn decode_all(bytes: &[u8]) -> Vec<u64> {
        let mut dec = FrameDecoder::new();
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some(GuestMessage::StreamData { stream, .. }) = dec.decode_next().unwrap() {
            out.push(stream);
        }
        out
    }

    #[test]
    fn cursor_counts_frames_over_any_split() {
        let all: Vec<u8> = [frame(1, 10), frame(2, 0), frame(3, 70_000)].concat();
        for split in [1, 3, 7, 8, 9, 1000] {
            let mut c = FrameCursor::default();
            let mut frames = 0;
            for chunk in all.chunks(split) {
                frames += c.advance(chunk).unwrap();
            }
            assert_eq!(frames, 3, "split {split}");
            assert!(c.at_boundary());
        }
        let mut c = FrameCursor::default();
        assert!(c.advance(b"GARBAGE!").is_err());
    }

    #[test]
    fn a_host_leaving_mid_frame_costs_exactly_that_frame() {
        let mut g = GuestToHost::default();
        let stream: Vec<u8> = [frame(1, 100), frame(2, 100), frame(3, 100)].concat();
        let f1 = frame(1, 100).len();
        assert!(g.wants_read(true));
        g.fill(&stream[..f1 + 20]);
        // The first host takes frame 1 and 20 bytes of frame 2, then dies.
        let mut first = Vec::new();
        first.extend_from_slice(g.pending());
        let n = g.pending().len();
        g.consumed(n);
        g.detach();
        assert!(g.pending().is_empty());
        assert!(!g.wants_read(false) || g.pending().is_empty());
        // The rest arrives; the remainder of frame 2 is dropped.
        g.fill(&stream[f1 + 20..]);
        let mut second = Vec::new();
        second.extend_from_slice(g.pending());
        g.consumed(second.len());
        assert_eq!(decode_all(&first), vec![1]);
        assert_eq!(decode_all(&second), vec![3]);
        assert_eq!(g.frames, 2);
    }

    #[test]
    fn nothing_is_read_from_the_guest_while_nobody_listens() {
        let mut g = GuestToHost::default();
        assert!(!g.wants_read(false));
        g.fill(&frame(1, 5));
        g.detach(); // nothing was sent: at a boundary, nothing dropped
        assert!(!g.wants_read(false));
        assert_eq!(decode_all(g.pending()), vec![1]);
    }

    #[test]
    fn a_guest_breaking_framing_is_passed_through() {
        let mut g = GuestToHost::default();
        g.fill(b"not a frame at all");
        let n = g.pending().len();
        g.consumed(n);
        assert!(g.is_broken());
        g.detach();
        g.fill(b"more");
        assert_eq!(g.pending(), b"more");
    }

    #[test]
    fn only_whole_frames_reach_the_guest() {
        let mut h = HostToGuest::default();
        let a = frame(1, 300);
        let b = frame(2, 300);
        h.fill(&a[..100]).unwrap();
        assert!(h.pending().is_empty());
        h.fill(&a[100..]).unwrap();
        h.fill(&b[..50]).unwrap();
        assert_eq!(h.pending(), &a[..]);
        let n = h.pending().len();
        h.consumed(n);
        h.detach(); // host dies mid-frame b
        h.fill(&frame(3, 1)).unwrap();
        assert_eq!(decode_all(h.pending()), vec![3]);
        assert_eq!(h.frames, 2);
        assert!(h.fill(b"XXXXXXXXXXXX").is_err());
    }
}
