//! End-to-end fault injection into the VM engine: real failures (QEMU
//! killed, the state directory's filesystem full, the agent no longer
//! answering) at every named step ([`FaultPoint`]) of snapshot, suspend,
//! resume and launch, each checked against what the engine's docs say a
//! failure leaves behind:
//!
//! * snapshot (`qemu/vm.rs`): no new snapshot and no staging directory; the
//!   source's files never deleted or moved (moved ones moved back: same
//!   inode); the source goes on running (same QEMU, its guest still
//!   counting) when its QEMU is still there, else it is `Failed`;
//! * suspend (`qemu/vm.rs`, `MicroVm::suspend`): no generation directory
//!   left and `vm.json` unchanged; the guest goes on running, or is `Failed`
//!   when its QEMU is gone: a failed suspend never loses a running microVM;
//! * resume (`qemu/restore.rs`): the new QEMU is gone and the suspended
//!   microVM is exactly as it was, byte for byte, even when the failed
//!   attempt let its guest run and write to its disk; a second resume brings
//!   it back with disk and memory from the same moment;
//! * launch and boot: a failure leaves nothing (no directory, uid claim or
//!   snapshot reference, no process).
//!
//! Where an operation may rightly complete despite the fault (QEMU killed
//! after everything it had to give was saved), the result is checked to be
//! whole instead: the snapshot launches and its guest counts on, the
//! suspended microVM resumes with its state.
//!
//! The faults, done by the hook itself (see `hearth_vmm::fault`):
//!
//! * kill: SIGKILL to QEMU; at the resume steps where the guest already
//!   runs, after letting it run (and write to its disk) for a while;
//! * full disk: the state directory is a tmpfs this test mounts; the hook
//!   fills it, and frees it when the next step begins (so exactly that step
//!   meets ENOSPC) or as soon as the engine has removed the step's
//!   half-written directory (so a guest it then thaws never meets a full
//!   disk);
//! * stalled agent: SIGSTOP to the supervisor, which relays the agent
//!   channel (QMP does not go through it); SIGCONT once the operation has
//!   returned. A freeze's agent request comes before the first snapshot or
//!   suspend step, so that stall is applied just before the operation.
//!
//! A control case without a fault checks the path itself works where a
//! fault case depends on it (a snapshot of a microVM with two own layers).
//!
//! Every case runs and is checked; violations are collected and reported
//! together with the table of cases at the end of each test. The state
//! directory is a tmpfs, so these tests need root (as QEMU's confinement
//! does).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hearth_proto::ExecRequest;
use hearth_vmm::fault::{FaultContext, FaultPoint};
use hearth_vmm::{
    LaunchSpec, Lifetime, MicroVm, QemuBackend, QemuVm, Snapshot, SnapshotMode, SuspendedVm,
    VmBackend, VmId, VmState,
};
use support::*;

/// The backend's agent timeout: how long a stalled agent holds a step up.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a guest command may take (they are short; a wedged agent
/// channel should not hold a case up for long).
const SH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a failed resume's guest is let run before the fault.
const RUN_FOR: Duration = Duration::from_millis(1500);
/// Size of the tmpfs holding the state directory: a base snapshot (~130 MiB
/// of memory), a cold-booted microVM's memory file (256 MiB once fully
/// allocated), clones' layers and diffs (a few MiB each).
const TMPFS_MIB: u64 = 1024;
/// Freed first when a full disk ends, so space is back at once.
const HEADROOM_BYTES: u64 = 8 << 20;
/// A counter in a shell variable (process memory), published to tmpfs.
const MEM_LOOP: &str = "i=0; while :; do i=$((i+1)); echo $i > /run/tick; sleep 0.1; done";
/// The same, also written to the root disk (after tmpfs, so the disk is
/// never ahead of memory) and synced.
const DISK_LOOP: &str =
    "i=0; while :; do i=$((i+1)); echo $i > /run/tick; echo $i > /root/tick; sync; sleep 0.1; done";

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

// ---------------------------------------------------------------------------
// Faults

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL QEMU.
    Kill,
    /// Let the guest run for [`RUN_FOR`], then SIGKILL QEMU.
    KillAfterRun,
    /// Fill the state directory's filesystem for one step.
    DiskFull,
    /// SIGSTOP the supervisor: the agent stops answering.
    Stall,
    /// Let the guest run for [`RUN_FOR`], then SIGSTOP the supervisor.
    StallAfterRun,
    /// Nothing: the control case.
    Nothing,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill QEMU",
            Fault::KillAfterRun => "kill QEMU after the guest ran",
            Fault::DiskFull => "full disk",
            Fault::Stall => "agent stalls",
            Fault::StallAfterRun => "agent stalls after the guest ran",
            Fault::Nothing => "no fault",
        })
    }
}

/// Where a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Just before the operation (no step precedes its first agent request).
    Before,
    Step(FaultPoint),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Before => f.write_str("before the operation"),
            At::Step(p) => write!(f, "{p:?}"),
        }
    }
}

/// What a case must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The operation fails; the source goes on running on the same QEMU.
    FailRunning,
    /// The operation fails; QEMU is gone and the source is `Failed`, its
    /// files where they were.
    FailGone,
    /// The operation fails (resume, launch).
    Fail,
    /// The operation completes (the fault came after everything needed was
    /// saved) and its result is whole.
    Complete,
    /// Either it completes, or it fails with the source running on.
    CompleteOrFailRunning,
    /// Either outcome, each checked for what it must leave.
    Either,
}

impl Expect {
    fn may_fail(self) -> bool {
        !matches!(self, Expect::Complete)
    }
    fn may_complete(self) -> bool {
        matches!(
            self,
            Expect::Complete | Expect::CompleteOrFailRunning | Expect::Either
        )
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::FailRunning => "fails, source runs on",
            Expect::FailGone => "fails, source Failed, files kept",
            Expect::Fail => "fails, leaves it as it was",
            Expect::Complete => "completes, result whole",
            Expect::CompleteOrFailRunning => "completes, or fails with the source running on",
            Expect::Either => "either, each checked",
        })
    }
}

/// What the hook found and did.
#[derive(Debug, Clone, Default)]
struct Fired {
    qemu_pid: Option<u32>,
    supervisor_pid: Option<u32>,
    /// The fault let the guest run first: did its newest disk layer change
    /// meanwhile?
    guest_wrote: Option<bool>,
    /// QEMU was already gone when the kill came.
    already_gone: bool,
}

#[derive(Default)]
struct Plan {
    armed: Option<(FaultPoint, Fault)>,
    fired: Option<Fired>,
    stopped: Vec<u32>,
}

/// The fault hook's state: one fault armed at a time.
struct Injector {
    /// Root of the filesystem a full disk fills (the state directory).
    fs_root: PathBuf,
    plan: Mutex<Plan>,
    filler: Arc<Mutex<Option<Filler>>>,
}

impl Injector {
    fn new(fs_root: &Path) -> Self {
        Self {
            fs_root: fs_root.to_path_buf(),
            plan: Mutex::default(),
            filler: Arc::default(),
        }
    }

    fn arm(&self, point: FaultPoint, fault: Fault) {
        let mut p = lock(&self.plan);
        assert!(p.armed.is_none() && p.fired.is_none(), "a fault is pending");
        p.armed = Some((point, fault));
    }

    /// Strike now, from the test, before the operation: fill the disk, or
    /// stall `vm`'s agent.
    fn strike_now(&self, fault: Fault, vm: Option<&QemuVm>) {
        let mut fired = Fired::default();
        match fault {
            Fault::DiskFull => self.fill(None),
            Fault::Stall => {
                let vm = vm.expect("a microVM whose agent to stall");
                fired.qemu_pid = Some(vm.pid());
                fired.supervisor_pid = Some(vm.supervisor_pid());
                stop(vm.supervisor_pid());
                lock(&self.plan).stopped.push(vm.supervisor_pid());
            }
            other => panic!("{other} cannot strike before the operation"),
        }
        lock(&self.plan).fired = Some(fired);
    }

    /// The operation returned: undo the fault's lasting effects (free the
    /// disk, let the supervisor go on) and say what fired.
    fn finish(&self) -> Option<Fired> {
        self.free_filler();
        let mut p = lock(&self.plan);
        for pid in p.stopped.drain(..) {
            // SAFETY: kill takes integers; the pid was a live supervisor we stopped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
        p.armed = None;
        p.fired.take()
    }

    fn free_filler(&self) {
        if let Some(f) = lock(&self.filler).take() {
            f.free();
        }
    }

    /// Fill the filesystem; with `watch`, free it as soon as that path is
    /// gone (the engine removed its half-written directory).
    fn fill(&self, watch: Option<PathBuf>) {
        let mut slot = lock(&self.filler);
        assert!(slot.is_none(), "already full");
        *slot = Some(Filler::fill(&self.fs_root));
        drop(slot);
        if let Some(path) = watch {
            let filler = self.filler.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(300);
                while Instant::now() < deadline {
                    let mut slot = lock(&filler);
                    if slot.is_none() {
                        return;
                    }
                    if !path.exists() {
                        if let Some(f) = slot.take() {
                            f.free();
                        }
                        return;
                    }
                    drop(slot);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    }

    /// The hook.
    fn on(&self, point: FaultPoint, ctx: &FaultContext) {
        // A full disk lasts one step: the next step has begun.
        self.free_filler();
        let fault = {
            let mut p = lock(&self.plan);
            match p.armed {
                Some((at, f)) if at == point => {
                    p.armed = None;
                    f
                }
                _ => return,
            }
        };
        let mut fired = Fired {
            qemu_pid: ctx.qemu_pid,
            supervisor_pid: ctx.supervisor_pid,
            ..Fired::default()
        };
        if matches!(fault, Fault::KillAfterRun | Fault::StallAfterRun) {
            fired.guest_wrote = Some(let_guest_run(&ctx.dir));
        }
        match fault {
            Fault::Kill | Fault::KillAfterRun => {
                let pid = ctx.qemu_pid.expect("a QEMU to kill");
                fired.already_gone = !kill_and_wait(pid);
            }
            Fault::DiskFull => {
                let watch = match point {
                    FaultPoint::SnapshotFrozen
                    | FaultPoint::SnapshotStateSaved
                    | FaultPoint::SnapshotMemorySaved
                    | FaultPoint::SnapshotStaged => staging_dir(&self.fs_root),
                    FaultPoint::SuspendFrozen
                    | FaultPoint::SuspendStateSaved
                    | FaultPoint::SuspendMemorySaved
                    | FaultPoint::SuspendProcessGone => newest(&ctx.dir, "gen-", ""),
                    // A failed resume kills its QEMU before anything runs on.
                    _ => None,
                };
                self.fill(watch);
            }
            Fault::Stall | Fault::StallAfterRun => {
                let pid = ctx.supervisor_pid.expect("a supervisor to stop");
                stop(pid);
                lock(&self.plan).stopped.push(pid);
            }
            Fault::Nothing => {}
        }
        lock(&self.plan).fired = Some(fired);
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A lock, poisoned or not (a hook that panicked must not abort the test
/// in a destructor).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILL `pid` and wait until it is gone; false when it already was.
fn kill_and_wait(pid: u32) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    // SAFETY: kill takes integers; the pid is the live QEMU of this step.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "QEMU {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// SIGSTOP `pid` and wait until it is stopped.
fn stop(pid: u32) {
    // SAFETY: kill takes integers; the pid is a live supervisor.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "supervisor {pid} did not stop");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Let the guest run; did its newest own disk layer change meanwhile?
fn let_guest_run(dir: &Path) -> bool {
    let layer = newest(dir, "disk-", ".qcow2");
    let stamp = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
    };
    let before = stamp(&layer);
    std::thread::sleep(RUN_FOR);
    layer.is_some() && stamp(&layer) != before
}

/// The entry of `dir` named `<prefix><n><suffix>` with the highest n.
fn newest(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    names(dir)
        .into_iter()
        .filter_map(|n| {
            let num = n
                .strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse::<u32>()
                .ok()?;
            Some((num, n))
        })
        .max()
        .map(|(_, n)| dir.join(n))
}

/// The staging directory of the snapshot being taken.
fn staging_dir(state: &Path) -> Option<PathBuf> {
    let root = state.join("snapshots");
    names(&root)
        .into_iter()
        .find(|n| n.starts_with('.') && n.ends_with(".staging"))
        .map(|n| root.join(n))
}

/// Files taking every free byte of a filesystem.
struct Filler {
    files: Vec<PathBuf>,
}

impl Filler {
    fn fill(root: &Path) -> Filler {
        let headroom = root.join(".filler-headroom");
        let bulk = root.join(".filler-bulk");
        allocate(&headroom, HEADROOM_BYTES.min(free_bytes(root)));
        allocate(&bulk, u64::MAX);
        // Whatever rounding left.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&bulk)
            .unwrap();
        let page = [0u8; 4096];
        loop {
            match f.write(&page) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("fill {}: {e}", bulk.display()),
            }
        }
        assert_eq!(free_bytes(root), 0, "{} is not full", root.display());
        Filler {
            files: vec![headroom, bulk],
        }
    }

    fn free(self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Allocate up to `len` bytes to a new file, less when space runs out
/// (a running guest may take some meanwhile).
fn allocate(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    let mut off = 0u64;
    while off < len {
        let chunk = (len - off)
            .min(free_bytes(path.parent().unwrap()))
            .min(64 << 20);
        if chunk == 0 {
            return;
        }
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let rc =
            unsafe { libc::fallocate(f.as_raw_fd(), 0, off as libc::off_t, chunk as libc::off_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "fallocate {}: {e}",
                path.display()
            );
            return;
        }
        off += chunk;
    }
}

fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// A tmpfs mounted over a directory for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "these tests mount a tmpfs (root needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// ---------------------------------------------------------------------------
// The rig: a backend on a tmpfs state directory with the hook installed.

/// Fields drop in order: the backend (its waiting QEMUs) before the tmpfs
/// is unmounted, the tmpfs before the state directory and the lock go.
struct Rig {
    backend: QemuBackend,
    inj: Arc<Injector>,
    _tmpfs: Tmpfs,
    env: Env,
    next: std::sync::atomic::AtomicU32,
}

impl Rig {
    fn new() -> Rig {
        let env = env();
        let tmpfs = Tmpfs::mount(env.state.path(), TMPFS_MIB);
        let mut cfg = env.backend.config().clone();
        cfg.agent_timeout = AGENT_TIMEOUT;
        let backend = QemuBackend::new(cfg).expect("backend");
        let inj = Arc::new(Injector::new(env.state.path()));
        let hook = inj.clone();
        backend.set_fault_hook(Some(Arc::new(move |point, ctx| hook.on(point, ctx))));
        Rig {
            backend,
            inj,
            _tmpfs: tmpfs,
            env,
            next: Default::default(),
        }
    }

    fn state(&self) -> &Path {
        self.env.state.path()
    }

    fn id(&self, prefix: &str) -> VmId {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        VmId::new(format!("{prefix}-{n}")).unwrap()
    }

    fn snapshots(&self) -> BTreeSet<String> {
        self.backend
            .catalog()
            .list()
            .into_iter()
            .map(|s| s.id.to_string())
            .collect()
    }

    /// Staging or half-deleted directories in the catalog.
    fn catalog_junk(&self) -> Vec<String> {
        names(&self.state().join("snapshots"))
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    fn vms(&self) -> BTreeSet<String> {
        names(&self.state().join("vms"))
    }

    fn uids(&self) -> BTreeSet<String> {
        names(&self.state().join("uids"))
    }

    /// Cold-boot a Debian guest running `script`; returns it and the
    /// counter's PID.
    async fn boot(&self, prefix: &str, script: &str) -> (QemuVm, u32) {
        let id = self.id(prefix);
        let vm = self
            .backend
            .boot(self.env.boot_spec(id.as_str(), Some("debian-12-minimal")))
            .await
            .expect("boot");
        let pid = start_loop(&vm, script).await;
        (vm, pid)
    }

    /// A snapshot of a counting guest (its source consumed).
    async fn base(&self, script: &str) -> (Snapshot, u32) {
        let (mut vm, pid) = self.boot("base", script).await;
        let snap = vm.snapshot(SnapshotMode::Consume).await.expect("snapshot");
        (snap, pid)
    }

    async fn clone_of(&self, snap: &Snapshot, prefix: &str) -> QemuVm {
        self.backend
            .launch(snap, LaunchSpec::ephemeral(self.id(prefix)))
            .await
            .expect("launch")
    }
}

/// Allocate every page of a cold-booted microVM's memory file, so that a
/// full disk hits the engine's writes only: a guest touching a page of a
/// sparse memory file on a full filesystem would take QEMU down (SIGBUS).
fn preallocate_memory(vm: &QemuVm) {
    let path = vm.dir().join("memory");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    // SAFETY: fallocate on a descriptor we own; mode 0 keeps existing data.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------
// Guest and file helpers

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A microVM's own files (memory, disk layers) by name, with their inodes.
fn own_files(dir: &Path) -> BTreeMap<String, u64> {
    names(dir)
        .into_iter()
        .filter(|n| n == "memory" || (n.starts_with("disk-") && n.ends_with(".qcow2")))
        .filter_map(|n| Some((n.clone(), std::fs::metadata(dir.join(&n)).ok()?.ino())))
        .collect()
}

/// Every file and directory under `root`, with contents.
#[derive(PartialEq, Eq)]
struct Tree(BTreeMap<PathBuf, Option<Vec<u8>>>);

impl Tree {
    fn of(root: &Path) -> Tree {
        fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
            for name in names(&root.join(rel)) {
                let r = rel.join(&name);
                let p = root.join(&r);
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    out.insert(r.clone(), None);
                    walk(root, &r, out);
                } else {
                    out.insert(r, Some(std::fs::read(&p).unwrap_or_default()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, Path::new(""), &mut out);
        Tree(out)
    }

    /// How `now` differs from `self`.
    fn diff(&self, now: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        for (p, c) in &self.0 {
            match now.0.get(p) {
                None => out.push(format!("{} removed", p.display())),
                Some(n) if n != c => out.push(format!("{} changed", p.display())),
                _ => {}
            }
        }
        for p in now.0.keys() {
            if !self.0.contains_key(p) {
                out.push(format!("{} added", p.display()));
            }
        }
        out
    }
}

/// An error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// A long error's head and tail (console tails and disk specs make them
/// long; the head says what failed, the tail why).
fn short(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 320 {
        return s.to_string();
    }
    let head: String = chars[..180].iter().collect();
    let tail: String = chars[chars.len() - 120..].iter().collect();
    format!("{head} [...] {tail}")
}

/// The fault never struck: say how the operation ended instead.
fn not_reached<T, E: std::error::Error>(result: &Result<T, E>) -> String {
    match result {
        Ok(_) => "the fault point was never reached (the operation completed)".into(),
        Err(e) => format!(
            "the operation failed before the fault point: {}",
            short(&chain(e))
        ),
    }
}

/// Did the operation fail for want of space (and not for another reason)?
/// QEMU reports a failed device state write as a generic I/O error.
fn for_want_of_space(e: &str) -> bool {
    e.contains("No space left on device") || e.contains("An IO error has occurred")
}

async fn run_sh(vm: &QemuVm, script: &str) -> Result<String, String> {
    let out = vm
        .agent()
        .run(&["/bin/sh", "-c", script], SH_TIMEOUT)
        .await
        .map_err(|e| format!("agent run `{script}` on {}: {e}", vm.id()))?;
    ensure!(
        out.status.success(),
        "`{script}` failed with {:?}: stdout={:?} stderr={:?}",
        out.status,
        out.stdout_str(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout_str().trim().to_string())
}

async fn tick(vm: &QemuVm) -> Result<u64, String> {
    // The loop truncates, then writes: a read in between sees nothing.
    let mut last = String::new();
    for _ in 0..20 {
        last = run_sh(vm, "cat /run/tick").await?;
        if let Ok(n) = last.parse() {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("/run/tick holds {last:?}"))
}

async fn wait_tick_above(vm: &QemuVm, floor: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = tick(vm).await?;
        if t > floor {
            return Ok(t);
        }
        ensure!(
            Instant::now() < deadline,
            "the counter of {} stays at {t}, never above {floor}",
            vm.id()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The count in memory and on the root disk, read together.
async fn counts(vm: &QemuVm) -> Result<(u64, u64), String> {
    let mut last = String::new();
    for _ in 0..20 {
        // The disk first: memory is written first, so it is never behind.
        last = run_sh(vm, "cat /root/tick; echo; cat /run/tick").await?;
        let v: Vec<u64> = last
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        if let [d, m] = v[..] {
            return Ok((m, d));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("/run/tick and /root/tick hold {last:?}"))
}

/// Start a counter loop; returns its PID once it has counted a little.
async fn start_loop(vm: &QemuVm, script: &str) -> u32 {
    let p = vm
        .agent()
        .exec(
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                ..Default::default()
            },
            SH_TIMEOUT,
        )
        .await
        .expect("start the counter");
    wait_tick_above(vm, 2).await.expect("the counter counts");
    p.pid
}

/// The guest is the same one, going on: its counter process is alive and
/// counts on from `since` (not from zero).
async fn goes_on(vm: &QemuVm, counter: u32, since: u64) -> Result<u64, String> {
    let alive = run_sh(
        vm,
        &format!("kill -0 {counter} 2>/dev/null && echo alive || echo gone"),
    )
    .await?;
    ensure!(
        alive == "alive",
        "the counter process {counter} of {} is gone: not the same guest",
        vm.id()
    );
    wait_tick_above(vm, since).await
}

/// Disk and memory are from the same moment: with the counter paused and
/// the page cache dropped, the count on the root disk (read with O_DIRECT)
/// is the count in memory, or one behind (memory is written first), and
/// the guest's ext4 reports no error.
async fn disk_matches_memory(vm: &QemuVm, counter: u32, floor: u64) -> Result<String, String> {
    let script = format!(
        "kill -STOP {counter}; sync; echo 3 > /proc/sys/vm/drop_caches; m=$(cat /run/tick); \
         d=$(dd if=/root/tick iflag=direct bs=4096 count=1 2>/dev/null | tr -d '\\000\\n'); \
         kill -CONT {counter}; echo \"$m $d\""
    );
    for _ in 0..10 {
        let out = run_sh(vm, &script).await?;
        let mut it = out.split_whitespace();
        let m: u64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        // Paused between truncating and writing the file: try again.
        let Some(d) = it.next().and_then(|s| s.parse::<u64>().ok()) else {
            tokio::time::sleep(Duration::from_millis(150)).await;
            continue;
        };
        ensure!(
            d == m || d + 1 == m,
            "disk and memory are from different moments: the root disk says {d}, memory says {m}"
        );
        ensure!(
            m > floor,
            "the count {m} is not beyond {floor}, its value before the suspend"
        );
        let errors = run_sh(vm, "dmesg | grep -ci 'ext4-fs error' || true").await?;
        ensure!(errors == "0", "the guest's ext4 reports {errors} errors");
        return Ok(format!("disk {d} / memory {m}"));
    }
    Err("never read a count from the root disk".into())
}

/// Wait until a process is gone.
async fn gone(pid: Option<u32>) -> bool {
    let Some(pid) = pid else { return true };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// End a microVM left over by a case.
async fn dispose(mut vm: QemuVm) -> Result<(), String> {
    match vm.state() {
        // Consumed by a snapshot: nothing left to end.
        VmState::Terminated => Ok(()),
        _ => {
            let (dir, pid, sup) = (vm.dir().to_path_buf(), vm.pid(), vm.supervisor_pid());
            vm.terminate()
                .await
                .map_err(|e| format!("terminate: {}", short(&chain(&e))))?;
            ensure!(
                gone(Some(pid)).await && gone(Some(sup)).await,
                "QEMU {pid} or its supervisor {sup} outlived terminate"
            );
            ensure!(!dir.exists(), "{} outlived terminate", dir.display());
            Ok(())
        }
    }
}

/// A case's outcome, or its violations.
type CaseResult = Result<String, String>;

/// The violations a case found so far (each check runs even when an
/// earlier one failed, so a case reports all it breaks).
#[derive(Default)]
struct Found(Vec<String>);

impl Found {
    fn check(&mut self, ok: bool, violation: impl FnOnce() -> String) {
        if !ok {
            self.0.push(violation());
        }
    }

    fn add<T>(&mut self, r: Result<T, String>) -> Option<T> {
        r.map_err(|v| self.0.push(v)).ok()
    }

    fn result(self, outcome: String) -> CaseResult {
        if self.0.is_empty() {
            Ok(outcome)
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// The table of cases of one test; fails the test with every violation.
struct Report {
    title: &'static str,
    rows: Vec<(String, String, CaseResult)>,
    started: Instant,
}

impl Report {
    fn new(title: &'static str) -> Self {
        Self {
            title,
            rows: Vec::new(),
            started: Instant::now(),
        }
    }

    fn add(&mut self, case: String, expect: Expect, r: CaseResult) {
        match &r {
            Ok(o) => eprintln!("[{}] ok   {case} => {o}", self.title),
            Err(v) => eprintln!("[{}] FAIL {case}: {v}", self.title),
        }
        self.rows.push((case, expect.to_string(), r));
    }

    fn finish(self) {
        eprintln!(
            "\n{} faults: {} cases in {:.0?}",
            self.title,
            self.rows.len(),
            self.started.elapsed()
        );
        for (case, expect, r) in &self.rows {
            let (mark, what) = match r {
                Ok(o) => ("ok  ", o.as_str()),
                Err(v) => ("FAIL", v.as_str()),
            };
            eprintln!("  {mark} {case:<70} expected: {expect:<48} got: {what}");
        }
        let bad: Vec<String> = self
            .rows
            .iter()
            .filter_map(|(c, _, r)| r.as_ref().err().map(|v| format!("  {c}: {v}")))
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} {} fault cases break the engine's failure guarantees:\n{}",
            bad.len(),
            self.rows.len(),
            self.title,
            bad.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Snapshot

/// Snapshot `vm` with `fault` at `at`; returns the outcome and the microVM
/// when it goes on running.
async fn snapshot_case(
    rig: &Rig,
    mut vm: QemuVm,
    counter: u32,
    (at, fault, mode, expect): (At, Fault, SnapshotMode, Expect),
) -> (CaseResult, Option<QemuVm>) {
    let mut r = snapshot_checks(rig, &mut vm, counter, at, fault, mode, expect).await;
    rig.inj.finish();
    let keep = if vm.state() == VmState::Running {
        Some(vm)
    } else {
        if let Err(e) = dispose(vm).await {
            r = Err(match r {
                Ok(_) => e,
                Err(v) => format!("{v}; then {e}"),
            });
        }
        None
    };
    (r, keep)
}

async fn snapshot_checks(
    rig: &Rig,
    vm: &mut QemuVm,
    counter: u32,
    at: At,
    fault: Fault,
    mode: SnapshotMode,
    expect: Expect,
) -> CaseResult {
    let dir = vm.dir().to_path_buf();
    let pid = vm.pid();
    let files = own_files(&dir);
    ensure!(!files.is_empty(), "{} has no files of its own", vm.id());
    let before = rig.snapshots();
    let t0 = tick(vm).await?;
    match at {
        At::Before => rig.inj.strike_now(fault, Some(vm)),
        At::Step(p) => rig.inj.arm(p, fault),
    }
    let result = vm.snapshot(mode).await;
    let fired = rig.inj.finish();
    ensure!(fired.is_some(), "{}", not_reached(&result));
    let mut found = Found::default();
    let junk = rig.catalog_junk();
    found.check(junk.is_empty(), || {
        format!("half-made snapshots left in the catalog: {junk:?}")
    });
    let alive = pid_alive(pid);
    match result {
        Err(e) => {
            let full = chain(&e);
            let e = short(&full);
            found.check(expect.may_fail(), || {
                format!("the snapshot failed ({e}); it should have completed")
            });
            found.check(fault != Fault::DiskFull || for_want_of_space(&full), || {
                format!(
                    "the snapshot failed, but not for want of space: {}",
                    short(&full)
                )
            });
            let state = vm.state();
            if alive {
                found.check(state == VmState::Running, || {
                    format!(
                        "the snapshot failed ({e}) and QEMU {pid} is still there, yet the \
                         source is {state} (docs: it goes on running)"
                    )
                });
                found.check(expect != Expect::FailGone, || {
                    format!("QEMU {pid} should be gone after this fault")
                });
            } else {
                found.check(matches!(state, VmState::Failed { .. }), || {
                    format!("QEMU {pid} is gone but the source is {state}, not failed")
                });
                found.check(
                    !matches!(expect, Expect::FailRunning | Expect::CompleteOrFailRunning),
                    || format!("the snapshot failed ({e}) and lost the running source: QEMU {pid} is gone"),
                );
            }
            let after = rig.snapshots();
            found.check(after == before, || {
                format!("a failed snapshot ({e}) left a snapshot: {after:?}")
            });
            let now = own_files(&dir);
            found.check(now == files, || {
                format!(
                    "the failed snapshot ({e}) moved or deleted the source's files: \
                     before {files:?} (name: inode), after {now:?}"
                )
            });
            let went_on = if alive {
                found
                    .add(goes_on(vm, counter, t0).await.map_err(|v| {
                        format!("after the fault ended, the source does not go on: {v}")
                    }))
                    .map(|n| format!("; the source runs on (count {t0} -> {n})"))
            } else {
                None
            };
            if let (Some(how), false) = (&went_on, state == VmState::Running) {
                found.0.push(format!(
                    "(though its guest does run on and its agent answers again{how}: the \
                     microVM was usable, and is lost only because the engine gave up on it)"
                ));
            }
            found.result(format!(
                "failed ({e}){}",
                went_on.unwrap_or_else(|| format!("; source {state}, its files in place"))
            ))
        }
        Ok(snap) => {
            ensure!(
                expect.may_complete(),
                "the snapshot completed despite {fault} at {at}; expected: {expect}"
            );
            let mut want = before.clone();
            want.insert(snap.id.to_string());
            let after = rig.snapshots();
            ensure!(
                after == want,
                "the catalog holds {after:?}, expected {want:?}"
            );
            match mode {
                SnapshotMode::Consume => {
                    let state = vm.state();
                    ensure!(state == VmState::Terminated, "a consumed source is {state}");
                    ensure!(!alive, "QEMU {pid} outlived its consumed microVM");
                    ensure!(
                        !dir.exists(),
                        "{} outlived its consumed microVM",
                        dir.display()
                    );
                }
                SnapshotMode::KeepRunning => {
                    let state = vm.state();
                    if alive {
                        ensure!(state == VmState::Running, "the source is {state}");
                        goes_on(vm, counter, t0).await?;
                    } else {
                        ensure!(
                            matches!(state, VmState::Failed { .. }),
                            "QEMU {pid} is gone but the source is {state}"
                        );
                    }
                }
            }
            // Whole: a clone of it is the same guest, counting on.
            let clone = rig
                .backend
                .launch(&snap, LaunchSpec::ephemeral(rig.id("check")))
                .await
                .map_err(|e| format!("the snapshot does not launch: {}", short(&chain(&e))))?;
            let n = goes_on(&clone, counter, t0).await?;
            clone
                .terminate()
                .await
                .map_err(|e| format!("terminate the check clone: {}", chain(&e)))?;
            rig.backend
                .delete_snapshot(&snap)
                .map_err(|e| format!("delete the snapshot: {}", chain(&e)))?;
            let gone = if fired.is_some_and(|f| f.already_gone) {
                " (QEMU had already quit)"
            } else {
                ""
            };
            found.result(format!(
                "completed{gone}; a clone of it counts on ({t0} -> {n})"
            ))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_faults_in_snapshot_leave_the_source_and_no_snapshot() {
    use Expect::*;
    use Fault::*;
    use FaultPoint::*;
    use SnapshotMode::*;
    let rig = Rig::new();
    let mut report = Report::new("snapshot");
    let (base, counter) = rig.base(MEM_LOOP).await;

    // Clones (memory mapped privately from the snapshot, one own disk
    // layer): a fresh one per case.
    let cases = [
        (At::Step(SnapshotFrozen), Kill, KeepRunning, FailGone),
        (At::Step(SnapshotStateSaved), Kill, KeepRunning, FailGone),
        (At::Step(SnapshotMemorySaved), Kill, KeepRunning, FailGone),
        (At::Step(SnapshotStaged), Kill, KeepRunning, Complete),
        (At::Step(SnapshotFrozen), Kill, Consume, FailGone),
        (At::Step(SnapshotStateSaved), Kill, Consume, FailGone),
        (At::Step(SnapshotMemorySaved), Kill, Consume, Complete),
        (At::Step(SnapshotStaged), Kill, Consume, Complete),
        (At::Step(SnapshotFrozen), DiskFull, KeepRunning, FailRunning),
        (
            At::Step(SnapshotStateSaved),
            DiskFull,
            KeepRunning,
            FailRunning,
        ),
        (
            At::Step(SnapshotMemorySaved),
            DiskFull,
            KeepRunning,
            FailRunning,
        ),
        (At::Step(SnapshotStaged), DiskFull, KeepRunning, FailRunning),
        (At::Step(SnapshotFrozen), DiskFull, Consume, FailRunning),
        (At::Step(SnapshotStateSaved), DiskFull, Consume, FailRunning),
        (At::Step(SnapshotMemorySaved), DiskFull, Consume, Complete),
        (At::Step(SnapshotStaged), DiskFull, Consume, FailGone),
        (At::Before, Stall, KeepRunning, FailRunning),
        (
            At::Step(SnapshotFrozen),
            Stall,
            KeepRunning,
            CompleteOrFailRunning,
        ),
        (At::Step(SnapshotFrozen), Stall, Consume, Complete),
    ];
    for case in cases {
        let vm = rig.clone_of(&base, "snap").await;
        let label = format!("clone  {:?} {} at {}", case.2, case.1, case.0);
        let (r, left) = snapshot_case(&rig, vm, counter, case).await;
        report.add(label, case.3, r);
        if let Some(vm) = left {
            dispose(vm).await.expect("terminate");
        }
    }

    // A resumed clone (two own disk layers: a snapshot flattens them into
    // a new file, in Consume mode too, instead of moving one). Reused while
    // it runs on.
    let resumed_cases = [
        (At::Step(SnapshotStaged), Nothing, KeepRunning, Complete),
        (
            At::Step(SnapshotMemorySaved),
            DiskFull,
            KeepRunning,
            FailRunning,
        ),
        (
            At::Step(SnapshotMemorySaved),
            DiskFull,
            Consume,
            FailRunning,
        ),
        (At::Step(SnapshotStaged), DiskFull, Consume, FailGone),
    ];
    let mut resumed: Option<QemuVm> = None;
    for case in resumed_cases {
        let vm = match resumed.take() {
            Some(vm) => vm,
            None => {
                let mut vm = rig.clone_of(&base, "twice").await;
                let suspended = vm.suspend().await.expect("suspend");
                rig.backend.resume(suspended).await.expect("resume")
            }
        };
        let label = format!("resumed {:?} {} at {}", case.2, case.1, case.0);
        let (r, left) = snapshot_case(&rig, vm, counter, case).await;
        report.add(label, case.3, r);
        resumed = left;
    }
    if let Some(vm) = resumed {
        dispose(vm).await.expect("terminate");
    }

    // A cold-booted microVM: its own memory file, mapped shared, is what
    // Consume moves. Reused while it runs on.
    let cold_cases = [
        (At::Step(SnapshotFrozen), DiskFull, KeepRunning, FailRunning),
        (
            At::Step(SnapshotStateSaved),
            DiskFull,
            KeepRunning,
            FailRunning,
        ),
        (
            At::Step(SnapshotMemorySaved),
            DiskFull,
            KeepRunning,
            FailRunning,
        ),
        (At::Step(SnapshotStaged), DiskFull, KeepRunning, FailRunning),
        (At::Step(SnapshotFrozen), DiskFull, Consume, FailRunning),
        (At::Step(SnapshotStaged), DiskFull, Consume, FailGone),
        (At::Step(SnapshotStateSaved), Kill, Consume, Complete),
    ];
    let mut cold: Option<(QemuVm, u32)> = None;
    for case in cold_cases {
        let (vm, counter) = match cold.take() {
            Some(c) => c,
            None => {
                let (vm, c) = rig.boot("cold", MEM_LOOP).await;
                preallocate_memory(&vm);
                (vm, c)
            }
        };
        let label = format!("cold   {:?} {} at {}", case.2, case.1, case.0);
        let (r, left) = snapshot_case(&rig, vm, counter, case).await;
        report.add(label, case.3, r);
        cold = left.map(|vm| (vm, counter));
    }
    if let Some((vm, _)) = cold {
        dispose(vm).await.expect("terminate");
    }

    report.finish();
    rig.backend.delete_snapshot(&base).expect("delete the base");
    assert!(rig.snapshots().is_empty() && rig.catalog_junk().is_empty());
    rig.env.assert_no_leftovers();
}

// ---------------------------------------------------------------------------
// Suspend

/// Suspend `vm` with `fault` at `at`; returns the outcome and the microVM
/// to go on with (the same one running on, or the suspended one resumed).
async fn suspend_case(
    rig: &Rig,
    vm: QemuVm,
    counter: u32,
    (at, fault, expect): (At, Fault, Expect),
) -> (CaseResult, Option<QemuVm>) {
    let mut slot = Some(vm);
    let mut r = suspend_checks(rig, &mut slot, counter, at, fault, expect).await;
    rig.inj.finish();
    let running = slot.as_mut().map(|vm| vm.state() == VmState::Running);
    let keep = match (slot, running) {
        (Some(vm), Some(false)) => {
            if let Err(e) = dispose(vm).await {
                r = Err(match r {
                    Ok(_) => e,
                    Err(v) => format!("{v}; then {e}"),
                });
            }
            None
        }
        (other, _) => other,
    };
    (r, keep)
}

async fn suspend_checks(
    rig: &Rig,
    slot: &mut Option<QemuVm>,
    counter: u32,
    at: At,
    fault: Fault,
    expect: Expect,
) -> CaseResult {
    let vm = slot.as_mut().expect("a microVM");
    let dir = vm.dir().to_path_buf();
    let pid = vm.pid();
    let record = std::fs::read(dir.join("vm.json")).map_err(|e| e.to_string())?;
    let entries = names(&dir);
    let t0 = tick(vm).await?;
    match at {
        At::Before => rig.inj.strike_now(fault, Some(vm)),
        At::Step(p) => rig.inj.arm(p, fault),
    }
    let result = vm.suspend().await;
    ensure!(rig.inj.finish().is_some(), "{}", not_reached(&result));
    let alive = pid_alive(pid);
    match result {
        Err(e) => {
            let full = chain(&e);
            let e = short(&full);
            let mut found = Found::default();
            found.check(expect.may_fail(), || {
                format!("the suspend failed ({e}); it should have completed")
            });
            found.check(fault != Fault::DiskFull || for_want_of_space(&full), || {
                format!(
                    "the suspend failed, but not for want of space: {}",
                    short(&full)
                )
            });
            let state = vm.state();
            if alive {
                found.check(state == VmState::Running, || {
                    format!(
                        "the suspend failed ({e}) and QEMU {pid} is still there, yet the \
                         microVM is {state} (docs: it is thawed and goes on running)"
                    )
                });
                found.check(expect != Expect::FailGone, || {
                    format!("QEMU {pid} should be gone after this fault")
                });
            } else {
                found.check(matches!(state, VmState::Failed { .. }), || {
                    format!("QEMU {pid} is gone but the microVM is {state}, not failed")
                });
                found.check(
                    !matches!(expect, Expect::FailRunning | Expect::CompleteOrFailRunning),
                    || {
                        format!(
                            "the suspend failed ({e}) after it had itself ended QEMU {pid}, and \
                             removed the generation holding the state it had saved: the \
                             running microVM is lost ({state}) - a failed suspend must never \
                             lose a running microVM"
                        )
                    },
                );
            }
            let now = names(&dir);
            found.check(now == entries, || {
                format!(
                    "the failed suspend changed the microVM's directory: {entries:?} -> {now:?}"
                )
            });
            let now = std::fs::read(dir.join("vm.json")).unwrap_or_default();
            found.check(now == record, || {
                "the failed suspend changed vm.json".to_string()
            });
            let went_on = if alive {
                found.check(vm.pid() == pid, || "another QEMU runs it".to_string());
                found
                    .add(goes_on(vm, counter, t0).await.map_err(|v| {
                        format!("after the fault ended, the guest does not go on: {v}")
                    }))
                    .map(|n| format!("; the guest runs on (count {t0} -> {n})"))
            } else {
                None
            };
            if let (Some(how), false) = (&went_on, state == VmState::Running) {
                found.0.push(format!(
                    "(though its guest does run on and its agent answers again{how}: the \
                     microVM was usable, and is lost only because the engine gave up on it)"
                ));
            }
            found.result(format!(
                "failed ({e}){}",
                went_on.unwrap_or_else(|| format!("; {state}"))
            ))
        }
        Ok(_) => {
            ensure!(
                expect.may_complete(),
                "the suspend completed despite {fault} at {at}; expected: {expect}"
            );
            let state = vm.state();
            ensure!(
                state == VmState::Suspended,
                "a suspended microVM is {state}"
            );
            ensure!(!alive, "QEMU {pid} outlived the suspend");
            let suspended = SuspendedVm::load(&dir)
                .map_err(|e| format!("the suspended microVM does not load: {}", chain(&e)))?;
            *slot = None;
            let vm = rig.backend.resume(suspended).await.map_err(|e| {
                format!(
                    "the suspended microVM does not resume: {}",
                    short(&chain(&e))
                )
            })?;
            let n = goes_on(&vm, counter, t0).await;
            *slot = Some(vm);
            let n = n?;
            Ok(format!("completed; resumed, counting on ({t0} -> {n})"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_faults_in_suspend_leave_the_guest_running() {
    use Expect::*;
    use Fault::*;
    use FaultPoint::*;
    let rig = Rig::new();
    let mut report = Report::new("suspend");
    let (base, counter) = rig.base(MEM_LOOP).await;

    // Clones (their written pages become a memory diff): a fresh one per case.
    let cases = [
        (At::Step(SuspendFrozen), Kill, FailGone),
        (At::Step(SuspendStateSaved), Kill, FailGone),
        (At::Step(SuspendMemorySaved), Kill, Complete),
        (At::Step(SuspendProcessGone), Kill, Complete),
        (At::Step(SuspendFrozen), DiskFull, FailRunning),
        (At::Step(SuspendStateSaved), DiskFull, FailRunning),
        (
            At::Step(SuspendMemorySaved),
            DiskFull,
            CompleteOrFailRunning,
        ),
        (
            At::Step(SuspendProcessGone),
            DiskFull,
            CompleteOrFailRunning,
        ),
        (At::Before, Stall, FailRunning),
        (At::Step(SuspendFrozen), Stall, Complete),
    ];
    for case in cases {
        let vm = rig.clone_of(&base, "susp").await;
        let label = format!("clone  {} at {}", case.1, case.0);
        let (r, left) = suspend_case(&rig, vm, counter, case).await;
        report.add(label, case.2, r);
        if let Some(vm) = left {
            dispose(vm).await.expect("terminate");
        }
    }

    // A cold-booted microVM (own memory mapped shared: no diff), then the
    // same microVM resumed (own memory mapped privately: a diff).
    let cold_cases = [
        ("cold   ", (At::Step(SuspendFrozen), DiskFull, FailRunning)),
        ("cold   ", (At::Step(SuspendStateSaved), Kill, Complete)),
        (
            "resumed",
            (At::Step(SuspendStateSaved), DiskFull, FailRunning),
        ),
        (
            "resumed",
            (
                At::Step(SuspendProcessGone),
                DiskFull,
                CompleteOrFailRunning,
            ),
        ),
    ];
    let (vm, cold_counter) = rig.boot("cold", MEM_LOOP).await;
    preallocate_memory(&vm);
    let mut cold = Some(vm);
    for (kind, case) in cold_cases {
        let Some(vm) = cold.take() else {
            report.add(
                format!("{kind} {} at {}", case.1, case.0),
                case.2,
                Err("not run: an earlier case lost the microVM".into()),
            );
            continue;
        };
        let label = format!("{kind} {} at {}", case.1, case.0);
        let (r, left) = suspend_case(&rig, vm, cold_counter, case).await;
        report.add(label, case.2, r);
        cold = left;
    }
    if let Some(vm) = cold {
        dispose(vm).await.expect("terminate");
    }

    report.finish();
    rig.backend.delete_snapshot(&base).expect("delete the base");
    assert!(rig.snapshots().is_empty() && rig.catalog_junk().is_empty());
    rig.env.assert_no_leftovers();
}

// ---------------------------------------------------------------------------
// Resume

/// Resume `suspended` with `fault` at `point`, check the failed attempt
/// left it exactly as it was, then resume it for real; returns the outcome
/// and the resumed microVM.
async fn resume_case(
    rig: &Rig,
    suspended: SuspendedVm,
    counter: u32,
    t0: u64,
    point: FaultPoint,
    fault: Fault,
) -> (CaseResult, Option<QemuVm>) {
    let mut out = None;
    let r = resume_checks(rig, suspended, counter, t0, point, fault, &mut out).await;
    rig.inj.finish();
    (r, out)
}

async fn resume_checks(
    rig: &Rig,
    suspended: SuspendedVm,
    counter: u32,
    t0: u64,
    point: FaultPoint,
    fault: Fault,
    out: &mut Option<QemuVm>,
) -> CaseResult {
    let dir = suspended.dir.clone();
    let before = Tree::of(&dir);
    let (vms, uids) = (rig.vms(), rig.uids());
    rig.inj.arm(point, fault);
    let result = rig.backend.resume(suspended).await;
    let Some(fired) = rig.inj.finish() else {
        let msg = not_reached(&result);
        if let Ok(vm) = result {
            let _ = dispose(vm).await;
        }
        return Err(msg);
    };
    let full = match &result {
        Err(e) => chain(e),
        Ok(_) => String::new(),
    };
    let e = match result {
        Err(_) => short(&full),
        Ok(mut vm) => {
            let state = vm.state();
            let gens: Vec<String> = names(&dir)
                .into_iter()
                .filter(|n| n.starts_with("gen-"))
                .collect();
            let _ = dispose(vm).await;
            let gens = if gens.is_empty() {
                "deleted".to_string()
            } else {
                format!("{gens:?}")
            };
            return Err(if state == VmState::Running {
                format!("the resume completed despite {fault} at {point:?}")
            } else {
                format!(
                    "the resume reported success though its QEMU was gone before it committed: \
                     the microVM is {state} and its suspended generation is {gens} - neither a \
                     running nor a resumable microVM"
                )
            });
        }
    };
    let mut found = Found::default();
    found.check(fault != Fault::DiskFull || for_want_of_space(&full), || {
        format!(
            "the resume failed, but not for want of space: {}",
            short(&full)
        )
    });
    let (qemu, sup) = (fired.qemu_pid, fired.supervisor_pid);
    found.check(gone(qemu).await && gone(sup).await, || {
        format!("the failed attempt's QEMU {qemu:?} or supervisor {sup:?} lives on")
    });
    found.check(fired.guest_wrote != Some(false), || {
        "the failed attempt's guest did not write to its new disk layer while it ran".into()
    });
    let now = rig.vms();
    found.check(now == vms, || format!("vms/ holds {now:?}, held {vms:?}"));
    let now = rig.uids();
    found.check(now == uids, || {
        format!("uid claims are {now:?}, were {uids:?}")
    });
    let suspended = match SuspendedVm::load(&dir) {
        Ok(s) => s,
        Err(e2) => {
            found.0.insert(
                0,
                format!(
                    "the failed resume ({e}) lost the suspended microVM: {} ({})",
                    chain(&e2),
                    if dir.exists() {
                        "its directory is there"
                    } else {
                        "its directory is gone"
                    }
                ),
            );
            return found.result(String::new());
        }
    };
    let changed = before.diff(&Tree::of(&dir));
    found.check(changed.is_empty(), || {
        format!("the failed resume ({e}) changed the suspended microVM: {changed:?}")
    });

    // The second resume, without a fault: the same guest, disk and memory
    // from the same moment.
    let vm = match rig.backend.resume(suspended).await {
        Ok(vm) => vm,
        Err(e2) => {
            found
                .0
                .push(format!("the second resume failed: {}", chain(&e2)));
            return found.result(String::new());
        }
    };
    let first = counts(&vm).await;
    *out = Some(vm);
    let vm = out.as_ref().expect("just set");
    let Some((m, d)) = found.add(first) else {
        return found.result(String::new());
    };
    found.check(m >= t0, || format!("the count went back from {t0} to {m}"));
    found.check(d <= m && d + 1 >= t0, || {
        format!(
            "right after the resume the root disk says {d} and memory {m} (suspended after \
             {t0}): the disk is not from the suspended moment"
        )
    });
    found.add(goes_on(vm, counter, t0).await);
    let coherent = found.add(disk_matches_memory(vm, counter, t0).await);
    let ran = if fired.guest_wrote == Some(true) {
        "; the failed attempt's guest ran and wrote"
    } else {
        ""
    };
    found.result(format!(
        "failed ({e}); unchanged{ran}; resumed at count {m}, disk {d} (suspended after {t0}); \
         paused: {}",
        coherent.unwrap_or_default()
    ))
}

/// Get rid of a suspended microVM a failed case left: resume and end it.
async fn discard(rig: &Rig, dir: &Path) {
    if let Ok(s) = SuspendedVm::load(dir) {
        if let Ok(vm) = rig.backend.resume(s).await {
            let _ = dispose(vm).await;
        }
    }
}

/// Suspend `vm` for a resume case: the suspended microVM and the count just
/// before.
async fn suspend_for_resume(vm: &mut QemuVm) -> (SuspendedVm, u64) {
    let t0 = tick(vm).await.expect("tick");
    (vm.suspend().await.expect("suspend"), t0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_faults_in_resume_leave_it_resumable_and_never_moved_on() {
    use Fault::*;
    use FaultPoint::*;
    let rig = Rig::new();
    let mut report = Report::new("resume");
    let (base, counter) = rig.base(DISK_LOOP).await;

    // Clones (a memory diff, a pre-started QEMU of the snapshot): a fresh
    // one per case.
    let cases = [
        (ResumeStarted, Kill),
        (ResumeDiskReady, Kill),
        (ResumeMemoryWritten, Kill),
        (ResumeStateLoaded, KillAfterRun),
        (ResumeAgentRestored, KillAfterRun),
        (ResumeStateLoaded, StallAfterRun),
        (ResumeAgentRestored, DiskFull),
    ];
    for (point, fault) in cases {
        let mut vm = rig.clone_of(&base, "res").await;
        let (suspended, t0) = suspend_for_resume(&mut vm).await;
        drop(vm);
        let (r, left) = resume_case(&rig, suspended.clone(), counter, t0, point, fault).await;
        report.add(format!("clone  {fault} at {point:?}"), Expect::Fail, r);
        match left {
            Some(vm) => dispose(vm).await.expect("terminate"),
            None => discard(&rig, &suspended.dir).await,
        }
    }

    // A cold-booted microVM (its own memory file, mapped privately on
    // resume; a new disk layer made by qemu-img): suspended and resumed
    // through several cases.
    let cold_cases = [
        (ResumeStarted, DiskFull),
        (ResumeStateLoaded, KillAfterRun),
        (ResumeAgentRestored, DiskFull),
    ];
    let (mut vm, cold_counter) = rig.boot("cold", DISK_LOOP).await;
    for (point, fault) in cold_cases {
        let (suspended, t0) = suspend_for_resume(&mut vm).await;
        let dir = suspended.dir.clone();
        let (r, left) = resume_case(&rig, suspended, cold_counter, t0, point, fault).await;
        report.add(format!("cold   {fault} at {point:?}"), Expect::Fail, r);
        match left {
            Some(v) => vm = v,
            None => {
                if let Ok(s) = SuspendedVm::load(&dir) {
                    vm = rig.backend.resume(s).await.expect("resume");
                } else {
                    break;
                }
            }
        }
    }
    if vm.state() == VmState::Running {
        dispose(vm).await.expect("terminate");
    } else {
        drop(vm);
    }

    report.finish();
    rig.backend.delete_snapshot(&base).expect("delete the base");
    assert!(rig.snapshots().is_empty() && rig.catalog_junk().is_empty());
    rig.env.assert_no_leftovers();
}

/// A persistent microVM's resume commits by asking its supervisor to
/// linger and writing the Running record. A supervisor that does not answer
/// the linger fails the resume, and the failed resume must leave the
/// suspended record as it was: the microVM stays resumable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_failed_linger_leaves_a_persistent_microvm_resumable() {
    let rig = Rig::new();
    let mut report = Report::new("linger");
    let (base, counter) = rig.base(DISK_LOOP).await;
    let mut vm = rig
        .backend
        .launch(
            &base,
            LaunchSpec {
                id: rig.id("persist"),
                lifetime: Lifetime::Persistent,
                nic: None,
            },
        )
        .await
        .expect("launch");
    let (suspended, t0) = suspend_for_resume(&mut vm).await;
    drop(vm);
    let dir = suspended.dir.clone();
    let (point, fault) = (FaultPoint::ResumeAgentRestored, Fault::Stall);
    let (r, left) = resume_case(&rig, suspended, counter, t0, point, fault).await;
    report.add(
        format!("persistent clone {fault} at {point:?} (the linger fails)"),
        Expect::Fail,
        r,
    );
    match left {
        Some(vm) => dispose(vm).await.expect("terminate"),
        None => discard(&rig, &dir).await,
    }
    report.finish();
    rig.backend.delete_snapshot(&base).expect("delete the base");
    assert!(rig.snapshots().is_empty() && rig.catalog_junk().is_empty());
    rig.env.assert_no_leftovers();
}

// ---------------------------------------------------------------------------
// Launch and boot

enum Make<'a> {
    Launch { snap: &'a Snapshot, pooled: bool },
    Boot,
}

async fn launch_checks(
    rig: &Rig,
    make: Make<'_>,
    at: At,
    fault: Fault,
    expect: Expect,
) -> CaseResult {
    let snap = match &make {
        Make::Launch { snap, pooled } => {
            if *pooled {
                rig.backend.prestart(snap, 1).await.map_err(|e| chain(&e))?;
            }
            Some(*snap)
        }
        Make::Boot => None,
    };
    match at {
        At::Before => rig.inj.strike_now(fault, None),
        At::Step(p) => rig.inj.arm(p, fault),
    }
    let result = match &make {
        Make::Launch { snap, .. } => {
            rig.backend
                .launch(snap, LaunchSpec::ephemeral(rig.id("launch")))
                .await
        }
        Make::Boot => {
            let id = rig.id("boot");
            rig.backend
                .boot(rig.env.boot_spec(id.as_str(), Some("debian-12-minimal")))
                .await
        }
    };
    let Some(fired) = rig.inj.finish() else {
        let msg = not_reached(&result);
        if let Ok(vm) = result {
            let _ = dispose(vm).await;
        }
        return Err(msg);
    };
    let outcome = match result {
        Err(e) => {
            let full = chain(&e);
            ensure!(expect.may_fail(), "failed: {}", short(&full));
            ensure!(
                fault != Fault::DiskFull || for_want_of_space(&full),
                "failed, but not for want of space: {}",
                short(&full)
            );
            format!("failed ({})", short(&full))
        }
        Ok(mut vm) => {
            let state = vm.state();
            ensure!(
                expect.may_complete(),
                "succeeded despite {fault} at {at} (the microVM is {state})"
            );
            ensure!(
                matches!(state, VmState::Failed { .. }),
                "succeeded with its QEMU killed, yet the microVM is {state}"
            );
            dispose(vm).await?;
            format!("returned a microVM already {state}; terminated")
        }
    };
    let mut found = Found::default();
    let (qemu, sup) = (fired.qemu_pid, fired.supervisor_pid);
    found.check(gone(qemu).await && gone(sup).await, || {
        format!("its QEMU {qemu:?} or supervisor {sup:?} lives on")
    });
    let vms = rig.vms();
    found.check(vms.is_empty(), || format!("left in vms/: {vms:?}"));
    let uids = rig.uids();
    found.check(uids.is_empty(), || format!("uid claims left: {uids:?}"));
    if let Some(snap) = snap {
        let refs = rig.backend.catalog().refs(&snap.id);
        found.check(refs.is_empty(), || {
            format!("the snapshot still names {refs:?} as dependents")
        });
        found.check(rig.backend.pooled(snap) == 0, || {
            "the waiting QEMU was not used".into()
        });
    }
    let junk = rig.catalog_junk();
    found.check(junk.is_empty(), || format!("catalog junk: {junk:?}"));
    let r = found.result(format!("{outcome}; nothing left"));
    r.map_err(|v| format!("{outcome}, but {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_faults_in_launch_leave_nothing() {
    use Expect::*;
    use Fault::*;
    use FaultPoint::*;
    let rig = Rig::new();
    let mut report = Report::new("launch");
    let (base, counter) = rig.base(MEM_LOOP).await;

    let cases = [
        (At::Step(ResumeStarted), Kill, false, Fail),
        (At::Step(ResumeDiskReady), Kill, false, Fail),
        (At::Step(ResumeMemoryWritten), Kill, false, Fail),
        (At::Step(ResumeStateLoaded), Kill, false, Fail),
        (At::Step(ResumeAgentRestored), Kill, false, Either),
        (At::Step(ResumeStateLoaded), Stall, false, Fail),
        (At::Step(ResumeAgentRestored), DiskFull, false, Fail),
        (At::Before, DiskFull, false, Fail),
        (At::Step(ResumeStarted), Kill, true, Fail),
    ];
    for (at, fault, pooled, expect) in cases {
        let label = format!(
            "launch {fault} at {at}{}",
            if pooled { " (pre-started QEMU)" } else { "" }
        );
        let r = launch_checks(
            &rig,
            Make::Launch {
                snap: &base,
                pooled,
            },
            at,
            fault,
            expect,
        )
        .await;
        rig.inj.finish();
        report.add(label, expect, r);
        sweep(&rig, &base);
    }
    let r = launch_checks(&rig, Make::Boot, At::Before, DiskFull, Fail).await;
    rig.inj.finish();
    report.add(format!("boot   {DiskFull} at {}", At::Before), Fail, r);
    sweep(&rig, &base);

    // The catalog and the backend still work.
    let vm = rig.clone_of(&base, "after").await;
    goes_on(&vm, counter, 0)
        .await
        .expect("a clone after the faults counts on");
    dispose(vm).await.expect("terminate");
    report.finish();
    rig.backend.delete_snapshot(&base).expect("delete the base");
    assert!(rig.snapshots().is_empty() && rig.catalog_junk().is_empty());
    rig.env.assert_no_leftovers();
}

/// Remove what a failed launch case left (already reported), so the next
/// case starts clean: no microVM runs between launch cases.
fn sweep(rig: &Rig, snap: &Snapshot) {
    for n in rig.vms() {
        let _ = std::fs::remove_dir_all(rig.state().join("vms").join(n));
    }
    for n in rig.uids() {
        let _ = std::fs::remove_file(rig.state().join("uids").join(n));
    }
    rig.backend.catalog().prune(&snap.id);
}
