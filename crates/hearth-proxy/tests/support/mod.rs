//! Test rig: a real local app (hyper over TCP), an `Upstreams` that opens
//! real TCP connections to it, a real proxy on a real socket, and real TLS
//! clients trusting the proxy's CA.
#![allow(dead_code)]

use bytes::Bytes;
use hearth_proxy::{
    Ingress, OpenError, Proxy, ProxyConfig, Shell, ShellInput, ShellOutput, TermSize, TlsMode,
    Upstream, Upstreams,
};
use hearth_token::{Claims, TokenKey, TokenKind};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

pub const ACCOUNT: &str = "123456789012";
/// The microVM the test app runs in.
pub const VM: &str = "mvm-abcdefghijklmnopq";
/// A microVM the upstreams do not know.
pub const MISSING_VM: &str = "mvm-missing";
/// A microVM that is suspended without auto-resume.
pub const SUSPENDED_VM: &str = "mvm-suspended";
/// A microVM that cannot be reached.
pub const BROKEN_VM: &str = "mvm-broken";
/// A microVM whose app accepts connections and closes them unanswered.
pub const RUDE_VM: &str = "mvm-rude";

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `NO_INGRESS`, `HTTP_INGRESS`, `SHELL_INGRESS` and `ALL_INGRESS`.
pub const NO_INGRESS: Ingress = Ingress {
    http: false,
    shell: false,
};
pub const HTTP_INGRESS: Ingress = Ingress {
    http: true,
    shell: false,
};
pub const SHELL_INGRESS: Ingress = Ingress {
    http: false,
    shell: true,
};
pub const ALL_INGRESS: Ingress = Ingress {
    http: true,
    shell: true,
};

pub fn shell_claims(microvm: &str) -> Claims {
    Claims {
        kind: TokenKind::Shell,
        ports: vec![],
        ..claims(microvm, &[])
    }
}

pub fn claims(microvm: &str, ports: &[u16]) -> Claims {
    Claims {
        account_id: ACCOUNT.into(),
        microvm_id: microvm.into(),
        kind: TokenKind::Http,
        ports: ports.iter().map(|&p| (p, p)).collect(),
        expires_at_secs: now_secs() + 600,
    }
}

/// What the app saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A small HTTP/1.1 app on a local port.
///
/// - `GET /whoami` answers its name.
/// - `GET /headers` answers JSON `{"method","path","headers":[[k,v]..]}`.
/// - `POST /echo` streams the body back, counting the frames it got.
/// - `GET /download?bytes=N` streams N bytes.
/// - `GET /ws` is a WebSocket echo (choosing `chat` if offered).
pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Frames and bytes of request bodies received on `/echo`.
    pub echo_frames: Arc<AtomicU64>,
    pub echo_bytes: Arc<AtomicU64>,
    pub max_echo_frame_bytes: Arc<AtomicU64>,
}

impl App {
    pub async fn start(name: &str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App {
            addr: listener.local_addr().unwrap(),
            name: name.to_string(),
            seen: Arc::default(),
            echo_frames: Arc::default(),
            echo_bytes: Arc::default(),
            max_echo_frame_bytes: Arc::default(),
        };
        let state = AppState {
            name: app.name.clone(),
            seen: app.seen.clone(),
            echo_frames: app.echo_frames.clone(),
            echo_bytes: app.echo_bytes.clone(),
            max_echo_frame_bytes: app.max_echo_frame_bytes.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.serve(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        app
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the app saw a request")
    }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

#[derive(Clone)]
struct AppState {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    echo_frames: Arc<AtomicU64>,
    echo_bytes: Arc<AtomicU64>,
    max_echo_frame_bytes: Arc<AtomicU64>,
}

fn full(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

impl AppState {
    async fn serve(&self, mut req: Request<Incoming>) -> Response<AppBody> {
        let seen = Seen {
            method: req.method().to_string(),
            path: req.uri().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
        };
        self.seen.lock().unwrap().push(seen.clone());
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/whoami" => Response::new(full(self.name.clone())),
            "/headers" => {
                let v = serde_json::json!({
                    "method": seen.method, "path": seen.path, "headers": seen.headers,
                });
                Response::new(full(v.to_string()))
            }
            "/echo" => {
                let frames = self.echo_frames.clone();
                let bytes = self.echo_bytes.clone();
                let max = self.max_echo_frame_bytes.clone();
                let body = req.into_body().map_frame(move |f| {
                    if let Some(d) = f.data_ref() {
                        frames.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                        max.fetch_max(d.len() as u64, Ordering::Relaxed);
                    }
                    f
                });
                Response::new(body.boxed())
            }
            "/download" => {
                let n: u64 = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("bytes="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(2);
                tokio::spawn(async move {
                    let mut left = n;
                    while left > 0 {
                        let take = left.min(chunk.len() as u64) as usize;
                        if tx.send(Ok(Frame::data(chunk.slice(..take)))).await.is_err() {
                            return;
                        }
                        left -= take as u64;
                    }
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (f, rx))
                });
                let mut resp = Response::new(StreamBody::new(stream).boxed());
                resp.headers_mut()
                    .insert("content-length", n.to_string().parse().unwrap());
                resp
            }
            "/ws" => {
                let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                    let mut r = Response::new(full("not a websocket"));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return r;
                };
                let chat = seen
                    .header("sec-websocket-protocol")
                    .is_some_and(|p| p.split(',').any(|v| v.trim() == "chat"));
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    use futures_util::{SinkExt, StreamExt};
                    let upgraded = on_upgrade.await.unwrap();
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if msg.is_close() {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                });
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = r.headers_mut();
                h.insert("connection", "Upgrade".parse().unwrap());
                h.insert("upgrade", "websocket".parse().unwrap());
                h.insert("sec-websocket-accept", accept.parse().unwrap());
                if chat {
                    h.insert("sec-websocket-protocol", "chat".parse().unwrap());
                }
                r
            }
            _ => {
                let mut r = Response::new(full("no such page"));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        }
    }
}

/// Opens real TCP connections to the apps registered per (microVM, port),
/// and fake terminals ([`fake_terminal`]) as shells in any known microVM.
/// Ingress is `ALL_INGRESS` for known microVMs unless [`TestUpstreams::
/// set_ingress`] says otherwise; unknown microVMs are `NotFound`.
#[derive(Default)]
pub struct TestUpstreams {
    pub apps: Mutex<HashMap<(String, u16), SocketAddr>>,
    pub activity: Arc<AtomicU64>,
    pub opens: Mutex<Vec<(String, String, u16)>>,
    /// A local port nothing listens on.
    pub closed_port_addr: Mutex<Option<SocketAddr>>,
    pub rude_addr: Mutex<Option<SocketAddr>>,
    /// Per-microVM ingress, overriding the default.
    pub ingress: Mutex<HashMap<String, Ingress>>,
    /// Every `ingress` call: (account, microVM).
    pub ingress_calls: Mutex<Vec<(String, String)>>,
    /// Every `open_shell` call: (account, microVM, size).
    pub shell_opens: Mutex<Vec<(String, String, TermSize)>>,
    /// The shells opened, in order.
    pub shells: Mutex<Vec<Arc<FakeShell>>>,
    /// Counted by every shell's activity callback.
    pub shell_activity: Arc<AtomicU64>,
}

impl TestUpstreams {
    pub fn add(&self, microvm: &str, port: u16, addr: SocketAddr) {
        self.apps
            .lock()
            .unwrap()
            .insert((microvm.to_string(), port), addr);
    }

    pub fn set_ingress(&self, microvm: &str, ingress: Ingress) {
        self.ingress
            .lock()
            .unwrap()
            .insert(microvm.to_string(), ingress);
    }

    fn knows(&self, microvm: &str) -> bool {
        self.apps.lock().unwrap().keys().any(|(m, _)| m == microvm)
    }

    /// The last shell opened.
    pub fn last_shell(&self) -> Arc<FakeShell> {
        self.shells
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a shell was opened")
    }

    pub fn opened_nothing(&self) -> bool {
        self.opens.lock().unwrap().is_empty() && self.shell_opens.lock().unwrap().is_empty()
    }
}

/// The test's handle on one fake terminal.
pub struct FakeShell {
    pub session_id: String,
    /// Everything the proxy sent into the shell, in order.
    pub inputs: Arc<Mutex<Vec<ShellInput>>>,
    /// Sending a reason ends the session from the platform's side
    /// (`ShellOutput::Closed`).
    pub close: tokio::sync::mpsc::Sender<String>,
    /// Turns true when the shell's input channel closes (the proxy dropped
    /// `Shell::input`).
    pub input_closed: tokio::sync::watch::Receiver<bool>,
    /// Bytes of output the fake managed to put into the output channel.
    pub output_bytes: Arc<AtomicU64>,
}

impl FakeShell {
    pub fn resizes(&self) -> Vec<TermSize> {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|i| match i {
                ShellInput::Resize(s) => Some(*s),
                ShellInput::Data(_) => None,
            })
            .collect()
    }

    /// Waits (at most [`PROMPT`]) until the proxy dropped the input sender.
    pub async fn wait_input_closed(&self) {
        let mut rx = self.input_closed.clone();
        assert_prompt(
            tokio::time::timeout(PROMPT, rx.wait_for(|closed| *closed)).await,
            "the shell's input closing",
        )
        .unwrap();
    }
}

/// Chunks of `flood N` output.
pub const FLOOD_CHUNK_BYTES: usize = 64 * 1024;

/// A small fake terminal over bounded channels:
/// - input bytes are echoed back uppercased;
/// - a resize answers `size COLSxROWS\n`;
/// - the input line `exit N` ends it with `Exited { code: N }`, `kill N`
///   with `Exited { signal: N }`;
/// - the input line `flood N` sends N chunks of [`FLOOD_CHUNK_BYTES`] bytes
///   of `f`, as fast as the output channel takes them;
/// - a reason on `close` ends it with `Closed { reason }`.
///
/// After its end it sends nothing more but keeps reading input until the
/// channel closes, which it reports on `input_closed`.
async fn fake_terminal(
    mut input: tokio::sync::mpsc::Receiver<ShellInput>,
    output: tokio::sync::mpsc::Sender<ShellOutput>,
    mut close: tokio::sync::mpsc::Receiver<String>,
    inputs: Arc<Mutex<Vec<ShellInput>>>,
    input_closed: tokio::sync::watch::Sender<bool>,
    output_bytes: Arc<AtomicU64>,
) {
    let send = |out: ShellOutput| {
        let output = output.clone();
        let output_bytes = output_bytes.clone();
        async move {
            let n = match &out {
                ShellOutput::Data(d) => d.len() as u64,
                _ => 0,
            };
            if output.send(out).await.is_ok() {
                output_bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
    };
    let mut line = Vec::new();
    let mut ended = false;
    loop {
        tokio::select! {
            item = input.recv() => {
                let Some(item) = item else {
                    input_closed.send_replace(true);
                    return;
                };
                inputs.lock().unwrap().push(item.clone());
                if ended {
                    continue;
                }
                match item {
                    ShellInput::Resize(size) => {
                        send(ShellOutput::Data(
                            format!("size {}x{}\n", size.cols, size.rows).into_bytes(),
                        ))
                        .await;
                    }
                    ShellInput::Data(bytes) => {
                        send(ShellOutput::Data(bytes.to_ascii_uppercase())).await;
                        for b in bytes {
                            if b != b'\n' {
                                line.push(b);
                                continue;
                            }
                            let text = String::from_utf8_lossy(&line).into_owned();
                            line.clear();
                            let mut words = text.split_whitespace();
                            let (cmd, n) = (words.next(), words.next().and_then(|n| n.parse::<i32>().ok()));
                            match (cmd, n) {
                                (Some("exit"), Some(code)) => {
                                    send(ShellOutput::Exited { code: Some(code), signal: None }).await;
                                    ended = true;
                                }
                                (Some("kill"), Some(signal)) => {
                                    send(ShellOutput::Exited { code: None, signal: Some(signal) }).await;
                                    ended = true;
                                }
                                (Some("flood"), Some(chunks)) => {
                                    for _ in 0..chunks {
                                        send(ShellOutput::Data(vec![b'f'; FLOOD_CHUNK_BYTES])).await;
                                    }
                                }
                                _ => {}
                            }
                            if ended {
                                break;
                            }
                        }
                    }
                }
            }
            reason = close.recv(), if !ended => {
                if let Some(reason) = reason {
                    send(ShellOutput::Closed { reason }).await;
                    ended = true;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Upstreams for TestUpstreams {
    async fn ingress(&self, account: &str, microvm: &str) -> Result<Ingress, OpenError> {
        self.ingress_calls
            .lock()
            .unwrap()
            .push((account.into(), microvm.into()));
        if let Some(ingress) = self.ingress.lock().unwrap().get(microvm) {
            return Ok(*ingress);
        }
        match microvm {
            SUSPENDED_VM | BROKEN_VM | RUDE_VM => Ok(ALL_INGRESS),
            _ if self.knows(microvm) => Ok(ALL_INGRESS),
            _ => Err(OpenError::NotFound),
        }
    }

    async fn open_shell(
        &self,
        account: &str,
        microvm: &str,
        size: TermSize,
    ) -> Result<Shell, OpenError> {
        self.shell_opens
            .lock()
            .unwrap()
            .push((account.into(), microvm.into(), size));
        match microvm {
            SUSPENDED_VM => {
                return Err(OpenError::NotRunning {
                    state: "SUSPENDED".into(),
                    hint: "resume it with ResumeMicrovm".into(),
                })
            }
            BROKEN_VM => return Err(OpenError::Unavailable("its host is gone".into())),
            _ if !self.knows(microvm) => return Err(OpenError::NotFound),
            _ => {}
        }
        let n = self.shells.lock().unwrap().len();
        let session_id = format!("5e55{n:04x}-0000-4000-8000-000000000000");
        let (input_tx, input_rx) = tokio::sync::mpsc::channel(4);
        let (output_tx, output_rx) = tokio::sync::mpsc::channel(4);
        let (close_tx, close_rx) = tokio::sync::mpsc::channel(1);
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let fake = Arc::new(FakeShell {
            session_id: session_id.clone(),
            inputs: Arc::default(),
            close: close_tx,
            input_closed: closed_rx,
            output_bytes: Arc::default(),
        });
        tokio::spawn(fake_terminal(
            input_rx,
            output_tx,
            close_rx,
            fake.inputs.clone(),
            closed_tx,
            fake.output_bytes.clone(),
        ));
        self.shells.lock().unwrap().push(fake);
        let activity = self.shell_activity.clone();
        Ok(Shell {
            session_id,
            input: input_tx,
            output: output_rx,
            activity: Arc::new(move || {
                activity.fetch_add(1, Ordering::Relaxed);
            }),
        })
    }

    async fn open(&self, account: &str, microvm: &str, port: u16) -> Result<Upstream, OpenError> {
        self.opens
            .lock()
            .unwrap()
            .push((account.into(), microvm.into(), port));
        let addr = match microvm {
            SUSPENDED_VM => {
                return Err(OpenError::NotRunning {
                    state: "SUSPENDED".into(),
                    hint: "resume it with ResumeMicrovm".into(),
                })
            }
            BROKEN_VM => return Err(OpenError::Unavailable("its host is gone".into())),
            RUDE_VM => self.rude_addr.lock().unwrap().expect("rude app started"),
            _ => {
                let known = self.apps.lock().unwrap();
                if !known.keys().any(|(m, _)| m == microvm) {
                    return Err(OpenError::NotFound);
                }
                match known.get(&(microvm.to_string(), port)) {
                    Some(a) => *a,
                    None => self
                        .closed_port_addr
                        .lock()
                        .unwrap()
                        .expect("closed port set"),
                }
            }
        };
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                OpenError::Refused
            } else {
                OpenError::Unavailable(e.to_string())
            }
        })?;
        let activity = self.activity.clone();
        Ok(Upstream {
            io: Box::new(stream),
            activity: Arc::new(move || {
                activity.fetch_add(1, Ordering::Relaxed);
            }),
        })
    }
}

/// A running proxy with one app on port 8080 and another on 9000.
pub struct Rig {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub key: TokenKey,
    pub upstreams: Arc<TestUpstreams>,
    pub app: App,
    pub app9000: App,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub proxy_task: tokio::task::JoinHandle<()>,
}

pub enum Tls {
    SelfSigned,
    Off,
    Files { cert: PathBuf, key: PathBuf },
}

impl Rig {
    pub async fn start(tls: Tls, tweak: impl FnOnce(&mut ProxyConfig)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let app = App::start("app-8080").await;
        let app9000 = App::start("app-9000").await;
        let upstreams = Arc::new(TestUpstreams::default());
        upstreams.add(VM, 8080, app.addr);
        upstreams.add(VM, 9000, app9000.addr);
        // A port that was just free: nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        *upstreams.closed_port_addr.lock().unwrap() = Some(closed.local_addr().unwrap());
        drop(closed);
        let rude = TcpListener::bind("127.0.0.1:0").await.unwrap();
        *upstreams.rude_addr.lock().unwrap() = Some(rude.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = rude.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    drop(s);
                });
            }
        });
        let mode = match tls {
            Tls::SelfSigned => TlsMode::SelfSigned {
                dir: dir.path().join("tls"),
            },
            Tls::Off => TlsMode::Off,
            Tls::Files { cert, key } => TlsMode::Files { cert, key },
        };
        let mut cfg = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), mode);
        cfg.max_requests_per_sec_per_microvm = 0;
        tweak(&mut cfg);
        let key = TokenKey::generate();
        let proxy = Proxy::bind(cfg, upstreams.clone(), key.clone())
            .await
            .unwrap();
        let addr = proxy.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let proxy_task = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        Rig {
            addr,
            dir,
            key,
            upstreams,
            app,
            app9000,
            shutdown: Some(tx),
            proxy_task,
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        hearth_proxy::ca_pem_path(&self.dir.path().join("tls"))
    }

    pub fn token(&self, microvm: &str, ports: &[u16]) -> String {
        self.key.mint(&claims(microvm, ports))
    }

    pub fn shell_token(&self, microvm: &str) -> String {
        self.key.mint(&shell_claims(microvm))
    }

    pub fn host(microvm: &str) -> String {
        format!("{microvm}.localhost")
    }
}

pub fn client_config(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS over `io` to `sni`, trusting `ca_pem`.
pub async fn tls_over<IO>(io: IO, ca_pem: &Path, sni: &str, alpn: &[&[u8]]) -> TlsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, alpn));
    connector
        .connect(sni.to_string().try_into().unwrap(), io)
        .await
        .unwrap()
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &Path,
    sni: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    tls_over(TcpStream::connect(addr).await.unwrap(), ca_pem, sni, alpn).await
}

pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// An HTTP/1.1 client connection over `io`.
pub async fn h1<IO>(io: IO) -> hyper::client::conn::http1::SendRequest<ReqBody>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// An HTTP/2 client connection over `io`.
pub async fn h2<IO>(io: IO) -> hyper::client::conn::http2::SendRequest<ReqBody>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A GET with the given headers.
pub fn get(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut b = Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body(Bytes::new())).unwrap()
}

/// Status, headers and whole body of a response.
pub async fn read(resp: Response<Incoming>) -> (StatusCode, http::HeaderMap, String) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The `message` of a proxy error body, checking its content type.
pub fn message(headers: &http::HeaderMap, body: &str) -> String {
    assert_eq!(headers["content-type"], "application/json", "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["message"].as_str().unwrap().to_string()
}

/// `GET /whoami` for [`VM`] with `token` on an open HTTP/1.1 connection:
/// status, headers and body.
pub async fn whoami(
    s: &mut hyper::client::conn::http1::SendRequest<ReqBody>,
    token: &str,
) -> (StatusCode, http::HeaderMap, String) {
    read(
        s.go(get(
            &Rig::host(VM),
            "/whoami",
            &[("x-aws-proxy-auth", token)],
        ))
        .await
        .unwrap(),
    )
    .await
}

/// One HTTPS/1.1 request on a fresh connection with SNI = host.
pub async fn https_get(
    rig: &Rig,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let tls = tls_connect(rig.addr, &rig.ca_pem(), host, &[b"http/1.1"]).await;
    let mut s = h1(tls).await;
    read(s.go(get(host, path, headers)).await.unwrap()).await
}

/// Sends a CONNECT for `target` on a fresh plain connection; returns the
/// stream after the proxy's answer head and the status line.
pub async fn connect_tunnel(addr: SocketAddr, target: &str) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read the answer head byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "proxy closed during CONNECT answer: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    (s, head)
}

pub fn assert_prompt<T>(r: Result<T, tokio::time::error::Elapsed>, what: &str) -> T {
    r.unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

pub const PROMPT: Duration = Duration::from_secs(10);

/// Sends on an HTTP/1.1 or HTTP/2 client connection once it is ready for
/// another request.
pub trait Client {
    fn go(
        &mut self,
        req: Request<ReqBody>,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, hyper::Error>>;
}

impl Client for hyper::client::conn::http1::SendRequest<ReqBody> {
    async fn go(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, hyper::Error> {
        self.ready().await?;
        self.send_request(req).await
    }
}

impl Client for hyper::client::conn::http2::SendRequest<ReqBody> {
    async fn go(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, hyper::Error> {
        self.ready().await?;
        self.send_request(req).await
    }
}
