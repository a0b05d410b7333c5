//! Bringing microVMs up: cold boot, a clone launched from a snapshot, a
//! suspended microVM resumed. Launch and resume take a pre-started QEMU of
//! the snapshot when one waits (else start one on the spot) and go through
//! the same steps: hand it the disk chain, write back the guest's pages,
//! load the device state, give the agent its post-restore duties, commit.
//!
//! A failed launch or boot kills its QEMU and removes everything it made. A
//! failed resume does the same to the new process and its new disk layer
//! and leaves the suspended microVM exactly as it was: the resumed guest
//! writes only to a disk layer of its own, created for this resume, and
//! maps its memory privately, so the suspended state never moves on until
//! the resume has committed.

use std::fs::File;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_proto::{RestoreRequest, RESTORE_ENTROPY_BYTES};
use rand::RngCore;

use super::pool::{create_vm_dir, Prestarted, SPARE_LAYER};
use super::start::{ended_error, Disk, Proc, Ram, StartSpec};
use super::vm::QemuVm;
use super::QemuBackend;
use crate::agent::ChannelStart;
use crate::catalog::{Dependent, Snapshot};
use crate::confine;
use crate::disk::{self, DiskChain, DiskFormat, DiskLayer, LayerLocation};
use crate::error::VmError;
use crate::fault::{FaultContext, FaultPoint};
use crate::memory::{self, MemoryDiff};
use crate::record::{MemoryBase, MemoryRecord, RecordedState, SuspendedVm, VmRecord, RUN_DIR};
use crate::spec::NicSpec;
use crate::spec::{BootSpec, LaunchSpec, MachineConfig};
use crate::{VmBackend, VmId};

fn io(id: &str, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let (id, path) = (id.to_string(), path.to_path_buf());
    move |source| VmError::Io {
        id,
        op,
        path,
        source,
    }
}

/// The next own layer's file name in `dir` (`disk-<n>.qcow2`).
fn next_layer_name(dir: &Path) -> String {
    let n = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("disk-")?
                        .strip_suffix(".qcow2")?
                        .parse::<u32>()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    format!("disk-{}.qcow2", n + 1)
}

/// Hand the uid claim of a claimed waiting QEMU over to microVM `name`.
fn hand_over_uid(state_dir: &Path, uid: u32, name: &str) -> Result<(), VmError> {
    confine::move_uid(state_dir, uid, name).map_err(io(
        name,
        "hand over the uid claim",
        &confine::uid_claim(state_dir, uid),
    ))
}

impl QemuBackend {
    /// A waiting QEMU becomes microVM `name`: its directory is renamed to
    /// the microVM's (QEMU reaches its files only through descriptors, and
    /// its sockets are found by inode, so `proc.run` follows the rename),
    /// its uid claim is handed over, and its spare disk layer becomes the
    /// microVM's own top layer over `disk`. Every path made is pushed on
    /// `undo_paths` as soon as it exists. Returns the microVM's directory
    /// and disk chain.
    pub(super) fn become_vm(
        &self,
        proc: &mut Proc,
        pool_dir: &Path,
        uid: u32,
        name: &str,
        disk: Option<&DiskChain>,
        undo_paths: &mut Vec<PathBuf>,
    ) -> Result<(PathBuf, Option<DiskChain>), VmError> {
        let dir = self.vm_dir(name);
        if dir.exists() {
            return Err(VmError::Exists(name.to_string()));
        }
        std::fs::rename(pool_dir, &dir).map_err(io(name, "claim", pool_dir))?;
        *undo_paths = vec![dir.clone()];
        proc.run = crate::supervise::RunDir(dir.join(RUN_DIR));
        hand_over_uid(&self.inner.cfg.state_dir, uid, name)?;
        let chain = match disk {
            Some(c) => {
                let layer = next_layer_name(&dir);
                let spare = dir.join(SPARE_LAYER);
                std::fs::rename(&spare, dir.join(&layer)).map_err(io(name, "rename", &spare))?;
                Some(c.with_own_top(&layer))
            }
            None => None,
        };
        Ok((dir, chain))
    }
}

/// Removes what a failed bring-up made, unless disarmed.
pub(super) struct Undo {
    pub(super) paths: Vec<PathBuf>,
    pub(super) uid: Option<(PathBuf, u32)>,
    pub(super) refs: Vec<(crate::catalog::Catalog, crate::SnapshotId, Dependent)>,
    pub(super) proc: Option<Proc>,
}

impl Undo {
    pub(super) fn new() -> Self {
        Self {
            paths: Vec::new(),
            uid: None,
            refs: Vec::new(),
            proc: None,
        }
    }

    pub(super) fn disarm(mut self) -> Option<Proc> {
        self.paths.clear();
        self.uid = None;
        self.refs.clear();
        self.proc.take()
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.supervisor.kill();
        }
        for p in &self.paths {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some((state, uid)) = &self.uid {
            confine::release_uid(state, *uid);
        }
        for (cat, id, dep) in &self.refs {
            cat.remove_ref(id, dep);
        }
    }
}

impl QemuBackend {
    fn fault_at(&self, point: FaultPoint, id: &VmId, dir: &Path, proc: &Proc) {
        self.fault(point, || FaultContext {
            vm: id.clone(),
            qemu_pid: Some(proc.qemu.pid),
            supervisor_pid: Some(proc.supervisor.pid()),
            dir: dir.to_path_buf(),
        });
    }

    /// Give a restored guest its clock, entropy and identity; the agent
    /// ends every stream of the snapshot's connection.
    pub(super) async fn restore_agent(&self, id: &VmId, proc: &mut Proc) -> Result<(), VmError> {
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
        let agent = proc.agent.clone();
        let timeout = self.inner.cfg.agent_timeout;
        let res = tokio::select! {
            r = agent.restore(req, timeout) => r,
            () = proc.supervisor.until_exit() => {
                return Err(ended_error(&mut proc.supervisor, &proc.run, id.as_str(), "restore")
                    .await
                    .unwrap_or(VmError::Supervisor { id: id.to_string(), detail: "exited".into() }));
            }
        };
        res.map(|_| ()).map_err(|source| VmError::Agent {
            id: id.to_string(),
            during: "restore",
            console: proc.console_tail(),
            source,
        })
    }

    /// Load state into a claimed QEMU and make the guest ready: the part of
    /// a launch or resume that a pre-started QEMU still has to do.
    pub(super) async fn complete_restore(
        &self,
        id: &VmId,
        dir: &Path,
        proc: &mut Proc,
        chain: Option<&DiskChain>,
        diff: Option<(MemoryDiff, PathBuf, u64)>,
        devstate: &Path,
    ) -> Result<(), VmError> {
        let t = self.inner.cfg.qmp_timeout;
        let t0 = std::time::Instant::now();
        if let Some(chain) = chain {
            let layers = chain.resolve(&self.inner.catalog.root(), dir);
            proc.hand_disk(id.as_str(), chain, &layers, t).await?;
        }
        self.fault_at(FaultPoint::ResumeDiskReady, id, dir, proc);
        let t_disk_only = t0.elapsed();
        if let Some((diff, data, len)) = diff {
            let pid = proc.qemu.pid;
            let key = proc
                .ram_key
                .ok_or_else(|| VmError::Invalid(format!("{id}: its QEMU maps no memory file")))?;
            tokio::task::spawn_blocking(move || {
                let map = memory::find_ram_mapping(pid, key, len)?;
                memory::apply_diff(&map, &diff, &data)
            })
            .await
            .expect("apply_diff task")
            .map_err(|source| VmError::Memory {
                id: id.to_string(),
                source,
            })?;
        }
        self.fault_at(FaultPoint::ResumeMemoryWritten, id, dir, proc);
        let t_disk = t0.elapsed();
        proc.load_state(id.as_str(), devstate, t).await?;
        self.fault_at(FaultPoint::ResumeStateLoaded, id, dir, proc);
        let t_loaded = t0.elapsed();
        self.restore_agent(id, proc).await?;
        self.fault_at(FaultPoint::ResumeAgentRestored, id, dir, proc);
        tracing::debug!(
            vm = %id,
            disk_ms = t_disk_only.as_secs_f64() * 1e3,
            handover_ms = t_disk.as_secs_f64() * 1e3,
            state_loaded_ms = t_loaded.as_secs_f64() * 1e3,
            agent_ready_ms = t0.elapsed().as_secs_f64() * 1e3,
            "restored"
        );
        Ok(())
    }

    /// A waiting QEMU for `snapshot`: from the pool, or started now.
    /// A QEMU waiting for `snapshot`: a pre-started one, or a new one. With
    /// a NIC always a new one, in the NIC's namespace (the pool's QEMUs have
    /// no network).
    async fn claim(
        &self,
        snapshot: &Snapshot,
        nic: Option<&NicSpec>,
    ) -> Result<Prestarted, VmError> {
        if nic.is_some() {
            return self.prestart_one(snapshot, nic).await;
        }
        match self.take_pooled(&snapshot.id) {
            Some(p) => Ok(p),
            None => self.prestart_one(snapshot, None).await,
        }
    }

    /// Cold boot; `anonymous_ram` gives the plain-QEMU baseline.
    pub async fn boot_with(&self, spec: BootSpec, anonymous_ram: bool) -> Result<QemuVm, VmError> {
        if spec.mem_size_mib < 64 || spec.vcpu_count == 0 || spec.vcpu_count > 64 {
            return Err(VmError::Invalid(format!(
                "need at least 64 MiB and 1-64 vCPUs, got {} MiB and {} vCPUs",
                spec.mem_size_mib, spec.vcpu_count
            )));
        }
        let open = |what: &str, p: &Path| {
            File::open(p).map_err(|e| {
                VmError::Invalid(format!("{what} {} cannot be opened: {e}", p.display()))
            })
        };
        let kernel = open("kernel", &spec.kernel)?;
        let initrd = open("initramfs", &spec.initramfs)?;
        if let Some(nic) = &spec.nic {
            check_netns(nic)?;
        }
        let id = spec.id.clone();
        let name = id.to_string();
        let dir = create_vm_dir(self, &name)?;
        let state_dir = self.inner.cfg.state_dir.clone();
        let mut undo = Undo::new();
        undo.paths.push(dir.clone());
        let uid = confine::claim_uid(&state_dir, &name).map_err(io(
            &name,
            "claim a uid in",
            &state_dir,
        ))?;
        undo.uid = Some((state_dir, uid));

        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
            "rdinit=/init".into(),
            format!("hearth.hostname={id}"),
        ];
        if let Some(khz) = self.inner.cfg.tsc_khz {
            cmdline.push(format!("tsc_early_khz={khz}"));
        }
        cmdline.extend(spec.extra_cmdline.iter().cloned());
        if spec.root_disk.is_none() && !spec.root_overlays.is_empty() {
            return Err(VmError::Invalid(
                "root disk layers need a root disk beneath them".into(),
            ));
        }
        let mut chain = None;
        if let Some(base) = &spec.root_disk {
            let base = std::fs::canonicalize(base)
                .map_err(|e| VmError::Invalid(format!("root disk {}: {e}", base.display())))?;
            let size = disk::raw_size_bytes(&base).map_err(|source| VmError::Disk {
                id: name.clone(),
                source,
            })?;
            let mut layers = vec![DiskLayer {
                location: LayerLocation::External { path: base },
                format: DiskFormat::Raw,
            }];
            for overlay in &spec.root_overlays {
                let path = std::fs::canonicalize(overlay).map_err(|e| {
                    VmError::Invalid(format!("root disk layer {}: {e}", overlay.display()))
                })?;
                layers.push(DiskLayer {
                    location: LayerLocation::External { path },
                    format: DiskFormat::Qcow2,
                });
            }
            let layer_name = "disk-1.qcow2";
            self.create_layer(&name, dir.join(layer_name), size).await?;
            chain = Some(
                DiskChain {
                    size_bytes: size,
                    layers,
                }
                .with_own_top(layer_name),
            );
        } else {
            cmdline.push("hearth.noroot".into());
        }
        let machine = MachineConfig {
            mem_size_mib: spec.mem_size_mib,
            vcpu_count: spec.vcpu_count,
            cmdline: cmdline.join(" "),
            disk_size_bytes: chain.as_ref().map(|c| c.size_bytes),
            nic_slot: spec.nic_slot || spec.nic.is_some(),
        };
        let (ram, memory) = if anonymous_ram {
            (Ram::Anonymous, MemoryBase::Anonymous)
        } else {
            let mem_path = dir.join("memory");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&mem_path)
                .and_then(|f| f.set_len(machine.mem_size_bytes()).map(|()| f))
                .map_err(io(&name, "create", &mem_path))?;
            // QEMU opens its own memory file itself, as its own user.
            chown(&mem_path, Some(uid), Some(uid)).map_err(io(&name, "chown", &mem_path))?;
            (
                Ram::File {
                    file: f,
                    shared: true,
                },
                MemoryBase::Own {
                    file: "memory".into(),
                },
            )
        };
        let mut proc = self
            .start_with_nic(
                StartSpec {
                    name: &name,
                    vm_dir: &dir,
                    machine: &machine,
                    ram,
                    boot: Some((kernel, initrd, &machine.cmdline)),
                    disk: chain.clone().map_or(Disk::None, Disk::Chain),
                    incoming: false,
                    uid,
                    channel: ChannelStart::Boot,
                },
                spec.nic.as_ref(),
            )
            .await?;
        let agent = proc.agent.clone();
        let timeout = self.inner.cfg.boot_timeout;
        let hello = tokio::select! {
            r = agent.wait_hello(timeout) => r,
            () = proc.supervisor.until_exit() => {
                let e = ended_error(&mut proc.supervisor, &proc.run, &name, "boot").await;
                undo.proc = Some(proc);
                return Err(e.unwrap_or(VmError::Supervisor { id: name, detail: "exited".into() }));
            }
        };
        let hello = match hello {
            Ok(h) => h,
            Err(source) => {
                let console = proc.console_tail();
                undo.proc = Some(proc);
                return Err(VmError::Agent {
                    id: name,
                    during: "boot",
                    console,
                    source,
                });
            }
        };
        let mut requirements = self.inner.host.requirements.clone();
        requirements.kernel_release = Some(hello.kernel_release.clone());
        requirements.agent_protocol = hello.proto_version;
        let record = VmRecord {
            version: VmRecord::VERSION,
            id: id.clone(),
            machine,
            lifetime: spec.lifetime,
            uid,
            requirements,
            memory: MemoryRecord {
                base: memory,
                shared: !anonymous_ram,
            },
            disk: chain,
            nic: spec.nic.clone(),
            state: RecordedState::Suspended {
                generation: 0,
                suspended_at_unix_ms: 0,
                has_diff: false,
            },
        };
        undo.disarm();
        let mut vm = QemuVm::new(self.clone(), id, dir, record, proc);
        vm.commit().await?;
        Ok(vm)
    }

    async fn launch_inner(&self, snapshot: &Snapshot, spec: LaunchSpec) -> Result<QemuVm, VmError> {
        let snapshot = self.inner.catalog.get(&snapshot.id)?;
        self.check_restorable(
            format!("snapshot {}", snapshot.id),
            &snapshot.record.requirements,
        )?;
        let id = spec.id;
        let name = id.to_string();
        let mut undo = Undo::new();
        let catalog = self.inner.catalog.clone();
        for s in snapshot_dependencies(&snapshot) {
            catalog.add_ref(&s, &Dependent::Vm(id.clone()))?;
            undo.refs
                .push((catalog.clone(), s, Dependent::Vm(id.clone())));
        }
        if let Some(nic) = &spec.nic {
            if !snapshot.record.machine.nic_slot {
                return Err(VmError::Invalid(format!(
                    "snapshot {} has no network slot, so its clones cannot have a network \
                     interface (snapshot a microVM booted with one)",
                    snapshot.id
                )));
            }
            check_netns(nic)?;
        }
        let entry = self.claim(&snapshot, spec.nic.as_ref()).await?;
        let (mut proc, pool_dir, uid) = entry.take();
        let state_dir = self.inner.cfg.state_dir.clone();
        undo.uid = Some((state_dir.clone(), uid));
        undo.paths.push(pool_dir.clone());
        let (dir, chain) = match self.become_vm(
            &mut proc,
            &pool_dir,
            uid,
            &name,
            snapshot.record.disk.as_ref(),
            &mut undo.paths,
        ) {
            Ok(claimed) => claimed,
            Err(e) => {
                undo.proc = Some(proc);
                return Err(e);
            }
        };
        self.fault_at(FaultPoint::ResumeStarted, &id, &dir, &proc);
        let devstate = self.inner.catalog.dir(&snapshot.id).join("devstate");
        if let Err(e) = self
            .complete_restore(&id, &dir, &mut proc, chain.as_ref(), None, &devstate)
            .await
        {
            undo.proc = Some(proc);
            return Err(e);
        }
        let record = VmRecord {
            version: VmRecord::VERSION,
            id: id.clone(),
            machine: snapshot.record.machine.clone(),
            lifetime: spec.lifetime,
            uid,
            requirements: snapshot.record.requirements.clone(),
            memory: MemoryRecord {
                base: MemoryBase::Snapshot(snapshot.id.clone()),
                shared: false,
            },
            disk: chain,
            nic: spec.nic,
            state: RecordedState::Suspended {
                generation: 0,
                suspended_at_unix_ms: 0,
                has_diff: false,
            },
        };
        if let Some(e) = proc.gone_error(id.as_str(), "restore").await {
            undo.proc = Some(proc);
            return Err(e);
        }
        undo.disarm();
        let mut vm = QemuVm::new(self.clone(), id, dir, record, proc);
        vm.commit().await?;
        Ok(vm)
    }

    async fn resume_inner(&self, suspended: SuspendedVm) -> Result<QemuVm, VmError> {
        let mut record = suspended.record;
        let dir = suspended.dir;
        let id = record.id.clone();
        let name = id.to_string();
        let RecordedState::Suspended {
            generation,
            has_diff,
            ..
        } = record.state
        else {
            return Err(VmError::Invalid(format!("{id} is not suspended")));
        };
        self.check_restorable(format!("microVM {id}"), &record.requirements)?;
        let gen_dir = VmRecord::generation_dir(&dir, generation);
        let mut undo = Undo::new();
        let state_dir = self.inner.cfg.state_dir.clone();
        // A QEMU for it: a waiting one of its snapshot, or a new one.
        let (mut proc, spare, pooled) = match &record.memory.base {
            MemoryBase::Snapshot(sid) => {
                let snap = self.inner.catalog.get(sid)?;
                let entry = self.claim(&snap, record.nic.as_ref()).await?;
                let (proc, pool_dir, uid) = entry.take();
                undo.paths.push(pool_dir.clone());
                undo.uid = Some((state_dir.clone(), uid));
                let run = dir.join(RUN_DIR);
                let _ = std::fs::remove_dir_all(&run);
                let moved = std::fs::rename(pool_dir.join(RUN_DIR), &run);
                undo.proc = Some(proc);
                moved.map_err(io(&name, "claim", &pool_dir))?;
                let mut proc = undo.proc.take().expect("just set");
                proc.run = crate::supervise::RunDir(run.clone());
                undo.paths.push(run);
                let spare = record.disk.as_ref().map(|_| pool_dir.join(SPARE_LAYER));
                (proc, spare, Some((pool_dir, uid)))
            }
            MemoryBase::Own { file } => {
                let path = dir.join(file);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io(&name, "open", &path))?;
                chown(&path, Some(record.uid), Some(record.uid))
                    .map_err(io(&name, "chown", &path))?;
                let proc = self
                    .start_with_nic(
                        StartSpec {
                            name: &name,
                            vm_dir: &dir,
                            machine: &record.machine,
                            ram: Ram::File {
                                file: f,
                                shared: false,
                            },
                            boot: None,
                            disk: record
                                .machine
                                .disk_size_bytes
                                .map_or(Disk::None, |size_bytes| Disk::Placeholder { size_bytes }),
                            incoming: true,
                            uid: record.uid,
                            channel: ChannelStart::Restored {
                                version: record.requirements.agent_protocol,
                            },
                        },
                        record.nic.as_ref(),
                    )
                    .await?;
                undo.paths.push(dir.join(RUN_DIR));
                (proc, None, None)
            }
            MemoryBase::Anonymous => {
                return Err(VmError::Invalid(format!(
                    "{id} has anonymous RAM and cannot be resumed"
                )))
            }
        };
        self.fault_at(FaultPoint::ResumeStarted, &id, &dir, &proc);
        // The resumed guest writes to a new layer: the suspended one stays
        // as it was until this resume commits.
        let chain = match &record.disk {
            Some(c) => {
                let layer = next_layer_name(&dir);
                let path = dir.join(&layer);
                let made = match &spare {
                    Some(spare) => {
                        std::fs::rename(spare, &path).map_err(io(&name, "rename", spare))
                    }
                    None => self.create_layer(&name, path.clone(), c.size_bytes).await,
                };
                undo.paths.push(path);
                if let Err(e) = made {
                    undo.proc = Some(proc);
                    return Err(e);
                }
                Some(c.with_own_top(&layer))
            }
            None => None,
        };
        let diff = if has_diff {
            let json = gen_dir.join("memory.diff.json");
            match MemoryDiff::load(&json) {
                Ok(d) => Some((
                    d,
                    gen_dir.join("memory.diff"),
                    record.machine.mem_size_bytes(),
                )),
                Err(source) => {
                    undo.proc = Some(proc);
                    return Err(VmError::Memory { id: name, source });
                }
            }
        } else {
            None
        };
        if let Err(e) = self
            .complete_restore(
                &id,
                &dir,
                &mut proc,
                chain.as_ref(),
                diff,
                &gen_dir.join("devstate"),
            )
            .await
        {
            undo.proc = Some(proc);
            return Err(e);
        }
        record.disk = chain;
        let old_uid = record.uid;
        if let Some((_, uid)) = &pooled {
            // The microVM now runs as the waiting QEMU's user.
            record.uid = *uid;
        }
        if let Some(e) = proc.gone_error(id.as_str(), "restore").await {
            undo.proc = Some(proc);
            return Err(e);
        }
        if let Some((_, uid)) = &pooled {
            // Before the commit: once committed, the claim must name it.
            if let Err(e) = hand_over_uid(&state_dir, *uid, &name) {
                undo.proc = Some(proc);
                return Err(e);
            }
        }
        let mut vm = QemuVm::new(self.clone(), id, dir.clone(), record, proc);
        if let Err(e) = vm.commit().await {
            // The suspended microVM keeps its files: only what this resume
            // made goes.
            undo.proc = vm.proc.take();
            return Err(e);
        }
        undo.disarm();
        // The guest owns its state again; the suspended generation is stale.
        // Its memory file can be large: unlinked off the caller's path (a
        // later suspend picks a generation number of its own either way).
        let mut stale = vec![gen_dir];
        if let Some((pool_dir, _)) = pooled {
            confine::release_uid(&state_dir, old_uid);
            stale.push(pool_dir);
        }
        tokio::task::spawn_blocking(move || {
            for dir in stale {
                let _ = std::fs::remove_dir_all(dir);
            }
        });
        Ok(vm)
    }
}

/// A NIC's namespace must exist before a QEMU is started in it.
fn check_netns(nic: &NicSpec) -> Result<(), VmError> {
    if !nic.netns.is_absolute() || !nic.netns.exists() {
        return Err(VmError::Invalid(format!(
            "network namespace {} does not exist (prepare the egress network first)",
            nic.netns.display()
        )));
    }
    Ok(())
}

/// What a clone of `snapshot` depends on: the snapshot, and those its disk
/// is layered on.
fn snapshot_dependencies(snapshot: &Snapshot) -> Vec<crate::SnapshotId> {
    let mut out = vec![snapshot.id.clone()];
    if let Some(d) = &snapshot.record.disk {
        for s in d.snapshots() {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
    }
    out
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
