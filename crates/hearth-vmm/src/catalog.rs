//! The snapshot catalog: snapshots by id, with records, not paths.
//!
//! ```text
//! <state>/snapshots/<id>/
//!     snapshot.json       SnapshotRecord, written before the directory
//!                         is published (renamed from .<id>.staging)
//!     memory devstate disk.qcow2
//!     refs/vm-<id>        one empty file per microVM that depends on it
//!     refs/snapshot-<id>  ... or per snapshot whose disk is layered on it
//! ```
//!
//! A record names everything relative to the catalog (and the base image
//! by its path outside the state directory), so the state directory can
//! move. It also records what a restore needs to be safe
//! ([`RestoreRequirements`]); a restore on a host that differs is refused
//! with the reason instead of producing a broken guest. Dependents are
//! counted as files, one per dependent, created before the dependent uses
//! the snapshot and removed after it is gone, so the count survives
//! crashes; [`Catalog::delete`] refuses while any live dependent remains.
//!
//! Blocking file work; callers run it from the backend's tasks (it is
//! small: a few metadata operations).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::DiskChain;
use crate::error::VmError;
use crate::jsonfile::{load_json, save_json};
use crate::owner::{owner_alive, write_owner, OWNER_FILE};
use crate::spec::MachineConfig;
use crate::{SnapshotId, VmId};

/// Directory of the catalog in the state directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The record file of a snapshot.
pub const RECORD_FILE: &str = "snapshot.json";
const REFS_DIR: &str = "refs";

/// What must hold on the host for a snapshot (or a suspended microVM) to
/// restore into a working guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequirements {
    /// The backend that took it, `qemu`.
    pub backend: String,
    /// That backend's version, e.g. `7.2.22`.
    pub backend_version: String,
    /// The machine type and options (`-M`).
    pub machine: String,
    /// `kvm` or `tcg`: CPU state differs between them.
    pub accelerator: String,
    /// The CPU model (`-cpu`).
    pub cpu_model: String,
    /// The guest kernel release that booted (informational: a restore
    /// loads no kernel, the memory holds it).
    pub kernel_release: Option<String>,
    /// The agent protocol version of the agent inside.
    pub agent_protocol: u8,
}

impl RestoreRequirements {
    /// Why `self` (recorded) cannot be restored on a host that provides
    /// `host` (whose `agent_protocol` is ignored), if it cannot.
    pub fn mismatch(&self, host: &RestoreRequirements) -> Option<String> {
        if self.backend != host.backend {
            return Some(format!(
                "taken with backend {}, this host runs {}",
                self.backend, host.backend
            ));
        }
        // Device state stays compatible within a stable series (7.2.x);
        // the microvm machine type is not versioned, so across series it
        // is not promised.
        let series = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
        if series(&self.backend_version) != series(&host.backend_version) {
            return Some(format!(
                "taken with QEMU {}, this host runs QEMU {} (device state is only \
                 compatible within one release series)",
                self.backend_version, host.backend_version
            ));
        }
        if self.machine != host.machine {
            return Some(format!(
                "taken with machine {:?}, this host uses {:?}",
                self.machine, host.machine
            ));
        }
        if self.accelerator != host.accelerator {
            return Some(format!(
                "taken under {}, this host runs {} (CPU state differs)",
                self.accelerator, host.accelerator
            ));
        }
        if self.cpu_model != host.cpu_model {
            return Some(format!(
                "taken with CPU model {}, this host uses {}",
                self.cpu_model, host.cpu_model
            ));
        }
        let spoken = hearth_proto::MIN_PROTO_VERSION..=hearth_proto::PROTO_VERSION;
        if !spoken.contains(&self.agent_protocol) {
            return Some(format!(
                "its agent speaks protocol {}, this host speaks {}..={}",
                self.agent_protocol,
                hearth_proto::MIN_PROTO_VERSION,
                hearth_proto::PROTO_VERSION
            ));
        }
        None
    }
}

/// `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub version: u32,
    pub id: SnapshotId,
    pub source_vm: VmId,
    pub created_at_unix_ms: u64,
    pub machine: MachineConfig,
    pub requirements: RestoreRequirements,
    /// The disk its clones start from (the last layer is this snapshot's
    /// own `disk.qcow2`).
    pub disk: Option<DiskChain>,
    /// Bytes of RAM that hold data (the rest of the memory file is holes).
    pub memory_allocated_bytes: u64,
    pub devstate_bytes: u64,
    pub disk_bytes: u64,
}

impl SnapshotRecord {
    pub const VERSION: u32 = 2;
}

/// A snapshot in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub record: SnapshotRecord,
}

/// Something that depends on a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dependent {
    Vm(VmId),
    Snapshot(SnapshotId),
}

impl Dependent {
    fn file_name(&self) -> String {
        match self {
            Dependent::Vm(id) => format!("vm-{id}"),
            Dependent::Snapshot(id) => format!("snapshot-{id}"),
        }
    }

    fn parse(name: &str) -> Option<Dependent> {
        if let Some(id) = name.strip_prefix("vm-") {
            return VmId::new(id).ok().map(Dependent::Vm);
        }
        name.strip_prefix("snapshot-")
            .and_then(|id| SnapshotId::new(id).ok())
            .map(Dependent::Snapshot)
    }
}

impl fmt::Display for Dependent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependent::Vm(id) => write!(f, "microVM {id}"),
            Dependent::Snapshot(id) => write!(f, "snapshot {id}"),
        }
    }
}

/// The snapshots a snapshot's disk is layered on (its own layer aside).
fn parents(record: &SnapshotRecord) -> Vec<SnapshotId> {
    let mut out: Vec<SnapshotId> = Vec::new();
    for s in record.disk.iter().flat_map(|d| d.snapshots()) {
        if *s != record.id && !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// The catalog in a state directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    state_dir: PathBuf,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> VmError + 'a {
    move |source| VmError::Io {
        id: "catalog".into(),
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Catalog {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// `<state>/snapshots`.
    pub fn root(&self) -> PathBuf {
        self.state_dir.join(SNAPSHOTS_DIR)
    }

    /// The directory of snapshot `id`.
    pub fn dir(&self, id: &SnapshotId) -> PathBuf {
        self.root().join(id.as_str())
    }

    /// A snapshot by id.
    pub fn get(&self, id: &SnapshotId) -> Result<Snapshot, VmError> {
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(VmError::NotFound {
                what: "snapshot",
                id: id.to_string(),
            });
        }
        let record: SnapshotRecord = load_json(
            &dir.join(RECORD_FILE),
            "snapshot",
            SnapshotRecord::VERSION,
            |r: &SnapshotRecord| r.version,
        )?;
        if &record.id != id {
            return Err(VmError::Record {
                what: "snapshot",
                path: dir,
                reason: format!("the record names snapshot {}", record.id),
            });
        }
        Ok(Snapshot {
            id: id.clone(),
            record,
        })
    }

    /// Every published snapshot (unreadable ones are skipped).
    pub fn list(&self) -> Vec<Snapshot> {
        let mut out: Vec<Snapshot> = fs::read_dir(self.root())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        self.get(&SnapshotId::new(name).ok()?).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Start a snapshot: a fresh id and a staging directory holding only
    /// an owner file (this process), so that another Hearth process's
    /// [`Catalog::remove_leftovers`] leaves it alone while we live.
    pub fn begin(&self) -> Result<(SnapshotId, PathBuf), VmError> {
        let root = self.root();
        fs::create_dir_all(&root).map_err(io_err(&root, "create"))?;
        let id = SnapshotId::random();
        let staging = root.join(format!(".{id}.staging"));
        fs::create_dir(&staging).map_err(io_err(&staging, "create"))?;
        if let Err(e) = write_owner(&staging) {
            let _ = fs::remove_dir_all(&staging);
            return Err(io_err(&staging.join(OWNER_FILE), "write")(e));
        }
        Ok((id, staging))
    }

    /// Publish a staged snapshot: write its record, register it with the
    /// snapshots its disk is layered on, and rename it into place.
    pub fn commit(&self, staging: &Path, record: SnapshotRecord) -> Result<Snapshot, VmError> {
        let parents = parents(&record);
        for p in &parents {
            self.add_ref(p, &Dependent::Snapshot(record.id.clone()))?;
        }
        let publish = save_json(&staging.join(RECORD_FILE), &record)
            .map_err(VmError::from)
            .and_then(|()| {
                let dir = self.dir(&record.id);
                fs::rename(staging, &dir).map_err(io_err(&dir, "publish"))
            });
        if let Err(e) = publish {
            for p in &parents {
                self.remove_ref(p, &Dependent::Snapshot(record.id.clone()));
            }
            return Err(e);
        }
        // The rename reaches the disk (as a record's does in jsonfile).
        let _ = fs::File::open(self.root()).and_then(|d| d.sync_all());
        // Published: nobody removes it as a leftover any more. (Removed only
        // now: a staging directory without an owner is fair game.)
        let _ = fs::remove_file(self.dir(&record.id).join(OWNER_FILE));
        Ok(Snapshot {
            id: record.id.clone(),
            record,
        })
    }

    /// Record that `dependent` uses snapshot `id` (idempotent).
    pub fn add_ref(&self, id: &SnapshotId, dependent: &Dependent) -> Result<(), VmError> {
        let dir = self.dir(id);
        if !dir.join(RECORD_FILE).is_file() {
            return Err(VmError::NotFound {
                what: "snapshot",
                id: id.to_string(),
            });
        }
        let refs = dir.join(REFS_DIR);
        fs::create_dir_all(&refs).map_err(io_err(&refs, "create"))?;
        let file = refs.join(dependent.file_name());
        fs::write(&file, b"").map_err(io_err(&file, "write"))
    }

    /// `dependent` no longer uses snapshot `id`.
    pub fn remove_ref(&self, id: &SnapshotId, dependent: &Dependent) {
        let _ = fs::remove_file(self.dir(id).join(REFS_DIR).join(dependent.file_name()));
    }

    /// Who depends on snapshot `id`, live or not.
    pub fn refs(&self, id: &SnapshotId) -> Vec<Dependent> {
        let mut out: Vec<Dependent> = fs::read_dir(self.dir(id).join(REFS_DIR))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| Dependent::parse(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|d| d.to_string());
        out
    }

    fn alive(&self, d: &Dependent) -> bool {
        match d {
            Dependent::Vm(id) => self.state_dir.join("vms").join(id.as_str()).is_dir(),
            Dependent::Snapshot(id) => self.dir(id).is_dir(),
        }
    }

    /// Remove references whose dependent no longer exists (a microVM that
    /// crashed, a snapshot deleted by hand). Returns them.
    pub fn prune(&self, id: &SnapshotId) -> Vec<Dependent> {
        let stale: Vec<Dependent> = self
            .refs(id)
            .into_iter()
            .filter(|d| !self.alive(d))
            .collect();
        for d in &stale {
            self.remove_ref(id, d);
        }
        stale
    }

    /// Delete snapshot `id` unless something still depends on it.
    pub fn delete(&self, id: &SnapshotId) -> Result<(), VmError> {
        let snap = self.get(id)?;
        self.prune(id);
        let left = self.refs(id);
        if !left.is_empty() {
            return Err(VmError::InUse {
                snapshot: id.to_string(),
                dependents: left.iter().map(|d| d.to_string()).collect(),
            });
        }
        let dir = self.dir(id);
        // Unpublish first (a rename), then remove: a crash in between
        // leaves a staging directory, which `gc` removes.
        let doomed = self.root().join(format!(".{id}.deleting"));
        fs::rename(&dir, &doomed).map_err(io_err(&dir, "unpublish"))?;
        for p in parents(&snap.record) {
            self.remove_ref(&p, &Dependent::Snapshot(id.clone()));
        }
        fs::remove_dir_all(&doomed).map_err(io_err(&doomed, "remove"))
    }

    /// Remove staging and half-deleted directories (from crashes). A
    /// staging directory whose creator still runs (another Hearth process
    /// sharing the state directory, taking a snapshot) is left alone.
    pub fn remove_leftovers(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        if let Ok(d) = fs::read_dir(self.root()) {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    continue;
                }
                let leftover = (name.ends_with(".staging") && !owner_alive(&e.path()))
                    || name.ends_with(".deleting");
                if leftover && fs::remove_dir_all(e.path()).is_ok() {
                    removed.push(e.path());
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{DiskFormat, DiskLayer, LayerLocation};

    pub(crate) fn requirements() -> RestoreRequirements {
        RestoreRequirements {
            backend: "qemu".into(),
            backend_version: "7.2.22".into(),
            machine: "microvm,x-option-roms=off".into(),
            accelerator: "tcg".into(),
            cpu_model: "max".into(),
            kernel_release: Some("6.1.0-57-cloud-amd64".into()),
            agent_protocol: 2,
        }
    }

    fn record(id: &SnapshotId, disk: Option<DiskChain>) -> SnapshotRecord {
        SnapshotRecord {
            version: SnapshotRecord::VERSION,
            id: id.clone(),
            source_vm: VmId::new("vm-1").unwrap(),
            created_at_unix_ms: 1,
            machine: MachineConfig {
                mem_size_mib: 256,
                vcpu_count: 1,
                cmdline: "console=ttyS0".into(),
                disk_size_bytes: Some(1 << 30),
                nic_slot: false,
            },
            requirements: requirements(),
            disk,
            memory_allocated_bytes: 2,
            devstate_bytes: 3,
            disk_bytes: 4,
        }
    }

    #[test]
    fn records_round_trip_and_snapshots_publish_atomically() {
        let state = tempfile::tempdir().unwrap();
        let cat = Catalog::new(state.path());
        let (id, staging) = cat.begin().unwrap();
        fs::write(staging.join("memory"), b"m").unwrap();
        assert!(cat.get(&id).is_err(), "visible before commit");
        let snap = cat.commit(&staging, record(&id, None)).unwrap();
        assert_eq!(cat.get(&id).unwrap(), snap);
        assert_eq!(cat.list(), vec![snap.clone()]);
        assert!(!staging.exists());
        // A record of another version is refused, naming it.
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(cat.dir(&id).join(RECORD_FILE)).unwrap()).unwrap();
        v["version"] = 99.into();
        fs::write(cat.dir(&id).join(RECORD_FILE), v.to_string()).unwrap();
        assert!(cat.get(&id).unwrap_err().to_string().contains("99"));
    }

    #[test]
    fn dependents_block_deletion_until_they_are_gone() {
        let state = tempfile::tempdir().unwrap();
        let cat = Catalog::new(state.path());
        let (base, staging) = cat.begin().unwrap();
        cat.commit(&staging, record(&base, None)).unwrap();
        // A snapshot layered on `base`, and a live and a dead microVM.
        let (child, staging) = cat.begin().unwrap();
        let disk = DiskChain {
            size_bytes: 1 << 30,
            layers: vec![DiskLayer {
                location: LayerLocation::Snapshot {
                    id: base.clone(),
                    file: "disk.qcow2".into(),
                },
                format: DiskFormat::Qcow2,
            }],
        };
        cat.commit(&staging, record(&child, Some(disk))).unwrap();
        let live = VmId::new("live").unwrap();
        fs::create_dir_all(state.path().join("vms/live")).unwrap();
        cat.add_ref(&base, &Dependent::Vm(live.clone())).unwrap();
        cat.add_ref(&base, &Dependent::Vm(VmId::new("crashed").unwrap()))
            .unwrap();
        let err = cat.delete(&base).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("microVM live") && msg.contains(&format!("snapshot {child}")),
            "{msg}"
        );
        assert!(
            !msg.contains("crashed"),
            "stale references are pruned: {msg}"
        );
        cat.remove_ref(&base, &Dependent::Vm(live));
        assert!(
            cat.delete(&base).is_err(),
            "the child snapshot still needs it"
        );
        cat.delete(&child).unwrap();
        cat.delete(&base).unwrap();
        assert!(cat.list().is_empty());
        assert!(matches!(
            cat.add_ref(&base, &Dependent::Vm(VmId::new("x").unwrap())),
            Err(VmError::NotFound { .. })
        ));
    }

    #[test]
    fn staging_directories_of_a_live_hearth_are_not_leftovers() {
        let state = tempfile::tempdir().unwrap();
        let cat = Catalog::new(state.path());
        let (id, ours) = cat.begin().unwrap();
        let root = cat.root();
        // A staging directory whose creator is gone, one without an owner
        // (a crash before it was written), a half-deleted snapshot.
        let me = crate::record::ProcessIdentity::of(std::process::id()).unwrap();
        let dead = root.join(".snap-dead.staging");
        fs::create_dir(&dead).unwrap();
        fs::write(
            dead.join(OWNER_FILE),
            format!("{} {}", me.pid, me.start_ticks + 1),
        )
        .unwrap();
        let unowned = root.join(".snap-unowned.staging");
        fs::create_dir(&unowned).unwrap();
        let deleting = root.join(".snap-gone.deleting");
        fs::create_dir(&deleting).unwrap();
        let mut removed = cat.remove_leftovers();
        removed.sort();
        let mut want = vec![dead, deleting, unowned];
        want.sort();
        assert_eq!(removed, want);
        assert!(
            ours.is_dir(),
            "a live Hearth's snapshot in the making was removed"
        );
        // Published, it carries no owner file.
        cat.commit(&ours, record(&id, None)).unwrap();
        assert!(!cat.dir(&id).join(OWNER_FILE).exists());
        assert!(cat.remove_leftovers().is_empty());
        assert!(cat.get(&id).is_ok());
    }

    #[test]
    fn mismatches_are_explained() {
        let rec = requirements();
        assert_eq!(rec.mismatch(&rec), None);
        let mut host = rec.clone();
        host.backend_version = "7.2.19".into();
        assert_eq!(rec.mismatch(&host), None, "same series restores");
        host.backend_version = "10.0.2".into();
        assert!(rec.mismatch(&host).unwrap().contains("QEMU 7.2.22"));
        let mut host = rec.clone();
        host.accelerator = "kvm".into();
        assert!(rec.mismatch(&host).unwrap().contains("tcg"));
        let mut old = rec.clone();
        old.agent_protocol = 9;
        assert!(old.mismatch(&rec).unwrap().contains("protocol 9"));
    }
}
