//! Hearth's VM engine.
//!
//! Runs Linux microVMs and brings them back from snapshots: boot from kernel +
//! initramfs + root disk, snapshot a running microVM into the catalog, launch
//! any number of copy-on-write clones of a snapshot, suspend a microVM to its
//! own files and resume it later, and re-adopt running microVMs after the
//! Hearth process restarts. No HTTP and no AWS types live here; the control
//! plane stands on this crate.
//!
//! * [`VmBackend`] / [`MicroVm`]: the engine's contract, in backend-neutral
//!   types ([`spec`], [`catalog`], [`record`]), so a Firecracker backend can
//!   sit beside the QEMU one on KVM hosts without touching callers.
//! * [`qemu`]: the QEMU `microvm` backend, driven over [`qmp`], each QEMU
//!   under its own supervisor ([`supervise`]) and confined ([`confine`]).
//! * [`agent`]: the host side of the guest agent channel, every protocol
//!   version a stored snapshot may contain.
//! * [`catalog`]: snapshots by id, with what a restore needs and who depends
//!   on them. [`record`]: each microVM's persisted state.
//! * [`memory`]: memory files, sealed images and per-microVM memory diffs;
//!   [`disk`]: disk chains.
//! * [`state`]: the lifecycle state machine. [`fault`]: fault injection.
//!
//! Everything async runs on the caller's Tokio runtime; blocking file work is
//! moved to `spawn_blocking`.

pub mod accel;
pub mod agent;
pub mod catalog;
pub mod confine;
pub mod disk;
pub mod error;
pub mod fault;
pub mod ids;
pub mod jsonfile;
pub mod memory;
pub mod owner;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod record;
pub mod sockets;
pub mod spec;
pub mod state;
pub mod supervise;

pub use accel::{Accel, AccelChoice, AccelDecision};
pub use agent::{AgentClient, AgentClientError, ChannelHealth};
pub use catalog::{Catalog, RestoreRequirements, Snapshot, SnapshotRecord};
pub use error::VmError;
pub use ids::{InvalidSnapshotId, InvalidVmId, SnapshotId, VmId};
pub use qemu::{Adopted, FullRamSnapshot, GcReport, QemuBackend, QemuConfig, QemuVm};
pub use record::{SuspendedVm, VmRecord};
pub use spec::{BootSpec, LaunchSpec, Lifetime, MachineConfig, NicSpec, SnapshotMode};
pub use state::{VmEvent, VmState};

/// The engine contract. Implementations own processes and files; every
/// method either succeeds or leaves nothing behind (a failed resume leaves
/// the suspended microVM as it was).
#[async_trait::async_trait]
pub trait VmBackend: Send + Sync {
    type Vm: MicroVm;

    /// Cold-boot a microVM.
    async fn boot(&self, spec: BootSpec) -> Result<Self::Vm, VmError>;
    /// Start a copy-on-write clone of a snapshot.
    async fn launch(&self, snapshot: &Snapshot, spec: LaunchSpec) -> Result<Self::Vm, VmError>;
    /// Bring a suspended microVM back.
    async fn resume(&self, suspended: SuspendedVm) -> Result<Self::Vm, VmError>;
}

/// A running microVM.
#[async_trait::async_trait]
pub trait MicroVm: Send {
    fn id(&self) -> &VmId;
    /// Lifecycle state; `Failed` once the guest broke the agent protocol or QEMU died.
    fn state(&mut self) -> VmState;
    fn agent(&self) -> &AgentClient;
    /// Snapshot the running microVM into the catalog.
    async fn snapshot(&mut self, mode: SnapshotMode) -> Result<Snapshot, VmError>;
    /// Save memory, device state and disk to the microVM's own files and end
    /// its process. On success `self` is an empty shell (state `Suspended`)
    /// whose files now belong to the returned [`SuspendedVm`]. On failure the
    /// guest is thawed and goes on `Running` when that is possible (else it is
    /// `Failed`): a failed suspend never loses a running microVM.
    async fn suspend(&mut self) -> Result<SuspendedVm, VmError>;
    /// End the process and delete the microVM's files.
    async fn terminate(self) -> Result<(), VmError>;
}
