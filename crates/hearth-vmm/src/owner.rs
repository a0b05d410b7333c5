//! Which process a directory or a process belongs to: process identities
//! (a pid with its start time, so a reused pid is not mistaken for the
//! original) and the owner file that marks a directory as being created by
//! a live Hearth process. Plain functions over `/proc` and small files;
//! called from any task.
//!
//! Directories in the state directory that are not yet committed (a
//! microVM's before its record, a waiting QEMU's, a snapshot's staging
//! directory) carry an owner file, so that another Hearth process sharing
//! the state directory (adoption, `gc`) leaves them alone while their
//! creator lives.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The Hearth process creating a directory, until it is committed.
pub const OWNER_FILE: &str = "owner";

/// A process identity: the pid with its start time (unique across reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// This identity, if that process exists now (and is not a zombie).
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let mut fields = rest.split_whitespace();
        if matches!(fields.next(), Some("Z") | Some("X")) {
            return None;
        }
        let start_ticks = fields.nth(18)?.parse().ok()?;
        Some(ProcessIdentity { pid, start_ticks })
    }

    /// Is this very process still running?
    pub fn alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }
}

/// Mark `dir` as being created by this process: its owner file names this
/// process's identity. Directories in the state directory (a microVM's
/// before its commit, a waiting QEMU's, a snapshot's staging directory)
/// carry one so that another Hearth process sharing the state directory
/// leaves them alone while their creator lives ([`owner_alive`]).
pub fn write_owner(dir: &Path) -> std::io::Result<()> {
    let owner = ProcessIdentity::of(std::process::id())
        .map(|i| format!("{} {}", i.pid, i.start_ticks))
        .unwrap_or_default();
    fs::write(dir.join(OWNER_FILE), owner)
}

/// Is the process that [`write_owner`] named in `dir` still running? False
/// without an owner file (or with an unreadable one).
pub fn owner_alive(dir: &Path) -> bool {
    fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .and_then(|s| {
            let mut w = s.split_whitespace();
            Some(ProcessIdentity {
                pid: w.next()?.parse().ok()?,
                start_ticks: w.next()?.parse().ok()?,
            })
        })
        .is_some_and(|id| id.alive())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_identity_tells_this_process_from_a_reused_pid() {
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!other.alive());
    }

    #[test]
    fn owner_files_name_a_live_creator() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!owner_alive(dir.path()), "no owner file");
        write_owner(dir.path()).unwrap();
        assert!(owner_alive(dir.path()));
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        fs::write(
            dir.path().join(OWNER_FILE),
            format!("{} {}", me.pid, me.start_ticks + 1),
        )
        .unwrap();
        assert!(!owner_alive(dir.path()), "a reused pid is not the owner");
        fs::write(dir.path().join(OWNER_FILE), "garbage").unwrap();
        assert!(!owner_alive(dir.path()));
    }
}
