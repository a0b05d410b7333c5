//! One connection, on its own task: wait for a request head within the
//! limits, hand the request to the service, write its answer (whole, or
//! streamed as it is produced), and go on while the connection may be kept
//! alive. The front end's own refusals
//! (malformed or oversized heads, slow clients, HTTP/2) are decided here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex};
use tokio::time::{timeout, Instant};

use crate::body::Body;
use crate::io::{self, ConnIo, Framing, StreamEnd};
use crate::limits::Limits;
use crate::reply::{error_response, new_request_id, ConnInfo, RequestId};
use crate::service::Service;
use crate::{h2, Response, ResponseBody};

/// A request head, parsed and checked: everything but the body.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// The body's length (`Content-Length`, else none).
    len_bytes: u64,
    keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
}

/// Why the front end refuses a request: answered in the AWS error shape.
struct Refusal {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            error_type,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response {
        error_response(self.status, self.error_type, &self.message)
    }
}

enum HeadOutcome {
    Request(Head),
    /// Close without a word (the client left, or an idle connection timed out).
    Close,
    /// Answer this and close.
    Refuse(Refusal),
    Http2,
}

impl ConnIo {
    async fn read_head(
        &mut self,
        first: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> HeadOutcome {
        let limits = self.limits.clone();
        if self.buf.is_empty() {
            if *shutdown.borrow() {
                return HeadOutcome::Close;
            }
            let wait = if first {
                limits.head_timeout
            } else {
                limits.idle_timeout
            };
            tokio::select! {
                _ = shutdown.changed() => return HeadOutcome::Close,
                r = timeout(wait, self.read_more()) => match r {
                    Err(_) if first => return HeadOutcome::Refuse(timed_out_head()),
                    Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return HeadOutcome::Close,
                    Ok(Ok(_)) => {}
                },
            }
        }
        let deadline = Instant::now() + limits.head_timeout;
        loop {
            if h2::may_be_preface(&self.buf) {
                if self.buf.len() >= 16 {
                    return HeadOutcome::Http2;
                }
            } else {
                let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
                let mut req = httparse::Request::new(&mut fields);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        if n > limits.max_head_bytes {
                            return HeadOutcome::Refuse(head_too_large(&limits));
                        }
                        let head = match parse_head(&req) {
                            Ok(h) => h,
                            Err(refusal) => return HeadOutcome::Refuse(refusal),
                        };
                        self.buf.drain(..n);
                        // The body stays on the connection until the
                        // service reads it.
                        self.body_remaining = head.len_bytes;
                        self.continue_pending = head.expect_continue && head.len_bytes > 0;
                        return HeadOutcome::Request(head);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() >= limits.max_head_bytes {
                            return HeadOutcome::Refuse(head_too_large(&limits));
                        }
                    }
                    Err(httparse::Error::TooManyHeaders) => {
                        return HeadOutcome::Refuse(Refusal::new(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "ValidationException",
                            format!(
                                "The request has more than {} header fields",
                                limits.max_headers
                            ),
                        ))
                    }
                    Err(e) => {
                        return HeadOutcome::Refuse(bad_request(format!(
                            "Malformed HTTP request head: {}",
                            describe(e)
                        )))
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return HeadOutcome::Refuse(timed_out_head());
            }
            match timeout(deadline - now, self.read_more()).await {
                Err(_) => return HeadOutcome::Refuse(timed_out_head()),
                Ok(Ok(0)) | Ok(Err(_)) => return HeadOutcome::Close,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Serve one connection until it closes.
pub(crate) async fn run<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    limits: Arc<Limits>,
    service: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = Arc::new(Mutex::new(ConnIo::new(stream, limits)));
    let mut first = true;
    loop {
        let outcome = io.lock().await.read_head(first, &mut shutdown).await;
        first = false;
        let rid = new_request_id();
        let head = match outcome {
            HeadOutcome::Request(h) => h,
            HeadOutcome::Close => return,
            HeadOutcome::Refuse(refusal) => {
                io.lock().await.refuse(refusal.into_response(), &rid).await;
                return;
            }
            HeadOutcome::Http2 => {
                let refusal = h2::refusal("Hearth serves HTTP/1.1; connect with HTTP/1.1");
                let _ = io.lock().await.write_timed(&refusal).await;
                return;
            }
        };
        let keep_alive = head.keep_alive;
        let http11 = head.version == Version::HTTP_11;
        let mut req = http::Request::new(Body::on_connection(io.clone(), head.len_bytes));
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        req.extensions_mut().insert(RequestId(rid.clone()));
        req.extensions_mut().insert(ConnInfo { peer });
        let head_only = req.method() == Method::HEAD;
        let resp = service.call(req).await;
        let mut g = io.lock().await;
        let wants_close = resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        // A body the service did not read is not drained: the connection
        // ends after the answer instead.
        let unread = g.body_remaining > 0;
        let close = !keep_alive || wants_close || unread || *shutdown.borrow();
        let written = if resp.body().is_stream() {
            g.write_streamed_response(resp, &rid, close, head_only, http11, &mut shutdown)
                .await
        } else {
            g.write_response(resp, &rid, close, head_only)
                .await
                .map(|()| close)
        };
        match written {
            Err(_) => return,
            Ok(false) => {}
            Ok(true) => {
                if unread {
                    g.lingering_close().await;
                }
                return;
            }
        }
    }
}

impl ConnIo {
    /// Write an answer whose body is a stream: the head, then each chunk as
    /// it is produced (chunked for HTTP/1.1, until the close for HTTP/1.0).
    /// No body for HEAD, 1xx, 204 and 304: the stream is dropped unread.
    /// Returns whether the connection must close now: it stays open only
    /// after a stream that ended cleanly (and when `close` is false).
    async fn write_streamed_response(
        &mut self,
        resp: Response,
        rid: &str,
        close: bool,
        head_only: bool,
        http11: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> std::io::Result<bool> {
        let (parts, body) = resp.into_parts();
        let no_body = io::status_has_no_body(parts.status);
        let (framing, close) = match (no_body, http11) {
            (true, _) => (Framing::None, close),
            (false, true) => (Framing::Chunked, close),
            // HTTP/1.0 knows no chunks: the body ends with the connection.
            (false, false) => (Framing::None, true),
        };
        self.write_timed(&io::encode_head(&parts, rid, framing, close, 0))
            .await?;
        let ResponseBody::Stream(stream) = body else {
            return Ok(close);
        };
        if no_body || head_only {
            // Dropped: the producer sees its sender closed.
            return Ok(close);
        }
        let end = self
            .write_stream(stream, framing == Framing::Chunked, shutdown)
            .await;
        Ok(close || end != StreamEnd::Clean)
    }
}

/// Check a parsed head and turn it into a [`Head`]; or the answer that
/// refuses it. `Expect: 100-continue` is only noted: the connection answers
/// it when the service reads the body.
fn parse_head(req: &httparse::Request<'_, '_>) -> Result<Head, Refusal> {
    let minor_version = req.version.unwrap_or(1);
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad_request("The request method is not a valid token"))?;
    let target = req.path.unwrap_or("").as_bytes();
    if !target.starts_with(b"/") {
        return Err(bad_request(
            "The request target must be a path beginning with '/'",
        ));
    }
    let uri = Uri::try_from(target).map_err(|_| {
        bad_request("The request target is not a valid URI path and query (only visible ASCII is allowed; percent-encode the rest)")
    })?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut connection_close = minor_version == 0;
    let mut expect_continue = false;
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| bad_request("A header name is not a valid token"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| {
            bad_request(format!(
                "The value of header {name} contains a control character"
            ))
        })?;
        if name == http::header::CONTENT_LENGTH {
            let v = value.as_bytes();
            let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    bad_request("Content-Length must be a non-negative decimal number")
                })?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad_request(
                    "The request has conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            return Err(Refusal::new(
                StatusCode::LENGTH_REQUIRED,
                "ValidationException",
                "Transfer-Encoding is not accepted: send the body with a Content-Length",
            ));
        } else if name == http::header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    connection_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && minor_version == 0 {
                    connection_close = false;
                }
            }
        } else if name == http::header::EXPECT {
            if !value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
                return Err(Refusal::new(
                    StatusCode::EXPECTATION_FAILED,
                    "ValidationException",
                    "Only Expect: 100-continue is supported",
                ));
            }
            expect_continue = true;
        }
        headers.append(name, value);
    }
    Ok(Head {
        method,
        uri,
        version: if minor_version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        },
        headers,
        len_bytes: content_length.unwrap_or(0),
        keep_alive: !connection_close,
        expect_continue,
    })
}

fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "ValidationException", message)
}

fn head_too_large(limits: &Limits) -> Refusal {
    Refusal::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "ValidationException",
        format!(
            "The request head is larger than {} bytes",
            limits.max_head_bytes
        ),
    )
}

fn timed_out_head() -> Refusal {
    Refusal::new(
        StatusCode::REQUEST_TIMEOUT,
        "RequestTimeoutException",
        "The request head did not arrive in time",
    )
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid byte in a header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid byte in the request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
    }
}

/// Answer a connection beyond the cap and close it.
pub(crate) async fn refuse_busy(mut stream: TcpStream, max_connections: usize) {
    let resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailableException",
        &format!("The server holds its maximum of {max_connections} connections; retry later"),
    );
    let bytes = crate::io::encode_response(resp, &new_request_id(), true, false);
    let _ = timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer of a connection that sends an endless head never holds
    /// more than the head limit plus one read: the figure the documented
    /// memory bound multiplies by the connection cap.
    #[tokio::test]
    async fn an_endless_head_is_refused_within_its_buffer_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let limits = Arc::new(Limits::default());
        let mut io = ConnIo::new(server, limits.clone());
        let writer = tokio::spawn(async move {
            // In pieces that do not line up with reads, as a slow client
            // sends them.
            let mut head = b"GET / HTTP/1.1\r\nx-long: ".to_vec();
            head.resize(256 * 1024, b'a');
            for piece in head.chunks(10_000) {
                if client.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        let (_tx, mut rx) = watch::channel(false);
        match io.read_head(true, &mut rx).await {
            HeadOutcome::Refuse(r) => {
                assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            _ => panic!("an endless head was not refused"),
        }
        let bound = limits.max_head_bytes + crate::limits::READ_CHUNK_BYTES;
        assert!(
            io.buf.capacity() <= bound,
            "{} bytes of buffer for a {bound}-byte bound",
            io.buf.capacity()
        );
        drop(writer);
    }
}
