//! Shared set-up for the end-to-end engine tests: artifacts from
//! `hearth setup`, a private state directory, and a machine-wide lock so that
//! only one test boots TCG guests at a time (two busy TCG guests saturate
//! both cores of a CI host). Under nextest the `vm` test group already
//! serialises these tests; the lock covers plain `cargo test` too.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use hearth_artifacts::Manifest;
use hearth_proto::ExecRequest;
use hearth_vmm::accel::{decide, AccelChoice, HostKvmFacts};
use hearth_vmm::agent::Output;
use hearth_vmm::{BootSpec, Lifetime, MicroVm, QemuBackend, QemuConfig, QemuVm, VmId};

pub const T: Duration = Duration::from_secs(60);
pub const GUEST_MEM_MIB: u32 = 256;

pub struct Env {
    pub backend: QemuBackend,
    pub manifest: Manifest,
    pub state: tempfile::TempDir,
    _lock: File,
}

/// Artifacts must exist: these tests fail (never skip) without them.
pub fn env() -> Env {
    let lock =
        File::create(std::env::temp_dir().join("hearth-e2e.lock")).expect("create lock file");
    // SAFETY: flock on a valid fd we own; blocks until the lock is free.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let cache = hearth_artifacts::cache_dir();
    let manifest = Manifest::load(&cache).unwrap_or_else(|e| {
        panic!("end-to-end tests need the guest artifacts: {e}. Run `hearth setup` (scripts/test.sh does)")
    });
    let state = tempfile::Builder::new()
        .prefix("hearth-e2e-")
        .tempdir()
        .expect("state dir");
    let decision = decide(AccelChoice::Auto, HostKvmFacts::probe());
    let backend = QemuBackend::new(QemuConfig::new(state.path().to_path_buf(), decision.accel))
        .unwrap_or_else(|e| panic!("end-to-end tests need QEMU and hearth-supervisor: {e}"));
    Env {
        backend,
        manifest,
        state,
        _lock: lock,
    }
}

impl Env {
    pub fn image(&self, name: &str) -> PathBuf {
        self.manifest
            .images
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("image {name} missing from the manifest; run `hearth setup`"))
            .path
            .clone()
    }

    pub fn boot_spec(&self, id: &str, image: Option<&str>) -> BootSpec {
        BootSpec {
            id: VmId::new(id).unwrap(),
            kernel: self.manifest.kernel.path.clone(),
            initramfs: self.manifest.initramfs.path.clone(),
            root_disk: image.map(|i| self.image(i)),
            root_overlays: vec![],
            nic: None,
            nic_slot: false,
            mem_size_mib: GUEST_MEM_MIB,
            vcpu_count: 1,
            extra_cmdline: vec![],
            lifetime: Lifetime::Process,
        }
    }

    /// Nothing may be left in the state directory once every VM is gone:
    /// no microVM directory, no uid claim.
    pub fn assert_no_leftovers(&self) {
        for sub in ["vms", "uids"] {
            let left: Vec<_> = std::fs::read_dir(self.state.path().join(sub))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{sub} left behind: {left:?}");
        }
    }
}

/// Host wall clock in seconds (float).
pub fn host_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Run `script` with `/bin/sh -c` in the guest; it must succeed. Returns its
/// trimmed stdout.
pub async fn sh(vm: &QemuVm, script: &str) -> String {
    let out: Output = vm
        .agent()
        .run(&["/bin/sh", "-c", script], T)
        .await
        .expect("agent run");
    assert!(
        out.status.success(),
        "`{script}` failed with {:?}: stdout={:?} stderr={:?}",
        out.status,
        out.stdout_str(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout_str().trim().to_string()
}

/// Start the counter: a shell whose loop variable lives in process memory,
/// published to tmpfs (memory) every 100 ms, next to a file on the root disk.
pub async fn start_counter(vm: &QemuVm) -> u32 {
    sh(vm, "echo seed > /root/disk-file && sync").await;
    let p = vm
        .agent()
        .exec(
            ExecRequest {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "i=0; while :; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done".into(),
                ],
                ..Default::default()
            },
            T,
        )
        .await
        .expect("start counter");
    // Wait until it has counted a little; a counter that never counts fails.
    wait_counter_above(vm, 2).await;
    p.pid
}

pub async fn counter(vm: &QemuVm) -> u64 {
    sh(vm, "cat /run/counter 2>/dev/null || echo 0")
        .await
        .parse()
        .unwrap_or(0)
}

pub async fn wait_counter_above(vm: &QemuVm, floor: u64) -> u64 {
    for _ in 0..100 {
        let c = counter(vm).await;
        if c > floor {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("counter of {} never went above {floor}", vm.id());
}

/// Is a process with this pid alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    hearth_vmm::record::ProcessIdentity::of(pid).is_some()
}
