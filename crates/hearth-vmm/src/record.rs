//! Persisted microVM state: `vm.json` in every microVM directory.
//!
//! ```text
//! <state>/vms/<id>/
//!     vm.json            VmRecord: written when the microVM is committed
//!                        (booted, launched, resumed) and at each suspend
//!     owner              the Hearth process that is creating it (until committed;
//!                        see `crate::owner`)
//!     memory             own RAM (cold-booted microVMs)
//!     disk-<n>.qcow2     own disk layers
//!     gen-<n>/           a suspend: devstate, memory.diff, memory.diff.json
//!     run/               the running QEMU: supervisor.sock, qmp.sock,
//!                        console.log, exit.json
//! ```
//!
//! Records name files relative to the microVM directory or the catalog,
//! never absolute paths in the state directory, so it can move.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::RestoreRequirements;
use crate::disk::DiskChain;
use crate::error::VmError;
pub use crate::jsonfile::{load_json, save_json};
pub use crate::owner::ProcessIdentity;
use crate::spec::{Lifetime, MachineConfig, NicSpec};
use crate::{SnapshotId, VmId};

/// The record file of a microVM.
pub const RECORD_FILE: &str = "vm.json";
/// The running QEMU's files.
pub const RUN_DIR: &str = "run";

/// Where a microVM's RAM comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBase {
    /// A snapshot's memory, mapped privately (copy-on-write).
    Snapshot(SnapshotId),
    /// The microVM's own file in its directory.
    Own { file: String },
    /// RAM inside QEMU only (the benchmark's baselines): such a microVM
    /// cannot be snapshotted or suspended.
    Anonymous,
}

/// The RAM of a microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRecord {
    pub base: MemoryBase,
    /// The base is mapped shared: the guest writes straight into it (a
    /// cold-booted microVM never suspended). Otherwise it is mapped
    /// privately and the guest's own pages are the diff.
    pub shared: bool,
}

/// Where a microVM is, as far as its record knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordedState {
    /// A QEMU runs it under this supervisor.
    Running {
        supervisor: ProcessIdentity,
        qemu: ProcessIdentity,
    },
    /// Suspended: generation `generation` holds its device state and the
    /// pages it wrote.
    Suspended {
        generation: u32,
        suspended_at_unix_ms: u64,
        /// `memory.diff` in the generation directory, when the guest's
        /// pages are not in the base itself.
        has_diff: bool,
    },
}

/// `vm.json`: everything needed to re-adopt or resume a microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub version: u32,
    pub id: VmId,
    pub machine: MachineConfig,
    pub lifetime: Lifetime,
    /// The user its QEMU runs as.
    pub uid: u32,
    pub requirements: RestoreRequirements,
    pub memory: MemoryRecord,
    pub disk: Option<DiskChain>,
    /// The network interface it was booted with, if any. Such a microVM
    /// is neither snapshotted nor suspended (yet); recorded so that a
    /// Hearth adopting it refuses that too. Absent from older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NicSpec>,
    pub state: RecordedState,
}

impl VmRecord {
    pub const VERSION: u32 = 2;

    /// The directory of generation `n`.
    pub fn generation_dir(vm_dir: &Path, n: u32) -> PathBuf {
        vm_dir.join(format!("gen-{n}"))
    }
}

/// A suspended microVM: files only, no process.
#[derive(Debug, Clone)]
pub struct SuspendedVm {
    pub dir: PathBuf,
    pub record: VmRecord,
}

impl SuspendedVm {
    /// Open a suspended microVM's directory.
    pub fn load(dir: &Path) -> Result<Self, VmError> {
        let record = load_vm_record(dir)?;
        if !matches!(record.state, RecordedState::Suspended { .. }) {
            return Err(VmError::Record {
                what: "suspended microVM",
                path: dir.join(RECORD_FILE),
                reason: "it is not suspended".into(),
            });
        }
        Ok(Self {
            dir: dir.into(),
            record,
        })
    }

    pub fn id(&self) -> &VmId {
        &self.record.id
    }

    /// Bytes the suspended microVM occupies on disk (state, pages, own disk
    /// layers and memory).
    pub fn allocated_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => fs::read_dir(p)
                    .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                    .unwrap_or(0),
                Ok(_) => crate::memory::allocated_bytes(p),
                Err(_) => 0,
            }
        }
        walk(&self.dir)
    }
}

/// Load `vm.json` of a microVM directory.
pub fn load_vm_record(dir: &Path) -> Result<VmRecord, VmError> {
    load_json(
        &dir.join(RECORD_FILE),
        "microVM record",
        VmRecord::VERSION,
        |r: &VmRecord| r.version,
    )
    .map_err(VmError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskFormat, DiskLayer, LayerLocation};

    fn record(state: RecordedState) -> VmRecord {
        VmRecord {
            version: VmRecord::VERSION,
            id: VmId::new("vm-2").unwrap(),
            machine: MachineConfig {
                mem_size_mib: 512,
                vcpu_count: 1,
                cmdline: "console=ttyS0".into(),
                disk_size_bytes: Some(1 << 30),
                nic_slot: false,
            },
            lifetime: Lifetime::Persistent,
            uid: 1_610_612_800,
            requirements: crate::catalog::RestoreRequirements {
                backend: "qemu".into(),
                backend_version: "7.2.22".into(),
                machine: "microvm".into(),
                accelerator: "tcg".into(),
                cpu_model: "max".into(),
                kernel_release: None,
                agent_protocol: 2,
            },
            memory: MemoryRecord {
                base: MemoryBase::Snapshot(SnapshotId::new("snap-1").unwrap()),
                shared: false,
            },
            disk: Some(DiskChain {
                size_bytes: 1 << 30,
                layers: vec![DiskLayer {
                    location: LayerLocation::Own {
                        file: "disk-1.qcow2".into(),
                    },
                    format: DiskFormat::Qcow2,
                }],
            }),
            nic: Some(NicSpec {
                netns: "/run/netns/builders".into(),
            }),
            state,
        }
    }

    /// Records written before the network interface field read as none,
    /// and a record without one does not write the field.
    #[test]
    fn a_record_without_a_nic_reads_and_writes_as_before() {
        let mut r = record(RecordedState::Suspended {
            generation: 1,
            suspended_at_unix_ms: 0,
            has_diff: false,
        });
        r.nic = None;
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("nic").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<VmRecord>(json).unwrap(), r);
    }

    #[test]
    fn records_round_trip_in_every_state() {
        let dir = tempfile::tempdir().unwrap();
        for state in [
            RecordedState::Running {
                supervisor: ProcessIdentity {
                    pid: 1,
                    start_ticks: 2,
                },
                qemu: ProcessIdentity {
                    pid: 3,
                    start_ticks: 4,
                },
            },
            RecordedState::Suspended {
                generation: 3,
                suspended_at_unix_ms: 5,
                has_diff: true,
            },
        ] {
            let r = record(state);
            save_json(&dir.path().join(RECORD_FILE), &r).unwrap();
            assert_eq!(load_vm_record(dir.path()).unwrap(), r);
        }
        let s = SuspendedVm::load(dir.path()).unwrap();
        assert_eq!(s.id().as_str(), "vm-2");
        assert!(s.allocated_bytes() > 0);
    }

    #[test]
    fn other_versions_and_running_records_are_not_suspended_vms() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = serde_json::to_value(record(RecordedState::Suspended {
            generation: 1,
            suspended_at_unix_ms: 0,
            has_diff: false,
        }))
        .unwrap();
        v["version"] = 1.into();
        fs::write(dir.path().join(RECORD_FILE), v.to_string()).unwrap();
        let err = SuspendedVm::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("record version 1"), "{err}");
        save_json(
            &dir.path().join(RECORD_FILE),
            &record(RecordedState::Running {
                supervisor: ProcessIdentity {
                    pid: 1,
                    start_ticks: 1,
                },
                qemu: ProcessIdentity {
                    pid: 1,
                    start_ticks: 1,
                },
            }),
        )
        .unwrap();
        assert!(SuspendedVm::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not suspended"));
    }
}
