//! The front end over real TCP connections: keep-alive and pipelining work,
//! and every attack the API was probed with (silent, slow and half-sent
//! clients, malformed and oversized heads, HTTP/2, too many connections) is
//! answered in the AWS shape, or closed, within the limits. Streamed answers
//! arrive live in exact chunked framing, a client that stops reading one is
//! dropped and its producer told; bodies read piece by piece keep the
//! body limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use hearth_http::{
    body_channel, error_response, serve, Body, Limits, Request, RequestId, Response, Service,
};
use http::StatusCode;
use tokio::sync::Notify;

/// Answers `len=<body length>` after reading the body, unless the path is
/// `/refuse` (answers 403 from the head alone), `/slow` (sleeps first), or
/// one of the streaming paths below.
struct Echo;

/// Gates a `/live/<id>` producer waits at before its second chunk.
static GATES: Mutex<Option<HashMap<String, Arc<Notify>>>> = Mutex::new(None);
/// The ids of `/stall/<id>` and `/head/<id>` producers whose sender was closed.
static NOTICED_CLOSED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn gate(id: &str) -> Arc<Notify> {
    GATES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id.to_string())
        .or_default()
        .clone()
}

fn noticed_closed(id: &str) -> bool {
    NOTICED_CLOSED
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|s| s.contains(id))
}

fn note_closed(id: &str) {
    NOTICED_CLOSED
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(id.to_string());
}

/// The chunks `/chunks` sends: small, empty (sent as nothing), exactly one
/// read, large, and a size whose hex has letters.
fn chunks_sent() -> Vec<Vec<u8>> {
    vec![
        b"a".to_vec(),
        Vec::new(),
        vec![b'b'; 16 * 1024],
        (0..300_000u32).map(|i| (i % 251) as u8).collect(),
        vec![b'\r'; 0xabc],
        b"\r\n0\r\n\r\n".to_vec(),
    ]
}

/// A streamed `200` whose producer runs `f` on its own task.
fn streamed<F, Fut>(f: F) -> Response
where
    F: FnOnce(hearth_http::BodySender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, body) = body_channel(4);
    tokio::spawn(f(tx));
    let mut r = http::Response::new(body);
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    r
}

impl Service for Echo {
    async fn call(&self, req: Request) -> Response {
        let rid = req.extensions().get::<RequestId>().cloned().unwrap();
        let path = req.uri().path().to_string();
        let (first, id) = path[1..].split_once('/').unwrap_or((&path[1..], ""));
        let id = id.to_string();
        match first {
            "refuse" => {
                return error_response(StatusCode::FORBIDDEN, "AccessDeniedException", "no")
            }
            "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            // Two chunks, the second only once the test opens the gate.
            "live" => {
                return streamed(|tx| async move {
                    tx.send("first").await.unwrap();
                    gate(&id).notified().await;
                    tx.send("second").await.unwrap();
                    tx.finish().await.unwrap();
                })
            }
            "chunks" => {
                return streamed(|tx| async move {
                    for c in chunks_sent() {
                        tx.send(c).await.unwrap();
                    }
                    tx.finish().await.unwrap();
                })
            }
            // 64 KiB chunks for as long as someone reads them.
            "stall" | "head" => {
                return streamed(|tx| async move {
                    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                    while tx.send(chunk.clone()).await.is_ok() {}
                    note_closed(&id);
                })
            }
            // Nothing to send until the client leaves.
            "wait" => {
                return streamed(|tx| async move {
                    tx.send("waiting").await.unwrap();
                    tx.closed().await;
                    note_closed(&id);
                })
            }
            // One chunk, then the producer fails: no final chunk.
            "abort" => {
                return streamed(|tx| async move {
                    tx.send("partial").await.unwrap();
                    drop(tx);
                })
            }
            // The body read piece by piece: its length and the pieces.
            "pieces" => {
                let mut body: Body = req.into_body();
                let (mut len, mut pieces) = (0usize, 0usize);
                loop {
                    match body.next_chunk().await {
                        Ok(Some(c)) => {
                            assert!(!c.is_empty() && c.len() <= 16 * 1024);
                            len += c.len();
                            pieces += 1;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return error_response(e.status(), e.error_type(), &e.to_string())
                        }
                    }
                }
                return http::Response::new(format!("len={len} pieces={pieces}").into());
            }
            _ => {}
        }
        let body: Body = req.into_body();
        match body.read_all(1024 * 1024).await {
            Ok(b) => {
                let mut r = http::Response::new(format!("len={} rid={}", b.len(), rid.0).into());
                r.headers_mut()
                    .insert("content-type", "text/plain".parse().unwrap());
                r
            }
            Err(e) => error_response(e.status(), e.error_type(), &e.to_string()),
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_connections: 8,
        max_head_bytes: 8 * 1024,
        max_headers: 32,
        head_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(600),
        body_idle_timeout: Duration::from_millis(400),
        body_min_bytes_per_sec: 1024 * 1024,
        write_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
    }
}

fn start(limits: Limits) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            serve(l, limits, Arc::new(Echo), std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Everything the server sends until it closes (or 5 s pass).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// One parsed answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// It has the AWS error shape: type header, JSON message, request id.
    fn assert_aws_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("x-amzn-errortype"),
            Some(error_type),
            "{self:?}"
        );
        assert_eq!(
            self.header("x-amzn-requestid").map(str::len),
            Some(36),
            "{self:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON body");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

/// Parse every answer in `raw`.
fn answers(mut raw: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(raw).expect("a well-formed answer") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                panic!("partial answer: {:?}", String::from_utf8_lossy(raw))
            }
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let status = r.code.unwrap();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let body = raw[n..n + len].to_vec();
        raw = &raw[n + len..];
        if status == 100 {
            continue;
        }
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
    out
}

fn one(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let mut a = answers(&read_to_close(&mut s));
    assert_eq!(a.len(), 1, "{a:?}");
    a.remove(0)
}

#[test]
fn keep_alive_and_pipelined_requests_get_their_own_ids() {
    let addr = start(limits());
    let mut s = connect(addr);
    s.write_all(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    s.write_all(b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let a = answers(&read_to_close(&mut s));
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(String::from_utf8_lossy(&a[0].body).starts_with("len=3 "));
    assert!(String::from_utf8_lossy(&a[1].body).starts_with("len=0 "));
    let ids: std::collections::HashSet<_> = a
        .iter()
        .map(|x| x.header("x-amzn-requestid").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    // The id the service saw is the one the client got.
    let rid = a[0].header("x-amzn-requestid").unwrap();
    assert!(String::from_utf8_lossy(&a[0].body).ends_with(rid));
    assert_eq!(a[2].header("connection"), Some("close"));
}

#[test]
fn silent_and_half_sent_heads_are_answered_408_and_closed() {
    let addr = start(limits());
    for sent in [&b""[..], b"GET / HTTP/1.1\r\nhost: x\r\n", b"GE"] {
        let t = Instant::now();
        let mut s = connect(addr);
        s.write_all(sent).unwrap();
        let a = answers(&read_to_close(&mut s));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(a.len(), 1, "{sent:?}: {a:?}");
        a[0].assert_aws_error(408, "RequestTimeoutException");
    }
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let addr = start(limits());
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let t = Instant::now();
    let a = answers(&read_to_close(&mut s));
    assert_eq!(a.len(), 1);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn a_half_sent_body_times_out_and_the_connection_ends() {
    let addr = start(limits());
    let mut s = connect(addr);
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .unwrap();
    let a = answers(&read_to_close(&mut s));
    assert_eq!(a.len(), 1, "{a:?}");
    a[0].assert_aws_error(408, "RequestTimeoutException");
    assert_eq!(a[0].header("connection"), Some("close"));
}

#[test]
fn expect_continue_is_answered_only_when_the_service_reads_the_body() {
    let addr = start(limits());
    // Refused from the head: no 100 Continue, the body never needs sending.
    let mut s = connect(addr);
    s.write_all(b"POST /refuse HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5000000\r\n\r\n")
        .unwrap();
    let raw = read_to_close(&mut s);
    assert!(!String::from_utf8_lossy(&raw).contains("100 Continue"));
    let a = answers(&raw);
    a[0].assert_aws_error(403, "AccessDeniedException");
    assert_eq!(
        a[0].header("connection"),
        Some("close"),
        "an unread body ends the connection"
    );
    // Read: 100 Continue first, then the answer.
    let mut s = connect(addr);
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ok").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let a = answers(&read_to_close(&mut s));
    assert!(String::from_utf8_lossy(&a[0].body).starts_with("len=2 "));
}

#[test]
fn malformed_heads_get_aws_shaped_400s() {
    let addr = start(limits());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "NUL in a header",
            b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "raw 0xff in the path",
            b"GET /a\xffb HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "negative Content-Length",
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"
                .to_vec(),
            400,
        ),
        (
            "chunked",
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            411,
        ),
        (
            "absolute-form target",
            b"GET http://x/ HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "HTTP/3.0",
            b"GET / HTTP/3.0\r\nhost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "unknown expectation",
            b"GET / HTTP/1.1\r\nhost: x\r\nexpect: magic\r\n\r\n".to_vec(),
            417,
        ),
    ];
    for (name, raw, status) in cases {
        let a = one(addr, &raw);
        assert_eq!(a.status, status, "{name}: {a:?}");
        a.assert_aws_error(status, "ValidationException");
        assert_eq!(a.header("connection"), Some("close"), "{name}");
    }
}

#[test]
fn oversized_heads_get_431() {
    let addr = start(limits());
    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let mut s = connect(addr);
    let _ = s.write_all(&big); // the server may close before it has read it all
    let a = answers(&read_to_close(&mut s));
    a[0].assert_aws_error(431, "ValidationException");

    let mut many = b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..300 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let a = one(addr, &many);
    a.assert_aws_error(431, "ValidationException");
}

#[test]
fn http2_prior_knowledge_is_told_to_use_http1() {
    let addr = start(limits());
    let mut s = connect(addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let raw = read_to_close(&mut s);
    assert_eq!(&raw[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0], "SETTINGS first");
    assert_eq!(raw[12], 7, "then GOAWAY");
    assert_eq!(&raw[22..26], &[0, 0, 0, 0xd], "HTTP_1_1_REQUIRED");
}

#[test]
fn connections_beyond_the_cap_get_503() {
    let addr = start(Limits {
        max_connections: 2,
        head_timeout: Duration::from_secs(5),
        ..limits()
    });
    let held: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let a = one(addr, b"");
    a.assert_aws_error(503, "ServiceUnavailableException");
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    let a = one(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(a.status, 200, "{a:?}");
}

#[test]
fn a_request_runs_to_its_end_when_the_client_leaves() {
    let addr = start(limits());
    let mut s = connect(addr);
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    drop(s);
    // The server survives and serves the next client.
    std::thread::sleep(Duration::from_millis(400));
    let a = one(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(a.status, 200);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
        let base = b"POST /2025-09-09/microvms?maxResults=5 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        (
            proptest::collection::vec((0..base.len(), any::<u8>()), 0..6),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(move |(edits, tail)| {
                let mut b = base.clone();
                for (i, byte) in edits {
                    b[i] = byte;
                }
                b.extend(tail);
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Whatever bytes arrive, every answer is well-formed HTTP/1.1 with a
        /// request id, and every refusal has the AWS error shape.
        #[test]
        fn any_bytes_get_well_formed_answers(raw in mutated_request()) {
            static ADDR: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
            let addr = *ADDR.get_or_init(|| start(limits()));
            let mut s = connect(addr);
            s.write_all(&raw).unwrap();
            let _ = s.shutdown(std::net::Shutdown::Write);
            for a in answers(&read_to_close(&mut s)) {
                prop_assert_eq!(a.header("x-amzn-requestid").map(str::len), Some(36));
                if a.status >= 400 {
                    a.assert_aws_error(a.status, a.header("x-amzn-errortype").unwrap_or("none"));
                }
            }
        }
    }
}

/// Drip a body to `path` a byte every 100 ms: never idle long enough for the
/// idle timeout, but behind 1000 bytes/s after a 300 ms grace.
fn drip_body_below_the_minimum_rate(path: &str) {
    let addr = start(Limits {
        body_idle_timeout: Duration::from_millis(300),
        body_min_bytes_per_sec: 1000,
        ..limits()
    });
    let mut s = connect(addr);
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    s.set_nonblocking(true).unwrap();
    while t.elapsed() < Duration::from_secs(4) {
        if s.write_all(b"x").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.ends_with(b"}") {
            break;
        }
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let a = answers(&answer);
    a[0].assert_aws_error(408, "RequestTimeoutException");
}

#[test]
fn a_body_dripped_below_the_minimum_rate_is_cut_off() {
    drip_body_below_the_minimum_rate("/");
}

#[test]
fn a_body_read_piece_by_piece_is_cut_off_below_the_minimum_rate_too() {
    drip_body_below_the_minimum_rate("/pieces");
}

#[test]
fn a_client_still_sending_a_refused_body_reads_the_refusal_not_a_reset() {
    let addr = start(limits());
    for _ in 0..5 {
        let mut s = connect(addr);
        s.write_all(b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 16777216\r\n\r\n")
            .unwrap();
        // Keep sending the body the server will never read, as clients
        // without Expect: 100-continue do.
        let chunk = vec![b'x'; 64 * 1024];
        for i in 0..256 {
            s.write_all(&chunk)
                .unwrap_or_else(|e| panic!("sending chunk {i} of the body: {e}"));
        }
        let a = answers(&read_to_close(&mut s));
        a[0].assert_aws_error(403, "AccessDeniedException");
    }
}

/// A client's view of a streamed answer: its head, then its chunks, parsed
/// strictly as they arrive.
struct StreamReader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl StreamReader {
    fn new(s: TcpStream) -> Self {
        StreamReader { s, buf: Vec::new() }
    }

    /// Read more; false at the end of the connection.
    fn fill(&mut self) -> bool {
        let mut b = [0u8; 64 * 1024];
        match self.s.read(&mut b) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }

    /// The next answer's head (its body not read).
    fn head(&mut self) -> Answer {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("a well-formed head") {
                let a = Answer {
                    status: r.code.unwrap(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                };
                self.buf.drain(..n);
                return a;
            }
            assert!(self.fill(), "the connection ended inside a head");
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "the connection ended inside a chunk");
        }
        self.buf.drain(..n).collect()
    }

    /// A line ending in CRLF, without it.
    fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return l;
            }
            assert!(self.fill(), "the connection ended inside a chunk-size line");
        }
    }

    /// The next chunk's data; `None` at the last chunk (`0` CRLF CRLF, no
    /// trailers). Sizes must be bare lowercase hex without leading zeros.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = self.line();
        let text = std::str::from_utf8(&size).unwrap();
        assert!(
            !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && (text == "0" || !text.starts_with('0')),
            "chunk-size line {text:?}"
        );
        let n = usize::from_str_radix(text, 16).unwrap();
        if n == 0 {
            assert_eq!(self.take(2), b"\r\n", "no trailers after the last chunk");
            return None;
        }
        let data = self.take(n);
        assert_eq!(self.take(2), b"\r\n", "CRLF after a chunk's data");
        Some(data)
    }

    /// Whether the server closes the connection (and sends nothing more)
    /// within the read timeout.
    fn closes_now(&mut self) -> bool {
        let before = self.buf.len();
        while self.fill() {}
        self.buf.len() == before
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n").into_bytes()
}

fn assert_streamed_head(a: &Answer) {
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert_eq!(a.header("content-length"), None, "{a:?}");
    assert_eq!(a.header("x-amzn-requestid").map(str::len), Some(36));
}

#[test]
fn a_streamed_answer_arrives_chunk_by_chunk_before_it_ends() {
    let addr = start(limits());
    let mut r = StreamReader::new(connect(addr));
    r.s.write_all(&get("/live/first-before-end", "")).unwrap();
    let a = r.head();
    assert_streamed_head(&a);
    assert_eq!(a.header("connection"), None, "{a:?}");
    // The producer has not finished (it waits for the gate): the first
    // chunk is here all the same.
    assert_eq!(r.chunk().as_deref(), Some(&b"first"[..]));
    gate("first-before-end").notify_one();
    assert_eq!(r.chunk().as_deref(), Some(&b"second"[..]));
    assert_eq!(r.chunk(), None);
}

#[test]
fn chunked_framing_is_exact_and_nothing_follows_the_last_chunk() {
    let addr = start(limits());
    let mut r = StreamReader::new(connect(addr));
    r.s.write_all(&get("/chunks", "connection: close\r\n"))
        .unwrap();
    let a = r.head();
    assert_streamed_head(&a);
    assert_eq!(a.header("connection"), Some("close"));
    let mut got = Vec::new();
    while let Some(c) = r.chunk() {
        got.push(c);
    }
    let sent: Vec<Vec<u8>> = chunks_sent()
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(got.len(), sent.len(), "one chunk per non-empty send");
    assert!(got == sent, "the chunks are the bytes sent, in order");
    assert!(r.buf.is_empty());
    assert!(
        r.closes_now(),
        "nothing after the last chunk, then the close"
    );
}

#[test]
fn a_kept_alive_connection_serves_the_next_request_after_a_clean_stream() {
    let addr = start(limits());
    let mut r = StreamReader::new(connect(addr));
    // Pipelined: the second request waits in the buffer while the stream
    // is written.
    let mut both = get("/chunks", "");
    both.extend_from_slice(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc");
    r.s.write_all(&both).unwrap();
    assert_streamed_head(&r.head());
    let mut n = 0;
    while let Some(c) = r.chunk() {
        n += c.len();
    }
    assert_eq!(n, chunks_sent().iter().map(Vec::len).sum::<usize>());
    let a = r.head();
    assert_eq!(a.status, 200, "{a:?}");
    let len: usize = a.header("content-length").unwrap().parse().unwrap();
    assert!(String::from_utf8(r.take(len))
        .unwrap()
        .starts_with("len=3 "));
    // And one more, sent after the stream ended.
    r.s.write_all(&get("/live/after-keep-alive", "")).unwrap();
    gate("after-keep-alive").notify_one();
    assert_streamed_head(&r.head());
    assert_eq!(r.chunk().as_deref(), Some(&b"first"[..]));
    assert_eq!(r.chunk().as_deref(), Some(&b"second"[..]));
    assert_eq!(r.chunk(), None);
}

#[test]
fn a_client_that_stops_reading_a_stream_is_dropped_and_the_producer_told() {
    let addr = start(Limits {
        write_timeout: Duration::from_millis(300),
        ..limits()
    });
    let mut s = connect(addr);
    s.write_all(&get("/stall/stops-reading", "")).unwrap();
    // Read nothing: the socket buffers fill, a chunk's write times out,
    // the connection is dropped and the producer's next send fails.
    let t = Instant::now();
    while !noticed_closed("stops-reading") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the producer was never told the client is gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // What was sent ends without the last chunk: the client can tell the
    // body is cut short.
    let raw = read_to_close(&mut s);
    assert!(raw.len() > 64 * 1024, "{} bytes", raw.len());
    assert!(!raw.ends_with(b"0\r\n\r\n"));
}

#[test]
fn a_producer_with_nothing_to_send_is_told_when_the_client_closes() {
    let addr = start(limits());
    let mut r = StreamReader::new(connect(addr));
    r.s.write_all(&get("/wait/client-closes", "")).unwrap();
    assert_streamed_head(&r.head());
    assert_eq!(r.chunk().as_deref(), Some(&b"waiting"[..]));
    assert!(!noticed_closed("client-closes"));
    drop(r);
    let t = Instant::now();
    while !noticed_closed("client-closes") {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the producer was not told"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_aborted_stream_has_no_last_chunk_and_ends_the_connection() {
    let addr = start(limits());
    let mut r = StreamReader::new(connect(addr));
    let mut both = get("/abort", "");
    both.extend_from_slice(&get("/", ""));
    r.s.write_all(&both).unwrap();
    assert_streamed_head(&r.head());
    assert_eq!(r.chunk().as_deref(), Some(&b"partial"[..]));
    assert!(r.buf.is_empty());
    assert!(
        r.closes_now(),
        "closed without a last chunk, the pipelined request unanswered"
    );
}

#[test]
fn head_gets_no_body_and_the_producer_is_told() {
    let addr = start(limits());
    let mut r = StreamReader::new(connect(addr));
    let mut both = b"HEAD /head/no-body HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
    both.extend_from_slice(&get("/", "connection: close\r\n"));
    r.s.write_all(&both).unwrap();
    let a = r.head();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("connection"), None, "{a:?}");
    // The next answer follows at once: no body came in between.
    let b = r.head();
    assert_eq!(b.status, 200, "{b:?}");
    let len: usize = b.header("content-length").unwrap().parse().unwrap();
    assert!(String::from_utf8(r.take(len))
        .unwrap()
        .starts_with("len=0 "));
    let t = Instant::now();
    while !noticed_closed("no-body") {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the producer was not told"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_http10_client_gets_the_stream_until_the_close() {
    let addr = start(limits());
    let mut s = connect(addr);
    s.write_all(b"GET /chunks HTTP/1.0\r\nhost: x\r\n\r\n")
        .unwrap();
    let raw = read_to_close(&mut s);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = r.parse(&raw).unwrap() else {
        panic!("no head")
    };
    assert_eq!(r.code, Some(200));
    assert!(!r
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("content-length")));
    assert_eq!(raw[n..], chunks_sent().concat()[..]);
}

#[test]
fn a_body_read_piece_by_piece_arrives_whole() {
    let addr = start(limits());
    let mut s = connect(addr);
    let len = 1024 * 1024 + 7;
    s.write_all(
        format!("POST /pieces HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    for piece in vec![b'y'; len].chunks(100_000) {
        s.write_all(piece).unwrap();
    }
    let a = answers(&read_to_close(&mut s));
    let text = String::from_utf8(a[0].body.clone()).unwrap();
    let (got, pieces) = text
        .strip_prefix("len=")
        .and_then(|t| t.split_once(" pieces="))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(got.parse::<usize>().unwrap(), len);
    assert!(
        pieces.parse::<usize>().unwrap() >= len / (16 * 1024),
        "{text}"
    );
}
