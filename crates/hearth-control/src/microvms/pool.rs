//! Warmed clones kept per snapshot, ready to be handed out by RunMicrovm:
//! restored, running, and past one request to the app from inside the
//! guest (so the app's request path is translated or faulted in already).
//! The pool only stores them; [`super::MicrovmControl`] fills it on tasks
//! of its own and takes from it on request tasks. A Mutex guards it; no
//! await happens under it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use hearth_vmm::QemuVm;

#[derive(Default)]
pub(crate) struct WarmPool {
    clones: Mutex<HashMap<String, Vec<QemuVm>>>,
    refilling: Mutex<HashSet<String>>,
    /// Whose snapshots they are: snapshot id -> (image id, version).
    owners: Mutex<HashMap<String, (String, String)>>,
}

impl WarmPool {
    pub fn take(&self, snapshot_id: &str) -> Option<QemuVm> {
        self.clones.lock().unwrap().get_mut(snapshot_id)?.pop()
    }

    pub fn put(&self, snapshot_id: &str, vm: QemuVm) {
        self.clones
            .lock()
            .unwrap()
            .entry(snapshot_id.to_string())
            .or_default()
            .push(vm);
    }

    pub fn len(&self, snapshot_id: &str) -> usize {
        self.clones
            .lock()
            .unwrap()
            .get(snapshot_id)
            .map_or(0, Vec::len)
    }

    /// Remember which image version a snapshot belongs to.
    pub fn set_owner(&self, snapshot_id: &str, image_id: &str, version: &str) {
        self.owners.lock().unwrap().insert(
            snapshot_id.to_string(),
            (image_id.to_string(), version.to_string()),
        );
    }

    /// The snapshots of an image (of one of its versions when given).
    pub fn snapshots_of(&self, image_id: &str, version: Option<&str>) -> Vec<String> {
        self.owners
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (i, v))| i == image_id && version.is_none_or(|want| want == v))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Every clone of a snapshot, taken out of the pool.
    pub fn drain(&self, snapshot_id: &str) -> Vec<QemuVm> {
        self.owners.lock().unwrap().remove(snapshot_id);
        self.clones
            .lock()
            .unwrap()
            .remove(snapshot_id)
            .unwrap_or_default()
    }

    /// Claim the refill of a snapshot's pool; false when one runs.
    pub fn begin_refill(&self, snapshot_id: &str) -> bool {
        self.refilling
            .lock()
            .unwrap()
            .insert(snapshot_id.to_string())
    }

    pub fn end_refill(&self, snapshot_id: &str) {
        self.refilling.lock().unwrap().remove(snapshot_id);
    }
}
