//! Raw fd I/O that another thread can interrupt (used by the pump threads).
//!
//! A pump that writes host input into a pipe, a PTY or a socket, or reads a
//! PTY master, must be stoppable at once by the reader thread (a restore,
//! a host `StreamClose`) even when the fd would block for ever: a process
//! that never reads its stdin, a session that is being hung up. So those
//! pumps `poll` their fd together with a [`Waker`] (an eventfd) instead of
//! blocking in `read`/`write`, and re-check their state when it fires.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd another thread sets to interrupt a `poll`.
#[derive(Debug)]
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes plain integers and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd })
    }

    /// Make the next (or current) `poll` on this waker return.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd; a full
        // counter (EAGAIN) still leaves the eventfd readable.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset after a wake-up was seen.
    pub(crate) fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN when unset.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `poll` with EINTR retried; `timeout_ms < 0` waits for ever.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed pollfd array of
        // the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Set `O_NONBLOCK` on `fd` (its open file description).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid fd only change its status flags.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One `read(2)`, EINTR retried.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads at most buf.len() bytes into the exclusively
        // borrowed buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `write(2)` (`send` with `MSG_NOSIGNAL` on sockets would be the same
/// here: the agent ignores SIGPIPE), EINTR retried.
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads at most buf.len() bytes from the borrowed buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How [`write_all`] ended.
#[derive(Debug)]
pub(crate) enum WriteEnd {
    /// Everything was written.
    Done,
    /// `keep_going` said stop after a wake-up; this much was written.
    Stopped { written_bytes: usize },
    /// The fd failed (EPIPE, EIO, ...).
    Failed { error: io::Error },
}

/// Write all of `data` to `fd`. A non-blocking fd that is full is polled
/// together with `waker`; when the waker fires, `keep_going` decides
/// whether to wait on. (A blocking fd is woken by shutting it down.)
pub(crate) fn write_all(
    fd: BorrowedFd<'_>,
    data: &[u8],
    waker: &Waker,
    keep_going: &dyn Fn() -> bool,
) -> WriteEnd {
    let mut written_bytes = 0;
    while written_bytes < data.len() {
        match write(fd, &data[written_bytes..]) {
            Ok(0) => {
                return WriteEnd::Failed {
                    error: io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"),
                }
            }
            Ok(n) => written_bytes += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [
                    pollfd(fd.as_raw_fd(), libc::POLLOUT),
                    pollfd(waker.raw(), libc::POLLIN),
                ];
                if let Err(error) = poll(&mut fds, -1) {
                    return WriteEnd::Failed { error };
                }
                if fds[1].revents != 0 {
                    waker.clear();
                    if !keep_going() {
                        return WriteEnd::Stopped { written_bytes };
                    }
                }
            }
            Err(error) => return WriteEnd::Failed { error },
        }
    }
    WriteEnd::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_write_to_a_full_pipe_is_interrupted_by_the_waker() {
        let (_r, w) = pipe();
        set_nonblocking(w.as_fd()).unwrap();
        let waker = Arc::new(Waker::new().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (waker2, stop2) = (waker.clone(), stop.clone());
        let writer = thread::spawn(move || {
            // Far more than a pipe holds: blocks until woken.
            let data = vec![0u8; 4 * 1024 * 1024];
            write_all(w.as_fd(), &data, &waker2, &|| !stop2.load(Ordering::SeqCst))
        });
        // A spurious wake-up with keep_going true does not stop it.
        waker.wake();
        stop.store(true, Ordering::SeqCst);
        waker.wake();
        match writer.join().unwrap() {
            WriteEnd::Stopped { written_bytes } => assert!(written_bytes < 4 * 1024 * 1024),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn writes_complete_and_errors_are_reported() {
        let (r, w) = pipe();
        let waker = Waker::new().unwrap();
        assert!(matches!(
            write_all(w.as_fd(), b"abc", &waker, &|| true),
            WriteEnd::Done
        ));
        let mut buf = [0u8; 8];
        assert_eq!(read(r.as_fd(), &mut buf).unwrap(), 3);
        drop(r);
        // SIGPIPE is ignored by the Rust runtime: EPIPE.
        match write_all(w.as_fd(), b"x", &waker, &|| true) {
            WriteEnd::Failed { error, .. } => assert_eq!(error.raw_os_error(), Some(libc::EPIPE)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
