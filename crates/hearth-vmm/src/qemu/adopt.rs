//! After a restart: re-adopting the microVMs that outlived the previous
//! Hearth process, and removing what no record owns (`hearth gc`).
//!
//! Every microVM directory is classified by its record and the liveness of
//! the processes it names:
//!
//! ```text
//!  vm.json Running, Persistent, supervisor alive  -> adopt (attach, Reattach)
//!  vm.json Running, Process, supervisor alive     -> another live Hearth's: leave it
//!  vm.json Running, supervisor gone               -> lost: remove
//!  vm.json Suspended                              -> keep; clear a dead run/ and
//!                                                    disk layers the record does not name
//!  no vm.json, its creating Hearth alive          -> being created: leave it
//!  no vm.json, its creating Hearth gone           -> remove (stopping any supervisor)
//! ```
//!
//! Then snapshot references to microVMs that no longer exist are pruned,
//! half-written snapshots removed, and uid claims of vanished directories
//! released. Runs on the caller's task (file work is small).

use std::path::{Path, PathBuf};

use hearth_supervisor::ControlRequest;
use serde_json::json;

use super::start::Proc;
use super::vm::QemuVm;
use super::QemuBackend;
use crate::agent::{AgentClient, ChannelStart};
use crate::catalog::Catalog;
use crate::confine;
use crate::error::VmError;
use crate::memory::FileKey;
use crate::owner::owner_alive;
use crate::qmp::Qmp;
use crate::record::{
    load_vm_record, MemoryBase, ProcessIdentity, RecordedState, SuspendedVm, VmRecord, RUN_DIR,
};
use crate::spec::Lifetime;
use crate::state::VmState;
use crate::supervise::{self, RunDir, Supervisor};
use crate::VmId;

/// What a starting Hearth found in its state directory.
#[derive(Default)]
pub struct Adopted {
    /// Running microVMs, attached again; their QEMUs never stopped.
    pub running: Vec<QemuVm>,
    /// Suspended microVMs.
    pub suspended: Vec<SuspendedVm>,
    /// MicroVMs whose QEMU died while no Hearth watched (removed), and why.
    pub lost: Vec<(VmId, String)>,
    /// Running microVMs that could not be attached (another Hearth process
    /// holds them), and why.
    pub busy: Vec<(VmId, String)>,
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// MicroVM directories removed.
    pub removed: Vec<String>,
    /// Stale snapshot references pruned.
    pub references: usize,
    /// Half-written snapshots removed.
    pub snapshots: usize,
    /// Uid claims released.
    pub uids: usize,
}

/// How a directory looks.
enum Found {
    Adoptable(VmRecord, ProcessIdentity),
    OthersRunning,
    Lost(VmRecord, String),
    Suspended,
    BeingCreated,
    Orphan,
}

fn classify(dir: &Path) -> Found {
    if !dir.join(crate::record::RECORD_FILE).exists() {
        return if owner_alive(dir) {
            Found::BeingCreated
        } else {
            Found::Orphan
        };
    }
    let record = match load_vm_record(dir) {
        Ok(r) => r,
        Err(e) => {
            return if owner_alive(dir) {
                Found::BeingCreated
            } else {
                Found::Lost(unreadable_record(dir), format!("unreadable record: {e}"))
            }
        }
    };
    match &record.state {
        RecordedState::Suspended { .. } => Found::Suspended,
        RecordedState::Running { supervisor, qemu } => {
            let (sup, qemu) = (*supervisor, *qemu);
            if !sup.alive() || !qemu.alive() {
                let why = RunDir(dir.join(RUN_DIR))
                    .exit_record()
                    .map(|r| format!("its QEMU ended while no Hearth watched: {}", r.describe()))
                    .unwrap_or_else(|| "its QEMU and supervisor are gone".into());
                Found::Lost(record, why)
            } else if record.lifetime == Lifetime::Persistent {
                Found::Adoptable(record, sup)
            } else {
                Found::OthersRunning
            }
        }
    }
}

/// A stand-in for a record that cannot be read (so its uid and files can
/// still be released by directory name).
fn unreadable_record(dir: &Path) -> VmRecord {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    VmRecord {
        version: VmRecord::VERSION,
        id: VmId::new(name).unwrap_or_else(|_| VmId::random("unknown")),
        machine: crate::spec::MachineConfig {
            mem_size_mib: 0,
            vcpu_count: 0,
            cmdline: String::new(),
            disk_size_bytes: None,
            nic_slot: false,
        },
        lifetime: Lifetime::Process,
        uid: 0,
        requirements: crate::catalog::RestoreRequirements {
            backend: String::new(),
            backend_version: String::new(),
            machine: String::new(),
            accelerator: String::new(),
            cpu_model: String::new(),
            kernel_release: None,
            agent_protocol: 0,
        },
        nic: None,
        memory: crate::record::MemoryRecord {
            base: crate::record::MemoryBase::Anonymous,
            shared: false,
        },
        disk: None,
        state: RecordedState::Suspended {
            generation: 0,
            suspended_at_unix_ms: 0,
            has_diff: false,
        },
    }
}

/// Stop any supervisor still serving `dir`'s run directory.
fn stop_supervisor(dir: &Path) {
    let run = RunDir(dir.join(RUN_DIR));
    if run.control().exists() {
        let _ = supervise::request(
            &run,
            &ControlRequest::Kill {
                version: hearth_supervisor::CONTROL_VERSION,
            },
        );
    }
}

/// Remove a suspended microVM's leftovers of an interrupted resume: a run
/// directory nobody serves and disk layers its record does not name.
fn tidy_suspended(dir: &Path) {
    let run = RunDir(dir.join(RUN_DIR));
    let served = supervise::request(
        &run,
        &ControlRequest::Status {
            version: hearth_supervisor::CONTROL_VERSION,
        },
    )
    .is_ok();
    if served {
        return; // a live Hearth is resuming it
    }
    let _ = std::fs::remove_dir_all(&run.0);
    let Ok(record) = load_vm_record(dir) else {
        return;
    };
    let named: Vec<String> = record
        .disk
        .as_ref()
        .map(|d| d.own_files().iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("disk-") && name.ends_with(".qcow2") && !named.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn remove_vm(state_dir: &Path, catalog: &Catalog, dir: &Path, record: Option<&VmRecord>) {
    stop_supervisor(dir);
    let _ = std::fs::remove_dir_all(dir);
    if let Some(r) = record {
        if r.uid != 0 {
            confine::release_uid(state_dir, r.uid);
        }
        for s in super::vm::dependencies(r) {
            catalog.prune(&s);
        }
    }
}

fn vm_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(state_dir.join("vms"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn finish_gc(state_dir: &Path, catalog: &Catalog, report: &mut GcReport) {
    for s in catalog.list() {
        report.references += catalog.prune(&s.id).len();
    }
    report.snapshots += catalog.remove_leftovers().len();
    report.uids += confine::release_orphan_uids(state_dir).len();
}

/// Remove what no record owns, leaving running and suspended microVMs.
pub fn gc(state_dir: &Path) -> GcReport {
    let catalog = Catalog::new(state_dir);
    let mut report = GcReport::default();
    for dir in vm_dirs(state_dir) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match classify(&dir) {
            Found::Orphan => {
                remove_vm(state_dir, &catalog, &dir, None);
                report.removed.push(name);
            }
            Found::Lost(record, _) => {
                remove_vm(state_dir, &catalog, &dir, Some(&record));
                report.uids += usize::from(record.uid != 0);
                report.removed.push(name);
            }
            Found::Suspended => tidy_suspended(&dir),
            Found::Adoptable(..) | Found::OthersRunning | Found::BeingCreated => {}
        }
    }
    finish_gc(state_dir, &catalog, &mut report);
    report
}

impl QemuBackend {
    /// Re-adopt every persistent microVM of the state directory that still
    /// runs, list the suspended ones, and remove the lost ones and whatever
    /// no record owns. The QEMUs of adopted microVMs never stopped: they
    /// answer on the same agent channel with their state intact.
    pub async fn adopt(&self) -> Result<Adopted, VmError> {
        let state_dir = self.inner.cfg.state_dir.clone();
        let catalog = self.inner.catalog.clone();
        let mut out = Adopted::default();
        for dir in vm_dirs(&state_dir) {
            match classify(&dir) {
                Found::Adoptable(record, sup) => {
                    let id = record.id.clone();
                    match self.attach_running(&dir, record, sup).await {
                        Ok(vm) => out.running.push(vm),
                        Err(e) => out.busy.push((id, e.to_string())),
                    }
                }
                Found::Lost(record, why) => {
                    remove_vm(&state_dir, &catalog, &dir, Some(&record));
                    out.lost.push((record.id, why));
                }
                Found::Orphan => remove_vm(&state_dir, &catalog, &dir, None),
                Found::Suspended => {
                    tidy_suspended(&dir);
                    if let Ok(s) = SuspendedVm::load(&dir) {
                        out.suspended.push(s);
                    }
                }
                Found::OthersRunning | Found::BeingCreated => {}
            }
        }
        let mut report = GcReport::default();
        finish_gc(&state_dir, &catalog, &mut report);
        Ok(out)
    }

    async fn attach_running(
        &self,
        dir: &Path,
        record: VmRecord,
        supervisor: ProcessIdentity,
    ) -> Result<QemuVm, VmError> {
        let id = record.id.clone();
        let name = id.to_string();
        let run = RunDir(dir.join(RUN_DIR));
        let RecordedState::Running { qemu, .. } = record.state else {
            return Err(VmError::Invalid(format!("{id} is not running")));
        };
        let (qmp_t, agent_t) = (self.inner.cfg.qmp_timeout, self.inner.cfg.agent_timeout);
        let (stream, status) = supervise::attach(&run).map_err(|e| VmError::Supervisor {
            id: name.clone(),
            detail: format!("attach: {e}"),
        })?;
        if status.child_pid != qemu.pid {
            return Err(VmError::Supervisor {
                id: name,
                detail: format!(
                    "the supervisor runs QEMU {} but the record names {}",
                    status.child_pid, qemu.pid
                ),
            });
        }
        let mut qmp = Qmp::connect(&run.qmp(), qmp_t)
            .await
            .map_err(|source| VmError::Qmp {
                id: name.clone(),
                during: "reconnect",
                source,
            })?;
        // A Hearth that died in the middle of a snapshot or suspend may
        // have left the guest stopped.
        let status = qmp.status(qmp_t).await.map_err(|source| VmError::Qmp {
            id: name.clone(),
            during: "query-status",
            source,
        })?;
        if status == "paused" {
            qmp.execute("cont", json!({}), qmp_t)
                .await
                .map_err(|source| VmError::Qmp {
                    id: name.clone(),
                    during: "cont",
                    source,
                })?;
        }
        let agent = AgentClient::start(
            stream,
            ChannelStart::Reattach {
                version: record.requirements.agent_protocol,
            },
        )
        .map_err(|source| VmError::Io {
            id: name.clone(),
            op: "serve the agent channel of",
            path: dir.to_path_buf(),
            source,
        })?;
        agent
            .reattach(agent_t)
            .await
            .map_err(|source| VmError::Agent {
                id: name.clone(),
                during: "reattach",
                console: run.console_tail(4096),
                source,
            })?;
        // Partial generations of a suspend that never committed.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("gen-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // The file QEMU maps guest RAM from is its descriptor MEMORY_FD.
        let ram_key = match &record.memory.base {
            MemoryBase::Anonymous => None,
            _ => {
                let fd = format!("/proc/{}/fd/{}", qemu.pid, super::cmdline::MEMORY_FD);
                Some(
                    FileKey::of_path(Path::new(&fd)).map_err(|source| VmError::Memory {
                        id: name.clone(),
                        source,
                    })?,
                )
            }
        };
        let proc = Proc {
            run,
            supervisor: Supervisor::adopted(supervisor),
            qemu,
            qmp,
            agent,
            next_fdset: 1000,
            next_node_gen: 1000,
            prepared: None,
            ram_key,
        };
        let mut vm = QemuVm::new(self.clone(), id, dir.to_path_buf(), record, proc);
        vm.committed = true;
        debug_assert_eq!(vm.state, VmState::Running);
        Ok(vm)
    }
}
