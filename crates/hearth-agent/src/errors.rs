//! Turning failures into the protocol's [`AgentError`] (any thread).
//!
//! Every message names what failed (a path, `argv[0]`, an address) and the
//! errno text, and is capped so an error about a huge host-supplied string
//! can never make a frame too large.

use std::fmt::Display;
use std::io;

use hearth_proto::{AgentError, AgentErrorKind};

/// Longest error message the agent sends.
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Longest path the agent accepts (Linux `PATH_MAX`).
pub(crate) const MAX_PATH_BYTES: usize = 4096;

/// An error with a capped message.
pub(crate) fn agent_error(kind: AgentErrorKind, message: impl Display) -> AgentError {
    let mut message = message.to_string();
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    AgentError::new(kind, message)
}

/// A request that is malformed or out of bounds.
pub(crate) fn invalid(message: impl Display) -> AgentError {
    agent_error(AgentErrorKind::InvalidRequest, message)
}

/// Classify an errno.
pub(crate) fn kind_of_errno(errno: i32) -> AgentErrorKind {
    match errno {
        libc::ENOENT | libc::ESRCH => AgentErrorKind::NotFound,
        libc::EACCES | libc::EPERM | libc::EROFS => AgentErrorKind::PermissionDenied,
        libc::ECONNREFUSED => AgentErrorKind::ConnectionRefused,
        libc::EINVAL | libc::ENAMETOOLONG | libc::EISDIR | libc::ENOTDIR | libc::ELOOP => {
            AgentErrorKind::InvalidRequest
        }
        _ => AgentErrorKind::Io,
    }
}

/// `"<what>: <error>"`, classified by the errno (or the kind) of `err`.
pub(crate) fn io_error(what: impl Display, err: &io::Error) -> AgentError {
    let kind = match err.raw_os_error() {
        Some(errno) => kind_of_errno(errno),
        None => match err.kind() {
            io::ErrorKind::NotFound => AgentErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => AgentErrorKind::PermissionDenied,
            io::ErrorKind::ConnectionRefused => AgentErrorKind::ConnectionRefused,
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                AgentErrorKind::InvalidRequest
            }
            _ => AgentErrorKind::Io,
        },
    };
    agent_error(kind, format_args!("{what}: {err}"))
}

/// Check a host-supplied path: absolute, no NUL, at most [`MAX_PATH_BYTES`].
pub(crate) fn check_path(field: &str, path: &str) -> Result<(), AgentError> {
    if path.is_empty() {
        return Err(invalid(format_args!("{field} is empty")));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(format_args!(
            "{field} is {} bytes long (limit {MAX_PATH_BYTES})",
            path.len()
        )));
    }
    if path.as_bytes().contains(&0) {
        return Err(invalid(format_args!("{field} contains a NUL byte")));
    }
    if !path.starts_with('/') {
        return Err(invalid(format_args!("{field} {path:?} is not absolute")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let e = invalid("é".repeat(MAX_ERROR_MESSAGE_BYTES));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE_BYTES + 3);
        assert!(e.message.ends_with("..."));
    }

    #[test]
    fn errno_classification() {
        let e = io_error("open /x", &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.kind, AgentErrorKind::NotFound);
        assert!(e.message.starts_with("open /x: "), "{}", e.message);
        assert_eq!(
            kind_of_errno(libc::EACCES),
            AgentErrorKind::PermissionDenied
        );
        assert_eq!(
            kind_of_errno(libc::ECONNREFUSED),
            AgentErrorKind::ConnectionRefused
        );
        assert_eq!(kind_of_errno(libc::EIO), AgentErrorKind::Io);
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path("path", "/etc/x").is_ok());
        assert!(check_path("path", "").is_err());
        assert!(check_path("path", "rel/x").is_err());
        assert!(check_path("path", "/a\0b").is_err());
        assert!(check_path("path", &format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
    }
}
