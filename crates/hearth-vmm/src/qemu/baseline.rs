//! What `hearth bench engine` compares Hearth against, run through the same
//! supervisor, confinement and handover code as everything else, so the
//! comparison is of the method alone: a plain QEMU cold boot with anonymous
//! RAM ([`QemuBackend::boot_with`]), and QEMU's own snapshot of everything
//! (RAM in the migration stream) restored into a QEMU that was started
//! ahead of time, exactly as a pre-started Hearth clone is.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::pool::{Prestarted, SPARE_LAYER};
use super::restore::Undo;
use super::start::{Disk, Ram, StartSpec};
use super::vm::QemuVm;
use super::QemuBackend;
use crate::agent::ChannelStart;
use crate::disk::{DiskChain, DiskFormat, DiskLayer, LayerLocation};
use crate::error::VmError;
use crate::record::{MemoryBase, MemoryRecord, RecordedState, VmRecord};
use crate::spec::{Lifetime, MachineConfig};
use crate::VmId;

/// A whole-RAM QEMU migration stream and the disk it goes with.
#[derive(Debug, Clone)]
pub struct FullRamSnapshot {
    pub stream: PathBuf,
    pub disk: Option<DiskChain>,
    pub machine: MachineConfig,
    pub stream_bytes: u64,
    pub agent_protocol: u8,
}

impl QemuVm {
    pub(super) async fn save_full_ram_inner(
        &mut self,
        path: &Path,
    ) -> Result<FullRamSnapshot, VmError> {
        let t = self.backend.inner.cfg.qmp_timeout;
        let agent_t = self.backend.inner.cfg.agent_timeout;
        let id = self.id.to_string();
        let qmp_err = |during: &'static str| {
            let id = id.clone();
            move |source| VmError::Qmp { id, during, source }
        };
        let proc = self.proc.as_mut().expect("running");
        proc.agent
            .quiesce(false, agent_t)
            .await
            .map_err(|source| VmError::Agent {
                id: id.clone(),
                during: "quiesce",
                console: String::new(),
                source,
            })?;
        proc.qmp
            .execute("stop", json!({}), t)
            .await
            .map_err(qmp_err("stop"))?;
        let out = File::create(path).map_err(|source| VmError::Io {
            id: id.clone(),
            op: "create",
            path: path.to_path_buf(),
            source,
        })?;
        proc.qmp
            .execute_with_fd("getfd", json!({ "fdname": "outgoing" }), out.as_fd(), t)
            .await
            .map_err(qmp_err("getfd"))?;
        proc.qmp
            .execute("migrate", json!({ "uri": "fd:outgoing" }), t)
            .await
            .map_err(qmp_err("migrate"))?;
        let deadline = Instant::now() + t;
        loop {
            let v = proc
                .qmp
                .execute("query-migrate", json!({}), t)
                .await
                .map_err(qmp_err("query-migrate"))?;
            match v.get("status").and_then(|s| s.as_str()) {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(VmError::Incoming {
                        id,
                        status: v.to_string(),
                    })
                }
                _ if Instant::now() > deadline => {
                    return Err(VmError::Incoming {
                        id,
                        status: "migration timed out".into(),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        let disk = match &self.record.disk {
            Some(chain) => {
                // The disk goes with the stream: its own layer moves out.
                let own = chain.own_files();
                let src = self.dir.join(own[own.len() - 1]);
                let dst = path.with_extension("disk.qcow2");
                std::fs::rename(&src, &dst).map_err(|source| VmError::Io {
                    id: id.clone(),
                    op: "move",
                    path: src,
                    source,
                })?;
                let mut layers = chain.layers[..chain.layers.len() - 1].to_vec();
                layers.push(DiskLayer {
                    location: LayerLocation::External { path: dst },
                    format: DiskFormat::Qcow2,
                });
                Some(DiskChain {
                    size_bytes: chain.size_bytes,
                    layers,
                })
            }
            None => None,
        };
        let stream_bytes = out.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FullRamSnapshot {
            stream: path.to_path_buf(),
            disk,
            machine: self.record.machine.clone(),
            stream_bytes,
            agent_protocol: self.record.requirements.agent_protocol,
        })
    }
}

impl QemuBackend {
    /// A QEMU with anonymous RAM waiting for a full-RAM stream: the
    /// baseline's equivalent of a pre-started clone.
    pub async fn prestart_full_ram(&self, snap: &FullRamSnapshot) -> Result<Prestarted, VmError> {
        let mut entry = self.new_pool_entry()?;
        let (name, dir, uid) = (entry.name.clone(), entry.dir.clone(), entry.uid);
        let disk = match &snap.disk {
            Some(c) => {
                self.create_layer(&name, dir.join(SPARE_LAYER), c.size_bytes)
                    .await?;
                Disk::Placeholder {
                    size_bytes: c.size_bytes,
                }
            }
            None => Disk::None,
        };
        let proc = self
            .start(StartSpec {
                name: &name,
                vm_dir: &dir,
                machine: &snap.machine,
                ram: Ram::Anonymous,
                boot: None,
                disk,
                incoming: true,
                uid,
                channel: ChannelStart::Restored {
                    version: snap.agent_protocol,
                },
            })
            .await?;
        // The same head start as a pre-started clone: disk attached ahead.
        self.park(&mut entry, proc, snap.disk.as_ref()).await?;
        Ok(entry)
    }

    /// Restore a full-RAM stream into a waiting QEMU (RAM comes through the
    /// migration stream), to agent-ready.
    pub async fn restore_full_ram(
        &self,
        waiting: Prestarted,
        snap: &FullRamSnapshot,
        id: VmId,
    ) -> Result<QemuVm, VmError> {
        let name = id.to_string();
        let (proc, pool_dir, uid) = waiting.take();
        let state_dir = self.inner.cfg.state_dir.clone();
        // Whatever fails from here ends the QEMU and removes its files.
        let mut undo = Undo::new();
        undo.proc = Some(proc);
        undo.uid = Some((state_dir.clone(), uid));
        undo.paths.push(pool_dir.clone());
        let proc = undo.proc.as_mut().expect("just set");
        let (dir, chain) = self.become_vm(
            proc,
            &pool_dir,
            uid,
            &name,
            snap.disk.as_ref(),
            &mut undo.paths,
        )?;
        let record = VmRecord {
            version: VmRecord::VERSION,
            id: id.clone(),
            machine: snap.machine.clone(),
            lifetime: Lifetime::Process,
            uid,
            requirements: self.inner.host.requirements.clone(),
            memory: MemoryRecord {
                base: MemoryBase::Anonymous,
                shared: false,
            },
            disk: chain.clone(),
            nic: None,
            state: RecordedState::Suspended {
                generation: 0,
                suspended_at_unix_ms: 0,
                has_diff: false,
            },
        };
        let mut proc = undo.proc.take().expect("set above");
        if let Err(e) = self
            .complete_restore(&id, &dir, &mut proc, chain.as_ref(), None, &snap.stream)
            .await
        {
            undo.proc = Some(proc);
            return Err(e);
        }
        undo.disarm();
        let mut vm = QemuVm::new(self.clone(), id, dir, record, proc);
        vm.commit().await?;
        Ok(vm)
    }
}
