//! Hearth's data plane: the authenticating proxy in front of microVM endpoints.
//!
//! Owns one listening socket and everything end users' HTTP clients speak to
//! it: TLS (with certificates issued on demand by a local CA, or given as
//! files), HTTP/1.1 and HTTP/2, CONNECT tunnels, WebSocket upgrades, routing
//! by host name `<microvmId>.<domain>`, the auth token and port checks, a
//! per-microVM rate limit, the microVM's ingress connectors (asked of
//! [`Upstreams::ingress`] before anything is opened), forwarding each
//! request as HTTP/1.1 over a byte stream that the [`Upstreams`]
//! implementation opens into the microVM, and the interactive shell: a
//! WebSocket opened with a shell token, whose frames the proxy moves to and
//! from a [`Shell`] (see the `shell` module for its frames). The token's
//! kind decides which of the two a request is. The proxy never touches VMs:
//! opening a stream or a shell (and resuming a suspended microVM first) is
//! the [`Upstreams`] implementation's job.
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
//! - A shell session's pump (client frames into [`Shell::input`],
//!   [`Shell::output`] into client frames) runs on a task of its own,
//!   spawned with the `101` once [`Upstreams::open_shell`] has succeeded; it
//!   holds the connection's slot too, and at shutdown it closes the session
//!   with 1001 before the connection is dropped.
//! - Every connection and its tasks end when no byte has crossed the client
//!   socket for `idle_timeout_secs`, or at shutdown.

#![forbid(unsafe_code)]

mod admit;
mod body;
mod conn;
mod ctx;
mod forward;
mod headers;
mod io;
mod ratelimit;
mod route;
mod shell;
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

/// What a microVM's ingress network connectors let through its endpoint
/// (`NO_INGRESS`: neither; `HTTP_INGRESS`: HTTP and WebSocket requests to
/// the token's ports; `SHELL_INGRESS`: the shell; `ALL_INGRESS`: both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    /// HTTP requests and WebSockets to the app's ports.
    pub http: bool,
    /// The interactive shell.
    pub shell: bool,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for TermSize {
    /// 80 by 24, until the client sends its own.
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// What the client sends into a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellInput {
    /// Keystrokes (bytes for the terminal).
    Data(Vec<u8>),
    /// The client's terminal changed size.
    Resize(TermSize),
}

/// What a shell sends to the client. After [`ShellOutput::Exited`] or
/// [`ShellOutput::Closed`] nothing more comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellOutput {
    /// Terminal output.
    Data(Vec<u8>),
    /// The shell process ended by itself.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that ended it, when one did.
        signal: Option<i32>,
    },
    /// The session was ended from the platform's side (the microVM was
    /// suspended or terminated, or its agent failed); `reason` says which.
    Closed {
        /// For the user (at most 120 bytes).
        reason: String,
    },
}

/// An interactive shell in a microVM, opened by [`Upstreams::open_shell`].
/// Dropping `input` ends the shell (the terminal hangs up).
pub struct Shell {
    /// Unique per session; sent to the client in `session_init`.
    pub session_id: String,
    /// Keystrokes and resizes, in order.
    pub input: tokio::sync::mpsc::Sender<ShellInput>,
    /// Output, then one `Exited` or `Closed`.
    pub output: tokio::sync::mpsc::Receiver<ShellOutput>,
    /// Called on traffic either way, as [`Upstream::activity`].
    pub activity: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// Opens byte streams into microVMs. The integrator implements it on top of
/// the control plane; tests implement it over local TCP.
#[async_trait::async_trait]
pub trait Upstreams: Send + Sync + 'static {
    /// What microVM `microvm_id`'s ingress connectors allow; checked before
    /// anything is opened (a refused request never resumes a microVM).
    async fn ingress(&self, account_id: &str, microvm_id: &str) -> Result<Ingress, OpenError>;

    /// Opens a byte stream to `port` inside microVM `microvm_id` for a
    /// request authorised for `account_id`. May take long (it resumes a
    /// suspended microVM); the proxy just awaits it.
    async fn open(
        &self,
        account_id: &str,
        microvm_id: &str,
        port: u16,
    ) -> Result<Upstream, OpenError>;

    /// Starts an interactive shell on a new terminal of `size` in microVM
    /// `microvm_id` (resuming it first, as [`Upstreams::open`] does).
    async fn open_shell(
        &self,
        account_id: &str,
        microvm_id: &str,
        size: TermSize,
    ) -> Result<Shell, OpenError>;
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
