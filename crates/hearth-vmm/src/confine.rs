//! How a microVM's QEMU is confined: its own uid, the jail it sees, and
//! its cgroup limits, derived from the machine it runs.
//!
//! Uids are claimed as files `<state>/uids/<uid>` created with `O_EXCL`,
//! so two Hearth processes sharing a state directory never hand out the
//! same one; `gc` releases claims whose microVM directory is gone. Runs on
//! the backend's tasks (a few small file operations).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hearth_supervisor::{CgroupSpec, JailSpec};

use crate::accel::Accel;
use crate::spec::MachineConfig;

/// First uid handed to a microVM's QEMU (far above users and the usual
/// subordinate-id ranges).
pub const UID_BASE: u32 = 0x6000_0000;
/// How many uids there are to hand out.
pub const UID_COUNT: u32 = 1 << 20;
/// Directory of uid claims in the state directory.
pub const UIDS_DIR: &str = "uids";
/// Memory a QEMU needs beyond guest RAM (its own heap, the TCG translation
/// buffer, device buffers): the cgroup limit is RAM + this.
pub const QEMU_OVERHEAD_BYTES: u64 = 320 << 20;
/// Threads and processes a QEMU may have (vCPUs, I/O workers, RCU...).
pub const PIDS_MAX: u64 = 256;
/// CPU bandwidth period; the quota is one period per vCPU plus one for
/// QEMU's own threads (device emulation, the migration of device state).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Confinement settings of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// An empty directory on which each QEMU's private root is mounted
    /// (in its own mount namespace; invisible elsewhere).
    pub jail_root: PathBuf,
    /// Put QEMU in cgroups with limits from its machine.
    pub cgroups: bool,
}

impl Default for Confinement {
    fn default() -> Self {
        Self {
            jail_root: PathBuf::from("/run/hearth/jail"),
            cgroups: true,
        }
    }
}

/// Claim a free uid for the microVM directory `owner`.
pub fn claim_uid(state_dir: &Path, owner: &str) -> io::Result<u32> {
    let dir = state_dir.join(UIDS_DIR);
    fs::create_dir_all(&dir)?;
    let start = rand::random::<u32>() % UID_COUNT;
    for i in 0..UID_COUNT {
        let uid = UID_BASE + (start + i) % UID_COUNT;
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(uid.to_string()))
        {
            Ok(mut f) => {
                use std::io::Write;
                if let Err(e) = f.write_all(owner.as_bytes()) {
                    // An empty claim would hold the uid for nobody.
                    let _ = fs::remove_file(dir.join(uid.to_string()));
                    return Err(e);
                }
                return Ok(uid);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("every microVM uid is taken"))
}

/// The claim file of `uid`.
pub fn uid_claim(state_dir: &Path, uid: u32) -> PathBuf {
    state_dir.join(UIDS_DIR).join(uid.to_string())
}

/// Record that the uid now belongs to another directory name (a claimed
/// pre-started QEMU renamed to its microVM id). A claim still naming the
/// old directory would be released by `gc` while the microVM runs as that
/// uid, so a failure here must fail the handover.
pub fn move_uid(state_dir: &Path, uid: u32, owner: &str) -> io::Result<()> {
    fs::write(uid_claim(state_dir, uid), owner)
}

/// Give a uid back.
pub fn release_uid(state_dir: &Path, uid: u32) {
    let _ = fs::remove_file(state_dir.join(UIDS_DIR).join(uid.to_string()));
}

/// Claims whose owning directory no longer exists; released. Returns them.
pub fn release_orphan_uids(state_dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(d) = fs::read_dir(state_dir.join(UIDS_DIR)) else {
        return out;
    };
    for e in d.flatten() {
        let Some(uid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let owner = fs::read_to_string(e.path()).unwrap_or_default();
        if owner.is_empty() || !state_dir.join("vms").join(owner.trim()).is_dir() {
            release_uid(state_dir, uid);
            out.push(uid);
        }
    }
    out
}

/// What QEMU sees of the host: the program's files read-only, a few
/// device nodes, nothing else.
pub fn jail_spec(c: &Confinement, uid: u32, program: &Path, accel: Accel) -> JailSpec {
    let mut ro_binds: Vec<PathBuf> = [
        "/usr",
        "/lib",
        "/lib64",
        "/bin",
        "/sbin",
        "/etc/ld.so.cache",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.symlink_metadata().is_ok())
    .collect();
    if let Some(dir) = program.parent() {
        if !ro_binds.iter().any(|b| dir.starts_with(b)) {
            ro_binds.push(dir.to_path_buf());
        }
    }
    let mut devices = vec![PathBuf::from("/dev/null"), PathBuf::from("/dev/urandom")];
    if accel == Accel::Kvm {
        devices.push(PathBuf::from("/dev/kvm"));
    }
    JailSpec {
        uid,
        gid: uid,
        root_mountpoint: c.jail_root.clone(),
        ro_binds,
        devices,
    }
}

/// Limits from the machine: RAM plus QEMU's overhead, one CPU per vCPU plus
/// one, [`PIDS_MAX`] tasks.
pub fn cgroup_spec(name: &str, machine: &MachineConfig) -> CgroupSpec {
    CgroupSpec {
        name: name.to_string(),
        memory_max_bytes: machine.mem_size_bytes() + QEMU_OVERHEAD_BYTES,
        cpu_quota_us: CPU_PERIOD_US * (u64::from(machine.vcpu_count) + 1),
        cpu_period_us: CPU_PERIOD_US,
        pids_max: PIDS_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_claimed_once_and_released() {
        let state = tempfile::tempdir().unwrap();
        let a = claim_uid(state.path(), "vm-a").unwrap();
        let b = claim_uid(state.path(), "vm-b").unwrap();
        assert_ne!(a, b);
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&a));
        fs::create_dir_all(state.path().join("vms/vm-a")).unwrap();
        assert_eq!(release_orphan_uids(state.path()), vec![b]);
        move_uid(state.path(), a, "vm-c").unwrap();
        assert_eq!(release_orphan_uids(state.path()), vec![a]);
        release_uid(state.path(), a);
    }

    #[test]
    fn limits_follow_the_machine() {
        let m = MachineConfig {
            mem_size_mib: 512,
            vcpu_count: 2,
            cmdline: String::new(),
            disk_size_bytes: None,
            nic_slot: false,
        };
        let c = cgroup_spec("vm-1", &m);
        assert_eq!(c.memory_max_bytes, (512 << 20) + QEMU_OVERHEAD_BYTES);
        assert_eq!(c.cpu_quota_us, 300_000);
        let j = jail_spec(
            &Confinement::default(),
            UID_BASE + 1,
            Path::new("/usr/bin/qemu-system-x86_64"),
            Accel::Tcg,
        );
        assert!(j.ro_binds.contains(&PathBuf::from("/usr")));
        assert!(!j.devices.contains(&PathBuf::from("/dev/kvm")));
    }
}
