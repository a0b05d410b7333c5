//! Fault injection for tests: named steps of snapshot, suspend and resume
//! at which a hook installed with [`crate::QemuBackend::set_fault_hook`]
//! runs. The hook does the damage itself (kill QEMU, fill the disk, stop
//! the supervisor so the agent stops answering), so the engine meets real
//! failures on its real paths. Called synchronously on the task that runs
//! the operation; without a hook the steps cost nothing.

use std::path::PathBuf;
use std::sync::Arc;

use crate::VmId;

/// A step of an engine operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The guest is quiesced and stopped.
    SnapshotFrozen,
    /// Device state is written.
    SnapshotStateSaved,
    /// Memory is written (copied, or recorded to be moved).
    SnapshotMemorySaved,
    /// Everything is in the snapshot's staging directory, not yet committed.
    SnapshotStaged,
    /// The guest is quiesced and stopped.
    SuspendFrozen,
    /// Device state is written.
    SuspendStateSaved,
    /// The guest's written pages are saved.
    SuspendMemorySaved,
    /// QEMU is gone; the record is not yet written.
    SuspendProcessGone,
    /// A QEMU is started and waiting for the state.
    ResumeStarted,
    /// The disk chain is handed to QEMU.
    ResumeDiskReady,
    /// The guest's pages are written back.
    ResumeMemoryWritten,
    /// Device state is loaded: the guest runs.
    ResumeStateLoaded,
    /// The agent answered `Restore`; the record is not yet written.
    ResumeAgentRestored,
}

/// What the hook gets to act on.
#[derive(Debug, Clone)]
pub struct FaultContext {
    pub vm: VmId,
    /// The QEMU process (host PID namespace), when there is one.
    pub qemu_pid: Option<u32>,
    /// Its supervisor.
    pub supervisor_pid: Option<u32>,
    /// The microVM's directory.
    pub dir: PathBuf,
}

/// A test's fault hook.
pub type FaultHook = Arc<dyn Fn(FaultPoint, &FaultContext) + Send + Sync>;
