//! The interactive shell over WebSocket and the ingress connectors, end to
//! end: a real proxy on a real socket, tokio-tungstenite as the client, and
//! fake terminals behind `TestUpstreams::open_shell`.

mod support;

use futures_util::{SinkExt, StreamExt};
use hearth_proxy::{ShellInput, TermSize};
use http::StatusCode;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Ws<S> = WebSocketStream<S>;

/// The subprotocols of a shell: the marker and the token.
fn shell_protocols(token: &str) -> String {
    format!("lambda-microvms, lambda-microvms.authentication.{token}")
}

/// A WebSocket client request for `host` offering `protocols`.
fn ws_request(
    scheme: &str,
    host: &str,
    path: &str,
    protocols: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://{host}{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    req
}

/// Opens a WebSocket over plain TCP (the rig runs with TLS off).
async fn ws_plain(
    rig: &Rig,
    host: &str,
    path: &str,
    protocols: &str,
) -> Result<(Ws<TcpStream>, http::Response<Option<Vec<u8>>>), WsError> {
    let tcp = TcpStream::connect(rig.addr).await.unwrap();
    tokio_tungstenite::client_async(ws_request("ws", host, path, protocols), tcp).await
}

/// Opens a shell on [`VM`] over plain TCP and checks the `101`.
async fn open_shell(rig: &Rig) -> Ws<TcpStream> {
    let token = rig.shell_token(VM);
    let (ws, resp) = ws_plain(rig, &Rig::host(VM), "/", &shell_protocols(&token))
        .await
        .expect("the shell opens");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "lambda-microvms");
    ws
}

/// The next message, within [`PROMPT`].
async fn next<S>(ws: &mut Ws<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_prompt(tokio::time::timeout(PROMPT, ws.next()).await, "a frame")
        .expect("the WebSocket ended")
        .expect("the WebSocket failed")
}

/// Reads binary frames until their bytes end with `want`; any other frame
/// fails the test.
async fn read_output_until<S>(ws: &mut Ws<S>, want: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut got = Vec::new();
    while !got.ends_with(want) {
        match next(ws).await {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => panic!(
                "expected output ending {:?}, got {other:?} after {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

/// The JSON of a text frame.
fn json(msg: Message) -> serde_json::Value {
    match msg {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads the `session_init` frame and returns its session id.
async fn session_init<S>(ws: &mut Ws<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let v = json(next(ws).await);
    assert_eq!(v["type"], "session_init", "{v}");
    v["session_id"].as_str().unwrap().to_string()
}

/// Reads the close frame: its code and reason; then the stream ends.
async fn close_frame<S>(ws: &mut Ws<S>) -> (CloseCode, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = match next(ws).await {
        Message::Close(Some(f)) => f,
        other => panic!("expected a close frame, got {other:?}"),
    };
    let end = assert_prompt(tokio::time::timeout(PROMPT, ws.next()).await, "the end");
    assert!(end.is_none(), "after the close frame: {end:?}");
    (frame.code, frame.reason.as_str().to_string())
}

/// A WebSocket upgrade request as raw HTTP/1.1 (to read a refusal's JSON).
fn upgrade_get(host: &str, protocols: &str, extra: &[(&str, &str)]) -> http::Request<ReqBody> {
    let mut headers = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-protocol", protocols),
    ];
    headers.extend_from_slice(extra);
    get(host, "/", &headers)
}

/// Status and message of one refused request on a fresh plain connection.
async fn refused(rig: &Rig, req: http::Request<ReqBody>) -> (StatusCode, String) {
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let (status, headers, body) = read(s.go(req).await.unwrap()).await;
    assert_ne!(status, StatusCode::SWITCHING_PROTOCOLS, "it was accepted");
    (status, message(&headers, &body))
}

fn shell_refusal(rig: &Rig, microvm: &str) -> http::Request<ReqBody> {
    upgrade_get(
        &Rig::host(microvm),
        &shell_protocols(&rig.shell_token(microvm)),
        &[],
    )
}

fn http_get(rig: &Rig) -> http::Request<ReqBody> {
    get(
        &Rig::host(VM),
        "/whoami",
        &[("x-aws-proxy-auth", &rig.token(VM, &[8080]))],
    )
}

#[tokio::test]
async fn shell_session_starts_with_session_init_then_carries_keystrokes_and_resizes() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.shell_token(VM);
    let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"http/1.1"]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async(
        ws_request("wss", &host, "/", &shell_protocols(&token)),
        tls,
    )
    .await
    .unwrap();
    // The marker comes back, never the token.
    assert_eq!(resp.headers()["sec-websocket-protocol"], "lambda-microvms");
    for (_, v) in resp.headers() {
        assert!(!v.to_str().unwrap_or("").contains(&token[4..30]));
    }
    let shell = rig.upstreams.last_shell();
    assert_eq!(session_init(&mut ws).await, shell.session_id);
    assert_eq!(
        rig.upstreams.shell_opens.lock().unwrap().clone(),
        vec![(ACCOUNT.to_string(), VM.to_string(), TermSize::default())]
    );
    assert!(rig.upstreams.opens.lock().unwrap().is_empty());

    // Keystrokes in binary frames; the echo comes back in binary frames.
    ws.send(Message::binary(b"echo hi".to_vec())).await.unwrap();
    assert_eq!(read_output_until(&mut ws, b"ECHO HI").await, b"ECHO HI");

    // Malformed, out-of-range, unknown and echoed text frames are ignored;
    // a good resize reaches the terminal.
    for ignored in [
        r#"{"type":"resize","cols":0,"rows":40}"#.to_string(),
        r#"{"type":"resize","cols":1001,"rows":40}"#.to_string(),
        r#"{"type":"resize","cols":"120","rows":40}"#.to_string(),
        r#"{"type":"dance"}"#.to_string(),
        "not json".to_string(),
        format!(
            r#"{{"type":"session_init","session_id":"{}"}}"#,
            shell.session_id
        ),
    ] {
        ws.send(Message::text(ignored)).await.unwrap();
    }
    ws.send(Message::text(r#"{"type":"resize","cols":120,"rows":40}"#))
        .await
        .unwrap();
    assert_eq!(
        read_output_until(&mut ws, b"size 120x40\n").await,
        b"size 120x40\n"
    );
    assert_eq!(
        shell.resizes(),
        vec![TermSize {
            cols: 120,
            rows: 40
        }]
    );
    // Pings are answered.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );
    // Everything reached the shell in order, and nothing else did.
    assert_eq!(
        shell.inputs.lock().unwrap().clone(),
        vec![
            ShellInput::Data(b"echo hi".to_vec()),
            ShellInput::Resize(TermSize {
                cols: 120,
                rows: 40
            }),
        ]
    );
}

#[tokio::test]
async fn shell_exit_sends_the_exit_code_then_closes_with_1000() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    ws.send(Message::binary(b"exit 3\n".to_vec()))
        .await
        .unwrap();
    read_output_until(&mut ws, b"EXIT 3\n").await;
    assert_eq!(
        json(next(&mut ws).await),
        serde_json::json!({"type": "exit", "exit_code": 3})
    );
    assert_eq!(
        close_frame(&mut ws).await,
        (CloseCode::Normal, "shell exited".to_string())
    );
    rig.upstreams.last_shell().wait_input_closed().await;

    // A signal is named as one.
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    ws.send(Message::binary(b"kill 9\n".to_vec()))
        .await
        .unwrap();
    read_output_until(&mut ws, b"KILL 9\n").await;
    assert_eq!(
        json(next(&mut ws).await),
        serde_json::json!({"type": "exit", "signal": 9})
    );
    assert_eq!(
        close_frame(&mut ws).await,
        (CloseCode::Normal, "shell exited".to_string())
    );
}

#[tokio::test]
async fn platform_close_ends_the_session_with_1001_and_the_reason() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    let shell = rig.upstreams.last_shell();
    let reason = format!("microVM {VM} was suspended");
    shell.close.send(reason.clone()).await.unwrap();
    assert_eq!(close_frame(&mut ws).await, (CloseCode::Away, reason));
    shell.wait_input_closed().await;

    // A reason too long for a close frame is cut on a character boundary.
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    let long = "é".repeat(100);
    rig.upstreams.last_shell().close.send(long).await.unwrap();
    let (code, reason) = close_frame(&mut ws).await;
    assert_eq!(code, CloseCode::Away);
    assert_eq!(reason, "é".repeat(61));
}

#[tokio::test]
async fn a_client_that_goes_away_hangs_the_shell_up() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    // Dropped without a close frame.
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    let shell = rig.upstreams.last_shell();
    assert!(!*shell.input_closed.borrow());
    drop(ws);
    shell.wait_input_closed().await;

    // Closed properly: the proxy answers the close frame too.
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    let shell = rig.upstreams.last_shell();
    ws.close(None).await.unwrap();
    let end = assert_prompt(
        tokio::time::timeout(PROMPT, async {
            let mut msgs = vec![];
            while let Some(Ok(msg)) = ws.next().await {
                msgs.push(msg);
            }
            msgs
        })
        .await,
        "the close handshake",
    );
    assert!(end.iter().any(Message::is_close), "no close reply: {end:?}");
    shell.wait_input_closed().await;
}

#[tokio::test]
async fn shell_traffic_counts_as_activity() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    let count = || rig.upstreams.shell_activity.load(Ordering::Relaxed);
    assert!(count() >= 1, "opening the shell is activity");
    for i in 0..3 {
        let before = count();
        ws.send(Message::binary(format!("k{i}").into_bytes()))
            .await
            .unwrap();
        read_output_until(&mut ws, format!("K{i}").as_bytes()).await;
        // The keystroke and its echo.
        assert!(count() >= before + 2, "{} -> {}", before, count());
    }
    // A keepalive is not use.
    let before = count();
    ws.send(Message::Ping(b"keepalive".to_vec().into()))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"keepalive"),
        other => panic!("expected the pong, got {other:?}"),
    }
    assert_eq!(count(), before, "a ping counted as activity");
}

#[tokio::test]
async fn shell_token_on_plain_http_is_refused_and_opens_nothing() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let token = rig.shell_token(VM);
    let host = Rig::host(VM);
    // HTTP/1.1 and HTTP/2 (no WebSocket over HTTP/2).
    let (status, msg) = refused(&rig, get(&host, "/", &[("x-aws-proxy-auth", &token)])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("a shell token opens only the shell"), "{msg}");
    let mut s = h2(TcpStream::connect(rig.addr).await.unwrap()).await;
    let req = http::Request::get(format!("http://{host}/"))
        .header("x-aws-proxy-auth", &token)
        .body(body(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, body) = read(s.go(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message(&headers, &body).contains("shell token"), "{body}");
    assert!(!body.contains(&token[4..30]), "the token was echoed");
    assert!(rig.upstreams.opened_nothing());
    assert!(rig.upstreams.ingress_calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn shell_token_with_a_port_is_refused() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let token = rig.shell_token(VM);
    let host = Rig::host(VM);
    let with_port = format!("{}, lambda-microvms.port.8080", shell_protocols(&token));
    let (status, msg) = refused(&rig, upgrade_get(&host, &with_port, &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("without a port"), "{msg}");
    let (status, msg) = refused(
        &rig,
        upgrade_get(
            &host,
            &shell_protocols(&token),
            &[("x-aws-proxy-port", "8080")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("without a port"), "{msg}");
    // tokio-tungstenite sees the refusal too.
    match ws_plain(&rig, &host, "/", &with_port).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::FORBIDDEN),
        other => panic!("{:?}", other.map(|(_, r)| r.status())),
    }
    assert!(rig.upstreams.opened_nothing());
    assert!(rig.app.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn http_token_websocket_goes_to_the_app_and_never_opens_a_shell() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let token = rig.token(VM, &[8080]);
    let (mut ws, resp) = ws_plain(&rig, &Rig::host(VM), "/ws", &shell_protocols(&token))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // The app's echo: no session_init, and a resize is just text to it.
    let resize = r#"{"type":"resize","cols":120,"rows":40}"#;
    ws.send(Message::text(resize)).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(resize));
    ws.close(None).await.unwrap();
    assert_eq!(rig.app.last_seen().path, "/ws");
    assert!(rig.upstreams.shell_opens.lock().unwrap().is_empty());
    assert_eq!(
        rig.upstreams.opens.lock().unwrap().clone(),
        vec![(ACCOUNT.to_string(), VM.to_string(), 8080)]
    );
}

#[tokio::test]
async fn no_ingress_refuses_http_and_the_shell_without_opening_anything() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    rig.upstreams.set_ingress(VM, NO_INGRESS);
    let (status, msg) = refused(&rig, http_get(&rig)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        msg.contains(&format!("microVM {VM} does not accept HTTP requests"))
            && msg.contains("HTTP_INGRESS or ALL_INGRESS"),
        "{msg}"
    );
    // A WebSocket to the app is HTTP ingress too.
    let ws_http = upgrade_get(
        &Rig::host(VM),
        &shell_protocols(&rig.token(VM, &[8080])),
        &[],
    );
    let (status, msg) = refused(&rig, ws_http).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("HTTP_INGRESS or ALL_INGRESS"), "{msg}");
    let (status, msg) = refused(&rig, shell_refusal(&rig, VM)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        msg.contains(&format!("microVM {VM} does not accept shell sessions"))
            && msg.contains("SHELL_INGRESS or ALL_INGRESS"),
        "{msg}"
    );
    assert_eq!(rig.upstreams.ingress_calls.lock().unwrap().len(), 3);
    assert!(
        rig.upstreams.opened_nothing(),
        "a refused request opened something"
    );
    assert!(rig.app.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn http_ingress_allows_http_but_not_the_shell() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    rig.upstreams.set_ingress(VM, HTTP_INGRESS);
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let (status, _, body) = read(s.go(http_get(&rig)).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-8080"));
    let (status, msg) = refused(&rig, shell_refusal(&rig, VM)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("SHELL_INGRESS or ALL_INGRESS"), "{msg}");
    assert!(rig.upstreams.shell_opens.lock().unwrap().is_empty());
}

#[tokio::test]
async fn shell_ingress_allows_the_shell_but_not_http() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    rig.upstreams.set_ingress(VM, SHELL_INGRESS);
    let (status, msg) = refused(&rig, http_get(&rig)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("HTTP_INGRESS or ALL_INGRESS"), "{msg}");
    assert!(rig.upstreams.opens.lock().unwrap().is_empty());
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    ws.send(Message::binary(b"ok".to_vec())).await.unwrap();
    read_output_until(&mut ws, b"OK").await;
}

#[tokio::test]
async fn all_ingress_allows_http_and_the_shell() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    rig.upstreams.set_ingress(VM, ALL_INGRESS);
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let (status, _, body) = read(s.go(http_get(&rig)).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-8080"));
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    ws.send(Message::binary(b"both".to_vec())).await.unwrap();
    read_output_until(&mut ws, b"BOTH").await;
}

#[tokio::test]
async fn shell_open_failures_are_http_statuses_before_any_upgrade() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let cases = [
        (MISSING_VM, StatusCode::NOT_FOUND, "not found"),
        (SUSPENDED_VM, StatusCode::CONFLICT, "SUSPENDED: resume it"),
        (
            BROKEN_VM,
            StatusCode::SERVICE_UNAVAILABLE,
            "its host is gone",
        ),
    ];
    for (vm, want, text) in cases {
        let (status, msg) = refused(&rig, shell_refusal(&rig, vm)).await;
        assert_eq!(status, want, "{vm}: {msg}");
        assert!(msg.contains(text), "{vm}: {msg}");
    }
    // The missing microVM was refused by the ingress question already.
    let opened: Vec<String> = rig
        .upstreams
        .shell_opens
        .lock()
        .unwrap()
        .iter()
        .map(|(_, vm, _)| vm.clone())
        .collect();
    assert_eq!(opened, vec![SUSPENDED_VM, BROKEN_VM]);
}

#[tokio::test]
async fn shells_are_rate_limited_like_requests() {
    let rig = Rig::start(Tls::Off, |c| c.max_requests_per_sec_per_microvm = 1).await;
    let mut statuses = vec![];
    for _ in 0..4 {
        let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
        let resp = s.go(shell_refusal(&rig, VM)).await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..2], &[101, 101], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(rig.upstreams.shell_opens.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn shell_output_waits_for_a_client_that_does_not_read() {
    const CHUNKS: usize = 1024; // 64 MiB
    let rig = Rig::start(Tls::Off, |_| {}).await;
    // The kernel's socket buffers hold a few MiB at most: far less than
    // the 64 MiB flood.
    let tcp = TcpStream::connect(rig.addr).await.unwrap();
    let token = rig.shell_token(VM);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        ws_request("ws", &Rig::host(VM), "/", &shell_protocols(&token)),
        tcp,
        Some(WebSocketConfig::default().max_message_size(Some(1 << 20))),
    )
    .await
    .unwrap();
    session_init(&mut ws).await;
    let shell = rig.upstreams.last_shell();
    ws.send(Message::binary(format!("flood {CHUNKS}\n").into_bytes()))
        .await
        .unwrap();
    // Not reading: the shell's output stalls far short of the whole.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = shell.output_bytes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shell.output_bytes.load(Ordering::Relaxed),
        stalled,
        "output kept flowing into a client that does not read"
    );
    let total = (CHUNKS * FLOOD_CHUNK_BYTES) as u64;
    assert!(
        stalled < total / 2,
        "{stalled} of {total} bytes went out to a client that does not read"
    );
    // Reading again, everything arrives, in frames of at most 64 KiB.
    let mut got = 0u64;
    let mut echo = false;
    while got < total {
        match next(&mut ws).await {
            Message::Binary(b) => {
                assert!(b.len() <= 64 * 1024, "a frame of {} bytes", b.len());
                if !echo && b.starts_with(b"FLOOD") {
                    echo = true;
                    continue;
                }
                assert!(b.iter().all(|&c| c == b'f'));
                got += b.len() as u64;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, total);
    assert_eq!(
        shell.output_bytes.load(Ordering::Relaxed),
        total + "flood 1024\n".len() as u64
    );
}

#[tokio::test]
async fn shutdown_closes_shell_sessions_with_1001() {
    let mut rig = Rig::start(Tls::Off, |_| {}).await;
    let mut ws = open_shell(&rig).await;
    session_init(&mut ws).await;
    rig.shutdown.take().unwrap().send(()).unwrap();
    assert_eq!(
        close_frame(&mut ws).await,
        (CloseCode::Away, "the proxy is shutting down".to_string())
    );
    rig.upstreams.last_shell().wait_input_closed().await;
}
