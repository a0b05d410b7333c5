//! What callers ask the engine for, independent of the backend: specs for
//! boot and launch, the machine a microVM is, how long it lives, and how a
//! snapshot treats its source. Plain data, no I/O.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::VmId;

/// How long a microVM lives relative to the Hearth process that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifetime {
    /// It ends with the Hearth process that started it, even when that
    /// process is killed (tests, benchmarks, the demo, pre-started QEMUs).
    Process,
    /// It survives a restart of Hearth: the next Hearth process re-adopts it
    /// ([`crate::QemuBackend::adopt`]). Only `terminate` ends it.
    Persistent,
}

/// What to cold-boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub id: VmId,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// A raw ext4 image used read-only as the base of the root disk.
    pub root_disk: Option<PathBuf>,
    /// Read-only qcow2 layers above `root_disk`, bottom first, each without
    /// a backing name in its header (an image build's kept disk layer, see
    /// [`crate::QemuVm::power_off_keeping_disk`]). The microVM writes to a
    /// layer of its own on top of them.
    pub root_overlays: Vec<PathBuf>,
    /// A network interface for the guest, or none (the default: a microVM
    /// has no network unless egress is asked for).
    pub nic: Option<NicSpec>,
    /// Without `nic`: a virtio-net device with no backend anyway, so that
    /// clones of this microVM's snapshots can be given a network
    /// ([`MachineConfig::nic_slot`]). An image's app microVM boots with it
    /// and unbinds the guest's driver before its snapshot.
    pub nic_slot: bool,
    pub mem_size_mib: u32,
    pub vcpu_count: u32,
    /// Extra kernel command line words (e.g. `hearth.noroot`).
    pub extra_cmdline: Vec<String>,
    pub lifetime: Lifetime,
}

/// A guest network interface whose traffic leaves through a filtered
/// network namespace (see the `hearth-net` crate, which prepares it).
///
/// The guest gets a virtio-net device on QEMU's user-mode network (slirp)
/// and QEMU runs in `netns`. The guest configures the interface itself
/// (`hearth_net::guest_setup_commands`, `guest_resolv_conf`, through the
/// agent).
///
/// A clone launched with a NIC from a snapshot taken without one finds the
/// device on a virtio-mmio slot that was empty at boot: the guest binds it
/// (`hearth_net::guest_attach_command`) before configuring it. Such a
/// microVM can be suspended and resumed (its QEMU comes back in the same
/// namespace, the guest keeps its configuration; slirp's connections do
/// not survive), but not snapshotted: its clones would all need the NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// The network namespace QEMU runs in (`/run/netns/NAME`).
    pub netns: PathBuf,
}

/// What to call a clone, and how long it lives.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub id: VmId,
    pub lifetime: Lifetime,
    /// A network interface the snapshot did not have (see [`NicSpec`]).
    pub nic: Option<NicSpec>,
}

impl LaunchSpec {
    /// A clone that ends with this process.
    pub fn ephemeral(id: VmId) -> Self {
        Self {
            id,
            lifetime: Lifetime::Process,
            nic: None,
        }
    }
}

/// The machine a microVM is; a snapshot's clones and a suspended microVM
/// are started as exactly this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub mem_size_mib: u32,
    pub vcpu_count: u32,
    /// The kernel command line it booted with.
    pub cmdline: String,
    /// Virtual size of the root disk, when there is one.
    pub disk_size_bytes: Option<u64>,
    /// It has a virtio-net device (the guest's `eth0`). A clone or a
    /// resumed microVM gets the device whether or not it gets a network:
    /// without a [`NicSpec`] it is unplugged (no backend, nothing passes).
    #[serde(default)]
    pub nic_slot: bool,
}

impl MachineConfig {
    pub fn mem_size_bytes(&self) -> u64 {
        u64::from(self.mem_size_mib) << 20
    }
}

/// How `snapshot` treats the source microVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// The source goes on running; memory and disk are copied.
    KeepRunning,
    /// The source ends; its files become the snapshot (no copies).
    Consume,
}
