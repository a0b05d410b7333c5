//! `hearth curl`'s transport: one HTTP/1.1 request to a microVM's endpoint
//! through Hearth's endpoint proxy, the answer's body streamed to the
//! caller's writer as it arrives.
//!
//! The endpoint (`<microvmId>.<domain>:<port>`, from GetMicrovm) names
//! both where the proxy listens and which microVM to reach: the TCP
//! connection goes to the endpoint's port (on 127.0.0.1 for a `.localhost`
//! name, else wherever the name resolves, or `--connect-to`), TLS carries
//! the endpoint host as SNI, and the request's `Host` is the endpoint. The
//! proxy's certificate is checked against `--ca`, else the data
//! directory's `proxy/ca.pem` (the CA `hearth serve` made) with the
//! system's roots, else the system's roots.
//!
//! hyper drives the connection on a task of its own; everything else runs
//! on the command's task.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header that picks the microVM's port at the proxy.
pub const PORT_HEADER: &str = "X-aws-proxy-port";

/// Why a request through the proxy failed (an HTTP status is no failure
/// here: the caller decides what a non-2xx answer means).
#[derive(Debug, thiserror::Error)]
pub enum CurlError {
    #[error("the microVM's endpoint {endpoint:?} is not host[:port]")]
    Endpoint { endpoint: String },
    #[error("--connect-to {given:?} is not HOST:PORT")]
    ConnectTo { given: String },
    #[error("the path {path:?} is not a valid request path (start it with /, no spaces)")]
    Path { path: String },
    #[error("-X {method:?} is not an HTTP method")]
    Method { method: String },
    #[error("-H {header:?} is not `Name: value`")]
    Header { header: String },
    #[error("could not read the request body from {path}: {source}")]
    ReadData {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate that can be trusted{detail}")]
    BadCa { path: PathBuf, detail: String },
    #[error("could not set up TLS: {0}")]
    TlsSetup(#[source] rustls::Error),
    #[error("could not resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not connect to the endpoint proxy at {addr} for {host}: {source}")]
    Connect {
        addr: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no answer from the endpoint proxy at {addr} within {timeout_secs} s (connect and TLS)"
    )]
    ConnectTimeout { addr: String, timeout_secs: u64 },
    #[error("TLS with the endpoint proxy at {addr} for {host} failed (trusting {roots}; pass --ca FILE with the CA of the server's proxy, or --plain-http if it serves plain HTTP): {source}")]
    Tls {
        addr: String,
        host: String,
        roots: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the endpoint proxy at {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("could not write the answer: {0}")]
    Output(#[source] std::io::Error),
}

/// Where the endpoint is: its host (SNI, routing) and the authority the
/// `Host` header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host, without port (lowercase as the server wrote it).
    pub host: String,
    /// The endpoint's port, or the scheme's (443, or 80 with plain HTTP).
    pub port: u16,
    /// `host:port` as the `Host` header.
    pub authority: String,
}

impl Target {
    /// `host[:port]` from GetMicrovm's `endpoint`.
    pub fn parse(endpoint: &str, tls: bool) -> Result<Target, CurlError> {
        let bad = || CurlError::Endpoint {
            endpoint: endpoint.to_string(),
        };
        let (host, port) = match endpoint.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (endpoint, if tls { 443 } else { 80 }),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(Target {
            host: host.to_string(),
            port,
            authority: format!("{host}:{port}"),
        })
    }

    /// True for `localhost` and names under it, which always mean this
    /// host (RFC 6761): no resolver is asked.
    pub fn is_loopback_name(&self) -> bool {
        let h = self.host.trim_end_matches('.').to_ascii_lowercase();
        h == "localhost" || h.ends_with(".localhost")
    }
}

/// Where to open the TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl std::fmt::Display for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Addr(a) => write!(f, "{a}"),
            Dial::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// `--connect-to`, else 127.0.0.1 for a `.localhost` endpoint, else the
/// endpoint's own name.
pub fn dial_for(target: &Target, connect_to: Option<&str>) -> Result<Dial, CurlError> {
    if let Some(given) = connect_to {
        if let Ok(a) = given.parse::<SocketAddr>() {
            return Ok(Dial::Addr(a));
        }
        let bad = || CurlError::ConnectTo {
            given: given.to_string(),
        };
        let (host, port) = given.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        return Ok(Dial::Name {
            host: host.to_string(),
            port,
        });
    }
    if target.is_loopback_name() {
        return Ok(Dial::Addr(SocketAddr::from(([127, 0, 0, 1], target.port))));
    }
    Ok(Dial::Name {
        host: target.host.clone(),
        port: target.port,
    })
}

/// Which certificates the client trusts, and how an error names them.
pub struct Trust {
    pub config: Arc<rustls::ClientConfig>,
    pub description: String,
}

/// The CA certificates of a PEM file.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CurlError> {
    let pem = std::fs::read(path).map_err(|source| CurlError::ReadCa {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CurlError::BadCa {
            path: path.to_path_buf(),
            detail: format!(": {e}"),
        })?;
    if certs.is_empty() {
        return Err(CurlError::BadCa {
            path: path.to_path_buf(),
            detail: String::new(),
        });
    }
    Ok(certs)
}

/// The TLS client configuration: `--ca` alone when given; else the data
/// directory's `proxy/ca.pem` (when it exists) and the system's roots.
/// HTTP/1.1 is the only protocol offered (ALPN).
pub fn trust(ca: Option<&Path>, data_dir: &Path) -> Result<Trust, CurlError> {
    let mut roots = rustls::RootCertStore::empty();
    let add = |roots: &mut rustls::RootCertStore, path: &Path| -> Result<(), CurlError> {
        let certs = read_ca_file(path)?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(CurlError::BadCa {
                path: path.to_path_buf(),
                detail: " (none of its certificates parses as a CA)".into(),
            });
        }
        Ok(())
    };
    let description = match ca {
        Some(path) => {
            add(&mut roots, path)?;
            format!("only the CA in {}", path.display())
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            let (system_added, _) = roots.add_parsable_certificates(system.certs);
            let data_ca = hearth_proxy::ca_pem_path(&data_dir.join("proxy"));
            if data_ca.is_file() {
                add(&mut roots, &data_ca)?;
                format!(
                    "the CA in {} and {system_added} system roots",
                    data_ca.display()
                )
            } else {
                format!(
                    "{system_added} system roots; {} does not exist",
                    data_ca.display()
                )
            }
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CurlError::TlsSetup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Trust {
        config: Arc::new(config),
        description,
    })
}

/// One request, ready to send except for the routing headers.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub path_and_query: String,
    /// The user's `-H` headers, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
}

/// `-H 'Name: value'` (the value's leading blanks dropped).
pub fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), CurlError> {
    let bad = || CurlError::Header {
        header: h.to_string(),
    };
    let (name, value) = h.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim_end().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim_start()).map_err(|_| bad())?;
    Ok((name, value))
}

/// The request path: `/` when none is given, a leading `/` added when
/// missing.
pub fn request_path(path: Option<&str>) -> Result<String, CurlError> {
    let p = match path {
        None | Some("") => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    };
    match p.parse::<http::uri::PathAndQuery>() {
        Ok(pq) if pq.as_str() == p => Ok(p),
        _ => Err(CurlError::Path { path: p }),
    }
}

/// `-d`: `@FILE` is the file's bytes, `@-` standard input, anything else
/// the text itself. Sent as is.
pub fn request_body(data: &str) -> Result<Bytes, CurlError> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|source| {
                CurlError::ReadData {
                    path: PathBuf::from("-"),
                    source,
                }
            })?;
            Ok(Bytes::from(buf))
        }
        Some(path) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|source| CurlError::ReadData {
                path: PathBuf::from(path),
                source,
            }),
        None => Ok(Bytes::copy_from_slice(data.as_bytes())),
    }
}

/// `-X`, else POST with a body and GET without.
pub fn request_method(method: Option<&str>, has_body: bool) -> Result<Method, CurlError> {
    match method {
        Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| CurlError::Method {
            method: m.to_string(),
        }),
        None if has_body => Ok(Method::POST),
        None => Ok(Method::GET),
    }
}

/// The full header list: `Host`, a user agent, `Accept: */*` and (with a
/// body) a form content type, each unless the user gave that header; the
/// user's headers; then the token headers and the port header, which
/// always win (they route the request).
pub fn request_headers(
    spec: &RequestSpec,
    target: &Target,
    token_headers: &[(String, String)],
    port: u16,
) -> Result<Vec<(HeaderName, HeaderValue)>, CurlError> {
    let routed: Vec<(HeaderName, HeaderValue)> = token_headers
        .iter()
        .map(|(k, v)| parse_header(&format!("{k}: {v}")))
        .chain(std::iter::once(parse_header(&format!(
            "{PORT_HEADER}: {port}"
        ))))
        .collect::<Result<_, _>>()?;
    let given = |n: &HeaderName| spec.headers.iter().any(|(k, _)| k == n);
    let mut defaults = vec![
        (
            http::header::HOST,
            HeaderValue::from_str(&target.authority).map_err(|_| CurlError::Endpoint {
                endpoint: target.authority.clone(),
            })?,
        ),
        (
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("hearth/", env!("CARGO_PKG_VERSION"))),
        ),
        (http::header::ACCEPT, HeaderValue::from_static("*/*")),
    ];
    if spec.body.is_some() {
        defaults.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        ));
    }
    let is_routed = |n: &HeaderName| routed.iter().any(|(k, _)| k == n);
    let mut out: Vec<_> = defaults.into_iter().filter(|(k, _)| !given(k)).collect();
    out.extend(spec.headers.iter().filter(|(k, _)| !is_routed(k)).cloned());
    out.extend(routed);
    Ok(out)
}

/// A connected stream to the proxy, TLS or not.
/// A connected stream to the proxy, TLS or not.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long each step took, for `--verbose`.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
}

/// The answer's head, after its body was written out.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub timings: Timings,
    /// The connection's peer (the proxy).
    pub peer: String,
    /// The last byte written out, if any (a message that follows on a
    /// terminal starts a line of its own when it was no newline).
    pub last_byte: Option<u8>,
}

/// How `hearth curl` and `hearth shell` reach the endpoint proxy.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Trust only this CA (PEM) for the proxy's certificate (default: the
    /// data directory's proxy/ca.pem, when it exists, and the system's
    /// roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Speak plain HTTP to the proxy (`hearth serve --proxy-plain-http`).
    #[arg(long, conflicts_with = "ca")]
    pub plain_http: bool,
    /// Connect to this HOST:PORT instead of the endpoint's address (the
    /// request, or the WebSocket upgrade, still names the endpoint).
    #[arg(long, value_name = "HOST:PORT")]
    pub connect_to: Option<String>,
    /// Give up when connecting to the proxy (TCP and TLS) takes longer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_secs: u64,
}

impl ProxyArgs {
    /// The TLS trust, or `None` for plain HTTP.
    pub fn trust(&self, data_dir: &Path) -> Result<Option<Trust>, CurlError> {
        if self.plain_http {
            return Ok(None);
        }
        trust(self.ca.as_deref(), data_dir).map(Some)
    }

    /// The way to `endpoint`'s proxy with `trust` (from [`Self::trust`]).
    pub fn reach<'a>(
        &self,
        endpoint: &str,
        trust: Option<&'a Trust>,
    ) -> Result<(Target, Transport<'a>), CurlError> {
        let target = Target::parse(endpoint, trust.is_some())?;
        let dial = dial_for(&target, self.connect_to.as_deref())?;
        Ok((
            target,
            Transport {
                dial,
                tls: trust,
                connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            },
        ))
    }
}

/// How to reach the proxy.
pub struct Transport<'a> {
    pub dial: Dial,
    /// `None`: plain HTTP.
    pub tls: Option<&'a Trust>,
    pub connect_timeout: Duration,
}

/// TCP (no Nagle: keystrokes and small requests go at once), then TLS
/// unless plain, to the proxy; the stream and the peer's address.
pub async fn open(t: &Transport<'_>, target: &Target) -> Result<(Box<dyn Io>, String), CurlError> {
    let tcp = match &t.dial {
        Dial::Addr(a) => TcpStream::connect(a).await,
        Dial::Name { host, port } => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| CurlError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect();
            TcpStream::connect(&addrs[..]).await
        }
    }
    .map_err(|source| CurlError::Connect {
        addr: t.dial.to_string(),
        host: target.host.clone(),
        source,
    })?;
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| t.dial.to_string());
    let _ = tcp.set_nodelay(true);
    let Some(trust) = t.tls else {
        return Ok((Box::new(tcp), peer));
    };
    let name = ServerName::try_from(target.host.clone()).map_err(|_| CurlError::Endpoint {
        endpoint: target.authority.clone(),
    })?;
    let tls = tokio_rustls::TlsConnector::from(trust.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|source| CurlError::Tls {
            addr: peer.clone(),
            host: target.host.clone(),
            roots: trust.description.clone(),
            source,
        })?;
    Ok((Box::new(tls), peer))
}

/// Send the request and stream the answer to `out`: with `include`, the
/// status line and headers first (as `curl -i` prints them), then the
/// body, each chunk written and flushed as it arrives. A reader that went
/// away (a closed pipe) ends the copy without an error.
pub async fn exchange<W: AsyncWrite + Unpin>(
    t: &Transport<'_>,
    target: &Target,
    spec: &RequestSpec,
    headers: Vec<(HeaderName, HeaderValue)>,
    include: bool,
    out: &mut W,
) -> Result<Answer, CurlError> {
    let started = Instant::now();
    let (io, peer) = tokio::time::timeout(t.connect_timeout, open(t, target))
        .await
        .map_err(|_| CurlError::ConnectTimeout {
            addr: t.dial.to_string(),
            timeout_secs: t.connect_timeout.as_secs(),
        })??;
    let connect = started.elapsed();
    let http = |source| CurlError::Http {
        addr: peer.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(spec.method.clone())
        .uri(spec.path_and_query.as_str());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(spec.body.clone().unwrap_or_default()))
        .map_err(|_| CurlError::Path {
            path: spec.path_and_query.clone(),
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let first_byte = started.elapsed();
    let status = resp.status();
    // A reader that went away (a closed pipe) is no error: stop writing.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    if include {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (k, v) in resp.headers() {
            head.extend_from_slice(k.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        match out.write_all(&head).await {
            Ok(()) => {}
            Err(e) if gone(&e) => {
                driver.abort();
                return Ok(answer(status, started, connect, first_byte, peer, None));
            }
            Err(e) => return Err(CurlError::Output(e)),
        }
    }
    let mut last_byte = None;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(http)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let written = match out.write_all(&data).await {
            Ok(()) => out.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => last_byte = data.last().copied().or(last_byte),
            Err(e) if gone(&e) => break,
            Err(e) => return Err(CurlError::Output(e)),
        }
    }
    let _ = out.flush().await;
    driver.abort();
    Ok(answer(
        status, started, connect, first_byte, peer, last_byte,
    ))
}

fn answer(
    status: StatusCode,
    started: Instant,
    connect: Duration,
    first_byte: Duration,
    peer: String,
    last_byte: Option<u8>,
) -> Answer {
    Answer {
        status,
        timings: Timings {
            connect,
            first_byte,
            total: started.elapsed(),
        },
        peer,
        last_byte,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::TcpListener;

    fn spec(method: &str, path: &str, headers: &[&str], body: Option<&str>) -> RequestSpec {
        RequestSpec {
            method: request_method(Some(method), body.is_some()).unwrap(),
            path_and_query: request_path(Some(path)).unwrap(),
            headers: headers.iter().map(|h| parse_header(h).unwrap()).collect(),
            body: body.map(|b| Bytes::copy_from_slice(b.as_bytes())),
        }
    }

    #[test]
    fn endpoints_split_into_host_and_port_and_localhost_names_dial_loopback() {
        let t = Target::parse("mvm-abc.localhost:40123", true).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("mvm-abc.localhost", 40123, "mvm-abc.localhost:40123")
        );
        assert_eq!(
            dial_for(&t, None).unwrap(),
            Dial::Addr("127.0.0.1:40123".parse().unwrap())
        );
        let t = Target::parse("mvm-abc.hearth.example.com", true).unwrap();
        assert_eq!(t.port, 443);
        assert_eq!(
            dial_for(&t, None).unwrap(),
            Dial::Name {
                host: "mvm-abc.hearth.example.com".into(),
                port: 443
            }
        );
        assert_eq!(Target::parse("mvm-abc.localhost", false).unwrap().port, 80);
        assert_eq!(
            dial_for(&t, Some("10.0.0.1:8443")).unwrap(),
            Dial::Addr("10.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            dial_for(&t, Some("proxy.lan:8443")).unwrap(),
            Dial::Name {
                host: "proxy.lan".into(),
                port: 8443
            }
        );
        for bad in ["", "h:0", "h:x", "a b:1", "h:70000", "[::1]:80"] {
            assert!(Target::parse(bad, true).is_err(), "{bad:?}");
        }
        for bad in ["noport", ":80", "h:0"] {
            assert!(dial_for(&t, Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_methods_and_headers_parse_like_curl() {
        assert_eq!(request_path(None).unwrap(), "/");
        assert_eq!(request_path(Some("state")).unwrap(), "/state");
        assert_eq!(request_path(Some("/a?b=c")).unwrap(), "/a?b=c");
        assert!(request_path(Some("/a b")).is_err());
        assert_eq!(request_method(None, false).unwrap(), Method::GET);
        assert_eq!(request_method(None, true).unwrap(), Method::POST);
        assert_eq!(request_method(Some("PUT"), true).unwrap(), Method::PUT);
        assert!(request_method(Some("BAD METHOD"), false).is_err());
        let (k, v) = parse_header("X-Thing:   a: b").unwrap();
        assert_eq!((k.as_str(), v.to_str().unwrap()), ("x-thing", "a: b"));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name: v").is_err());
        assert_eq!(request_body("text").unwrap(), Bytes::from_static(b"text"));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("body");
        std::fs::write(&f, b"from\nfile").unwrap();
        assert_eq!(
            request_body(&format!("@{}", f.display())).unwrap(),
            Bytes::from_static(b"from\nfile")
        );
        assert!(request_body("@/no/such/file").is_err());
    }

    #[test]
    fn routing_headers_always_win_and_user_headers_replace_defaults() {
        let t = Target::parse("mvm-a.localhost:4443", true).unwrap();
        let s = spec(
            "POST",
            "/x",
            &[
                "Content-Type: application/json",
                "X-aws-proxy-auth: forged",
                "X-aws-proxy-port: 1",
                "X-Other: 1",
            ],
            Some("{}"),
        );
        let tok = vec![("X-aws-proxy-auth".to_string(), "tkn".to_string())];
        let h = request_headers(&s, &t, &tok, 9000).unwrap();
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let get = |n: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("host"), ["mvm-a.localhost:4443"]);
        assert_eq!(get("content-type"), ["application/json"]);
        assert_eq!(get("x-aws-proxy-auth"), ["tkn"]);
        assert_eq!(get("x-aws-proxy-port"), ["9000"]);
        assert_eq!(get("x-other"), ["1"]);
        assert_eq!(get("accept"), ["*/*"]);
    }

    #[test]
    fn the_data_dir_ca_is_trusted_and_a_bad_ca_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = trust(None, d.path()).unwrap();
        assert!(
            t.description.contains("does not exist"),
            "{}",
            t.description
        );
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = trust(Some(&junk), d.path()).err().unwrap();
        assert!(matches!(e, CurlError::BadCa { .. }), "{e}");
        let e = trust(Some(&d.path().join("absent.pem")), d.path())
            .err()
            .unwrap();
        assert!(matches!(e, CurlError::ReadCa { .. }), "{e}");
    }

    /// A one-shot HTTP/1.1 server: returns the request head it read and
    /// its body (by Content-Length), answers `answer`.
    async fn one_shot(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await.unwrap();
            head.push_str(&String::from_utf8(body).unwrap());
            let mut s = r.into_inner();
            s.write_all(answer).await.unwrap();
            s.shutdown().await.unwrap();
            head
        });
        (addr, h)
    }

    #[tokio::test]
    async fn a_request_carries_the_endpoint_host_token_and_port_and_streams_the_chunked_answer() {
        let (addr, server) = one_shot(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Up: yes\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let target = Target::parse("mvm-q.localhost:1", false).unwrap();
        let t = Transport {
            dial: Dial::Addr(addr),
            tls: None,
            connect_timeout: Duration::from_secs(5),
        };
        let s = spec("PUT", "/state?x=1", &["X-Mine: m"], Some("hello"));
        let tok = vec![("X-aws-proxy-auth".to_string(), "T0K".to_string())];
        let headers = request_headers(&s, &target, &tok, 8080).unwrap();
        let mut out = Vec::new();
        let a = exchange(&t, &target, &s, headers, true, &mut out)
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::CREATED);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 201 Created\r\n"), "{out}");
        assert!(out.contains("x-up: yes\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nabcde"), "{out}");
        let req = server.await.unwrap().to_ascii_lowercase();
        assert!(req.starts_with("put /state?x=1 http/1.1\r\n"), "{req}");
        for h in [
            "host: mvm-q.localhost:1\r\n",
            "x-aws-proxy-auth: t0k\r\n",
            "x-aws-proxy-port: 8080\r\n",
            "x-mine: m\r\n",
            "content-length: 5\r\n",
        ] {
            assert!(req.contains(h), "{h:?} missing in {req}");
        }
        assert!(req.ends_with("\r\n\r\nhello"), "{req}");
    }

    #[tokio::test]
    async fn without_include_only_the_body_is_written_and_an_error_status_is_returned() {
        let (addr, _server) =
            one_shot(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here\n").await;
        let target = Target::parse("mvm-q.localhost:1", false).unwrap();
        let t = Transport {
            dial: Dial::Addr(addr),
            tls: None,
            connect_timeout: Duration::from_secs(5),
        };
        let s = spec("GET", "/", &[], None);
        let headers = request_headers(&s, &target, &[], 8080).unwrap();
        let mut out = Vec::new();
        let a = exchange(&t, &target, &s, headers, false, &mut out)
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(out, b"not here\n");
        assert_eq!(a.last_byte, Some(b'\n'));
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let target = Target::parse("mvm-q.localhost:1", false).unwrap();
        let t = Transport {
            dial: Dial::Addr(addr),
            tls: None,
            connect_timeout: Duration::from_secs(5),
        };
        let s = spec("GET", "/", &[], None);
        let e = exchange(&t, &target, &s, vec![], false, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, CurlError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
