//! `hearth bench build`: how long a user waits for an image build, where
//! that time goes, and what the two slowest parts would cost without a
//! microVM, measured in one run on this host.
//!
//! What is measured: the bench starts its own `hearth serve` (a child
//! process of this executable, on a throw-away data directory, free
//! loopback ports, its own egress namespace `hearth-bench` on
//! 10.213.9.0/30 so it does not collide with another server) and builds
//! `examples/hello-stdlib` `--runs` times and `examples/flask-hello`
//! `--flask-runs` times, one build at a time, each as a new image from an
//! upload, through the API as a user would (the packing and upload happen
//! before the clock starts). Each build is timed from the
//! `CreateMicrovmImage` call to `GetMicrovmImage` answering `CREATED`,
//! polling every [`POLL`]. The phases (fetch, prepare, builder start, each
//! Dockerfile step, builder stop, app start, app ready, validate, snapshot)
//! and the snapshot sizes come from the server's build record, read from
//! its SQLite store (opened beside the running server, as `hearth account`
//! does, and only read). A FAILED build fails the bench with its reason.
//!
//! The baselines, each measured in the same invocation, interleaved with
//! the builds (one after each build of its example):
//!
//! * builder start: the engine's cold boot of the same base image
//!   (`debian-12-python`) to agent-ready, with the builder's memory and
//!   vCPUs, no NIC, in this process (same supervisor and confinement).
//!   The builder start also joins the egress namespace, configures the
//!   guest's network and sends the build context; the baseline is the boot
//!   alone.
//! * flask-hello's `RUN pip install` step: the same requirements installed
//!   on the host, natively, into a fresh venv of the host's Debian Python
//!   (`/usr/bin/python3`), `pip install --no-cache-dir` from pip's default
//!   index with the host's pip configuration and wheel directories ignored
//!   (the guest has neither a cache nor local wheels), trusting the host's
//!   CA bundle as the guest trusts the server's. Creating the venv is not
//!   timed. The guest runs under the build's accelerator (TCG emulation on
//!   hosts without usable KVM); the host does not.
//!
//! Every figure is reported as p50 (min / p90 / max, n): typical runs,
//! never the best. Runs on the CLI's Tokio runtime, on the main task (the
//! server is a separate process); run it with nothing else busy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_stats::Samples;
use aws_sdk_lambdamicrovms::config::{Credentials, Region};
use aws_sdk_lambdamicrovms::types::CodeArtifact;
use clap::Args;
use hearth_api::DataDir;
use hearth_store::{AccountId, Store};
use hearth_vmm::accel::AccelChoice;
use hearth_vmm::{Accel, Lifetime, MicroVm, QemuBackend, VmBackend, VmId};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::{creds, Api, Endpoint};
use crate::image_cli::code::{self, CodeArg};
use crate::image_cli::{base_image_arn, default_build_role_arn, follow};
use crate::Global;

#[derive(Args)]
pub struct BuildArgs {
    /// Builds of examples/hello-stdlib (at least 1).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Builds of examples/flask-hello (0 skips it and its pip baseline).
    #[arg(long, default_value_t = 3)]
    flask_runs: usize,
    /// Print JSON instead of the tables.
    #[arg(long)]
    json: bool,
    /// Markdown file whose "## Image builds" section is replaced ("-" for none).
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The directory holding hello-stdlib and flask-hello.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
}

/// The base image both examples build FROM.
const BASE_IMAGE: &str = "debian-12-python";
/// How often a build's and an image's state are read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Longest one build may take before the bench gives up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long the server may take to print its address.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
/// The bench server's egress namespace and its link /30.
const EGRESS_NETNS: &str = "hearth-bench";
const EGRESS_LINK_NET: &str = "10.213.9.0";
/// The host's CA bundle (Debian), with its locally added CAs.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The host's Debian Python, the same Python as the base image's.
const HOST_PYTHON: &str = "/usr/bin/python3";

/// One example and the issue's target for it.
struct Example {
    name: &'static str,
    /// The target of the p50 from CreateMicrovmImage to CREATED.
    target_p50_secs: f64,
}

const HELLO: Example = Example {
    name: "hello-stdlib",
    target_p50_secs: 20.0,
};
const FLASK: Example = Example {
    name: "flask-hello",
    target_p50_secs: 90.0,
};

// ------------------------------------------------------------ statistics

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

// ------------------------------------------------------------ build records

/// One phase of one build, as the server recorded it.
#[derive(Debug, Clone, PartialEq)]
struct PhaseMs {
    name: String,
    description: String,
    ms: f64,
}

/// The snapshot sizes of one build, as the server recorded them.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sizes {
    memory_bytes: Option<u64>,
    disk_bytes: Option<u64>,
    code_install_bytes: Option<u64>,
}

impl Sizes {
    /// What [`Sizes::in_order`] holds, for the table.
    const LABELS: [&'static str; 3] = ["memory (allocated)", "disk layer", "code install"];

    /// Memory, disk, code install.
    fn in_order(&self) -> [Option<u64>; 3] {
        [self.memory_bytes, self.disk_bytes, self.code_install_bytes]
    }
}

/// One successful build.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    image_arn: String,
    build_id: String,
    /// CreateMicrovmImage call to CREATED.
    total_ms: f64,
    phases: Vec<PhaseMs>,
    sizes: Sizes,
}

impl Run {
    fn json(&self) -> Value {
        json!({
            "imageArn": self.image_arn,
            "buildId": self.build_id,
            "createToCreatedMs": round1(self.total_ms),
            "phases": self.phases.iter().map(|p| json!({"phase": p.name, "description": p.description, "ms": p.ms})).collect::<Vec<_>>(),
            "snapshotBuild": {
                "memorySnapshotSizeInBytes": self.sizes.memory_bytes,
                "diskSnapshotSizeInBytes": self.sizes.disk_bytes,
                "codeInstallSizeInBytes": self.sizes.code_install_bytes,
            },
        })
    }
}

/// The phases and sizes of a successful build's stored document
/// (`phases: [{phase, description, ms}]`, `snapshotBuild`).
fn record_of(doc: &Value) -> Result<(Vec<PhaseMs>, Sizes)> {
    let phases = doc
        .get("phases")
        .and_then(Value::as_array)
        .context("the build record has no phases")?
        .iter()
        .map(|p| {
            Ok(PhaseMs {
                name: p
                    .get("phase")
                    .and_then(Value::as_str)
                    .with_context(|| format!("a phase without a name: {p}"))?
                    .to_string(),
                description: p
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                ms: p
                    .get("ms")
                    .and_then(Value::as_f64)
                    .with_context(|| format!("a phase without ms: {p}"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let sb = doc.get("snapshotBuild");
    let size = |k: &str| sb.and_then(|s| s.get(k)).and_then(Value::as_u64);
    Ok((
        phases,
        Sizes {
            memory_bytes: size("memorySnapshotSizeInBytes"),
            disk_bytes: size("diskSnapshotSizeInBytes"),
            code_install_bytes: size("codeInstallSizeInBytes"),
        },
    ))
}

/// One phase across the runs of an example.
#[derive(Debug, Clone, PartialEq)]
struct PhaseRow {
    name: String,
    description: String,
    samples: Samples,
}

/// The phases of `runs` in the order they ran (a phase only some runs
/// have, such as validate, where it first appears).
fn phase_rows(runs: &[Run]) -> Vec<PhaseRow> {
    let mut rows: Vec<PhaseRow> = Vec::new();
    for run in runs {
        let mut after: Option<usize> = None;
        for p in &run.phases {
            let i = match rows.iter().position(|r| r.name == p.name) {
                Some(i) => i,
                None => {
                    let at = after.map_or(0, |a| a + 1);
                    rows.insert(
                        at,
                        PhaseRow {
                            name: p.name.clone(),
                            description: p.description.clone(),
                            samples: Samples::default(),
                        },
                    );
                    at
                }
            };
            rows[i].samples.push(p.ms);
            after = Some(i);
        }
    }
    rows
}

/// Per run, the time outside every recorded phase: queueing, the state
/// writes before and after the build, and the polling granularity.
fn outside_phases(runs: &[Run]) -> Samples {
    Samples {
        v: runs
            .iter()
            .map(|r| r.total_ms - r.phases.iter().map(|p| p.ms).sum::<f64>())
            .collect(),
    }
}

// ------------------------------------------------------------ tables

/// Which phase row a baseline stands beside.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Beside {
    /// The phase with this name.
    Phase(&'static str),
    /// The Dockerfile step whose description contains this text.
    StepContaining(&'static str),
}

impl Beside {
    fn matches(self, row: &PhaseRow) -> bool {
        match self {
            Beside::Phase(name) => row.name == name,
            Beside::StepContaining(text) => {
                row.name.starts_with("step_") && row.description.contains(text)
            }
        }
    }
}

/// A baseline figure and what it is.
#[derive(Debug, Clone)]
struct Baseline {
    beside: Beside,
    samples: Samples,
    what: String,
}

/// Text for a Markdown table cell: `|` escaped, on one line.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// One Markdown table row; an empty cell is `| |`.
fn md_row(cells: &[&str]) -> String {
    let mut row = String::from("|");
    for c in cells {
        if c.is_empty() {
            row.push_str(" |");
        } else {
            row.push_str(&format!(" {c} |"));
        }
    }
    row
}

/// The figure column of a phase row.
fn phase_label(row: &PhaseRow) -> String {
    if row.name.starts_with("step_") {
        // "step 2/4 (RUN pip install ...)"
        return row.description.clone();
    }
    let name = row.name.replace('_', " ");
    if row.description.is_empty() {
        name
    } else {
        format!("{name}: {}", row.description)
    }
}

/// `≤ 20 s p50: met` (or missed), from the p50 in milliseconds.
fn target_cell(target_p50_secs: f64, p50_ms: Option<f64>) -> String {
    match p50_ms {
        Some(p50) => format!(
            "≤ {target_p50_secs:.0} s p50: {}",
            if p50 <= target_p50_secs * 1000.0 {
                "met"
            } else {
                "missed"
            }
        ),
        None => format!("≤ {target_p50_secs:.0} s p50"),
    }
}

/// The table of one example: the total beside its target, each phase
/// (with its baseline, if one is given), the rest; then the sizes.
fn example_table(example: &Example, runs: &[Run], baselines: &[&Baseline]) -> String {
    let mut t = String::new();
    let total = Samples {
        v: runs.iter().map(|r| r.total_ms).collect(),
    };
    let _ = writeln!(
        t,
        "| figure | Hearth s: p50 (min / p90 / max, n) | target | baseline s: p50 (min / p90 / max, n) | baseline |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    let _ = writeln!(
        t,
        "{}",
        md_row(&[
            "**CreateMicrovmImage to CREATED**",
            &format!("**{}**", total.cell_scaled(1000.0, 2)),
            &target_cell(example.target_p50_secs, total.p50()),
            "",
            "",
        ])
    );
    for row in phase_rows(runs) {
        let (base, what) = match baselines.iter().find(|b| b.beside.matches(&row)) {
            Some(b) => (b.samples.cell_scaled(1000.0, 2), md_cell(&b.what)),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            t,
            "{}",
            md_row(&[
                &md_cell(&phase_label(&row)),
                &row.samples.cell_scaled(1000.0, 2),
                "",
                &base,
                &what,
            ])
        );
    }
    let _ = writeln!(
        t,
        "{}",
        md_row(&[
            &format!(
                "outside the phases: queueing, state writes, polling every {} ms",
                POLL.as_millis()
            ),
            &outside_phases(runs).cell_scaled(1000.0, 2),
            "",
            "",
            "",
        ])
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "| snapshot size | p50 (min / p90 / max, n) |");
    let _ = writeln!(t, "|---|---|");
    for (i, what) in Sizes::LABELS.iter().enumerate() {
        let bytes = Samples {
            v: runs
                .iter()
                .filter_map(|r| r.sizes.in_order()[i])
                .map(|b| b as f64)
                .collect(),
        };
        let (unit, divisor) = size_unit(bytes.p50());
        let _ = writeln!(t, "| {what}, {unit} | {} |", bytes.cell_scaled(divisor, 1));
    }
    t
}

/// MiB for a size of at least 1 MiB, else KiB (and its divisor).
fn size_unit(p50_bytes: Option<f64>) -> (&'static str, f64) {
    match p50_bytes {
        Some(b) if b < 1_048_576.0 => ("KiB", 1024.0),
        _ => ("MiB", 1_048_576.0),
    }
}

/// An example's figures as JSON.
fn example_json(example: &Example, runs: &[Run]) -> Value {
    let total = Samples {
        v: runs.iter().map(|r| r.total_ms).collect(),
    };
    let sizes = |get: fn(&Sizes) -> Option<u64>| -> Vec<Option<u64>> {
        runs.iter().map(|r| get(&r.sizes)).collect()
    };
    json!({
        "example": example.name,
        "targetP50Secs": example.target_p50_secs,
        "targetMet": total.p50().map(|p| p <= example.target_p50_secs * 1000.0),
        "createToCreatedMs": total.json(),
        "phases": phase_rows(runs).iter().map(|r| json!({
            "phase": r.name, "description": r.description, "ms": r.samples.json(),
        })).collect::<Vec<_>>(),
        "outsidePhasesMs": outside_phases(runs).json(),
        "snapshotSizesBytes": {
            "memory": sizes(|s| s.memory_bytes),
            "disk": sizes(|s| s.disk_bytes),
            "codeInstall": sizes(|s| s.code_install_bytes),
        },
        "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
    })
}

// ------------------------------------------------------------ the server

/// The `hearth serve` this bench runs, and an API client of it.
struct BenchServer {
    child: tokio::process::Child,
    /// Kept open: the server's stdout (it printed its address there).
    _stdout: BufReader<tokio::process::ChildStdout>,
    log: PathBuf,
    data_dir: PathBuf,
    api_url: String,
}

fn accel_arg(a: AccelChoice) -> &'static str {
    match a {
        AccelChoice::Auto => "auto",
        AccelChoice::Kvm => "kvm",
        AccelChoice::Tcg => "tcg",
    }
}

/// The last `lines` lines of a file, for an error message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl BenchServer {
    /// Start `hearth serve` on `work/data`, its log in `work/serve.log`,
    /// and wait for the address it prints.
    async fn start(g: &Global, work: &Path) -> Result<BenchServer> {
        let exe = std::env::current_exe().context("locate the hearth binary")?;
        let data_dir = work.join("data");
        let log = work.join("serve.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = tokio::process::Command::new(&exe)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--cache-dir")
            .arg(&g.cache_dir)
            .args(["--accel", accel_arg(g.accel)])
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--egress-netns",
                EGRESS_NETNS,
                "--egress-link-net",
                EGRESS_LINK_NET,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} serve", exe.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("the server's stdout")?);
        let mut line = String::new();
        let read = tokio::time::timeout(SERVER_START_TIMEOUT, stdout.read_line(&mut line)).await;
        let api_url = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v.get("api").and_then(Value::as_str).map(str::to_string)),
            _ => None,
        };
        let Some(api_url) = api_url else {
            bail!(
                "hearth serve did not print its address (got {:?}); its log {}:\n{}",
                line.trim(),
                log.display(),
                tail(&log, 30)
            );
        };
        Ok(BenchServer {
            child,
            _stdout: stdout,
            log,
            data_dir,
            api_url,
        })
    }

    /// A client with the server's admin key (`<data>/credentials`), whatever
    /// AWS_* variables this process has.
    fn client(&self, region: &str) -> Result<Api> {
        let endpoint = Endpoint::parse(&self.api_url)?;
        let creds = creds::resolve(&|_| None, &self.data_dir)?;
        let conf = aws_sdk_lambdamicrovms::Config::builder()
            .endpoint_url(&endpoint.url)
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new(
                &creds.access_key_id,
                &creds.secret_access_key,
                None,
                None,
                "hearth-bench",
            ))
            .behavior_version_latest()
            .build();
        Ok(Api {
            sdk: aws_sdk_lambdamicrovms::Client::from_conf(conf),
            endpoint,
            region: region.to_string(),
            creds,
        })
    }

    /// SIGTERM, then SIGKILL if it has not ended within 30 s.
    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with our own child's pid and a valid signal; no
            // memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status.context("wait for hearth serve")?;
            }
            Err(_) => {
                eprintln!(
                    "[bench build] hearth serve did not stop on SIGTERM within 30 s; killing it"
                );
                self.child.kill().await.context("kill hearth serve")?;
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------ one build

/// Build `dir` once as a new image `name` and read its record.
async fn build_once(
    api: &Api,
    store: &dyn Store,
    account: &AccountId,
    dir: &Path,
    name: &str,
) -> Result<Run> {
    let code_uri = code::code_uri(api, CodeArg::Dir(dir.to_path_buf())).await?;
    let t0 = Instant::now();
    let out = api
        .sdk
        .create_microvm_image()
        .name(name)
        .base_image_arn(base_image_arn(BASE_IMAGE, &api.region))
        .build_role_arn(default_build_role_arn(account.as_str()))
        .code_artifact(CodeArtifact::Uri(code_uri))
        .send()
        .await
        .map_err(|e| api.error("CreateMicrovmImage", e))?;
    let image_arn = out.image_arn().to_string();
    let version = out.image_version().to_string();
    let build_id = follow::latest_build(api, &image_arn, &version, follow::FIRST_BUILD_WAIT)
        .await?
        .with_context(|| format!("{name}: version {version} shows no build"))?
        .build_id()
        .to_string();
    let build = follow::BuildRef {
        image_arn: image_arn.clone(),
        version: version.clone(),
        build_id: build_id.clone(),
    };
    follow::wait_created(api, &build, name, t0, BUILD_TIMEOUT, POLL).await?;
    let total = t0.elapsed();
    let image_id = follow::image_id(&image_arn);
    let doc = store
        .get_build(account, image_id, &version, &build_id)
        .with_context(|| format!("read the record of build {build_id}"))?
        .doc;
    let (phases, sizes) = record_of(&doc).with_context(|| format!("build {build_id}"))?;
    Ok(Run {
        image_arn,
        build_id,
        total_ms: total.as_secs_f64() * 1000.0,
        phases,
        sizes,
    })
}

// ------------------------------------------------------------ baselines

/// One cold boot of the base image to agent-ready, then its end.
async fn engine_cold_boot(
    g: &Global,
    backend: &QemuBackend,
    mem_mib: u32,
    vcpus: u32,
) -> Result<Duration> {
    let spec = g.boot_spec(
        VmId::random("bbuild-boot"),
        Some(BASE_IMAGE),
        mem_mib,
        vcpus,
        Lifetime::Process,
    )?;
    let t = Instant::now();
    let vm = backend.boot(spec).await.context("baseline cold boot")?;
    let took = t.elapsed();
    vm.terminate().await.context("end the baseline microVM")?;
    Ok(took)
}

/// A command's output, or an error with its stderr's tail.
async fn checked(mut cmd: tokio::process::Command, what: &str) -> Result<std::process::Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    Ok(out)
}

/// `pip install --no-cache-dir -r requirements.txt` of `app` into a fresh
/// venv at `venv` (created first, not timed; removed after). Returns the
/// install's time and the venv's pip version.
async fn host_pip_install(app: &Path, venv: &Path) -> Result<(Duration, String)> {
    let _ = std::fs::remove_dir_all(venv);
    let mut mk = tokio::process::Command::new(HOST_PYTHON);
    mk.arg("-m").arg("venv").arg(venv);
    checked(mk, "python3 -m venv").await?;
    let mut pip = tokio::process::Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "-r",
        "requirements.txt",
    ])
    .current_dir(app);
    // The guest's pip has no configuration, no local wheels and no cache:
    // neither does this one.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PIP_") {
            pip.env_remove(&k);
        }
    }
    pip.env("PIP_CONFIG_FILE", "/dev/null");
    if Path::new(HOST_CA_BUNDLE).is_file() {
        pip.env("PIP_CERT", HOST_CA_BUNDLE);
    }
    let t = Instant::now();
    checked(pip, "pip install on the host").await?;
    let took = t.elapsed();
    let pip_version = version_of(&venv.join("bin/pip"), &["--version"]).await;
    let _ = std::fs::remove_dir_all(venv);
    // "pip 23.0.1 from /path (python 3.11)"
    let pip_version = pip_version.split(" from ").next().unwrap_or("").to_string();
    Ok((took, pip_version))
}

/// The first line a command prints (stdout, else stderr), or "unknown".
async fn version_of(program: &Path, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("unknown")
                .trim()
                .to_string()
        }
        Err(_) => "unknown".into(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------ the bench

pub async fn build(g: &Global, a: BuildArgs) -> Result<()> {
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    let hello_dir = a.examples.join(HELLO.name);
    let flask_dir = a.examples.join(FLASK.name);
    for d in [&hello_dir, &flask_dir] {
        anyhow::ensure!(
            d.join("Dockerfile").is_file(),
            "{} has no Dockerfile (run from the repository root, or pass --examples)",
            d.display()
        );
    }
    let steal = crate::bench::StealMeter::start();
    let work = tempfile::Builder::new()
        .prefix("hearth-bench-build-")
        .tempdir()
        .context("create a work directory")?;

    // The baseline engine: this process, its own state directory.
    let mut base_g = g.clone();
    base_g.state_dir = work.path().join("baseline-engine");
    let backend = base_g.backend()?;
    let accel = backend.config().accel;
    let qemu = backend.qemu_version().to_string();
    let confined = backend.config().confinement.is_some();
    let builder_cfg = {
        let m = g.manifest()?;
        hearth_builder::BuilderConfig::new(m.kernel.path.clone(), m.initramfs.path.clone())
    };
    let (builder_mem_mib, builder_vcpus) =
        (builder_cfg.builder_mem_size_mib, builder_cfg.vcpu_count);

    eprintln!("[bench build] starting hearth serve");
    let server = BenchServer::start(g, work.path()).await?;
    let measured = measure(
        g,
        &a,
        &server,
        &backend,
        (builder_mem_mib, builder_vcpus),
        (&hello_dir, &flask_dir),
        work.path(),
    )
    .await;
    if let Err(e) = &measured {
        eprintln!(
            "[bench build] failed: {e:#}\n[bench build] the server's log ({}) ends:\n{}",
            server.log.display(),
            tail(&server.log, 30)
        );
    }
    eprintln!("[bench build] stopping hearth serve");
    server.stop().await?;
    let m = measured?;

    let python = version_of(Path::new(HOST_PYTHON), &["--version"]).await;
    let report = json!({
        "host": {
            "cpu": cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu_steal_percent": round1(steal.percent()),
            "accel": accel.to_string(),
            "qemu": qemu,
            "confinement": confined,
        },
        "examples": [
            example_json(&HELLO, &m.hello),
            example_json(&FLASK, &m.flask),
        ],
        "baselines": {
            "engine_cold_boot_ms": {
                "image": BASE_IMAGE,
                "mem_mib": builder_mem_mib,
                "vcpus": builder_vcpus,
                "nic": false,
                "ms": m.boots.json(),
            },
            "host_pip_install_ms": {
                "python": python,
                "pip": m.pip_version,
                "command": "pip install --no-cache-dir --disable-pip-version-check -r requirements.txt",
                "index": "pip's default (PyPI); host pip configuration and local wheels ignored",
                "ms": m.pips.json(),
            },
        },
    });

    let guest_runs = if accel == Accel::Tcg {
        "the guest runs under TCG emulation"
    } else {
        "the guest runs under KVM"
    };
    let boot = Baseline {
        beside: Beside::Phase("builder_start"),
        samples: m.boots.clone(),
        what: format!(
            "engine cold boot of {BASE_IMAGE} to agent-ready, {builder_mem_mib} MiB, \
             {builder_vcpus} vCPU, no NIC, same run (the builder start also joins the egress \
             namespace, sets up the guest's network and sends the build context)"
        ),
    };
    let pip = Baseline {
        beside: Beside::StepContaining("pip install"),
        samples: m.pips.clone(),
        what: format!(
            "the same pip install on the host, natively ({guest_runs}): fresh venv of \
             {python}, {}, --no-cache-dir, PyPI, no local wheels; same run",
            m.pip_version
        ),
    };
    let mut tables = String::new();
    for (example, runs, baselines) in [
        (&HELLO, &m.hello, vec![&boot]),
        (&FLASK, &m.flask, vec![&boot, &pip]),
    ] {
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(
            tables,
            "### {}\n\n{}",
            example.name,
            example_table(example, runs, &baselines)
        );
    }

    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{tables}");
    }
    if a.out.as_os_str() != "-" {
        let host = &report["host"];
        let section = format!(
            "## Image builds\n\nWritten by `hearth bench build`. Host: {} ({} cores, {}% of CPU time \
             stolen by the hypervisor during the run), accelerator **{}**, QEMU {}, confinement {}. \
             Each build is a new image created through the API from an upload of the example \
             (`examples/<name>`, packed and uploaded before the clock starts) on a `hearth serve` \
             started for the bench, one build at a time; \"CreateMicrovmImage to CREATED\" is what \
             a user waits for: from the create call until GetMicrovmImage answers CREATED (polled \
             every {} ms). The phases and snapshot sizes are the server's own record of each \
             build. Baselines run in the same invocation, one after each build of the example they \
             stand beside: the builder start beside the engine's cold boot of the same base image \
             with the builder's memory; flask-hello's `RUN pip install` beside the same install \
             run natively on the host into a fresh venv, without a cache, as the guest has none. \
             Times are p50 (min / p90 / max, n) in seconds; sizes likewise, in the unit their row \
             names.\n\n{}\n\n\
             Raw JSON (`hearth bench build --json`):\n\n```json\n{}\n```\n",
            host["cpu"].as_str().unwrap_or(""),
            host["cores"],
            host["cpu_steal_percent"],
            accel,
            qemu,
            if confined { "on" } else { "off" },
            POLL.as_millis(),
            tables.trim_end(),
            serde_json::to_string_pretty(&report)?
        );
        crate::bench::update_markdown_section(&a.out, "## Image builds", &section)?;
        eprintln!("[bench build] wrote {}", a.out.display());
    }
    Ok(())
}

/// What one bench invocation measured.
struct Measured {
    hello: Vec<Run>,
    flask: Vec<Run>,
    boots: Samples,
    pips: Samples,
    pip_version: String,
}

/// The builds and their baselines, interleaved, against `server`.
async fn measure(
    g: &Global,
    a: &BuildArgs,
    server: &BenchServer,
    backend: &QemuBackend,
    (builder_mem_mib, builder_vcpus): (u32, u32),
    (hello_dir, flask_dir): (&Path, &Path),
    work: &Path,
) -> Result<Measured> {
    let api = server.client("us-east-1")?;
    let dd = DataDir::open(&server.data_dir).with_context(|| {
        format!(
            "open the bench server's store in {}",
            server.data_dir.display()
        )
    })?;
    let account = dd
        .store
        .get_account_by_name("admin")
        .context("the bench server's admin account")?
        .account_id;
    let tag = std::process::id();
    let mut m = Measured {
        hello: Vec::new(),
        flask: Vec::new(),
        boots: Samples::default(),
        pips: Samples::default(),
        pip_version: String::new(),
    };
    for i in 1..=a.runs {
        eprintln!("[bench build] {} build {i}/{}", HELLO.name, a.runs);
        let run = build_once(
            &api,
            dd.store.as_ref(),
            &account,
            hello_dir,
            &format!("bench-{}-{tag}-{i}", HELLO.name),
        )
        .await?;
        eprintln!(
            "[bench build] {} build {i}: {:.2} s to CREATED",
            HELLO.name,
            run.total_ms / 1000.0
        );
        m.hello.push(run);
        eprintln!("[bench build] baseline: engine cold boot {i}/{}", a.runs);
        m.boots
            .push_ms(engine_cold_boot(g, backend, builder_mem_mib, builder_vcpus).await?);
    }
    for i in 1..=a.flask_runs {
        eprintln!("[bench build] {} build {i}/{}", FLASK.name, a.flask_runs);
        let run = build_once(
            &api,
            dd.store.as_ref(),
            &account,
            flask_dir,
            &format!("bench-{}-{tag}-{i}", FLASK.name),
        )
        .await?;
        eprintln!(
            "[bench build] {} build {i}: {:.2} s to CREATED",
            FLASK.name,
            run.total_ms / 1000.0
        );
        m.flask.push(run);
        eprintln!(
            "[bench build] baseline: pip install on the host {i}/{}",
            a.flask_runs
        );
        let (took, pip_version) = host_pip_install(flask_dir, &work.join("venv")).await?;
        m.pips.push_ms(took);
        m.pip_version = pip_version;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, description: &str, ms: f64) -> PhaseMs {
        PhaseMs {
            name: name.into(),
            description: description.into(),
            ms,
        }
    }

    fn run(total_ms: f64, phases: Vec<PhaseMs>, memory_mib: u64) -> Run {
        Run {
            image_arn: "arn:aws:lambda:us-east-1:123456789012:microvm-image:img-x".into(),
            build_id: "b".into(),
            total_ms,
            phases,
            sizes: Sizes {
                memory_bytes: Some(memory_mib * 1_048_576),
                disk_bytes: Some(3 * 1_048_576),
                code_install_bytes: Some(6046),
            },
        }
    }

    #[test]
    fn targets_say_met_or_missed_from_the_p50() {
        assert_eq!(target_cell(20.0, Some(19_999.0)), "≤ 20 s p50: met");
        assert_eq!(target_cell(20.0, Some(20_000.0)), "≤ 20 s p50: met");
        assert_eq!(target_cell(90.0, Some(90_001.0)), "≤ 90 s p50: missed");
        assert_eq!(target_cell(90.0, None), "≤ 90 s p50");
    }

    #[test]
    fn a_stored_build_record_gives_its_phases_in_order_and_its_sizes() {
        let doc = json!({
            "phases": [
                {"phase": "fetch", "description": "fetching", "ms": 12},
                {"phase": "step_1", "description": "step 1/1 (COPY server.py /app/)", "ms": 800},
            ],
            "snapshotBuild": {"memorySnapshotSizeInBytes": 1048576, "diskSnapshotSizeInBytes": 5},
        });
        let (phases, sizes) = record_of(&doc).unwrap();
        assert_eq!(
            phases,
            vec![
                phase("fetch", "fetching", 12.0),
                phase("step_1", "step 1/1 (COPY server.py /app/)", 800.0)
            ]
        );
        assert_eq!(sizes.memory_bytes, Some(1_048_576));
        assert_eq!(sizes.code_install_bytes, None);
        assert!(record_of(&json!({"snapshotBuild": {}})).is_err());
        assert!(record_of(&json!({"phases": [{"ms": 1}]})).is_err());
    }

    #[test]
    fn phase_rows_keep_the_build_order_and_place_a_phase_only_some_runs_have() {
        let a = run(
            10_000.0,
            vec![
                phase("fetch", "f", 10.0),
                phase("app_ready", "r", 100.0),
                phase("snapshot", "s", 1000.0),
            ],
            40,
        );
        let b = run(
            12_000.0,
            vec![
                phase("fetch", "f", 20.0),
                phase("app_ready", "r", 300.0),
                phase("validate", "v", 50.0),
                phase("snapshot", "s", 3000.0),
            ],
            42,
        );
        let rows = phase_rows(&[a.clone(), b.clone()]);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["fetch", "app_ready", "validate", "snapshot"]);
        assert_eq!(rows[0].samples.v, vec![10.0, 20.0]);
        assert_eq!(rows[2].samples.v, vec![50.0]);
        // Outside the phases: the total less the sum of its phases, per run.
        assert_eq!(outside_phases(&[a, b]).v, vec![8_890.0, 8_630.0]);
    }

    #[test]
    fn an_example_table_has_the_total_beside_its_target_phases_baselines_and_sizes() {
        let phases = |builder_ms: f64, pip_ms: f64| {
            vec![
                phase("fetch", "fetching and unpacking the code artifact", 10.0),
                phase("builder_start", "starting the builder microVM", builder_ms),
                phase(
                    "step_1",
                    "step 1/2 (RUN pip install -r requirements.txt | tee log)",
                    pip_ms,
                ),
                phase("step_2", "step 2/2 (COPY . .)", 300.0),
                phase("snapshot", "the snapshot", 2_000.0),
            ]
        };
        let runs = [
            run(70_000.0, phases(6_000.0, 40_000.0), 60),
            run(95_000.0, phases(7_000.0, 50_000.0), 62),
            run(80_000.0, phases(6_500.0, 45_000.0), 61),
        ];
        let boot = Baseline {
            beside: Beside::Phase("builder_start"),
            samples: Samples {
                v: vec![4_000.0, 5_000.0, 4_500.0],
            },
            what: "engine cold boot".into(),
        };
        let pip = Baseline {
            beside: Beside::StepContaining("pip install"),
            samples: Samples {
                v: vec![3_000.0, 2_000.0],
            },
            what: "host pip | natively".into(),
        };
        let t = example_table(&FLASK, &runs, &[&boot, &pip]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[2],
            "| **CreateMicrovmImage to CREATED** | **80.00 (70.00 / 95.00 / 95.00, n=3)** | ≤ 90 s p50: met | | |"
        );
        assert_eq!(
            lines[3],
            "| fetch: fetching and unpacking the code artifact | 0.01 (0.01 / 0.01 / 0.01, n=3) | | | |"
        );
        assert_eq!(
            lines[4],
            "| builder start: starting the builder microVM | 6.50 (6.00 / 7.00 / 7.00, n=3) | | 4.50 (4.00 / 5.00 / 5.00, n=3) | engine cold boot |"
        );
        assert_eq!(
            lines[5],
            "| step 1/2 (RUN pip install -r requirements.txt \\| tee log) | 45.00 (40.00 / 50.00 / 50.00, n=3) | | 2.00 (2.00 / 3.00 / 3.00, n=2) | host pip \\| natively |"
        );
        assert_eq!(
            lines[6],
            "| step 2/2 (COPY . .) | 0.30 (0.30 / 0.30 / 0.30, n=3) | | | |"
        );
        assert!(lines[8].starts_with("| outside the phases"), "{t}");
        // 70000 - 48310, 95000 - 59310, 80000 - 53810.
        assert!(
            lines[8].ends_with("| 26.19 (21.69 / 35.69 / 35.69, n=3) | | | |"),
            "{t}"
        );
        assert!(
            t.contains("| memory (allocated), MiB | 61.0 (60.0 / 62.0 / 62.0, n=3) |"),
            "{t}"
        );
        assert!(
            t.contains("| disk layer, MiB | 3.0 (3.0 / 3.0 / 3.0, n=3) |"),
            "{t}"
        );
        assert!(
            t.contains("| code install, KiB | 5.9 (5.9 / 5.9 / 5.9, n=3) |"),
            "{t}"
        );
        // Every row of the first table has the header's five columns.
        for l in lines.iter().take(9) {
            assert_eq!(l.matches('|').count() - l.matches("\\|").count(), 6, "{l}");
        }
    }

    #[test]
    fn sizes_below_a_mib_are_in_kib_and_missing_ones_are_not_made_up() {
        assert_eq!(size_unit(Some(1_048_575.0)), ("KiB", 1024.0));
        assert_eq!(size_unit(Some(1_048_576.0)), ("MiB", 1_048_576.0));
        let mut r = run(1_000.0, vec![], 10);
        r.sizes.code_install_bytes = None;
        let t = example_table(&HELLO, &[r], &[]);
        assert!(t.contains("| code install, MiB | n/a |"), "{t}");
    }

    #[test]
    fn a_missed_target_is_reported_missed() {
        let runs = [run(25_000.0, vec![], 10), run(21_000.0, vec![], 10)];
        let t = example_table(&HELLO, &runs, &[]);
        assert!(t.contains("| ≤ 20 s p50: missed |"), "{t}");
        let j = example_json(&HELLO, &runs);
        assert_eq!(j["targetMet"], false);
        assert_eq!(j["createToCreatedMs"]["p50"], 21000.0);
        assert_eq!(j["runs"].as_array().unwrap().len(), 2);
    }
}
