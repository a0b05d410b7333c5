//! `hearth bench engine`: the engine's numbers next to the baselines a user
//! would otherwise reach for, measured in one run on this host.
//!
//! Like is compared with like: every figure and every baseline runs through
//! the same supervisor, confinement and QMP code; a baseline restore gets a
//! QEMU started ahead of time exactly when the Hearth figure beside it
//! does, and the table says so. Each timed figure is `--runs` runs (at
//! least 20), reported as min / p50 / p90 / max with its n; the memory
//! figure is one measurement over `--clones` clones. Runs sequentially on the CLI's Tokio runtime,
//! one microVM at a time except for the memory measurement; run it with
//! nothing else busy on the host.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hearth_vmm::{
    LaunchSpec, Lifetime, MicroVm, QemuBackend, QemuVm, Snapshot, SnapshotMode, VmBackend, VmId,
};
use serde_json::{json, Value};

pub use crate::bench_api::{api, ApiArgs};
use crate::Global;

#[derive(Args)]
pub struct EngineArgs {
    /// Samples per timed figure (at least 20).
    #[arg(long, default_value_t = 20)]
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

/// Samples of one figure.
#[derive(Default)]
struct Series {
    samples: Vec<f64>,
}

impl Series {
    fn push_ms(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN samples"));
        s
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> f64 {
        let s = self.sorted();
        if s.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
        s[rank.min(s.len()) - 1]
    }

    fn p50(&self) -> f64 {
        self.pct(50.0)
    }

    fn json(&self) -> Value {
        let s = self.sorted();
        json!({
            "min": s.first().copied().map(round),
            "p50": round(self.p50()),
            "p90": round(self.pct(90.0)),
            "max": s.last().copied().map(round),
            "n": s.len(),
            "samples": self.samples.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        })
    }

    /// `p50 (min / p90 / max, n)`.
    fn cell(&self) -> String {
        let s = self.sorted();
        match (s.first(), s.last()) {
            (Some(lo), Some(hi)) => format!(
                "{:.1} ({:.1} / {:.1} / {:.1}, n={})",
                self.p50(),
                lo,
                self.pct(90.0),
                hi,
                s.len()
            ),
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

const T: Duration = Duration::from_secs(120);

async fn sh(vm: &QemuVm, script: &str) -> Result<String> {
    let out = vm.agent().run(&["/bin/sh", "-c", script], T).await?;
    anyhow::ensure!(
        out.status.success(),
        "`{script}` failed in {}: {}",
        vm.id(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout_str())
}

/// Drop the host's page cache (for the cold-cache figure).
fn drop_page_cache() -> Result<()> {
    // SAFETY: sync has no arguments and no memory effects.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop the page cache")
}

struct Ids {
    tag: u32,
    n: u32,
}

impl Ids {
    fn next(&mut self, what: &str) -> VmId {
        self.n += 1;
        VmId::new(format!("b{}-{what}-{}", self.tag, self.n)).expect("valid id")
    }
}

/// Launch a clone; with `pool`, from a QEMU started beforehand (not timed).
async fn timed_launch(
    backend: &QemuBackend,
    snap: &Snapshot,
    id: VmId,
    pool: bool,
) -> Result<(QemuVm, Duration)> {
    if pool {
        backend.prestart(snap, 1).await.context("prestart")?;
    }
    let t = Instant::now();
    let vm = backend
        .launch(snap, LaunchSpec::ephemeral(id))
        .await
        .context("clone launch")?;
    Ok((vm, t.elapsed()))
}

pub async fn engine(g: &Global, a: EngineArgs) -> Result<()> {
    anyhow::ensure!(a.runs >= 20, "--runs must be at least 20");
    anyhow::ensure!(a.clones >= 1, "--clones must be at least 1");
    let steal = StealMeter::start();
    let backend = g.backend()?;
    let accel = backend.config().accel;
    let work = g.state_dir.join("bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut ids = Ids {
        tag: std::process::id(),
        n: 0,
    };
    let spec = |id: VmId| g.boot_spec(id, Some(&a.image), a.mem_mib, 1, Lifetime::Process);
    let runs = a.runs;

    eprintln!("[bench] cold boots + snapshots ({runs} runs)");
    let (mut cold, mut snapshot_ms) = (Series::default(), Series::default());
    let mut pss_cold = 0.0;
    let mut snap: Option<Snapshot> = None;
    for i in 0..runs {
        let t = Instant::now();
        let mut vm = backend
            .boot(spec(ids.next("cold"))?)
            .await
            .context("cold boot")?;
        cold.push_ms(t.elapsed());
        if i == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            pss_cold = vm.pss_kib().unwrap_or(0) as f64 / 1024.0;
        }
        let t = Instant::now();
        let s = vm
            .snapshot(SnapshotMode::Consume)
            .await
            .context("snapshot")?;
        snapshot_ms.push_ms(t.elapsed());
        match &snap {
            None => snap = Some(s),
            Some(_) => backend.delete_snapshot(&s)?,
        }
    }
    let snap = snap.expect("runs >= 20");

    eprintln!("[bench] baseline: plain QEMU cold boots ({runs} runs)");
    let mut base_cold = Series::default();
    let mut plain = None;
    for _ in 0..runs {
        let t = Instant::now();
        let vm = backend
            .boot_with(spec(ids.next("plain"))?, true)
            .await
            .context("plain boot")?;
        base_cold.push_ms(t.elapsed());
        if let Some(prev) = plain.replace(vm) {
            prev.terminate().await?;
        }
    }
    let plain = plain.expect("runs >= 20");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let full = plain
        .save_full_ram(&work.join("full-ram.mig"))
        .await
        .context("full-RAM save")?;
    let full_save_ms = t.elapsed().as_secs_f64() * 1000.0;

    eprintln!("[bench] launch: clones and full-RAM restores, with and without a pre-started QEMU ({runs} runs each)");
    let mut launch = Series::default();
    let mut launch_cold = Series::default();
    let mut full_restore = Series::default();
    let mut full_restore_cold = Series::default();
    for _ in 0..runs {
        let (vm, d) = timed_launch(&backend, &snap, ids.next("clone"), true).await?;
        launch.push_ms(d);
        vm.terminate().await?;
        let (vm, d) = timed_launch(&backend, &snap, ids.next("clonenp"), false).await?;
        launch_cold.push_ms(d);
        vm.terminate().await?;
        // The baseline with the same advantage: a QEMU waiting beforehand.
        let waiting = backend.prestart_full_ram(&full).await.context("prestart")?;
        let t = Instant::now();
        let vm = backend
            .restore_full_ram(waiting, &full, ids.next("full"))
            .await
            .context("full-RAM restore")?;
        full_restore.push_ms(t.elapsed());
        vm.terminate().await?;
        let t = Instant::now();
        let waiting = backend.prestart_full_ram(&full).await.context("start")?;
        let vm = backend
            .restore_full_ram(waiting, &full, ids.next("fullnp"))
            .await
            .context("full-RAM restore")?;
        full_restore_cold.push_ms(t.elapsed());
        vm.terminate().await?;
    }

    eprintln!("[bench] suspend and resume: 4 MiB and 256 MiB dirtied, warm and cold page cache ({runs} runs each)");
    let mut suspend_4 = Series::default();
    let mut suspend_256 = Series::default();
    let mut resume_warm = Series::default();
    let mut resume_cold = Series::default();
    let mut resume_256 = Series::default();
    let mut suspended_mib = Series::default();
    for dirty_mib in [4u32, 256] {
        for i in 0..runs {
            let (mut vm, _) = timed_launch(&backend, &snap, ids.next("susp"), true).await?;
            sh(
                &vm,
                &format!(
                    "mkdir -p /mnt/d && mount -t tmpfs -o size={}m tmpfs /mnt/d && \
                     dd if=/dev/zero of=/mnt/d/blob bs=1M count={dirty_mib} 2>/dev/null",
                    dirty_mib + 16
                ),
            )
            .await?;
            let t = Instant::now();
            let s = vm.suspend().await.context("suspend")?;
            let d = t.elapsed();
            drop(vm);
            if dirty_mib == 4 {
                suspend_4.push_ms(d);
                suspended_mib.samples.push(mib(s.allocated_bytes()));
            } else {
                suspend_256.push_ms(d);
            }
            backend.prestart(&snap, 1).await?;
            let cold_cache = dirty_mib == 4 && i % 2 == 1;
            if cold_cache {
                drop_page_cache()?;
            }
            let t = Instant::now();
            let vm = backend.resume(s).await.context("resume")?;
            let d = t.elapsed();
            match (dirty_mib, cold_cache) {
                (4, false) => resume_warm.push_ms(d),
                (4, true) => resume_cold.push_ms(d),
                _ => resume_256.push_ms(d),
            }
            vm.terminate().await?;
        }
    }
    // Odd and even runs split the 4 MiB resumes: top up each to `runs`.
    while resume_warm.samples.len() < runs || resume_cold.samples.len() < runs {
        let cold_cache = resume_warm.samples.len() >= runs;
        let (mut vm, _) = timed_launch(&backend, &snap, ids.next("susp"), true).await?;
        sh(
            &vm,
            "dd if=/dev/zero of=/dev/shm/blob bs=1M count=4 2>/dev/null",
        )
        .await?;
        let s = vm.suspend().await?;
        drop(vm);
        backend.prestart(&snap, 1).await?;
        if cold_cache {
            drop_page_cache()?;
        }
        let t = Instant::now();
        let vm = backend.resume(s).await?;
        if cold_cache {
            resume_cold.push_ms(t.elapsed());
        } else {
            resume_warm.push_ms(t.elapsed());
        }
        vm.terminate().await?;
    }

    eprintln!("[bench] memory: 1 and {} idle clones", a.clones);
    let (one, _) = timed_launch(&backend, &snap, ids.next("pss"), true).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pss_one = one.pss_kib().unwrap_or(0) as f64 / 1024.0;
    one.terminate().await?;
    let mut many = Vec::new();
    for _ in 0..a.clones {
        many.push(
            timed_launch(&backend, &snap, ids.next("pss"), true)
                .await?
                .0,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut pss_many = Series::default();
    for vm in &many {
        pss_many
            .samples
            .push(vm.pss_kib().unwrap_or(0) as f64 / 1024.0);
    }
    for vm in many {
        vm.terminate().await?;
    }
    let m = snap.record.clone();
    backend.delete_snapshot(&snap)?;
    let _ = std::fs::remove_dir_all(&work);

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
        "host": {
            "accel": accel.to_string(),
            "qemu": backend.qemu_version(),
            "cpu": cpu,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "confinement": backend.config().confinement.is_some(),
            "cpu_steal_percent": round(steal.percent()),
        },
        "guest": { "mem_mib": a.mem_mib, "image": a.image, "vcpus": 1 },
        "cold_boot_ms": cold.json(),
        "baseline_plain_boot_ms": base_cold.json(),
        "snapshot_ms": snapshot_ms.json(),
        "snapshot_memory_mib": round(mib(m.memory_allocated_bytes)),
        "snapshot_devstate_kib": round(m.devstate_bytes as f64 / 1024.0),
        "snapshot_disk_mib": round(mib(m.disk_bytes)),
        "clone_launch_prestarted_ms": launch.json(),
        "clone_launch_started_on_demand_ms": launch_cold.json(),
        "baseline_full_ram_restore_prestarted_ms": full_restore.json(),
        "baseline_full_ram_restore_started_on_demand_ms": full_restore_cold.json(),
        "baseline_full_ram_save_ms": round(full_save_ms),
        "baseline_full_ram_stream_mib": round(mib(full.stream_bytes)),
        "suspend_4mib_dirty_ms": suspend_4.json(),
        "suspend_256mib_dirty_ms": suspend_256.json(),
        "suspended_size_4mib_dirty_mib": suspended_mib.json(),
        "resume_prestarted_warm_cache_ms": resume_warm.json(),
        "resume_prestarted_cold_cache_ms": resume_cold.json(),
        "resume_prestarted_256mib_dirty_ms": resume_256.json(),
        "pss_cold_boot_mib": round(pss_cold),
        "pss_one_clone_mib": round(pss_one),
        "pss_per_clone_mib": pss_many.json(),
        "clones_for_pss": a.clones,
        "speedup_launch_vs_full_restore_prestarted": round(ratio(&full_restore, &launch)),
        "speedup_resume_vs_full_restore_prestarted": round(ratio(&full_restore, &resume_warm)),
        "speedup_launch_vs_cold_boot": round(ratio(&cold, &launch)),
    });

    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure | Hearth ms: p50 (min / p90 / max, n) | baseline ms: p50 (min / p90 / max, n) | baseline | ratio (baseline p50 / Hearth p50) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    let mut row = |name: &str, ours: &Series, base: Option<(&Series, &str)>| {
        let (cell, what, r) = match base {
            Some((b, what)) => (
                b.cell(),
                what.to_string(),
                format!("{:.2}x", ratio(b, ours)),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let _ = writeln!(t, "| {name} | {} | {cell} | {what} | {r} |", ours.cell());
    };
    row(
        "cold boot to agent-ready",
        &cold,
        Some((
            &base_cold,
            "plain QEMU boot, anonymous RAM (same supervisor and confinement)",
        )),
    );
    row(
        "clone launch to agent-ready, pre-started QEMU",
        &launch,
        Some((
            &full_restore,
            "QEMU full-RAM restore into a pre-started QEMU",
        )),
    );
    row(
        "clone launch to agent-ready, QEMU started on demand",
        &launch_cold,
        Some((
            &full_restore_cold,
            "QEMU full-RAM restore, QEMU started on demand",
        )),
    );
    row(
        "resume to agent-ready, pre-started QEMU, warm page cache (4 MiB dirtied)",
        &resume_warm,
        Some((
            &full_restore,
            "QEMU full-RAM restore into a pre-started QEMU, warm cache",
        )),
    );
    row(
        "resume to agent-ready, pre-started QEMU, page cache dropped before (4 MiB dirtied)",
        &resume_cold,
        None,
    );
    row(
        "resume to agent-ready, pre-started QEMU (256 MiB dirtied)",
        &resume_256,
        None,
    );
    row("suspend, 4 MiB dirtied since launch", &suspend_4, None);
    row("suspend, 256 MiB dirtied since launch", &suspend_256, None);
    row("snapshot (stop, save, move files)", &snapshot_ms, None);
    let _ = writeln!(t);
    let _ = writeln!(t, "| size / memory | value |");
    let _ = writeln!(t, "|---|---|");
    let _ = writeln!(
        t,
        "| snapshot memory (allocated) | {:.1} MiB of {} MiB |",
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
        "| QEMU full-RAM save (baseline) | {:.1} ms, {:.1} MiB stream |",
        full_save_ms,
        mib(full.stream_bytes)
    );
    let _ = writeln!(
        t,
        "| suspended clone on disk, 4 MiB dirtied (diff + state + disk layer) | {} MiB |",
        suspended_mib.cell()
    );
    let _ = writeln!(
        t,
        "| PSS (QEMU + supervisor), idle cold-booted microVM | {pss_cold:.1} MiB |"
    );
    let _ = writeln!(
        t,
        "| PSS (QEMU + supervisor), 1 idle clone | {pss_one:.1} MiB |"
    );
    let _ = writeln!(
        t,
        "| PSS (QEMU + supervisor) per clone, {} idle clones of one snapshot | {} MiB |",
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
            "## Engine\n\nWritten by `hearth bench engine`. Host: {} ({} cores, {}% of CPU time stolen by the \
             hypervisor during the run), accelerator **{}**, QEMU {}, confinement {}. Guest: {} MiB, 1 vCPU, `{}` root disk, Debian cloud kernel, `hearth-agent` as PID 1. \
             \"Agent-ready\" means the agent answered (boot: its hello; clone/resume: its reply to the \
             post-restore request that sets clock, entropy and identity). Every figure and baseline runs \
             through the same supervisor, confinement and QMP code in the same invocation; a baseline \
             restore is given a pre-started QEMU exactly when the Hearth figure beside it is. The \
             cold-cache resume drops the host page cache before each resume; the snapshot's memory image \
             stays resident as a sealed memfd (as in production). Hearth's QEMUs run without transparent \
             huge pages (their RAM is a file mapping); a baseline with anonymous RAM keeps them, as a stock \
             QEMU would.{}\n\n{}\n\
             Raw JSON (`hearth bench engine --json`):\n\n```json\n{}\n```\n",
            host["cpu"].as_str().unwrap_or(""),
            host["cores"],
            host["cpu_steal_percent"],
            accel,
            backend.qemu_version(),
            if backend.config().confinement.is_some() { "on" } else { "off" },
            a.mem_mib,
            a.image,
            if accel == hearth_vmm::Accel::Tcg { TCG_NOTE } else { "" },
            t,
            serde_json::to_string_pretty(&report)?
        );
        update_markdown_section(&a.markdown, "## Engine", &section)?;
        eprintln!("[bench] wrote {}", a.markdown.display());
    }
    Ok(())
}

/// Where a launch's time goes under TCG, from a one-off `perf` profile (not
/// re-measured by this command), so the figures read right.
const TCG_NOTE: &str = " Under TCG, a restored guest's code is translated afresh in each new \
QEMU process. A one-off `perf` profile of clone launches on this host (2026-12-01, QEMU 7.2.22; \
not re-measured by this command) found the QEMU vCPU thread busy for about 95% of a launch's wall \
time, about 80% of its samples in QEMU's translator (`tcg_gen_code`, `tcg_optimize`, the x86 front \
end) and 3% in translated code; the host-side work of a launch (disk handover, device state, logged \
by the engine) is about 5 ms. KVM hosts do not pay the translation.";

/// CPU time the hypervisor gave to others while a benchmark ran (steal, from
/// `/proc/stat`): on a shared host it slows every figure, so the tables say
/// how much there was.
pub struct StealMeter {
    start: Option<(u64, u64)>,
}

impl StealMeter {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 8).then(|| (v[7], v.iter().sum()))
    }

    pub fn start() -> Self {
        StealMeter {
            start: Self::sample(),
        }
    }

    /// Percent of all CPU time stolen since [`StealMeter::start`].
    pub fn percent(&self) -> f64 {
        match (self.start, Self::sample()) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
                (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }
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

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Series {
            samples: (1..=20).map(f64::from).rev().collect(),
        };
        assert_eq!(s.p50(), 10.0);
        assert_eq!(s.pct(90.0), 18.0);
        assert_eq!(s.pct(100.0), 20.0);
        assert!(s.cell().starts_with("10.0 (1.0 / 18.0 / 20.0, n=20)"));
    }
}
