//! Hearth's data plane: the authenticating proxy in front of microVM endpoints.
//!
//! Owns one listening socket and everything end users' HTTP clients speak to
//! it: TLS (with certificates issued on demand by a local CA, or given as
//! files), HTTP/1.1 and HTTP/2, CONNECT tunnels, WebSocket upgrades, routing
//! by host name `<microvmId>.<domain>`, the auth token and port checks, a
//! per-microVM rate limit, and forwarding each request as HTTP/1.1 over a byte
//! stream that the [`Upstreams`] implementation opens into the microVM. The
//! proxy never touches VMs: opening a stream (and resuming a suspended
//! microVM first) is the [`Upstreams`] implementation's job.
//!
//! Tasks:
//! - [`Proxy::run`] runs the accept loop on the caller's task.
//! - Each accepted TCP connection runs on its own task: it sniffs the first
//!   byte (0x16 starts TLS), does the TLS handshake, then serves HTTP with
//!   hyper on that task. HTTP/2 streams run on tasks hyper spawns.
//! - Each request's future (auth, [`Upstreams::open`], the upstream
//!   HTTP/1.1 exchange) runs on the connection's task (HTTP/1.1) or its
//!   stream's task (HTTP/2); the upstream connection is driven by a task of
//!   its own. Request and response bodies stream through, chunk by chunk,
//!   with backpressure from both ends: nothing is buffered whole.
//! - A CONNECT tunnel and a WebSocket byte pipe each run on a task spawned
//!   when the upgrade completes; they hold the connection's slot (counted
//!   against `max_connections`) until they end.
//! - Every connection and its tasks end when no byte has crossed the client
//!   socket for `idle_timeout_secs`, or at shutdown.

#![forbid(unsafe_code)]

mod body;
mod conn;
mod ctx;
mod forward;
mod headers;
mod io;
mod ratelimit;
mod route;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use tls::{ca_key_path, ca_pem_path, TlsError};

/// How the proxy speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// A self-signed CA kept in `dir` (`ca.pem`, and `ca.key` with mode
    /// 0600), created on first use. A leaf certificate is issued per SNI name
    /// on demand (exact name, ECDSA P-256, cached): glibc and OpenSSL do not
    /// accept `*.localhost` wildcards. Only `<microvmId>.<domain>` and the
    /// domain itself get a certificate.
    SelfSigned {
        /// Where `ca.pem` and `ca.key` live.
        dir: PathBuf,
    },
    /// A certificate chain and its private key, both PEM, given by the user.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Plain HTTP only.
    Off,
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where to listen (port 0 picks a free port; see [`Proxy::local_addr`]).
    pub listen: SocketAddr,
    /// Endpoints are `<microvmId>.<domain>`.
    pub domain: String,
    /// TLS, or not.
    pub tls: TlsMode,
    /// The port used when a request names none (`X-aws-proxy-port`).
    pub default_port: u16,
    /// Connections held at once; new ones beyond it are closed at once.
    pub max_connections: usize,
    /// Requests per second per microVM (bursts of twice that); 429 with
    /// `Retry-After` above it. 0 turns the limit off.
    pub max_requests_per_sec_per_microvm: u32,
    /// A connection (and its tunnels or WebSockets) is closed when no byte
    /// has crossed its client socket for this long.
    pub idle_timeout_secs: u64,
}

impl ProxyConfig {
    /// Settings with the defaults: domain `localhost`, port 8080, 1024
    /// connections, 100 requests per second per microVM, 300 s idle timeout.
    pub fn new(listen: SocketAddr, tls: TlsMode) -> Self {
        Self {
            listen,
            domain: "localhost".into(),
            tls,
            default_port: 8080,
            max_connections: 1024,
            max_requests_per_sec_per_microvm: 100,
            idle_timeout_secs: 300,
        }
    }
}

/// A byte stream to a port inside a microVM.
pub trait AsyncReadWrite: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// What [`Upstreams::open`] gives the proxy for one request.
pub struct Upstream {
    /// The stream the request is forwarded over (as HTTP/1.1).
    pub io: Box<dyn AsyncReadWrite>,
    /// Called on traffic: once per request, once per chunk of a request or
    /// response body, and per chunk of WebSocket bytes either way. Must be
    /// cheap.
    pub activity: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream { .. }")
    }
}

/// Why [`Upstreams::open`] could not give a stream; each maps to the status
/// the end user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No such microVM for this account: 404.
    #[error("microVM not found")]
    NotFound,
    /// The microVM exists but cannot take requests (for example SUSPENDED
    /// without auto-resume): 409.
    #[error("microVM is {state}: {hint}")]
    NotRunning {
        /// Its state, as the API names it.
        state: String,
        /// What the user can do about it.
        hint: String,
    },
    /// Nothing listens on the port: 502.
    #[error("nothing is listening on that port in the microVM")]
    Refused,
    /// The microVM cannot be reached now: 503.
    #[error("{0}")]
    Unavailable(String),
    /// Too many streams or resumes at once: 429.
    #[error("the microVM is busy")]
    Busy,
}

/// Opens byte streams into microVMs. The integrator implements it on top of
/// the control plane; tests implement it over local TCP.
#[async_trait::async_trait]
pub trait Upstreams: Send + Sync + 'static {
    /// Opens a byte stream to `port` inside microVM `microvm_id` for a
    /// request authorised for `account_id`. May take long (it resumes a
    /// suspended microVM); the proxy just awaits it.
    async fn open(
        &self,
        account_id: &str,
        microvm_id: &str,
        port: u16,
    ) -> Result<Upstream, OpenError>;
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    /// The TLS material could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A bound proxy, ready to [`run`](Proxy::run).
pub struct Proxy {
    listener: tokio::net::TcpListener,
    shared: Arc<ctx::Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Loads or creates the TLS material and binds the listening socket.
    pub async fn bind(
        cfg: ProxyConfig,
        upstreams: Arc<dyn Upstreams>,
        key: hearth_token::TokenKey,
    ) -> Result<Self, ProxyError> {
        let domain = route::normalize_domain(&cfg.domain).ok_or_else(|| {
            ProxyError::Config(format!("domain {:?} is not a DNS name", cfg.domain))
        })?;
        let max_connections_limit = tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        if cfg.max_connections == 0 || cfg.max_connections > max_connections_limit {
            return Err(ProxyError::Config(format!(
                "max_connections must be between 1 and {max_connections_limit}"
            )));
        }
        if cfg.idle_timeout_secs == 0 {
            return Err(ProxyError::Config(
                "idle_timeout_secs must be at least 1".into(),
            ));
        }
        let tls_mode = cfg.tls.clone();
        let tls_domain = domain.clone();
        let tls = tokio::task::spawn_blocking(move || tls::server_config(&tls_mode, &tls_domain))
            .await
            .map_err(|e| ProxyError::Config(format!("TLS set-up task failed: {e}")))??;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let shared = Arc::new(ctx::Shared::new(cfg, domain, upstreams, key, tls));
        Ok(Self { listener, shared })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// requests in flight finish for a grace period, and closes the rest.
    pub async fn run<F: Future>(self, shutdown: F) {
        conn::run(self.listener, self.shared, shutdown).await
    }
}
