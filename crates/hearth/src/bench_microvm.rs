//! `hearth bench microvm`: what a user of microVMs waits for and what a
//! host holds, measured through the API and the endpoint proxy, each figure
//! beside a baseline measured in the same run.
//!
//! The server runs in this process: the bench assembles what `hearth serve`
//! assembles (a data directory, the engine under `<data>/engine`, image
//! builds without egress, the control plane, the API on a free loopback
//! port, the endpoint proxy with its self-signed CA on another) so that it
//! can also reach the control plane directly: the "direct" path of the
//! proxy figures is [`hearth_control::MicrovmControl::connect`], the guest
//! stream the proxy itself forwards over. Clients reach the API through the
//! Rust SDK over loopback HTTP and endpoints through the proxy over
//! loopback HTTPS (a new TLS connection unless a figure says otherwise),
//! as users do. Two servers run one after the other on one data
//! directory: `--warm-pool-depth 1` (the default) for the warm launch,
//! auto-resume, suspend and proxy figures, then `--warm-pool-depth 0` with
//! `--max-running-microvms` set to `--density` for the launch without a
//! warm pool and the density figures. Both keep one pre-started QEMU per
//! snapshot (`--prestart-depth 1`, the default).
//!
//! The apps: `examples/hello-stdlib` for launches, resumes, latency and
//! density; a bench app built from this crate's `bench_apps/dirty`
//! (`GET /dirty?mib=N` writes N MiB of guest memory, `GET /bytes?mib=N`
//! answers N MiB) for the suspend and download figures.
//!
//! Between samples the bench waits until the server has refilled what the
//! previous sample used (a warmed clone, a pre-started QEMU) and this
//! process's QEMUs are idle ([`Server::settle`]), so each sample starts on a
//! settled server. Every figure is p50 (min / p90 / max, n): typical runs,
//! never the best. Runs on the CLI's Tokio runtime; the server's tasks run
//! on it too. Run it with nothing else busy on the host.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::bench_stats::{ms, round2, Samples};
use aws_sdk_lambdamicrovms::config::{Credentials, Region};
use aws_sdk_lambdamicrovms::types::{CodeArtifact, IdlePolicy, PortSpecification};
use bytes::Bytes;
use clap::Args;
use hearth_api::{AppState, DataDir, ManagedImage};
use hearth_control::{MicrovmControl, MicrovmSetup};
use hearth_proto::v2::{ExecRequest, RestartPolicy};
use hearth_store::{AccountId, Image, Store};
use hearth_vmm::owner::ProcessIdentity;
use hearth_vmm::record::{load_vm_record, MemoryBase, RecordedState};
use hearth_vmm::{
    AgentClient, FullRamSnapshot, LaunchSpec, Lifetime, MachineConfig, MicroVm, QemuBackend,
    QemuConfig, QemuVm, Snapshot, SnapshotId, SuspendedVm, VmBackend, VmId,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::client::{creds, Api, ApiCallError, Endpoint};
use crate::image_cli::code::{self, CodeArg};
use crate::image_cli::{base_image_arn, default_build_role_arn, follow};
use crate::Global;

/// When the bench started, for its progress lines.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// A progress line on stderr: `[bench microvm +12.3 s] ...`.
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!(
            "[bench microvm +{:.1} s] {}",
            STARTED.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}

#[derive(Args)]
pub struct MicrovmArgs {
    /// Samples of each launch and auto-resume figure and of the restore
    /// baseline (at least 3).
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Cold boots of the boot baseline (at least 1).
    #[arg(long, default_value_t = 5)]
    boot_runs: usize,
    /// Suspends per dirtied size, and samples of each suspend baseline (at
    /// least 1).
    #[arg(long, default_value_t = 6)]
    suspend_runs: usize,
    /// GET / requests per path (proxied, direct) for the latency figure.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Downloads per path (proxied, direct) for the throughput figure.
    #[arg(long, default_value_t = 3)]
    downloads: usize,
    /// Size of each download, MiB.
    #[arg(long, default_value_t = 64)]
    download_mib: u32,
    /// Idle microVMs started for the density figures: the density
    /// server's --max-running-microvms (0 skips the density figures).
    #[arg(long, default_value_t = 50)]
    density: usize,
    /// How long the idle microVMs' CPU time is measured, seconds.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Suspended microVMs held at once for the density figures: once the
    /// running ones are suspended, more are launched, called once and
    /// suspended one at a time up to this count (0 or at most --density:
    /// only the suspended running ones).
    #[arg(long, default_value_t = TARGET_SUSPENDED)]
    suspended: usize,
    /// Print JSON instead of the tables.
    #[arg(long)]
    json: bool,
    /// Markdown file whose "## MicroVMs (hearth bench microvm)" section is
    /// replaced ("-" for none).
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The directory holding hello-stdlib.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
}

/// The Markdown section this bench owns.
const HEADING: &str = "## MicroVMs (hearth bench microvm)";
/// The server's region.
pub(crate) const REGION: &str = "us-east-1";
/// The port both apps listen on (the proxy's default port).
const APP_PORT: u16 = 8080;
/// The example the launch, resume, latency and density figures run.
pub(crate) const HELLO: &str = "hello-stdlib";
/// The base image both apps build FROM.
pub(crate) const BASE_IMAGE: &str = "debian-12-python";
/// The bench app, built into this binary.
const DIRTY_DOCKERFILE: &str = include_str!("bench_apps/dirty/Dockerfile");
const DIRTY_SERVER_PY: &str = include_str!("bench_apps/dirty/server.py");
/// `hearth serve`'s default --max-running-microvms.
pub(crate) const SERVE_MAX_RUNNING: usize = 64;
/// Longest an image build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How often a build's and an image's state are read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Longest the server may take to settle between samples.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The window over which this process's QEMUs must be idle to settle.
const QUIET_WINDOW: Duration = Duration::from_millis(400);
/// Idle: under this many cores busy in this process's QEMUs and
/// supervisors during [`QUIET_WINDOW`], plus [`QUIET_CORES_PER_QEMU`] each.
const QUIET_CORES: f64 = 0.08;
const QUIET_CORES_PER_QEMU: f64 = 0.02;
/// Longest one guest request (or agent call) may take.
pub(crate) const T: Duration = Duration::from_secs(120);
/// Least time between two proxied requests to one microVM in the latency
/// figure: the proxy allows 100 per second per microVM.
pub(crate) const LATENCY_PACE: Duration = Duration::from_millis(15);
/// The targets printed beside the figures (not asserted).
const TARGET_LAUNCH_WARM_MS: f64 = 60.0;
const TARGET_AUTO_RESUME_MS: f64 = 150.0;
const TARGET_PROXY_OVERHEAD_MS: f64 = 2.0;
const TARGET_SUSPEND_256_MS: f64 = 1000.0;
const TARGET_RUNNING: usize = 50;
const TARGET_SUSPENDED: usize = 500;

// ------------------------------------------------------------ statistics

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// `≤ 60 ms p50: met` (or missed, or the limit alone without a p50).
fn target_cell(limit: f64, unit: &str, p50: Option<f64>) -> String {
    match p50 {
        Some(v) => format!(
            "≤ {limit} {unit} p50: {}",
            if v <= limit { "met" } else { "missed" }
        ),
        None => format!("≤ {limit} {unit} p50"),
    }
}

/// One Markdown table row; an empty cell is `| |`.
pub(crate) fn md_row(cells: &[&str]) -> String {
    let mut row = String::from("|");
    for c in cells {
        if c.is_empty() {
            row.push_str(" |");
        } else {
            row.push_str(&format!(" {} |", c.replace('|', "\\|")));
        }
    }
    row
}

// ------------------------------------------------------------ processes

/// Clock ticks per second (`/proc/<pid>/stat` times are in them).
fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory effects; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(ppid, utime + stime ticks)` of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks used so far by every descendant of this process (the
/// supervisors and their QEMUs), and how many there are.
fn descendants_ticks() -> (u64, usize) {
    let me = std::process::id();
    let mut all: Vec<(u32, u32, u64)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((ppid, ticks)) = proc_stat(pid) {
                    all.push((pid, ppid, ticks));
                }
            }
        }
    }
    let mut mine: HashSet<u32> = HashSet::from([me]);
    loop {
        let before = mine.len();
        for (pid, ppid, _) in &all {
            if mine.contains(ppid) {
                mine.insert(*pid);
            }
        }
        if mine.len() == before {
            break;
        }
    }
    let ticks = all
        .iter()
        .filter(|(pid, _, _)| *pid != me && mine.contains(pid))
        .map(|(_, _, t)| t)
        .sum();
    (ticks, mine.len() - 1)
}

/// Proportional and unique (private) set sizes of a process, KiB.
fn pss_uss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((
        field("Pss:")?,
        field("Private_Clean:")? + field("Private_Dirty:")?,
    ))
}

/// `MemAvailable` of the host, KiB.
fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes free to unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable
    // statvfs that outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

/// The supervisor and QEMU of a running microVM of the engine, from its
/// record, when both are the processes recorded.
fn running_pids(engine_dir: &Path, id: &str) -> Option<(u32, u32)> {
    let r = load_vm_record(&engine_dir.join("vms").join(id)).ok()?;
    match r.state {
        RecordedState::Running { supervisor, qemu } => Some((supervisor.pid, qemu.pid)),
        RecordedState::Suspended { .. } => None,
    }
}

/// SIGKILL every supervisor and QEMU the records under `engine_dir` name
/// as running, when they are still the processes recorded: what a failed
/// run leaves (persistent microVMs outlive this process otherwise).
pub(crate) fn kill_leftovers(engine_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(engine_dir.join("vms")) else {
        return;
    };
    for e in dir.flatten() {
        let Ok(r) = load_vm_record(&e.path()) else {
            continue;
        };
        if let RecordedState::Running { supervisor, qemu } = r.state {
            for p in [qemu, supervisor] {
                if ProcessIdentity::of(p.pid).as_ref() == Some(&p) {
                    // SAFETY: kill(2) on a pid just checked to be the
                    // process this bench started; no memory is involved.
                    unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
}

// ------------------------------------------------------------ HTTP

/// An HTTP/1.1 client connection (to the proxy, or straight to a guest
/// port), driven by a task of its own until dropped.
pub(crate) struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpConn {
    async fn over<IO>(io: IO) -> Result<HttpConn>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .context("HTTP/1.1 handshake")?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn { sender, driver })
    }

    /// `GET path` with `Host: host` (and the auth token, for the proxy);
    /// the body is read to its end. Returns its length; an answer other
    /// than 200 is an error.
    pub(crate) async fn get(&mut self, host: &str, token: Option<&str>, path: &str) -> Result<u64> {
        self.sender.ready().await.context("the connection closed")?;
        let mut req = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(http::header::HOST, host);
        if let Some(t) = token {
            req = req.header("X-aws-proxy-auth", t);
        }
        let resp = self
            .sender
            .send_request(req.body(Empty::new())?)
            .await
            .with_context(|| format!("GET {path} to {host}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let (mut n, mut head) = (0u64, Vec::new());
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("the body of GET {path}"))?;
            if let Ok(data) = frame.into_data() {
                if head.len() < 512 {
                    head.extend_from_slice(&data[..data.len().min(512)]);
                }
                n += data.len() as u64;
            }
        }
        ensure!(
            status == http::StatusCode::OK,
            "GET {path} to {host} answered {status}: {}",
            String::from_utf8_lossy(&head).trim()
        );
        Ok(n)
    }
}

/// `GET path` on the app's port of a microVM the engine runs, over a new
/// agent TCP stream (no proxy, no control plane).
async fn agent_get(agent: &AgentClient, path: &str) -> Result<u64> {
    let stream = agent
        .tcp_connect(APP_PORT, T)
        .await
        .with_context(|| format!("connect to port {APP_PORT} in the guest"))?;
    let mut c = HttpConn::over(stream.into_io()).await?;
    c.get("localhost", None, path).await
}

/// The TLS client configuration trusting only the proxy's CA.
fn proxy_tls(ca_pem: &Path) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca_pem).with_context(|| format!("read {}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.with_context(|| format!("parse {}", ca_pem.display()))?)
            .context("the proxy's CA")?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

// ------------------------------------------------------------ the server

/// An image the bench built, and what the engine keeps of it.
pub(crate) struct Built {
    pub(crate) arn: String,
    image: Image,
    version: String,
    pub(crate) snapshot: Snapshot,
}

/// A server assembled in this process as `hearth serve` assembles one
/// (`hearth bench connectors` runs one too).
pub(crate) struct Server {
    engine_dir: PathBuf,
    store: Arc<dyn Store>,
    backend: QemuBackend,
    pub(crate) control: MicrovmControl,
    pub(crate) account: AccountId,
    pub(crate) api: Api,
    pub(crate) proxy_addr: SocketAddr,
    pub(crate) tls: tokio_rustls::TlsConnector,
    warm_pool_depth: usize,
    stop_tx: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    /// Every microVM RunMicrovm gave on this server.
    pub(crate) handed_out: HashSet<String>,
    /// Those not terminated yet.
    pub(crate) live: HashSet<String>,
    /// Snapshots whose pools this server fills.
    snapshots: Vec<Snapshot>,
}

impl Server {
    /// `egress`: the network microVMs with INTERNET_EGRESS get (`None`:
    /// such a RunMicrovm is refused); image builds never have egress.
    pub(crate) async fn start(
        g: &Global,
        data_dir: &Path,
        warm_pool_depth: usize,
        max_running: usize,
        egress: Option<hearth_builder::GuestEgress>,
    ) -> Result<Server> {
        let dd = DataDir::open(data_dir)
            .with_context(|| format!("open the data dir {}", data_dir.display()))?;
        let engine_dir = dd.path.join("engine");
        std::fs::create_dir_all(&engine_dir)?;
        let _ = hearth_vmm::qemu::gc(&engine_dir);
        let decision = hearth_vmm::accel::decide(g.accel, hearth_vmm::accel::HostKvmFacts::probe());
        let backend = QemuBackend::new(QemuConfig::new(engine_dir.clone(), decision.accel))?;
        let manifest = g.manifest()?;
        let images = hearth_control::ImageControl::new(
            dd.store.clone(),
            hearth_control::BuildSetup {
                data_dir: dd.path.clone(),
                builder: Some(hearth_builder::Builder::new(
                    backend.clone(),
                    hearth_builder::BuilderConfig::new(
                        manifest.kernel.path.clone(),
                        manifest.initramfs.path.clone(),
                    ),
                )),
                base_images: manifest
                    .images
                    .iter()
                    .map(|i| hearth_control::BaseImageFile {
                        name: i.name.clone(),
                        version: i.version.clone(),
                        root_disk: i.path.clone(),
                    })
                    .collect(),
                code: hearth_code::Fetcher::new(
                    hearth_code::SourceConfig::default(),
                    hearth_code::Uploads::new(dd.path.join("uploads")),
                ),
                egress: None,
                region: REGION.into(),
                max_concurrent_builds: 1,
            },
        );
        images.recover().context("image recovery")?;
        let managed_images = manifest
            .images
            .iter()
            .map(|i| ManagedImage {
                name: i.name.clone(),
                version: i.version.clone(),
                created_at_secs: 0,
            })
            .collect();
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let proxy_dir = dd.path.join("proxy");
        std::fs::create_dir_all(&proxy_dir)?;
        let token_key = hearth_token::TokenKey::load_or_create(&proxy_dir.join("token.key"))
            .context("the proxy's token key")?;
        let cell = Arc::new(OnceLock::new());
        let proxy = hearth_proxy::Proxy::bind(
            hearth_proxy::ProxyConfig::new(
                "127.0.0.1:0".parse()?,
                hearth_proxy::TlsMode::SelfSigned {
                    dir: proxy_dir.clone(),
                },
            ),
            Arc::new(crate::proxy_glue::ControlUpstreams(cell.clone())),
            token_key.clone(),
        )
        .await
        .context("the endpoint proxy")?;
        let proxy_addr = proxy.local_addr();
        let control = MicrovmControl::new(
            dd.store.clone(),
            MicrovmSetup {
                backend: Some(backend.clone()),
                endpoint_domain: "localhost".into(),
                endpoint_port: Some(proxy_addr.port()),
                warm_pool_depth,
                prestart_depth: 1,
                max_running,
                logs_dir: Some(dd.path.join("logs")),
                egress,
            },
        );
        control
            .recover()
            .await
            .context("reconciling microVMs with the engine")?;
        let _ = cell.set(control.clone());
        let state = Arc::new(AppState {
            store: dd.store.clone(),
            sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
            managed_images,
            region: REGION.into(),
            images,
            microvms: control.clone(),
            proxy_tokens: Some(token_key),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let api_srv = hearth_http::serve(
            api_listener,
            hearth_http::Limits::default(),
            Arc::new(hearth_api::Api::new(state).with_uploads(&dd.path.join("uploads"))),
            stopped(stop_rx.clone()),
        );
        let proxy_srv = proxy.run(stopped(stop_rx));
        let serving = tokio::spawn(async move {
            let (a, ()) = tokio::join!(api_srv, proxy_srv);
            if let Err(e) = a {
                note!("the API server ended: {e}");
            }
        });
        let account = dd
            .store
            .get_account_by_name("admin")
            .context("the admin account")?
            .account_id;
        let api = sdk_client(&format!("http://{api_addr}"), &dd.path)?;
        let tls = proxy_tls(&hearth_proxy::ca_pem_path(&proxy_dir))?;
        Ok(Server {
            engine_dir,
            store: dd.store.clone(),
            backend,
            control,
            account,
            api,
            proxy_addr,
            tls,
            warm_pool_depth,
            stop_tx,
            serving,
            handed_out: HashSet::new(),
            live: HashSet::new(),
            snapshots: Vec::new(),
        })
    }

    /// Terminate what is still running, stop the pools and both listeners.
    pub(crate) async fn stop(mut self) {
        // A refill under way would put a clone in a pool after the drain.
        if let Err(e) = self.settle().await {
            note!("stopping an unsettled server: {e:#}");
        }
        let live: Vec<String> = self.live.drain().collect();
        for id in live {
            if let Err(e) = self.control.terminate(&self.account, &id).await {
                note!("terminating {id}: {e}");
            }
        }
        for s in &self.snapshots {
            self.control.drain(s.id.as_str()).await;
        }
        let _ = self.stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(30), &mut self.serving)
            .await
            .is_err()
        {
            self.serving.abort();
        }
        self.control.detach_all();
    }

    /// `Host` of a microVM's endpoint.
    pub(crate) fn host(&self, id: &str) -> String {
        format!("{id}.localhost:{}", self.proxy_addr.port())
    }

    /// Fill `snapshot`'s pools ahead of the first RunMicrovm, as a server
    /// that has run the image before would have them.
    pub(crate) async fn prepare(&mut self, b: &Built) -> Result<()> {
        self.control
            .prepare(&self.account, &b.image, &b.version)
            .await
            .with_context(|| format!("warming the pool of {}", b.image.name))?;
        if !self.snapshots.iter().any(|s| s.id == b.snapshot.id) {
            self.snapshots.push(b.snapshot.clone());
        }
        Ok(())
    }

    async fn run(&mut self, image_arn: &str, auto_resume: bool) -> Result<String, ApiCallError> {
        let mut req = self.api.sdk.run_microvm().image_identifier(image_arn);
        if auto_resume {
            req = req.idle_policy(
                IdlePolicy::builder()
                    .max_idle_duration_seconds(3600)
                    .suspended_duration_seconds(0)
                    .auto_resume_enabled(true)
                    .build()
                    .expect("every member is set"),
            );
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.api.error("RunMicrovm", e))?;
        let id = out.microvm_id().to_string();
        self.handed_out.insert(id.clone());
        self.live.insert(id.clone());
        Ok(id)
    }

    pub(crate) async fn token(&self, id: &str) -> Result<String> {
        let out = self
            .api
            .sdk
            .create_microvm_auth_token()
            .microvm_identifier(id)
            .expiration_in_minutes(60)
            .allowed_ports(PortSpecification::Port(i32::from(APP_PORT)))
            .send()
            .await
            .map_err(|e| self.api.error("CreateMicrovmAuthToken", e))?;
        out.auth_token()
            .get("X-aws-proxy-auth")
            .cloned()
            .context("CreateMicrovmAuthToken gave no X-aws-proxy-auth")
    }

    async fn suspend(&self, id: &str) -> Result<()> {
        self.api
            .sdk
            .suspend_microvm()
            .microvm_identifier(id)
            .send()
            .await
            .map_err(|e| self.api.error("SuspendMicrovm", e))?;
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.api
            .sdk
            .resume_microvm()
            .microvm_identifier(id)
            .send()
            .await
            .map_err(|e| self.api.error("ResumeMicrovm", e))?;
        Ok(())
    }

    pub(crate) async fn terminate(&mut self, id: &str) -> Result<()> {
        self.api
            .sdk
            .terminate_microvm()
            .microvm_identifier(id)
            .send()
            .await
            .map_err(|e| self.api.error("TerminateMicrovm", e))?;
        self.live.remove(id);
        Ok(())
    }

    /// A new HTTPS connection to a microVM's endpoint through the proxy.
    pub(crate) async fn proxied(&self, id: &str) -> Result<HttpConn> {
        let tcp = tokio::net::TcpStream::connect(self.proxy_addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(format!("{id}.localhost"))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .context("TLS handshake with the proxy")?;
        HttpConn::over(tls).await
    }

    /// A new stream to the app's port the way the proxy opens one (the
    /// control plane's connect), without the proxy.
    pub(crate) async fn direct(&self, id: &str) -> Result<HttpConn> {
        let c = self
            .control
            .connect(&self.account, id, APP_PORT)
            .await
            .with_context(|| format!("connect to {id} port {APP_PORT}"))?;
        HttpConn::over(c.io).await
    }

    /// One GET through the proxy on a new connection.
    async fn get_proxied(&self, id: &str, token: &str, path: &str) -> Result<u64> {
        let mut c = self.proxied(id).await?;
        c.get(&self.host(id), Some(token), path).await
    }

    /// Warmed clones of `snapshot` waiting in the pool: running engine
    /// microVMs of the snapshot that RunMicrovm has not handed out.
    fn warm_clones(&self, snapshot: &Snapshot) -> usize {
        let Ok(dir) = std::fs::read_dir(self.engine_dir.join("vms")) else {
            return 0;
        };
        dir.flatten()
            .filter_map(|e| load_vm_record(&e.path()).ok())
            .filter(|r| {
                matches!(r.state, RecordedState::Running { .. })
                    && r.memory.base == MemoryBase::Snapshot(snapshot.id.clone())
                    && !self.handed_out.contains(r.id.as_str())
            })
            .count()
    }

    /// Wait until every snapshot this server serves has its warmed clones
    /// and a pre-started QEMU again, and this process's QEMUs are idle.
    pub(crate) async fn settle(&self) -> Result<()> {
        let started = Instant::now();
        let hz = clock_ticks_per_sec();
        loop {
            let missing: Vec<String> = self
                .snapshots
                .iter()
                .filter_map(|s| {
                    let warm = self.warm_clones(s);
                    let waiting = self.backend.pooled(s);
                    (warm < self.warm_pool_depth || waiting < 1).then(|| {
                        format!(
                            "{}: {warm} warmed clones, {waiting} pre-started QEMUs",
                            s.id
                        )
                    })
                })
                .collect();
            let (t0, procs) = descendants_ticks();
            tokio::time::sleep(QUIET_WINDOW).await;
            let (t1, _) = descendants_ticks();
            let busy_cores = t1.saturating_sub(t0) as f64 / hz / QUIET_WINDOW.as_secs_f64();
            let limit = QUIET_CORES + QUIET_CORES_PER_QEMU * (procs / 2) as f64;
            if missing.is_empty() && busy_cores <= limit {
                return Ok(());
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                bail!(
                    "the server did not settle within {} s: {}; this process's QEMUs used {busy_cores:.2} cores (quiet is {limit:.2})",
                    SETTLE_TIMEOUT.as_secs(),
                    if missing.is_empty() { "pools full".to_string() } else { missing.join("; ") }
                );
            }
        }
    }
}

/// An SDK client of the server with its admin key.
fn sdk_client(api_url: &str, data_dir: &Path) -> Result<Api> {
    let endpoint = Endpoint::parse(api_url)?;
    let creds = creds::resolve(&|_| None, data_dir)?;
    let conf = aws_sdk_lambdamicrovms::Config::builder()
        .endpoint_url(&endpoint.url)
        .region(Region::new(REGION))
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
        region: REGION.to_string(),
        creds,
    })
}

/// Build `dir` as a new image `name` through the API, to CREATED.
pub(crate) async fn build_image(s: &Server, dir: &Path, name: &str) -> Result<Built> {
    let api = &s.api;
    let code_uri = code::code_uri(api, CodeArg::Dir(dir.to_path_buf())).await?;
    let out = api
        .sdk
        .create_microvm_image()
        .name(name)
        .base_image_arn(base_image_arn(BASE_IMAGE, REGION))
        .build_role_arn(default_build_role_arn(s.account.as_str()))
        .code_artifact(CodeArtifact::Uri(code_uri))
        .send()
        .await
        .map_err(|e| api.error("CreateMicrovmImage", e))?;
    let arn = out.image_arn().to_string();
    let version = out.image_version().to_string();
    let build_id = follow::latest_build(api, &arn, &version, follow::FIRST_BUILD_WAIT)
        .await?
        .with_context(|| format!("{name}: version {version} shows no build"))?
        .build_id()
        .to_string();
    let build = follow::BuildRef {
        image_arn: arn.clone(),
        version: version.clone(),
        build_id,
    };
    follow::wait_created(api, &build, name, Instant::now(), BUILD_TIMEOUT, POLL).await?;
    let image_id = follow::image_id(&arn).to_string();
    let image = s.store.get_image(&s.account, &image_id)?;
    let v = s.store.get_image_version(&s.account, &image_id, &version)?;
    let snapshot_id = v.doc["hearthBuild"]["snapshotId"]
        .as_str()
        .with_context(|| format!("{name} version {version} names no snapshot"))?;
    let snapshot = s
        .backend
        .catalog()
        .get(&SnapshotId::new(snapshot_id.to_string())?)
        .with_context(|| format!("the snapshot of {name}"))?;
    Ok(Built {
        arn,
        image,
        version,
        snapshot,
    })
}

// ------------------------------------------------------------ engine baselines

/// Start the example's app in a booted guest the way a build does (the
/// file written, CMD run as the supervised process `app`).
async fn start_app(vm: &QemuVm, server_py: &[u8]) -> Result<()> {
    let agent = vm.agent();
    agent
        .write_file("/app/server.py", server_py, None, T)
        .await
        .context("write the app")?;
    let p = agent
        .exec(
            ExecRequest {
                argv: vec!["python3".into(), "/app/server.py".into()],
                restart: RestartPolicy::OnFailure,
                name: Some("app".into()),
                ..Default::default()
            },
            T,
        )
        .await
        .context("start the app")?;
    // A named process outlives its stream.
    drop(p);
    Ok(())
}

/// Poll the app's `GET /` until it answers 200.
async fn wait_app(vm: &QemuVm) -> Result<()> {
    let t0 = Instant::now();
    loop {
        match agent_get(vm.agent(), "/").await {
            Ok(_) => return Ok(()),
            Err(e) if t0.elapsed() > T => {
                return Err(e.context("the app did not answer"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The engine's cold boot of the base image, with the example's machine,
/// to its app's first answer. Returns the time and the microVM.
async fn boot_to_app(
    g: &Global,
    backend: &QemuBackend,
    machine: &MachineConfig,
    server_py: &[u8],
    anonymous_ram: bool,
) -> Result<(Duration, QemuVm)> {
    let spec = g.boot_spec(
        VmId::random("bmvm-boot"),
        Some(BASE_IMAGE),
        machine.mem_size_mib,
        machine.vcpu_count,
        Lifetime::Process,
    )?;
    let t0 = Instant::now();
    let vm = backend
        .boot_with(spec, anonymous_ram)
        .await
        .context("baseline cold boot")?;
    start_app(&vm, server_py).await?;
    wait_app(&vm).await?;
    Ok((t0.elapsed(), vm))
}

/// A full-RAM restore into a QEMU started beforehand (not timed): to
/// agent-ready, and to the app's first answer.
async fn full_restore(
    backend: &QemuBackend,
    full: &FullRamSnapshot,
) -> Result<(Duration, Duration)> {
    let waiting = backend
        .prestart_full_ram(full)
        .await
        .context("start a QEMU for the full-RAM restore")?;
    let t0 = Instant::now();
    let vm = backend
        .restore_full_ram(waiting, full, VmId::random("bmvm-full"))
        .await
        .context("full-RAM restore")?;
    let agent_ready = t0.elapsed();
    agent_get(vm.agent(), "/").await?;
    let answered = t0.elapsed();
    vm.terminate().await?;
    Ok((agent_ready, answered))
}

/// The engine alone: a clone of `snap` launched, its app asked once,
/// suspended, then resumed into a QEMU started beforehand (as the control
/// plane's is): to agent-ready, and to the app's first answer.
async fn engine_resume(backend: &QemuBackend, snap: &Snapshot) -> Result<(Duration, Duration)> {
    let mut vm = backend
        .launch(snap, LaunchSpec::ephemeral(VmId::random("bmvm-resume")))
        .await
        .context("engine launch")?;
    agent_get(vm.agent(), "/").await?;
    let suspended = vm.suspend().await.context("engine suspend")?;
    drop(vm);
    backend.prestart(snap, 1).await?;
    let t0 = Instant::now();
    let vm = backend.resume(suspended).await.context("engine resume")?;
    let resumed = t0.elapsed();
    agent_get(vm.agent(), "/").await?;
    let answered = t0.elapsed();
    vm.terminate().await?;
    backend.prestart(snap, 1).await?;
    Ok((resumed, answered))
}

/// A clone of the bench app's snapshot launched by the engine alone, with
/// `mib` MiB dirtied; the QEMU it took from the pool is replaced after.
async fn dirtied_clone(backend: &QemuBackend, snap: &Snapshot, mib: u32) -> Result<QemuVm> {
    let vm = backend
        .launch(snap, LaunchSpec::ephemeral(VmId::random("bmvm-dirty")))
        .await
        .context("engine launch")?;
    agent_get(vm.agent(), &format!("/dirty?mib={mib}")).await?;
    Ok(vm)
}

/// The engine's suspend of such a clone: time and bytes on disk.
async fn engine_suspend(
    backend: &QemuBackend,
    snap: &Snapshot,
    mib: u32,
) -> Result<(Duration, u64)> {
    let mut vm = dirtied_clone(backend, snap, mib).await?;
    let t0 = Instant::now();
    let s = vm.suspend().await.context("engine suspend")?;
    let took = t0.elapsed();
    drop(vm);
    let bytes = s.allocated_bytes();
    backend.discard_suspended(s).await?;
    backend.prestart(snap, 1).await?;
    Ok((took, bytes))
}

/// QEMU's full-RAM save of such a clone: time and stream bytes.
async fn engine_full_save(
    backend: &QemuBackend,
    snap: &Snapshot,
    mib: u32,
    path: &Path,
) -> Result<(Duration, u64)> {
    let vm = dirtied_clone(backend, snap, mib).await?;
    let t0 = Instant::now();
    let full = vm.save_full_ram(path).await.context("full-RAM save")?;
    let took = t0.elapsed();
    let _ = std::fs::remove_file(path);
    backend.prestart(snap, 1).await?;
    Ok((took, full.stream_bytes))
}

// ------------------------------------------------------------ figures

/// One launch: the RunMicrovm call, the token minted after it, the first
/// proxied response; all from the RunMicrovm call.
#[derive(Default)]
struct Launch {
    run: Samples,
    token: Samples,
    total: Samples,
}

impl Launch {
    fn json(&self) -> Value {
        json!({
            "runMicrovmMs": self.run.json(),
            "toTokenMs": self.token.json(),
            "toFirstProxiedResponseMs": self.total.json(),
        })
    }
}

async fn launch_sample(s: &mut Server, b: &Built, l: &mut Launch) -> Result<()> {
    let t0 = Instant::now();
    let id = s.run(&b.arn, false).await?;
    l.run.push_ms(t0.elapsed());
    let token = s.token(&id).await?;
    l.token.push_ms(t0.elapsed());
    s.get_proxied(&id, &token, "/").await?;
    l.total.push_ms(t0.elapsed());
    s.terminate(&id).await
}

/// The suspend figures of one dirtied size.
#[derive(Default)]
struct Suspend {
    mib: u32,
    api: Samples,
    api_disk_mib: Samples,
    engine: Samples,
    engine_disk_mib: Samples,
    full_save: Samples,
    full_stream_mib: Samples,
}

/// Density figures.
#[derive(Default)]
struct Density {
    asked: usize,
    running: usize,
    refusal: Option<String>,
    run_ms: Samples,
    first_response_ms: Samples,
    pss_mib: Samples,
    uss_mib: Samples,
    mem_available_drop_mib: f64,
    cpu_percent: Samples,
    idle_secs: u64,
    suspend_ms: Samples,
    suspended: usize,
    disk_mib: Samples,
    free_bytes: u64,
    /// With every microVM suspended: the drop of MemAvailable from before
    /// the fill, MiB, in all.
    suspended_mem_drop_mib: f64,
    /// Suspended microVMs that still had a supervisor or QEMU recorded.
    suspended_with_process: usize,
    /// ResumeMicrovm of the first microVM suspended, then its first
    /// proxied answer, once every other one was suspended, ms.
    oldest_resume_ms: Option<f64>,
}

/// Everything one run measured.
#[derive(Default)]
struct Measured {
    hello_machine: Option<MachineConfig>,
    launch_warm: Launch,
    launch_cold: Launch,
    boot_to_app: Samples,
    full_restore_agent: Samples,
    full_restore_app: Samples,
    full_save_idle_ms: f64,
    full_stream_idle_bytes: u64,
    auto_resume: Samples,
    running_request: Samples,
    resume_call: Samples,
    first_request_after_resume: Samples,
    engine_resume_agent: Samples,
    engine_resume_app: Samples,
    suspend_idle: Samples,
    suspends: Vec<Suspend>,
    latency_proxied: Samples,
    latency_direct: Samples,
    throughput_proxied: Samples,
    throughput_direct: Samples,
    density: Option<Density>,
}

impl Measured {
    /// Proxied minus direct latency of each iteration's pair of requests.
    fn latency_overhead(&self) -> Samples {
        Samples {
            v: self
                .latency_proxied
                .v
                .iter()
                .zip(&self.latency_direct.v)
                .map(|(p, d)| p - d)
                .collect(),
        }
    }
}

/// The figures of the first server (warm pool depth 1).
async fn phase_warm(
    g: &Global,
    a: &MicrovmArgs,
    s: &mut Server,
    dirs: (&Path, &Path),
    work: &Path,
    m: &mut Measured,
) -> Result<(Built, Built)> {
    let tag = std::process::id();
    note!("building {HELLO} and the bench app");
    let hello = build_image(s, dirs.0, &format!("bench-{HELLO}-{tag}")).await?;
    let dirty = build_image(s, dirs.1, &format!("bench-dirty-{tag}")).await?;
    s.prepare(&hello).await?;
    s.prepare(&dirty).await?;
    let machine = hello.snapshot.record.machine.clone();
    m.hello_machine = Some(machine.clone());
    let hello_py = std::fs::read(dirs.0.join("server.py"))?;

    note!(
        "baseline: engine cold boots to the app's answer ({})",
        a.boot_runs
    );
    for _ in 0..a.boot_runs {
        s.settle().await?;
        let (took, vm) = boot_to_app(g, &s.backend, &machine, &hello_py, false).await?;
        m.boot_to_app.push_ms(took);
        vm.terminate().await?;
    }
    // The full-RAM baseline's source: a plain QEMU (anonymous RAM) booted
    // and its app started, as a user without Hearth's memory files would.
    s.settle().await?;
    let (_, vm) = boot_to_app(g, &s.backend, &machine, &hello_py, true).await?;
    for _ in 0..3 {
        agent_get(vm.agent(), "/").await?;
    }
    let t0 = Instant::now();
    let full = vm
        .save_full_ram(&work.join("full-ram.mig"))
        .await
        .context("full-RAM save")?;
    m.full_save_idle_ms = ms(t0.elapsed());
    m.full_stream_idle_bytes = full.stream_bytes;

    note!(
        "launch with the warm pool, and full-RAM restores ({} each)",
        a.runs
    );
    for i in 0..a.runs {
        s.settle().await?;
        launch_sample(s, &hello, &mut m.launch_warm).await?;
        s.settle().await?;
        let (agent, app) = full_restore(&s.backend, &full).await?;
        m.full_restore_agent.push_ms(agent);
        m.full_restore_app.push_ms(app);
        note!(
            "  {}: launch {:.1} ms, full-RAM restore to the app's answer {:.1} ms",
            i + 1,
            m.launch_warm.total.v.last().copied().unwrap_or(0.0),
            ms(app)
        );
    }
    let _ = std::fs::remove_file(&full.stream);

    note!(
        "auto-resume, and requests to the running microVM ({} each)",
        a.runs
    );
    s.settle().await?;
    let id = s.run(&hello.arn, true).await?;
    let token = s.token(&id).await?;
    s.get_proxied(&id, &token, "/").await?;
    for _ in 0..a.runs {
        s.settle().await?;
        let t0 = Instant::now();
        s.suspend(&id).await?;
        m.suspend_idle.push_ms(t0.elapsed());
        s.settle().await?;
        let t0 = Instant::now();
        s.get_proxied(&id, &token, "/").await?;
        m.auto_resume.push_ms(t0.elapsed());
        s.settle().await?;
        let t0 = Instant::now();
        s.get_proxied(&id, &token, "/").await?;
        m.running_request.push_ms(t0.elapsed());
        // Where the auto-resume's time goes: ResumeMicrovm, then the
        // first request.
        s.settle().await?;
        s.suspend(&id).await?;
        s.settle().await?;
        let t0 = Instant::now();
        s.resume(&id).await?;
        m.resume_call.push_ms(t0.elapsed());
        let t0 = Instant::now();
        s.get_proxied(&id, &token, "/").await?;
        m.first_request_after_resume.push_ms(t0.elapsed());
        s.settle().await?;
        let (resumed, answered) = engine_resume(&s.backend, &hello.snapshot).await?;
        m.engine_resume_agent.push_ms(resumed);
        m.engine_resume_app.push_ms(answered);
    }
    s.terminate(&id).await?;

    for dirty_mib in [4u32, 256] {
        note!(
            "suspend with {dirty_mib} MiB dirtied, and the engine's baselines ({} each)",
            a.suspend_runs
        );
        let mut f = Suspend {
            mib: dirty_mib,
            ..Default::default()
        };
        for _ in 0..a.suspend_runs {
            s.settle().await?;
            let id = s.run(&dirty.arn, false).await?;
            let token = s.token(&id).await?;
            s.get_proxied(&id, &token, &format!("/dirty?mib={dirty_mib}"))
                .await?;
            let t0 = Instant::now();
            s.suspend(&id).await?;
            f.api.push_ms(t0.elapsed());
            let dir = s.engine_dir.join("vms").join(&id);
            f.api_disk_mib
                .push(mib(SuspendedVm::load(&dir)?.allocated_bytes()));
            s.terminate(&id).await?;
            s.settle().await?;
            let (took, bytes) = engine_suspend(&s.backend, &dirty.snapshot, dirty_mib).await?;
            f.engine.push_ms(took);
            f.engine_disk_mib.push(mib(bytes));
            s.settle().await?;
            let (took, bytes) = engine_full_save(
                &s.backend,
                &dirty.snapshot,
                dirty_mib,
                &work.join("dirty.mig"),
            )
            .await?;
            f.full_save.push_ms(took);
            f.full_stream_mib.push(mib(bytes));
        }
        m.suspends.push(f);
    }

    note!(
        "proxied vs direct: {} GET / each, {} downloads of {} MiB each",
        a.requests,
        a.downloads,
        a.download_mib
    );
    s.settle().await?;
    let id = s.run(&hello.arn, false).await?;
    proxied_vs_direct(
        s,
        &id,
        a.requests,
        &mut m.latency_proxied,
        &mut m.latency_direct,
    )
    .await?;
    s.terminate(&id).await?;

    s.settle().await?;
    let id = s.run(&dirty.arn, false).await?;
    let token = s.token(&id).await?;
    let host = s.host(&id);
    let mut kept = s.proxied(&id).await?;
    let path = format!("/bytes?mib={}", a.download_mib);
    let want = u64::from(a.download_mib) << 20;
    // One of each first: the app's download path translated.
    kept.get(&host, Some(&token), &path).await?;
    s.direct(&id).await?.get(&host, None, &path).await?;
    for i in 0..a.downloads {
        for proxied in [i % 2 == 0, i % 2 == 1] {
            s.settle().await?;
            let (took, n) = if proxied {
                let t0 = Instant::now();
                let n = kept.get(&host, Some(&token), &path).await?;
                (t0.elapsed(), n)
            } else {
                time_direct(s, &id, &host, &path).await?
            };
            ensure!(n == want, "{path} gave {n} bytes, not {want}");
            let rate = mib(n) / took.as_secs_f64();
            if proxied {
                m.throughput_proxied.push(rate);
            } else {
                m.throughput_direct.push(rate);
            }
        }
    }
    drop(kept);
    s.terminate(&id).await?;
    Ok((hello, dirty))
}

/// `n` samples of `GET /` on microVM `id` through the proxy (one kept-alive
/// connection) and directly (the control plane's connect), alternating
/// which goes first, after 10 untimed rounds on both paths (past the first
/// requests' translation under TCG).
pub(crate) async fn proxied_vs_direct(
    s: &Server,
    id: &str,
    n: usize,
    proxied: &mut Samples,
    direct: &mut Samples,
) -> Result<()> {
    let token = s.token(id).await?;
    let host = s.host(id);
    let mut kept = s.proxied(id).await?;
    for _ in 0..10 {
        kept.get(&host, Some(&token), "/").await?;
        s.direct(id).await?.get(&host, None, "/").await?;
        tokio::time::sleep(LATENCY_PACE).await;
    }
    s.settle().await?;
    for i in 0..n {
        let (p, d) = if i % 2 == 0 {
            let p = time_proxied(&mut kept, &host, &token, "/").await?;
            (p, time_direct(s, id, &host, "/").await?.0)
        } else {
            let d = time_direct(s, id, &host, "/").await?.0;
            (time_proxied(&mut kept, &host, &token, "/").await?, d)
        };
        proxied.push_ms(p);
        direct.push_ms(d);
        tokio::time::sleep(LATENCY_PACE).await;
    }
    Ok(())
}

/// One GET on a kept connection through the proxy, timed.
pub(crate) async fn time_proxied(
    kept: &mut HttpConn,
    host: &str,
    token: &str,
    path: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    kept.get(host, Some(token), path).await?;
    Ok(t0.elapsed())
}

/// One GET over a new direct guest stream, its opening timed too; and the
/// body's length.
pub(crate) async fn time_direct(
    s: &Server,
    id: &str,
    host: &str,
    path: &str,
) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    let n = s.direct(id).await?.get(host, None, path).await?;
    Ok((t0.elapsed(), n))
}

/// The figures of the second server (no warm pool; the density limit).
async fn phase_cold(
    a: &MicrovmArgs,
    s: &mut Server,
    hello: &Built,
    m: &mut Measured,
) -> Result<()> {
    s.prepare(hello).await?;
    note!("launch without the warm pool ({})", a.runs);
    // One launch first: a server that has run the image before has its
    // QEMU pre-started.
    s.settle().await?;
    launch_sample(s, hello, &mut Launch::default()).await?;
    for i in 0..a.runs {
        s.settle().await?;
        launch_sample(s, hello, &mut m.launch_cold).await?;
        note!(
            "  {}: launch {:.1} ms",
            i + 1,
            m.launch_cold.total.v.last().copied().unwrap_or(0.0)
        );
    }
    if a.density == 0 {
        return Ok(());
    }
    note!("density: up to {} idle microVMs, then one more", a.density);
    s.settle().await?;
    let mut d = Density {
        asked: a.density,
        idle_secs: a.idle_secs,
        ..Default::default()
    };
    let avail_before = mem_available_kib();
    let mut ids = Vec::new();
    for i in 0..=a.density {
        // The QEMU the previous launch took is pre-started again.
        let t0 = Instant::now();
        while s.backend.pooled(&hello.snapshot) < 1 && t0.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t0 = Instant::now();
        match s.run(&hello.arn, false).await {
            Ok(id) => {
                d.run_ms.push_ms(t0.elapsed());
                let token = s.token(&id).await?;
                let t1 = Instant::now();
                s.get_proxied(&id, &token, "/").await?;
                d.first_response_ms.push_ms(t1.elapsed());
                ids.push(id);
                if (i + 1) % 10 == 0 {
                    note!("  {} running", i + 1);
                }
            }
            Err(e) => {
                d.refusal = Some(match e.code() {
                    Some(code) => code.to_string(),
                    None => e.to_string(),
                });
                note!("  RunMicrovm {} refused: {e}", i + 1);
                break;
            }
        }
    }
    d.running = ids.len();
    // Settle: the last launches' pools, then idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids: Vec<(u32, u32)> = ids
        .iter()
        .filter_map(|id| running_pids(&s.engine_dir, id))
        .collect();
    ensure!(
        pids.len() == ids.len(),
        "only {} of {} running microVMs have running records",
        pids.len(),
        ids.len()
    );
    let mut pss_total_kib = 0;
    for (sup, qemu) in &pids {
        let (q_pss, q_uss) = pss_uss_kib(*qemu).context("read a QEMU's smaps_rollup")?;
        let (s_pss, s_uss) = pss_uss_kib(*sup).unwrap_or((0, 0));
        pss_total_kib += q_pss + s_pss;
        d.pss_mib.push((q_pss + s_pss) as f64 / 1024.0);
        d.uss_mib.push((q_uss + s_uss) as f64 / 1024.0);
    }
    d.mem_available_drop_mib =
        avail_before.saturating_sub(mem_available_kib()) as f64 / 1024.0 / ids.len().max(1) as f64;
    let ticks = |pids: &[(u32, u32)]| -> Vec<u64> {
        pids.iter()
            .map(|(sup, qemu)| {
                proc_stat(*qemu).map_or(0, |s| s.1) + proc_stat(*sup).map_or(0, |s| s.1)
            })
            .collect()
    };
    let t0 = Instant::now();
    let before = ticks(&pids);
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let after = ticks(&pids);
    let secs = t0.elapsed().as_secs_f64();
    let hz = clock_ticks_per_sec();
    for (b, e) in before.iter().zip(&after) {
        d.cpu_percent
            .push(e.saturating_sub(*b) as f64 / hz / secs * 100.0);
    }
    note!(
        "  {} running: {:.1} MiB PSS in all, suspending them",
        ids.len(),
        pss_total_kib as f64 / 1024.0
    );
    for id in &ids {
        let t0 = Instant::now();
        s.suspend(id).await?;
        d.suspend_ms.push_ms(t0.elapsed());
        let dir = s.engine_dir.join("vms").join(id);
        d.disk_mib
            .push(mib(SuspendedVm::load(&dir)?.allocated_bytes()));
        d.suspended += 1;
    }
    suspended_fill(a, s, hello, avail_before, &mut ids, &mut d).await?;
    note!("  {} suspended; terminating them", d.suspended);
    for id in &ids {
        s.terminate(id).await?;
    }
    m.density = Some(d);
    Ok(())
}

/// Past the running cap: launch, call once and suspend microVMs one at a
/// time until `a.suspended` sit suspended at once; then check that none
/// keeps a process, read the host memory they hold, and resume the oldest
/// to show it is still whole.
async fn suspended_fill(
    a: &MicrovmArgs,
    s: &mut Server,
    hello: &Built,
    avail_before_kib: u64,
    ids: &mut Vec<String>,
    d: &mut Density,
) -> Result<()> {
    if a.suspended > ids.len() {
        note!(
            "  launching, calling and suspending more, up to {} suspended",
            a.suspended
        );
    }
    while ids.len() < a.suspended {
        let id = s
            .run(&hello.arn, false)
            .await
            .map_err(|e| anyhow!("RunMicrovm {} of the suspended fill: {e}", ids.len() + 1))?;
        ids.push(id.clone());
        let token = s.token(&id).await?;
        s.get_proxied(&id, &token, "/").await?;
        s.suspend(&id).await?;
        d.disk_mib.push(mib(
            SuspendedVm::load(&s.engine_dir.join("vms").join(&id))?.allocated_bytes()
        ));
        d.suspended += 1;
        if d.suspended.is_multiple_of(50) {
            note!("  {} suspended", d.suspended);
        }
    }
    d.free_bytes = free_bytes(&s.engine_dir);
    d.suspended_with_process = ids
        .iter()
        .filter(|id| running_pids(&s.engine_dir, id).is_some())
        .count();
    d.suspended_mem_drop_mib = avail_before_kib.saturating_sub(mem_available_kib()) as f64 / 1024.0;
    if let Some(oldest) = ids.first() {
        s.settle().await?;
        let t0 = Instant::now();
        s.resume(oldest).await?;
        let token = s.token(oldest).await?;
        s.get_proxied(oldest, &token, "/").await?;
        d.oldest_resume_ms = Some(ms(t0.elapsed()));
    }
    Ok(())
}

/// Both servers, one after the other; each is stopped (its microVMs
/// terminated, its pools drained) whether its figures succeed or not.
async fn measure(g: &Global, a: &MicrovmArgs, work: &Path, hello_dir: &Path) -> Result<Measured> {
    let data = work.join("data");
    let dirty_dir = work.join("dirty");
    std::fs::create_dir_all(&dirty_dir)?;
    std::fs::write(dirty_dir.join("Dockerfile"), DIRTY_DOCKERFILE)?;
    std::fs::write(dirty_dir.join("server.py"), DIRTY_SERVER_PY)?;
    let mut m = Measured::default();

    note!("server 1: --warm-pool-depth 1");
    let mut s = Server::start(g, &data, 1, SERVE_MAX_RUNNING, None).await?;
    let r = phase_warm(g, a, &mut s, (hello_dir, &dirty_dir), work, &mut m).await;
    s.stop().await;
    let (hello, _dirty) = r?;

    note!(
        "server 2: --warm-pool-depth 0 --max-running-microvms {}",
        a.density.max(1)
    );
    let mut s = Server::start(g, &data, 0, a.density.max(1), None).await?;
    let r = phase_cold(a, &mut s, &hello, &mut m).await;
    s.stop().await;
    r?;
    Ok(m)
}

// ------------------------------------------------------------ the report

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

pub(crate) fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub(crate) fn utc_date(unix_secs: u64) -> String {
    // Days to a civil date (proleptic Gregorian), H. Hinnant's algorithm.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}")
}

/// JSON as `serde_json`'s pretty printer writes it, except that arrays of
/// numbers stay on one line (the samples of a figure).
pub(crate) fn json_text(v: &Value) -> String {
    fn write(out: &mut String, v: &Value, indent: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match v {
            Value::Array(items) if items.iter().all(Value::is_number) => {
                let inner: Vec<String> = items.iter().map(Value::to_string).collect();
                out.push('[');
                out.push_str(&inner.join(", "));
                out.push(']');
            }
            Value::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    write(out, item, indent + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push(']');
            }
            Value::Object(map) if !map.is_empty() => {
                out.push_str("{\n");
                for (i, (k, item)) in map.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push_str(": ");
                    write(out, item, indent + 1);
                    out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(&mut out, v, 0);
    out
}

/// The tables: one of timed figures beside baselines and targets, one of
/// throughput, one of density.
fn tables(m: &Measured) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure | Hearth: p50 (min / p90 / max, n) | target | baseline: p50 (min / p90 / max, n) | baseline |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    let mut row = |cells: &[&str]| {
        let _ = writeln!(t, "{}", md_row(cells));
    };
    let lw = &m.launch_warm;
    row(&[
        "**launch, warm pool (depth 1), ms**: RunMicrovm call, token minted, first proxied `GET /` answered (new TLS connection)",
        &format!("**{}**", lw.total.cell(1)),
        &target_cell(TARGET_LAUNCH_WARM_MS, "ms", lw.total.p50()),
        &m.full_restore_app.cell(1),
        "engine: QEMU full-RAM restore into a QEMU started beforehand, to the app's first answer over the agent stream (no API, store, token, proxy or TLS)",
    ]);
    row(&[
        "↳ of which the RunMicrovm call, ms",
        &lw.run.cell(1),
        "",
        &m.full_restore_agent.cell(1),
        "the same restore to agent-ready",
    ]);
    row(&["↳ to the token minted, ms", &lw.token.cell(1), "", "", ""]);
    row(&[
        "",
        "",
        "",
        &m.boot_to_app.cell(1),
        "engine: cold boot of the base image with the example's machine, the app written and started as a build starts it, to its first answer over the agent stream",
    ]);
    let lc = &m.launch_cold;
    row(&[
        "**launch, no warm pool (depth 0, QEMU pre-started), ms**: as above",
        &format!("**{}**", lc.total.cell(1)),
        "",
        &m.full_restore_app.cell(1),
        "engine: QEMU full-RAM restore into a QEMU started beforehand, to the app's first answer (as above)",
    ]);
    row(&[
        "↳ of which the RunMicrovm call, ms",
        &lc.run.cell(1),
        "",
        &m.full_restore_agent.cell(1),
        "the same restore to agent-ready",
    ]);
    row(&["↳ to the token minted, ms", &lc.token.cell(1), "", "", ""]);
    row(&[
        "**auto-resume, ms**: `GET /` through the proxy to a SUSPENDED microVM (autoResumeEnabled) to its answer, new TLS connection",
        &format!("**{}**", m.auto_resume.cell(1)),
        &target_cell(TARGET_AUTO_RESUME_MS, "ms", m.auto_resume.p50()),
        &m.running_request.cell(1),
        "the same request to the same microVM while RUNNING (after the resume), new TLS connection",
    ]);
    row(&[
        "",
        "",
        "",
        &m.engine_resume_app.cell(1),
        "engine: resume of a clone suspended after one request, into a QEMU started beforehand, to the app's first answer over the agent stream (no API, store, microVM task, token, proxy or TLS)",
    ]);
    row(&[
        "↳ ResumeMicrovm call instead, ms",
        &m.resume_call.cell(1),
        "",
        &m.engine_resume_agent.cell(1),
        "the same engine resume to agent-ready",
    ]);
    row(&[
        "↳ then the first `GET /` through the proxy, ms",
        &m.first_request_after_resume.cell(1),
        "",
        "",
        "",
    ]);
    row(&[
        "SuspendMicrovm call, idle hello-stdlib, ms",
        &m.suspend_idle.cell(1),
        "",
        "",
        "",
    ]);
    for f in &m.suspends {
        let target = if f.mib == 256 {
            target_cell(TARGET_SUSPEND_256_MS, "ms", f.api.p50())
        } else {
            String::new()
        };
        row(&[
            &format!("**SuspendMicrovm call to its answer, {} MiB dirtied, ms**", f.mib),
            &format!("**{}**", f.api.cell(1)),
            &target,
            &f.engine.cell(1),
            "engine: suspend of a clone of the same snapshot, same MiB dirtied (no API, store or control plane)",
        ]);
        row(&[
            "",
            "",
            "",
            &f.full_save.cell(1),
            "engine: QEMU full-RAM save (migration to a file) of such a clone",
        ]);
        row(&[
            &format!("↳ suspended microVM on disk, {} MiB dirtied, MiB", f.mib),
            &f.api_disk_mib.cell(1),
            "",
            &f.full_stream_mib.cell(1),
            "the full-RAM save's stream, MiB",
        ]);
    }
    let p50_difference = match (m.latency_proxied.p50(), m.latency_direct.p50()) {
        (Some(p), Some(d)) => Some(p - d),
        _ => None,
    };
    let paired = m.latency_overhead();
    row(&[
        "**`GET /` latency through the proxy, ms**: HTTPS on one kept-alive connection; the proxy opens a guest stream per request",
        &format!("**{}**", m.latency_proxied.cell(2)),
        "",
        &m.latency_direct.cell(2),
        "direct: the control plane's connect (the guest stream the proxy uses) and the same request, no proxy, no TLS",
    ]);
    row(&[
        "**proxy overhead, ms**: proxied − direct, paired (the two requests of one iteration, the order alternating)",
        &format!("**{}**", paired.cell(2)),
        &target_cell(TARGET_PROXY_OVERHEAD_MS, "ms", paired.p50()),
        "",
        "",
    ]);
    row(&[
        "↳ proxied p50 − direct p50, ms",
        &p50_difference.map_or("n/a".into(), |o| format!("{o:.2}")),
        "",
        "",
        "",
    ]);
    row(&[
        "**download through the proxy, MiB/s** (HTTPS, kept-alive connection)",
        &format!("**{}**", m.throughput_proxied.cell(1)),
        "",
        &m.throughput_direct.cell(1),
        "direct: the control plane's connect, a new guest stream per download (the proxy opens one too)",
    ]);
    if let Some(d) = &m.density {
        let _ = writeln!(t);
        let _ = writeln!(t, "| density | value | target |");
        let _ = writeln!(t, "|---|---|---|");
        let mut row = |cells: &[&str]| {
            let _ = writeln!(t, "{}", md_row(cells));
        };
        let running_target = format!(
            "≥ {TARGET_RUNNING}: {}",
            if d.running >= TARGET_RUNNING {
                "met"
            } else {
                "not shown by this run"
            }
        );
        row(&[
            "**running idle microVMs of hello-stdlib**",
            &if d.running >= d.asked {
                format!(
                    "**at least {}** (the bench's cap, --max-running-microvms {}); RunMicrovm {} then answered {}",
                    d.running,
                    d.asked,
                    d.running + 1,
                    d.refusal
                        .as_deref()
                        .unwrap_or("OK: the limit did not hold")
                )
            } else {
                format!(
                    "**{}**: RunMicrovm {} failed before the cap of {}: {}",
                    d.running,
                    d.running + 1,
                    d.asked,
                    d.refusal.as_deref().unwrap_or("(no answer recorded)")
                )
            },
            &running_target,
        ]);
        row(&["RunMicrovm call while filling, ms", &d.run_ms.cell(1), ""]);
        row(&[
            "first proxied `GET /` after each launch, ms",
            &d.first_response_ms.cell(1),
            "",
        ]);
        row(&[
            "host memory per idle microVM: PSS of QEMU + supervisor, MiB",
            &d.pss_mib.cell(1),
            "",
        ]);
        row(&[
            "host memory per idle microVM: private (USS) of QEMU + supervisor, MiB",
            &d.uss_mib.cell(1),
            "",
        ]);
        row(&[
            "host memory per idle microVM: drop of MemAvailable over the fill / microVMs, MiB",
            &format!("{:.1}", d.mem_available_drop_mib),
            "",
        ]);
        row(&[
            &format!(
                "CPU per idle microVM over {} s (QEMU + supervisor), % of a core",
                d.idle_secs
            ),
            &d.cpu_percent.cell(2),
            "",
        ]);
        row(&[
            "SuspendMicrovm call, idle microVM, ms",
            &d.suspend_ms.cell(1),
            "",
        ]);
        let p50 = d.disk_mib.p50().unwrap_or(0.0);
        let fit = if p50 > 0.0 {
            (d.free_bytes as f64 / 1_048_576.0 / p50) as u64
        } else {
            0
        };
        row(&["disk per suspended microVM, MiB", &d.disk_mib.cell(2), ""]);
        row(&[
            "**suspended microVMs**",
            &format!(
                "**{} at once in this run**, {} of them with a process left; at the p50 size, {:.1} GiB for {TARGET_SUSPENDED}; the {:.0} GiB still free hold about {fit} more",
                d.suspended,
                d.suspended_with_process,
                p50 * TARGET_SUSPENDED as f64 / 1024.0,
                d.free_bytes as f64 / 1_073_741_824.0
            ),
            &format!(
                "≥ {TARGET_SUSPENDED}: {}",
                if d.suspended >= TARGET_SUSPENDED && d.suspended_with_process == 0 {
                    "met"
                } else {
                    "not shown by this run (see the disk estimate)"
                }
            ),
        ]);
        row(&[
            "host memory held with every microVM suspended: drop of MemAvailable from before the fill, MiB in all",
            &format!("{:.1}", d.suspended_mem_drop_mib),
            "",
        ]);
        if let Some(v) = d.oldest_resume_ms {
            row(&[
                "first microVM suspended, resumed after all the others: ResumeMicrovm to its first proxied answer, ms",
                &format!("{v:.1}"),
                "",
            ]);
        }
    }
    t
}

fn report_json(m: &Measured, host: &Value) -> Value {
    json!({
        "host": host,
        "guest": m.hello_machine.as_ref().map(|mc| json!({"memMib": mc.mem_size_mib, "vcpus": mc.vcpu_count})),
        "targets": {
            "launchWarmP50Ms": TARGET_LAUNCH_WARM_MS,
            "autoResumeP50Ms": TARGET_AUTO_RESUME_MS,
            "proxyOverheadP50Ms": TARGET_PROXY_OVERHEAD_MS,
            "suspend256MibP50Ms": TARGET_SUSPEND_256_MS,
            "runningIdle": TARGET_RUNNING,
            "suspended": TARGET_SUSPENDED,
        },
        "launchWarmPool": m.launch_warm.json(),
        "launchNoWarmPool": m.launch_cold.json(),
        "baselineEngineColdBootToAppMs": m.boot_to_app.json(),
        "baselineFullRamRestoreToAgentMs": m.full_restore_agent.json(),
        "baselineFullRamRestoreToAppMs": m.full_restore_app.json(),
        "baselineFullRamSaveIdleMs": round2(m.full_save_idle_ms),
        "baselineFullRamStreamIdleMib": round2(mib(m.full_stream_idle_bytes)),
        "autoResumeMs": m.auto_resume.json(),
        "runningRequestMs": m.running_request.json(),
        "resumeMicrovmMs": m.resume_call.json(),
        "baselineEngineResumeToAgentMs": m.engine_resume_agent.json(),
        "baselineEngineResumeToAppMs": m.engine_resume_app.json(),
        "firstRequestAfterResumeMs": m.first_request_after_resume.json(),
        "suspendIdleMs": m.suspend_idle.json(),
        "suspend": m.suspends.iter().map(|f| json!({
            "dirtiedMib": f.mib,
            "suspendMicrovmMs": f.api.json(),
            "suspendedDiskMib": f.api_disk_mib.json(),
            "baselineEngineSuspendMs": f.engine.json(),
            "baselineEngineSuspendedDiskMib": f.engine_disk_mib.json(),
            "baselineFullRamSaveMs": f.full_save.json(),
            "baselineFullRamStreamMib": f.full_stream_mib.json(),
        })).collect::<Vec<_>>(),
        "latencyProxiedMs": m.latency_proxied.json(),
        "latencyDirectMs": m.latency_direct.json(),
        "proxyOverheadPairedMs": m.latency_overhead().json(),
        "throughputProxiedMibPerSec": m.throughput_proxied.json(),
        "throughputDirectMibPerSec": m.throughput_direct.json(),
        "density": m.density.as_ref().map(density_json),
    })
}

fn density_json(d: &Density) -> Value {
    json!({
        "asked": d.asked,
        "running": d.running,
        "nextRunAnswered": d.refusal,
        "runMicrovmMs": d.run_ms.json(),
        "firstResponseMs": d.first_response_ms.json(),
        "pssMibPerMicrovm": d.pss_mib.json(),
        "ussMibPerMicrovm": d.uss_mib.json(),
        "memAvailableDropMibPerMicrovm": round2(d.mem_available_drop_mib),
        "idleCpuPercentPerMicrovm": d.cpu_percent.json(),
        "idleSecs": d.idle_secs,
        "suspendMicrovmMs": d.suspend_ms.json(),
        "suspended": d.suspended,
        "diskMibPerSuspended": d.disk_mib.json(),
        "freeBytes": d.free_bytes,
        "suspendedWithProcess": d.suspended_with_process,
        "memAvailableDropMibAllSuspended": round2(d.suspended_mem_drop_mib),
        "oldestResumeToAnswerMs": d.oldest_resume_ms.map(round2),
    })
}

pub async fn microvm(g: &Global, a: MicrovmArgs) -> Result<()> {
    ensure!(a.runs >= 3, "--runs must be at least 3");
    ensure!(a.boot_runs >= 1, "--boot-runs must be at least 1");
    ensure!(a.suspend_runs >= 1, "--suspend-runs must be at least 1");
    ensure!(
        a.requests >= 1 && a.downloads >= 1,
        "--requests and --downloads must be at least 1"
    );
    let hello_dir = a.examples.join(HELLO);
    ensure!(
        hello_dir.join("Dockerfile").is_file() && hello_dir.join("server.py").is_file(),
        "{} has no Dockerfile and server.py (run from the repository root, or pass --examples)",
        hello_dir.display()
    );
    STARTED.get_or_init(Instant::now);
    let steal = crate::bench::StealMeter::start();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let work = tempfile::Builder::new()
        .prefix("hearth-bench-microvm-")
        .tempdir()
        .context("create a work directory")?;
    let measured = measure(g, &a, work.path(), &hello_dir).await;
    // Whatever a failure left running ends with the bench.
    let engine_dir = work.path().join("data").join("engine");
    kill_leftovers(&engine_dir);
    let _ = hearth_vmm::qemu::gc(&engine_dir);
    let m = measured?;

    let (accel, qemu, confined) = {
        let b = QemuBackend::new(QemuConfig::new(
            engine_dir.clone(),
            hearth_vmm::accel::decide(g.accel, hearth_vmm::accel::HostKvmFacts::probe()).accel,
        ))?;
        (
            b.config().accel,
            b.qemu_version().to_string(),
            b.config().confinement.is_some(),
        )
    };
    let host = json!({
        "date": utc_date(started_at),
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memMib": mem_total_mib(),
        "cpuStealPercent": round2(steal.percent()),
        "accel": accel.to_string(),
        "qemu": qemu,
        "confinement": confined,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let report = report_json(&m, &host);
    let t = tables(&m);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{t}");
    }
    if a.out.as_os_str() != "-" {
        let guest = m
            .hello_machine
            .as_ref()
            .map(|mc| format!("{} MiB, {} vCPU", mc.mem_size_mib, mc.vcpu_count))
            .unwrap_or_default();
        let section = format!(
            "{HEADING}\n\nWritten by `hearth bench microvm` on {} (UTC). Host: {} ({} cores, {} MiB RAM, \
             {}% of CPU time stolen by the hypervisor during the run), accelerator **{}**, QEMU {}, \
             confinement {}, `hearth` built with the {} profile. Apps: `examples/{HELLO}` (launch, resume, latency, density) and the bench \
             app `crates/hearth/src/bench_apps/dirty` (suspend, download), both FROM `{BASE_IMAGE}`, \
             guest {guest}, built through the API at the start of the run.\n\n\
             The server runs in the bench's process, assembled as `hearth serve` assembles it (API on \
             loopback HTTP, endpoint proxy on loopback HTTPS with its self-signed CA, one pre-started \
             QEMU per snapshot): first with `--warm-pool-depth 1`, then with `--warm-pool-depth 0 \
             --max-running-microvms {}`. Clients are the Rust SDK and an HTTPS client trusting the \
             proxy's CA; endpoints are reached by name (`<id>.localhost`, SNI and Host). Before each \
             sample the bench waits until the server has refilled what the last one used (warmed clone, \
             pre-started QEMU) and its QEMUs are idle. Baselines run in the same invocation, \
             interleaved with the figure they stand beside, through the same engine (supervisor, \
             confinement, QMP). What each baseline leaves out: the restore and boot baselines have no \
             API call, store write, token, proxy or TLS, and reach the app over the agent stream; the \
             full-RAM restore gets a QEMU started beforehand, as the depth-0 launch does; the warm-pool \
             launch hands out a clone restored and past one request before the call, which no \
             baseline gets. The engine suspend baseline has no API call, store write or microVM task; \
             the full-RAM save writes every non-zero page of RAM and ends the guest. In the proxy \
             rows the client's connection to the proxy is kept open and the proxy opens a new guest \
             stream per request (it does not pool upstream connections, and the app closes each \
             connection, HTTP/1.0); the direct path opens the same guest stream per request and \
             pays no TLS. Under TCG a restored or resumed guest's code is translated afresh, which \
             the first request after a launch without the warm pool, and after a resume, pays. \
             Targets are printed, not asserted.\n\n{}\n\
             Raw JSON (`hearth bench microvm --json`):\n\n```json\n{}\n```\n",
            host["date"].as_str().unwrap_or(""),
            host["cpu"].as_str().unwrap_or(""),
            host["cores"],
            host["memMib"],
            host["cpuStealPercent"],
            accel,
            qemu,
            if confined { "on" } else { "off" },
            host["build"].as_str().unwrap_or(""),
            a.density.max(1),
            t.trim_end(),
            json_text(&report)
        );
        crate::bench::update_markdown_section(&a.out, HEADING, &section)?;
        note!("wrote {}", a.out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_say_met_or_missed_from_the_p50() {
        assert_eq!(target_cell(60.0, "ms", Some(60.0)), "≤ 60 ms p50: met");
        assert_eq!(target_cell(60.0, "ms", Some(60.1)), "≤ 60 ms p50: missed");
        assert_eq!(target_cell(2.0, "ms", None), "≤ 2 ms p50");
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_798_675_200), "2026-12-31");
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let (ppid, _) = proc_stat(std::process::id()).expect("our own stat");
        assert_eq!(ppid, std::os::unix::process::parent_id());
        assert!(clock_ticks_per_sec() > 0.0);
    }

    #[test]
    fn the_bench_app_has_its_endpoints() {
        assert!(DIRTY_DOCKERFILE.contains("FROM debian-12-python"));
        for path in ["\"/dirty\"", "\"/bytes\"", "\"/\""] {
            assert!(DIRTY_SERVER_PY.contains(path), "{path}");
        }
    }

    fn samples(v: &[f64]) -> Samples {
        Samples { v: v.to_vec() }
    }

    #[test]
    fn the_tables_put_each_figure_beside_its_baseline_target_and_honest_counts() {
        let mut m = Measured::default();
        m.launch_warm.total = samples(&[50.0, 70.0, 40.0]);
        m.full_restore_app = samples(&[300.0, 400.0]);
        m.latency_proxied = samples(&[13.0, 14.0]);
        m.latency_direct = samples(&[12.0, 11.0]);
        m.auto_resume = samples(&[280.0]);
        m.suspends.push(Suspend {
            mib: 256,
            api: samples(&[1200.0]),
            ..Default::default()
        });
        m.density = Some(Density {
            asked: 30,
            running: 30,
            refusal: Some("InsufficientCapacityException".into()),
            suspended: 30,
            disk_mib: samples(&[5.0]),
            free_bytes: 10 << 30,
            ..Default::default()
        });
        let t = tables(&m);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[2].contains("| **50.0 (40.0 / 70.0 / 70.0, n=3)** | ≤ 60 ms p50: met | 300.0 (300.0 / 400.0 / 400.0, n=2) |"),
            "{t}"
        );
        // Paired: 13 - 12 and 14 - 11; the p50s: 13 - 11.
        assert!(
            t.contains("| **1.00 (1.00 / 3.00 / 3.00, n=2)** | ≤ 2 ms p50: met |"),
            "{t}"
        );
        assert!(
            t.contains("| ↳ proxied p50 − direct p50, ms | 2.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| **280.0 (280.0 / 280.0 / 280.0, n=1)** | ≤ 150 ms p50: missed |"),
            "{t}"
        );
        assert!(t.contains("| ≤ 1000 ms p50: missed |"), "{t}");
        assert!(t.contains("**at least 30** (the bench's cap, --max-running-microvms 30); RunMicrovm 31 then answered InsufficientCapacityException | ≥ 50: not shown by this run |"), "{t}");
        // 500 at 5 MiB is 2.4 GiB; 10 GiB hold 2048.
        assert!(t.contains("**30 at once in this run**, 0 of them with a process left; at the p50 size, 2.4 GiB for 500; the 10 GiB still free hold about 2048 more"), "{t}");
        // Every row of the first table has its five columns.
        for l in lines.iter().take_while(|l| !l.is_empty()) {
            assert_eq!(l.matches('|').count() - l.matches("\\|").count(), 6, "{l}");
        }
    }

    #[test]
    fn json_text_keeps_sample_arrays_on_one_line_and_parses_back() {
        let v = json!({"a": {"samples": [1.5, 2, 3], "n": 3}, "b": [], "c": [{"x": "y"}], "d": {}});
        let text = json_text(&v);
        assert!(text.contains("\"samples\": [1.5, 2, 3]"), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn table_rows_escape_pipes() {
        assert_eq!(md_row(&["a|b", "", "c"]), "| a\\|b | | c |");
    }
}
