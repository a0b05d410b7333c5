//! `hearth serve`, `hearth account ...`, `hearth key ...`.
//!
//! Owns the API server's process: the data directory, listeners, the managed
//! image list from the artifact manifest, graceful shutdown; and the account
//! and key commands, which open the same store (SQLite in WAL mode, so they
//! work while the server runs). Runs on the CLI's Tokio runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hearth_api::{AppState, DataDir, ManagedImage};
use hearth_store::{AccountId, AccountName, PageRequest, Store};
use serde_json::json;

use crate::Global;

#[derive(Args)]
pub struct ServeArgs {
    /// API listen address (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9800")]
    listen: SocketAddr,
    /// Data-plane proxy listen address.
    #[arg(long, default_value = "127.0.0.1:9801")]
    proxy_listen: SocketAddr,
    /// The server's region: requests must be signed for it (the credential
    /// scope's region), and ARNs are minted in it.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Directories `file://` code artifacts may come from (repeatable).
    #[arg(long = "artifact-root")]
    artifact_roots: Vec<PathBuf>,
    /// S3-compatible endpoint `s3://` code artifacts come from (with
    /// --s3-region and the HEARTH_S3_ACCESS_KEY_ID / HEARTH_S3_SECRET_ACCESS_KEY
    /// environment variables); without it, `s3://` artifacts are refused.
    #[arg(long, env = "HEARTH_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "HEARTH_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// Image builds that run at once (more wait, PENDING).
    #[arg(long, default_value_t = 2)]
    max_concurrent_builds: usize,
    /// Build without internet egress (no filtered network namespace is
    /// prepared; RUN steps have no network).
    #[arg(long)]
    no_egress: bool,
    /// Name of the egress network namespace (one per server on a host).
    #[arg(long, default_value = "hearth-egress")]
    egress_netns: String,
    /// CA certificates (PEM files) that builds' RUN steps trust besides
    /// the base image's (for a TLS-inspecting egress proxy). Default: the
    /// host's locally added CAs, /usr/local/share/ca-certificates/*.crt.
    #[arg(long = "guest-ca-file")]
    guest_ca_files: Vec<PathBuf>,
    /// Give builds no extra CA certificates.
    #[arg(long, conflicts_with = "guest_ca_files")]
    no_guest_cas: bool,
    /// The /30 the egress namespace's link to the host uses.
    #[arg(long, default_value = "10.213.0.0")]
    egress_link_net: std::net::Ipv4Addr,
    /// Endpoints are `<microvmId>.<domain>:<proxy port>`. With wildcard DNS
    /// for the domain, clients reach the proxy by name; with the default,
    /// `localhost`, clients use the proxy as their HTTPS_PROXY (CONNECT).
    #[arg(long, default_value = "localhost")]
    proxy_domain: String,
    /// Warmed clones kept ready per image version (0 turns warming off:
    /// every RunMicrovm launches a clone and the app's first request pays
    /// for its first run after the restore).
    #[arg(long, default_value_t = 1)]
    warm_pool_depth: usize,
    /// QEMUs kept started and waiting per image version, for launches and
    /// resumes.
    #[arg(long, default_value_t = 1)]
    prestart_depth: usize,
    /// Running microVMs this host takes before RunMicrovm answers
    /// InsufficientCapacityException.
    #[arg(long, default_value_t = 64)]
    max_running_microvms: usize,
    /// The proxy's TLS certificate chain (PEM, with --proxy-key). Default:
    /// a certificate per endpoint name from a CA Hearth creates in
    /// `<data>/proxy/ca.pem` (give that file to clients as their CA bundle).
    #[arg(long, requires = "proxy_key")]
    proxy_cert: Option<PathBuf>,
    #[arg(long, requires = "proxy_cert")]
    proxy_key: Option<PathBuf>,
    /// Serve endpoints over plain HTTP only (no TLS).
    #[arg(long, conflicts_with = "proxy_cert")]
    proxy_plain_http: bool,
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Create an account with one access key; prints JSON.
    Create { name: String },
    /// List accounts as JSON.
    List,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create another access key for an account (name or 12-digit id).
    Create { account: String },
    /// Revoke an access key.
    Revoke { access_key_id: String },
    /// List an account's keys (no secrets).
    List { account: String },
}

fn managed_images(g: &Global) -> Vec<ManagedImage> {
    match hearth_artifacts::Manifest::load(&g.cache_dir) {
        Ok(m) => m
            .images
            .iter()
            .map(|i| ManagedImage {
                name: i.name.clone(),
                version: i.version.clone(),
                created_at_secs: std::fs::metadata(&i.path)
                    .and_then(|md| md.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            })
            .collect(),
        Err(e) => {
            tracing::warn!("no managed base images: {e}");
            Vec::new()
        }
    }
}

pub async fn serve(g: &Global, a: ServeArgs) -> Result<()> {
    if !hearth_sigv4::is_valid_region(&a.region) {
        bail!(
            "--region {:?} is not a region name (like us-east-1 or eu-central-2)",
            a.region
        );
    }
    for root in &a.artifact_roots {
        if !root.is_dir() {
            bail!("--artifact-root {} is not a directory", root.display());
        }
    }
    let dd = DataDir::open(&g.data_dir)
        .with_context(|| format!("open data dir {}", g.data_dir.display()))?;
    let engine_dir = dd.path.join("engine");
    let backend = match engine_backend(g, &engine_dir) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("image builds and microVMs are unavailable: {e:#}");
            None
        }
    };
    let images = image_control(g, &a, &dd, backend.clone())?;
    let recovered = images
        .recover()
        .context("ending builds a previous server left")?;
    if recovered > 0 {
        tracing::warn!(
            "{recovered} builds were interrupted by the previous server's end; marked FAILED"
        );
    }
    let api = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("bind {}", a.listen))?;
    let api_addr = api.local_addr()?;
    let proxy_dir = dd.path.join("proxy");
    std::fs::create_dir_all(&proxy_dir)
        .with_context(|| format!("create {}", proxy_dir.display()))?;
    let token_key = hearth_token::TokenKey::load_or_create(&proxy_dir.join("token.key"))
        .context("the proxy's token key")?;
    let tls = match (&a.proxy_cert, &a.proxy_key, a.proxy_plain_http) {
        (_, _, true) => hearth_proxy::TlsMode::Off,
        (Some(cert), Some(key), false) => hearth_proxy::TlsMode::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => hearth_proxy::TlsMode::SelfSigned {
            dir: proxy_dir.clone(),
        },
    };
    let proxy_ca = matches!(tls, hearth_proxy::TlsMode::SelfSigned { .. })
        .then(|| hearth_proxy::ca_pem_path(&proxy_dir));
    let mut proxy_cfg = hearth_proxy::ProxyConfig::new(a.proxy_listen, tls);
    proxy_cfg.domain = a.proxy_domain.clone();
    let control_cell = Arc::new(std::sync::OnceLock::new());
    let proxy = hearth_proxy::Proxy::bind(
        proxy_cfg,
        Arc::new(crate::proxy_glue::ControlUpstreams(control_cell.clone())),
        token_key.clone(),
    )
    .await
    .context("the endpoint proxy")?;
    let proxy_addr = proxy.local_addr();
    let microvms = hearth_control::MicrovmControl::new(
        dd.store.clone(),
        hearth_control::MicrovmSetup {
            backend: backend.clone(),
            endpoint_domain: a.proxy_domain.clone(),
            endpoint_port: Some(proxy_addr.port()),
            warm_pool_depth: a.warm_pool_depth,
            prestart_depth: a.prestart_depth,
            max_running: a.max_running_microvms,
            logs_dir: Some(dd.path.join("logs")),
            egress: images.egress(),
        },
    );
    let report = microvms
        .recover()
        .await
        .context("reconciling microVMs with the engine")?;
    tracing::info!("microVMs at start: {report:?}");
    let _ = control_cell.set(microvms.clone());
    let deletions = finish_image_deletions(images.clone());
    let state = Arc::new(AppState {
        store: dd.store.clone(),
        sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
        managed_images: managed_images(g),
        region: a.region.clone(),
        images,
        microvms: microvms.clone(),
        proxy_tokens: Some(token_key.clone()),
    });
    println!(
        "{}",
        json!({
            "api": format!("http://{api_addr}"),
            "proxy": format!("{}://{proxy_addr}", if a.proxy_plain_http { "http" } else { "https" }),
            "proxyDomain": a.proxy_domain,
            "proxyCa": proxy_ca,
            "region": a.region,
            "credentials": dd.credentials_path(),
            "dataDir": dd.path,
        })
    );
    tracing::info!(
        "API on http://{api_addr}; AWS_SHARED_CREDENTIALS_FILE={}",
        dd.credentials_path().display()
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let limits = hearth_http::Limits::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api_srv = hearth_http::serve(
        api,
        limits.clone(),
        Arc::new(hearth_api::Api::new(state.clone()).with_uploads(&dd.path.join("uploads"))),
        stopped(stop_rx.clone()),
    );
    let proxy_srv = proxy.run(stopped(stop_rx));
    let purge = purge_idempotency_records(state.store.clone());
    let until_shutdown = async {
        tokio::select! {
            _ = shutdown => {}
            _ = purge => {}
            _ = deletions => {}
        }
        let _ = stop_tx.send(true);
    };
    let (a, (), ()) = tokio::join!(api_srv, proxy_srv, until_shutdown);
    // MicroVMs keep running (they are persistent); the next server adopts
    // them. Warmed clones and pre-started QEMUs end.
    microvms.shutdown().await;
    a.context("API server")?;
    Ok(())
}

/// The control plane's image side: the engine (state under
/// `<data>/engine`), the builder on it, code artifact sources, and egress.
/// A host without QEMU or guest artifacts still serves the API; its builds
/// fail saying why.
fn image_control(
    g: &Global,
    a: &ServeArgs,
    dd: &DataDir,
    backend: Option<hearth_vmm::QemuBackend>,
) -> Result<hearth_control::ImageControl> {
    let manifest = hearth_artifacts::Manifest::load(&g.cache_dir);
    let base_images = match &manifest {
        Ok(m) => m
            .images
            .iter()
            .map(|i| hearth_control::BaseImageFile {
                name: i.name.clone(),
                version: i.version.clone(),
                root_disk: i.path.clone(),
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let builder = match (&manifest, backend) {
        (Ok(m), Some(backend)) => Some(hearth_builder::Builder::new(
            backend,
            hearth_builder::BuilderConfig::new(m.kernel.path.clone(), m.initramfs.path.clone()),
        )),
        (Err(e), _) => {
            tracing::warn!(
                "image builds are unavailable: no guest artifacts ({e}); run `hearth setup`"
            );
            None
        }
        (_, None) => None,
    };
    let egress = if a.no_egress || builder.is_none() {
        None
    } else {
        let mut cfg = hearth_net::EgressConfig::new(a.egress_netns.clone());
        cfg.link_net = a.egress_link_net;
        let net = hearth_net::EgressNet::ensure(&cfg)
            .with_context(|| format!("prepare the egress network namespace {}", a.egress_netns))?;
        let guest = net.guest_config();
        Some(hearth_builder::GuestEgress {
            nic: hearth_vmm::NicSpec {
                netns: net.netns_path().to_path_buf(),
            },
            setup_commands: hearth_net::guest_setup_commands(&guest),
            resolv_conf: hearth_net::guest_resolv_conf(&guest),
            extra_ca_pem: guest_cas(a)?,
        })
    };
    let s3 = match &a.s3_endpoint {
        None => None,
        Some(url) => Some(hearth_code::S3Config {
            endpoint_url: Some(url.clone()),
            region: a.s3_region.clone(),
            access_key_id: std::env::var("HEARTH_S3_ACCESS_KEY_ID")
                .context("--s3-endpoint needs HEARTH_S3_ACCESS_KEY_ID")?,
            secret_access_key: std::env::var("HEARTH_S3_SECRET_ACCESS_KEY")
                .context("--s3-endpoint needs HEARTH_S3_SECRET_ACCESS_KEY")?,
            force_path_style: true,
        }),
    };
    // Uploads a previous server was receiving when it ended are partial.
    let _ = std::fs::remove_dir_all(dd.path.join("uploads").join("tmp"));
    let code = hearth_code::Fetcher::new(
        hearth_code::SourceConfig {
            artifact_roots: a.artifact_roots.clone(),
            s3,
        },
        hearth_code::Uploads::new(dd.path.join("uploads")),
    );
    Ok(hearth_control::ImageControl::new(
        dd.store.clone(),
        hearth_control::images::BuildSetup {
            data_dir: dd.path.clone(),
            builder,
            base_images,
            code,
            egress,
            region: a.region.clone(),
            max_concurrent_builds: a.max_concurrent_builds,
        },
    ))
}

/// The extra CA certificates builds trust (see `--guest-ca-file`).
fn guest_cas(a: &ServeArgs) -> Result<Option<String>> {
    if a.no_guest_cas {
        return Ok(None);
    }
    let files: Vec<PathBuf> = if a.guest_ca_files.is_empty() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(HOST_LOCAL_CAS)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    } else {
        a.guest_ca_files.clone()
    };
    let mut pem = String::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("read CA certificate {}", f.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            bail!("{} is not a PEM certificate", f.display());
        }
        pem.push_str(text.trim_end());
        pem.push('\n');
    }
    if !files.is_empty() {
        tracing::info!("builds trust {} extra CA certificate files", files.len());
    }
    Ok((!pem.is_empty()).then_some(pem))
}

/// Where Debian keeps a host's locally added CA certificates.
const HOST_LOCAL_CAS: &str = "/usr/local/share/ca-certificates";

/// The engine of `hearth serve`: microVMs of a previous server that died
/// with it are cleaned up first.
fn engine_backend(g: &Global, state_dir: &std::path::Path) -> Result<hearth_vmm::QemuBackend> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let report = hearth_vmm::qemu::gc(state_dir);
    tracing::info!("engine state {}: {report:?}", state_dir.display());
    let decision = hearth_vmm::accel::decide(g.accel, hearth_vmm::accel::HostKvmFacts::probe());
    tracing::info!(accel = %decision.accel, "{}", decision.reason);
    Ok(hearth_vmm::QemuBackend::new(hearth_vmm::QemuConfig::new(
        state_dir.to_path_buf(),
        decision.accel,
    ))?)
}

/// Idempotency records live 24 hours (`hearth_store::IDEMPOTENCY_RECORD_TTL_SECS`):
/// purge older ones at start and every hour. Never returns.
async fn purge_idempotency_records(store: Arc<dyn Store>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        let s = store.clone();
        let cutoff = hearth_api::context::unix_secs() - hearth_store::IDEMPOTENCY_RECORD_TTL_SECS;
        match tokio::task::spawn_blocking(move || s.purge_idempotency(cutoff)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!("purged {n} expired idempotency records"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("purging idempotency records: {e}"),
            Err(e) => tracing::warn!("purging idempotency records: {e}"),
        }
    }
}

/// Images left DELETING because microVMs stood on their snapshots go once
/// the last of those has ended: checked at start (after the microVMs were
/// reconciled) and every `hearth_control::DELETION_SWEEP`. Never returns.
async fn finish_image_deletions(images: hearth_control::ImageControl) {
    let mut every = tokio::time::interval(hearth_control::DELETION_SWEEP);
    loop {
        every.tick().await;
        if let Err(e) = images.finish_deletions().await {
            tracing::warn!("finishing image deletions: {e}");
        }
    }
}

fn open_store(g: &Global) -> Result<Arc<dyn Store>> {
    Ok(DataDir::open(&g.data_dir)
        .with_context(|| format!("open data dir {}", g.data_dir.display()))?
        .store)
}

fn resolve_account(store: &dyn Store, which: &str) -> Result<AccountId> {
    if let Ok(id) = AccountId::new(which) {
        return Ok(store
            .get_account(&id)
            .with_context(|| format!("no account {which}"))?
            .account_id);
    }
    Ok(store
        .get_account_by_name(which)
        .with_context(|| format!("no account named {which:?}"))?
        .account_id)
}

pub fn account(g: &Global, c: AccountCmd) -> Result<()> {
    let store = open_store(g)?;
    match c {
        AccountCmd::Create { name } => {
            let name = AccountName::new(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let acct = store
                .create_account(&name, false)
                .context("create account")?;
            let key = store
                .create_access_key(&acct.account_id)
                .context("create access key")?;
            println!(
                "{}",
                json!({
                    "accountId": acct.account_id.as_str(),
                    "accessKeyId": key.key.access_key_id,
                    "secretAccessKey": key.secret_access_key.expose(),
                })
            );
        }
        AccountCmd::List => {
            let mut page = PageRequest::first(50);
            let mut out = Vec::new();
            loop {
                let p = store.list_accounts(&page)?;
                out.extend(p.items.iter().map(|a| {
                    json!({ "accountId": a.account_id.as_str(), "name": a.name.as_str(), "admin": a.is_admin, "createdAt": a.created_at_secs })
                }));
                match p.next {
                    Some(c) => page = PageRequest::after(50, c),
                    None => break,
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

pub fn key(g: &Global, c: KeyCmd) -> Result<()> {
    let store = open_store(g)?;
    match c {
        KeyCmd::Create { account } => {
            let id = resolve_account(store.as_ref(), &account)?;
            let key = store.create_access_key(&id)?;
            println!(
                "{}",
                json!({ "accountId": id.as_str(), "accessKeyId": key.key.access_key_id, "secretAccessKey": key.secret_access_key.expose() })
            );
        }
        KeyCmd::Revoke { access_key_id } => {
            let Some((acct, _)) = store.secret_for(&access_key_id)? else {
                bail!("no active access key {access_key_id}");
            };
            let k = store.revoke_access_key(&acct, &access_key_id)?;
            println!(
                "{}",
                json!({ "accessKeyId": k.access_key_id, "revokedAt": k.revoked_at_secs })
            );
        }
        KeyCmd::List { account } => {
            let id = resolve_account(store.as_ref(), &account)?;
            let keys: Vec<_> = store
                .list_access_keys(&id)?
                .iter()
                .map(|k| json!({ "accessKeyId": k.access_key_id, "createdAt": k.created_at_secs, "revokedAt": k.revoked_at_secs }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&keys)?);
        }
    }
    Ok(())
}
