//! A running microVM ([`QemuVm`]): snapshot, suspend, terminate, and what
//! a failure at each step leaves behind.
//!
//! * A failed snapshot leaves no snapshot (its staging directory is
//!   removed) and never deletes or moves the source's files: files already
//!   moved are moved back. The source goes on running when its QEMU is
//!   still there, else it is `Failed` with its files where they were.
//! * A failed suspend removes the half-written generation and leaves the
//!   previous state untouched; the guest is thawed and goes on `Running`,
//!   or is `Failed` when its QEMU is gone.
//! * `vm.json` changes only at commit points (boot, launch, resume done;
//!   suspend done), written atomically.
//!
//! Dropping a [`QemuVm`] that was committed with [`Lifetime::Persistent`]
//! leaves it running (the next Hearth process adopts it); any other drop
//! kills its QEMU and removes its files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::start::Proc;
use super::QemuBackend;
use crate::agent::{AgentClient, AgentClientError, ChannelHealth};
use crate::catalog::{Dependent, Snapshot, SnapshotRecord};
use crate::disk::{self, DiskChain, DiskFormat, DiskLayer, LayerLocation};
use crate::error::VmError;
use crate::fault::{FaultContext, FaultPoint};
use crate::memory::{self, FileKey, MemoryError};
use crate::record::{
    save_json, MemoryBase, RecordedState, SuspendedVm, VmRecord, RECORD_FILE, RUN_DIR,
};
use crate::spec::{Lifetime, MachineConfig, SnapshotMode};
use crate::state::{transition, InvalidTransition, VmEvent, VmState};
use crate::SnapshotId;
use crate::{confine, MicroVm, VmId};

/// How long QEMU may take to quit after QMP `quit`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Own disk layers kept before a suspend folds the top one down.
const MAX_OWN_LAYERS: usize = 2;

/// A running QEMU microVM.
pub struct QemuVm {
    pub(super) backend: QemuBackend,
    pub(super) id: VmId,
    pub(super) dir: PathBuf,
    pub(super) record: VmRecord,
    /// The process and its connections; `None` once it is gone.
    pub(super) proc: Option<Proc>,
    pub(super) state: VmState,
    /// `vm.json` says Running, and a persistent microVM's supervisor lingers.
    pub(super) committed: bool,
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Files a failed step moved, to be put back.
#[derive(Default)]
struct Moves(Vec<(PathBuf, PathBuf)>);

impl Moves {
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        self.0.push((from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn undo(self) {
        for (from, to) in self.0.into_iter().rev() {
            let _ = std::fs::rename(&to, &from);
        }
    }
}

impl QemuVm {
    pub(super) fn new(
        backend: QemuBackend,
        id: VmId,
        dir: PathBuf,
        record: VmRecord,
        proc: Proc,
    ) -> Self {
        let mut vm = Self {
            backend,
            id,
            dir,
            record,
            proc: Some(proc),
            state: VmState::Starting,
            committed: false,
        };
        vm.apply(VmEvent::Ready).expect("Starting accepts Ready");
        vm
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("a running microVM has a process")
    }

    fn proc_mut(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("a running microVM has a process")
    }

    /// Give the running guest the clock, fresh entropy and identity a
    /// restore gives it, again: for a clone that was restored ahead of time
    /// (a warm pool) and is handed out now. Fails like a restore does when
    /// the agent does not answer; the microVM is then best terminated.
    pub async fn reidentify(&mut self) -> Result<(), VmError> {
        if self.state != VmState::Running {
            return Err(VmError::Invalid(format!(
                "{}: only a running microVM can be given a new identity (it is {:?})",
                self.id, self.state
            )));
        }
        let backend = self.backend.clone();
        let id = self.id.clone();
        backend.restore_agent(&id, self.proc_mut()).await
    }

    /// PID of the QEMU process (host PID namespace).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.qemu.pid)
    }

    /// PID of its supervisor.
    pub fn supervisor_pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.supervisor.pid())
    }

    /// The microVM's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn machine(&self) -> &MachineConfig {
        &self.record.machine
    }

    pub fn record(&self) -> &VmRecord {
        &self.record
    }

    /// The uid its QEMU runs as.
    pub fn uid(&self) -> u32 {
        self.record.uid
    }

    /// The last few KiB of serial console output.
    pub fn console_tail(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::console_tail)
            .unwrap_or_default()
    }

    /// Proportional set size of the microVM's processes (QEMU and its
    /// supervisor), in KiB.
    pub fn pss_kib(&self) -> Option<u64> {
        let pss = |pid: u32| -> Option<u64> {
            let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            s.lines()
                .find(|l| l.starts_with("Pss:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        Some(pss(self.pid())? + pss(self.supervisor_pid()).unwrap_or(0))
    }

    pub(super) fn apply(&mut self, ev: VmEvent) -> Result<(), VmError> {
        self.state = transition(&self.state, &ev).map_err(|source| VmError::State {
            id: self.id.to_string(),
            source,
        })?;
        Ok(())
    }

    fn fault(&self, point: FaultPoint) {
        self.backend.fault(point, || FaultContext {
            vm: self.id.clone(),
            qemu_pid: self.proc.as_ref().map(|p| p.qemu.pid),
            supervisor_pid: self.proc.as_ref().map(|p| p.supervisor.pid()),
            dir: self.dir.clone(),
        });
    }

    fn timeouts(&self) -> (Duration, Duration) {
        let c = &self.backend.inner.cfg;
        (c.qmp_timeout, c.agent_timeout)
    }

    fn err_qmp(&self, during: &'static str) -> impl FnOnce(crate::qmp::QmpError) -> VmError {
        let id = self.id.to_string();
        move |source| VmError::Qmp { id, during, source }
    }

    fn err_agent(&self, during: &'static str) -> impl FnOnce(AgentClientError) -> VmError {
        let (id, console) = (self.id.to_string(), self.console_tail());
        move |source| VmError::Agent {
            id,
            during,
            console,
            source,
        }
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

    fn err_mem(&self) -> impl FnOnce(MemoryError) -> VmError {
        let id = self.id.to_string();
        move |source| VmError::Memory { id, source }
    }

    /// Is QEMU still there?
    fn qemu_alive(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.qemu.alive() && !p.supervisor.exited())
    }

    /// For a persistent microVM, let its supervisor outlive this process;
    /// then write the Running record. From here on the microVM exists.
    ///
    /// The linger comes first so that a failure leaves the previous record
    /// (a suspended microVM's, on resume) exactly as it was; a record that
    /// cannot be written takes the linger back.
    pub(super) async fn commit(&mut self) -> Result<(), VmError> {
        let p = self.proc();
        let (state, run) = (
            RecordedState::Running {
                supervisor: p.supervisor.identity,
                qemu: p.qemu,
            },
            p.run.clone(),
        );
        let persistent = self.record.lifetime == Lifetime::Persistent;
        if persistent {
            crate::supervise::set_linger(&run, true).map_err(|e| VmError::Supervisor {
                id: self.id.to_string(),
                detail: format!("linger: {e}"),
            })?;
        }
        let mut record = self.record.clone();
        record.state = state;
        if let Err(e) = save_json(&self.dir.join(RECORD_FILE), &record) {
            if persistent {
                let _ = crate::supervise::set_linger(&run, false);
            }
            return Err(e.into());
        }
        self.record = record;
        let _ = std::fs::remove_file(self.dir.join(crate::owner::OWNER_FILE));
        self.committed = true;
        Ok(())
    }

    /// Quiesce the agent and stop the vCPUs.
    async fn freeze(&mut self) -> Result<(), VmError> {
        let (qmp_t, agent_t) = self.timeouts();
        let agent = self.proc().agent.clone();
        agent
            .quiesce(false, agent_t)
            .await
            .map_err(self.err_agent("quiesce"))?;
        let e = self.err_qmp("stop");
        self.proc_mut()
            .qmp
            .execute("stop", json!({}), qmp_t)
            .await
            .map_err(e)?;
        Ok(())
    }

    /// Let a frozen guest go on.
    async fn unfreeze(&mut self) -> Result<(), VmError> {
        let (qmp_t, agent_t) = self.timeouts();
        let e = self.err_qmp("cont");
        self.reconnect_qmp_if_dead().await?;
        self.proc_mut()
            .qmp
            .execute("cont", json!({}), qmp_t)
            .await
            .map_err(e)?;
        let agent = self.proc().agent.clone();
        agent.thaw(agent_t).await.map_err(self.err_agent("thaw"))
    }

    /// After a failed step: let the guest go on if its QEMU is there. The
    /// guest runs once `cont` succeeded; an agent that does not answer the
    /// thaw in time gets it later (it is queued before anything else).
    async fn back_after_failure(&mut self) -> bool {
        if !self.qemu_alive() {
            return false;
        }
        let (qmp_t, agent_t) = self.timeouts();
        if self.reconnect_qmp_if_dead().await.is_err() {
            return false;
        }
        if self
            .proc_mut()
            .qmp
            .execute("cont", json!({}), qmp_t)
            .await
            .is_err()
        {
            return false;
        }
        let agent = self.proc().agent.clone();
        let _ = agent.thaw(agent_t).await;
        true
    }

    /// A QMP session whose command timed out is dead: connect a new one.
    async fn reconnect_qmp_if_dead(&mut self) -> Result<(), VmError> {
        if !self.proc().qmp.is_dead() {
            return Ok(());
        }
        let (qmp_t, _) = self.timeouts();
        let path = self.proc().run.qmp();
        let qmp = crate::qmp::Qmp::connect(&path, qmp_t)
            .await
            .map_err(self.err_qmp("reconnect"))?;
        self.proc_mut().qmp = qmp;
        Ok(())
    }

    /// Ask QEMU to quit, then make sure it and its supervisor are gone.
    async fn quit(&mut self) {
        let Some(p) = self.proc.as_mut() else { return };
        p.agent.close_streams("the microVM stopped");
        let _ = p
            .qmp
            .execute("quit", json!({}), Duration::from_secs(2))
            .await;
        if !p.supervisor.wait_exit(QUIT_TIMEOUT).await {
            p.supervisor.kill();
        }
    }

    /// The file guest RAM is mapped from, and its key in QEMU's maps.
    fn memory_base(&self) -> Result<(PathBuf, FileKey), VmError> {
        let path = match &self.record.memory.base {
            MemoryBase::Snapshot(id) => self.backend.inner.catalog.dir(id).join("memory"),
            MemoryBase::Own { file } => self.dir.join(file),
            MemoryBase::Anonymous => {
                return Err(VmError::Invalid(format!(
                    "{} has anonymous RAM: no memory file",
                    self.id
                )))
            }
        };
        let key = self.proc().ram_key.ok_or_else(|| {
            VmError::Invalid(format!("{}: its QEMU maps no memory file", self.id))
        })?;
        Ok((path, key))
    }

    fn mem_len_bytes(&self) -> u64 {
        self.record.machine.mem_size_bytes()
    }

    async fn snapshot_inner(
        &mut self,
        id: &SnapshotId,
        staging: &Path,
        mode: SnapshotMode,
        moves: &mut Moves,
    ) -> Result<SnapshotRecord, VmError> {
        let (qmp_t, _) = self.timeouts();
        self.freeze().await?;
        self.fault(FaultPoint::SnapshotFrozen);
        let name = self.id.to_string();
        let devstate_bytes = self
            .proc_mut()
            .save_state(&name, &staging.join("devstate"), qmp_t)
            .await?;
        self.fault(FaultPoint::SnapshotStateSaved);
        let mem_dst = staging.join("memory");
        let shared_own = self.record.memory.shared;
        if !shared_own {
            let (base, key) = self.memory_base()?;
            let map = memory::find_ram_mapping(self.pid(), key, self.mem_len_bytes())
                .map_err(self.err_mem())?;
            let dst = mem_dst.clone();
            tokio::task::spawn_blocking(move || memory::materialize(&base, &map, &dst))
                .await
                .expect("materialize task")
                .map_err(self.err_mem())?;
        } else if mode == SnapshotMode::KeepRunning {
            let (src, dst) = (self.own_memory_path(), mem_dst.clone());
            tokio::task::spawn_blocking(move || memory::sparse_copy(&src, &dst))
                .await
                .expect("sparse_copy task")
                .map_err(self.err_mem())?;
        }
        self.fault(FaultPoint::SnapshotMemorySaved);
        // The disk: the microVM's own layers, as one file over the rest.
        let disk_dst = staging.join("disk.qcow2");
        let snap_disk = match &self.record.disk {
            None => None,
            Some(chain) => {
                let own = chain.own_files().len();
                let base_len = chain.layers.len() - own;
                let layers = chain.resolve(&self.backend.inner.catalog.root(), &self.dir);
                if !(own == 1 && mode == SnapshotMode::Consume) {
                    let (img, dst) = (self.backend.inner.cfg.qemu_img.clone(), disk_dst.clone());
                    let result = if own == 1 {
                        let src = layers[base_len].path.clone();
                        tokio::task::spawn_blocking(move || memory::sparse_copy(&src, &dst))
                            .await
                            .expect("copy task")
                            .map(|_| ())
                            .map_err(self.err_mem())
                    } else {
                        tokio::task::spawn_blocking(move || {
                            disk::flatten_onto(&img, &layers, base_len, &dst)
                        })
                        .await
                        .expect("flatten task")
                        .map_err(|source| VmError::Disk {
                            id: self.id.to_string(),
                            source,
                        })
                    };
                    result?;
                }
                let mut layers = chain.layers[..base_len].to_vec();
                layers.push(DiskLayer {
                    location: LayerLocation::Snapshot {
                        id: id.clone(),
                        file: "disk.qcow2".into(),
                    },
                    format: DiskFormat::Qcow2,
                });
                Some(DiskChain {
                    size_bytes: chain.size_bytes,
                    layers,
                })
            }
        };
        match mode {
            SnapshotMode::KeepRunning => self.unfreeze().await?,
            SnapshotMode::Consume => {
                self.quit().await;
                if shared_own {
                    let src = self.own_memory_path();
                    moves
                        .rename(&src, &mem_dst)
                        .map_err(self.err_io("move", &src))?;
                }
                if let Some(chain) = &self.record.disk {
                    if chain.own_files().len() == 1 {
                        let src = self.dir.join(chain.own_files()[0]);
                        moves
                            .rename(&src, &disk_dst)
                            .map_err(self.err_io("move", &src))?;
                    }
                }
            }
        }
        // Everything the record will name reaches the disk before it (the
        // device state was synced as it was saved; the staging directory is
        // synced with the record, before it is published).
        let mut durable = vec![mem_dst.clone()];
        if self.record.disk.is_some() {
            durable.push(disk_dst.clone());
        }
        let t_sync = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            for path in durable {
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| (path, e))?;
            }
            Ok(())
        })
        .await
        .expect("sync task")
        .map_err(|(path, e)| self.err_io("sync", &path)(e))?;
        tracing::debug!(
            vm = %self.id,
            sync_ms = t_sync.elapsed().as_secs_f64() * 1e3,
            "snapshot files synced"
        );
        self.fault(FaultPoint::SnapshotStaged);
        let meta = |p: &Path| memory::allocated_bytes(p);
        Ok(SnapshotRecord {
            version: SnapshotRecord::VERSION,
            id: id.clone(),
            source_vm: self.id.clone(),
            created_at_unix_ms: unix_ms(),
            machine: self.record.machine.clone(),
            requirements: self.record.requirements.clone(),
            disk: snap_disk,
            memory_allocated_bytes: meta(&mem_dst),
            devstate_bytes,
            disk_bytes: if self.record.disk.is_some() {
                meta(&disk_dst)
            } else {
                0
            },
        })
    }

    fn refuse_anonymous(&self, what: &str) -> Result<(), VmError> {
        if self.record.memory.base == MemoryBase::Anonymous {
            return Err(VmError::Invalid(format!(
                "{} has anonymous RAM and cannot be {what}",
                self.id
            )));
        }
        Ok(())
    }

    /// A microVM with a network interface cannot be snapshotted: every
    /// clone of it would need the same device (a suspend keeps the NIC in
    /// its record, and its resume brings it back in the same namespace).
    fn refuse_nic(&self) -> Result<(), VmError> {
        if self.record.nic.is_some() {
            return Err(VmError::Invalid(format!(
                "{}: a microVM with a network interface cannot be snapshotted",
                self.id
            )));
        }
        Ok(())
    }

    fn own_memory_path(&self) -> PathBuf {
        match &self.record.memory.base {
            MemoryBase::Own { file } => self.dir.join(file),
            MemoryBase::Snapshot(_) | MemoryBase::Anonymous => self.dir.join("memory"),
        }
    }

    fn next_generation(&self) -> u32 {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix("gen-")?
                            .parse::<u32>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
            + 1
    }

    async fn suspend_inner(&mut self, gen_dir: &Path, generation: u32) -> Result<(), VmError> {
        let (qmp_t, _) = self.timeouts();
        std::fs::create_dir(gen_dir).map_err(self.err_io("create", gen_dir))?;
        self.freeze().await?;
        self.fault(FaultPoint::SuspendFrozen);
        let name = self.id.to_string();
        self.proc_mut()
            .save_state(&name, &gen_dir.join("devstate"), qmp_t)
            .await?;
        self.fault(FaultPoint::SuspendStateSaved);
        let has_diff = !self.record.memory.shared;
        if has_diff {
            let (_, key) = self.memory_base()?;
            let map = memory::find_ram_mapping(self.pid(), key, self.mem_len_bytes())
                .map_err(self.err_mem())?;
            let d = gen_dir.to_path_buf();
            tokio::task::spawn_blocking(move || -> Result<(), MemoryError> {
                let runs = memory::dirty_pages(&map)?;
                let diff = memory::save_pages(&map, &runs, &d.join("memory.diff"))?;
                diff.save(&d.join("memory.diff.json"))
            })
            .await
            .expect("save diff task")
            .map_err(self.err_mem())?;
        }
        self.fault(FaultPoint::SuspendMemorySaved);
        // Everything the record will name reaches the disk before it.
        let mut durable: Vec<PathBuf> = self
            .record
            .disk
            .as_ref()
            .map(|d| d.own_files().iter().map(|f| self.dir.join(f)).collect())
            .unwrap_or_default();
        if let MemoryBase::Own { file } = &self.record.memory.base {
            durable.push(self.dir.join(file));
        }
        // And the generation's directory entries (its files were synced as
        // they were written), and its own entry in the microVM directory.
        durable.push(gen_dir.to_path_buf());
        durable.push(self.dir.clone());
        for path in durable {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(self.err_io("sync", &path))?;
        }
        // Commit: from here on the microVM is suspended in `generation`.
        let mut record = self.record.clone();
        record.state = RecordedState::Suspended {
            generation,
            suspended_at_unix_ms: unix_ms(),
            has_diff,
        };
        record.memory.shared = false;
        // Prepared while the guest can still be thawed; after QEMU is gone
        // only a rename remains.
        let prepared = crate::jsonfile::prepare_json(&self.dir.join(RECORD_FILE), &record)?;
        self.quit().await;
        self.fault(FaultPoint::SuspendProcessGone);
        if let Err(e) = crate::jsonfile::publish_json(&prepared, &self.dir.join(RECORD_FILE)) {
            let _ = std::fs::remove_file(&prepared);
            return Err(e.into());
        }
        self.record = record;
        Ok(())
    }

    /// After a suspend committed: drop older generations and the run
    /// directory, and fold the top own disk layer down when there are many.
    /// The file work (removals, `qemu-img commit`) runs on a blocking
    /// thread; the record drops the top layer only once it was committed.
    async fn tidy_after_suspend(&mut self, generation: u32) {
        let dir = self.dir.clone();
        let fold = self
            .record
            .disk
            .clone()
            .filter(|chain| chain.own_files().len() > MAX_OWN_LAYERS)
            .map(|chain| {
                let layers = chain.resolve(&self.backend.inner.catalog.root(), &self.dir);
                (chain, layers, self.backend.inner.cfg.qemu_img.clone())
            });
        let folded = tokio::task::spawn_blocking(move || {
            if let Ok(d) = std::fs::read_dir(&dir) {
                for e in d.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let old = name
                        .strip_prefix("gen-")
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n != generation);
                    if old || name == RUN_DIR {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            let (mut chain, layers, img) = fold?;
            // On failure the longer chain is still right.
            disk::commit_top(&img, &layers).ok()?;
            chain.layers.pop();
            let top = layers.last().expect("a chain has layers").path.clone();
            Some((chain, top))
        })
        .await
        .ok()
        .flatten();
        let Some((folded, top)) = folded else {
            return;
        };
        let mut record = self.record.clone();
        record.disk = Some(folded);
        if save_json(&self.dir.join(RECORD_FILE), &record).is_ok() {
            self.record = record;
            let _ = std::fs::remove_file(top);
        }
    }

    /// Remove everything of this microVM (its QEMU is gone).
    pub(super) fn remove_files(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        confine::release_uid(&self.backend.inner.cfg.state_dir, self.record.uid);
        for s in dependencies(&self.record) {
            self.backend
                .inner
                .catalog
                .remove_ref(&s, &Dependent::Vm(self.id.clone()));
        }
    }

    /// Baseline for benchmarks: QEMU's own migration of everything, RAM
    /// included, to a file, as a user without Hearth's memory files would
    /// do it. The microVM ends.
    pub async fn save_full_ram(mut self, path: &Path) -> Result<super::FullRamSnapshot, VmError> {
        let r = self.save_full_ram_inner(path).await;
        self.quit().await;
        self.apply(VmEvent::Terminate)?;
        r
    }
}

/// The snapshots a microVM depends on (memory and disk).
pub(super) fn dependencies(record: &VmRecord) -> Vec<SnapshotId> {
    let mut out: Vec<SnapshotId> = record
        .disk
        .as_ref()
        .map(|d| d.snapshots().into_iter().cloned().collect())
        .unwrap_or_default();
    if let MemoryBase::Snapshot(id) = &record.memory.base {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        if self.committed && self.record.lifetime == Lifetime::Persistent {
            // It outlives this handle and this process.
            p.supervisor.release();
            return;
        }
        p.supervisor.kill();
        drop(p);
        self.remove_files();
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
        let reason = match self.proc.as_ref().map(|p| p.agent.health()) {
            Some(ChannelHealth::Failed(r)) => Some(format!("agent channel: {r}")),
            _ if !self.qemu_alive() => Some(format!(
                "QEMU is gone: {}",
                self.proc
                    .as_ref()
                    .and_then(|p| p.run.exit_record())
                    .map(|r| r.describe())
                    .unwrap_or_else(|| "no exit record".into())
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            let _ = self.apply(VmEvent::Fail { reason });
        }
        self.state.clone()
    }

    fn agent(&self) -> &AgentClient {
        &self.proc().agent
    }

    async fn snapshot(&mut self, mode: SnapshotMode) -> Result<Snapshot, VmError> {
        if self.state() != VmState::Running {
            return Err(VmError::State {
                id: self.id.to_string(),
                source: InvalidTransition {
                    state: self.state.clone(),
                    event: VmEvent::BeginSnapshot,
                },
            });
        }
        self.refuse_anonymous("snapshotted")?;
        self.refuse_nic()?;
        self.apply(VmEvent::BeginSnapshot)?;
        let catalog = self.backend.inner.catalog.clone();
        let (id, staging) = catalog.begin()?;
        let mut moves = Moves::default();
        let staged = self.snapshot_inner(&id, &staging, mode, &mut moves).await;
        let committed = match staged {
            Ok(record) => catalog.commit(&staging, record),
            Err(e) => Err(e),
        };
        match committed {
            Ok(snapshot) => {
                if mode == SnapshotMode::Consume {
                    self.proc.take();
                    self.remove_files();
                    self.apply(VmEvent::Terminate)?;
                } else {
                    self.apply(VmEvent::EndSnapshot)?;
                }
                Ok(snapshot)
            }
            Err(e) => {
                // Nothing half-written may look like a snapshot, and the
                // source keeps every file it had.
                moves.undo();
                let _ = std::fs::remove_dir_all(&staging);
                let back = self.back_after_failure().await;
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
        self.refuse_anonymous("suspended")?;
        self.apply(VmEvent::BeginSuspend)?;
        let generation = self.next_generation();
        let gen_dir = VmRecord::generation_dir(&self.dir, generation);
        match self.suspend_inner(&gen_dir, generation).await {
            Ok(()) => {
                self.apply(VmEvent::EndSuspend)?;
                self.proc.take();
                self.tidy_after_suspend(generation).await;
                // The record as written (and as the tidy-up left it).
                Ok(SuspendedVm {
                    dir: self.dir.clone(),
                    record: self.record.clone(),
                })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&gen_dir);
                let back = self.back_after_failure().await;
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
        if self.state == VmState::Terminated {
            // Consumed by a snapshot or already ended: its files and uid
            // are someone else's now. Refused, touching nothing.
            return self.apply(VmEvent::Terminate);
        }
        self.quit().await;
        self.proc.take();
        self.remove_files();
        self.apply(VmEvent::Terminate)?;
        Ok(())
    }
}

impl QemuVm {
    /// Cleanly power the guest off (the agent stops every process and
    /// syncs), wait for QEMU to exit, and remove the microVM.
    pub async fn power_off(mut self, timeout: Duration) -> Result<(), VmError> {
        let r = self.power_off_inner(timeout).await;
        self.quit().await;
        self.proc.take();
        self.remove_files();
        self.apply(VmEvent::Terminate)?;
        r
    }

    /// Power the guest off cleanly, like [`Self::power_off`], and keep what
    /// the guest wrote to its root disk: the microVM's own layers become one
    /// qcow2 file at `dest` (no backing name in its header), to be given
    /// back as a [`crate::BootSpec::root_overlays`] layer over the same
    /// lower layers. The microVM is removed either way; on failure nothing
    /// is left at `dest`. Returns the size of `dest` in bytes.
    pub async fn power_off_keeping_disk(
        mut self,
        timeout: Duration,
        dest: &Path,
    ) -> Result<u64, VmError> {
        let powered_off = self.power_off_inner(timeout).await;
        self.quit().await;
        self.proc.take();
        let kept = match powered_off {
            Ok(()) => self.keep_own_disk(dest).await,
            Err(e) => Err(e),
        };
        if kept.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        self.remove_files();
        self.apply(VmEvent::Terminate)?;
        kept
    }

    async fn power_off_inner(&mut self, timeout: Duration) -> Result<(), VmError> {
        let agent = self.proc().agent.clone();
        agent
            .power_off(timeout)
            .await
            .map_err(self.err_agent("power off"))?;
        let p = self.proc_mut();
        if !p.supervisor.wait_exit(timeout).await {
            p.supervisor.kill();
            return Err(VmError::Invalid(format!(
                "{}: the guest did not power off within {timeout:?}",
                self.id
            )));
        }
        Ok(())
    }

    /// The own disk layers (QEMU gone), flattened into `dest`.
    async fn keep_own_disk(&self, dest: &Path) -> Result<u64, VmError> {
        let Some(chain) = &self.record.disk else {
            return Err(VmError::Invalid(format!(
                "{} has no root disk to keep",
                self.id
            )));
        };
        let own = chain.own_files().len();
        let base_len = chain.layers.len() - own;
        let layers = chain.resolve(&self.backend.inner.catalog.root(), &self.dir);
        let (img, dst) = (self.backend.inner.cfg.qemu_img.clone(), dest.to_path_buf());
        if own == 1 {
            let src = layers[base_len].path.clone();
            if std::fs::rename(&src, &dst).is_err() {
                tokio::task::spawn_blocking(move || memory::sparse_copy(&src, &dst))
                    .await
                    .expect("copy task")
                    .map_err(self.err_mem())?;
            }
        } else {
            tokio::task::spawn_blocking(move || disk::flatten_onto(&img, &layers, base_len, &dst))
                .await
                .expect("flatten task")
                .map_err(|source| VmError::Disk {
                    id: self.id.to_string(),
                    source,
                })?;
        }
        std::fs::metadata(dest)
            .map(|m| m.len())
            .map_err(|e| VmError::Invalid(format!("kept disk {}: {e}", dest.display())))
    }
}
