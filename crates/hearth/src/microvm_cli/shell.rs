//! `hearth shell ID`: an interactive terminal into a microVM that feels
//! like `ssh`.
//!
//! This module owns the shell token (CreateMicrovmShellAuthToken), the
//! WebSocket session through Hearth's endpoint proxy, and the local
//! terminal while a session runs (raw mode, its size, the signals that end
//! `hearth shell`). The TCP and TLS under the WebSocket are `hearth curl`'s
//! ([`super::curl`]: the endpoint `<id>.<domain>:<port>` from GetMicrovm,
//! loopback for `.localhost`, the data directory's proxy CA).
//!
//! The wire: `wss://<endpoint>/` (an HTTP/1.1 Upgrade) offering the
//! subprotocols `lambda-microvms` and `lambda-microvms.authentication.<token>`
//! (no port subprotocol: a shell is no app port). The server's first frame
//! is the text `{"type":"session_init","session_id":"<uuid>"}`; after it,
//! binary frames are terminal output, and the text
//! `{"type":"exit","exit_code":N}` (or `"signal":N`) says the shell ended,
//! followed by close 1000. A close with another code (1001 and a reason
//! such as "microVM suspended (idle)") is the platform ending the session.
//! The client sends keystrokes as binary frames and its terminal's size as
//! `{"type":"resize","cols":C,"rows":R}`, first right after `session_init`.
//!
//! Tasks: everything runs on the command's task. [`Session::run`] is one
//! loop selecting over the WebSocket, the input and the size changes; it
//! writes output as it arrives, flushed per frame, and the command races it
//! against SIGHUP, SIGTERM and SIGINT. Standard input is read on a plain
//! thread of its own ([`stdin_reader`]): a blocking read of a terminal
//! cannot be cancelled, and on Tokio's blocking pool it would hold the
//! runtime's shutdown until the next keystroke; the thread dies with the
//! process.
//!
//! Exit codes (as ssh): the shell's exit code; 128+S when signal S ended
//! the shell, or when `hearth shell` itself got SIGHUP, SIGTERM or SIGINT;
//! 255 when the session could not be set up, the connection was lost, or
//! the platform ended the session (with a one-line note on stderr).

use std::io::{self, IsTerminal, Read};
use std::os::fd::RawFd;
use std::pin::{pin, Pin};
use std::sync::{Mutex, Once};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use clap::Args;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, Stream, StreamExt};
use http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL, USER_AGENT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::curl::{self, open, CurlError, Io, Target};
use super::view;
use crate::client::{error_chain, Api, ApiCallError, ClientArgs};
use crate::Global;

/// The subprotocol that marks a Lambda MicroVMs WebSocket.
pub const SUBPROTOCOL: &str = "lambda-microvms";
/// The subprotocol that carries the shell token, before the token.
pub const AUTH_SUBPROTOCOL_PREFIX: &str = "lambda-microvms.authentication.";
/// The key of the token in CreateMicrovmShellAuthToken's `authToken` map.
pub const TOKEN_HEADER: &str = "X-aws-proxy-auth";
/// The default lifetime of the shell token, minutes.
pub const DEFAULT_TOKEN_MINUTES: i32 = 60;
/// The exit code when the session could not be set up or did not end with
/// the shell's own exit (as ssh's).
pub const FAILURE_EXIT_CODE: i32 = 255;
/// The most keystroke bytes sent in one frame.
/// How often an idle session pings the proxy (its connections end after
/// 300 s without a byte).
const KEEPALIVE: Duration = Duration::from_secs(60);
const INPUT_CHUNK_BYTES: usize = 16 * 1024;
/// How long a close we send may take before we stop waiting for it.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Standard input's file descriptor.
const STDIN_FD: RawFd = 0;

/// `hearth shell`'s arguments.
#[derive(Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// The microVM id.
    id: String,
    /// How long the shell token is valid, minutes (the session must start
    /// within it).
    #[arg(long, default_value_t = DEFAULT_TOKEN_MINUTES, value_parser = clap::value_parser!(i32).range(1..=60))]
    minutes: i32,
    #[command(flatten)]
    proxy: curl::ProxyArgs,
    /// Give up when the shell has not started after this long: each of the
    /// WebSocket upgrade and the session's start (which may resume a
    /// suspended microVM).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    start_timeout_secs: u64,
    /// Print the steps and their durations to standard error (before the
    /// session starts).
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// Why a shell session failed; every one makes `hearth shell` exit 255.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// Reaching the proxy (endpoint, CA, TCP, TLS), as for `hearth curl`.
    #[error(transparent)]
    Transport(#[from] CurlError),
    #[error("CreateMicrovmShellAuthToken answered no {TOKEN_HEADER} token")]
    NoToken,
    #[error("the shell token cannot be offered as a WebSocket subprotocol (it holds spaces, commas or control characters)")]
    BadToken,
    #[error("the WebSocket upgrade at the endpoint proxy {addr} for {host} failed: {source}")]
    Handshake {
        addr: String,
        host: String,
        #[source]
        source: WsError,
    },
    /// The proxy answered the upgrade with an HTTP error.
    #[error("the endpoint proxy refused the shell (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the shell did not start within {timeout_secs} s (no {waiting_for})")]
    StartTimeout {
        timeout_secs: u64,
        waiting_for: &'static str,
    },
    /// The server closed the WebSocket before `session_init`.
    #[error("the shell did not start: {}", close_text(*code, reason))]
    NotStarted { code: u16, reason: String },
    #[error("the server broke the shell protocol: {0}")]
    Protocol(String),
    /// The platform ended the session (a close other than after the
    /// shell's exit): the microVM was suspended or terminated, or its
    /// agent failed.
    #[error("shell ended: {}", close_text(*code, reason))]
    Ended { code: u16, reason: String },
    #[error("the connection to the endpoint proxy was lost{detail}")]
    ConnectionLost { detail: String },
    #[error("could not read standard input: {0}")]
    Input(#[source] io::Error),
    #[error("could not write the shell's output: {0}")]
    Output(#[source] io::Error),
    #[error("could not set up the terminal: {0}")]
    Terminal(#[source] io::Error),
}

/// A close's reason for the user: the reason, else its code.
fn close_text(code: u16, reason: &str) -> String {
    if reason.is_empty() {
        format!("the server closed the session (WebSocket close code {code})")
    } else {
        reason.to_string()
    }
}

fn lost(e: Option<&WsError>) -> ShellError {
    ShellError::ConnectionLost {
        detail: e.map(|e| format!(": {e}")).unwrap_or_default(),
    }
}

fn close_parts(f: Option<CloseFrame>) -> (u16, String) {
    match f {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (u16::from(CloseCode::Status), String::new()),
    }
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

/// How the shell ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellStatus {
    /// It exited with this code.
    Exited(i32),
    /// This signal ended it.
    Signaled(i32),
}

impl ShellStatus {
    /// `hearth shell`'s exit code for it, as ssh's: the code, or 128+S.
    pub fn exit_code(self) -> i32 {
        match self {
            ShellStatus::Exited(n) => n & 0xff,
            ShellStatus::Signaled(s) => 128 + (s & 0x7f),
        }
    }
}

/// A session that ended with the shell's own exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub session_id: String,
    pub status: ShellStatus,
}

/// The timings of a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// How long the server may take to send `session_init`.
    pub start_timeout: Duration,
    /// How long to wait for the close after the exit frame.
    pub exit_grace: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            start_timeout: Duration::from_secs(60),
            exit_grace: Duration::from_secs(2),
        }
    }
}

/// A started session: `session_init` has arrived.
pub struct Session<S> {
    ws: WebSocketStream<S>,
    pub session_id: String,
    exit_grace: Duration,
}

/// The text frame of a size.
fn resize_frame(size: TermSize) -> Message {
    Message::text(
        serde_json::json!({"type": "resize", "cols": size.cols, "rows": size.rows}).to_string(),
    )
}

/// A text frame, shortened for an error message.
fn snippet(t: &str) -> String {
    let mut s: String = t.chars().take(120).collect();
    if s.len() < t.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// An `exit` text frame's status; `None` for other (unknown) types.
fn parse_exit(t: &str) -> Result<Option<ShellStatus>, ShellError> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(t) else {
        return Ok(None);
    };
    if v["type"] != "exit" {
        return Ok(None);
    }
    let int = |k: &str| v[k].as_i64().and_then(|n| i32::try_from(n).ok());
    match (int("exit_code"), int("signal")) {
        (Some(code), _) => Ok(Some(ShellStatus::Exited(code))),
        (None, Some(sig)) => Ok(Some(ShellStatus::Signaled(sig))),
        (None, None) => Err(ShellError::Protocol(format!(
            "an exit frame with neither exit_code nor signal: {}",
            snippet(t)
        ))),
    }
}

/// Send a close and flush it, giving up after a moment (best effort: the
/// session is over either way).
async fn close_quietly<S>(ws: &mut WebSocketStream<S>, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, ws.close(Some(frame))).await;
}

/// Wait for `session_init` (at most `opts.start_timeout`).
pub async fn start_session<S>(
    mut ws: WebSocketStream<S>,
    opts: &SessionOptions,
) -> Result<Session<S>, ShellError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v = serde_json::from_str::<serde_json::Value>(&t).ok();
                    let init = v.as_ref().filter(|v| v["type"] == "session_init");
                    return match init.and_then(|v| v["session_id"].as_str()) {
                        Some(id) => Ok(id.to_string()),
                        None => Err(ShellError::Protocol(format!(
                            "the first frame is not session_init with a session_id: {}",
                            snippet(&t)
                        ))),
                    };
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(ShellError::Protocol(
                        "terminal output arrived before session_init".into(),
                    ))
                }
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = close_parts(f);
                    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, ws.flush()).await;
                    return Err(ShellError::NotStarted { code, reason });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(Some(&e))),
                None => return Err(lost(None)),
            }
        }
    };
    let session_id = tokio::time::timeout(opts.start_timeout, wait)
        .await
        .map_err(|_| ShellError::StartTimeout {
            timeout_secs: opts.start_timeout.as_secs(),
            waiting_for: "session_init from the server",
        })??;
    Ok(Session {
        ws,
        session_id,
        exit_grace: opts.exit_grace,
    })
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Run the session: send `initial_size` (a terminal's) first, then
    /// `input`'s bytes as keystrokes and `resize`'s sizes (each only when
    /// it changed) until the shell ends; write the output to `output`,
    /// flushed per frame. At `input`'s end, keep reading output until the
    /// session ends. Returns the shell's status when it exited (an exit
    /// frame, then the close or the connection's end, or `exit_grace`
    /// without either).
    pub async fn run<R, W, Z>(
        self,
        input: R,
        output: W,
        initial_size: Option<TermSize>,
        resize: Z,
    ) -> Result<SessionEnd, ShellError>
    where
        R: AsyncRead,
        W: AsyncWrite,
        Z: Stream<Item = TermSize>,
    {
        let Session {
            mut ws,
            session_id,
            exit_grace,
        } = self;
        let mut input = pin!(input);
        let mut output = pin!(output);
        let mut resize = pin!(resize);
        let mut last_size = None;
        // A send that failed: the server's close (and its reason) may
        // still be on its way, so read on for a moment before giving up.
        let mut send_failed: Option<WsError> = None;
        if let Some(size) = initial_size {
            if let Err(e) = ws.send(resize_frame(size)).await {
                send_failed = Some(e);
            }
            last_size = Some(size);
        }
        let mut buf = vec![0u8; INPUT_CHUNK_BYTES];
        let (mut input_open, mut resize_open) = (true, true);
        let mut status: Option<ShellStatus> = None;
        let mut deadline = send_failed.as_ref().map(|_| Instant::now() + exit_grace);
        let ended = |status: ShellStatus| SessionEnd {
            session_id: session_id.clone(),
            status,
        };
        // Keepalives: the proxy drops a connection nothing crossed for a
        // while; pings are not activity for the microVM's idle policy.
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let sending = status.is_none() && send_failed.is_none();
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                _ = keepalive.tick(), if sending => {
                    if let Err(e) = ws.send(Message::Ping(Vec::new().into())).await {
                        send_failed = Some(e);
                        deadline = Some(Instant::now() + exit_grace);
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        let written = match output.write_all(&b).await {
                            Ok(()) => output.flush().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = written {
                            close_quietly(&mut ws, "client output closed").await;
                            return Err(ShellError::Output(e));
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Some(s) = parse_exit(&t)? {
                            status.get_or_insert(s);
                            deadline = Some(Instant::now() + exit_grace);
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        // Flushes the close reply tungstenite queued.
                        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, ws.flush()).await;
                        return match status {
                            Some(s) => Ok(ended(s)),
                            None => {
                                let (code, reason) = close_parts(f);
                                Err(ShellError::Ended { code, reason })
                            }
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        return status.map(ended).ok_or_else(|| lost(send_failed.as_ref().or(Some(&e))))
                    }
                    None => return status.map(ended).ok_or_else(|| lost(send_failed.as_ref())),
                },
                n = input.read(&mut buf), if input_open && sending => match n {
                    Ok(0) => input_open = false,
                    Ok(n) => {
                        if let Err(e) = ws.send(Message::binary(buf[..n].to_vec())).await {
                            send_failed = Some(e);
                            deadline = Some(Instant::now() + exit_grace);
                        }
                    }
                    Err(e) => {
                        close_quietly(&mut ws, "client input failed").await;
                        return Err(ShellError::Input(e));
                    }
                },
                size = resize.next(), if resize_open && sending => match size {
                    None => resize_open = false,
                    Some(s) if Some(s) == last_size => {}
                    Some(s) => {
                        last_size = Some(s);
                        if let Err(e) = ws.send(resize_frame(s)).await {
                            send_failed = Some(e);
                            deadline = Some(Instant::now() + exit_grace);
                        }
                    }
                },
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    return match status {
                        Some(s) => Ok(ended(s)),
                        None => Err(lost(send_failed.as_ref())),
                    };
                }
            }
        }
    }
}

/// The WebSocket upgrade request: `ws[s]://<endpoint>/` offering the
/// marker and token subprotocols.
pub fn upgrade_request(target: &Target, tls: bool, token: &str) -> Result<Request, ShellError> {
    let token_ok = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'"');
    if !token_ok {
        return Err(ShellError::BadToken);
    }
    let scheme = if tls { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{}/", target.authority)
        .into_client_request()
        .map_err(|_| CurlError::Endpoint {
            endpoint: target.authority.clone(),
        })?;
    let protocols =
        HeaderValue::from_str(&format!("{SUBPROTOCOL}, {AUTH_SUBPROTOCOL_PREFIX}{token}"))
            .map_err(|_| ShellError::BadToken)?;
    let h = req.headers_mut();
    h.insert(SEC_WEBSOCKET_PROTOCOL, protocols);
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("hearth/", env!("CARGO_PKG_VERSION"))),
    );
    Ok(req)
}

/// The message of a refused upgrade: the body's JSON `message`, else the
/// body, else the status's reason.
fn refusal(resp: &http::Response<Option<Vec<u8>>>) -> ShellError {
    let status = resp.status();
    let body = resp.body().as_deref().unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            (!text.is_empty()).then_some(text)
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
    ShellError::Refused {
        status: status.as_u16(),
        message,
    }
}

/// The WebSocket upgrade over a connected stream to the proxy (`peer`
/// names it in errors).
pub async fn handshake<S>(
    stream: S,
    target: &Target,
    tls: bool,
    token: &str,
    peer: &str,
) -> Result<WebSocketStream<S>, ShellError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = upgrade_request(target, tls, token)?;
    match tokio_tungstenite::client_async_with_config(req, stream, None).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(refusal(&resp)),
        Err(source) => Err(ShellError::Handshake {
            addr: peer.to_string(),
            host: target.host.clone(),
            source,
        }),
    }
}

/// Why `hearth shell` stopped before or instead of a session's end.
enum Failure {
    /// Printed as the aws CLI prints it, by [`crate::client::finish`].
    Api(ApiCallError),
    Shell(ShellError),
}

impl From<ApiCallError> for Failure {
    fn from(e: ApiCallError) -> Self {
        Failure::Api(e)
    }
}

impl From<ShellError> for Failure {
    fn from(e: ShellError) -> Self {
        Failure::Shell(e)
    }
}

impl From<CurlError> for Failure {
    fn from(e: CurlError) -> Self {
        Failure::Shell(e.into())
    }
}

/// CreateMicrovmShellAuthToken; the token.
async fn mint_shell_token(api: &Api, id: &str, minutes: i32) -> Result<String, Failure> {
    let out = api
        .sdk
        .create_microvm_shell_auth_token()
        .microvm_identifier(id)
        .expiration_in_minutes(minutes)
        .send()
        .await
        .map_err(|e| api.error("CreateMicrovmShellAuthToken", e))?;
    out.auth_token()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TOKEN_HEADER))
        .map(|(_, v)| v.clone())
        .ok_or(Failure::Shell(ShellError::NoToken))
}

/// Find the microVM, mint a token, connect, upgrade, and wait for
/// `session_init`.
async fn open_session(
    api: &Api,
    g: &Global,
    a: &ShellArgs,
) -> Result<Session<Box<dyn Io>>, Failure> {
    let verbose = |what: &str, took: Duration| {
        if a.verbose {
            eprintln!("* {what}: {}", view::elapsed_text(took));
        }
    };
    let trust = a.proxy.trust(&g.data_dir)?;
    let t = Instant::now();
    let m = super::get_view(api, &a.id).await?;
    verbose(
        &format!("GetMicrovm ({}, {})", m.state, m.endpoint),
        t.elapsed(),
    );
    let (target, transport) = a.proxy.reach(&m.endpoint, trust.as_ref())?;
    let t = Instant::now();
    let token = mint_shell_token(api, &a.id, a.minutes).await?;
    verbose("CreateMicrovmShellAuthToken", t.elapsed());
    let t = Instant::now();
    let (io, peer) = tokio::time::timeout(transport.connect_timeout, open(&transport, &target))
        .await
        .map_err(|_| CurlError::ConnectTimeout {
            addr: transport.dial.to_string(),
            timeout_secs: a.proxy.connect_timeout_secs,
        })??;
    verbose(&format!("connect to {peer}"), t.elapsed());
    let opts = SessionOptions {
        start_timeout: Duration::from_secs(a.start_timeout_secs),
        ..SessionOptions::default()
    };
    let t = Instant::now();
    let ws = tokio::time::timeout(
        opts.start_timeout,
        handshake(io, &target, trust.is_some(), &token, &peer),
    )
    .await
    .map_err(|_| ShellError::StartTimeout {
        timeout_secs: a.start_timeout_secs,
        waiting_for: "answer to the WebSocket upgrade",
    })??;
    verbose("WebSocket upgrade", t.elapsed());
    let t = Instant::now();
    let session = start_session(ws, &opts).await?;
    verbose(&format!("session {}", session.session_id), t.elapsed());
    Ok(session)
}

/// `hearth shell`: the process's exit code (see the module's doc); an API
/// error is returned for [`crate::client::finish`] to print.
pub(super) async fn shell(api: &Api, g: &Global, a: ShellArgs) -> anyhow::Result<i32> {
    let session = match open_session(api, g, &a).await {
        Ok(s) => s,
        Err(Failure::Api(e)) => return Err(e.into()),
        Err(Failure::Shell(e)) => {
            report(&e, None);
            return Ok(FAILURE_EXIT_CODE);
        }
    };
    let mut out = LastByte {
        inner: tokio::io::stdout(),
        last: None,
    };
    // The terminal is restored when `interact` returns.
    let result = interact(session, &mut out).await;
    let _ = out.flush().await;
    match result {
        Ok(Ended::Shell(end)) => {
            if a.verbose {
                eprintln!("* session {} ended: {:?}", end.session_id, end.status);
            }
            Ok(end.status.exit_code())
        }
        Ok(Ended::Signal(sig)) => {
            // As ssh's "Killed by signal N." (no one reads a hung-up terminal).
            if sig != libc::SIGHUP {
                eprintln!(
                    "{}hearth shell: killed by signal {sig}",
                    newline_after(out.last)
                );
            }
            Ok(128 + sig)
        }
        Err(e) => {
            report(&e, out.last);
            Ok(FAILURE_EXIT_CODE)
        }
    }
}

/// Print a failure on stderr, on a line of its own.
fn report(e: &ShellError, last_output: Option<u8>) {
    let newline = newline_after(last_output);
    match e {
        ShellError::Ended { .. } => eprintln!("{newline}{e}"),
        _ => eprintln!("{newline}hearth shell: {}", error_chain(e)),
    }
}

/// A newline when the output so far ends mid-line (so a note that follows
/// starts a line of its own).
fn newline_after(last_output: Option<u8>) -> &'static str {
    if last_output.is_some_and(|b| b != b'\n') {
        "\n"
    } else {
        ""
    }
}

/// How an interactive session ended without an error.
enum Ended {
    Shell(SessionEnd),
    /// `hearth shell` got this signal.
    Signal(i32),
}

/// Run the session on this process's terminal: raw mode and the window
/// size when standard input is a terminal; until the session ends or
/// SIGHUP, SIGTERM or SIGINT arrives.
async fn interact<S>(
    session: Session<S>,
    out: &mut LastByte<tokio::io::Stdout>,
) -> Result<Ended, ShellError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::signal::unix::{signal, SignalKind};
    let on = |k: SignalKind| signal(k).map_err(ShellError::Terminal);
    let (mut hup, mut term, mut int) = (
        on(SignalKind::hangup())?,
        on(SignalKind::terminate())?,
        on(SignalKind::interrupt())?,
    );
    let tty = io::stdin().is_terminal();
    let (raw, initial, resize): (_, _, BoxStream<'static, TermSize>) = if tty {
        let winch = on(SignalKind::window_change())?;
        let raw = RawMode::enter(STDIN_FD).map_err(ShellError::Terminal)?;
        (Some(raw), term_size(STDIN_FD), window_sizes(winch).boxed())
    } else {
        (None, None, futures_util::stream::pending().boxed())
    };
    let input = stdin_reader().map_err(ShellError::Terminal)?;
    let ended = tokio::select! {
        r = session.run(input, &mut *out, initial, resize) => r.map(Ended::Shell),
        _ = hup.recv() => Ok(Ended::Signal(libc::SIGHUP)),
        _ = term.recv() => Ok(Ended::Signal(libc::SIGTERM)),
        _ = int.recv() => Ok(Ended::Signal(libc::SIGINT)),
    };
    drop(raw);
    ended
}

/// The terminal's size at each SIGWINCH.
fn window_sizes(winch: tokio::signal::unix::Signal) -> impl Stream<Item = TermSize> {
    futures_util::stream::unfold(winch, |mut s| async move {
        s.recv().await?;
        Some((term_size(STDIN_FD), s))
    })
    .filter_map(|s| async move { s })
}

/// A terminal's size (TIOCGWINSZ); `None` when `fd` is no terminal or
/// reports no size.
pub fn term_size(fd: RawFd) -> Option<TermSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points to a live, writable `winsize` for the duration of the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some(TermSize {
        cols: ws.ws_col,
        rows: ws.ws_row,
    })
}

fn get_attr(fd: RawFd) -> io::Result<libc::termios> {
    let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr writes one `termios` through the pointer, which
    // points to writable memory of that size.
    if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tcgetattr succeeded, so it initialised the whole struct.
    Ok(unsafe { t.assume_init() })
}

fn set_attr(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: tcsetattr only reads the `termios` the reference points to.
    if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal settings to restore when a panic happens in raw mode
/// (the panic hook runs before unwinding, so the message prints on a sane
/// terminal).
static RAW_TERMINAL: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// A terminal in raw mode (`cfmakeraw`); dropping it restores the settings
/// it had, on every path out (errors, returns, unwinding panics).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Put terminal `fd` in raw mode.
    pub fn enter(fd: RawFd) -> io::Result<RawMode> {
        let saved = get_attr(fd)?;
        let mut raw = saved;
        // SAFETY: cfmakeraw only changes the flags of the `termios` the
        // pointer points to, a live local.
        unsafe { libc::cfmakeraw(&mut raw) };
        *RAW_TERMINAL.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, saved));
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let saved = RAW_TERMINAL.lock().map(|g| *g).unwrap_or(None);
                if let Some((fd, t)) = saved {
                    let _ = set_attr(fd, &t);
                }
                previous(info);
            }));
        });
        if let Err(e) = set_attr(fd, &raw) {
            *RAW_TERMINAL.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(e);
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = set_attr(self.fd, &self.saved);
        let mut g = RAW_TERMINAL.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some_and(|(fd, _)| fd == self.fd) {
            *g = None;
        }
    }
}

/// Standard input as an [`AsyncRead`], read on a thread of its own (see
/// the module's doc).
fn stdin_reader() -> io::Result<ChannelReader> {
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("hearth-shell-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = vec![0u8; INPUT_CHUNK_BYTES];
            loop {
                let sent = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => tx.blocking_send(Ok(buf[..n].to_vec())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        })?;
    Ok(ChannelReader {
        rx,
        pending: Vec::new(),
        at: 0,
    })
}

/// Reads what a channel carries; its end is EOF.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    at: usize,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at >= this.pending.len() {
            match ready!(this.rx.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(v)) => {
                    this.pending = v;
                    this.at = 0;
                }
            }
        }
        let n = buf.remaining().min(this.pending.len() - this.at);
        buf.put_slice(&this.pending[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// A writer that remembers the last byte written (a note that follows on
/// the terminal starts a line of its own when it was no newline).
struct LastByte<W> {
    inner: W,
    last: Option<u8>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LastByte<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.last = Some(buf[n - 1]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Arc;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::handshake::server::{
        Request as ServerRequest, Response as ServerResponse,
    };

    const TOKEN: &str = "hv1.abc.def";

    fn target() -> Target {
        Target::parse("mvm-a.localhost:4443", true).unwrap()
    }

    fn fast() -> SessionOptions {
        SessionOptions {
            start_timeout: Duration::from_secs(5),
            exit_grace: Duration::from_millis(200),
        }
    }

    /// A client upgraded with [`handshake`] over an in-memory pipe, the
    /// server's end, and the upgrade request's headers as the server saw
    /// them (`:path` holds the request target).
    // tungstenite's server callback fixes its error type.
    #[allow(clippy::result_large_err)]
    async fn connected() -> (
        WebSocketStream<DuplexStream>,
        WebSocketStream<DuplexStream>,
        Vec<(String, String)>,
    ) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = seen.clone();
        let server = tokio::spawn(async move {
            tokio_tungstenite::accept_hdr_async(
                s,
                move |req: &ServerRequest, mut resp: ServerResponse| {
                    let mut seen = seen_by_server.lock().unwrap();
                    seen.push((":path".to_string(), req.uri().to_string()));
                    for (k, v) in req.headers() {
                        seen.push((k.to_string(), v.to_str().unwrap().to_string()));
                    }
                    resp.headers_mut().insert(
                        SEC_WEBSOCKET_PROTOCOL,
                        HeaderValue::from_static(SUBPROTOCOL),
                    );
                    Ok(resp)
                },
            )
            .await
            .unwrap()
        });
        let client = handshake(c, &target(), true, TOKEN, "127.0.0.1:4443")
            .await
            .unwrap();
        let server = server.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (client, server, seen)
    }

    async fn send_text(server: &mut WebSocketStream<DuplexStream>, v: serde_json::Value) {
        server.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn init(server: &mut WebSocketStream<DuplexStream>) {
        send_text(
            server,
            serde_json::json!({"type": "session_init", "session_id": "5f0c-uuid"}),
        )
        .await;
    }

    async fn close(server: &mut WebSocketStream<DuplexStream>, code: u16, reason: &str) {
        server
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            })))
            .await
            .unwrap();
    }

    /// The next data frame the server receives (pings and pongs skipped).
    async fn next_frame(server: &mut WebSocketStream<DuplexStream>) -> Message {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), server.next())
                .await
                .expect("the client sent nothing")
                .expect("the client hung up")
                .unwrap();
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                return m;
            }
        }
    }

    fn json_of(m: &Message) -> serde_json::Value {
        match m {
            Message::Text(t) => serde_json::from_str(t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// A session from `session_init` to its end, as `hearth shell` runs one
    /// (between the two steps it only sets up the terminal).
    async fn run_session<S, R, W, Z>(
        ws: WebSocketStream<S>,
        opts: &SessionOptions,
        input: R,
        output: W,
        initial_size: Option<TermSize>,
        resize: Z,
    ) -> Result<SessionEnd, ShellError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        R: AsyncRead,
        W: AsyncWrite,
        Z: Stream<Item = TermSize>,
    {
        start_session(ws, opts)
            .await?
            .run(input, output, initial_size, resize)
            .await
    }

    fn no_resizes() -> impl Stream<Item = TermSize> {
        futures_util::stream::pending()
    }

    #[tokio::test]
    async fn the_upgrade_offers_the_marker_and_the_token_and_no_port() {
        let (_c, _s, seen) = connected().await;
        let get = |n: &str| -> Vec<&str> {
            seen.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get(":path"), ["/"]);
        assert_eq!(get("host"), ["mvm-a.localhost:4443"]);
        assert_eq!(
            get("sec-websocket-protocol"),
            ["lambda-microvms, lambda-microvms.authentication.hv1.abc.def"]
        );
        assert!(
            !seen
                .iter()
                .any(|(k, v)| k.contains("port") || v.contains(".port.")),
            "{seen:?}"
        );
        assert!(upgrade_request(&target(), true, "a b").is_err());
        assert!(upgrade_request(&target(), true, "a,b").is_err());
        assert!(upgrade_request(&target(), true, "").is_err());
        assert_eq!(
            upgrade_request(&target(), false, TOKEN).unwrap().uri(),
            "ws://mvm-a.localhost:4443/"
        );
    }

    #[tokio::test]
    async fn a_refused_upgrade_shows_the_proxys_message() {
        let (c, mut s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client hung up mid-request");
                head.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"message":"this microVM has no shell ingress connector"}"#;
            let answer = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            s
        });
        let e = handshake(c, &target(), true, TOKEN, "127.0.0.1:4443")
            .await
            .err()
            .unwrap();
        let _s = server.await.unwrap();
        match &e {
            ShellError::Refused { status, message } => {
                assert_eq!(*status, 403);
                assert_eq!(message, "this microVM has no shell ingress connector");
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn keystrokes_resizes_and_output_flow_and_the_exit_code_ends_the_session() {
        let (client, mut server, _) = connected().await;
        let (mut keys, input) = tokio::io::duplex(1024);
        let (output, mut screen) = tokio::io::duplex(1024);
        let (sizes, size_rx) = mpsc::channel(4);
        let resize = futures_util::stream::unfold(size_rx, |mut rx| async move {
            rx.recv().await.map(|s| (s, rx))
        });
        init(&mut server).await;
        let session = tokio::spawn(async move {
            run_session(
                client,
                &fast(),
                input,
                output,
                Some(TermSize {
                    cols: 100,
                    rows: 30,
                }),
                resize,
            )
            .await
        });
        // The initial size comes right after session_init.
        assert_eq!(
            json_of(&next_frame(&mut server).await),
            serde_json::json!({"type": "resize", "cols": 100, "rows": 30})
        );
        keys.write_all(b"ls\r").await.unwrap();
        assert_eq!(
            next_frame(&mut server).await,
            Message::binary(b"ls\r".to_vec())
        );
        // The same size again is not resent; a new one is.
        sizes
            .send(TermSize {
                cols: 100,
                rows: 30,
            })
            .await
            .unwrap();
        sizes
            .send(TermSize {
                cols: 120,
                rows: 40,
            })
            .await
            .unwrap();
        assert_eq!(
            json_of(&next_frame(&mut server).await),
            serde_json::json!({"type": "resize", "cols": 120, "rows": 40})
        );
        // Output reaches the writer while the session runs (not at its end).
        server
            .send(Message::binary(b"file1\r\n$ ".to_vec()))
            .await
            .unwrap();
        let mut got = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), screen.read_exact(&mut got))
            .await
            .expect("the output was held back")
            .unwrap();
        assert_eq!(&got, b"file1\r\n$ ");
        send_text(
            &mut server,
            serde_json::json!({"type": "exit", "exit_code": 3}),
        )
        .await;
        close(&mut server, 1000, "shell exited").await;
        let end = session.await.unwrap().unwrap();
        assert_eq!(
            end,
            SessionEnd {
                session_id: "5f0c-uuid".into(),
                status: ShellStatus::Exited(3)
            }
        );
        assert_eq!(end.status.exit_code(), 3);
        // The client answered the close.
        assert!(matches!(next_frame(&mut server).await, Message::Close(_)));
    }

    #[tokio::test]
    async fn piped_input_sends_no_size_and_output_is_read_past_its_end() {
        let (client, mut server, _) = connected().await;
        init(&mut server).await;
        let mut out = Vec::new();
        let input: &[u8] = b"echo hi; exit 0\n";
        let opts = fast();
        let run = run_session(client, &opts, input, &mut out, None, no_resizes());
        let serve = async {
            // Keystrokes first: no resize without a terminal.
            assert_eq!(
                next_frame(&mut server).await,
                Message::binary(b"echo hi; exit 0\n".to_vec())
            );
            // The input has ended; output still arrives.
            tokio::time::sleep(Duration::from_millis(50)).await;
            server
                .send(Message::binary(b"hi\r\n".to_vec()))
                .await
                .unwrap();
            send_text(
                &mut server,
                serde_json::json!({"type": "exit", "exit_code": 0}),
            )
            .await;
            close(&mut server, 1000, "shell exited").await;
        };
        let (end, ()) = tokio::join!(run, serve);
        assert_eq!(end.unwrap().status, ShellStatus::Exited(0));
        assert_eq!(out, b"hi\r\n");
    }

    #[tokio::test]
    async fn a_signal_exit_is_128_plus_the_signal_even_without_a_close() {
        let (client, mut server, _) = connected().await;
        init(&mut server).await;
        send_text(
            &mut server,
            serde_json::json!({"type": "exit", "signal": 9}),
        )
        .await;
        // No close follows: the exit frame alone ends the session after the grace.
        let end = run_session(
            client,
            &fast(),
            tokio::io::empty(),
            Vec::new(),
            None,
            no_resizes(),
        )
        .await
        .unwrap();
        assert_eq!(end.status, ShellStatus::Signaled(9));
        assert_eq!(end.status.exit_code(), 137);
        assert_eq!(ShellStatus::Exited(255).exit_code(), 255);
        assert_eq!(ShellStatus::Signaled(15).exit_code(), 143);
        drop(server);
    }

    #[tokio::test]
    async fn a_platform_close_ends_the_session_with_its_reason() {
        let (client, mut server, _) = connected().await;
        init(&mut server).await;
        server.send(Message::binary(b"$ ".to_vec())).await.unwrap();
        close(&mut server, 1001, "microVM suspended (idle)").await;
        let mut out = Vec::new();
        let e = run_session(
            client,
            &fast(),
            tokio::io::empty(),
            &mut out,
            None,
            no_resizes(),
        )
        .await
        .unwrap_err();
        match &e {
            ShellError::Ended { code, reason } => {
                assert_eq!((*code, reason.as_str()), (1001, "microVM suspended (idle)"))
            }
            other => panic!("expected Ended, got {other:?}"),
        }
        assert_eq!(e.to_string(), "shell ended: microVM suspended (idle)");
        assert_eq!(out, b"$ ");
    }

    #[tokio::test]
    async fn a_server_without_session_init_times_out_clearly() {
        let (client, _server, _) = connected().await;
        let opts = SessionOptions {
            start_timeout: Duration::from_millis(200),
            ..fast()
        };
        let started = std::time::Instant::now();
        let e = start_session(client, &opts).await.err().unwrap();
        assert!(
            matches!(e, ShellError::StartTimeout { .. }),
            "expected StartTimeout, got {e:?}"
        );
        assert!(e.to_string().contains("session_init"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_close_before_session_init_or_a_dropped_connection_are_errors() {
        let (client, mut server, _) = connected().await;
        close(&mut server, 1011, "could not start the shell").await;
        let e = start_session(client, &fast()).await.err().unwrap();
        assert!(
            matches!(&e, ShellError::NotStarted { code: 1011, reason } if reason == "could not start the shell"),
            "{e:?}"
        );

        let (client, mut server, _) = connected().await;
        init(&mut server).await;
        let session = start_session(client, &fast()).await.unwrap();
        assert_eq!(session.session_id, "5f0c-uuid");
        drop(server);
        let e = session
            .run(tokio::io::empty(), Vec::new(), None, no_resizes())
            .await
            .unwrap_err();
        assert!(matches!(e, ShellError::ConnectionLost { .. }), "{e:?}");

        let (client, mut server, _) = connected().await;
        send_text(&mut server, serde_json::json!({"type": "hello"})).await;
        let e = start_session(client, &fast()).await.err().unwrap();
        assert!(matches!(e, ShellError::Protocol(_)), "{e:?}");
    }

    /// A pseudo-terminal: (master, slave).
    fn pty() -> (OwnedFd, std::fs::File) {
        // SAFETY: posix_openpt takes flags only; the result is checked.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        assert!(m >= 0, "posix_openpt: {}", io::Error::last_os_error());
        // SAFETY: `m` is an open descriptor nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: grantpt and unlockpt take an open master descriptor.
        assert_eq!(unsafe { libc::grantpt(m) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::unlockpt(m) }, 0);
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes at most `name.len()` bytes, NUL included,
        // into `name`, which is that long.
        let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
        assert_eq!(r, 0);
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.to_str().unwrap())
            .unwrap();
        (master, slave)
    }

    #[test]
    fn raw_mode_is_restored_when_dropped_and_on_panic_and_the_size_is_read() {
        let (_master, slave) = pty();
        let fd = slave.as_raw_fd();
        let before = get_attr(fd).unwrap();
        assert_ne!(before.c_lflag & (libc::ICANON | libc::ECHO), 0);
        {
            let _raw = RawMode::enter(fd).unwrap();
            let raw = get_attr(fd).unwrap();
            assert_eq!(raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        }
        let after = get_attr(fd).unwrap();
        assert_eq!(
            (after.c_lflag, after.c_iflag, after.c_oflag),
            (before.c_lflag, before.c_iflag, before.c_oflag)
        );
        let r = std::panic::catch_unwind(|| {
            let _raw = RawMode::enter(fd).unwrap();
            panic!("a panic in raw mode (expected by this test)");
        });
        assert!(r.is_err());
        assert_eq!(get_attr(fd).unwrap().c_lflag, before.c_lflag);

        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which
        // points to a live local.
        let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
        assert_eq!(r, 0);
        assert_eq!(
            term_size(fd),
            Some(TermSize {
                cols: 101,
                rows: 33
            })
        );
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(term_size(r.as_raw_fd()), None);
    }

    #[tokio::test]
    async fn the_channel_reader_hands_over_chunks_in_order_then_eof() {
        let (tx, rx) = mpsc::channel(4);
        let mut r = ChannelReader {
            rx,
            pending: Vec::new(),
            at: 0,
        };
        tx.send(Ok(b"abc".to_vec())).await.unwrap();
        tx.send(Ok(b"defgh".to_vec())).await.unwrap();
        drop(tx);
        let mut small = [0u8; 2];
        assert_eq!(r.read(&mut small).await.unwrap(), 2);
        assert_eq!(&small, b"ab");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"cdefgh");
    }

    #[test]
    fn shell_takes_minutes_and_curls_transport_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            cmd: super::super::MicrovmCmd,
        }
        let parse = |args: &[&str]| {
            T::try_parse_from(std::iter::once("hearth").chain(args.iter().copied())).map(|t| t.cmd)
        };
        let Ok(super::super::MicrovmCmd::Shell(a)) = parse(&["shell", "mvm-a"]) else {
            panic!("not shell")
        };
        assert_eq!(
            (a.id.as_str(), a.minutes, a.proxy.plain_http),
            ("mvm-a", 60, false)
        );
        let Ok(super::super::MicrovmCmd::Shell(a)) = parse(&[
            "shell",
            "mvm-a",
            "--minutes",
            "5",
            "--plain-http",
            "--connect-to",
            "127.0.0.1:9",
        ]) else {
            panic!("not shell")
        };
        assert_eq!(a.minutes, 5);
        assert!(a.proxy.plain_http);
        assert_eq!(a.proxy.connect_to.as_deref(), Some("127.0.0.1:9"));
        for bad in [
            &["shell"][..],
            &["shell", "mvm-a", "--minutes", "0"],
            &["shell", "mvm-a", "--minutes", "61"],
            &["shell", "mvm-a", "--plain-http", "--ca", "x.pem"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
