//! UNIX sockets in microVM directories: binding and connecting by path
//! (paths longer than `sun_path` go through the directory's descriptor in
//! `/proc/self/fd`), and passing a descriptor with a message (`SCM_RIGHTS`).
//! Blocking calls, all short; used from the backend's tasks.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest path `sockaddr_un` holds (without the NUL).
const SUN_PATH_MAX: usize = 107;

/// Run `f` with a path to `path` short enough for a socket address.
fn with_short_path<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    f(&short)
}

/// Bind a listening socket at `path` (replacing a stale socket file).
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    with_short_path(path, |p| UnixListener::bind(p))
}

/// Connect to the socket at `path`.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    with_short_path(path, |p| UnixStream::connect(p))
}

/// One `sendmsg` of `bytes` with `fd` attached; returns the bytes sent.
pub fn send_with_fd(sock: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below is valid for
    // the duration of the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer has room for one header and one fd
    // (CMSG_SPACE above), so CMSG_FIRSTHDR and CMSG_DATA point into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` and everything it points to are valid (see above).
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Receive up to `buf.len()` bytes and at most one passed descriptor
    /// (QEMU's side of [`super::send_with_fd`]; tests).
    fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: as in super::send_with_fd.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` points at live buffers of the given sizes.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR checks
        // msg_controllen before returning a header.
        let fd = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                )))
            } else {
                None
            }
        };
        Ok((n as usize, fd))
    }

    #[test]
    fn long_paths_bind_and_connect() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("qmp.sock");
        assert!(path.as_os_str().len() > SUN_PATH_MAX);
        let l = listen(&path).unwrap();
        let mut c = connect(&path).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // A stale socket file is replaced.
        drop(l);
        listen(&path).unwrap();
    }

    #[test]
    fn a_descriptor_travels_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        (&f).write_all(b"inside").unwrap();
        assert_eq!(
            send_with_fd(a.as_raw_fd(), b"cmd\n", f.as_raw_fd()).unwrap(),
            4
        );
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"cmd\n");
        let mut got = String::new();
        let mut file = std::fs::File::from(fd.unwrap());
        use std::io::Seek;
        file.rewind().unwrap();
        file.read_to_string(&mut got).unwrap();
        assert_eq!(got, "inside");
    }
}
