//! `hearth demo`: the engine's reference scenario, narrated with timings.
//!
//! Boots a Python guest, starts a process that counts in memory, snapshots
//! it, launches two clones that carry on from the same count, suspends one
//! and resumes it. Runs on the CLI's Tokio runtime.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hearth_proto::ExecRequest;
use hearth_vmm::{LaunchSpec, Lifetime, MicroVm, QemuVm, SnapshotMode, VmBackend, VmId};

use crate::Global;

const T: Duration = Duration::from_secs(120);

async fn sh(vm: &QemuVm, script: &str) -> Result<String> {
    let out = vm.agent().run(&["/bin/sh", "-c", script], T).await?;
    ensure!(
        out.status.success(),
        "`{script}` failed in {}: {}",
        vm.id(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout_str().trim().to_string())
}

fn step(msg: &str, t: Instant) {
    println!("  {:>8.1} ms  {msg}", t.elapsed().as_secs_f64() * 1000.0);
}

pub async fn run(g: &Global) -> Result<()> {
    let backend = g.backend()?;
    let tag = format!("{:06x}", rand_tag());
    println!(
        "Hearth engine demo (accelerator: {})",
        backend.config().accel
    );

    let t = Instant::now();
    let spec = g.boot_spec(
        VmId::new(format!("demo-{tag}"))?,
        Some("debian-12-python"),
        512,
        1,
        Lifetime::Process,
    )?;
    let mut vm = backend.boot(spec).await.context("cold boot")?;
    step(
        &format!(
            "cold boot of {} to agent-ready (QEMU pid {})",
            vm.id(),
            vm.pid()
        ),
        t,
    );
    println!(
        "             {}",
        sh(&vm, "uname -sr; python3 --version")
            .await?
            .replace('\n', ", ")
    );

    vm.agent()
        .exec(
            ExecRequest {
                argv: vec![
                    "python3".into(),
                    "-c".into(),
                    "import time\nn=0\nwhile True:\n n+=1\n open('/run/count','w').write(str(n))\n time.sleep(0.1)"
                        .into(),
                ],
                ..Default::default()
            },
            T,
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sh(
        &vm,
        "echo 'written before the snapshot' > /root/note.txt && sync",
    )
    .await?;
    println!(
        "             started a Python counter; count = {}",
        sh(&vm, "cat /run/count").await?
    );

    let t = Instant::now();
    let snap = vm
        .snapshot(SnapshotMode::Consume)
        .await
        .context("snapshot")?;
    step(
        &format!(
            "snapshot {}: {:.1} MiB of memory, {} KiB device state, {:.1} MiB disk layer",
            snap.id,
            snap.record.memory_allocated_bytes as f64 / 1048576.0,
            snap.record.devstate_bytes / 1024,
            snap.record.disk_bytes as f64 / 1048576.0
        ),
        t,
    );
    drop(vm);

    // Production keeps QEMUs waiting for a snapshot's state, so that a launch
    // only loads device state and restores the agent.
    let t = Instant::now();
    backend
        .prestart(&snap, 2)
        .await
        .context("pre-start QEMUs")?;
    step(
        "pre-started 2 QEMUs waiting for the snapshot (off the launch path)",
        t,
    );
    let mut clones = Vec::new();
    for name in ["a", "b"] {
        let t = Instant::now();
        let c = backend
            .launch(
                &snap,
                LaunchSpec::ephemeral(VmId::new(format!("demo-{tag}-{name}"))?),
            )
            .await?;
        step(
            &format!("clone {} launched from the snapshot to agent-ready", c.id()),
            t,
        );
        clones.push(c);
    }
    for c in &clones {
        println!(
            "             {}: hostname {}, count {}, note: {}",
            c.id(),
            sh(c, "hostname").await?,
            sh(c, "cat /run/count").await?,
            sh(c, "cat /root/note.txt").await?
        );
    }
    let b = clones.pop().unwrap();
    let a = clones.pop().unwrap();
    sh(&a, "echo 'only in clone a' > /root/note.txt").await?;
    let before = sh(&a, "cat /run/count").await?;

    let t = Instant::now();
    let mut a = a;
    let suspended = a.suspend().await.context("suspend")?;
    step(
        &format!(
            "suspended clone a: {:.1} MiB on disk, no process",
            suspended.allocated_bytes() as f64 / 1048576.0
        ),
        t,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let a = backend.resume(suspended).await.context("resume")?;
    step("resumed clone a to agent-ready", t);
    println!(
        "             count before suspend {before}, after resume {}; note: {}; clone b's note: {}",
        sh(&a, "cat /run/count").await?,
        sh(&a, "cat /root/note.txt").await?,
        sh(&b, "cat /root/note.txt").await?
    );
    a.terminate().await?;
    b.terminate().await?;
    backend.delete_snapshot(&snap)?;
    println!("done: every microVM terminated and the snapshot deleted");
    Ok(())
}

fn rand_tag() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        & 0xffffff
}
