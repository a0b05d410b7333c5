//! QEMUs started ahead of time, per snapshot, so that a launch or a resume
//! pays no process start-up: each waits at `-incoming defer` with the
//! snapshot's sealed memory image mapped (no page touched yet), a
//! placeholder disk, an empty qcow2 layer already created beside it, its
//! agent channel connected, confined, using no CPU. Claiming one hands it a
//! disk chain and device state ([`super::handover`]), so the same waiting
//! QEMU can become a new clone or a resumed one.
//!
//! Entries live in `<state>/vms/pool-<n>/` with an `owner` file; they end
//! with this process (killed, files removed) and are never adopted.

use std::path::PathBuf;

use super::start::{Disk, Proc, Ram, StartSpec};
use super::QemuBackend;
use crate::agent::ChannelStart;
use crate::catalog::Snapshot;
use crate::confine;
use crate::disk;
use crate::disk::DiskChain;
use crate::error::VmError;
use crate::owner::OWNER_FILE;
use crate::spec::NicSpec;
use crate::SnapshotId;
use crate::VmId;

/// The empty layer a waiting QEMU has ready for its microVM's writes.
pub(super) const SPARE_LAYER: &str = "disk-spare.qcow2";

/// A QEMU started ahead of time, waiting for state. Killed, with its
/// files, when dropped unclaimed.
pub struct Prestarted {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) uid: u32,
    pub(super) proc: Option<Proc>,
    state_dir: PathBuf,
}

impl Prestarted {
    pub(super) fn new(name: String, dir: PathBuf, uid: u32, state_dir: PathBuf) -> Self {
        Self {
            name,
            dir,
            uid,
            proc: None,
            state_dir,
        }
    }

    /// Take the process, its directory and its uid; they are the caller's
    /// from now on.
    pub(super) fn take(mut self) -> (Proc, PathBuf, u32) {
        let proc = self.proc.take().expect("an unclaimed entry has a process");
        (proc, std::mem::take(&mut self.dir), self.uid)
    }
}

impl Drop for Prestarted {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.supervisor.kill();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
            confine::release_uid(&self.state_dir, self.uid);
        }
    }
}

/// `<state>/vms/<dir>` with an owner file, created exclusively.
pub(super) fn create_vm_dir(backend: &QemuBackend, name: &str) -> Result<PathBuf, VmError> {
    let dir = backend.vm_dir(name);
    let parent = dir.parent().expect("vms dir has a parent");
    std::fs::create_dir_all(parent).map_err(|source| VmError::Io {
        id: name.to_string(),
        op: "create",
        path: parent.to_path_buf(),
        source,
    })?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(VmError::Exists(name.to_string()))
        }
        Err(source) => {
            return Err(VmError::Io {
                id: name.to_string(),
                op: "create",
                path: dir,
                source,
            })
        }
    }
    if let Err(source) = crate::owner::write_owner(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(VmError::Io {
            id: name.to_string(),
            op: "write",
            path: dir.join(OWNER_FILE),
            source,
        });
    }
    Ok(dir)
}

impl QemuBackend {
    /// Keep `depth` QEMUs started and waiting for `snapshot`'s state.
    pub async fn prestart(&self, snapshot: &Snapshot, depth: usize) -> Result<(), VmError> {
        while self.pooled(snapshot) < depth {
            let p = self.prestart_one(snapshot, None).await?;
            self.inner
                .pool
                .lock()
                .unwrap()
                .entry(snapshot.id.clone())
                .or_default()
                .push(p);
        }
        Ok(())
    }

    /// How many QEMUs wait for `snapshot`.
    pub fn pooled(&self, snapshot: &Snapshot) -> usize {
        self.inner
            .pool
            .lock()
            .unwrap()
            .get(&snapshot.id)
            .map_or(0, Vec::len)
    }

    /// Stop the waiting QEMUs of `snapshot`.
    pub fn drain_pool(&self, snapshot: &Snapshot) {
        let drained = self.inner.pool.lock().unwrap().remove(&snapshot.id);
        drop(drained);
    }

    /// Stop every waiting QEMU, of every snapshot (a server shutting
    /// down: they belong to no microVM).
    pub fn drain_all_pools(&self) {
        let drained = std::mem::take(&mut *self.inner.pool.lock().unwrap());
        drop(drained);
    }

    /// Start one QEMU waiting for `snapshot`.
    /// Start one QEMU waiting for `snapshot`, with `nic` when given (such
    /// a QEMU is never pooled).
    pub(crate) async fn prestart_one(
        &self,
        snapshot: &Snapshot,
        nic: Option<&NicSpec>,
    ) -> Result<Prestarted, VmError> {
        let mut entry = self.new_pool_entry()?;
        let (name, dir, uid) = (entry.name.clone(), entry.dir.clone(), entry.uid);
        let machine = &snapshot.record.machine;
        let disk = match machine.disk_size_bytes {
            Some(size) => {
                self.create_layer(&name, dir.join(SPARE_LAYER), size)
                    .await?;
                Disk::Placeholder { size_bytes: size }
            }
            None => Disk::None,
        };
        let image = self.image(snapshot).await?;
        let proc = self
            .start_with_nic(
                StartSpec {
                    name: &name,
                    vm_dir: &dir,
                    machine,
                    ram: Ram::Image(image),
                    boot: None,
                    disk,
                    incoming: true,
                    uid,
                    channel: ChannelStart::Restored {
                        version: snapshot.record.requirements.agent_protocol,
                    },
                },
                nic,
            )
            .await?;
        self.park(&mut entry, proc, snapshot.record.disk.as_ref())
            .await?;
        Ok(entry)
    }

    /// Take a live waiting QEMU for `snapshot`, if there is one.
    pub(crate) fn take_pooled(&self, snapshot: &SnapshotId) -> Option<Prestarted> {
        let mut pool = self.inner.pool.lock().unwrap();
        let list = pool.get_mut(snapshot)?;
        while let Some(mut p) = list.pop() {
            let alive = p
                .proc
                .as_mut()
                .is_some_and(|proc| !proc.supervisor.exited());
            if alive {
                return Some(p);
            }
        }
        None
    }
}

impl QemuBackend {
    /// A fresh `pool-*` directory with a claimed uid, as an entry that
    /// removes both when dropped.
    pub(super) fn new_pool_entry(&self) -> Result<Prestarted, VmError> {
        let name = VmId::random("pool").to_string();
        let dir = create_vm_dir(self, &name)?;
        let state_dir = self.inner.cfg.state_dir.clone();
        let uid = match confine::claim_uid(&state_dir, &name) {
            Ok(u) => u,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(VmError::Io {
                    id: name,
                    op: "claim a uid in",
                    path: state_dir,
                    source,
                });
            }
        };
        // From here the entry cleans up after itself.
        Ok(Prestarted::new(name, dir, uid, state_dir))
    }

    /// Create an empty qcow2 layer of `size_bytes` at `layer`, on a blocking
    /// thread (qemu-img runs for a few milliseconds).
    pub(super) async fn create_layer(
        &self,
        id: &str,
        layer: PathBuf,
        size_bytes: u64,
    ) -> Result<(), VmError> {
        let img = self.inner.cfg.qemu_img.clone();
        tokio::task::spawn_blocking(move || disk::create_layer(&img, &layer, size_bytes))
            .await
            .expect("create_layer task")
            .map_err(|source| VmError::Disk {
                id: id.to_string(),
                source,
            })
    }

    /// Park a waiting QEMU in `entry` with the snapshot's disk layers
    /// (`chain`, if it has a disk) and the spare layer attached ahead, so a
    /// handover only reopens. The entry owns the QEMU even when attaching
    /// fails, so dropping it ends the QEMU and its files.
    pub(super) async fn park(
        &self,
        entry: &mut Prestarted,
        mut proc: Proc,
        chain: Option<&DiskChain>,
    ) -> Result<(), VmError> {
        let r = match chain {
            Some(chain) => {
                let resolved = chain.resolve(&self.inner.catalog.root(), &entry.dir);
                proc.prepare_disk(
                    &entry.name,
                    chain,
                    &resolved,
                    &entry.dir.join(SPARE_LAYER),
                    self.inner.cfg.qmp_timeout,
                )
                .await
            }
            None => Ok(()),
        };
        entry.proc = Some(proc);
        r
    }
}
