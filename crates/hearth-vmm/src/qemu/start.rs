//! One QEMU under a supervisor: its run directory, its confinement, its
//! descriptors, and the two connections Hearth keeps to it (QMP, and the
//! agent channel through the supervisor). Runs on the backend's task; the
//! spawn itself happens on the spawner thread.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hearth_supervisor::{SupervisorConfig, CONFIG_VERSION};

use super::cmdline::{self, DiskArg, RamArg};
use super::QemuBackend;
use crate::agent::{AgentClient, ChannelStart};
use crate::confine;
use crate::disk::{blockdev_nodes, DiskChain, DiskFormat, LayerLocation};
use crate::error::VmError;
use crate::memory::FileKey;
use crate::qmp::Qmp;
use crate::record::{ProcessIdentity, RUN_DIR};
use crate::sockets;
use crate::spec::{MachineConfig, NicSpec};
use crate::supervise::{self, RunDir, Supervisor};

/// Console bytes kept per QEMU process.
const CONSOLE_LOG_CAP_BYTES: u64 = 8 << 20;
/// QEMU stderr bytes kept for the exit record.
const STDERR_CAP_BYTES: u64 = 16 << 10;
/// Console bytes quoted in error messages.
pub(crate) const CONSOLE_TAIL_BYTES: usize = 4096;

/// How guest RAM is given to QEMU.
pub(crate) enum Ram {
    /// A file of the microVM's own.
    File { file: File, shared: bool },
    /// A snapshot's sealed image, mapped privately.
    Image(Arc<OwnedFd>),
    /// Anonymous (baselines).
    Anonymous,
}

/// The root disk at start.
pub(crate) enum Disk {
    None,
    /// Handed over later.
    Placeholder {
        size_bytes: u64,
    },
    /// Now, resolved against the microVM's directory.
    Chain(DiskChain),
}

/// What to start.
pub(crate) struct StartSpec<'a> {
    /// For messages: the microVM id or the pool slot.
    pub name: &'a str,
    pub vm_dir: &'a Path,
    pub machine: &'a MachineConfig,
    pub ram: Ram,
    /// Kernel, initramfs and command line, for a boot.
    pub boot: Option<(File, File, &'a str)>,
    pub disk: Disk,
    pub incoming: bool,
    pub uid: u32,
    pub channel: ChannelStart,
}

/// Disk nodes a waiting QEMU has attached ahead of time.
#[derive(Debug, Clone)]
pub(crate) struct PreparedDisk {
    /// The snapshot's layers, bottom first, with their format nodes.
    pub lower: Vec<(LayerLocation, String)>,
    /// The spare layer's file and format nodes (writable; its backing is
    /// the last of `lower`).
    pub spare_file_node: String,
    pub spare_node: String,
}

/// A started QEMU and Hearth's connections to it.
pub(crate) struct Proc {
    pub run: RunDir,
    pub supervisor: Supervisor,
    pub qemu: ProcessIdentity,
    pub qmp: Qmp,
    pub agent: AgentClient,
    /// Next unused fdset id and block node generation (for handovers).
    pub next_fdset: u64,
    pub next_node_gen: u32,
    /// Disk nodes attached ahead of time (a waiting QEMU).
    pub prepared: Option<PreparedDisk>,
    /// The file guest RAM is mapped from, as QEMU's maps name it (`None`:
    /// anonymous RAM). Taken from the descriptor QEMU was given, so it
    /// stays right for an adopted QEMU whose memory image another Hearth
    /// process made.
    pub ram_key: Option<FileKey>,
}

impl Proc {
    /// Why this QEMU can no longer be committed as a running microVM, if
    /// it (or its supervisor) has ended.
    pub(crate) async fn gone_error(&mut self, name: &str, during: &str) -> Option<VmError> {
        if self.qemu.alive() && !self.supervisor.exited() {
            return None;
        }
        Some(
            ended_error(&mut self.supervisor, &self.run, name, during)
                .await
                .unwrap_or(VmError::Supervisor {
                    id: name.to_string(),
                    detail: "QEMU is gone".into(),
                }),
        )
    }

    pub fn console_tail(&self) -> String {
        self.run.console_tail(CONSOLE_TAIL_BYTES)
    }
}

fn io_error(name: &str, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let (id, path) = (name.to_string(), path.to_path_buf());
    move |source| VmError::Io {
        id,
        op,
        path,
        source,
    }
}

impl QemuBackend {
    /// Start QEMU under a new supervisor and connect to it.
    pub(crate) async fn start(&self, s: StartSpec<'_>) -> Result<Proc, VmError> {
        self.start_with_nic(s, None).await
    }

    /// [`Self::start`], with a network interface when `nic` is given: the
    /// supervisor puts QEMU in `nic.netns` before confining it, and QEMU
    /// gets a user-mode network device (see `cmdline`).
    pub(crate) async fn start_with_nic(
        &self,
        s: StartSpec<'_>,
        nic: Option<&NicSpec>,
    ) -> Result<Proc, VmError> {
        let cfg = &self.inner.cfg;
        let run = RunDir(s.vm_dir.join(RUN_DIR));
        if run.0.exists() {
            std::fs::remove_dir_all(&run.0).map_err(io_error(s.name, "clear", &run.0))?;
        }
        std::fs::create_dir(&run.0).map_err(io_error(s.name, "create", &run.0))?;
        let qmp_listener =
            sockets::listen(&run.qmp()).map_err(io_error(s.name, "listen on", &run.qmp()))?;
        let control = sockets::listen(&run.control()).map_err(io_error(
            s.name,
            "listen on",
            &run.control(),
        ))?;

        let mut fds: Vec<(OwnedFd, i32)> = vec![(qmp_listener.into(), cmdline::QMP_FD)];
        let key_of = |r: std::io::Result<FileKey>| {
            r.map_err(io_error(s.name, "inspect the memory of", s.vm_dir))
        };
        let (ram, ram_key) = match s.ram {
            Ram::File { file, shared } => {
                let key = key_of(FileKey::of(&file))?;
                fds.push((file.into(), cmdline::MEMORY_FD));
                (RamArg::File { shared }, Some(key))
            }
            Ram::Image(image) => {
                let key = key_of(FileKey::of(&*image))?;
                let dup = image.try_clone().map_err(io_error(
                    s.name,
                    "duplicate the memory image of",
                    s.vm_dir,
                ))?;
                fds.push((dup, cmdline::MEMORY_FD));
                (RamArg::File { shared: false }, Some(key))
            }
            Ram::Anonymous => (RamArg::Anonymous, None),
        };
        let anonymous_ram = matches!(ram, RamArg::Anonymous);
        let mut boot_cmdline = None;
        if let Some((kernel, initrd, line)) = s.boot {
            fds.push((kernel.into(), cmdline::KERNEL_FD));
            fds.push((initrd.into(), cmdline::INITRD_FD));
            boot_cmdline = Some(line);
        }
        let mut next_fdset = 1u64;
        let disk = match &s.disk {
            Disk::None => DiskArg::None,
            Disk::Placeholder { size_bytes } => DiskArg::Placeholder {
                size_bytes: *size_bytes,
            },
            Disk::Chain(chain) => {
                let layers = chain.resolve(&self.inner.catalog.root(), s.vm_dir);
                let top = layers.len() - 1;
                let mut add = Vec::new();
                let mut files: Vec<(String, DiskFormat)> = Vec::new();
                let mut next_fd = cmdline::FIRST_DISK_FD;
                for (i, l) in layers.iter().enumerate() {
                    let set = next_fdset;
                    next_fdset += 1;
                    let modes: &[bool] = if i == top { &[true, false] } else { &[false] };
                    for write in modes {
                        let f = std::fs::OpenOptions::new()
                            .read(true)
                            .write(*write)
                            .open(&l.path)
                            .map_err(io_error(s.name, "open disk layer", &l.path))?;
                        fds.push((f.into(), next_fd));
                        add.push((next_fd, set));
                        next_fd += 1;
                    }
                    files.push((format!("/dev/fdset/{set}"), l.format));
                }
                let (nodes, top) = blockdev_nodes("g0", &files);
                DiskArg::Chain {
                    fds: add,
                    nodes,
                    top,
                }
            }
        };
        let args = cmdline::args(&cmdline::Plan {
            accel: cfg.accel,
            machine: s.machine,
            ram,
            boot_cmdline,
            disk,
            incoming: s.incoming,
            sandbox: cfg.confinement.is_some(),
            nic: match (nic, s.machine.nic_slot) {
                (Some(_), _) => cmdline::NicArg::User,
                (None, true) => cmdline::NicArg::Unplugged,
                (None, false) => cmdline::NicArg::None,
            },
        });
        let (jail, cgroup) = match &cfg.confinement {
            Some(c) => (
                Some(confine::jail_spec(
                    c,
                    s.uid,
                    &self.inner.host.qemu_program,
                    cfg.accel,
                )),
                c.cgroups
                    .then(|| confine::cgroup_spec(&format!("{}-{}", s.name, s.uid), s.machine)),
            ),
            None => (None, None),
        };
        if let Some(c) = &cfg.confinement {
            std::fs::create_dir_all(&c.jail_root).map_err(io_error(
                s.name,
                "create",
                &c.jail_root,
            ))?;
        }
        let sup_cfg = SupervisorConfig {
            version: CONFIG_VERSION,
            dir: run.0.clone(),
            program: self.inner.host.qemu_program.clone(),
            args,
            child_fds: Vec::new(),
            agent_fd: cmdline::AGENT_FD,
            console_fd: cmdline::CONSOLE_FD,
            control_fd: 0,
            console_log_cap_bytes: CONSOLE_LOG_CAP_BYTES,
            stderr_cap_bytes: STDERR_CAP_BYTES,
            jail,
            cgroup,
            linger: false,
            // Anonymous guest RAM (the stock-QEMU baseline) gets huge pages
            // as a stock QEMU would; file-backed RAM gains nothing from them.
            transparent_huge_pages: anonymous_ram,
            netns: nic.map(|n| n.netns.clone()),
        };
        let mut supervisor = supervise::spawn(&cfg.supervisor_binary, sup_cfg, control.into(), fds)
            .map_err(|source| VmError::Spawn {
                id: s.name.to_string(),
                program: cfg.supervisor_binary.clone(),
                source,
            })?;
        let name = s.name.to_string();
        let connected = async {
            let qmp = Qmp::connect(&run.qmp(), cfg.qmp_timeout)
                .await
                .map_err(|source| VmError::Qmp {
                    id: name.clone(),
                    during: "handshake",
                    source,
                })?;
            let (stream, status) = supervise::attach(&run).map_err(|e| VmError::Supervisor {
                id: name.clone(),
                detail: format!("attach: {e}"),
            })?;
            let agent = AgentClient::start(stream, s.channel).map_err(io_error(
                &name,
                "serve the agent channel of",
                s.vm_dir,
            ))?;
            Ok::<_, VmError>((qmp, status, agent))
        }
        .await;
        match connected {
            Ok((qmp, status, agent)) => Ok(Proc {
                qemu: ProcessIdentity {
                    pid: status.child_pid,
                    start_ticks: status.child_start_ticks,
                },
                run,
                supervisor,
                qmp,
                agent,
                next_fdset,
                next_node_gen: 1,
                prepared: None,
                ram_key,
            }),
            Err(e) => {
                let ended = ended_error(&mut supervisor, &run, &name, "start").await;
                supervisor.kill();
                Err(ended.unwrap_or(e))
            }
        }
    }
}

/// If the QEMU (or its supervisor) has ended, the error that says how:
/// the exit record, QEMU's last words, the console's tail.
pub(crate) async fn ended_error(
    supervisor: &mut Supervisor,
    run: &RunDir,
    name: &str,
    during: &str,
) -> Option<VmError> {
    if !supervisor.wait_exit(Duration::from_millis(500)).await {
        return None;
    }
    let detail = run.exit_record().map(|r| r.describe()).unwrap_or_else(|| {
        let log =
            std::fs::read_to_string(run.0.join(supervise::SUPERVISOR_LOG)).unwrap_or_default();
        format!("the supervisor exited: {}", log.trim())
    });
    Some(VmError::QemuExited {
        id: name.to_string(),
        during: during.to_string(),
        detail,
        console: run.console_tail(CONSOLE_TAIL_BYTES),
    })
}
