//! The proxy end to end: real sockets, real TLS against its own CA, a real
//! local app behind an `Upstreams` that opens real TCP connections.

mod support;

use bytes::Bytes;
use hearth_token::{Claims, TokenKind};
use http::{Request, StatusCode};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn https_request_with_a_token_reaches_the_app_without_proxy_headers() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080]);
    let (status, _, body) = https_get(
        &rig,
        &host,
        "/headers?x=1",
        &[
            ("x-aws-proxy-auth", &token),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("x-forwarded-proto", "http"),
            ("x-app-header", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = rig.app.last_seen();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/headers?x=1");
    assert_eq!(seen.header("host"), Some(host.as_str()));
    assert_eq!(seen.header("x-app-header"), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    for gone in [
        "x-aws-proxy-auth",
        "x-aws-proxy-port",
        "x-drop-me",
        "proxy-authorization",
        "te",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the app");
    }
    assert!(!body.contains(&token), "the app saw the token somewhere");
    assert_eq!(
        rig.upstreams.opens.lock().unwrap().last().unwrap(),
        &(ACCOUNT.to_string(), VM.to_string(), 8080)
    );
    assert!(rig.upstreams.activity.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn certificate_is_issued_for_the_exact_endpoint_name_and_other_names_get_no_handshake() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let tls = tls_connect(rig.addr, &rig.ca_pem(), &Rig::host(VM), &[]).await;
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    assert_eq!(certs.len(), 1);
    // Any name outside <id>.localhost: the handshake is refused.
    let connector = tokio_rustls::TlsConnector::from(client_config(&rig.ca_pem(), &[]));
    let tcp = TcpStream::connect(rig.addr).await.unwrap();
    let err = connector
        .connect("example.com".try_into().unwrap(), tcp)
        .await
        .expect_err("a handshake for example.com must fail");
    assert!(!err.to_string().is_empty());
    // Each endpoint gets a certificate naming exactly it, not a wildcard.
    let tcp = TcpStream::connect(rig.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(&rig.ca_pem(), &[]))
        .connect("mvm-a.localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let der_text = String::from_utf8_lossy(&der);
    assert!(der_text.contains("mvm-a.localhost"));
    assert!(!der_text.contains("*.localhost"));
}

#[tokio::test]
async fn http2_via_alpn_is_forwarded_as_http1_with_a_host_header() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut s = h2(tls).await;
    let token = rig.token(VM, &[8080]);
    for i in 0..3 {
        let req = Request::get(format!("https://{host}/headers?i={i}"))
            .header("x-aws-proxy-auth", &token)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(body(Bytes::new()))
            .unwrap();
        let resp = s.go(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let (status, _, body) = read(resp).await;
        assert_eq!(status, 200, "{body}");
        let seen = rig.app.last_seen();
        assert_eq!(seen.header("host"), Some(host.as_str()));
        assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
        assert_eq!(seen.path, format!("/headers?i={i}"));
    }
}

#[tokio::test]
async fn connect_tunnel_then_tls_inside_is_handled_like_a_direct_request() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let (tcp, head) = connect_tunnel(rig.addr, &format!("{host}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_over(tcp, &rig.ca_pem(), &host, &[b"h2", b"http/1.1"]).await;
    let mut s = h2(tls).await;
    let token = rig.token(VM, &[9000]);
    let req = Request::get(format!("https://{host}/whoami"))
        .header("x-aws-proxy-auth", &token)
        .header("x-aws-proxy-port", "9000")
        .body(body(Bytes::new()))
        .unwrap();
    let (status, _, body) = read(s.go(req).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-9000"));
    // Inside the tunnel auth is still enforced.
    let req = Request::get(format!("https://{host}/whoami"))
        .body(body_empty())
        .unwrap();
    let (status, headers, body) = read(s.go(req).await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(message(&headers, &body).contains("missing auth token"));
}

fn body_empty() -> ReqBody {
    body(Bytes::new())
}

#[tokio::test]
async fn connect_is_refused_for_anything_but_an_endpoint_name() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    for target in [
        "example.com:443",
        "localhost:443",
        "127.0.0.1:22",
        "a.b.localhost:443",
    ] {
        let (mut tcp, head) = connect_tunnel(rig.addr, target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        // No tunnel: the proxy keeps speaking HTTP on the connection.
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // After the 403's JSON body comes the answer to the GET.
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("HTTP/1.1 400") {
            let n = tokio::time::timeout(PROMPT, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            String::from_utf8_lossy(&seen).contains("not to"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
    }
}

#[tokio::test]
async fn plain_http_is_refused_when_tls_is_on() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let tcp = TcpStream::connect(rig.addr).await.unwrap();
    let mut s = h1(tcp).await;
    let token = rig.token(VM, &[8080]);
    let (status, headers, body) = whoami(&mut s, &token).await;
    assert_eq!(status, 400);
    assert!(message(&headers, &body).contains("HTTPS"));
    assert!(rig.app.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn tls_off_serves_plain_http1_and_h2c_and_drops_tls_handshakes() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080]);
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let (status, _, body) = read(
        s.go(get(&host, "/headers", &[("x-aws-proxy-auth", &token)]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rig.app.last_seen().header("x-forwarded-proto"),
        Some("http")
    );

    let mut s = h2(TcpStream::connect(rig.addr).await.unwrap()).await;
    let req = Request::get(format!("http://{host}/whoami"))
        .header("x-aws-proxy-auth", &token)
        .body(body_empty())
        .unwrap();
    let (status, _, body) = read(s.go(req).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-8080"));

    // A TLS ClientHello gets the connection closed.
    let tcp = TcpStream::connect(rig.addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&write_dummy_ca(rig.dir.path()), &[]));
    assert!(connector
        .connect(host.clone().try_into().unwrap(), tcp)
        .await
        .is_err());
}

/// A CA file for a client that will never get to verify anything.
fn write_dummy_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = dir.join("dummy.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[tokio::test]
async fn tls_files_mode_serves_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![Rig::host(VM)])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let rig = Rig::start(
        Tls::Files {
            cert: cert_path.clone(),
            key: key_path,
        },
        |_| {},
    )
    .await;
    let tls = tls_connect(rig.addr, &cert_path, &Rig::host(VM), &[b"http/1.1"]).await;
    let mut s = h1(tls).await;
    let token = rig.token(VM, &[8080]);
    let (status, _, body) = whoami(&mut s, &token).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-8080"));
}

#[tokio::test]
async fn hosts_that_are_not_endpoints_get_404_json() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let token = rig.token(VM, &[8080]);
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    for host in ["localhost", "example.com", "a.b.localhost", "127.0.0.1:80"] {
        let (status, headers, body) = read(
            s.go(get(host, "/", &[("x-aws-proxy-auth", &token)]))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 404, "{host}");
        assert!(
            message(&headers, &body).contains("no microVM endpoint"),
            "{body}"
        );
    }
    // Case and port do not matter for routing.
    let (status, _, body) = read(
        s.go(get(
            &format!("{}:1234", VM.to_uppercase() + ".LOCALHOST"),
            "/whoami",
            &[("x-aws-proxy-auth", &token)],
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-8080"));
    assert!(rig.app.seen.lock().unwrap().len() == 1);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_403_and_never_echoed() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let good = rig.token(VM, &[8080]);
    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let expired = rig.key.mint(&Claims {
        expires_at_secs: now_secs() - 1,
        ..claims(VM, &[8080])
    });
    let other_vm = rig.token("mvm-other", &[8080]);
    let shell = rig.key.mint(&Claims {
        kind: TokenKind::Shell,
        ports: vec![],
        ..claims(VM, &[])
    });
    let shell_with_port = rig.key.mint(&Claims {
        kind: TokenKind::Shell,
        ..claims(VM, &[8080])
    });
    let foreign = hearth_token::TokenKey::generate().mint(&claims(VM, &[8080]));
    // (request headers, what the message says, the token it must not echo)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (vec![], "missing auth token", None),
        (
            vec![("x-aws-proxy-auth", &tampered)],
            "signature",
            Some(&tampered),
        ),
        (
            vec![("x-aws-proxy-auth", &foreign)],
            "signature",
            Some(&foreign),
        ),
        (vec![("x-aws-proxy-auth", "garbage")], "malformed", None),
        (
            vec![("x-aws-proxy-auth", &expired)],
            "expired",
            Some(&expired),
        ),
        (
            vec![("x-aws-proxy-auth", &other_vm)],
            "not for microVM",
            Some(&other_vm),
        ),
        (vec![("x-aws-proxy-auth", &shell)], "shell", Some(&shell)),
        (
            vec![("x-aws-proxy-auth", &shell_with_port)],
            "shell",
            Some(&shell_with_port),
        ),
        (
            vec![("x-aws-proxy-auth", &good), ("x-aws-proxy-port", "9000")],
            "port 9000 is not allowed",
            None,
        ),
    ];
    for (headers, expect, token) in cases {
        let (status, resp_headers, body) = https_get(&rig, &host, "/whoami", &headers).await;
        assert_eq!(status, 403, "{expect}: {body}");
        let msg = message(&resp_headers, &body);
        assert!(msg.contains(expect), "{expect}: {msg}");
        if let Some(t) = token {
            assert!(!body.contains(t), "the token was echoed: {body}");
            assert!(
                !body.contains(&t[4..30]),
                "part of the token was echoed: {body}"
            );
        }
    }
    let (status, _, _) = https_get(
        &rig,
        &host,
        "/whoami",
        &[("x-aws-proxy-port", "x"), ("x-aws-proxy-auth", &good)],
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        rig.app.seen.lock().unwrap().is_empty(),
        "a refused request reached the app"
    );
    assert!(
        rig.upstreams.opens.lock().unwrap().is_empty(),
        "a refused request opened a stream"
    );
}

/// A download is use of the microVM: each chunk of a response body the
/// proxy passes on counts as activity (beyond the one count of opening the
/// stream; a GET has no request body), so a long one is never idle.
#[tokio::test]
async fn chunks_of_a_downloaded_body_count_as_activity() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080]);
    let before = rig.upstreams.activity.load(Ordering::Relaxed);
    // 16 chunks of 64 KiB from the app (hyper may pass them on merged).
    let (status, _, body) = https_get(
        &rig,
        &host,
        "/download?bytes=1048576",
        &[("x-aws-proxy-auth", &token)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1 << 20);
    let counted = rig.upstreams.activity.load(Ordering::Relaxed) - before;
    assert!(
        counted >= 3,
        "a 1 MiB download counted {counted} times as activity: its opening only"
    );
}

#[tokio::test]
async fn x_aws_proxy_port_selects_the_apps_port() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080, 9000]);
    let (_, _, body) = https_get(&rig, &host, "/whoami", &[("x-aws-proxy-auth", &token)]).await;
    assert_eq!(body, "app-8080");
    let (_, _, body) = https_get(
        &rig,
        &host,
        "/whoami",
        &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", "9000")],
    )
    .await;
    assert_eq!(body, "app-9000");
    assert!(rig.app9000.last_seen().header("x-aws-proxy-port").is_none());
}

#[tokio::test]
async fn default_port_comes_from_the_config() {
    let rig = Rig::start(Tls::Off, |c| c.default_port = 9000).await;
    let token = rig.token(VM, &[9000]);
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let (_, _, body) = whoami(&mut s, &token).await;
    assert_eq!(body, "app-9000");
}

#[tokio::test]
async fn upstream_failures_map_to_404_409_502_and_503() {
    let rig = Rig::start(Tls::Off, |_| {}).await;
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let cases = [
        (MISSING_VM, 8080, StatusCode::NOT_FOUND, "not found"),
        (
            SUSPENDED_VM,
            8080,
            StatusCode::CONFLICT,
            "SUSPENDED: resume it",
        ),
        (
            VM,
            7777,
            StatusCode::BAD_GATEWAY,
            "nothing is listening on port 7777",
        ),
        (
            BROKEN_VM,
            8080,
            StatusCode::SERVICE_UNAVAILABLE,
            "its host is gone",
        ),
        (
            RUDE_VM,
            8080,
            StatusCode::BAD_GATEWAY,
            "closed the connection without answering",
        ),
    ];
    for (vm, port, want, text) in cases {
        let token = rig.token(vm, &[port]);
        let port_s = port.to_string();
        let (status, headers, body) = read(
            s.go(get(
                &Rig::host(vm),
                "/",
                &[("x-aws-proxy-auth", &token), ("x-aws-proxy-port", &port_s)],
            ))
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, want, "{vm}: {body}");
        assert!(message(&headers, &body).contains(text), "{vm}: {body}");
    }
}

#[tokio::test]
async fn requests_above_the_rate_get_429_with_retry_after() {
    let rig = Rig::start(Tls::Off, |c| c.max_requests_per_sec_per_microvm = 2).await;
    let token = rig.token(VM, &[8080]);
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let mut statuses = vec![];
    for _ in 0..8 {
        let (status, headers, body) = whoami(&mut s, &token).await;
        if status == 429 {
            assert_eq!(headers["retry-after"], "1");
            assert!(message(&headers, &body).contains("too many requests"));
        }
        statuses.push(status.as_u16());
    }
    // A burst of twice the rate passes, then the limit bites.
    assert_eq!(&statuses[..4], &[200, 200, 200, 200], "{statuses:?}");
    assert!(statuses[4..].contains(&429), "{statuses:?}");
    assert!(rig.app.seen.lock().unwrap().len() < 8);
}

#[tokio::test]
async fn websocket_with_subprotocol_auth_echoes_and_the_client_gets_the_marker_back() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[9000]);
    for app_protocol in [None, Some("chat")] {
        let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"http/1.1"]).await;
        let mut req = format!("wss://{host}/ws").into_client_request().unwrap();
        let mut offered = format!(
            "lambda-microvms, lambda-microvms.authentication.{token}, lambda-microvms.port.9000"
        );
        if let Some(p) = app_protocol {
            offered.push_str(&format!(", {p}"));
        }
        req.headers_mut()
            .insert("sec-websocket-protocol", offered.parse().unwrap());
        let activity_before = rig.upstreams.activity.load(Ordering::Relaxed);
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        let chosen = resp.headers()["sec-websocket-protocol"].to_str().unwrap();
        assert_eq!(chosen, app_protocol.unwrap_or("lambda-microvms"));
        // The app saw only its own subprotocols, and no token.
        let seen = rig.app9000.last_seen();
        assert_eq!(seen.header("sec-websocket-protocol"), app_protocol);
        assert!(seen.headers.iter().all(|(_, v)| !v.contains(&token)));
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![1u8, 2, 3])
        );
        ws.close(None).await.unwrap();
        // Client frames counted as activity (the request, then each frame).
        assert!(rig.upstreams.activity.load(Ordering::Relaxed) >= activity_before + 3);
    }
}

#[tokio::test]
async fn websocket_without_a_token_is_refused_before_reaching_the_app() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"http/1.1"]).await;
    let mut req = format!("wss://{host}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "lambda-microvms".parse().unwrap());
    let err = tokio_tungstenite::client_async(req, tls).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("{other:?}"),
    }
    assert!(rig.app.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_up_other_clients() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080]);

    // Client A asks for 64 MiB and never reads it.
    let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"http/1.1"]).await;
    let mut a = h1(tls).await;
    let resp = a
        .go(get(
            &host,
            "/download?bytes=67108864",
            &[("x-aws-proxy-auth", &token)],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Client B starts an upload and stops sending halfway.
    let mut b_raw = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"http/1.1"]).await;
    b_raw
        .write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: {host}\r\nX-aws-proxy-auth: {token}\r\nContent-Length: 1000000\r\n\r\nonly a little"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    b_raw.flush().await.unwrap();

    // Meanwhile client C's small requests answer promptly, over HTTP/1.1
    // and over HTTP/2.
    for i in 0..10 {
        let alpn: &[&[u8]] = if i % 2 == 0 { &[b"http/1.1"] } else { &[b"h2"] };
        let started = std::time::Instant::now();
        let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, alpn).await;
        let status = if i % 2 == 0 {
            let mut c = h1(tls).await;
            c.go(get(&host, "/whoami", &[("x-aws-proxy-auth", &token)]))
                .await
                .unwrap()
                .status()
        } else {
            let mut c = h2(tls).await;
            let req = Request::get(format!("https://{host}/whoami"))
                .header("x-aws-proxy-auth", &token)
                .body(body_empty())
                .unwrap();
            c.go(req).await.unwrap().status()
        };
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
    drop(resp);
    drop(b_raw);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let rig = Rig::start(Tls::Off, |c| c.max_connections = 2).await;
    let token = rig.token(VM, &[8080]);
    let mut held = vec![];
    for _ in 0..2 {
        let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
        let (status, _, _) = whoami(&mut s, &token).await;
        assert_eq!(status, 200);
        held.push(s);
    }
    let mut third = TcpStream::connect(rig.addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PROMPT, third.read(&mut buf))
        .await
        .expect("the third connection must be closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection was served");
    // Once one closes, a new one is served again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = h1(TcpStream::connect(rig.addr).await.unwrap()).await;
    let (status, _, _) = whoami(&mut s, &token).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let rig = Rig::start(Tls::Off, |c| c.idle_timeout_secs = 1).await;
    let mut tcp = TcpStream::connect(rig.addr).await.unwrap();
    tcp.write_all(b"GET /whoami HTTP/1.1\r\nHost: x.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(n > 0);
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("an idle connection must be closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn shutdown_stops_accepting_and_run_returns() {
    let mut rig = Rig::start(Tls::Off, |_| {}).await;
    rig.shutdown.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), &mut rig.proxy_task)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(TcpStream::connect(rig.addr).await.is_err());
}

#[tokio::test]
async fn curl_reaches_an_endpoint_through_connect_with_the_ca_file() {
    assert!(
        std::path::Path::new("/usr/bin/curl").exists(),
        "this test needs /usr/bin/curl (scripts/test.sh installs it)"
    );
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080]);
    let port = rig.addr.port();
    let out = tokio::process::Command::new("/usr/bin/curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(rig.ca_pem())
        .args(["-x", &format!("http://127.0.0.1:{port}")])
        .args(["-H", &format!("X-aws-proxy-auth: {token}")])
        .arg(format!("https://{host}:{port}/whoami"))
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "app-8080");
    // A 3 MB upload: curl sends `Expect: 100-continue` for it.
    let upload = rig.dir.path().join("upload.bin");
    std::fs::write(&upload, vec![b'z'; 3_000_000]).unwrap();
    let out = tokio::process::Command::new("/usr/bin/curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg("--cacert")
        .arg(rig.ca_pem())
        .args(["-x", &format!("http://127.0.0.1:{port}")])
        .args(["-H", &format!("X-aws-proxy-auth: {token}")])
        .arg("--data-binary")
        .arg(format!("@{}", upload.display()))
        .arg(format!("https://{host}:{port}/echo"))
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 3000000");
    assert!(rig
        .app
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.header("expect").is_none()));
    // And over HTTP/2 directly with --resolve.
    let out = tokio::process::Command::new("/usr/bin/curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(rig.ca_pem())
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-H", &format!("X-aws-proxy-auth: {token}")])
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}:{port}/whoami"))
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "app-8080\n2");
}

#[tokio::test]
async fn python_requests_reaches_an_endpoint_with_https_proxy_and_a_ca_bundle() {
    let python = pyenv_python();
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080, 9000]);
    let port = rig.addr.port();
    let script = r#"
import os, requests
url = os.environ["URL"]
tok = os.environ["TOKEN"]
r = requests.get(url + "/whoami", headers={"X-aws-proxy-auth": tok}, timeout=20)
print(r.status_code, r.text)
r = requests.get(url + "/whoami", headers={"X-aws-proxy-auth": tok, "X-aws-proxy-port": "9000"}, timeout=20)
print(r.status_code, r.text)
r = requests.post(url + "/echo", data=b"x" * 3_000_000, headers={"X-aws-proxy-auth": tok}, timeout=20)
print(r.status_code, len(r.content))
r = requests.get(url + "/whoami", timeout=20)
print(r.status_code, r.json()["message"][:18])
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env("URL", format!("https://{host}:{port}"))
        .env("TOKEN", &token)
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{port}"))
        .env("REQUESTS_CA_BUNDLE", rig.ca_pem())
        .env_remove("https_proxy")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 app-8080\n200 app-9000\n200 3000000\n403 missing auth token\n"
    );
}

#[tokio::test]
async fn bind_refuses_unusable_settings_with_a_message() {
    use hearth_proxy::{Proxy, ProxyConfig, ProxyError, TlsMode};
    let upstreams = std::sync::Arc::new(TestUpstreams::default());
    let base = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), TlsMode::Off);
    let cases: Vec<(ProxyConfig, &str)> = vec![
        (
            ProxyConfig {
                domain: "bad domain".into(),
                ..base.clone()
            },
            "not a DNS name",
        ),
        (
            ProxyConfig {
                max_connections: 0,
                ..base.clone()
            },
            "max_connections",
        ),
        (
            ProxyConfig {
                idle_timeout_secs: 0,
                ..base.clone()
            },
            "idle_timeout_secs",
        ),
    ];
    for (cfg, text) in cases {
        let err = Proxy::bind(cfg, upstreams.clone(), hearth_token::TokenKey::generate())
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Config(_)), "{err:?}");
        assert!(err.to_string().contains(text), "{err}");
    }
    // A taken address names the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Proxy::bind(
        ProxyConfig::new(addr, TlsMode::Off),
        upstreams.clone(),
        hearth_token::TokenKey::generate(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    // Certificate files that do not exist name the file.
    let err = Proxy::bind(
        ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            TlsMode::Files {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
            },
        ),
        upstreams,
        hearth_token::TokenKey::generate(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

/// The Python of the test venv (`scripts/test.sh` makes it, with
/// `requests`). Missing is a failure, never a skip.
fn pyenv_python() -> std::path::PathBuf {
    let venv = std::env::var_os("HEARTH_PYENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv")
        });
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs {} with `requests` (scripts/test.sh makes the venv)",
        python.display()
    );
    python
}
