//! Entering a network namespace from this process: [`in_netns`] runs a
//! closure on a short-lived thread of its own that has joined the
//! namespace (`setns(CLONE_NEWNET)` changes only the calling thread), so
//! sockets it creates live there while the rest of the process stays put.
//! A socket keeps its namespace for life, so it may be returned and used
//! from any thread.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::NetError;

/// `statfs` magic of the namespace file system (`/run/netns/NAME` is a
/// bind mount of an nsfs inode while the namespace is registered).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Run `f` on a new thread that has joined the network namespace at `path`
/// (`/run/netns/NAME`, `/proc/PID/ns/net`). Blocks until `f` returns.
pub fn in_netns<T, F>(path: &Path, f: F) -> Result<T, NetError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let enter_error = |source| NetError::Enter {
        path: path.to_path_buf(),
        source,
    };
    let ns = File::open(path).map_err(enter_error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns takes a descriptor we hold open and a flag;
                // it changes only this thread's network namespace, and this
                // thread ends when `f` returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(enter_error(std::io::Error::last_os_error()));
                }
                drop(ns);
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Is `path` a registered namespace (an nsfs mount), rather than an empty
/// file an interrupted `ip netns add` or a crash left behind?
pub(crate) fn is_namespace(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into `st`, which outlives the call, for a
    // descriptor we hold open.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs per target
    let magic = st.f_type as i64;
    magic == NSFS_MAGIC
}
