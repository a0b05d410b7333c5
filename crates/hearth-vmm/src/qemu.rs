//! The QEMU `microvm` backend.
//!
//! Owns QEMU processes, their per-microVM directories, snapshots and
//! suspended microVMs. Each method runs on the caller's Tokio task; blocking
//! file work goes to `spawn_blocking`. One [`QemuVm`] is driven by one task at
//! a time (`&mut self`).
//!
//! # Files
//!
//! ```text
//! <state_dir>/vms/<name>/    one running or suspended microVM (named by its
//!                            id, or by the pre-started QEMU a clone came from)
//!     id, owner              the microVM id; the Hearth process running it
//!     memory                 own RAM file (cold-booted VMs; mapped share=on)
//!     disk.qcow2             private disk layer over the image's disk
//!     devstate               device state at suspend (no RAM)
//!     memory.diff[.json]     pages a clone wrote, at suspend
//!     vm.json                PersistedVm, written last at suspend
//!     console.log            serial console (capped)
//! <snapshot dir>/            written by `snapshot`
//!     memory devstate disk.qcow2 snapshot.json (written last)
//! ```
//!
//! QEMU gets its QMP, agent and console channels as pre-connected socket
//! pairs (fds 3, 4, 5) and a restore's device state as an open file (fd 6), so there is no
//! socket file to leak and the agent channel is connected before any state
//! loads (DESIGN.md §2).
//!
//! # Device state without RAM
//!
//! Device state is saved with `xen-save-devices-state` (every non-iterative
//! vmstate section, no RAM) and loaded by a normal `migrate-incoming`. RAM
//! never goes through the migration stream: it lives in memory files this
//! module manages (see [`crate::memory`]). That works the same whether guest
//! RAM is a shared mapping of the microVM's own file or a private mapping of
//! an image snapshot, which `x-ignore-shared` alone cannot do.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_proto::{RestoreRequest, RESTORE_ENTROPY_BYTES};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::accel::Accel;
use crate::agent::{AgentClient, AgentClientError, ChannelHealth};
use crate::disk::{self, DiskError, DiskFormat};
use crate::memory::{self, MemoryDiff, MemoryError};
use crate::process::{self, PassFd, QemuProcess, SpawnRequest};
use crate::qmp::{Qmp, QmpError};
use crate::state::{transition, InvalidTransition, VmEvent, VmState};
use crate::{MicroVm, VmBackend, VmId};

/// Where a restoring QEMU finds its incoming device state.
const INCOMING_FD: i32 = 6;
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Serial console bytes kept on disk per microVM process.
const CONSOLE_LOG_CAP_BYTES: u64 = 8 << 20;
/// Serial console / QEMU stderr bytes kept in memory for error messages.
const TAIL_BYTES: usize = 4096;

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
    #[error("microVM {id}: cannot start QEMU ({program})")]
    Spawn {
        id: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("microVM {id}: QEMU exited during {during} ({status}); QEMU said: {stderr}; console tail: {console}")]
    QemuExited {
        id: String,
        during: String,
        status: String,
        stderr: String,
        console: String,
    },
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
}

/// Backend settings.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu_binary: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    /// Root of per-microVM directories (`<state_dir>/vms/<id>`).
    pub state_dir: PathBuf,
    /// Host TSC frequency handed to the guest (`tsc_early_khz`), avoiding a
    /// TSC calibration hang under TCG (DESIGN.md §3).
    pub tsc_khz: Option<u64>,
    /// How long a cold boot may take to reach the agent.
    pub boot_timeout: Duration,
}

impl QemuConfig {
    /// Defaults for this host: binaries from `PATH`, TSC from `/proc/cpuinfo`.
    pub fn new(state_dir: PathBuf, accel: Accel) -> Self {
        Self {
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            accel,
            state_dir,
            tsc_khz: host_tsc_khz(),
            boot_timeout: match accel {
                Accel::Kvm => Duration::from_secs(30),
                Accel::Tcg => Duration::from_secs(120),
            },
        }
    }
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

/// What to cold-boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub id: VmId,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// A raw ext4 image used read-only as the base of the root disk.
    pub root_disk: Option<PathBuf>,
    pub mem_size_mib: u32,
    pub vcpu_count: u32,
    /// Extra kernel command line words (e.g. `hearth.noroot`).
    pub extra_cmdline: Vec<String>,
}

/// What to call a clone.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub id: VmId,
}

/// The machine a snapshot or a suspended microVM must be started as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub mem_size_mib: u32,
    pub vcpu_count: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    /// Virtual size of the root disk, when there is one.
    pub disk_size_bytes: Option<u64>,
}

/// Where a microVM's RAM comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryLayout {
    /// The microVM's own file, mapped shared (cold-booted microVMs).
    Own,
    /// A snapshot's memory file, mapped privately; written pages are the
    /// microVM's own and are saved as a diff at suspend.
    Clone { base: PathBuf },
    /// Anonymous RAM (benchmark baselines only): cannot be snapshotted or suspended.
    Anonymous,
}

/// How `snapshot` treats the source microVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// The source goes on running; memory and disk are copied.
    KeepRunning,
    /// The source ends; its files become the snapshot (no copies).
    Consume,
}

/// `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub version: u32,
    pub machine: MachineConfig,
    pub source_vm: VmId,
    pub created_at_unix_ms: u64,
    /// Bytes of RAM that hold data (the rest of the memory file is holes).
    pub memory_allocated_bytes: u64,
    pub devstate_bytes: u64,
    pub disk_bytes: u64,
}

impl SnapshotManifest {
    pub const VERSION: u32 = 1;
    pub const FILE: &'static str = "snapshot.json";
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
}

impl Snapshot {
    pub fn memory_path(&self) -> PathBuf {
        self.dir.join("memory")
    }
    pub fn devstate_path(&self) -> PathBuf {
        self.dir.join("devstate")
    }
    pub fn disk_path(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// Open a snapshot directory (written completely by `snapshot`).
    pub fn load(dir: &Path) -> Result<Self, VmError> {
        let manifest: SnapshotManifest = load_record(dir)?;
        Ok(Self {
            dir: dir.into(),
            manifest,
        })
    }

    /// Delete the snapshot. Clones launched from it must be gone first.
    pub fn delete(self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// `vm.json`: everything needed to resume a suspended microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedVm {
    pub version: u32,
    pub id: VmId,
    pub machine: MachineConfig,
    pub memory: MemoryLayout,
    pub suspended_at_unix_ms: u64,
}

impl PersistedVm {
    pub const VERSION: u32 = 1;
    pub const FILE: &'static str = "vm.json";
}

/// A suspended microVM: files only, no process.
#[derive(Debug, Clone)]
pub struct SuspendedVm {
    pub dir: PathBuf,
    pub record: PersistedVm,
}

impl SuspendedVm {
    /// Open a suspended microVM's directory.
    pub fn load(dir: &Path) -> Result<Self, VmError> {
        let record: PersistedVm = load_record(dir)?;
        Ok(Self {
            dir: dir.into(),
            record,
        })
    }

    /// Bytes the suspended microVM occupies on disk (memory, state, disk layer).
    pub fn allocated_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| memory::allocated_bytes(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Delete the suspended microVM for good.
    pub fn delete(self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// A versioned record file in a directory.
trait Record: for<'de> Deserialize<'de> {
    const FILE: &'static str;
    const VERSION: u32;
    const WHAT: &'static str;
    fn version(&self) -> u32;
}

impl Record for SnapshotManifest {
    const FILE: &'static str = SnapshotManifest::FILE;
    const VERSION: u32 = SnapshotManifest::VERSION;
    const WHAT: &'static str = "snapshot";
    fn version(&self) -> u32 {
        self.version
    }
}

impl Record for PersistedVm {
    const FILE: &'static str = PersistedVm::FILE;
    const VERSION: u32 = PersistedVm::VERSION;
    const WHAT: &'static str = "suspended microVM";
    fn version(&self) -> u32 {
        self.version
    }
}

/// Read `dir/<T::FILE>` and refuse versions this build does not know.
fn load_record<T: Record>(dir: &Path) -> Result<T, VmError> {
    let path = dir.join(T::FILE);
    let bad = |reason: String| VmError::Record {
        what: T::WHAT,
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let record: T = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if record.version() != T::VERSION {
        return Err(bad(format!(
            "version {} (this build reads {})",
            record.version(),
            T::VERSION
        )));
    }
    Ok(record)
}

fn save_record<T: Serialize>(path: &Path, value: &T) -> Result<(), MemoryError> {
    memory::write_atomic(
        path,
        &serde_json::to_vec_pretty(value).expect("serialize record"),
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A microVM directory that is deleted on drop unless disarmed.
struct VmDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl Drop for VmDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The last bytes a stream produced, for error messages.
#[derive(Default)]
struct Tail(Mutex<Vec<u8>>);

impl Tail {
    fn push(&self, data: &[u8]) {
        let mut t = self.0.lock().unwrap();
        t.extend_from_slice(data);
        if t.len() > TAIL_BYTES {
            let cut = t.len() - TAIL_BYTES;
            t.drain(..cut);
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .trim()
            .to_string()
    }
}

/// Drain a QEMU output socket/pipe into a tail (and optionally a capped log).
fn drain_output(fd: OwnedFd, tail: Arc<Tail>, log: Option<File>) {
    // Console and stderr are stream sockets (see `start`).
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    if std_stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(stream) = tokio::net::UnixStream::from_std(std_stream) else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let mut log = log;
        let mut logged = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    if let Some(f) = log.as_mut() {
                        if logged < CONSOLE_LOG_CAP_BYTES {
                            let take = ((CONSOLE_LOG_CAP_BYTES - logged) as usize).min(n);
                            let _ = f.write_all(&buf[..take]);
                            logged += take as u64;
                            if logged >= CONSOLE_LOG_CAP_BYTES {
                                let _ = f.write_all(b"\n[hearth: console log truncated]\n");
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Names the Hearth process that runs a microVM (`<pid> <start time>`).
const OWNER_FILE: &str = "owner";
/// The id of the microVM a directory belongs to (a launched clone's
/// directory is named after the pre-started QEMU that became it).
const ID_FILE: &str = "id";

/// `<pid> <start time in clock ticks>`: unique for a process across pid reuse.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .to_string();
    Some(format!("{pid} {start}"))
}

/// Remove the directories of microVMs whose Hearth process died without
/// cleaning up (killed with SIGKILL, host crash). Their QEMUs died with them
/// (`PR_SET_PDEATHSIG`). Suspended microVMs (with `vm.json`) are kept.
/// Returns the ids removed.
pub fn reap_stale(state_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir.join("vms")) else {
        return removed;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if dir.join(PersistedVm::FILE).exists() {
            continue;
        }
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap_or_default();
        let alive = owner
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .and_then(process_identity)
            .is_some_and(|now| now == owner.trim());
        if !alive && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    removed
}

/// The QEMU backend.
#[derive(Clone)]
pub struct QemuBackend {
    cfg: Arc<QemuConfig>,
    /// Pre-started QEMUs by snapshot directory; dropped (killed, files
    /// removed) with the last clone of the backend.
    pool: Arc<Mutex<HashMap<PathBuf, Vec<Prestarted>>>>,
}

/// A running QEMU microVM.
pub struct QemuVm {
    id: VmId,
    dir: VmDir,
    machine: MachineConfig,
    memory: MemoryLayout,
    process: QemuProcess,
    qmp: Qmp,
    agent: AgentClient,
    console: Arc<Tail>,
    stderr: Arc<Tail>,
    state: VmState,
}

/// How to back guest RAM when starting QEMU.
enum RamBacking {
    File {
        path: PathBuf,
        shared: bool,
    },
    /// Plain anonymous RAM: only for the baselines `hearth bench` compares against.
    Anonymous,
}

/// What a restore starts from.
struct RestoreFrom<'a> {
    machine: &'a MachineConfig,
    memory: &'a MemoryLayout,
    disk: Option<&'a Path>,
    devstate: &'a Path,
    /// Pages to write into guest RAM before it runs (a clone's diff).
    diff: Option<(&'a MemoryDiff, PathBuf)>,
}

/// What `start` produces before the guest is ready.
struct Started {
    process: QemuProcess,
    qmp: Qmp,
    agent: AgentClient,
    console: Arc<Tail>,
    stderr: Arc<Tail>,
}

impl QemuBackend {
    pub fn new(cfg: QemuConfig) -> Self {
        Self {
            cfg: Arc::new(cfg),
            pool: Arc::default(),
        }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    fn vm_dir(&self, id: &VmId) -> PathBuf {
        self.cfg.state_dir.join("vms").join(id.as_str())
    }

    /// Create a fresh microVM directory; fails if the id is taken.
    fn create_dir(&self, id: &VmId) -> Result<VmDir, VmError> {
        let path = self.vm_dir(id);
        std::fs::create_dir_all(path.parent().expect("vms dir has a parent")).map_err(
            |source| VmError::Io {
                id: id.to_string(),
                op: "create",
                path: path.clone(),
                source,
            },
        )?;
        match std::fs::create_dir(&path) {
            Ok(()) => {
                let dir = VmDir {
                    path,
                    remove_on_drop: true,
                };
                let owner = dir.path.join(OWNER_FILE);
                std::fs::write(
                    &owner,
                    process_identity(std::process::id()).unwrap_or_default(),
                )
                .map_err(|source| VmError::Io {
                    id: id.to_string(),
                    op: "write",
                    path: owner,
                    source,
                })?;
                let id_file = dir.path.join(ID_FILE);
                std::fs::write(&id_file, id.as_str()).map_err(|source| VmError::Io {
                    id: id.to_string(),
                    op: "write",
                    path: id_file,
                    source,
                })?;
                Ok(dir)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(VmError::Exists(id.to_string()))
            }
            Err(source) => Err(VmError::Io {
                id: id.to_string(),
                op: "create",
                path,
                source,
            }),
        }
    }

    /// The QEMU command line. Identical across accelerators but for `-accel`/`-cpu`.
    fn qemu_args(
        &self,
        machine: &MachineConfig,
        ram: &RamBacking,
        disk: Option<&Path>,
        incoming: bool,
    ) -> Vec<String> {
        let cfg = &self.cfg;
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
        push(&[
            "-M",
            "microvm,x-option-roms=off,rtc=on,memory-backend=mem,suppress-vmdesc=on",
        ]);
        push(&["-accel", cfg.accel.qemu_arg()]);
        push(&[
            "-cpu",
            if cfg.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            },
        ]);
        push(&["-m", &format!("{}M", machine.mem_size_mib)]);
        push(&["-smp", &machine.vcpu_count.to_string()]);
        let mem = match ram {
            RamBacking::File { path, shared } => format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
                machine.mem_size_mib,
                path.display(),
                if *shared { "on" } else { "off" }
            ),
            RamBacking::Anonymous => {
                format!("memory-backend-ram,id=mem,size={}M", machine.mem_size_mib)
            }
        };
        push(&["-object", &mem]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&["-global", "migration.send-configuration=off"]);
        if !incoming {
            // Only the firmware reads these, at boot. A restored guest never
            // boots again (-no-reboot), and skipping them saves ~20 ms of
            // QEMU start-up per launch and resume.
            push(&["-kernel", &machine.kernel.to_string_lossy()]);
            push(&["-initrd", &machine.initramfs.to_string_lossy()]);
            push(&["-append", &machine.cmdline]);
        }
        push(&[
            "-chardev",
            "socket,id=qmp,fd=3",
            "-mon",
            "chardev=qmp,mode=control",
        ]);
        push(&["-chardev", "socket,id=con,fd=5", "-serial", "chardev:con"]);
        push(&["-device", "virtio-serial-device,max_ports=2"]);
        push(&["-chardev", "socket,id=agent,fd=4"]);
        push(&[
            "-device",
            &format!(
                "virtserialport,chardev=agent,name={}",
                hearth_proto::AGENT_PORT_NAME
            ),
        ]);
        push(&[
            "-object",
            "rng-random,id=rng,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng",
        ]);
        if let Some(d) = disk {
            push(&[
                "-drive",
                &format!(
                    "if=none,id=root,file={},format=qcow2,discard=unmap",
                    d.display()
                ),
            ]);
            push(&["-device", "virtio-blk-device,drive=root"]);
        }
        if incoming {
            push(&["-incoming", "defer"]);
        }
        a
    }

    /// Spawn QEMU with its channels; returns once QMP answers.
    async fn start(
        &self,
        id: &VmId,
        dir: &Path,
        machine: &MachineConfig,
        ram: &RamBacking,
        disk: Option<&Path>,
        incoming: Option<&Path>,
    ) -> Result<Started, VmError> {
        let io = |op: &'static str, path: &Path| {
            let (id, path) = (id.to_string(), path.to_path_buf());
            move |source| VmError::Io {
                id,
                op,
                path,
                source,
            }
        };
        let (qmp_host, qmp_guest) = process::socketpair().map_err(io("create socket for", dir))?;
        let (agent_host, agent_guest) =
            process::socketpair().map_err(io("create socket for", dir))?;
        let (con_host, con_guest) = process::socketpair().map_err(io("create socket for", dir))?;
        let (err_host, err_guest) = process::socketpair().map_err(io("create socket for", dir))?;
        let mut fds = vec![
            PassFd {
                fd: qmp_guest,
                target: 3,
            },
            PassFd {
                fd: agent_guest,
                target: 4,
            },
            PassFd {
                fd: con_guest,
                target: 5,
            },
        ];
        let is_incoming = incoming.is_some();
        if let Some(path) = incoming {
            let f = File::open(path).map_err(io("open", path))?;
            fds.push(PassFd {
                fd: f.into(),
                target: INCOMING_FD,
            });
        }
        let args = self.qemu_args(machine, ram, disk, is_incoming);
        let child = process::spawn_qemu(SpawnRequest {
            program: self.cfg.qemu_binary.clone(),
            args,
            fds,
            stderr: err_guest,
        })
        .map_err(|source| VmError::Spawn {
            id: id.to_string(),
            program: self.cfg.qemu_binary.clone(),
            source,
        })?;
        let mut process = QemuProcess::new(child);
        let console = Arc::new(Tail::default());
        let stderr = Arc::new(Tail::default());
        let log_path = dir.join("console.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ok();
        drain_output(con_host, console.clone(), log);
        drain_output(err_host, stderr.clone(), None);
        // The agent channel is live before any state loads or the guest runs.
        let agent = AgentClient::start(agent_host, !is_incoming)
            .map_err(io("adopt agent socket for", dir))?;
        let qmp = match Qmp::handshake(qmp_host, QMP_TIMEOUT).await {
            Ok(q) => q,
            Err(source) => {
                return Err(exited_or(&mut process, id, "start", &stderr, &console)
                    .await
                    .unwrap_or(VmError::Qmp {
                        id: id.to_string(),
                        during: "handshake",
                        source,
                    }))
            }
        };
        Ok(Started {
            process,
            qmp,
            agent,
            console,
            stderr,
        })
    }

    /// Load the device state (inherited as fd [`INCOMING_FD`]) into a QEMU
    /// started with `-incoming defer` and wait until the guest runs.
    async fn load_state(&self, id: &VmId, started: &mut Started) -> Result<(), VmError> {
        started
            .qmp
            .execute(
                "migrate-incoming",
                json!({ "uri": format!("fd:{INCOMING_FD}") }),
                QMP_TIMEOUT,
            )
            .await
            .map_err(|source| VmError::Qmp {
                id: id.to_string(),
                during: "migrate-incoming",
                source,
            })?;
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            let status = match started.qmp.status(QMP_TIMEOUT).await {
                Ok(s) => s,
                Err(source) => {
                    return Err(exited_or(
                        &mut started.process,
                        id,
                        "state load",
                        &started.stderr,
                        &started.console,
                    )
                    .await
                    .unwrap_or(VmError::Qmp {
                        id: id.to_string(),
                        during: "query-status",
                        source,
                    }))
                }
            };
            match status.as_str() {
                "inmigrate" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_micros(500)).await
                }
                "running" => return Ok(()),
                // A stream saved from a stopped guest (QEMU's own `migrate`
                // after `stop`) carries that run state; start it here.
                "paused" => {
                    started
                        .qmp
                        .execute("cont", json!({}), QMP_TIMEOUT)
                        .await
                        .map_err(|source| VmError::Qmp {
                            id: id.to_string(),
                            during: "cont",
                            source,
                        })?;
                    return Ok(());
                }
                other => {
                    return Err(VmError::Incoming {
                        id: id.to_string(),
                        status: other.into(),
                    })
                }
            }
        }
    }

    /// Give a restored guest its clock, entropy and identity.
    async fn restore_agent(&self, id: &VmId, started: &mut Started) -> Result<(), VmError> {
        let mut entropy = vec![0u8; RESTORE_ENTROPY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut entropy);
        let mut machine_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut machine_id);
        let req = RestoreRequest {
            unix_time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            entropy,
            hostname: Some(id.to_string()),
            machine_id: Some(machine_id.iter().map(|b| format!("{b:02x}")).collect()),
        };
        let agent = started.agent.clone();
        let res = tokio::select! {
            r = agent.restore(req, AGENT_TIMEOUT) => r,
            e = wait_exit(&mut started.process) => {
                return Err(qemu_exited(id, "restore", e, &started.stderr, &started.console));
            }
        };
        res.map_err(|source| VmError::Agent {
            id: id.to_string(),
            during: "restore",
            console: started.console.text(),
            source,
        })
    }

    async fn resume_into(
        &self,
        id: &VmId,
        dir: &Path,
        r: RestoreFrom<'_>,
    ) -> Result<Started, VmError> {
        let RestoreFrom {
            machine,
            memory,
            disk,
            devstate,
            diff,
        } = r;
        let t0 = Instant::now();
        let ram = match memory {
            MemoryLayout::Own => RamBacking::File {
                path: dir.join("memory"),
                shared: true,
            },
            MemoryLayout::Clone { base } => RamBacking::File {
                path: base.clone(),
                shared: false,
            },
            MemoryLayout::Anonymous => RamBacking::Anonymous,
        };
        let mut started = self
            .start(id, dir, machine, &ram, disk, Some(devstate))
            .await?;
        if let Some((diff, data)) = diff {
            let pid = started.process.pid();
            let len = machine.mem_size_mib as u64 * 1024 * 1024;
            let RamBacking::File { path: base, .. } = &ram else {
                return Err(VmError::Invalid(
                    "a memory diff needs file-backed RAM".into(),
                ));
            };
            let (base, diff) = (base.clone(), diff.clone());
            tokio::task::spawn_blocking(move || {
                let map = memory::find_ram_mapping(pid, &base, len)?;
                memory::apply_diff(&map, &diff, &data)
            })
            .await
            .expect("apply_diff task")
            .map_err(|source| VmError::Memory {
                id: id.to_string(),
                source,
            })?;
        }
        tracing::debug!(vm = %id, qemu_up_ms = t0.elapsed().as_secs_f64() * 1e3, "QEMU waiting for state");
        self.complete_restore(id, &mut started).await?;
        Ok(started)
    }

    /// Load the device state into a started, waiting QEMU and make the guest
    /// ready: the part of a launch that a pre-started QEMU still has to do.
    async fn complete_restore(&self, id: &VmId, started: &mut Started) -> Result<(), VmError> {
        let t0 = Instant::now();
        self.load_state(id, started).await?;
        let t_loaded = t0.elapsed();
        self.restore_agent(id, started).await?;
        tracing::debug!(
            vm = %id,
            state_loaded_ms = t_loaded.as_secs_f64() * 1e3,
            agent_ready_ms = t0.elapsed().as_secs_f64() * 1e3,
            "restored"
        );
        Ok(())
    }

    /// Keep `depth` QEMUs started and waiting for `snapshot`'s state, so that
    /// a launch pays no process start-up. Each waits at `-incoming defer`
    /// with the snapshot memory mapped (no page touched yet), its own disk
    /// layer, and its channels connected; an idle one uses no CPU.
    pub async fn prestart(&self, snapshot: &Snapshot, depth: usize) -> Result<(), VmError> {
        loop {
            let have = self
                .pool
                .lock()
                .unwrap()
                .get(&snapshot.dir)
                .map_or(0, Vec::len);
            if have >= depth {
                return Ok(());
            }
            let p = self.prestart_one(snapshot).await?;
            self.pool
                .lock()
                .unwrap()
                .entry(snapshot.dir.clone())
                .or_default()
                .push(p);
        }
    }

    /// How many QEMUs wait for `snapshot`.
    pub fn pooled(&self, snapshot: &Snapshot) -> usize {
        self.pool
            .lock()
            .unwrap()
            .get(&snapshot.dir)
            .map_or(0, Vec::len)
    }

    /// Stop the waiting QEMUs of `snapshot` (before deleting it).
    pub fn drain_pool(&self, snapshot: &Snapshot) {
        self.pool.lock().unwrap().remove(&snapshot.dir);
    }

    async fn prestart_one(&self, snap: &Snapshot) -> Result<Prestarted, VmError> {
        let id = VmId::random("pool");
        let dir = self.create_dir(&id)?;
        let machine = &snap.manifest.machine;
        let disk_path = dir.path.join("disk.qcow2");
        if let Some(size) = machine.disk_size_bytes {
            self.create_layer(&id, snap.disk_path(), DiskFormat::Qcow2, size, &disk_path)
                .await?;
        }
        let ram = RamBacking::File {
            path: snap.memory_path(),
            shared: false,
        };
        let disk = machine.disk_size_bytes.map(|_| disk_path.as_path());
        let started = self
            .start(
                &id,
                &dir.path,
                machine,
                &ram,
                disk,
                Some(&snap.devstate_path()),
            )
            .await?;
        Ok(Prestarted { dir, started })
    }

    /// Create a microVM's private qcow2 disk layer over `base` (off the async threads).
    async fn create_layer(
        &self,
        id: &VmId,
        base: PathBuf,
        format: DiskFormat,
        size_bytes: u64,
        overlay: &Path,
    ) -> Result<(), VmError> {
        let (img, overlay) = (self.cfg.qemu_img.clone(), overlay.to_path_buf());
        tokio::task::spawn_blocking(move || {
            disk::create_overlay(&img, &base, format, size_bytes, &overlay)
        })
        .await
        .expect("create_overlay task")
        .map_err(|source| VmError::Disk {
            id: id.to_string(),
            source,
        })
    }

    /// Take a waiting QEMU for `snapshot`, if one is alive.
    fn take_pooled(&self, snapshot: &Snapshot) -> Option<Prestarted> {
        let mut pool = self.pool.lock().unwrap();
        let list = pool.get_mut(&snapshot.dir)?;
        while let Some(mut p) = list.pop() {
            if p.started.process.try_wait().is_none() {
                return Some(p);
            }
        }
        None
    }
}

/// A QEMU started ahead of time for one snapshot (see `QemuBackend::prestart`).
struct Prestarted {
    dir: VmDir,
    started: Started,
}

async fn wait_exit(p: &mut QemuProcess) -> String {
    loop {
        if let Some(status) = p.try_wait() {
            return status.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn qemu_exited(id: &VmId, during: &str, status: String, stderr: &Tail, console: &Tail) -> VmError {
    VmError::QemuExited {
        id: id.to_string(),
        during: during.into(),
        status,
        stderr: stderr.text(),
        console: console.text(),
    }
}

/// If QEMU has exited (give it a moment to finish dying), describe it.
async fn exited_or(
    p: &mut QemuProcess,
    id: &VmId,
    during: &str,
    stderr: &Tail,
    console: &Tail,
) -> Option<VmError> {
    for _ in 0..50 {
        if let Some(status) = p.try_wait() {
            // Let the output drains catch the last words.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Some(qemu_exited(id, during, status.to_string(), stderr, console));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// A whole-RAM QEMU migration stream (benchmark baseline).
#[derive(Debug, Clone)]
pub struct FullRamSnapshot {
    pub stream: PathBuf,
    pub disk: Option<PathBuf>,
    pub machine: MachineConfig,
    pub stream_bytes: u64,
}

impl QemuBackend {
    /// Baseline for benchmarks: restore a [`FullRamSnapshot`] into anonymous
    /// RAM, RAM pages coming through the migration stream.
    pub async fn restore_full_ram(
        &self,
        snap: &FullRamSnapshot,
        id: VmId,
    ) -> Result<QemuVm, VmError> {
        let dir = self.create_dir(&id)?;
        let disk_path = dir.path.join("disk.qcow2");
        if let (Some(base), Some(size)) = (&snap.disk, snap.machine.disk_size_bytes) {
            self.create_layer(&id, base.clone(), DiskFormat::Qcow2, size, &disk_path)
                .await?;
        }
        let disk = snap.disk.as_ref().map(|_| disk_path.as_path());
        let started = self
            .resume_into(
                &id,
                &dir.path,
                RestoreFrom {
                    machine: &snap.machine,
                    memory: &MemoryLayout::Anonymous,
                    disk,
                    devstate: &snap.stream,
                    diff: None,
                },
            )
            .await?;
        Ok(QemuVm::new(
            id,
            dir,
            snap.machine.clone(),
            MemoryLayout::Anonymous,
            started,
        ))
    }
}

#[async_trait::async_trait]
impl VmBackend for QemuBackend {
    type Vm = QemuVm;

    async fn boot(&self, spec: BootSpec) -> Result<QemuVm, VmError> {
        self.boot_with(spec, false).await
    }

    async fn launch(&self, snapshot: &Snapshot, spec: LaunchSpec) -> Result<QemuVm, VmError> {
        self.launch_inner(snapshot, spec).await
    }

    async fn resume(&self, suspended: SuspendedVm) -> Result<QemuVm, VmError> {
        self.resume_inner(suspended).await
    }
}

impl QemuBackend {
    /// Cold boot; `anonymous_ram` gives the plain-QEMU baseline (no memory file).
    pub async fn boot_with(&self, spec: BootSpec, anonymous_ram: bool) -> Result<QemuVm, VmError> {
        if spec.mem_size_mib < 64 || spec.vcpu_count == 0 || spec.vcpu_count > 64 {
            return Err(VmError::Invalid(format!(
                "need at least 64 MiB and 1-64 vCPUs, got {} MiB and {} vCPUs",
                spec.mem_size_mib, spec.vcpu_count
            )));
        }
        for (what, p) in [("kernel", &spec.kernel), ("initramfs", &spec.initramfs)] {
            if !p.is_file() {
                return Err(VmError::Invalid(format!(
                    "{what} {} does not exist",
                    p.display()
                )));
            }
        }
        let id = spec.id.clone();
        let dir = self.create_dir(&id)?;
        let io = |op: &'static str, path: PathBuf| {
            let id = id.to_string();
            move |source| VmError::Io {
                id,
                op,
                path,
                source,
            }
        };
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
            "rdinit=/init".into(),
            format!("hearth.hostname={id}"),
        ];
        if let Some(khz) = self.cfg.tsc_khz {
            cmdline.push(format!("tsc_early_khz={khz}"));
        }
        cmdline.extend(spec.extra_cmdline.iter().cloned());
        let mut disk_size_bytes = None;
        let disk_path = dir.path.join("disk.qcow2");
        if let Some(base) = &spec.root_disk {
            let size = disk::raw_size_bytes(base).map_err(|source| VmError::Disk {
                id: id.to_string(),
                source,
            })?;
            self.create_layer(&id, base.clone(), DiskFormat::Raw, size, &disk_path)
                .await?;
            disk_size_bytes = Some(size);
        } else {
            cmdline.push("hearth.noroot".into());
        }
        let machine = MachineConfig {
            mem_size_mib: spec.mem_size_mib,
            vcpu_count: spec.vcpu_count,
            kernel: std::fs::canonicalize(&spec.kernel)
                .map_err(io("resolve", spec.kernel.clone()))?,
            initramfs: std::fs::canonicalize(&spec.initramfs)
                .map_err(io("resolve", spec.initramfs.clone()))?,
            cmdline: cmdline.join(" "),
            disk_size_bytes,
        };
        let ram = if anonymous_ram {
            RamBacking::Anonymous
        } else {
            let mem_path = dir.path.join("memory");
            File::create(&mem_path)
                .and_then(|f| f.set_len(spec.mem_size_mib as u64 * 1024 * 1024))
                .map_err(io("create", mem_path.clone()))?;
            RamBacking::File {
                path: mem_path,
                shared: true,
            }
        };
        let disk = spec.root_disk.as_ref().map(|_| disk_path.as_path());
        let mut started = self
            .start(&id, &dir.path, &machine, &ram, disk, None)
            .await?;
        let agent = started.agent.clone();
        let hello = tokio::select! {
            r = agent.wait_hello(self.cfg.boot_timeout) => r,
            e = wait_exit(&mut started.process) => {
                return Err(qemu_exited(&id, "boot", e, &started.stderr, &started.console));
            }
        };
        hello.map_err(|source| VmError::Agent {
            id: id.to_string(),
            during: "boot",
            console: started.console.text(),
            source,
        })?;
        let layout = if anonymous_ram {
            MemoryLayout::Anonymous
        } else {
            MemoryLayout::Own
        };
        Ok(QemuVm::new(id, dir, machine, layout, started))
    }

    async fn launch_inner(&self, snapshot: &Snapshot, spec: LaunchSpec) -> Result<QemuVm, VmError> {
        let id = spec.id;
        let mut p = match self.take_pooled(snapshot) {
            Some(p) => p,
            None => self.prestart_one(snapshot).await?,
        };
        // The waiting QEMU becomes this microVM. Its directory keeps its
        // name: QEMU reopens the disk layer by path when the state activates.
        let id_file = p.dir.path.join(ID_FILE);
        std::fs::write(&id_file, id.as_str()).map_err(|source| VmError::Io {
            id: id.to_string(),
            op: "write",
            path: id_file,
            source,
        })?;
        self.complete_restore(&id, &mut p.started).await?;
        let memory = MemoryLayout::Clone {
            base: snapshot.memory_path(),
        };
        Ok(QemuVm::new(
            id,
            p.dir,
            snapshot.manifest.machine.clone(),
            memory,
            p.started,
        ))
    }

    async fn resume_inner(&self, suspended: SuspendedVm) -> Result<QemuVm, VmError> {
        let rec = &suspended.record;
        let id = rec.id.clone();
        // Until the resumed guest runs, the files stay the suspended microVM's.
        let mut dir = VmDir {
            path: suspended.dir.clone(),
            remove_on_drop: false,
        };
        let diff_json = dir.path.join("memory.diff.json");
        let diff =
            match rec.memory {
                MemoryLayout::Clone { .. } => Some(MemoryDiff::load(&diff_json).map_err(
                    |source| VmError::Memory {
                        id: id.to_string(),
                        source,
                    },
                )?),
                MemoryLayout::Own => None,
                MemoryLayout::Anonymous => {
                    return Err(VmError::Invalid(
                        "anonymous-RAM microVMs cannot be resumed".into(),
                    ));
                }
            };
        let disk_path = dir.path.join("disk.qcow2");
        let disk = rec.machine.disk_size_bytes.map(|_| disk_path.as_path());
        let started = self
            .resume_into(
                &id,
                &dir.path,
                RestoreFrom {
                    machine: &rec.machine,
                    memory: &rec.memory,
                    disk,
                    devstate: &dir.path.join("devstate"),
                    diff: diff.as_ref().map(|d| (d, dir.path.join("memory.diff"))),
                },
            )
            .await?;
        // The guest now owns its state again; the suspend files are stale.
        for f in [
            "memory.diff",
            "memory.diff.json",
            "devstate",
            PersistedVm::FILE,
        ] {
            let _ = std::fs::remove_file(dir.path.join(f));
        }
        dir.remove_on_drop = true;
        Ok(QemuVm::new(
            id,
            dir,
            rec.machine.clone(),
            rec.memory.clone(),
            started,
        ))
    }
}

impl QemuVm {
    fn new(id: VmId, dir: VmDir, machine: MachineConfig, memory: MemoryLayout, s: Started) -> Self {
        let mut vm = Self {
            id,
            dir,
            machine,
            memory,
            process: s.process,
            qmp: s.qmp,
            agent: s.agent,
            console: s.console,
            stderr: s.stderr,
            state: VmState::Starting,
        };
        vm.apply(VmEvent::Ready).expect("Starting accepts Ready");
        vm
    }

    /// PID of the QEMU process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The microVM's directory.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    pub fn machine(&self) -> &MachineConfig {
        &self.machine
    }

    /// The last few KiB of serial console output.
    pub fn console_tail(&self) -> String {
        self.console.text()
    }

    /// Proportional set size of the QEMU process, in KiB.
    pub fn pss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid())).ok()?;
        s.lines()
            .find(|l| l.starts_with("Pss:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn apply(&mut self, ev: VmEvent) -> Result<(), VmError> {
        self.state = transition(&self.state, &ev).map_err(|source| VmError::State {
            id: self.id.to_string(),
            source,
        })?;
        Ok(())
    }

    fn err_io(&self, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let (id, path) = (self.id.to_string(), path.to_path_buf());
        move |source| VmError::Io {
            id,
            op,
            path,
            source,
        }
    }

    fn err_qmp(&self, during: &'static str) -> impl FnOnce(QmpError) -> VmError {
        let id = self.id.to_string();
        move |source| VmError::Qmp { id, during, source }
    }

    fn err_agent(&self, during: &'static str) -> impl FnOnce(AgentClientError) -> VmError {
        let (id, console) = (self.id.to_string(), self.console.text());
        move |source| VmError::Agent {
            id,
            during,
            console,
            source,
        }
    }

    fn err_mem(&self) -> impl FnOnce(MemoryError) -> VmError {
        let id = self.id.to_string();
        move |source| VmError::Memory { id, source }
    }

    fn ram_mapping_path(&self) -> PathBuf {
        match &self.memory {
            MemoryLayout::Own | MemoryLayout::Anonymous => self.dir.path.join("memory"),
            MemoryLayout::Clone { base } => base.clone(),
        }
    }

    fn refuse_anonymous(&self, what: &str) -> Result<(), VmError> {
        if self.memory == MemoryLayout::Anonymous {
            return Err(VmError::Invalid(format!(
                "{what} needs file-backed RAM; {} has anonymous RAM",
                self.id
            )));
        }
        Ok(())
    }

    /// Baseline for benchmarks: QEMU's own full-RAM migration to a file, as a
    /// user without Hearth's memory files would do it. Quiesces the agent,
    /// stops, saves everything (RAM included) and quits. Returns stream bytes.
    pub async fn save_full_ram(mut self, path: &Path) -> Result<FullRamSnapshot, VmError> {
        self.agent
            .quiesce(false, AGENT_TIMEOUT)
            .await
            .map_err(self.err_agent("quiesce"))?;
        self.qmp
            .execute("stop", json!({}), QMP_TIMEOUT)
            .await
            .map_err(self.err_qmp("stop"))?;
        let uri = format!("exec:cat > '{}'", path.display());
        self.qmp
            .execute("migrate", json!({ "uri": uri }), QMP_TIMEOUT)
            .await
            .map_err(self.err_qmp("migrate"))?;
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            let v = self
                .qmp
                .execute("query-migrate", json!({}), QMP_TIMEOUT)
                .await
                .map_err(self.err_qmp("query-migrate"))?;
            match v.get("status").and_then(|s| s.as_str()) {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(VmError::Incoming {
                        id: self.id.to_string(),
                        status: v.to_string(),
                    })
                }
                _ if Instant::now() > deadline => {
                    return Err(VmError::Incoming {
                        id: self.id.to_string(),
                        status: "migration timed out".into(),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        self.quit().await;
        let disk = match self.machine.disk_size_bytes {
            Some(_) => {
                let dst = path.with_extension("disk.qcow2");
                let src = self.dir.path.join("disk.qcow2");
                std::fs::rename(&src, &dst).map_err(self.err_io("move", &src))?;
                Some(dst)
            }
            None => None,
        };
        let stream_bytes = std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(self.err_io("stat", path))?;
        Ok(FullRamSnapshot {
            stream: path.into(),
            disk,
            machine: self.machine.clone(),
            stream_bytes,
        })
    }

    /// Quiesce the agent and stop the vCPUs.
    async fn freeze(&mut self) -> Result<(), VmError> {
        self.agent
            .quiesce(false, AGENT_TIMEOUT)
            .await
            .map_err(self.err_agent("quiesce"))?;
        self.qmp
            .execute("stop", json!({}), QMP_TIMEOUT)
            .await
            .map_err(self.err_qmp("stop"))?;
        Ok(())
    }

    async fn save_devstate(&mut self, path: &Path) -> Result<u64, VmError> {
        self.qmp
            .execute(
                "xen-save-devices-state",
                json!({ "filename": path.to_string_lossy(), "live": false }),
                QMP_TIMEOUT,
            )
            .await
            .map_err(self.err_qmp("save device state"))?;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(self.err_io("stat", path))
    }

    /// Let a frozen guest go on.
    async fn unfreeze(&mut self) -> Result<(), VmError> {
        self.qmp
            .execute("cont", json!({}), QMP_TIMEOUT)
            .await
            .map_err(self.err_qmp("cont"))?;
        self.agent
            .thaw(AGENT_TIMEOUT)
            .await
            .map_err(self.err_agent("thaw"))
    }

    /// Ask QEMU to quit, then make sure it is gone.
    async fn quit(&mut self) {
        let _ = self
            .qmp
            .execute("quit", json!({}), Duration::from_secs(2))
            .await;
        self.process.wait_or_kill(QUIT_TIMEOUT).await;
    }

    async fn snapshot_inner(
        &mut self,
        dest: &Path,
        mode: SnapshotMode,
    ) -> Result<SnapshotManifest, VmError> {
        self.refuse_anonymous("snapshot")?;
        std::fs::create_dir(dest).map_err(self.err_io("create snapshot directory", dest))?;
        self.freeze().await?;
        let devstate_bytes = self.save_devstate(&dest.join("devstate")).await?;
        let mem_dst = dest.join("memory");
        let memory_allocated_bytes = match (&self.memory, mode) {
            (MemoryLayout::Anonymous, _) => unreachable!("refused above"),
            (MemoryLayout::Own, SnapshotMode::Consume) => 0, // renamed below, after QEMU is gone
            (MemoryLayout::Own, SnapshotMode::KeepRunning) => {
                let src = self.dir.path.join("memory");
                let dst = mem_dst.clone();
                tokio::task::spawn_blocking(move || memory::sparse_copy(&src, &dst))
                    .await
                    .expect("sparse_copy task")
                    .map_err(self.err_mem())?
            }
            (MemoryLayout::Clone { base }, _) => {
                let map = memory::find_ram_mapping(self.pid(), base, self.mem_len_bytes())
                    .map_err(self.err_mem())?;
                let (base, dst) = (base.clone(), mem_dst.clone());
                tokio::task::spawn_blocking(move || memory::materialize(&base, &map, &dst))
                    .await
                    .expect("materialize task")
                    .map_err(self.err_mem())?
            }
        };
        let disk_src = self.dir.path.join("disk.qcow2");
        let disk_dst = dest.join("disk.qcow2");
        let has_disk = self.machine.disk_size_bytes.is_some();
        match mode {
            SnapshotMode::KeepRunning => {
                if has_disk {
                    std::fs::copy(&disk_src, &disk_dst).map_err(self.err_io("copy", &disk_src))?;
                }
                self.unfreeze().await?;
            }
            SnapshotMode::Consume => {
                self.quit().await;
                if has_disk {
                    std::fs::rename(&disk_src, &disk_dst)
                        .map_err(self.err_io("move", &disk_src))?;
                }
                if self.memory == MemoryLayout::Own {
                    let src = self.dir.path.join("memory");
                    std::fs::rename(&src, &mem_dst).map_err(self.err_io("move", &src))?;
                }
            }
        }
        let manifest = SnapshotManifest {
            version: SnapshotManifest::VERSION,
            machine: self.machine.clone(),
            source_vm: self.id.clone(),
            created_at_unix_ms: unix_ms(),
            memory_allocated_bytes: if memory_allocated_bytes == 0 {
                memory::allocated_bytes(&mem_dst)
            } else {
                memory_allocated_bytes
            },
            devstate_bytes,
            disk_bytes: if has_disk {
                memory::allocated_bytes(&disk_dst)
            } else {
                0
            },
        };
        save_record(&dest.join(SnapshotManifest::FILE), &manifest).map_err(self.err_mem())?;
        Ok(manifest)
    }

    fn mem_len_bytes(&self) -> u64 {
        self.machine.mem_size_mib as u64 * 1024 * 1024
    }

    async fn suspend_inner(&mut self) -> Result<(), VmError> {
        self.refuse_anonymous("suspend")?;
        self.freeze().await?;
        let dir = self.dir.path.clone();
        self.save_devstate(&dir.join("devstate")).await?;
        if let MemoryLayout::Clone { .. } = &self.memory {
            let map = memory::find_ram_mapping(
                self.pid(),
                &self.ram_mapping_path(),
                self.mem_len_bytes(),
            )
            .map_err(self.err_mem())?;
            let d = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(), MemoryError> {
                let runs = memory::dirty_pages(&map)?;
                let diff = memory::save_pages(&map, &runs, &d.join("memory.diff"))?;
                diff.save(&d.join("memory.diff.json"))
            })
            .await
            .expect("save diff task")
            .map_err(self.err_mem())?;
        }
        self.quit().await;
        let record = PersistedVm {
            version: PersistedVm::VERSION,
            id: self.id.clone(),
            machine: self.machine.clone(),
            memory: self.memory.clone(),
            suspended_at_unix_ms: unix_ms(),
        };
        save_record(&dir.join(PersistedVm::FILE), &record).map_err(self.err_mem())
    }
}

#[async_trait::async_trait]
impl MicroVm for QemuVm {
    fn id(&self) -> &VmId {
        &self.id
    }

    fn state(&mut self) -> VmState {
        if matches!(
            self.state,
            VmState::Terminated | VmState::Failed { .. } | VmState::Suspended
        ) {
            return self.state.clone();
        }
        let reason = match self.agent.health() {
            ChannelHealth::Failed(r) => Some(format!("agent channel: {r}")),
            _ => self
                .process
                .try_wait()
                .map(|s| format!("QEMU exited ({s}): {}", self.stderr.text())),
        };
        if let Some(reason) = reason {
            let _ = self.apply(VmEvent::Fail { reason });
        }
        self.state.clone()
    }

    fn agent(&self) -> &AgentClient {
        &self.agent
    }

    async fn snapshot(&mut self, dest: PathBuf, mode: SnapshotMode) -> Result<Snapshot, VmError> {
        if self.state() != VmState::Running {
            return Err(VmError::State {
                id: self.id.to_string(),
                source: InvalidTransition {
                    state: self.state.clone(),
                    event: VmEvent::BeginSnapshot,
                },
            });
        }
        self.apply(VmEvent::BeginSnapshot)?;
        match self.snapshot_inner(&dest, mode).await {
            Ok(manifest) => {
                if mode == SnapshotMode::Consume {
                    self.apply(VmEvent::Terminate)?;
                } else {
                    self.apply(VmEvent::EndSnapshot)?;
                }
                Ok(Snapshot {
                    dir: dest,
                    manifest,
                })
            }
            Err(e) => {
                // Nothing half-written may look like a snapshot.
                let _ = std::fs::remove_dir_all(&dest);
                // A guest that is still there goes on running.
                let back = if self.process.try_wait().is_none() {
                    self.unfreeze().await.is_ok()
                } else {
                    false
                };
                let _ = if back {
                    self.apply(VmEvent::EndSnapshot)
                } else {
                    self.apply(VmEvent::Fail {
                        reason: e.to_string(),
                    })
                };
                Err(e)
            }
        }
    }

    async fn suspend(&mut self) -> Result<SuspendedVm, VmError> {
        if self.state() != VmState::Running {
            return Err(VmError::State {
                id: self.id.to_string(),
                source: InvalidTransition {
                    state: self.state.clone(),
                    event: VmEvent::BeginSuspend,
                },
            });
        }
        self.apply(VmEvent::BeginSuspend)?;
        match self.suspend_inner().await {
            Ok(()) => {
                self.apply(VmEvent::EndSuspend)?;
                self.dir.remove_on_drop = false;
                let dir = self.dir.path.clone();
                SuspendedVm::load(&dir)
            }
            Err(e) => {
                for f in [
                    "memory.diff",
                    "memory.diff.json",
                    "devstate",
                    PersistedVm::FILE,
                ] {
                    let _ = std::fs::remove_file(self.dir.path.join(f));
                }
                let back = if self.process.try_wait().is_none() {
                    self.unfreeze().await.is_ok()
                } else {
                    false
                };
                let _ = if back {
                    self.apply(VmEvent::AbortSuspend)
                } else {
                    self.apply(VmEvent::Fail {
                        reason: e.to_string(),
                    })
                };
                Err(e)
            }
        }
    }

    async fn terminate(mut self) -> Result<(), VmError> {
        self.quit().await;
        self.apply(VmEvent::Terminate)?;
        // The directory goes with `self.dir` on drop.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineConfig {
        MachineConfig {
            mem_size_mib: 512,
            vcpu_count: 1,
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initramfs.cpio".into(),
            cmdline: "console=ttyS0".into(),
            disk_size_bytes: Some(1 << 30),
        }
    }

    #[test]
    fn persisted_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let snap = SnapshotManifest {
            version: SnapshotManifest::VERSION,
            machine: machine(),
            source_vm: VmId::new("vm-1").unwrap(),
            created_at_unix_ms: 1,
            memory_allocated_bytes: 2,
            devstate_bytes: 3,
            disk_bytes: 4,
        };
        save_record(&dir.path().join(SnapshotManifest::FILE), &snap).unwrap();
        assert_eq!(Snapshot::load(dir.path()).unwrap().manifest, snap);

        let vm = PersistedVm {
            version: PersistedVm::VERSION,
            id: VmId::new("vm-2").unwrap(),
            machine: machine(),
            memory: MemoryLayout::Clone {
                base: "/s/memory".into(),
            },
            suspended_at_unix_ms: 5,
        };
        save_record(&dir.path().join(PersistedVm::FILE), &vm).unwrap();
        assert_eq!(SuspendedVm::load(dir.path()).unwrap().record, vm);
    }

    #[test]
    fn unknown_record_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SnapshotManifest::FILE),
            serde_json::to_vec(&json!({
                "version": 99, "machine": machine(), "source_vm": "vm-1", "created_at_unix_ms": 0,
                "memory_allocated_bytes": 0, "devstate_bytes": 0, "disk_bytes": 0
            }))
            .unwrap(),
        )
        .unwrap();
        let err = Snapshot::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        assert!(Snapshot::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn command_line_differs_only_in_accelerator() {
        let mk = |accel| QemuBackend::new(QemuConfig::new("/tmp/x".into(), accel));
        let ram = RamBacking::File {
            path: "/m".into(),
            shared: false,
        };
        let tcg = mk(Accel::Tcg).qemu_args(&machine(), &ram, Some(Path::new("/d.qcow2")), true);
        let kvm = mk(Accel::Kvm).qemu_args(&machine(), &ram, Some(Path::new("/d.qcow2")), true);
        let diff: Vec<_> = tcg.iter().zip(kvm.iter()).filter(|(a, b)| a != b).collect();
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(tcg.iter().any(|a| a.contains("share=off")));
        assert!(tcg.ends_with(&["-incoming".to_string(), "defer".to_string()]));
    }
}
