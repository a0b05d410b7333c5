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
    let state = Arc::new(AppState {
        store: dd.store.clone(),
        sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
        managed_images: managed_images(g),
        region: a.region.clone(),
    });
    let api = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("bind {}", a.listen))?;
    let proxy = tokio::net::TcpListener::bind(a.proxy_listen)
        .await
        .with_context(|| format!("bind {}", a.proxy_listen))?;
    let api_addr = api.local_addr()?;
    let proxy_addr = proxy.local_addr()?;
    println!(
        "{}",
        json!({
            "api": format!("http://{api_addr}"),
            "proxy": format!("http://{proxy_addr}"),
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
        Arc::new(hearth_api::Api::new(state.clone())),
        stopped(stop_rx.clone()),
    );
    let proxy_srv = hearth_http::serve(proxy, limits, Arc::new(NoProxyYet), stopped(stop_rx));
    let purge = purge_idempotency_records(state.store.clone());
    let until_shutdown = async {
        tokio::select! {
            _ = shutdown => {}
            _ = purge => {}
        }
        let _ = stop_tx.send(true);
    };
    let (a, p, ()) = tokio::join!(api_srv, proxy_srv, until_shutdown);
    a.context("API server")?;
    p.context("proxy server")?;
    Ok(())
}

/// The proxy listener until microVMs can be reached: every request is
/// answered, in the AWS error shape, that there is nothing to reach yet.
struct NoProxyYet;

impl hearth_http::Service for NoProxyYet {
    async fn call(&self, _req: hearth_http::Request) -> hearth_http::Response {
        hearth_api::error::ApiError::NotImplemented(
            "the microVM proxy arrives with RunMicrovm; no microVM can be reached yet".into(),
        )
        .to_response()
    }
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
