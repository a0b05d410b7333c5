//! Giving a started QEMU what it works on, over QMP with descriptors
//! attached: a disk chain for a QEMU waiting at `-incoming` (so one started
//! ahead of time can become any clone, or any resumed microVM, of its
//! snapshot), device state to load, and a file to save device state into.
//! QEMU opens nothing by path; each file is passed as a descriptor into an
//! fdset. Runs on the task driving the microVM.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cmdline::{PLACEHOLDER_NODE, ROOT_NODE};
use super::start::{ended_error, Proc};
use crate::disk::{blockdev_nodes, DiskFormat, ResolvedLayer};
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

    /// Attach `layers` (bottom first; the top written) as the root disk of
    /// a QEMU that waits at `-incoming` on its placeholder.
    pub(crate) async fn hand_disk(
        &mut self,
        name: &str,
        layers: &[ResolvedLayer],
        timeout: Duration,
    ) -> Result<(), VmError> {
        let top = layers.len().saturating_sub(1);
        let mut files: Vec<(String, DiskFormat)> = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let open = |write: bool| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(&l.path)
                    .map_err(|source| VmError::Io {
                        id: name.to_string(),
                        op: "open disk layer",
                        path: l.path.clone(),
                        source,
                    })
            };
            let set = self.add_fd(name, &open(false)?, timeout).await?;
            if i == top {
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
            files.push((format!("/dev/fdset/{set}"), l.format));
        }
        let prefix = format!("g{}", self.next_node_gen);
        self.next_node_gen += 1;
        let (nodes, top_node) = blockdev_nodes(&prefix, &files);
        for node in nodes {
            self.qmp
                .execute("blockdev-add", node, timeout)
                .await
                .map_err(Self::qmp_err(name, "blockdev-add"))?;
        }
        self.qmp
            .execute(
                "blockdev-reopen",
                json!({ "options": [{ "driver": "raw", "node-name": ROOT_NODE, "file": top_node }] }),
                timeout,
            )
            .await
            .map_err(Self::qmp_err(name, "blockdev-reopen"))?;
        self.qmp
            .execute(
                "blockdev-del",
                json!({ "node-name": PLACEHOLDER_NODE }),
                timeout,
            )
            .await
            .map_err(Self::qmp_err(name, "blockdev-del"))?;
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
