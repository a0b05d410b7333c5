//! Giving a started QEMU what it works on, over QMP with descriptors
//! attached: a disk chain for a QEMU waiting at `-incoming` (so one started
//! ahead of time can become any clone, or any resumed microVM, of its
//! snapshot), device state to load, and a file to save device state into.
//! QEMU opens nothing by path; each file is passed as a descriptor into an
//! fdset. Runs on the task driving the microVM.
//!
//! A waiting QEMU has its snapshot's layers and an empty spare layer on
//! top of them attached ahead of time ([`Proc::prepare_disk`]); the device
//! still sees the placeholder. Claiming it for a clone then takes a single
//! `blockdev-reopen` of the device's root node onto the spare layer; for a
//! resumed microVM its own layers are attached first and the spare layer is
//! reopened onto them.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cmdline::ROOT_NODE;
use super::start::{ended_error, PreparedDisk, Proc};
use crate::disk::{blockdev_nodes, DiskChain, DiskFormat, ResolvedLayer};
use crate::error::VmError;

impl Proc {
    fn qmp_err(name: &str, during: &'static str) -> impl FnOnce(crate::qmp::QmpError) -> VmError {
        let id = name.to_string();
        move |source| VmError::Qmp { id, during, source }
    }

    /// Pass `file` into a new fdset; returns its id.
    async fn add_fd(&mut self, name: &str, file: &File, timeout: Duration) -> Result<u64, VmError> {
        let set = self.next_fdset;
        self.next_fdset += 1;
        self.qmp
            .execute_with_fd("add-fd", json!({ "fdset-id": set }), file.as_fd(), timeout)
            .await
            .map_err(Self::qmp_err(name, "add-fd"))?;
        Ok(set)
    }

    /// Open `path` and pass it into a new fdset (with a second, writable
    /// descriptor when `writable`); returns the fdset's path.
    async fn pass_file(
        &mut self,
        name: &str,
        path: &Path,
        writable: bool,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map_err(|source| VmError::Io {
                    id: name.to_string(),
                    op: "open disk layer",
                    path: path.to_path_buf(),
                    source,
                })
        };
        let set = self.add_fd(name, &open(false)?, timeout).await?;
        if writable {
            // The same set holds a read-write descriptor for the top.
            self.qmp
                .execute_with_fd(
                    "add-fd",
                    json!({ "fdset-id": set }),
                    open(true)?.as_fd(),
                    timeout,
                )
                .await
                .map_err(Self::qmp_err(name, "add-fd"))?;
        }
        Ok(format!("/dev/fdset/{set}"))
    }

    /// Add the nodes of `layers` (bottom first), the first on top of
    /// `below`; the last is writable when `writable_top`. Returns the
    /// format node names.
    async fn add_layers(
        &mut self,
        name: &str,
        layers: &[ResolvedLayer],
        below: Option<String>,
        writable_top: bool,
        timeout: Duration,
    ) -> Result<Vec<String>, VmError> {
        let mut files: Vec<(String, DiskFormat)> = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let writable = writable_top && i + 1 == layers.len();
            files.push((
                self.pass_file(name, &l.path, writable, timeout).await?,
                l.format,
            ));
        }
        let prefix = format!("g{}", self.next_node_gen);
        self.next_node_gen += 1;
        let (mut nodes, _) = blockdev_nodes(&prefix, &files);
        if !writable_top {
            for n in &mut nodes {
                n["read-only"] = true.into();
            }
        }
        if let (Some(below), Some(first)) = (below, nodes.get_mut(1)) {
            if first["driver"] == "qcow2" {
                first["backing"] = below.into();
            }
        }
        let mut names = Vec::new();
        for node in nodes {
            if node["driver"] != "file" {
                names.push(node["node-name"].as_str().unwrap_or_default().to_string());
            }
            self.qmp
                .execute("blockdev-add", node, timeout)
                .await
                .map_err(Self::qmp_err(name, "blockdev-add"))?;
        }
        Ok(names)
    }

    /// Attach a snapshot's layers and an empty spare layer over them, ahead
    /// of any claim (the device stays on its placeholder).
    pub(crate) async fn prepare_disk(
        &mut self,
        name: &str,
        snapshot_chain: &DiskChain,
        resolved: &[ResolvedLayer],
        spare: &Path,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let lower_nodes = self
            .add_layers(name, resolved, None, false, timeout)
            .await?;
        let file = self.pass_file(name, spare, true, timeout).await?;
        let prefix = format!("g{}", self.next_node_gen);
        self.next_node_gen += 1;
        let spare_file_node = format!("{prefix}sf");
        let spare_node = format!("{prefix}s");
        self.qmp
            .execute(
                "blockdev-add",
                json!({ "driver": "file", "node-name": spare_file_node, "filename": file }),
                timeout,
            )
            .await
            .map_err(Self::qmp_err(name, "blockdev-add"))?;
        self.qmp
            .execute(
                "blockdev-add",
                json!({
                    "driver": "qcow2", "node-name": spare_node, "file": spare_file_node,
                    "backing": lower_nodes.last(),
                }),
                timeout,
            )
            .await
            .map_err(Self::qmp_err(name, "blockdev-add"))?;
        self.prepared = Some(PreparedDisk {
            lower: snapshot_chain
                .layers
                .iter()
                .map(|l| l.location.clone())
                .zip(lower_nodes)
                .collect(),
            spare_file_node,
            spare_node,
        });
        Ok(())
    }

    /// Make `chain` (bottom first; the top written) the root disk of a QEMU
    /// that waits at `-incoming`. With a prepared disk, the chain's top must
    /// be the spare layer (renamed into the microVM's directory).
    pub(crate) async fn hand_disk(
        &mut self,
        name: &str,
        chain: &DiskChain,
        layers: &[ResolvedLayer],
        timeout: Duration,
    ) -> Result<(), VmError> {
        let top = layers.len().saturating_sub(1);
        let top_node = match self.prepared.take() {
            Some(p) => {
                // The layers the waiting QEMU already has, then the rest
                // below the top, then the spare reopened onto them.
                let shared = p
                    .lower
                    .iter()
                    .zip(&chain.layers[..top])
                    .take_while(|((loc, _), l)| *loc == l.location)
                    .count();
                let below = shared.checked_sub(1).map(|i| p.lower[i].1.clone());
                let added = self
                    .add_layers(name, &layers[shared..top], below.clone(), false, timeout)
                    .await?;
                let backing = added.last().cloned().or(below);
                if backing.as_ref() != p.lower.last().map(|(_, n)| n) {
                    self.qmp
                        .execute(
                            "blockdev-reopen",
                            json!({ "options": [{
                                "driver": "qcow2", "node-name": p.spare_node,
                                "file": p.spare_file_node, "backing": backing,
                            }] }),
                            timeout,
                        )
                        .await
                        .map_err(Self::qmp_err(name, "blockdev-reopen"))?;
                }
                p.spare_node
            }
            None => self
                .add_layers(name, layers, None, true, timeout)
                .await?
                .pop()
                .unwrap_or_default(),
        };
        self.qmp
            .execute(
                "blockdev-reopen",
                json!({ "options": [{ "driver": "raw", "node-name": ROOT_NODE, "file": top_node }] }),
                timeout,
            )
            .await
            .map_err(Self::qmp_err(name, "blockdev-reopen"))?;
        Ok(())
    }

    /// Load the device state in `devstate` into a QEMU waiting at
    /// `-incoming` and wait until the guest runs.
    pub(crate) async fn load_state(
        &mut self,
        name: &str,
        devstate: &Path,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let f = File::open(devstate).map_err(|source| VmError::Io {
            id: name.to_string(),
            op: "open device state",
            path: devstate.to_path_buf(),
            source,
        })?;
        self.qmp
            .execute_with_fd("getfd", json!({ "fdname": "incoming" }), f.as_fd(), timeout)
            .await
            .map_err(Self::qmp_err(name, "getfd"))?;
        self.qmp
            .execute("migrate-incoming", json!({ "uri": "fd:incoming" }), timeout)
            .await
            .map_err(Self::qmp_err(name, "migrate-incoming"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = match self.qmp.status(timeout).await {
                Ok(s) => s,
                Err(source) => {
                    return Err(
                        ended_error(&mut self.supervisor, &self.run, name, "state load")
                            .await
                            .unwrap_or(VmError::Qmp {
                                id: name.to_string(),
                                during: "query-status",
                                source,
                            }),
                    )
                }
            };
            match status.as_str() {
                "inmigrate" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_micros(500)).await
                }
                "running" => return Ok(()),
                // A stream saved from a stopped guest carries that run
                // state; start it here.
                "paused" => {
                    self.qmp
                        .execute("cont", json!({}), timeout)
                        .await
                        .map_err(Self::qmp_err(name, "cont"))?;
                    return Ok(());
                }
                other => {
                    return Err(VmError::Incoming {
                        id: name.to_string(),
                        status: other.into(),
                    })
                }
            }
        }
    }

    /// Save the device state of the stopped guest into `path` (created).
    /// Returns its size.
    pub(crate) async fn save_state(
        &mut self,
        name: &str,
        path: &Path,
        timeout: Duration,
    ) -> Result<u64, VmError> {
        let io = |op: &'static str| {
            let (id, path) = (name.to_string(), path.to_path_buf());
            move |source| VmError::Io {
                id,
                op,
                path,
                source,
            }
        };
        let f = File::create(path).map_err(io("create"))?;
        let set = self.add_fd(name, &f, timeout).await?;
        self.qmp
            .execute(
                "xen-save-devices-state",
                json!({ "filename": format!("/dev/fdset/{set}"), "live": false }),
                timeout,
            )
            .await
            .map_err(Self::qmp_err(name, "save device state"))?;
        let _ = self
            .qmp
            .execute("remove-fd", json!({ "fdset-id": set }), timeout)
            .await;
        f.sync_all().map_err(io("sync"))?;
        f.metadata().map(|m| m.len()).map_err(io("stat"))
    }
}
