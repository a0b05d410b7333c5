//! `hearth bench engine`: the engine's numbers next to the baselines a user
//! would otherwise reach for, measured in one run on this host.
//!
//! Runs sequentially on the CLI's Tokio runtime: one microVM at a time except
//! for the memory measurement, which needs several clones alive together.
//! Run it with nothing else busy on the host.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hearth_vmm::{LaunchSpec, MicroVm, SnapshotMode, VmBackend, VmId};
use serde_json::{json, Value};

pub use crate::bench_api::{api, ApiArgs};
use crate::Global;

#[derive(Args)]
pub struct EngineArgs {
    /// Samples per timed operation (at least 5).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Guest memory.
    #[arg(long, default_value_t = 512)]
    mem_mib: u32,
    /// Clones alive at once for the memory measurement.
    #[arg(long, default_value_t = 8)]
    clones: usize,
    /// Managed image for the root disk.
    #[arg(long, default_value = "debian-12-minimal")]
    image: String,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Where to write the Markdown table ("-" for nowhere).
    #[arg(long, default_value = "docs/benchmarks.md")]
    markdown: PathBuf,
}

/// Samples of one metric.
struct Series {
    samples: Vec<f64>,
}

impl Series {
    fn new() -> Self {
        Self {
            samples: Vec::new(),
        }
    }
    fn push_ms(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s
    }
    fn p50(&self) -> f64 {
        let s = self.sorted();
        if s.is_empty() {
            return f64::NAN;
        }
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }
    fn json(&self) -> Value {
        let s = self.sorted();
        json!({
            "p50": round(self.p50()),
            "min": s.first().copied().map(round),
            "max": s.last().copied().map(round),
            "n": s.len(),
            "samples": self.samples.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        })
    }
    fn cell(&self) -> String {
        let s = self.sorted();
        match (s.first(), s.last()) {
            (Some(lo), Some(hi)) => {
                format!("{:.1} ({:.1}–{:.1}, n={})", self.p50(), lo, hi, s.len())
            }
            _ => "n/a".into(),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

pub async fn engine(g: &Global, a: EngineArgs) -> Result<()> {
    anyhow::ensure!(a.runs >= 5, "--runs must be at least 5");
    anyhow::ensure!(a.clones >= 1, "--clones must be at least 1");
    let backend = g.backend()?;
    let accel = backend.config().accel;
    let work = g.state_dir.join("bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let tag = std::process::id();
    let spec = |name: String| g.boot_spec(VmId::new(name).unwrap(), Some(&a.image), a.mem_mib, 1);

    let mut cold = Series::new();
    let mut snapshot_ms = Series::new();
    let mut pss_cold = Series::new();
    let mut snaps = Vec::new();
    eprintln!("[bench] cold boots + snapshots ({} runs)", a.runs);
    for i in 0..a.runs {
        let t = Instant::now();
        let mut vm = backend
            .boot(spec(format!("b{tag}-cold-{i}"))?)
            .await
            .context("cold boot")?;
        cold.push_ms(t.elapsed());
        if i == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            pss_cold
                .samples
                .push(vm.pss_kib().unwrap_or(0) as f64 / 1024.0);
        }
        let t = Instant::now();
        let snap = vm
            .snapshot(work.join(format!("snap-{i}")), SnapshotMode::Consume)
            .await
            .context("snapshot")?;
        snapshot_ms.push_ms(t.elapsed());
        snaps.push(snap);
    }
    let snap = snaps.remove(0);
    for s in snaps {
        s.delete()?;
    }

    eprintln!("[bench] baseline: plain QEMU cold boots ({} runs)", a.runs);
    let mut base_cold = Series::new();
    let mut last_plain = None;
    for i in 0..a.runs {
        let t = Instant::now();
        let vm = backend
            .boot_with(spec(format!("b{tag}-plain-{i}"))?, true)
            .await
            .context("plain boot")?;
        base_cold.push_ms(t.elapsed());
        // The last one becomes the full-RAM baseline's source.
        if let Some(prev) = last_plain.replace(vm) {
            prev.terminate().await?;
        }
    }
    let plain = last_plain.expect("runs >= 5");

    eprintln!(
        "[bench] baseline: QEMU full-RAM migration save + restores ({} runs)",
        a.runs
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let full = plain
        .save_full_ram(&work.join("full-ram.mig"))
        .await
        .context("full-RAM save")?;
    let full_save_ms = t.elapsed().as_secs_f64() * 1000.0;
    let full_stream_bytes = full.stream_bytes;
    let mut base_restore = Series::new();
    for j in 0..a.runs {
        let t = Instant::now();
        let vm = backend
            .restore_full_ram(&full, VmId::new(format!("b{tag}-full-{j}"))?)
            .await
            .context("full-RAM restore")?;
        base_restore.push_ms(t.elapsed());
        vm.terminate().await?;
    }

    eprintln!("[bench] clone launch, suspend, resume ({} runs)", a.runs);
    let mut launch = Series::new();
    let mut launch_cold_qemu = Series::new();
    let mut suspend = Series::new();
    let mut resume = Series::new();
    let mut suspended_mib = Series::new();
    for i in 0..a.runs {
        // Without a waiting QEMU: the launch starts the process itself.
        let id = VmId::new(format!("b{tag}-coldq-{i}"))?;
        let t = Instant::now();
        let vm = backend
            .launch(&snap, LaunchSpec { id })
            .await
            .context("clone launch")?;
        launch_cold_qemu.push_ms(t.elapsed());
        vm.terminate().await?;
        // The production path: a QEMU pre-started for this snapshot waits.
        backend.prestart(&snap, 1).await.context("prestart")?;
        let id = VmId::new(format!("b{tag}-clone-{i}"))?;
        let t = Instant::now();
        let vm = backend
            .launch(&snap, LaunchSpec { id })
            .await
            .context("clone launch")?;
        launch.push_ms(t.elapsed());
        // A little guest activity, as a session would have, before the suspend.
        vm.agent()
            .run(
                &["/bin/sh", "-c", "echo $RANDOM > /run/activity"],
                Duration::from_secs(30),
            )
            .await?;
        let t = Instant::now();
        let mut vm = vm;
        let s = vm.suspend().await.context("suspend")?;
        suspend.push_ms(t.elapsed());
        suspended_mib.samples.push(mib(s.allocated_bytes()));
        let t = Instant::now();
        let vm = backend.resume(s).await.context("resume")?;
        resume.push_ms(t.elapsed());
        vm.terminate().await?;
    }

    eprintln!("[bench] memory: 1 and {} idle clones", a.clones);
    let pss_one = {
        let vm = backend
            .launch(
                &snap,
                LaunchSpec {
                    id: VmId::new(format!("b{tag}-pss-1"))?,
                },
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let v = vm.pss_kib().unwrap_or(0) as f64 / 1024.0;
        vm.terminate().await?;
        v
    };
    let mut many = Vec::new();
    for i in 0..a.clones {
        many.push(
            backend
                .launch(
                    &snap,
                    LaunchSpec {
                        id: VmId::new(format!("b{tag}-pss-n{i}"))?,
                    },
                )
                .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut pss_many = Series::new();
    for vm in &many {
        pss_many
            .samples
            .push(vm.pss_kib().unwrap_or(0) as f64 / 1024.0);
    }
    for vm in many {
        vm.terminate().await?;
    }
    let m = snap.manifest.clone();
    backend.drain_pool(&snap);
    snap.delete()?;
    let _ = std::fs::remove_dir_all(&work);

    let qemu_version = std::process::Command::new(&backend.config().qemu_binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let ratio = |base: &Series, ours: &Series| base.p50() / ours.p50();
    let report = json!({
        "host": { "accel": accel.to_string(), "qemu": qemu_version, "cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "guest": { "mem_mib": a.mem_mib, "image": a.image, "vcpus": 1 },
        "cold_boot_ms": cold.json(),
        "snapshot_ms": snapshot_ms.json(),
        "snapshot_memory_mib": round(mib(m.memory_allocated_bytes)),
        "snapshot_devstate_kib": round(m.devstate_bytes as f64 / 1024.0),
        "snapshot_disk_mib": round(mib(m.disk_bytes)),
        "clone_launch_ms": launch.json(),
        "clone_launch_without_pool_ms": launch_cold_qemu.json(),
        "suspend_ms": suspend.json(),
        "suspended_size_mib": suspended_mib.json(),
        "resume_ms": resume.json(),
        "pss_cold_boot_mib": round(pss_cold.p50()),
        "pss_one_clone_mib": round(pss_one),
        "pss_per_clone_mib": pss_many.json(),
        "clones_for_pss": a.clones,
        "baseline_cold_boot_ms": base_cold.json(),
        "baseline_full_save_ms": round(full_save_ms),
        "baseline_full_stream_mib": round(mib(full_stream_bytes)),
        "baseline_full_restore_ms": base_restore.json(),
        "speedup_clone_vs_cold_boot": round(ratio(&cold, &launch)),
        "speedup_clone_vs_full_restore": round(ratio(&base_restore, &launch)),
        "speedup_resume_vs_full_restore": round(ratio(&base_restore, &resume)),
    });

    let mut t = String::new();
    let _ = writeln!(
        t,
        "| metric | Hearth p50 (min–max, n) ms | baseline p50 (min–max, n) ms | baseline | ratio |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    let _ = writeln!(
        t,
        "| cold boot to agent-ready | {} | {} | plain QEMU boot, anonymous RAM | {:.2}x |",
        cold.cell(),
        base_cold.cell(),
        ratio(&base_cold, &cold)
    );
    let _ = writeln!(t, "| clone launch to agent-ready (pre-started QEMU) | {} | {} | QEMU full-RAM restore | {:.1}x faster (vs Hearth cold boot: {:.1}x) |", launch.cell(), base_restore.cell(), ratio(&base_restore, &launch), ratio(&cold, &launch));
    let _ = writeln!(
        t,
        "| clone launch, no pre-started QEMU | {} | {} | QEMU full-RAM restore | {:.1}x faster |",
        launch_cold_qemu.cell(),
        base_restore.cell(),
        ratio(&base_restore, &launch_cold_qemu)
    );
    let _ = writeln!(
        t,
        "| resume to agent-ready | {} | {} | QEMU full-RAM restore | {:.1}x faster |",
        resume.cell(),
        base_restore.cell(),
        ratio(&base_restore, &resume)
    );
    let _ = writeln!(t, "| suspend of a running clone | {} | {:.1} (n=1) | QEMU full-RAM save ({:.1} MiB stream) | {:.1}x |", suspend.cell(), full_save_ms, mib(full_stream_bytes), full_save_ms / suspend.p50());
    let _ = writeln!(
        t,
        "| snapshot (stop, save, move files) | {} | | | |",
        snapshot_ms.cell()
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "| size / memory | value |");
    let _ = writeln!(t, "|---|---|");
    let _ = writeln!(
        t,
        "| snapshot memory file (allocated) | {:.1} MiB of {} MiB |",
        mib(m.memory_allocated_bytes),
        a.mem_mib
    );
    let _ = writeln!(
        t,
        "| snapshot device state | {:.1} KiB |",
        m.devstate_bytes as f64 / 1024.0
    );
    let _ = writeln!(t, "| snapshot disk layer | {:.1} MiB |", mib(m.disk_bytes));
    let _ = writeln!(
        t,
        "| suspended clone on disk (diff + state + disk layer) | {} MiB |",
        suspended_mib.cell()
    );
    let _ = writeln!(
        t,
        "| PSS, idle cold-booted microVM | {:.1} MiB |",
        pss_cold.p50()
    );
    let _ = writeln!(t, "| PSS, 1 idle clone | {:.1} MiB |", pss_one);
    let _ = writeln!(
        t,
        "| PSS per clone, {} idle clones of one snapshot | {} MiB |",
        a.clones,
        pss_many.cell()
    );

    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{t}");
    }
    if a.markdown.as_os_str() != "-" {
        let host = &report["host"];
        let section = format!(
            "## Engine\n\nWritten by `hearth bench engine`. Host: {} ({} cores), accelerator **{}**, {}. Guest: {} MiB, \
             1 vCPU, `{}` root disk, Debian cloud kernel, `hearth-agent` as PID 1. \"Agent-ready\" means the agent \
             answered (boot: its hello; clone/resume: its reply to the post-restore request that sets clock, entropy \
             and identity). Baselines run in the same invocation on the same guest: a plain QEMU boot with anonymous \
             RAM, and QEMU's own snapshot restore with the whole RAM in the migration stream.\n\n{}\n\
             Raw JSON (`hearth bench engine --json`):\n\n```json\n{}\n```\n",
            host["cpu"].as_str().unwrap_or(""),
            host["cores"],
            accel,
            host["qemu"].as_str().unwrap_or(""),
            a.mem_mib,
            a.image,
            t,
            serde_json::to_string_pretty(&report)?
        );
        update_markdown_section(&a.markdown, "## Engine", &section)?;
        eprintln!("[bench] wrote {}", a.markdown.display());
    }
    Ok(())
}

/// Replace (or append) the section that starts with `heading` in a Markdown
/// file, leaving the other benchmarks' sections as they are.
pub fn update_markdown_section(path: &std::path::Path, heading: &str, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = if old.trim().is_empty() {
        "# Benchmarks\n\nEach section is written by the `hearth bench` command it names; re-run it rather than edit.\n\n"
            .to_string()
    } else {
        String::new()
    };
    let mut rest = old.as_str();
    let mut replaced = false;
    if let Some(start) = old
        .find(&format!("\n{heading}\n"))
        .map(|i| i + 1)
        .or_else(|| old.starts_with(&format!("{heading}\n")).then_some(0))
    {
        let after = &old[start + heading.len()..];
        let end = after
            .find("\n## ")
            .map(|i| start + heading.len() + i + 1)
            .unwrap_or(old.len());
        out.push_str(&old[..start]);
        out.push_str(section.trim_end());
        out.push_str("\n\n");
        out.push_str(&old[end..]);
        replaced = true;
        rest = "";
    }
    if !replaced {
        out.push_str(rest.trim_end());
        if !rest.trim().is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(section.trim_end());
        out.push('\n');
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(path, out.trim_end().to_string() + "\n")
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.md");
        update_markdown_section(&p, "## Engine", "## Engine\n\nE1").unwrap();
        update_markdown_section(&p, "## API", "## API\n\nA1").unwrap();
        update_markdown_section(&p, "## Engine", "## Engine\n\nE2").unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("# Benchmarks"));
        assert!(
            s.contains("E2") && !s.contains("E1") && s.contains("A1"),
            "{s}"
        );
        assert!(s.find("## Engine").unwrap() < s.find("## API").unwrap());
    }
}
