//! The interactive shell over WebSocket: a shell-token request from its
//! checks to the end of its session.
//!
//! Owns the shell's side of the wire format. A shell is a WebSocket upgrade
//! (HTTP/1.1; the proxy does not speak WebSocket over HTTP/2) authenticated
//! by a shell token, with no port (neither a `lambda-microvms.port.<port>`
//! subprotocol nor `X-aws-proxy-port`). Once open:
//! - the server's first frame is text
//!   `{"type":"session_init","session_id":"<id>"}`;
//! - binary frames carry terminal bytes both ways;
//! - the client sends text `{"type":"resize","cols":C,"rows":R}` (1..=1000
//!   each) to resize; other text frames are ignored;
//! - when the shell ends by itself the server sends text
//!   `{"type":"exit","exit_code":N}` (or `"signal":N`) and closes with 1000
//!   `shell exited`; when the platform ends it (microVM suspended or
//!   terminated, agent failure) the server closes with 1001 and the reason;
//!   when the proxy shuts down, 1001 `the proxy is shutting down`;
//! - a client close or a dropped connection drops [`Shell::input`], which
//!   hangs the terminal up.
//!
//! Tasks: [`open`] runs on the request's task (see [`crate::forward`]): it
//! checks the request, the rate and the ingress connectors, calls
//! [`Upstreams::open_shell`](crate::Upstreams::open_shell) before answering
//! `101` (so its failures are ordinary HTTP statuses), and spawns the pump
//! with [`spawn_guarded`]: that task waits for the upgrade, then runs
//! [`pump`], which moves frames between the client and the [`Shell`]
//! channels until the session ends. It holds the connection's slot and ends
//! when the connection goes idle or at hard stop, like any WebSocket.
//! Nothing is buffered without bound: the shell's channels are bounded,
//! client frames are read only as fast as the shell takes input, shell
//! output is read only as fast as the client's socket takes frames, and
//! reading from the client goes on while a write waits (so pings, closes
//! and keystrokes still flow).

use crate::admit::{self, Admit, Opening};
use crate::body::{empty, ProxyBody, Reject};
use crate::ctx::{spawn_guarded, stopped, ConnCtx, Shared, Stop};
use crate::headers::{Credentials, WS_MARKER};
use crate::io::Tap;
use crate::{Shell, ShellInput, ShellOutput, TermSize};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hearth_token::Claims;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The largest message (and frame) a client may send.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Shell output is sent in binary frames of at most this.
const OUTPUT_FRAME_BYTES: usize = 64 * 1024;
/// Frames waiting to be written to the client, at most (tungstenite holds
/// about one frame above its 128 KiB write buffer when the client does not
/// read; this only catches a bug).
const MAX_WRITE_BUFFER_BYTES: usize = 4 << 20;
/// The largest terminal dimension a resize may ask for.
const MAX_TERM_CELLS: u64 = 1000;
/// A close frame's reason is at most this many bytes (125 minus the code).
const MAX_CLOSE_REASON_BYTES: usize = 123;
/// How long the client gets to answer the server's close frame, and the
/// server's answer to its own close frame gets to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

const SHELL_EXITED: &str = "shell exited";
const SHELL_GONE: &str = "the shell session ended";
const PROXY_STOPPING: &str = "the proxy is shutting down";

/// Opens a shell for a request that carries a shell token: refuses
/// anything but a WebSocket upgrade without a port (403), checks the rate
/// and the ingress connectors, opens the shell and answers `101`; the pump
/// runs on a task of its own (see the module docs).
pub(crate) async fn open(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    websocket: bool,
    creds: &Credentials,
    claims: &Claims,
    microvm_id: &str,
) -> Result<Response<ProxyBody>, Reject> {
    let forbidden = |m: &str| Reject::new(StatusCode::FORBIDDEN, m);
    if !websocket {
        return Err(forbidden(
            "a shell token opens only the shell (a WebSocket without a port)",
        ));
    }
    if creds.port.is_some() {
        return Err(forbidden(
            "a shell token opens only the shell (a WebSocket without a port): drop the \
             lambda-microvms.port subprotocol and X-aws-proxy-port, or use an HTTP token",
        ));
    }
    let accept = accept_key(&req)?;
    admit::rate_limit(shared, claims, microvm_id)?;
    admit::require_ingress(shared, claims, microvm_id, Admit::Shell).await?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let shell = shared
        .upstreams
        .open_shell(&claims.account_id, &claims.microvm_id, TermSize::default())
        .await
        .map_err(|e| admit::open_reject(e, microvm_id, Opening::Shell))?;
    (shell.activity)();
    tracing::info!(
        peer = %ctx.peer,
        microvm_id = %claims.microvm_id,
        session_id = %shell.session_id,
        "shell session opened"
    );

    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    // Never the authentication value: only the marker, when offered (a
    // client that offered none must not get one back).
    if creds.offered_marker {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_MARKER),
        );
    }

    let draining = stopped(shared.stop.subscribe(), Stop::Draining);
    let peer = ctx.peer;
    spawn_guarded(shared, ctx, async move {
        match client_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config()),
                )
                .await;
                pump(ws, shell, draining).await;
            }
            Err(e) => tracing::debug!(
                %peer,
                session_id = %shell.session_id,
                error = %e,
                "shell WebSocket upgrade did not complete; shell hung up"
            ),
        }
    });
    Ok(resp)
}

/// The `Sec-WebSocket-Accept` value for the request's key; 400 when the
/// handshake is not one this server speaks.
fn accept_key(req: &Request<Incoming>) -> Result<HeaderValue, Reject> {
    let bad = |m: &str| Reject::new(StatusCode::BAD_REQUEST, m);
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
    if !version_ok {
        return Err(bad(
            "the shell speaks WebSocket version 13 only (Sec-WebSocket-Version: 13)",
        ));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("a WebSocket upgrade needs a Sec-WebSocket-Key header"))?;
    HeaderValue::from_str(&derive_accept_key(key))
        .map_err(|_| bad("the Sec-WebSocket-Key header is not usable"))
}

/// The WebSocket settings of a shell: bounded messages and write buffer.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
}

/// Why a pump stopped moving frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The client's connection failed or ended without a close frame.
    ClientGone,
    /// The shell ended (or was ended by the platform) and the server's close
    /// frame went out.
    ShellEnded,
    /// The proxy began shutting down.
    Draining,
}

/// Why a frame could not go to the client.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("could not send the {what} frame to the client: {source}")]
    Frame {
        what: &'static str,
        #[source]
        source: WsError,
    },
}

/// Moves frames between the client's WebSocket and `shell` until the
/// session ends (see the module docs for the frames), then finishes the
/// close handshake (bounded by [`CLOSE_WAIT`]) and closes the connection.
/// `shell.input` is dropped as soon as the client side ends.
async fn pump<S, D>(ws: WebSocketStream<S>, shell: Shell, draining: D)
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Future<Output = ()>,
{
    let Shell {
        session_id,
        input,
        mut output,
        activity,
    } = shell;
    let (mut sink, mut stream) = ws.split();
    let init = serde_json::json!({ "type": "session_init", "session_id": session_id });
    if let Err(e) = send(&mut sink, Message::text(init.to_string()), "session_init").await {
        tracing::debug!(%session_id, error = %e, "shell session ended before it began");
        return;
    }
    let end = {
        // `input` moves into the inbound half: whatever ends the loop, the
        // shell's input is dropped (the terminal hangs up) right here.
        let inbound = client_to_shell(&mut stream, input, &activity);
        let outbound = shell_to_client(&mut sink, &mut output, &activity);
        tokio::pin!(draining);
        tokio::select! {
            end = inbound => end,
            end = outbound => end,
            () = &mut draining => End::Draining,
        }
    };
    drop(output);
    tracing::info!(%session_id, end = ?end, "shell session ended");
    match end {
        End::ClientGone => return,
        // The close reply is queued; this sends it.
        End::ClientClosed => {
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
        }
        End::Draining => {
            let frame = close_frame(CloseCode::Away, PROXY_STOPPING);
            if send(&mut sink, frame, "close").await.is_ok() {
                await_close_reply(&mut stream).await;
            }
        }
        End::ShellEnded => await_close_reply(&mut stream).await,
    }
    // The server closes the TCP connection first (RFC 6455), after a TLS
    // close_notify when there is TLS.
    if let Ok(mut ws) = stream.reunite(sink) {
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.get_mut().shutdown()).await;
    }
}

/// Reads (and drops) client frames until the client answers the server's
/// close frame, for at most [`CLOSE_WAIT`].
async fn await_close_reply<St>(stream: &mut St)
where
    St: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Client frames into the shell: binary frames as keystrokes, resizes;
/// pings are answered by tungstenite as they are read. Ends at the client's
/// close frame or its connection's end. When the shell stops taking input
/// the client is still read (its frames dropped) until the shell's own end
/// comes out of [`shell_to_client`].
async fn client_to_shell<St>(
    stream: &mut St,
    input: tokio::sync::mpsc::Sender<ShellInput>,
    activity: &Tap,
) -> End
where
    St: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut input = Some(input);
    loop {
        let msg = match stream.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "shell client's WebSocket failed");
                return End::ClientGone;
            }
            None => return End::ClientGone,
        };
        let to_shell = match msg {
            Message::Binary(bytes) => {
                activity();
                (!bytes.is_empty()).then(|| ShellInput::Data(bytes.to_vec()))
            }
            Message::Text(text) => {
                activity();
                match parse_client_text(text.as_str()) {
                    Ok(ClientText::Resize(size)) => Some(ShellInput::Resize(size)),
                    Ok(ClientText::SessionInit) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "ignored a text frame from a shell client");
                        None
                    }
                }
            }
            // Keepalives hold the connection open (its bytes cross the
            // client socket) but are not use: a client that only pings
            // lets the microVM go idle, and its shell closes with it.
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => return End::ClientClosed,
            Message::Frame(_) => None,
        };
        if let (Some(item), Some(tx)) = (to_shell, &input) {
            if tx.send(item).await.is_err() {
                // The shell is ending; its last word is on the way out.
                input = None;
            }
        }
    }
}

/// Shell output to the client: data as binary frames (at most
/// [`OUTPUT_FRAME_BYTES`] each), then the exit frame and close 1000, or
/// close 1001 with the platform's reason.
async fn shell_to_client<Si>(
    sink: &mut Si,
    output: &mut tokio::sync::mpsc::Receiver<ShellOutput>,
    activity: &Tap,
) -> End
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let sent = async {
        loop {
            let Some(out) = output.recv().await else {
                // The shell's side went away without saying why.
                send(sink, close_frame(CloseCode::Away, SHELL_GONE), "close").await?;
                return Ok::<(), SendError>(());
            };
            match out {
                ShellOutput::Data(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    activity();
                    let data = Bytes::from(data);
                    let mut at = 0;
                    while at < data.len() {
                        let to = data.len().min(at + OUTPUT_FRAME_BYTES);
                        send(sink, Message::Binary(data.slice(at..to)), "output").await?;
                        at = to;
                    }
                }
                ShellOutput::Exited { code, signal } => {
                    send(sink, Message::text(exit_text(code, signal)), "exit").await?;
                    send(sink, close_frame(CloseCode::Normal, SHELL_EXITED), "close").await?;
                    return Ok(());
                }
                ShellOutput::Closed { reason } => {
                    send(sink, close_frame(CloseCode::Away, &reason), "close").await?;
                    return Ok(());
                }
            }
        }
    };
    match sent.await {
        Ok(()) => End::ShellEnded,
        Err(e) => {
            tracing::debug!(error = %e, "shell client stopped taking frames");
            End::ClientGone
        }
    }
}

async fn send<Si>(sink: &mut Si, msg: Message, what: &'static str) -> Result<(), SendError>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    sink.send(msg)
        .await
        .map_err(|source| SendError::Frame { what, source })
}

/// `{"type":"exit","exit_code":N}`, or with `"signal":N` when a signal
/// ended the shell (both when both are known, neither when neither is).
fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    let mut v = serde_json::json!({ "type": "exit" });
    if let Some(code) = code {
        v["exit_code"] = code.into();
    }
    if let Some(signal) = signal {
        v["signal"] = signal.into();
    }
    v.to_string()
}

fn close_frame(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: truncate_reason(reason).into(),
    }))
}

/// `reason` cut to [`MAX_CLOSE_REASON_BYTES`] on a character boundary.
fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A text frame from the client that means something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientText {
    Resize(TermSize),
    /// The client echoed `session_init`; nothing to do.
    SessionInit,
}

/// Why a text frame from the client was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TextFrameError {
    #[error("not a JSON object with a string \"type\"")]
    NotAControlMessage,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("resize needs integer cols and rows from 1 to {MAX_TERM_CELLS}, got cols {cols} and rows {rows}")]
    BadSize { cols: String, rows: String },
}

fn parse_client_text(text: &str) -> Result<ClientText, TextFrameError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|_| TextFrameError::NotAControlMessage)?;
    let kind = v
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or(TextFrameError::NotAControlMessage)?;
    match kind {
        "resize" => {
            let cells = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_u64)
                    .filter(|n| (1..=MAX_TERM_CELLS).contains(n))
                    .and_then(|n| u16::try_from(n).ok())
            };
            match (cells("cols"), cells("rows")) {
                (Some(cols), Some(rows)) => Ok(ClientText::Resize(TermSize { cols, rows })),
                _ => {
                    let shown = |k: &str| {
                        let mut s = v.get(k).map_or("none".into(), ToString::to_string);
                        s.truncate(32);
                        s
                    };
                    Err(TextFrameError::BadSize {
                        cols: shown("cols"),
                        rows: shown("rows"),
                    })
                }
            }
        }
        "session_init" => Ok(ClientText::SessionInit),
        other => Err(TextFrameError::UnknownType(
            other.chars().take(32).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_frames_are_parsed_and_checked() {
        assert_eq!(
            parse_client_text(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(ClientText::Resize(TermSize {
                cols: 120,
                rows: 40
            }))
        );
        assert_eq!(
            parse_client_text(r#"{"rows":1000,"type":"resize","cols":1}"#),
            Ok(ClientText::Resize(TermSize {
                cols: 1,
                rows: 1000
            }))
        );
        for bad in [
            r#"{"type":"resize","cols":0,"rows":40}"#,
            r#"{"type":"resize","cols":1001,"rows":40}"#,
            r#"{"type":"resize","cols":80}"#,
            r#"{"type":"resize","cols":-1,"rows":40}"#,
            r#"{"type":"resize","cols":80.5,"rows":40}"#,
            r#"{"type":"resize","cols":"80","rows":"40"}"#,
            r#"{"type":"resize","cols":70000,"rows":40}"#,
        ] {
            assert!(
                matches!(parse_client_text(bad), Err(TextFrameError::BadSize { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_text_frames_are_echoes_or_ignored() {
        assert_eq!(
            parse_client_text(r#"{"type":"session_init","session_id":"x"}"#),
            Ok(ClientText::SessionInit)
        );
        assert_eq!(
            parse_client_text(r#"{"type":"bell"}"#),
            Err(TextFrameError::UnknownType("bell".into()))
        );
        for bad in ["ls -l\n", "", "[]", r#"{"type":3}"#, "{\"type\":\"resize\""] {
            assert_eq!(
                parse_client_text(bad),
                Err(TextFrameError::NotAControlMessage),
                "{bad}"
            );
        }
    }

    #[test]
    fn exit_text_names_the_code_or_the_signal() {
        let parse = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
        assert_eq!(
            parse(exit_text(Some(3), None)),
            serde_json::json!({"type":"exit","exit_code":3})
        );
        assert_eq!(
            parse(exit_text(None, Some(9))),
            serde_json::json!({"type":"exit","signal":9})
        );
        assert_eq!(
            parse(exit_text(None, None)),
            serde_json::json!({"type":"exit"})
        );
    }

    #[test]
    fn close_reasons_are_cut_to_123_bytes_on_a_char_boundary() {
        assert_eq!(truncate_reason("microVM suspended"), "microVM suspended");
        let ascii = "x".repeat(200);
        assert_eq!(truncate_reason(&ascii).len(), 123);
        // 'é' is two bytes: 61 of them are 122 bytes; the 62nd would cross.
        let accents = "é".repeat(100);
        let cut = truncate_reason(&accents);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
        let exact = "y".repeat(123);
        assert_eq!(truncate_reason(&exact), exact);
    }
}
