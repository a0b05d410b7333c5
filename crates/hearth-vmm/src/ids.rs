//! The engine's ids: microVMs ([`VmId`]) and snapshots ([`SnapshotId`]).
//! Both become directory names (and a microVM's id its guest hostname), so
//! both are 1-63 characters of `[a-z0-9-]`, not starting or ending with
//! `-`. Plain values; no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Lower-case hostname label rules.
fn valid_id(id: &str) -> bool {
    hearth_proto::valid_hostname(id) && !id.bytes().any(|b| b.is_ascii_uppercase())
}

/// A microVM id: 1-63 characters of `[a-z0-9-]`, not starting or ending with
/// `-` (it becomes a directory name and the guest's hostname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmId(String);

/// A string that is not a valid [`VmId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid microVM id {0:?}: use 1-63 of [a-z0-9-], not starting or ending with '-'")]
pub struct InvalidVmId(pub String);

impl VmId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidVmId> {
        let id = id.into();
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(InvalidVmId(id))
        }
    }

    /// A fresh random id with a prefix, e.g. `vm-3f9c0a1b2d4e`.
    pub fn random(prefix: &str) -> Self {
        Self(format!(
            "{prefix}-{:012x}",
            rand::random::<u64>() & 0xffff_ffff_ffff
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmId {
    type Error = InvalidVmId;
    fn try_from(s: String) -> Result<Self, InvalidVmId> {
        Self::new(s)
    }
}

impl From<VmId> for String {
    fn from(v: VmId) -> String {
        v.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A snapshot id: `[a-z0-9-]`, 1-63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

/// A string that is not a valid [`SnapshotId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot id {0:?}: use 1-63 of [a-z0-9-], not starting or ending with '-'")]
pub struct InvalidSnapshotId(pub String);

impl SnapshotId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidSnapshotId> {
        let id = id.into();
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(InvalidSnapshotId(id))
        }
    }

    /// A fresh id, `snap-<12 hex digits>`.
    pub fn random() -> Self {
        Self(format!(
            "snap-{:012x}",
            rand::random::<u64>() & 0xffff_ffff_ffff
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = InvalidSnapshotId;
    fn try_from(s: String) -> Result<Self, InvalidSnapshotId> {
        Self::new(s)
    }
}

impl From<SnapshotId> for String {
    fn from(v: SnapshotId) -> String {
        v.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lower_case_hostname_labels() {
        for ok in ["a", "vm-1", "snap-0123456789ab", &"x".repeat(63)] {
            assert!(VmId::new(ok).is_ok(), "{ok}");
            assert!(SnapshotId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "..",
            &"x".repeat(64),
        ] {
            assert!(VmId::new(bad).is_err(), "{bad:?}");
            assert!(SnapshotId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_refuse_bad_values_when_deserialized() {
        assert!(serde_json::from_str::<SnapshotId>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<VmId>("\"../etc\"").is_err());
        let id: SnapshotId = serde_json::from_str("\"snap-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"snap-1\"");
    }

    #[test]
    fn random_ids_are_valid_and_round_trip() {
        let vm = VmId::random("vm");
        assert!(VmId::new(vm.as_str()).is_ok());
        let json = serde_json::to_string(&vm).unwrap();
        assert_eq!(serde_json::from_str::<VmId>(&json).unwrap(), vm);
        let snap = SnapshotId::random();
        assert!(SnapshotId::new(snap.as_str()).is_ok());
    }
}
