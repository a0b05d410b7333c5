//! The QEMU `microvm` backend.
//!
//! Owns QEMU processes (each under its own supervisor), their microVM
//! directories, the snapshot catalog's files and the pre-started QEMUs.
//! Methods run on the caller's Tokio task; blocking file work goes to
//! `spawn_blocking`. One [`QemuVm`] is driven by one task at a time
//! (`&mut self`).
//!
//! Split by concern:
//!
//! * [`cmdline`]: the QEMU command line (identical across accelerators but
//!   for `-accel`/`-cpu`);
//! * [`start`]: one QEMU under a supervisor, confined, with QMP and the
//!   agent channel connected;
//! * [`handover`]: giving a waiting QEMU its disk chain and device state;
//! * [`vm`]: a running microVM: snapshot, suspend, terminate;
//! * [`restore`]: boot, launch a clone, resume;
//! * [`pool`]: QEMUs pre-started per snapshot;
//! * [`adopt`]: re-adopting microVMs after a restart, and `gc`;
//! * [`baseline`]: what `hearth bench` compares against.
//!
//! # Device state without RAM
//!
//! Device state is saved with `xen-save-devices-state` (every non-iterative
//! vmstate section, no RAM) and loaded by a normal `migrate-incoming`. RAM
//! never goes through the migration stream: it lives in memory files this
//! backend manages (see [`crate::memory`]). That works the same whether
//! guest RAM is a shared mapping of the microVM's own file or a private
//! mapping of a snapshot, which `x-ignore-shared` alone cannot do.

mod adopt;
mod baseline;
mod cmdline;
mod handover;
mod pool;
mod restore;
mod start;
mod vm;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use adopt::{gc, Adopted, GcReport};
pub use baseline::FullRamSnapshot;
pub use pool::Prestarted;
pub use vm::QemuVm;

use crate::accel::Accel;
use crate::catalog::{Catalog, RestoreRequirements, Snapshot};
use crate::confine::Confinement;
use crate::error::VmError;
use crate::fault::{FaultContext, FaultHook, FaultPoint};
use crate::record::SuspendedVm;
use crate::SnapshotId;

/// Backend settings.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu_binary: PathBuf,
    pub qemu_img: PathBuf,
    /// The `hearth-supervisor` binary ([`find_supervisor`]).
    pub supervisor_binary: PathBuf,
    pub accel: Accel,
    /// Root of microVM directories (`<state_dir>/vms/<id>`) and the
    /// snapshot catalog (`<state_dir>/snapshots`).
    pub state_dir: PathBuf,
    /// Host TSC frequency handed to the guest (`tsc_early_khz`), avoiding a
    /// TSC calibration hang under TCG.
    pub tsc_khz: Option<u64>,
    /// How long a cold boot may take to reach the agent.
    pub boot_timeout: Duration,
    /// How long one agent request (quiesce, restore, ...) may take.
    pub agent_timeout: Duration,
    /// How long one QMP command may take.
    pub qmp_timeout: Duration,
    /// How QEMU is confined; `None` runs it unconfined (debugging only).
    pub confinement: Option<Confinement>,
}

impl QemuConfig {
    /// Defaults for this host: QEMU from `PATH`, the supervisor next to this
    /// program (or `$HEARTH_SUPERVISOR`), TSC from `/proc/cpuinfo`,
    /// confinement on.
    pub fn new(state_dir: PathBuf, accel: Accel) -> Self {
        Self {
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            supervisor_binary: find_supervisor()
                .unwrap_or_else(|| PathBuf::from("hearth-supervisor")),
            accel,
            state_dir,
            tsc_khz: host_tsc_khz(),
            boot_timeout: match accel {
                Accel::Kvm => Duration::from_secs(30),
                Accel::Tcg => Duration::from_secs(120),
            },
            agent_timeout: Duration::from_secs(30),
            qmp_timeout: Duration::from_secs(30),
            confinement: Some(Confinement::default()),
        }
    }
}

/// The environment variable that names the supervisor binary.
pub const SUPERVISOR_ENV: &str = "HEARTH_SUPERVISOR";

/// Where `hearth-supervisor` is: `$HEARTH_SUPERVISOR`, else beside this
/// program (or one directory up, for test binaries in `target/*/deps`),
/// else on `PATH`.
pub fn find_supervisor() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SUPERVISOR_ENV) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let candidates = [
        dir.join("hearth-supervisor"),
        dir.parent()
            .map(|d| d.join("hearth-supervisor"))
            .unwrap_or_default(),
    ];
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .or_else(|| which("hearth-supervisor"))
}

/// `program` resolved through `PATH` (or as given when it has a `/`).
pub fn which(program: impl AsRef<Path>) -> Option<PathBuf> {
    let p = program.as_ref();
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|c| c.is_file())
    })
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// What this host is, for restore checks and records.
#[derive(Debug, Clone)]
struct HostInfo {
    /// QEMU's absolute path.
    qemu_program: PathBuf,
    /// What it provides (kernel and agent fields are per microVM).
    requirements: RestoreRequirements,
}

pub(crate) struct Inner {
    cfg: QemuConfig,
    catalog: Catalog,
    host: HostInfo,
    /// Pre-started QEMUs per snapshot; killed (files removed) on drop.
    pool: Mutex<HashMap<SnapshotId, Vec<Prestarted>>>,
    /// Sealed in-memory copies of snapshots' RAM, shared by their clones.
    images: Mutex<HashMap<SnapshotId, Arc<OwnedFd>>>,
    fault: Mutex<Option<FaultHook>>,
}

/// The QEMU backend. Cheap to clone.
#[derive(Clone)]
pub struct QemuBackend {
    inner: Arc<Inner>,
}

impl QemuBackend {
    /// A backend on this host: finds QEMU and asks it for its version.
    pub fn new(cfg: QemuConfig) -> Result<Self, VmError> {
        let qemu_program = which(&cfg.qemu_binary).ok_or_else(|| {
            VmError::Invalid(format!(
                "{} not found: run `hearth setup` to install QEMU",
                cfg.qemu_binary.display()
            ))
        })?;
        let out = std::process::Command::new(&qemu_program)
            .arg("--version")
            .output()
            .map_err(|source| VmError::Spawn {
                id: "-".into(),
                program: qemu_program.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split("version ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| {
                VmError::Invalid(format!(
                    "{} --version printed no version: {text:?}",
                    qemu_program.display()
                ))
            })?
            .to_string();
        if !cfg.supervisor_binary.is_file() {
            return Err(VmError::Invalid(format!(
                "the microVM supervisor {} is missing: build it (`cargo build --release` builds \
                 `hearth-supervisor` beside `hearth`) or set {SUPERVISOR_ENV}",
                cfg.supervisor_binary.display()
            )));
        }
        let requirements = RestoreRequirements {
            backend: "qemu".into(),
            backend_version: version,
            machine: cmdline::MACHINE.into(),
            accelerator: cfg.accel.to_string(),
            cpu_model: cmdline::cpu_model(cfg.accel).into(),
            kernel_release: None,
            agent_protocol: hearth_proto::PROTO_VERSION,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                catalog: Catalog::new(&cfg.state_dir),
                host: HostInfo {
                    qemu_program,
                    requirements,
                },
                cfg,
                pool: Mutex::default(),
                images: Mutex::default(),
                fault: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &QemuConfig {
        &self.inner.cfg
    }

    /// The snapshot catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The QEMU version this backend runs.
    pub fn qemu_version(&self) -> &str {
        &self.inner.host.requirements.backend_version
    }

    /// Install (or remove) a fault hook (tests).
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        *self.inner.fault.lock().unwrap() = hook;
    }

    pub(crate) fn fault(&self, point: FaultPoint, ctx: impl FnOnce() -> FaultContext) {
        let hook = self.inner.fault.lock().unwrap().clone();
        if let Some(h) = hook {
            h(point, &ctx());
        }
    }

    /// `<state>/vms/<name>`.
    pub(crate) fn vm_dir(&self, name: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("vms").join(name)
    }

    /// Delete a snapshot from the catalog: refused while a microVM or
    /// another snapshot depends on it. Its pre-started QEMUs and its memory
    /// image go once it is deleted (a refused delete leaves them waiting;
    /// they hold no reference, and a launch checks the catalog first).
    pub fn delete_snapshot(&self, snapshot: &Snapshot) -> Result<(), VmError> {
        self.inner.catalog.delete(&snapshot.id)?;
        self.drain_pool(snapshot);
        self.inner.images.lock().unwrap().remove(&snapshot.id);
        Ok(())
    }

    /// Delete a suspended microVM: its files, its uid claim and its
    /// references on snapshots. It must be one of this backend's (its
    /// directory under the state directory, named by its id); anything else
    /// is refused, touching nothing.
    pub async fn discard_suspended(&self, suspended: SuspendedVm) -> Result<(), VmError> {
        let id = suspended.record.id.clone();
        if suspended.dir != self.vm_dir(id.as_str()) {
            return Err(VmError::Invalid(format!(
                "{id}: {} is not this backend's directory for it",
                suspended.dir.display()
            )));
        }
        let record = suspended.record;
        let dir = suspended.dir;
        let name = id.to_string();
        let state_dir = self.inner.cfg.state_dir.clone();
        let catalog = self.inner.catalog.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(VmError::Io {
                    id: name,
                    op: "removing a suspended microVM",
                    path: dir.clone(),
                    source: e,
                }),
            })?;
            crate::confine::release_uid(&state_dir, record.uid);
            for s in vm::dependencies(&record) {
                catalog.remove_ref(&s, &crate::catalog::Dependent::Vm(record.id.clone()));
            }
            Ok(())
        })
        .await
        .expect("discard task")
    }

    /// The sealed memory image of a snapshot, made on first use.
    pub(crate) async fn image(&self, snapshot: &Snapshot) -> Result<Arc<OwnedFd>, VmError> {
        if let Some(fd) = self.inner.images.lock().unwrap().get(&snapshot.id) {
            return Ok(fd.clone());
        }
        let path = self.inner.catalog.dir(&snapshot.id).join("memory");
        let name = snapshot.id.to_string();
        let fd = tokio::task::spawn_blocking(move || crate::memory::sealed_image(&path, &name))
            .await
            .expect("sealed_image task")
            .map_err(|source| VmError::Memory {
                id: snapshot.id.to_string(),
                source,
            })?;
        let fd = Arc::new(fd);
        Ok(self
            .inner
            .images
            .lock()
            .unwrap()
            .entry(snapshot.id.clone())
            .or_insert(fd)
            .clone())
    }

    /// Check that a snapshot or suspended microVM recorded with `req`
    /// restores on this host.
    pub(crate) fn check_restorable(
        &self,
        what: impl std::fmt::Display,
        req: &RestoreRequirements,
    ) -> Result<(), VmError> {
        match req.mismatch(&self.inner.host.requirements) {
            None => Ok(()),
            Some(reason) => Err(VmError::Incompatible {
                what: what.to_string(),
                reason,
            }),
        }
    }
}
