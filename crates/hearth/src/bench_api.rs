//! `hearth bench api`: signed GetMicrovm and ListMicrovms at 1 and 64
//! concurrent clients, next to an unauthenticated trivial handler on the
//! same server (the ceiling). Runs an in-process server on a loopback port
//! with a throw-away data directory; clients are keep-alive HTTP/1.1
//! connections on the same Tokio runtime. Then GetMicrovm again while 100
//! slow clients hold connections open (the slowloris case).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hearth_api::{AppState, DataDir};
use hearth_sigv4::SecretKey;
use hearth_store::{AccountName, NewMicrovm};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::Global;

#[derive(Args)]
pub struct ApiArgs {
    /// Requests per client per measurement.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Markdown file to update ("-" for none).
    #[arg(long, default_value = "docs/benchmarks.md")]
    markdown: std::path::PathBuf,
}

struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: BufReader::new(r),
            w,
        })
    }

    /// One request; returns the status.
    async fn call(&mut self, head: &str) -> Result<u16> {
        self.w.write_all(head.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        Ok(status)
    }
}

/// A request head signed now (SigV4, service lambda).
fn signed(host: &str, path: &str, query: &str, akid: &str, secret: &SecretKey) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let date = hearth_sigv4::format_amz_date(now);
    let headers = [("host", host.as_bytes()), ("x-amz-date", date.as_bytes())];
    let req = hearth_sigv4::Request {
        method: "GET",
        raw_path: path,
        raw_query: query,
        headers: &headers,
        body: b"",
    };
    let auth = hearth_sigv4::sign(
        &req,
        akid,
        secret,
        "us-east-1",
        "lambda",
        &["host", "x-amz-date"],
    )
    .expect("sign");
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\n\r\n")
}

/// Rounds of the slow-client comparison.
const ROUNDS: usize = 5;

/// The level whose p99 is the median.
fn median_by_p99(mut levels: Vec<Level>) -> Level {
    levels.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
    levels.swap_remove(levels.len() / 2)
}

/// How many slow clients `hearth bench api` keeps connected.
const SLOW_CLIENTS: usize = 100;

/// Keep `n` slow clients connected until `stop`: a third send nothing, a
/// third drip a request head, a third drip a 6 MiB body after a head that
/// names a real access key. Returns how many connections they opened.
fn spawn_slow_clients(
    addr: std::net::SocketAddr,
    host: &str,
    akid: &str,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let date = hearth_sigv4::format_amz_date(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    let body_head = format!(
        "POST /2025-09-09/microvms HTTP/1.1\r\nhost: {host}\r\nx-amz-date: {date}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\
         authorization: AWS4-HMAC-SHA256 Credential={akid}/{}/us-east-1/lambda/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={}\r\n\r\n",
        6 * 1024 * 1024,
        &date[..8],
        "0".repeat(64)
    );
    let head_start = format!("GET /2025-09-09/microvms HTTP/1.1\r\nhost: {host}\r\n");
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..n {
            let (stop, body_head, head_start) =
                (stop.clone(), body_head.clone(), head_start.clone());
            tasks.push(tokio::spawn(async move {
                let mut opened = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    opened += 1;
                    let first: &[u8] = match i % 3 {
                        0 => b"",
                        1 => head_start.as_bytes(),
                        _ => body_head.as_bytes(),
                    };
                    if s.write_all(first).await.is_err() {
                        continue;
                    }
                    // Drip one byte every 200 ms until the server closes.
                    let mut buf = [0u8; 1024];
                    loop {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return opened;
                        }
                        let drip: &[u8] = if i % 3 == 1 { b"x" } else { b"{" };
                        if i % 3 != 0 && s.write_all(drip).await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                    }
                }
                opened
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        total
    })
}

struct Level {
    clients: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(
    addr: std::net::SocketAddr,
    clients: usize,
    per_client: usize,
    head: Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<Level> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let head = head.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await?;
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let h = head();
                let t = Instant::now();
                let st = c.call(&h).await?;
                if st != 200 {
                    bail!("HTTP {st}");
                }
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = start.elapsed();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Ok(Level {
        clients,
        rps: all.len() as f64 / wall.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

pub async fn api(_g: &Global, a: ApiArgs) -> Result<()> {
    let steal = crate::bench::StealMeter::start();
    let dir = tempfile::tempdir()?;
    let dd = DataDir::open(dir.path())?;
    let acct = dd
        .store
        .create_account(&AccountName::new("bench").unwrap(), false)?;
    let key = dd.store.create_access_key(&acct.account_id)?;
    // A microVM record to Get, and a few to List.
    for i in 0..10 {
        dd.store.create_microvm(
            &acct.account_id,
            &NewMicrovm {
                microvm_id: format!("mvm-bench{i:04}"),
                image_arn: format!("arn:aws:lambda:us-east-1:{}:microvm-image:img-bench", acct.account_id),
                image_version: "1".into(),
                state: "RUNNING".into(),
                created_at_secs: 1_700_000_000 + i,
                doc: json!({ "endpoint": format!("mvm-bench{i:04}.localhost"), "maximumDurationInSeconds": 3600, "startedAt": 1_700_000_000 + i }),
            },
        )?;
    }
    let state = Arc::new(AppState {
        store: dd.store.clone(),
        sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
        managed_images: vec![],
        region: "us-east-1".into(),
        images: hearth_control::ImageControl::new(
            dd.store.clone(),
            hearth_control::images::BuildSetup::without_engine(dd.path.clone(), "us-east-1".into()),
        ),
        microvms: hearth_control::MicrovmControl::new(
            dd.store.clone(),
            hearth_control::MicrovmSetup::without_engine(),
        ),
        proxy_tokens: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(hearth_http::serve(
        listener,
        hearth_http::Limits::default(),
        Arc::new(hearth_api::Api::new(state)),
        std::future::pending(),
    ));
    let host = addr.to_string();
    let akid = key.key.access_key_id.clone();
    let secret = SecretKey::new(key.secret_access_key.expose().to_string());
    let secret = Arc::new(secret);

    type HeadFn = Arc<dyn Fn() -> String + Send + Sync>;
    let ping: HeadFn = {
        let host = host.clone();
        Arc::new(move || format!("GET /hearth/v1/ping HTTP/1.1\r\nhost: {host}\r\n\r\n"))
    };
    let get: HeadFn = {
        let (host, akid, secret) = (host.clone(), akid.clone(), secret.clone());
        Arc::new(move || {
            signed(
                &host,
                "/2025-09-09/microvms/mvm-bench0001",
                "",
                &akid,
                &secret,
            )
        })
    };
    let list: HeadFn = {
        let (host, akid, secret) = (host.clone(), akid.clone(), secret.clone());
        Arc::new(move || {
            signed(
                &host,
                "/2025-09-09/microvms",
                "maxResults=10",
                &akid,
                &secret,
            )
        })
    };
    let mut rows = Vec::new();
    let per = |clients: usize| {
        if clients == 1 {
            a.requests * 4
        } else {
            a.requests
        }
    };
    for (name, head) in [
        ("unauthenticated ping (ceiling)", ping),
        ("GetMicrovm (signed)", get.clone()),
        ("ListMicrovms (signed, 10 items)", list),
    ] {
        for clients in [1usize, 64] {
            eprintln!("[bench api] {name}, {clients} client(s)");
            let l = measure(addr, clients, per(clients), head.clone()).await?;
            rows.push((name, l));
        }
    }
    // The same signed GetMicrovm while 100 slow clients hold connections:
    // silent ones, heads dripped a byte at a time, and bodies dripped after
    // a head that names a real key (so they pass the header checks and take
    // their share of the unverified-body budget). Each reconnects as soon
    // as the server cuts it off. Rounds without and with them alternate
    // (five of each, both equally warm); the round with the median p99 is
    // reported.
    for clients in [1usize, 64] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let mut reconnects = 0;
        for round in 1..=ROUNDS {
            eprintln!("[bench api] GetMicrovm, {clients} client(s), round {round}/{ROUNDS}: without slow clients");
            without.push(measure(addr, clients, per(clients), get.clone()).await?);
            eprintln!("[bench api] GetMicrovm, {clients} client(s), round {round}/{ROUNDS}: with {SLOW_CLIENTS} slow clients");
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let slow = spawn_slow_clients(addr, &host, &akid, SLOW_CLIENTS, stop.clone());
            tokio::time::sleep(Duration::from_secs(2)).await;
            with.push(measure(addr, clients, per(clients), get.clone()).await?);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            reconnects += slow.await?.saturating_sub(SLOW_CLIENTS);
        }
        let (a, b) = (median_by_p99(without), median_by_p99(with));
        eprintln!(
            "[bench api] {clients} client(s): p99 {:.2} ms without, {:.2} ms with slow clients ({:.2}x; target at most 2x); the server cut off slow clients {reconnects} times",
            a.p99_ms,
            b.p99_ms,
            b.p99_ms / a.p99_ms
        );
        rows.push(("GetMicrovm (signed), median of 5 rounds", a));
        rows.push((
            "GetMicrovm (signed), 100 slow clients connected, median of 5 rounds",
            b,
        ));
    }
    let mut table = String::from(
        "| request | clients | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|\n",
    );
    for (name, l) in &rows {
        table.push_str(&format!(
            "| {name} | {} | {:.0} | {:.2} | {:.2} |\n",
            l.clients, l.rps, l.p50_ms, l.p99_ms
        ));
    }
    let report = json!(rows.iter().map(|(n, l)| json!({"request": n, "clients": l.clients, "rps": l.rps.round(), "p50_ms": l.p50_ms, "p99_ms": l.p99_ms})).collect::<Vec<_>>());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{table}");
    }
    if a.markdown.as_os_str() != "-" {
        let section = format!(
            "## API\n\nWritten by `hearth bench api`. In-process server on loopback, SQLite store, keep-alive HTTP/1.1 \
             clients on the same {}-core host (clients and server share the CPU; {:.0}% of CPU time was stolen by \
             the hypervisor during the run). Each signed request is signed \
             fresh by the client (SigV4, as the AWS SDKs do) and fully verified, routed, validated and answered \
             from the store by the server; the ceiling is an unauthenticated handler that returns a constant. \
             The last rows compare GetMicrovm without and with 100 slow clients (in the same process) holding \
             connections: a third silent, a third dripping a request head, a third dripping a 6 MiB body after \
             a head that names a real access key; the server cuts each off (408) within its limits and they \
             reconnect at once. Rounds without and with alternate, five of each; the round with the median p99 \
             is shown. Target: p99 with them within 2x of the p99 without.\n\n{table}",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            steal.percent()
        );
        crate::bench::update_markdown_section(&a.markdown, "## API", &section)?;
        eprintln!("[bench api] wrote {}", a.markdown.display());
    }
    Ok(())
}
