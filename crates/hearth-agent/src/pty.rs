//! Pseudo-terminals for PTY `Exec` (called by a process's supervisor
//! thread, and by the reader for `Resize`).
//!
//! The master is opened close-on-exec and non-blocking (the output pump
//! polls it, the input pump polls it for writing, so neither can hang on
//! it); the child opens the slave by path after `setsid` and makes it its
//! controlling terminal (see `spawn.rs`). Closing the last master fd hangs
//! the session up: the kernel sends SIGHUP to its foreground group.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use hearth_proto::PtySize;

use crate::fdio;

/// `^D`, the EOF character of a terminal with default settings.
const DEFAULT_EOF_CHAR: u8 = 4;
/// Room for a `/dev/pts/N` path.
const PTS_NAME_BYTES: usize = 64;

/// A new terminal: the master (agent side) and the slave's path.
#[derive(Debug)]
pub(crate) struct Pty {
    pub master: OwnedFd,
    pub slave_path: CString,
}

/// Open a new pseudo-terminal of `size`.
pub(crate) fn open(size: PtySize) -> io::Result<Pty> {
    // SAFETY: posix_openpt takes flags and returns a new fd or -1.
    let raw = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just opened and nothing else owns it.
    let master = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: grantpt takes the master fd we own.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: unlockpt takes the master fd we own.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; PTS_NAME_BYTES];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most
    // name.len() bytes into the buffer.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so the buffer holds a NUL-terminated string.
    let slave_path = unsafe { CStr::from_ptr(name.as_ptr()) }.to_owned();
    set_size(master.as_fd(), size)?;
    fdio::set_nonblocking(master.as_fd())?;
    Ok(Pty { master, slave_path })
}

/// Set the terminal size (the kernel sends SIGWINCH to the foreground
/// process group when it changes).
pub(crate) fn set_size(master: BorrowedFd<'_>, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's current EOF character (`^D` unless changed).
pub(crate) fn eof_char(master: BorrowedFd<'_>) -> u8 {
    // SAFETY: termios is plain data.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills the termios we pass.
    if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } != 0 {
        return DEFAULT_EOF_CHAR;
    }
    match t.c_cc[libc::VEOF] {
        0 => DEFAULT_EOF_CHAR,
        c => c,
    }
}

/// A read on a master whose slave side is closed fails with EIO: that is
/// the terminal's EOF.
pub(crate) fn is_hangup(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn a_new_terminal_has_the_requested_size_and_eof_char() {
        let pty = open(PtySize {
            cols: 100,
            rows: 30,
        })
        .unwrap();
        let path = pty.slave_path.to_str().unwrap().to_string();
        assert!(path.starts_with("/dev/pts/"), "{path}");
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .unwrap();
        let size_of = |fd: &std::fs::File| {
            // SAFETY: winsize is plain data.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ writes one winsize into the pointer.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
            assert_eq!(rc, 0);
            (ws.ws_col, ws.ws_row)
        };
        assert_eq!(size_of(&slave), (100, 30));
        set_size(pty.master.as_fd(), PtySize { cols: 7, rows: 5 }).unwrap();
        assert_eq!(size_of(&slave), (7, 5));
        assert_eq!(eof_char(pty.master.as_fd()), 4);
        // Slave closed: the master reads EIO (after any buffered output).
        drop(slave);
        let mut buf = [0u8; 16];
        let e = fdio::read(pty.master.as_fd(), &mut buf).unwrap_err();
        assert!(is_hangup(&e), "{e}");
    }
}
