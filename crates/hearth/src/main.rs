//! `hearth`: the one binary.
//!
//! Owns the command line: provisioning (`setup`), the engine demo (`demo`),
//! ad-hoc microVMs (`vm`), housekeeping (`gc`) and benchmarks (`bench`).
//! Runs on a multi-threaded Tokio runtime created in `main`.

mod bench;
mod bench_api;
mod bench_build;
mod bench_connectors;
mod bench_microvm;
mod bench_stats;
mod client;
mod demo;
mod image_cli;
mod microvm_cli;
mod proxy_glue;
mod serve;
mod vm;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hearth_vmm::accel::{decide, AccelChoice, HostKvmFacts};
use hearth_vmm::{BootSpec, Lifetime, QemuBackend, QemuConfig, VmId};

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Self-hosted Lambda MicroVMs: dedicated, snapshot-launched, suspendable microVMs"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Global {
    /// Where microVM and snapshot state lives.
    #[arg(long, global = true, env = "HEARTH_STATE", default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
    /// Artifact cache (kernel, initramfs, base images).
    #[arg(long, global = true, env = "HEARTH_CACHE", default_value_os_t = hearth_artifacts::cache_dir())]
    cache_dir: PathBuf,
    /// Accelerator: auto (KVM if it runs standard guests, else TCG), kvm or tcg.
    #[arg(long, global = true, default_value = "auto")]
    accel: AccelChoice,
    /// The API server's data directory (store, keys, credentials).
    #[arg(long, global = true, env = "HEARTH_DATA", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install host packages and build the kernel, initramfs and base images (idempotent).
    Setup(SetupArgs),
    /// The engine demo: boot, snapshot, clone, suspend, resume, with timings.
    Demo,
    /// Run ad-hoc microVMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Remove what no record owns: microVMs whose QEMU died while no Hearth
    /// watched, half-created ones, stale snapshot references and uid claims.
    /// Running and suspended microVMs are kept.
    Gc,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run the Lambda MicroVMs API server.
    Serve(serve::ServeArgs),
    /// Manage accounts (works while the server runs).
    #[command(subcommand)]
    Account(serve::AccountCmd),
    /// Manage access keys.
    #[command(subcommand)]
    Key(serve::KeyCmd),
    /// MicroVM images, through the API of a running `hearth serve`.
    Image(image_cli::ImageArgs),
    /// MicroVMs, through the API and the endpoint proxy of a running `hearth serve`.
    #[command(flatten)]
    Microvm(microvm_cli::MicrovmCmd),
}

#[derive(Args)]
struct SetupArgs {
    /// The hearth-agent binary to put in the initramfs (default: $HEARTH_AGENT,
    /// then the hearth-agent built beside this binary, static or not).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Managed images to build (default: all).
    #[arg(long = "image")]
    images: Vec<String>,
    /// Debian mirror for the base images (default: the host's apt source).
    #[arg(long)]
    mirror: Option<String>,
    /// Do not apt-get install missing host packages.
    #[arg(long)]
    no_install: bool,
}

#[derive(Subcommand)]
enum VmCmd {
    /// Boot microVMs, run a command in each (then stop them, or hold them).
    Boot {
        /// Managed base image for the root disk.
        #[arg(long, default_value = "debian-12-minimal")]
        image: String,
        #[arg(long, default_value_t = 512)]
        mem_mib: u32,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// How many microVMs.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Keep them running until interrupted; print one JSON line each
        /// (id, QEMU pid, the command's output).
        #[arg(long)]
        hold: bool,
        /// Let them outlive this process: a later `hearth vm` command adopts
        /// them; `hearth vm stop` ends them.
        #[arg(long)]
        persist: bool,
        /// Command to run in the guest after boot.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Adopt the microVMs that outlived earlier Hearth processes and list
    /// every microVM of the state directory as JSON.
    List,
    /// Run a command in a running (persistent) microVM.
    Exec {
        id: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// End a running persistent microVM and delete its files.
    Stop { id: String },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Engine: cold boot, snapshot, clone launch, suspend, resume, memory, with baselines.
    Engine(bench::EngineArgs),
    /// API: signed GetMicrovm and ListMicrovms at 1 and 64 clients vs. an unauthenticated ceiling.
    Api(bench::ApiArgs),
    /// Image builds: CreateMicrovmImage to CREATED for the examples, per phase, with baselines.
    Build(bench_build::BuildArgs),
    /// MicroVMs: launch, auto-resume, suspend, proxy overhead and density, with baselines.
    Microvm(bench_microvm::MicrovmArgs),
    /// Network connectors: shell keystroke round trip through the proxy, proxy overhead, egress connect and throughput, with baselines.
    Connectors(bench_connectors::ConnectorsArgs),
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/hearth"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/hearth/data"))
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/state/hearth"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/hearth"))
}

impl Global {
    /// Build the backend; logs the accelerator decision once.
    fn backend(&self) -> Result<QemuBackend> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("create state dir {}", self.state_dir.display()))?;
        let decision = decide(self.accel, HostKvmFacts::probe());
        tracing::info!(accel = %decision.accel, "{}", decision.reason);
        let backend = QemuBackend::new(QemuConfig::new(self.state_dir.clone(), decision.accel))?;
        Ok(backend)
    }

    fn manifest(&self) -> Result<hearth_artifacts::Manifest> {
        hearth_artifacts::Manifest::load(&self.cache_dir).map_err(anyhow::Error::from)
    }

    fn boot_spec(
        &self,
        id: VmId,
        image: Option<&str>,
        mem_size_mib: u32,
        vcpu_count: u32,
        lifetime: Lifetime,
    ) -> Result<BootSpec> {
        let m = self.manifest()?;
        let root_disk = match image {
            Some(name) => Some(
                m.images
                    .iter()
                    .find(|i| i.name == name)
                    .with_context(|| {
                        let known: Vec<_> = m.images.iter().map(|i| i.name.as_str()).collect();
                        format!("no image {name:?} in the cache (have: {known:?}); run `hearth setup --image {name}`")
                    })?
                    .path
                    .clone(),
            ),
            None => None,
        };
        Ok(BootSpec {
            id,
            kernel: m.kernel.path.clone(),
            initramfs: m.initramfs.path.clone(),
            root_disk,
            root_overlays: vec![],
            nic: None,
            nic_slot: false,
            mem_size_mib,
            vcpu_count,
            extra_cmdline: vec![],
            lifetime,
        })
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.cmd {
        Cmd::Setup(a) => setup(&g, a),
        Cmd::Demo => demo::run(&g).await,
        Cmd::Vm(VmCmd::Boot {
            image,
            mem_mib,
            vcpus,
            count,
            hold,
            persist,
            command,
        }) => {
            let opts = vm::BootOpts {
                image,
                mem_mib,
                vcpus,
                count,
                hold,
                persist,
            };
            vm::boot(&g, opts, command).await
        }
        Cmd::Vm(VmCmd::List) => vm::list(&g).await,
        Cmd::Vm(VmCmd::Exec { id, command }) => vm::exec(&g, &id, command).await,
        Cmd::Vm(VmCmd::Stop { id }) => vm::stop(&g, &id).await,
        Cmd::Gc => {
            std::fs::create_dir_all(&g.state_dir)?;
            let report = hearth_vmm::qemu::gc(&g.state_dir);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Bench(BenchCmd::Engine(a)) => bench::engine(&g, a).await,
        Cmd::Bench(BenchCmd::Api(a)) => bench::api(&g, a).await,
        Cmd::Bench(BenchCmd::Build(a)) => bench_build::build(&g, a).await,
        Cmd::Bench(BenchCmd::Microvm(a)) => bench_microvm::microvm(&g, a).await,
        Cmd::Bench(BenchCmd::Connectors(a)) => bench_connectors::connectors(&g, a).await,
        Cmd::Serve(a) => serve::serve(&g, a).await,
        Cmd::Account(c) => serve::account(&g, c),
        Cmd::Key(c) => serve::key(&g, c),
        Cmd::Image(a) => image_cli::run(&g, a).await,
        Cmd::Microvm(c) => microvm_cli::run(&g, c).await,
    }
}

/// The agent to put in the initramfs: `--agent`, `$HEARTH_AGENT`, or the
/// `hearth-agent` built beside this binary (a plain `cargo build --release`
/// or `cargo install` builds a dynamically linked one, which setup takes
/// with its libraries; the static release-agent build is preferred when it
/// exists, being smaller and independent of the host's libraries).
fn find_agent(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("HEARTH_AGENT").map(PathBuf::from)) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locate the hearth binary")?;
    let dir = exe.parent().context("hearth binary has no directory")?;
    for cand in [
        dir.join("../x86_64-unknown-linux-gnu/release-agent/hearth-agent"),
        dir.join("hearth-agent"),
    ] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "no hearth-agent binary beside {}: build the workspace (`cargo build --release` builds \
         it) or `cargo install --path crates/hearth-agent`, or pass --agent",
        dir.display()
    )
}

fn setup(g: &Global, a: SetupArgs) -> Result<()> {
    let agent = find_agent(a.agent)?;
    let mut opts = hearth_artifacts::SetupOptions::new(g.cache_dir.clone(), agent);
    if !a.images.is_empty() {
        opts.images = a.images;
    }
    opts.mirror = a.mirror;
    opts.install_host_packages = !a.no_install;
    let manifest = hearth_artifacts::setup(&opts, &print_progress)
        .map_err(|e| anyhow::anyhow!("setup failed: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(())
}

fn print_progress(p: hearth_artifacts::Progress) {
    use hearth_artifacts::Status;
    match p.status {
        Status::Started => eprintln!("[setup] {}: building...", p.step),
        Status::Cached => eprintln!("[setup] {}: cached, nothing to do", p.step),
        Status::Done { elapsed_ms } => eprintln!(
            "[setup] {}: done in {:.1} s",
            p.step,
            elapsed_ms as f64 / 1000.0
        ),
        Status::Info(line) => eprintln!("[setup] {}: {line}", p.step),
    }
}
