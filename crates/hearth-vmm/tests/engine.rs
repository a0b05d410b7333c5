//! End-to-end tests of the VM engine: real QEMU microVMs booting the Debian
//! kernel, the Hearth initramfs and agent, and a Debian root disk.

mod support;

use std::time::Duration;

use hearth_proto::ExecRequest;
use hearth_vmm::{LaunchSpec, MicroVm, Snapshot, SnapshotMode, VmBackend, VmId, VmState};
use support::*;

/// Boot a Debian guest, start the counter, and snapshot it (the source ends).
/// Returns the snapshot, the counter's PID and its count at the snapshot.
async fn counting_snapshot(env: &Env, name: &str) -> (Snapshot, u32, u64) {
    let mut src = env
        .backend
        .boot(env.boot_spec(name, Some("debian-12-minimal")))
        .await
        .expect("boot");
    let pid = start_counter(&src).await;
    let at_snapshot = counter(&src).await;
    let snap = src.snapshot(SnapshotMode::Consume).await.expect("snapshot");
    (snap, pid, at_snapshot)
}

#[tokio::test]
async fn e2e_boot_and_run_uname() {
    let env = env();
    let mut vm = env
        .backend
        .boot(env.boot_spec("boot-uname", Some("debian-12-minimal")))
        .await
        .expect("boot");
    assert_eq!(vm.state(), VmState::Running);
    let out = vm.agent().run(&["uname", "-a"], T).await.unwrap();
    assert!(out.status.success());
    let text = out.stdout_str();
    assert!(text.starts_with("Linux boot-uname "), "{text}");
    assert!(text.contains(&env.manifest.kernel.release), "{text}");
    let out = vm
        .agent()
        .run(&["/bin/sh", "-c", "echo oops >&2; exit 7"], T)
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(7));
    assert_eq!(out.stderr, b"oops\n");
    // The root disk is the Debian image, mounted read-write.
    assert_eq!(
        sh(&vm, ". /etc/os-release; echo $VERSION_CODENAME").await,
        "bookworm"
    );
    let pid = vm.pid();
    vm.terminate().await.unwrap();
    assert!(!pid_alive(pid));
    env.assert_no_leftovers();
}

#[tokio::test]
async fn e2e_snapshot_and_two_clones_diverge() {
    let env = env();
    let (snap, counter_pid, at_snapshot) = counting_snapshot(&env, "snap-src").await;
    assert!(snap.record.memory_allocated_bytes > 0);
    assert!(env
        .backend
        .catalog()
        .dir(&snap.id)
        .join("snapshot.json")
        .is_file());

    let a = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("clone-a").unwrap()))
        .await
        .expect("clone a");
    let b = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("clone-b").unwrap()))
        .await
        .expect("clone b");
    for vm in [&a, &b] {
        // The same process, with its in-memory count, goes on in both.
        assert_eq!(
            sh(vm, &format!("kill -0 {counter_pid} && echo alive")).await,
            "alive"
        );
        let c = wait_counter_above(vm, at_snapshot).await;
        assert!(
            c > at_snapshot,
            "{} restarted counting: {c} <= {at_snapshot}",
            vm.id()
        );
        assert_eq!(sh(vm, "cat /root/disk-file").await, "seed");
    }
    // Diverge: disk and memory.
    sh(
        &a,
        "echo from-a > /root/disk-file && echo a > /run/only-here && sync",
    )
    .await;
    sh(&b, "echo from-b > /root/disk-file && sync").await;
    assert_eq!(sh(&a, "cat /root/disk-file").await, "from-a");
    assert_eq!(sh(&b, "cat /root/disk-file").await, "from-b");
    assert_eq!(
        sh(&b, "cat /run/only-here 2>/dev/null || echo absent").await,
        "absent"
    );
    a.terminate().await.unwrap();

    // The snapshot itself is untouched: a later clone sees the original state.
    let c = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("clone-c").unwrap()))
        .await
        .expect("clone c");
    assert_eq!(sh(&c, "cat /root/disk-file").await, "seed");
    assert_eq!(
        sh(&c, "cat /run/only-here 2>/dev/null || echo absent").await,
        "absent"
    );
    assert!(counter(&c).await >= at_snapshot);
    assert_eq!(sh(&b, "cat /root/disk-file").await, "from-b");
    b.terminate().await.unwrap();
    c.terminate().await.unwrap();
    env.assert_no_leftovers();
    env.backend.delete_snapshot(&snap).unwrap();
}

#[tokio::test]
async fn e2e_suspend_resume_keeps_process_and_clock() {
    let env = env();
    let vm = env
        .backend
        .boot(env.boot_spec("susp", Some("debian-12-minimal")))
        .await
        .expect("boot");
    let pid = start_counter(&vm).await;
    let before = counter(&vm).await;
    let mut vm = vm;
    let suspended = vm.suspend().await.expect("suspend");
    assert_eq!(vm.state(), VmState::Suspended);
    drop(vm);
    assert!(suspended.dir.join("gen-1/devstate").is_file());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let vm = env.backend.resume(suspended).await.expect("resume");
    // Right after resume the guest clock matches the host.
    let t0 = host_now_secs();
    let guest: f64 = sh(&vm, "date +%s.%N").await.parse().unwrap();
    let t1 = host_now_secs();
    let skew = (guest - (t0 + t1) / 2.0).abs();
    assert!(
        skew < 1.0,
        "guest clock off by {skew:.3} s after resume (round trip {:.3} s)",
        t1 - t0
    );
    // Same process, same count, still counting.
    assert_eq!(
        sh(&vm, &format!("kill -0 {pid} && echo alive")).await,
        "alive"
    );
    let after = wait_counter_above(&vm, before).await;
    assert!(after > before);
    assert!(
        after < before + 100,
        "counter jumped from {before} to {after}: the guest ran while suspended?"
    );
    vm.terminate().await.unwrap();
    env.assert_no_leftovers();
}

#[tokio::test]
async fn e2e_clone_suspend_resume_uses_a_memory_diff() {
    let env = env();
    let (snap, pid, _) = counting_snapshot(&env, "diff-src").await;
    let clone = env
        .backend
        .launch(
            &snap,
            LaunchSpec::ephemeral(VmId::new("diff-clone").unwrap()),
        )
        .await
        .unwrap();
    // Dirty some guest memory (tmpfs) the image does not have.
    sh(
        &clone,
        "head -c 8388608 /dev/urandom > /run/blob && md5sum /run/blob > /run/blob.md5",
    )
    .await;
    let before = counter(&clone).await;
    let mut clone = clone;
    let suspended = clone.suspend().await.expect("suspend clone");
    let diff = std::fs::metadata(suspended.dir.join("gen-1/memory.diff.json"))
        .expect("a clone suspends to a diff");
    assert!(diff.len() > 0);
    assert!(
        !suspended.dir.join("memory").exists(),
        "a clone must not copy its whole memory"
    );
    let vm = env.backend.resume(suspended).await.expect("resume clone");
    assert_eq!(
        sh(&vm, "md5sum -c /run/blob.md5 >/dev/null && echo ok").await,
        "ok"
    );
    assert_eq!(
        sh(&vm, &format!("kill -0 {pid} && echo alive")).await,
        "alive"
    );
    assert!(wait_counter_above(&vm, before).await > before);
    // And once more: a resumed clone suspends and resumes again.
    let vm = env
        .backend
        .resume({
            let mut vm = vm;
            vm.suspend().await.expect("suspend again")
        })
        .await
        .expect("resume again");
    assert_eq!(
        sh(&vm, "md5sum -c /run/blob.md5 >/dev/null && echo ok").await,
        "ok"
    );
    // A third suspend folds the top of its three own disk layers down
    // (qemu-img commit after the suspend committed): two are left, the
    // folded one is gone, and the disk holds what the guest wrote.
    sh(&vm, "echo folded > /root/fold && sync").await;
    let own = vm.record().disk.clone().unwrap();
    let own: Vec<String> = own.own_files().iter().map(|s| s.to_string()).collect();
    assert_eq!(own.len(), 3, "{own:?}");
    let suspended = {
        let mut vm = vm;
        vm.suspend().await.expect("suspend a third time")
    };
    let kept = suspended.record.disk.clone().unwrap();
    assert_eq!(
        kept.own_files(),
        own[..2].to_vec(),
        "the top layer was not folded"
    );
    assert!(!suspended.dir.join(&own[2]).exists());
    let vm = env
        .backend
        .resume(suspended)
        .await
        .expect("resume a third time");
    assert_eq!(sh(&vm, "cat /root/fold").await, "folded");
    vm.terminate().await.unwrap();
    env.assert_no_leftovers();
    env.backend.delete_snapshot(&snap).unwrap();
}

#[tokio::test]
async fn e2e_clones_get_their_own_entropy_and_identity() {
    let env = env();
    let (snap, _, _) = counting_snapshot(&env, "ident-src").await;
    let a = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("ident-a").unwrap()))
        .await
        .unwrap();
    // b comes from a QEMU pre-started for the snapshot.
    env.backend.prestart(&snap, 1).await.expect("prestart");
    assert_eq!(env.backend.pooled(&snap), 1);
    let b = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("ident-b").unwrap()))
        .await
        .unwrap();
    assert_eq!(env.backend.pooled(&snap), 0);
    let read = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let (ra, rb) = (sh(&a, read).await, sh(&b, read).await);
    assert_eq!(ra.len(), 64);
    assert_ne!(ra, rb, "two clones produced the same random bytes");
    assert_eq!(sh(&a, "hostname").await, "ident-a");
    assert_eq!(sh(&b, "hostname").await, "ident-b");
    a.terminate().await.unwrap();
    b.terminate().await.unwrap();
    // A waiting QEMU that is never used goes away with the pool, files and all.
    env.backend.prestart(&snap, 1).await.expect("prestart");
    env.backend.drain_pool(&snap);
    env.backend.delete_snapshot(&snap).unwrap();
    env.assert_no_leftovers();
}

/// `cargo build` makes a dynamically linked agent; setup accepts it by
/// putting its loader and libraries into the initramfs, and it runs as PID 1.
#[tokio::test]
async fn e2e_a_dynamically_linked_agent_boots() {
    let env = env();
    let exe = std::env::current_exe().unwrap();
    let agent = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("hearth-agent"))
        .filter(|p| p.is_file())
        .expect("the workspace's hearth-agent binary (built with the workspace's tests)");
    let bytes = std::fs::read(&agent).unwrap();
    assert!(
        matches!(
            hearth_artifacts::elf::executable_linkage(&bytes).unwrap(),
            hearth_artifacts::elf::Linkage::Dynamic { .. }
        ),
        "{} is static; this test is about a dynamic one",
        agent.display()
    );
    let initramfs = env.state.path().join("dynamic.cpio");
    hearth_artifacts::initramfs::write_for_agent(&agent, &env.manifest, &initramfs)
        .expect("initramfs for a dynamic agent");
    let mut spec = env.boot_spec("dyn-agent", Some("debian-12-minimal"));
    spec.initramfs = initramfs;
    let vm = env.backend.boot(spec).await.expect("boot");
    assert_eq!(vm.agent().version(), Some(hearth_proto::PROTO_VERSION));
    assert_eq!(sh(&vm, "cat /proc/1/comm").await, "init");
    assert_eq!(
        sh(&vm, "echo hi from $(hostname)").await,
        "hi from dyn-agent"
    );
    vm.terminate().await.unwrap();
    env.assert_no_leftovers();
}

/// Protocol 2 in a real guest: a PTY shell sized and resized, a named
/// supervised process whose output is attached again after a restore, a
/// file written with the default mode, and a clean power-off.
#[tokio::test]
async fn e2e_pty_attach_and_power_off_in_a_real_guest() {
    use hearth_proto::PtySize;
    use hearth_vmm::agent::StreamEvent;
    let env = env();
    let mut src = env
        .backend
        .boot(env.boot_spec("v2-src", Some("debian-12-minimal")))
        .await
        .expect("boot");
    // A named app that writes a line every 100 ms.
    src.agent()
        .exec(
            ExecRequest {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done".into(),
                ],
                name: Some("app".into()),
                ..Default::default()
            },
            T,
        )
        .await
        .expect("start the app");
    src.agent()
        .write_file("/root/defaults", b"x", None, T)
        .await
        .unwrap();
    assert_eq!(sh(&src, "stat -c %a /root/defaults").await, "644");
    let snap = src.snapshot(SnapshotMode::Consume).await.expect("snapshot");
    assert_eq!(snap.record.requirements.agent_protocol, 2);

    let clone = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("v2-clone").unwrap()))
        .await
        .expect("launch");
    // The app kept running in the clone; its output is reachable again.
    let mut app = clone.agent().attach("app", T).await.expect("attach");
    assert!(app.pid.is_some());
    let mut lines = String::new();
    while lines.matches("tick").count() < 3 {
        match tokio::time::timeout(T, app.events.recv()).await.unwrap() {
            Some(StreamEvent::Output { data, .. }) => {
                lines.push_str(&String::from_utf8_lossy(&data))
            }
            other => panic!("unexpected {other:?} after {lines:?}"),
        }
    }
    // A PTY shell: its size, a resize seen by `stty size`, its exit code.
    let mut shell = clone
        .agent()
        .exec(
            ExecRequest {
                argv: vec!["/bin/sh".into()],
                pty: Some(PtySize { cols: 80, rows: 24 }),
                ..Default::default()
            },
            T,
        )
        .await
        .expect("pty");
    shell
        .resize(
            PtySize {
                cols: 132,
                rows: 43,
            },
            T,
        )
        .await
        .unwrap();
    shell
        .write_stdin(b"stty size; tty; exit 7\n")
        .await
        .unwrap();
    let out = shell.wait_output().await.unwrap();
    let text = out.stdout_str();
    assert!(text.contains("43 132"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(out.status.code, Some(7));
    // A clean power-off ends QEMU on its own, as soon as the guest's
    // processes are gone (the app and the shell end on SIGTERM at once).
    let pid = clone.pid();
    let t0 = std::time::Instant::now();
    clone.power_off(T).await.expect("power off");
    assert!(!pid_alive(pid));
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "the power-off took {took:?}: the agent waited out its SIGTERM grace period"
    );
    env.backend.delete_snapshot(&snap).unwrap();
    env.assert_no_leftovers();
}
