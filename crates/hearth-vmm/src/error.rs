//! The engine's error: one enum for every operation, each variant naming
//! the microVM (or snapshot) and what it was doing.

use std::path::PathBuf;

use crate::agent::AgentClientError;
use crate::disk::DiskError;
use crate::memory::MemoryError;
use crate::qmp::QmpError;
use crate::state::InvalidTransition;

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("microVM {id}: cannot {op} {path}")]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("microVM {id}: cannot start its supervisor ({program})")]
    Spawn {
        id: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("microVM {id}: QEMU ended during {during}: {detail}; console tail: {console}")]
    QemuExited {
        id: String,
        during: String,
        detail: String,
        console: String,
    },
    #[error("microVM {id}: supervisor: {detail}")]
    Supervisor { id: String, detail: String },
    #[error("microVM {id}: QMP {during}")]
    Qmp {
        id: String,
        during: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("microVM {id}: agent {during}; console tail: {console}")]
    Agent {
        id: String,
        during: &'static str,
        console: String,
        #[source]
        source: AgentClientError,
    },
    #[error("microVM {id}: incoming state did not load: QEMU is {status}")]
    Incoming { id: String, status: String },
    #[error("microVM {id}: memory")]
    Memory {
        id: String,
        #[source]
        source: MemoryError,
    },
    #[error("microVM {id}: disk")]
    Disk {
        id: String,
        #[source]
        source: DiskError,
    },
    #[error("microVM {id}: {source}")]
    State {
        id: String,
        #[source]
        source: InvalidTransition,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{path} is not a usable {what}: {reason}")]
    Record {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("microVM {0} already exists")]
    Exists(String),
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{what} cannot be restored here: {reason}")]
    Incompatible { what: String, reason: String },
    #[error("snapshot {snapshot} is still used by {}", dependents.join(", "))]
    InUse {
        snapshot: String,
        dependents: Vec<String>,
    },
}

impl From<crate::jsonfile::JsonFileError> for VmError {
    fn from(e: crate::jsonfile::JsonFileError) -> Self {
        use crate::jsonfile::JsonFileError::*;
        match e {
            Invalid { what, path, reason } => VmError::Record { what, path, reason },
            Io { op, path, source } => VmError::Io {
                id: "record".into(),
                op,
                path,
                source,
            },
        }
    }
}
