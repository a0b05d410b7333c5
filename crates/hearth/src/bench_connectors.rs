//! `hearth bench connectors`: what the network connectors cost, each figure
//! beside a baseline measured in the same run.
//!
//! Measured:
//! - the shell's keystroke round trip through the endpoint proxy (a
//!   microVM run with `ALL_INGRESS`; the shell WebSocket with a shell
//!   token; `cat >/dev/null` running on its terminal, so the guest
//!   kernel's terminal echo answers each byte) beside the same keystroke
//!   without the proxy (the control plane's own shell,
//!   [`hearth_control::MicrovmControl::open_shell`]: the agent's terminal
//!   stream the proxy's glue pumps), both sessions open on the same
//!   microVM at once and sampled alternately;
//! - the proxy's own overhead as `hearth bench microvm` defines it: the
//!   same `GET /` through the proxy and straight over the guest stream the
//!   proxy forwards over, p50 against p50; the target is "shell round trip
//!   p50 ≤ proxy overhead p50 + 5 ms";
//! - `INTERNET_EGRESS`: a microVM run with it reaches a peer (a network
//!   namespace with a TEST-NET-2 address standing in for a remote machine,
//!   [`hearth_net::testing::Peer`]); a Python script run in the guest
//!   (typed into the control plane's shell) times TCP connects and bulk
//!   reads, and the same script run on the host, natively, times the same
//!   against the same peer.
//!
//! The server is `hearth bench microvm`'s in-process one
//! ([`crate::bench_microvm`]'s `Server`), started with an egress network of
//! the bench's own (`hearth-bench-egress`). Everything the bench creates
//! (microVMs, the peer namespace, the egress network, the data directory)
//! is removed at the end, also when a figure fails.
//!
//! Tasks: everything runs on the CLI's Tokio runtime, on the command's
//! task; the server's tasks (API, proxy, microVM tasks, shell pumps) run
//! on it too. The peer's listeners run on threads of their own
//! ([`hearth_net::testing::serve_greeting`]); the egress network is
//! prepared and removed on the blocking pool; the host's side of the
//! egress figures is a `python3` child process. Run it with nothing else
//! busy on the host.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hearth_control::microvms::shell::ShellSession;
use hearth_net::testing::Peer;
use hearth_proto::v2::PtySize;
use hearth_vmm::agent::stream::StreamEvent;
use hearth_vmm::{QemuBackend, QemuConfig};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::bench_microvm::{
    build_image, cpu_model, json_text, kill_leftovers, md_row, mem_total_mib, proxied_vs_direct,
    utc_date, Server, BASE_IMAGE, HELLO, REGION, SERVE_MAX_RUNNING, T,
};
use crate::bench_stats::{round2, Samples};
use crate::Global;

/// When the bench started, for its progress lines.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// A progress line on stderr: `[bench connectors +12.3 s] ...`.
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!(
            "[bench connectors +{:.1} s] {}",
            STARTED.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}

#[derive(Args)]
pub struct ConnectorsArgs {
    /// Keystrokes per shell path (proxied, direct), and `GET /` requests
    /// per HTTP path (proxied, direct), at least 1.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Bulk reads per side (guest, host), at least 1.
    #[arg(long, default_value_t = 3)]
    bulk_runs: usize,
    /// Size of each bulk read, MiB.
    #[arg(long, default_value_t = 64)]
    bulk_mib: u32,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Markdown file whose "## Connectors (hearth bench connectors)"
    /// section is replaced ("-" for none).
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The directory holding hello-stdlib.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
}

/// The Markdown section this bench owns.
const HEADING: &str = "## Connectors (hearth bench connectors)";
/// The bench's egress network (namespace, veth, nftables table) and the
/// /30 between it and the host.
const EGRESS_NETNS: &str = "hearth-bench-egress";
const EGRESS_LINK_NET: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 208);
/// The peer "machine": a namespace on a TEST-NET-2 /30 (host `.17`, peer
/// `.18`), created after the egress network so that its subnet is not one
/// the egress filter refuses as the host's own.
const PEER_NETNS: &str = "hearth-bench-conn-peer";
const PEER_HOST_IF: &str = "hxb-conn-peer";
const PEER_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 16);
/// Timed TCP connects per side (after one untimed).
const CONNECTS: usize = 21;
/// The target: shell round trip p50 at most the proxy overhead p50 plus this.
const TARGET_SLACK_MS: f64 = 5.0;
/// Least time after each timed keystroke.
const SHELL_PACE: Duration = Duration::from_millis(20);
/// Untimed keystrokes on each path before the samples.
const SHELL_WARMUP: usize = 20;
/// A newline (untimed) after this many keystrokes keeps the terminal's
/// line buffer (4095 bytes) from filling.
const KEYS_PER_LINE: usize = 64;
/// The terminal both shells open with (the proxy's default).
const TERM_SIZE: PtySize = PtySize { cols: 80, rows: 24 };
/// Output quiet for this long: the shell is waiting.
const QUIET: Duration = Duration::from_millis(300);
/// Longest the egress script may take in the guest.
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);
/// Where the guest keeps the script.
const GUEST_SCRIPT: &str = "/tmp/hearth-bench-connectors.py";

/// The egress probe, run in the guest and on the host: `argv[1]` is JSON
/// `{host, connect_port, bulk_port, connects, bulk_runs, tsc_khz}`; prints
/// one line `CONN-RESULT {"connect_ms": [...], "bulk": [{"bytes", "secs"}...],
/// "clock": ..., "check": {...}}`. Connects are timed from the socket's
/// creation to connected, after one untimed connect; each must bring the
/// greeting. A bulk read is timed from connected to the peer's close.
///
/// The clock is the TSC read with RDTSC (a few bytes of machine code called
/// through ctypes) at the rate the host measured, when `tsc_khz` is given
/// and that works; else `time.perf_counter`. A guest under TCG has no
/// usable clock of its own (its kernel marks the TSC unstable and falls
/// back to jiffies: 4 ms steps, and ticks lost while the emulator is
/// busy), while its RDTSC reads the host's TSC. `check` holds the whole
/// run's length by both clocks.
const PROBE_PY: &str = r#"import ctypes, json, mmap, socket, sys, time
a = json.loads(sys.argv[1])
host = a["host"]
clock, clock_name, clock_error = time.perf_counter, "perf_counter", None
if a.get("tsc_khz"):
    try:
        code = bytes([0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        hz = a["tsc_khz"] * 1000.0
        clock, clock_name = (lambda: rdtsc() / hz), "tsc"
    except Exception as e:
        clock_error = repr(e)
run_start, run_start_pc = clock(), time.perf_counter()


def connect(port):
    t0 = clock()
    s = socket.create_connection((host, port), timeout=60)
    return s, clock() - t0


def greeting(s):
    got = b""
    while len(got) < 5:
        chunk = s.recv(5 - len(got))
        if not chunk:
            break
        got += chunk
    return got


connect_ms = []
for i in range(a["connects"] + 1):
    s, dt = connect(a["connect_port"])
    s.settimeout(60)
    got = greeting(s)
    s.close()
    if got != b"hello":
        raise SystemExit("no greeting from %s: %r" % (host, got))
    if i > 0:
        connect_ms.append(dt * 1000.0)
bulk = []
buf = bytearray(1 << 20)
for _ in range(a["bulk_runs"]):
    s, _ = connect(a["bulk_port"])
    s.settimeout(120)
    t0 = clock()
    n = 0
    while True:
        k = s.recv_into(buf)
        if k == 0:
            break
        n += k
    secs = clock() - t0
    s.close()
    bulk.append({"bytes": n, "secs": secs})
try:
    with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
        clocksource = f.read().strip()
except OSError:
    clocksource = None
check = {
    "clocksource": clocksource,
    "clock_s": clock() - run_start,
    "perf_counter_s": time.perf_counter() - run_start_pc,
    "perf_counter_resolution_s": time.get_clock_info("perf_counter").resolution,
}
result = {"connect_ms": connect_ms, "bulk": bulk, "clock": clock_name, "clock_error": clock_error, "check": check}
print("CONN-RESULT " + json.dumps(result), flush=True)
"#;

// ------------------------------------------------------------ terminals

/// A shell's terminal, through the proxy's WebSocket or straight from the
/// control plane.
enum Link {
    Proxied(Box<WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
    Direct(ShellSession),
}

/// What a terminal gave.
enum Got {
    Output(Vec<u8>),
    /// The shell exited (its code, when it exited normally).
    Exit(Option<i32>),
    /// The session ended without an exit.
    Closed(String),
}

/// One shell session and the output read but not consumed yet.
struct Term {
    link: Link,
    pending: Vec<u8>,
    what: &'static str,
}

impl Term {
    /// A shell through the proxy: TLS to it (SNI the endpoint's name), the
    /// WebSocket with the `lambda-microvms` and authentication
    /// subprotocols, then its `session_init`.
    async fn proxied(s: &Server, id: &str, shell_token: &str) -> Result<Term> {
        let tcp = tokio::net::TcpStream::connect(s.proxy_addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(format!("{id}.localhost"))?;
        let tls = s
            .tls
            .connect(name, tcp)
            .await
            .context("TLS handshake with the proxy")?;
        let mut req = format!("wss://{}/", s.host(id)).into_client_request()?;
        req.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_str(&format!(
                "lambda-microvms, lambda-microvms.authentication.{shell_token}"
            ))?,
        );
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .context("the shell's WebSocket handshake")?;
        let first = tokio::time::timeout(T, ws.next())
            .await
            .context("no session_init")?
            .context("the shell closed before session_init")??;
        let Message::Text(t) = first else {
            bail!("the shell's first frame is not text: {first:?}");
        };
        let v: Value = serde_json::from_str(t.as_str()).context("session_init")?;
        ensure!(v["type"] == "session_init", "the first frame is {v}");
        Ok(Term {
            link: Link::Proxied(Box::new(ws)),
            pending: Vec::new(),
            what: "proxied shell",
        })
    }

    /// The control plane's shell: no proxy, no WebSocket, no TLS.
    async fn direct(s: &Server, id: &str) -> Result<Term> {
        let session = s
            .control
            .open_shell(&s.account, id, TERM_SIZE)
            .await
            .with_context(|| format!("open a shell in {id}"))?;
        Ok(Term {
            link: Link::Direct(session),
            pending: Vec::new(),
            what: "direct shell",
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.link {
            Link::Proxied(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .with_context(|| format!("{}: send", self.what)),
            Link::Direct(sh) => sh
                .input
                .write_stdin(bytes)
                .await
                .with_context(|| format!("{}: write", self.what)),
        }
    }

    /// The next thing the terminal gives (pings and other frames skipped).
    async fn next(&mut self) -> Result<Got> {
        match &mut self.link {
            Link::Proxied(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => return Ok(Got::Output(b.to_vec())),
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        if v["type"] == "exit" {
                            return Ok(Got::Exit(
                                v["exit_code"].as_i64().and_then(|c| i32::try_from(c).ok()),
                            ));
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Ok(Got::Closed(format!("closed: {f:?}")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ok(Got::Closed(e.to_string())),
                    None => return Ok(Got::Closed("the connection ended".into())),
                }
            },
            Link::Direct(sh) => loop {
                match sh.events.recv().await {
                    Some(StreamEvent::Output { data, .. }) => return Ok(Got::Output(data)),
                    Some(StreamEvent::Exited {
                        status,
                        restarting: false,
                    }) => return Ok(Got::Exit(status.code)),
                    Some(StreamEvent::Closed { reason }) => {
                        return Ok(Got::Closed(format!("{reason:?}")));
                    }
                    Some(_) => {}
                    None => return Ok(Got::Closed("the agent went away".into())),
                }
            },
        }
    }

    /// Output until it holds `needle`: everything up to and including it
    /// (the rest stays pending).
    async fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = find(&self.pending, needle.as_bytes()) {
                let rest = self.pending.split_off(at + needle.len());
                let got = std::mem::replace(&mut self.pending, rest);
                return Ok(String::from_utf8_lossy(&got).into_owned());
            }
            let got = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: no {needle:?} within {timeout:?}; output: {:?}",
                        self.what,
                        String::from_utf8_lossy(&self.pending)
                    )
                })??;
            match got {
                Got::Output(d) => self.pending.extend_from_slice(&d),
                Got::Exit(c) => bail!("{}: the shell exited ({c:?}) before {needle:?}", self.what),
                Got::Closed(r) => bail!("{}: the session ended before {needle:?}: {r}", self.what),
            }
        }
    }

    /// Read until the terminal has been quiet for [`QUIET`]; drop it all.
    async fn drain(&mut self) -> Result<()> {
        let deadline = Instant::now() + T;
        while let Ok(got) = tokio::time::timeout(QUIET, self.next()).await {
            match got? {
                Got::Output(_) => {}
                Got::Exit(c) => bail!("{}: the shell exited ({c:?})", self.what),
                Got::Closed(r) => bail!("{}: the session ended: {r}", self.what),
            }
            ensure!(Instant::now() < deadline, "{}: never quiet", self.what);
        }
        self.pending.clear();
        Ok(())
    }

    /// Start `cat >/dev/null` on the terminal (the process that printed
    /// the marker becomes cat), wait for it, then drop the output.
    async fn start_cat(&mut self) -> Result<()> {
        self.drain().await?;
        self.send(b"sh -c 'echo \"cat-$((1 + 1))-ready\"; exec cat >/dev/null'\n")
            .await?;
        self.expect("cat-2-ready", T).await?;
        self.drain().await
    }

    /// Send one byte and time until the terminal echoes it.
    async fn keystroke(&mut self, b: u8) -> Result<Duration> {
        ensure!(
            self.pending.is_empty(),
            "{}: unread output before a keystroke: {:?}",
            self.what,
            String::from_utf8_lossy(&self.pending)
        );
        let t0 = Instant::now();
        self.send(&[b]).await?;
        loop {
            let got = tokio::time::timeout(T, self.next())
                .await
                .map_err(|_| anyhow!("{}: no echo of {:?}", self.what, b as char))??;
            match got {
                Got::Output(d) if d.contains(&b) => {
                    let took = t0.elapsed();
                    self.pending.clear();
                    return Ok(took);
                }
                Got::Output(_) => {}
                Got::Exit(c) => bail!("{}: the shell exited ({c:?})", self.what),
                Got::Closed(r) => bail!("{}: the session ended: {r}", self.what),
            }
        }
    }

    /// A newline (untimed), its echo read.
    async fn newline(&mut self) -> Result<()> {
        self.send(b"\n").await?;
        self.expect("\n", T).await?;
        self.pending.clear();
        Ok(())
    }

    /// End cat with ^D (at the start of a line), then the shell with
    /// `exit`; its exit code. Through the proxy, the close follows.
    async fn finish_cat(mut self) -> Result<Option<i32>> {
        self.newline().await?;
        self.send(&[4]).await?;
        self.drain().await?;
        self.exit().await
    }

    /// `exit`, and the shell's exit code.
    async fn exit(mut self) -> Result<Option<i32>> {
        self.send(b"exit\n").await?;
        let code = loop {
            let got = tokio::time::timeout(T, self.next())
                .await
                .map_err(|_| anyhow!("{}: the shell did not exit", self.what))??;
            match got {
                Got::Output(_) => {}
                Got::Exit(c) => break c,
                Got::Closed(r) => bail!("{}: the session ended without an exit: {r}", self.what),
            }
        };
        if let Link::Proxied(ws) = &mut self.link {
            // The close 1000 that follows the exit.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        Ok(code)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------ figures

/// What the egress probe measured on one side.
#[derive(Default)]
struct Probe {
    connect_ms: Samples,
    /// MB/s (10^6 bytes per second).
    bulk_mbps: Samples,
    /// `tsc` or `perf_counter`, and why not the TSC when it was asked for.
    clock: String,
    clock_error: Option<String>,
    /// The whole probe's length by its clock and by `time.perf_counter`,
    /// and the latter's resolution, seconds.
    check: Value,
}

impl Probe {
    /// From the probe's output; every bulk read must have brought the
    /// greeting and `bulk_bytes`.
    fn parse(output: &str, bulk_bytes: u64) -> Result<Probe> {
        let line = output
            .lines()
            .rev()
            .find_map(|l| l.split_once("CONN-RESULT ").map(|(_, rest)| rest.trim()))
            .with_context(|| format!("no result in the probe's output: {output:?}"))?;
        let v: Value = serde_json::from_str(line).with_context(|| format!("parse {line:?}"))?;
        let mut p = Probe {
            clock: v["clock"].as_str().unwrap_or("").to_string(),
            clock_error: v["clock_error"].as_str().map(str::to_string),
            check: v["check"].clone(),
            ..Default::default()
        };
        for c in v["connect_ms"].as_array().context("connect_ms")? {
            p.connect_ms.push(c.as_f64().context("a connect time")?);
        }
        for b in v["bulk"].as_array().context("bulk")? {
            let bytes = b["bytes"].as_u64().context("bytes")?;
            let secs = b["secs"].as_f64().context("secs")?;
            ensure!(
                bytes == bulk_bytes + 5,
                "a bulk read brought {bytes} bytes, not {}",
                bulk_bytes + 5
            );
            p.bulk_mbps.push(bytes as f64 / secs / 1e6);
        }
        Ok(p)
    }

    fn json(&self) -> Value {
        json!({
            "connectMs": self.connect_ms.json(),
            "bulkMBps": self.bulk_mbps.json(),
            "clock": self.clock,
            "clockError": self.clock_error,
            "clockCheck": self.check,
        })
    }
}

/// Everything one run measured.
#[derive(Default)]
struct Measured {
    guest: Option<(u32, u32)>,
    shell_proxied: Samples,
    shell_direct: Samples,
    http_proxied: Samples,
    http_direct: Samples,
    egress_guest: Probe,
    egress_host: Probe,
    /// The host's TSC rate, measured against its monotonic clock.
    tsc_khz: Option<f64>,
}

impl Measured {
    /// The proxy's overhead: proxied `GET /` p50 − direct p50.
    fn proxy_overhead(&self) -> Option<f64> {
        Some(self.http_proxied.p50()? - self.http_direct.p50()?)
    }

    /// The target's limit and whether the shell met it.
    fn target(&self) -> Option<(f64, bool)> {
        let limit = self.proxy_overhead()? + TARGET_SLACK_MS;
        Some((limit, self.shell_proxied.p50()? <= limit))
    }
}

/// RunMicrovm of `image_arn` with these connectors (names); the server
/// terminates it at its stop unless the bench does first.
async fn run_with(
    s: &mut Server,
    image_arn: &str,
    ingress: &[&str],
    egress: &[&str],
) -> Result<String> {
    let arn = |n: &&str| {
        format!("arn:aws:lambda:{REGION}:aws:network-connector:aws-network-connector:{n}")
    };
    let out = s
        .api
        .sdk
        .run_microvm()
        .image_identifier(image_arn)
        .set_ingress_network_connectors(Some(ingress.iter().map(arn).collect()))
        .set_egress_network_connectors(
            (!egress.is_empty()).then(|| egress.iter().map(arn).collect()),
        )
        .send()
        .await
        .map_err(|e| s.api.error("RunMicrovm", e))?;
    let id = out.microvm_id().to_string();
    s.handed_out.insert(id.clone());
    s.live.insert(id.clone());
    Ok(id)
}

async fn shell_token(s: &Server, id: &str) -> Result<String> {
    let out = s
        .api
        .sdk
        .create_microvm_shell_auth_token()
        .microvm_identifier(id)
        .expiration_in_minutes(60)
        .send()
        .await
        .map_err(|e| s.api.error("CreateMicrovmShellAuthToken", e))?;
    out.auth_token()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("X-aws-proxy-auth"))
        .map(|(_, v)| v.clone())
        .context("CreateMicrovmShellAuthToken gave no X-aws-proxy-auth")
}

/// The shell and HTTP figures on one `ALL_INGRESS` microVM.
async fn phase_shell(
    a: &ConnectorsArgs,
    s: &mut Server,
    arn: &str,
    m: &mut Measured,
) -> Result<()> {
    s.settle().await?;
    let id = run_with(s, arn, &["ALL_INGRESS"], &[]).await?;
    note!("{id} (ALL_INGRESS): opening a shell through the proxy and one directly");
    let token = shell_token(s, &id).await?;
    let mut px = Term::proxied(s, &id, &token).await?;
    let mut dx = Term::direct(s, &id).await?;
    px.start_cat().await?;
    dx.start_cat().await?;
    // Past the first keystrokes' translation under TCG, on both paths.
    for i in 0..SHELL_WARMUP {
        let b = b'a' + (i % 26) as u8;
        px.keystroke(b).await?;
        dx.keystroke(b).await?;
    }
    px.newline().await?;
    dx.newline().await?;
    s.settle().await?;
    note!("keystroke echo, proxied and direct: {} each", a.samples);
    for i in 0..a.samples {
        if i > 0 && i % KEYS_PER_LINE == 0 {
            px.newline().await?;
            dx.newline().await?;
        }
        let b = b'a' + (i % 26) as u8;
        // Alternate which path goes first.
        for proxied in [i % 2 == 0, i % 2 == 1] {
            if proxied {
                m.shell_proxied.push_ms(px.keystroke(b).await?);
            } else {
                m.shell_direct.push_ms(dx.keystroke(b).await?);
            }
            tokio::time::sleep(SHELL_PACE).await;
        }
    }
    let (pc, dc) = (px.finish_cat().await?, dx.finish_cat().await?);
    ensure!(
        pc == Some(0) && dc == Some(0),
        "the shells exited with {pc:?} (proxied) and {dc:?} (direct), not 0"
    );

    note!("GET / proxied and direct: {} each", a.samples);
    proxied_vs_direct(s, &id, a.samples, &mut m.http_proxied, &mut m.http_direct).await?;
    s.terminate(&id).await
}

/// `f`, whose failures are panics (the test helpers of hearth-net), as a
/// `Result`.
fn unpanic<R>(what: &str, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R> {
    std::panic::catch_unwind(f).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        anyhow!("{what}: {msg}")
    })
}

/// The egress figures: the peer, a microVM with `INTERNET_EGRESS`, the
/// probe from the host and from the guest.
async fn phase_egress(
    a: &ConnectorsArgs,
    s: &mut Server,
    arn: &str,
    m: &mut Measured,
) -> Result<()> {
    m.tsc_khz = tsc_khz().await;
    let peer = unpanic("create the peer namespace", || {
        Peer::create(PEER_NETNS, PEER_HOST_IF, PEER_NET)
    })?;
    let bulk_bytes = u64::from(a.bulk_mib) << 20;
    let ns = peer.path();
    let connect_at = unpanic("start the peer's greeting listener", || {
        hearth_net::testing::serve_greeting(Some(&ns), peer.addr, 0)
    })?;
    let bulk_at = unpanic("start the peer's bulk listener", || {
        hearth_net::testing::serve_greeting(Some(&ns), peer.addr, bulk_bytes as usize)
    })?;
    let request = json!({
        "host": peer.addr.to_string(),
        "connect_port": connect_at.port(),
        "bulk_port": bulk_at.port(),
        "connects": CONNECTS,
        "bulk_runs": a.bulk_runs,
        "tsc_khz": m.tsc_khz,
    })
    .to_string();

    note!(
        "egress from the host: {CONNECTS} connects and {} reads of {} MiB from {}",
        a.bulk_runs,
        a.bulk_mib,
        peer.addr
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PROBE_PY)
        .arg(&request)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("run python3 on the host")?;
    ensure!(
        out.status.success(),
        "the probe failed on the host ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    m.egress_host = Probe::parse(&String::from_utf8_lossy(&out.stdout), bulk_bytes)?;

    s.settle().await?;
    let id = run_with(s, arn, &["ALL_INGRESS"], &["INTERNET_EGRESS"]).await?;
    note!("{id} (INTERNET_EGRESS): the same from the guest");
    let mut t = Term::direct(s, &id).await?;
    t.drain().await?;
    let script = base64(PROBE_PY.as_bytes());
    t.send(
        format!("echo {script} | base64 -d > {GUEST_SCRIPT}; echo \"script-$((1 + 1))-written\"\n")
            .as_bytes(),
    )
    .await?;
    t.expect("script-2-written", T).await?;
    t.drain().await?;
    s.settle().await?;
    ensure!(!request.contains('\''), "the request goes in single quotes");
    t.send(
        format!("python3 {GUEST_SCRIPT} '{request}'; echo \"probe-$((1 + 1))-done\"\n").as_bytes(),
    )
    .await?;
    let out = t.expect("probe-2-done", PROBE_TIMEOUT).await?;
    m.egress_guest = Probe::parse(&out, bulk_bytes)?;
    t.drain().await?;
    let code = t.exit().await?;
    ensure!(code == Some(0), "the guest's shell exited with {code:?}");
    s.terminate(&id).await?;
    drop(peer);
    Ok(())
}

/// The TSC's rate, kHz: RDTSC against the monotonic clock over 300 ms
/// (the host's TSC, which RDTSC in a guest under TCG reads too).
#[cfg(target_arch = "x86_64")]
async fn tsc_khz() -> Option<f64> {
    // SAFETY: RDTSC reads a counter into registers; no memory is involved
    // and every x86-64 CPU has it.
    let c0 = unsafe { std::arch::x86_64::_rdtsc() };
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: as above.
    let c1 = unsafe { std::arch::x86_64::_rdtsc() };
    let secs = t0.elapsed().as_secs_f64();
    (c1 > c0).then(|| (c1 - c0) as f64 / secs / 1000.0)
}

#[cfg(not(target_arch = "x86_64"))]
async fn tsc_khz() -> Option<f64> {
    None
}

/// Standard base64 (the guest decodes it with `base64 -d`).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The server, the image, both phases; the server is stopped (its
/// microVMs terminated, its pools drained) whether they succeed or not.
async fn measure(
    g: &Global,
    a: &ConnectorsArgs,
    work: &Path,
    hello_dir: &Path,
    egress: hearth_builder::GuestEgress,
) -> Result<Measured> {
    let mut m = Measured::default();
    let mut s = Server::start(g, &work.join("data"), 1, SERVE_MAX_RUNNING, Some(egress)).await?;
    let r = async {
        note!("building {HELLO}");
        let hello = build_image(
            &s,
            hello_dir,
            &format!("bench-conn-{HELLO}-{}", std::process::id()),
        )
        .await?;
        s.prepare(&hello).await?;
        let mc = &hello.snapshot.record.machine;
        m.guest = Some((mc.mem_size_mib, mc.vcpu_count));
        phase_shell(a, &mut s, &hello.arn, &mut m).await?;
        phase_egress(a, &mut s, &hello.arn, &mut m).await
    }
    .await;
    s.stop().await;
    r.map(|()| m)
}

// ------------------------------------------------------------ the report

/// `p50 (min / max, n=N)`; `n/a` without samples.
fn cell(s: &Samples, decimals: usize) -> String {
    match (s.pct(0.0), s.p50(), s.pct(100.0)) {
        (Some(lo), Some(p50), Some(hi)) => format!(
            "{p50:.d$} ({lo:.d$} / {hi:.d$}, n={})",
            s.v.len(),
            d = decimals
        ),
        _ => "n/a".into(),
    }
}

fn table(m: &Measured, accel: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| figure | Hearth: p50 (min / max, n) | target | baseline: p50 (min / max, n) | baseline |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    let mut row = |cells: &[&str]| {
        let _ = writeln!(t, "{}", md_row(cells));
    };
    let overhead = m.proxy_overhead();
    let target = match (m.target(), m.shell_proxied.p50(), overhead) {
        (Some((limit, met)), Some(p50), Some(o)) => format!(
            "≤ proxy overhead p50 + {TARGET_SLACK_MS} ms = {o:.2} + {TARGET_SLACK_MS} = {limit:.2} ms; p50 {p50:.2} ms: {}",
            if met { "met" } else { "missed" }
        ),
        _ => format!("≤ proxy overhead p50 + {TARGET_SLACK_MS} ms"),
    };
    row(&[
        "**shell keystroke round trip through the proxy, ms**: one byte in a binary WebSocket frame (TLS connection kept open) to its echo by the guest kernel's terminal (`cat >/dev/null` running)",
        &format!("**{}**", cell(&m.shell_proxied, 2)),
        &target,
        &cell(&m.shell_direct, 2),
        "direct: the control plane's shell (the agent's terminal stream the proxy pumps), same microVM, same keystroke; no proxy, WebSocket or TLS",
    ]);
    let shell_diff = match (m.shell_proxied.p50(), m.shell_direct.p50()) {
        (Some(p), Some(d)) => format!("{:.2}", p - d),
        _ => "n/a".into(),
    };
    row(&[
        "↳ the proxy's share of a keystroke: proxied p50 − direct p50, ms",
        &shell_diff,
        "",
        "",
        "",
    ]);
    row(&[
        "`GET /` through the proxy, ms: HTTPS on one kept-alive connection; the proxy opens a guest stream per request",
        &cell(&m.http_proxied, 2),
        "",
        &cell(&m.http_direct, 2),
        "direct: the control plane's connect (the guest stream the proxy uses) and the same request; no proxy, no TLS",
    ]);
    row(&[
        "**proxy overhead, ms**: `GET /` proxied p50 − direct p50 (as `hearth bench microvm`)",
        &format!(
            "**{}**",
            overhead.map_or("n/a".into(), |o| format!("{o:.2}"))
        ),
        "",
        "",
        "",
    ]);
    row(&[
        &format!("**egress TCP connect from the guest, ms** (`INTERNET_EGRESS`; guest under {accel}, through QEMU's user-mode network (slirp) in the egress namespace, the host's filter and NAT, to the peer namespace)"),
        &format!("**{}**", cell(&m.egress_guest.connect_ms, 2)),
        "",
        &cell(&m.egress_host.connect_ms, 3),
        "host, native: the same script with the host's python3, a socket in the host's namespace over one veth to the same peer",
    ]);
    row(&[
        &format!(
            "**egress bulk read from the guest, MB/s** (the same path; guest under {accel}, slirp)"
        ),
        &format!("**{}**", cell(&m.egress_guest.bulk_mbps, 1)),
        "",
        &cell(&m.egress_host.bulk_mbps, 1),
        "host, native: the same read, same peer",
    ]);
    t
}

/// How the egress figures were timed, for the section's paragraph.
fn clock_note(m: &Measured) -> String {
    let (g, h) = (&m.egress_guest, &m.egress_host);
    let secs = |p: &Probe, k: &str| p.check[k].as_f64().unwrap_or(f64::NAN);
    let mut note = if g.clock == "tsc" && h.clock == "tsc" {
        format!(
            "Both sides time with the TSC (RDTSC, called through ctypes) at the rate the bench measured \
             on the host against its monotonic clock ({:.0} kHz): RDTSC in a guest under TCG reads the \
             host's TSC, while the guest kernel's own clock may be jiffies (4 ms steps, ticks lost while \
             the emulator is busy) when its clocksource watchdog marked the TSC unstable during the \
             build's boot. Over the whole probe, the TSC gave {:.3} s and `time.perf_counter` {:.3} s in \
             the guest (clocksource `{}`), {:.4} s and {:.4} s on the host.",
            m.tsc_khz.unwrap_or(0.0),
            secs(g, "clock_s"),
            secs(g, "perf_counter_s"),
            g.check["clocksource"].as_str().unwrap_or("unknown"),
            secs(h, "clock_s"),
            secs(h, "perf_counter_s"),
        )
    } else {
        format!(
            "The guest timed with {} and the host with {} (the guest's `time.perf_counter` resolution: \
             {} s).",
            g.clock,
            h.clock,
            g.check["perf_counter_resolution_s"]
        )
    };
    for (side, p) in [("guest", g), ("host", h)] {
        if let Some(e) = &p.clock_error {
            let _ = write!(note, " RDTSC failed on the {side}: {e}.");
        }
    }
    note
}

fn report_json(m: &Measured, host: &Value, a: &ConnectorsArgs) -> Value {
    json!({
        "host": host,
        "guest": m.guest.map(|(mem, vcpus)| json!({"memMib": mem, "vcpus": vcpus})),
        "target": {
            "rule": format!("shell round trip p50 <= proxy overhead p50 + {TARGET_SLACK_MS} ms"),
            "limitMs": m.target().map(|(l, _)| round2(l)),
            "met": m.target().map(|(_, met)| met),
        },
        "shellProxiedMs": m.shell_proxied.json(),
        "shellDirectMs": m.shell_direct.json(),
        "httpProxiedMs": m.http_proxied.json(),
        "httpDirectMs": m.http_direct.json(),
        "proxyOverheadP50Ms": m.proxy_overhead().map(round2),
        "egress": {
            "peer": format!("{}", Ipv4Addr::from(u32::from(PEER_NET) + 2)),
            "tscKhz": m.tsc_khz.map(round2),
            "bulkMib": a.bulk_mib,
            "guest": m.egress_guest.json(),
            "host": m.egress_host.json(),
        },
    })
}

/// The bench's egress network for microVMs, as `hearth serve` prepares
/// its own (without extra CAs: the bench's microVMs run no builds).
async fn prepare_egress() -> Result<hearth_builder::GuestEgress> {
    tokio::task::spawn_blocking(|| {
        let mut cfg = hearth_net::EgressConfig::new(EGRESS_NETNS);
        cfg.link_net = EGRESS_LINK_NET;
        let net = hearth_net::EgressNet::ensure(&cfg)
            .with_context(|| format!("prepare the egress network {EGRESS_NETNS}"))?;
        let guest = net.guest_config();
        Ok(hearth_builder::GuestEgress {
            nic: hearth_vmm::NicSpec {
                netns: net.netns_path().to_path_buf(),
            },
            setup_commands: hearth_net::guest_setup_commands(&guest),
            resolv_conf: hearth_net::guest_resolv_conf(&guest),
            extra_ca_pem: None,
        })
    })
    .await?
}

async fn teardown_egress() {
    match tokio::task::spawn_blocking(|| hearth_net::teardown(EGRESS_NETNS)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => note!("removing the egress network {EGRESS_NETNS}: {e}"),
        Err(e) => note!("removing the egress network {EGRESS_NETNS}: {e}"),
    }
}

pub async fn connectors(g: &Global, a: ConnectorsArgs) -> Result<()> {
    ensure!(
        a.samples >= 1 && a.bulk_runs >= 1 && a.bulk_mib >= 1,
        "--samples, --bulk-runs and --bulk-mib must be at least 1"
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
        .prefix("hearth-bench-connectors-")
        .tempdir()
        .context("create a work directory")?;
    let engine_dir = work.path().join("data").join("engine");
    // A leftover of a run that was killed.
    teardown_egress().await;
    let measured = match prepare_egress().await {
        Ok(egress) => measure(g, &a, work.path(), &hello_dir, egress).await,
        Err(e) => Err(e),
    };
    // Whatever a failure left running ends with the bench; then its
    // network goes.
    kill_leftovers(&engine_dir);
    let _ = hearth_vmm::qemu::gc(&engine_dir);
    teardown_egress().await;
    let m = measured?;

    let (accel, qemu) = {
        let b = QemuBackend::new(QemuConfig::new(
            engine_dir.clone(),
            hearth_vmm::accel::decide(g.accel, hearth_vmm::accel::HostKvmFacts::probe()).accel,
        ))?;
        (b.config().accel.to_string(), b.qemu_version().to_string())
    };
    let host = json!({
        "date": utc_date(started_at),
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memMib": mem_total_mib(),
        "cpuStealPercent": round2(steal.percent()),
        "accel": accel,
        "qemu": qemu,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let report = report_json(&m, &host, &a);
    let t = table(&m, &accel.to_uppercase());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{t}");
    }
    if a.out.as_os_str() != "-" {
        let guest = m
            .guest
            .map(|(mem, vcpus)| format!("{mem} MiB, {vcpus} vCPU"))
            .unwrap_or_default();
        let section = format!(
            "{HEADING}\n\nWritten by `hearth bench connectors` on {} (UTC). Host: {} ({} cores, {} MiB RAM, \
             {}% of CPU time stolen by the hypervisor during the run), accelerator **{}**, QEMU {}, \
             `hearth` built with the {} profile. App: `examples/{HELLO}` FROM `{BASE_IMAGE}`, guest {guest}, \
             built through the API at the start of the run. The server runs in the bench's process as in \
             `hearth bench microvm` (API on loopback HTTP, endpoint proxy on loopback HTTPS with its \
             self-signed CA, one warmed clone and one pre-started QEMU), with an egress network of its own.\n\n\
             {}\n\n\
             How measured, and what each baseline gets. **Shell**: one microVM run with `ALL_INGRESS` holds \
             two shell sessions at once, one through the proxy (CreateMicrovmShellAuthToken, `wss://` with the \
             `lambda-microvms` subprotocols, kept open) and one opened by the control plane directly \
             (`open_shell`: the agent's terminal stream that the proxy's glue pumps, read and written by the \
             bench). Both run `cat >/dev/null` started the same way and get {SHELL_WARMUP} untimed keystrokes \
             first; then each sample sends one byte and times until the guest kernel's terminal echo of it \
             arrives, the two paths alternating which goes first, {} ms apart. Neither path gets anything \
             pre-started the other lacks; the direct one skips the WebSocket, TLS and the proxy's pump tasks. \
             **Proxy overhead**: the same microVM's `GET /` through the proxy on a kept-alive HTTPS connection \
             against the control plane's connect and the same request (a new guest stream per request on both \
             paths; the direct one pays no TLS), alternating, as `hearth bench microvm` measures it; the \
             overhead is proxied p50 − direct p50, and the target is the shell round trip p50 at most that \
             plus {TARGET_SLACK_MS} ms. **Egress**: a peer namespace on TEST-NET-2 ({}) serves a greeting on \
             one port and the greeting followed by {} MiB of zeros on another. One Python script times \
             {CONNECTS} TCP connects (socket created to connected, each followed by reading the greeting, \
             after one untimed connect) and {} bulk reads (connected to the peer's close), once in a microVM \
             run with `INTERNET_EGRESS` (typed into the control plane's shell; the guest's python3 under \
             {}; the packets go through virtio-net, QEMU's user-mode network (slirp) in the egress \
             namespace, a veth, the host's forwarding filter and NAT, and the peer's veth) and once on the \
             host natively (the host's python3; one veth to the peer), the host first. {} Under TCG every guest instruction is translated, so the guest side measures the emulation as \
             much as the network path; KVM hosts do not pay that. Targets are printed, not asserted.\n\n\
             Raw JSON (`hearth bench connectors --json`):\n\n```json\n{}\n```\n",
            host["date"].as_str().unwrap_or(""),
            host["cpu"].as_str().unwrap_or(""),
            host["cores"],
            host["memMib"],
            host["cpuStealPercent"],
            accel,
            qemu,
            host["build"].as_str().unwrap_or(""),
            t.trim_end(),
            SHELL_PACE.as_millis(),
            Ipv4Addr::from(u32::from(PEER_NET) + 2),
            a.bulk_mib,
            a.bulk_runs,
            accel.to_uppercase(),
            clock_note(&m),
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
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_probe_has_no_single_quote_and_its_output_parses() {
        // The guest gets it in base64; the host as one argument.
        assert!(PROBE_PY.contains("CONN-RESULT "));
        let out = "prompt$ python3 x\r\nCONN-RESULT {\"connect_ms\": [1.5, 2.5], \"bulk\": [{\"bytes\": 1048581, \"secs\": 0.5}]}\r\nprobe-2-done";
        let p = Probe::parse(out, 1 << 20).unwrap();
        assert_eq!(p.connect_ms.v, vec![1.5, 2.5]);
        assert!((p.bulk_mbps.v[0] - 1_048_581.0 / 0.5 / 1e6).abs() < 1e-9);
        assert!(Probe::parse(out, 2 << 20).is_err());
        assert!(Probe::parse("nothing", 1).is_err());
    }

    #[test]
    fn the_table_puts_the_shell_beside_its_baseline_and_judges_the_target() {
        let samples = |v: &[f64]| Samples { v: v.to_vec() };
        let mut m = Measured {
            shell_proxied: samples(&[9.0, 10.0, 11.0]),
            shell_direct: samples(&[7.0, 8.0, 9.0]),
            http_proxied: samples(&[14.0, 15.0]),
            http_direct: samples(&[12.0, 13.0]),
            ..Default::default()
        };
        // Overhead 14 - 12 = 2; limit 7; shell p50 10: missed.
        assert_eq!(m.target(), Some((7.0, false)));
        let t = table(&m, "TCG");
        assert!(t.contains("| **10.00 (9.00 / 11.00, n=3)** | ≤ proxy overhead p50 + 5 ms = 2.00 + 5 = 7.00 ms; p50 10.00 ms: missed | 8.00 (7.00 / 9.00, n=3) |"), "{t}");
        assert!(
            t.contains(
                "| ↳ the proxy's share of a keystroke: proxied p50 − direct p50, ms | 2.00 |"
            ),
            "{t}"
        );
        assert!(t.contains("| **2.00** |"), "{t}");
        for l in t.lines() {
            assert_eq!(l.matches('|').count() - l.matches("\\|").count(), 6, "{l}");
        }
        m.shell_proxied = samples(&[7.0]);
        assert_eq!(m.target(), Some((7.0, true)));
    }
}
