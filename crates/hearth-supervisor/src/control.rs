//! The control socket protocol and the exit record (plain serde types; the
//! supervisor's loop in [`crate::run`] serves them, `hearth` sends them).
//!
//! A connection sends one JSON request on one line and reads one JSON
//! answer on one line. After a successful [`ControlRequest::Attach`] the
//! same connection carries agent-protocol frames in both directions until
//! either side closes it; every other request is answered and the
//! connection closed. Only one connection is attached at a time, and only
//! peers running as root (or as the supervisor's own uid) are served.

use serde::{Deserialize, Serialize};

/// Version of the control protocol; requests carry the version they speak.
pub const CONTROL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// The exit record in the microVM directory, written when the child ends.
pub const EXIT_FILE: &str = "exit.json";
/// Name of the control socket in the microVM directory.
pub const CONTROL_SOCKET: &str = "supervisor.sock";
/// The serial console log in the microVM directory.
pub const CONSOLE_LOG: &str = "console.log";

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Become the attached host: after the `ok` answer this connection
    /// relays agent frames. Refused while another connection is attached.
    Attach { version: u32 },
    /// Report the supervisor's state.
    Status { version: u32 },
    /// Whether the supervisor (and the child) outlive the attached host.
    /// `true` also clears the supervisor's own parent-death signal.
    Linger { version: u32, linger: bool },
    /// Kill the child (SIGKILL); the supervisor then exits.
    Kill { version: u32 },
}

impl ControlRequest {
    pub fn version(&self) -> u32 {
        match self {
            ControlRequest::Attach { version }
            | ControlRequest::Status { version }
            | ControlRequest::Linger { version, .. }
            | ControlRequest::Kill { version } => *version,
        }
    }
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SupervisorStatus>,
}

impl ControlResponse {
    pub fn ok(status: SupervisorStatus) -> Self {
        Self {
            ok: true,
            error: None,
            status: Some(status),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            status: None,
        }
    }
}

/// What the supervisor reports about itself and its child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub control_version: u32,
    pub supervisor_pid: u32,
    /// The child's pid in the host's PID namespace.
    pub child_pid: u32,
    /// The child's start time (clock ticks since boot, `/proc/<pid>/stat`
    /// field 22): with the pid, unique across pid reuse.
    pub child_start_ticks: u64,
    pub linger: bool,
    pub attached: bool,
    /// Agent frames relayed since start, each way.
    pub frames_to_guest: u64,
    pub frames_from_guest: u64,
}

/// How the child ended, written to [`EXIT_FILE`] before the supervisor exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub version: u32,
    /// Exit code when it exited, signal when it was killed.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The child never ran: the step that failed and why.
    pub start_error: Option<String>,
    /// The last bytes of the child's standard error.
    pub stderr_tail: String,
    pub at_unix_ms: u64,
}

impl ExitRecord {
    pub const VERSION: u32 = 1;

    /// One line for error messages.
    pub fn describe(&self) -> String {
        let how = match (&self.start_error, self.code, self.signal) {
            (Some(e), _, _) => format!("could not start: {e}"),
            (None, Some(c), _) => format!("exited with code {c}"),
            (None, None, Some(s)) => format!("killed by signal {s}"),
            (None, None, None) => "ended".to_string(),
        };
        if self.stderr_tail.trim().is_empty() {
            how
        } else {
            format!("{how}; it said: {}", self.stderr_tail.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let r = ControlRequest::Linger {
            version: 1,
            linger: true,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"linger","version":1,"linger":true}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&s).unwrap(), r);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"format_disk"}"#).is_err());
        let e = ControlResponse::error("already attached");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ok":false,"error":"already attached"}"#
        );
    }

    #[test]
    fn exit_records_round_trip_and_describe() {
        let r = ExitRecord {
            version: ExitRecord::VERSION,
            code: None,
            signal: Some(9),
            start_error: None,
            stderr_tail: "qemu: boom\n".into(),
            at_unix_ms: 1,
        };
        let back: ExitRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.describe(), "killed by signal 9; it said: qemu: boom");
    }
}
