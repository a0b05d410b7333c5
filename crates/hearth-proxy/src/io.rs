//! Byte-stream wrappers used by connection tasks.
//!
//! - [`Prefixed`] gives back bytes already read (the sniffed first byte).
//! - [`Tapped`] calls back when bytes move either way: [`Tapped::watched`]
//!   stamps an [`IdleClock`] whenever a byte crosses the client socket, so
//!   a connection and every task working for it can end after a quiet
//!   period; [`Tapped::both`] calls the upstream's activity callback (a
//!   WebSocket's bytes, both ways, count as the microVM's use).
//!
//! All are polled by whichever task owns the stream; none spawns anything.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte, shared by the tasks serving it.
#[derive(Debug)]
pub(crate) struct IdleClock {
    start: Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `timeout`.
    pub(crate) async fn expired(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that first yields `prefix`, then reads from `inner`.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A callback a [`Tapped`] stream calls when bytes move.
pub(crate) type Tap = Arc<dyn Fn() + Send + Sync>;

/// A stream that calls `on_read` whenever a read yields bytes and
/// `on_write` whenever a write takes some.
pub(crate) struct Tapped<T> {
    inner: T,
    on_read: Option<Tap>,
    on_write: Option<Tap>,
}

impl<T> Tapped<T> {
    /// Stamps `clock` whenever bytes move either way.
    pub(crate) fn watched(inner: T, clock: Arc<IdleClock>) -> Self {
        Self::both(inner, Arc::new(move || clock.touch()))
    }

    /// Calls `tap` whenever bytes move either way.
    pub(crate) fn both(inner: T, tap: Tap) -> Self {
        Self {
            inner,
            on_read: Some(tap.clone()),
            on_write: Some(tap),
        }
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if let (Some(tap), Poll::Ready(Ok(1..))) = (&self.on_write, r) {
            tap();
        }
    }
}

impl<T> std::fmt::Debug for Tapped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tapped")
            .field("on_read", &self.on_read.is_some())
            .field("on_write", &self.on_write.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tapped<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(tap) = &this.on_read {
                tap();
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tapped<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&r);
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixed_yields_the_prefix_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"llo").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(b"he".to_vec(), b);
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clock_expires_only_after_a_quiet_period() {
        let clock = IdleClock::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Tapped::watched(a, clock.clone());
        let expired = tokio::spawn({
            let clock = clock.clone();
            async move { clock.expired(Duration::from_secs(10)).await }
        });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            w.write_all(b"x").await.unwrap();
            let mut byte = [0u8];
            b.read_exact(&mut byte).await.unwrap();
            assert!(!expired.is_finished());
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(expired.is_finished());
    }

    #[tokio::test]
    async fn both_taps_reads_and_writes_that_move_bytes_and_not_the_end_of_stream() {
        let count = Arc::new(AtomicU64::new(0));
        let tap: Tap = Arc::new({
            let count = count.clone();
            move || {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        let taps = || count.load(Ordering::Relaxed);
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = Tapped::both(a, tap);
        t.write_all(b"out").await.unwrap();
        assert_eq!(taps(), 1, "a write that takes bytes taps");
        b.write_all(b"in").await.unwrap();
        let mut got = [0u8; 2];
        t.read_exact(&mut got).await.unwrap();
        assert!(taps() >= 2, "a read with bytes taps");
        drop(b);
        let before = taps();
        assert_eq!(t.read(&mut got).await.unwrap(), 0);
        assert_eq!(taps(), before, "end of stream does not tap");
    }
}
