//! A shell client for the end-to-end tests, in Rust: TLS to the endpoint
//! proxy (trusting the server's CA, SNI = the microVM's endpoint name),
//! the WebSocket opening handshake with the `lambda-microvms` marker and
//! authentication subprotocols (no port), then the shell's frames as the
//! proxy speaks them. Async; the tests drive it from a runtime of their
//! own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The `{"type":"exit",...}` frame, when one came.
    pub exit: Option<Value>,
    /// The close frame's code and reason.
    pub close: Option<(u16, String)>,
}

pub struct ShellClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    pub session_id: String,
    /// Terminal output not yet consumed by `expect`.
    pending: Vec<u8>,
}

fn tls(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca).expect("read the proxy's CA");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("a CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Open the WebSocket to `endpoint` (`<id>.localhost:<port>`) through the
/// proxy at `proxy_addr` with `protocols`; the handshake's error when the
/// proxy refuses (its HTTP status is in it).
pub async fn open(
    proxy_addr: &str,
    ca: &std::path::Path,
    endpoint: &str,
    protocols: &[String],
) -> Result<WebSocketStream<TlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let tcp = TcpStream::connect(proxy_addr)
        .await
        .expect("reach the proxy");
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from(host.to_string()).unwrap();
    let tls = tls(ca).connect(name, tcp).await.expect("TLS to the proxy");
    let mut req = format!("wss://{endpoint}/").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocols.join(", ").parse().unwrap(),
    );
    let (ws, _resp) = tokio_tungstenite::client_async(req, tls).await?;
    Ok(ws)
}

/// The subprotocols of a shell: the marker and the token, no port.
pub fn shell_protocols(token: &str) -> Vec<String> {
    vec![
        "lambda-microvms".into(),
        format!("lambda-microvms.authentication.{token}"),
    ]
}

/// The HTTP status of a refused handshake.
pub fn refused_status(e: &tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
        _ => None,
    }
}

impl ShellClient {
    /// Open a shell and read its `session_init`.
    pub async fn connect(
        proxy_addr: &str,
        ca: &std::path::Path,
        endpoint: &str,
        token: &str,
    ) -> Self {
        let mut ws = open(proxy_addr, ca, endpoint, &shell_protocols(token))
            .await
            .unwrap_or_else(|e| panic!("the shell handshake failed: {e}"));
        let first = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("session_init within 60 s")
            .expect("a first frame")
            .expect("a first frame");
        let Message::Text(t) = first else {
            panic!("the first frame is text: {first:?}");
        };
        let v: Value = serde_json::from_str(t.as_str()).expect("session_init is JSON");
        assert_eq!(v["type"], "session_init", "{v}");
        let session_id = v["session_id"].as_str().expect("a session id").to_string();
        ShellClient {
            ws,
            session_id,
            pending: Vec::new(),
        }
    }

    /// Keystrokes.
    pub async fn send(&mut self, keys: &str) {
        self.ws
            .send(Message::binary(keys.as_bytes().to_vec()))
            .await
            .expect("send keystrokes");
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) {
        let msg = serde_json::json!({"type": "resize", "cols": cols, "rows": rows}).to_string();
        self.ws
            .send(Message::text(msg))
            .await
            .expect("send a resize");
    }

    /// Read output until it contains `needle`; everything read up to and
    /// including it (the rest stays pending).
    pub async fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = find(&self.pending, needle.as_bytes()) {
                let rest = self.pending.split_off(at + needle.len());
                let got = std::mem::replace(&mut self.pending, rest);
                return String::from_utf8_lossy(&got).into_owned();
            }
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {needle:?} within {timeout:?}; output so far: {:?}",
                        String::from_utf8_lossy(&self.pending)
                    )
                });
            match next {
                Some(Ok(Message::Binary(b))) => self.pending.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!(
                    "the shell ended while waiting for {needle:?}: {other:?}; output: {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
    }

    /// Read to the end of the session (output is dropped).
    pub async fn end(mut self, timeout: Duration) -> End {
        let mut end = End {
            exit: None,
            close: None,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the session ends in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"] == "exit" {
                        end.exit = Some(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    end.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return end,
            }
        }
    }

    /// Close from the client's side.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            }))
            .await;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
