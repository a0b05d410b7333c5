//! End-to-end: the snapshot catalog with real microVMs. Dependents keep a
//! snapshot from being deleted; a restore on a host that differs from the
//! snapshot's record is refused with the reason; the state directory can
//! move; a clone adopted by a new backend still suspends and snapshots; a
//! resumed microVM started in a pre-started QEMU writes to its own disk
//! layers and nobody else's.

mod support;

use std::path::Path;

use hearth_vmm::LaunchSpec;
use hearth_vmm::{
    Lifetime, MicroVm, QemuBackend, QemuConfig, SnapshotMode, VmBackend, VmError, VmId,
};
use support::*;

fn launch_spec(id: &str) -> LaunchSpec {
    LaunchSpec {
        id: VmId::new(id).unwrap(),
        lifetime: Lifetime::Process,
        nic: None,
    }
}

#[tokio::test]
async fn e2e_snapshots_are_kept_while_used_and_refused_where_they_cannot_restore() {
    let env = env();
    let mut src = env
        .backend
        .boot(env.boot_spec("cat-src", Some("debian-12-minimal")))
        .await
        .expect("boot");
    let snap = src.snapshot(SnapshotMode::Consume).await.expect("snapshot");
    drop(src);
    assert_eq!(env.backend.catalog().list(), vec![snap.clone()]);

    // A running clone and a suspended one keep the snapshot.
    let running = env
        .backend
        .launch(&snap, launch_spec("cat-a"))
        .await
        .unwrap();
    let mut b = env
        .backend
        .launch(&snap, launch_spec("cat-b"))
        .await
        .unwrap();
    let suspended = b.suspend().await.unwrap();
    drop(b);
    env.backend.prestart(&snap, 1).await.unwrap();
    let err = env.backend.delete_snapshot(&snap).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VmError::InUse { .. }), "{msg}");
    assert_eq!(
        env.backend.pooled(&snap),
        1,
        "a refused delete stopped the snapshot's waiting QEMU"
    );
    assert!(
        msg.contains("microVM cat-a") && msg.contains("microVM cat-b"),
        "{msg}"
    );
    running.terminate().await.unwrap();
    let err = env.backend.delete_snapshot(&snap).unwrap_err().to_string();
    assert!(err.contains("cat-b") && !err.contains("cat-a"), "{err}");

    // A launch through a waiting QEMU hands its uid claim over to the new
    // microVM: when that cannot be recorded, the launch fails and leaves
    // nothing (a claim still naming the waiting QEMU's directory would be
    // released by the next gc while the microVM runs as that uid).
    env.backend.prestart(&snap, 1).await.unwrap();
    let uids = env.state.path().join("uids");
    let pooled_claim = std::fs::read_dir(&uids)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .starts_with("pool-")
        })
        .expect("the waiting QEMU's uid claim");
    std::fs::remove_file(&pooled_claim).unwrap();
    std::fs::create_dir(&pooled_claim).unwrap(); // unwritable as a file
    let err = env
        .backend
        .launch(&snap, launch_spec("cat-d"))
        .await
        .err()
        .expect("a launch whose uid claim cannot be handed over fails");
    assert!(err.to_string().contains("uid"), "{err}");
    assert!(!env.state.path().join("vms/cat-d").exists());
    assert_eq!(env.backend.pooled(&snap), 0);
    std::fs::remove_dir(&pooled_claim).unwrap();
    let left: Vec<String> = std::fs::read_dir(env.state.path().join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["cat-b"], "the failed launch left files");

    // A snapshot recorded for another host is refused with the reason.
    let record = env.backend.catalog().dir(&snap.id).join("snapshot.json");
    let original = std::fs::read(&record).unwrap();
    for (field, value, expect) in [
        ("accelerator", "kvm-elsewhere", "kvm-elsewhere"),
        ("backend_version", "10.0.2", "QEMU 10.0.2"),
        ("machine", "pc-q35-7.2", "pc-q35-7.2"),
    ] {
        let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
        v["requirements"][field] = value.into();
        std::fs::write(&record, v.to_string()).unwrap();
        let tampered = env.backend.catalog().get(&snap.id).unwrap();
        let err = env
            .backend
            .launch(&tampered, launch_spec("cat-c"))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(&err, VmError::Incompatible { reason, .. } if reason.contains(expect)),
            "{field}: {err}"
        );
        assert!(!env.state.path().join("vms/cat-c").exists());
    }
    // A suspended microVM recorded for another agent protocol is refused too.
    let vm_record = suspended.dir.join("vm.json");
    let vm_original = std::fs::read(&vm_record).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&vm_original).unwrap();
    v["requirements"]["agent_protocol"] = 9.into();
    std::fs::write(&vm_record, v.to_string()).unwrap();
    let err = env
        .backend
        .resume(hearth_vmm::SuspendedVm::load(&suspended.dir).unwrap())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("protocol 9"), "{err}");
    std::fs::write(&vm_record, vm_original).unwrap();
    std::fs::write(&record, original).unwrap();

    let b = env.backend.resume(suspended).await.expect("resume");
    b.terminate().await.unwrap();
    env.backend.delete_snapshot(&snap).unwrap();
    assert!(env.backend.catalog().list().is_empty());
    env.assert_no_leftovers();
}

#[tokio::test]
async fn e2e_the_state_directory_can_move() {
    let env = env();
    let mut src = env
        .backend
        .boot(env.boot_spec("move-src", Some("debian-12-minimal")))
        .await
        .expect("boot");
    let snap = src.snapshot(SnapshotMode::Consume).await.unwrap();
    drop(src);
    let mut clone = env
        .backend
        .launch(&snap, launch_spec("move-a"))
        .await
        .unwrap();
    sh(&clone, "echo before-the-move > /root/note && sync").await;
    let suspended = clone.suspend().await.unwrap();
    drop(clone);
    let id = snap.id.clone();
    let accel = env.backend.config().accel;
    drop(suspended);

    // Move the whole state directory; a backend on the new place finds it all.
    let moved = tempfile::Builder::new()
        .prefix("hearth-e2e-moved-")
        .tempdir()
        .unwrap();
    let new_state = moved.path().join("state");
    std::fs::rename(env.state.path(), &new_state).unwrap();
    std::fs::create_dir(env.state.path()).unwrap(); // for the guard's cleanup
    let backend = QemuBackend::new(QemuConfig::new(new_state.clone(), accel)).unwrap();
    let snap = backend.catalog().get(&id).expect("the snapshot, by id");
    let found = backend.adopt().await.unwrap();
    assert_eq!(found.suspended.len(), 1);
    let resumed = backend
        .resume(found.suspended.into_iter().next().unwrap())
        .await
        .expect("resume after the move");
    assert_eq!(sh(&resumed, "cat /root/note").await, "before-the-move");
    let fresh = backend.launch(&snap, launch_spec("move-b")).await.unwrap();
    assert_eq!(
        sh(&fresh, "cat /root/note 2>/dev/null || echo none").await,
        "none"
    );
    resumed.terminate().await.unwrap();
    fresh.terminate().await.unwrap();
    backend.delete_snapshot(&snap).unwrap();
    for sub in ["vms", "uids"] {
        let left: Vec<_> = std::fs::read_dir(new_state.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
}

/// A persistent clone outlives the backend that launched it; the backend
/// that adopts it must still know its memory base (the snapshot's memory
/// file, found again through QEMU's open RAM fd) to suspend it as a diff.
#[tokio::test]
async fn e2e_an_adopted_clone_suspends_and_resumes() {
    let env = env();
    let mut src = env
        .backend
        .boot(env.boot_spec("adopt-src", Some("debian-12-minimal")))
        .await
        .expect("boot");
    let snap = src.snapshot(SnapshotMode::Consume).await.unwrap();
    drop(src);
    let clone = env
        .backend
        .launch(
            &snap,
            LaunchSpec {
                id: VmId::new("adopt-clone").unwrap(),
                lifetime: Lifetime::Persistent,
                nic: None,
            },
        )
        .await
        .unwrap();
    sh(&clone, "echo kept-in-memory > /run/note").await;
    let pid = clone.pid();
    drop(clone); // persistent: the QEMU keeps running

    let backend = QemuBackend::new(QemuConfig::new(
        env.state.path().to_path_buf(),
        env.backend.config().accel,
    ))
    .unwrap();
    let found = backend.adopt().await.unwrap();
    assert!(
        found.busy.is_empty() && found.lost.is_empty(),
        "{:?} {:?}",
        found.busy,
        found.lost
    );
    let mut adopted = found
        .running
        .into_iter()
        .next()
        .expect("the clone, adopted");
    assert_eq!(adopted.pid(), pid);
    let suspended = adopted.suspend().await.expect("an adopted clone suspends");
    drop(adopted);
    let resumed = backend.resume(suspended).await.expect("resume");
    assert_eq!(sh(&resumed, "cat /run/note").await, "kept-in-memory");
    resumed.terminate().await.unwrap();
    backend.delete_snapshot(&snap).unwrap();
    env.assert_no_leftovers();
}

/// The benchmarks' baseline (a whole-RAM migration stream restored into a
/// waiting QEMU) is a microVM like the others: it answers, its QEMU's files
/// follow it into its directory, and terminating it leaves nothing.
#[tokio::test]
async fn e2e_a_full_ram_restore_becomes_a_whole_microvm() {
    let env = env();
    let plain = env
        .backend
        .boot_with(env.boot_spec("full-src", Some("debian-12-minimal")), true)
        .await
        .expect("boot with anonymous RAM");
    sh(&plain, "echo kept > /run/note").await;
    let work = tempfile::tempdir().unwrap();
    let full = plain
        .save_full_ram(&work.path().join("full.mig"))
        .await
        .expect("save");
    let waiting = env
        .backend
        .prestart_full_ram(&full)
        .await
        .expect("prestart");
    let vm = env
        .backend
        .restore_full_ram(waiting, &full, VmId::new("full-dst").unwrap())
        .await
        .expect("restore");
    assert_eq!(
        sh(&vm, "cat /run/note; echo console-mark > /dev/console").await,
        "kept"
    );
    // Its QEMU's files (console log, sockets) followed it into its
    // directory, and it reads them there: what the guest just wrote to its
    // console is in the log it finds (the supervisor writes it there within
    // moments).
    for _ in 0..50 {
        if vm.console_tail().contains("console-mark") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        vm.console_tail().contains("console-mark"),
        "console: {:?}",
        vm.console_tail()
    );
    vm.terminate().await.unwrap();
    env.assert_no_leftovers();
}

/// Every open file of QEMU `pid` that is a disk layer, with whether it is
/// open for writing.
fn qemu_disk_files(pid: u32) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy().into_owned();
        if !(t.ends_with(".qcow2") || t.ends_with(".ext4")) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        out.push((t, flags & libc::O_ACCMODE as u32 != 0));
    }
    out
}

fn under(path: &str, dir: &Path) -> bool {
    Path::new(path).starts_with(dir)
}

#[tokio::test]
async fn e2e_a_resume_in_a_prestarted_qemu_writes_only_its_own_layers() {
    let env = env();
    let mut src = env
        .backend
        .boot(env.boot_spec("iso-src", Some("debian-12-minimal")))
        .await
        .expect("boot");
    let snap = src.snapshot(SnapshotMode::Consume).await.unwrap();
    drop(src);
    env.backend.prestart(&snap, 2).await.unwrap();
    let mut a = env
        .backend
        .launch(&snap, launch_spec("iso-a"))
        .await
        .unwrap();
    let b = env
        .backend
        .launch(&snap, launch_spec("iso-b"))
        .await
        .unwrap();
    sh(&a, "echo a1 > /root/who && sync").await;
    sh(&b, "echo b1 > /root/who && sync").await;
    let suspended = a.suspend().await.unwrap();
    drop(a);
    let a_dir = suspended.dir.clone();

    // The next resume goes through a waiting QEMU started for the snapshot.
    env.backend.prestart(&snap, 1).await.unwrap();
    assert_eq!(env.backend.pooled(&snap), 1);
    let a = env.backend.resume(suspended).await.unwrap();
    assert_eq!(
        env.backend.pooled(&snap),
        0,
        "the resume took the waiting QEMU"
    );
    assert_eq!(sh(&a, "cat /root/who").await, "a1");
    sh(
        &a,
        "echo a2 > /root/who && dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null && sync",
    )
    .await;
    assert_eq!(
        sh(&b, "cat /root/who; ls /root/big 2>/dev/null || true").await,
        "b1"
    );

    // What QEMU writes is in the microVM's own directory, and only there;
    // everything else it holds is open read-only.
    let snapshots = env.state.path().join("snapshots");
    for (vm, dir) in [
        (&a, a_dir.clone()),
        (&b, env.state.path().join("vms/iso-b")),
    ] {
        let files = qemu_disk_files(vm.pid());
        assert!(!files.is_empty());
        for (path, writable) in &files {
            if *writable {
                assert!(under(path, &dir), "{} writes {path}", vm.id());
            } else {
                assert!(
                    under(path, &dir) || under(path, &snapshots) || path.ends_with(".ext4"),
                    "{} reads {path}",
                    vm.id()
                );
            }
        }
        assert!(files.iter().any(|(_, w)| *w), "{} writes no layer", vm.id());
    }
    // a's writes after the resume went to a layer of its own created for it.
    let rec = a.record().disk.clone().unwrap();
    let own = rec.own_files();
    assert_eq!(own.len(), 2, "{own:?}");
    let top = a_dir.join(own[1]);
    assert!(
        std::fs::metadata(&top).unwrap().len() > 8 << 20,
        "the top layer holds the 8 MiB"
    );
    let b_layers = b.record().disk.clone().unwrap();
    let b_top = env
        .state
        .path()
        .join("vms/iso-b")
        .join(b_layers.own_files()[0]);
    assert!(std::fs::metadata(&b_top).unwrap().len() < 8 << 20);
    a.terminate().await.unwrap();
    b.terminate().await.unwrap();
    env.backend.delete_snapshot(&snap).unwrap();
    env.assert_no_leftovers();
}
