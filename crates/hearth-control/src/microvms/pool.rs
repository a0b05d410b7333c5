//! Warmed clones kept per snapshot, ready to be handed out by RunMicrovm:
//! restored, running, and past one request to the app from inside the
//! guest (so the app's request path is translated or faulted in already).
//! The pool only stores them; [`super::MicrovmControl`] fills it on tasks
//! of its own and takes from it on request tasks. A Mutex guards it; no
//! await happens under it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hearth_vmm::QemuVm;

#[derive(Default)]
pub(crate) struct WarmPool {
    clones: Mutex<HashMap<String, Vec<QemuVm>>>,
    refilling: Mutex<HashSet<String>>,
    /// Whose snapshots they are: snapshot id -> (image id, version).
    owners: Mutex<HashMap<String, (String, String)>>,
    /// Set when the server stops: nothing is put in or refilled any more.
    closed: AtomicBool,
}

impl WarmPool {
    pub fn take(&self, snapshot_id: &str) -> Option<QemuVm> {
        self.clones.lock().unwrap().get_mut(snapshot_id)?.pop()
    }

    /// Keep a warmed clone; once the pool is closed it is given back
    /// (`Some`), for the caller to end.
    #[must_use]
    pub fn put(&self, snapshot_id: &str, vm: QemuVm) -> Option<QemuVm> {
        let mut clones = self.clones.lock().unwrap();
        if self.is_closed() {
            return Some(vm);
        }
        clones.entry(snapshot_id.to_string()).or_default().push(vm);
        None
    }

    /// Take nothing more: the server is stopping.
    pub fn close(&self) {
        // Under the clones lock, so that no put lands after the last drain.
        let _clones = self.clones.lock().unwrap();
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
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

    /// Every snapshot the pool holds clones of or knows the owner of.
    pub fn snapshots(&self) -> Vec<String> {
        let mut all: HashSet<String> = self.owners.lock().unwrap().keys().cloned().collect();
        all.extend(self.clones.lock().unwrap().keys().cloned());
        all.into_iter().collect()
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
        !self.is_closed()
            && self
                .refilling
                .lock()
                .unwrap()
                .insert(snapshot_id.to_string())
    }

    /// Whether a refill is still under way (it ends its clone itself once
    /// the pool is closed).
    pub fn refilling(&self) -> bool {
        !self.refilling.lock().unwrap().is_empty()
    }

    pub fn end_refill(&self, snapshot_id: &str) {
        self.refilling.lock().unwrap().remove(snapshot_id);
    }
}
