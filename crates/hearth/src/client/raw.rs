//! Signed requests to Hearth's extension endpoints (`/hearth/v1/...`),
//! which the SDK does not know: a small HTTP/1.1 client over one plain TCP
//! connection per request (`Connection: close`), SigV4-signed with
//! `aws-sigv4` for service `lambda` and a signed `x-amz-content-sha256`.
//!
//! Bodies are streamed both ways: an upload is copied from its file to the
//! socket, an answer is read chunk by chunk (`Content-Length`,
//! `Transfer-Encoding: chunked`, or until the server closes). Runs on the
//! command's Tokio task.

use std::path::PathBuf;
use std::time::SystemTime;

use aws_sdk_lambdamicrovms::config::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{ApiCallError, Endpoint};
use crate::client::creds::StaticCredentials;

/// The longest status line or header line accepted from the server.
const MAX_LINE_BYTES: u64 = 16 * 1024;
/// The most header lines accepted in one answer.
const MAX_HEADERS: usize = 100;
/// The largest answer [`RawResponse::read_to_end`] keeps in memory.
pub const MAX_BUFFERED_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Why a raw request failed below the API level.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("could not connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error talking to {authority}: {source}")]
    Io {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not sign the request: {0}")]
    Sign(String),
    #[error("the server's answer is not valid HTTP/1.1: {0}")]
    Protocol(String),
    #[error("Hearth's own endpoints are reached over http:// only (the endpoint URL is https://)")]
    NoTls,
    #[error("the answer is larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
}

/// A request body.
pub enum RawBody {
    Empty,
    /// A file sent as is, with its size and SHA-256 (lowercase hex), both
    /// taken before sending (see [`hash_file`]).
    File {
        path: PathBuf,
        size_bytes: u64,
        sha256_hex: String,
        content_type: &'static str,
    },
}

/// Size and SHA-256 (lowercase hex) of a file, read once in blocking code.
pub async fn hash_file(path: PathBuf) -> Result<(u64, String), RawError> {
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let size_bytes = std::io::copy(&mut f, &mut h)?;
        Ok::<_, std::io::Error>((size_bytes, hex::encode(h.finalize())))
    })
    .await
    .map_err(|e| RawError::ReadFile {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| RawError::ReadFile { path, source })
}

/// An answer whose head has been read; the body is read on demand.
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    body: BodyReader,
    authority: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, RawError> {
        let authority = &self.authority;
        self.body.next_chunk().await.map_err(|e| match e {
            ChunkError::Io(source) => RawError::Io {
                authority: authority.clone(),
                source,
            },
            ChunkError::Protocol(m) => RawError::Protocol(m),
        })
    }

    /// The whole body (at most `limit_bytes`).
    pub async fn read_to_end(&mut self, limit_bytes: usize) -> Result<Vec<u8>, RawError> {
        let mut out = Vec::new();
        while let Some(c) = self.next_chunk().await? {
            if out.len() + c.len() > limit_bytes {
                return Err(RawError::TooLarge { limit_bytes });
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// A non-2xx answer as the API error it carries: the shape from
    /// `x-amzn-errortype`, the message from the JSON body.
    pub async fn into_api_error(mut self, operation: &'static str) -> ApiCallError {
        let body = self.read_to_end(1024 * 1024).await.unwrap_or_default();
        let code = self
            .header("x-amzn-errortype")
            .map(|v| v.split(':').next().unwrap_or(v).trim().to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| format!("HTTP{}", self.status));
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("Message"))
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        ApiCallError::Service {
            operation,
            code,
            message,
        }
    }
}

/// Send one signed request and read the answer's head.
/// `path_and_query` is appended to the endpoint's path prefix; it must be
/// already percent-encoded.
pub async fn send(
    endpoint: &Endpoint,
    region: &str,
    creds: &StaticCredentials,
    method: &'static str,
    path_and_query: &str,
    body: RawBody,
) -> Result<RawResponse, RawError> {
    if endpoint.tls {
        return Err(RawError::NoTls);
    }
    let target = format!("{}{}", endpoint.path_prefix, path_and_query);
    let url = format!("http://{}{}", endpoint.authority, target);
    let mut headers: Vec<(String, String)> = vec![("host".into(), endpoint.authority.clone())];
    let payload = match &body {
        RawBody::Empty => {
            if method != "GET" && method != "DELETE" {
                headers.push(("content-length".into(), "0".into()));
            }
            SignableBody::Bytes(&[])
        }
        RawBody::File {
            size_bytes,
            sha256_hex,
            content_type,
            ..
        } => {
            headers.push(("content-type".into(), (*content_type).into()));
            headers.push(("content-length".into(), size_bytes.to_string()));
            SignableBody::Precomputed(sha256_hex.clone())
        }
    };
    let signed = sign_headers(region, creds, method, &url, &headers, payload)?;
    headers.extend(signed);

    let authority = endpoint.authority.clone();
    let io_err = |source| RawError::Io {
        authority: authority.clone(),
        source,
    };
    let mut stream = TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|source| RawError::Connect {
            authority: authority.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("user-agent: hearth-cli\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io_err)?;
    if let RawBody::File {
        path, size_bytes, ..
    } = &body
    {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| RawError::ReadFile {
                path: path.clone(),
                source,
            })?;
        // Exactly the bytes that were hashed and announced.
        let copied = tokio::io::copy(&mut file.take(*size_bytes), &mut stream)
            .await
            .map_err(io_err)?;
        if copied != *size_bytes {
            return Err(RawError::ReadFile {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ),
            });
        }
    }
    stream.flush().await.map_err(io_err)?;
    read_head(BufReader::new(stream), authority.clone(), method == "HEAD")
        .await
        .map_err(|e| match e {
            ChunkError::Io(source) => io_err(source),
            ChunkError::Protocol(m) => RawError::Protocol(m),
        })
}

/// The headers SigV4 adds (`authorization`, `x-amz-date`,
/// `x-amz-content-sha256`), signed over `headers`.
fn sign_headers(
    region: &str,
    creds: &StaticCredentials,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    payload: SignableBody<'_>,
) -> Result<Vec<(String, String)>, RawError> {
    let identity = Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        None,
        None,
        "hearth-cli",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("lambda")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| RawError::Sign(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        payload,
    )
    .map_err(|e| RawError::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| RawError::Sign(e.to_string()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

enum ChunkError {
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for ChunkError {
    fn from(e: std::io::Error) -> Self {
        ChunkError::Io(e)
    }
}

type Conn = BufReader<TcpStream>;

/// One line without its CRLF, at most [`MAX_LINE_BYTES`].
async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<String, ChunkError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Err(ChunkError::Protocol(
            "the server closed the connection".into(),
        ));
    }
    if buf.last() != Some(&b'\n') {
        return Err(ChunkError::Protocol(
            "a line is too long or unterminated".into(),
        ));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| ChunkError::Protocol("a line is not UTF-8".into()))
}

async fn read_head(
    mut conn: Conn,
    authority: String,
    head_only: bool,
) -> Result<RawResponse, ChunkError> {
    let status_line = read_line(&mut conn).await?;
    let status = parse_status_line(&status_line)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut conn).await?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(ChunkError::Protocol("too many header lines".into()));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| ChunkError::Protocol(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let framing = if head_only || status == 204 || status == 304 {
        Framing::Length(0)
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        Framing::Chunked { done: false }
    } else if let Some(len) = get("content-length") {
        Framing::Length(
            len.parse()
                .map_err(|_| ChunkError::Protocol(format!("bad content-length {len:?}")))?,
        )
    } else {
        Framing::UntilClose
    };
    Ok(RawResponse {
        status,
        headers,
        body: BodyReader { conn, framing },
        authority,
    })
}

fn parse_status_line(line: &str) -> Result<u16, ChunkError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(ChunkError::Protocol(format!("bad status line {line:?}")));
    }
    code.parse()
        .map_err(|_| ChunkError::Protocol(format!("bad status line {line:?}")))
}

enum Framing {
    Length(u64),
    Chunked { done: bool },
    UntilClose,
}

struct BodyReader {
    conn: Conn,
    framing: Framing,
}

impl BodyReader {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ChunkError> {
        const READ_BYTES: usize = 64 * 1024;
        match &mut self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                let want = (*left).min(READ_BYTES as u64) as usize;
                let mut buf = vec![0; want];
                let n = self.conn.read(&mut buf).await?;
                if n == 0 {
                    return Err(ChunkError::Protocol(
                        "the server closed the connection before the end of the body".into(),
                    ));
                }
                buf.truncate(n);
                *left -= n as u64;
                Ok(Some(buf))
            }
            Framing::UntilClose => {
                let mut buf = vec![0; READ_BYTES];
                let n = self.conn.read(&mut buf).await?;
                if n == 0 {
                    self.framing = Framing::Length(0);
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Chunked { done: true } => Ok(None),
            Framing::Chunked { done } => {
                let line = read_line(&mut self.conn).await?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| ChunkError::Protocol(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    while !read_line(&mut self.conn).await?.is_empty() {}
                    *done = true;
                    return Ok(None);
                }
                if size > MAX_BUFFERED_BODY_BYTES {
                    return Err(ChunkError::Protocol(format!("chunk of {size} bytes")));
                }
                let mut buf = vec![0; size];
                self.conn.read_exact(&mut buf).await?;
                if !read_line(&mut self.conn).await?.is_empty() {
                    return Err(ChunkError::Protocol("chunk not followed by CRLF".into()));
                }
                Ok(Some(buf))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot server that answers `answer` and hands back what it read.
    async fn one_shot(answer: Vec<u8>) -> (Endpoint, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = l.local_addr().unwrap().to_string();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and whatever body follows it until the client
            // stops sending (Content-Length bytes after the head).
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(&answer).await.unwrap();
            got
        });
        (
            Endpoint {
                url: format!("http://{authority}"),
                authority,
                tls: false,
                path_prefix: String::new(),
            },
            h,
        )
    }

    fn creds() -> StaticCredentials {
        StaticCredentials {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: "secret".into(),
            source: super::super::creds::CredentialSource::Environment,
        }
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_piece_by_piece_and_an_upload_is_signed_with_its_hash() {
        let (ep, server) = one_shot(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n==> st\r\n5;x=1\r\nep 1\n\r\n0\r\nx-trailer: y\r\n\r\n".to_vec(),
        )
        .await;
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("code.zip");
        std::fs::write(&file, b"PK-zip-bytes").unwrap();
        let (size_bytes, sha256_hex) = hash_file(file.clone()).await.unwrap();
        assert_eq!(size_bytes, 12);
        let mut r = send(
            &ep,
            "us-east-1",
            &creds(),
            "POST",
            "/hearth/v1/uploads",
            RawBody::File {
                path: file,
                size_bytes,
                sha256_hex: sha256_hex.clone(),
                content_type: "application/zip",
            },
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.next_chunk().await.unwrap().unwrap(), b"==> st");
        assert_eq!(r.next_chunk().await.unwrap().unwrap(), b"ep 1\n");
        assert_eq!(r.next_chunk().await.unwrap(), None);
        let got = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(
            got.starts_with("POST /hearth/v1/uploads HTTP/1.1\r\n"),
            "{got}"
        );
        assert!(
            got.contains(&format!("x-amz-content-sha256: {sha256_hex}\r\n")),
            "{got}"
        );
        assert!(got.contains("content-length: 12\r\n"), "{got}");
        let auth = got
            .lines()
            .find_map(|l| l.strip_prefix("authorization: "))
            .unwrap();
        assert!(auth.contains("/us-east-1/lambda/aws4_request"), "{auth}");
        assert!(auth.contains("x-amz-content-sha256"), "{auth}");
        assert!(got.ends_with("\r\n\r\nPK-zip-bytes"), "{got}");
    }

    #[tokio::test]
    async fn an_error_answer_becomes_the_api_error_it_names() {
        let body = r#"{"message":"No operation matches GET /"}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\nx-amzn-errortype: UnknownOperationException:http://internal\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (ep, _server) = one_shot(answer.into_bytes()).await;
        let r = send(
            &ep,
            "us-east-1",
            &creds(),
            "GET",
            "/x?follow=1",
            RawBody::Empty,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 404);
        let e = r.into_api_error("GetBuildLogs").await;
        assert_eq!(
            e.to_string(),
            "An error occurred (UnknownOperationException) when calling the GetBuildLogs operation: No operation matches GET /"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_read() {
        let (ep, _server) =
            one_shot(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec()).await;
        let mut r = send(&ep, "us-east-1", &creds(), "GET", "/x", RawBody::Empty)
            .await
            .unwrap();
        assert!(r.read_to_end(100).await.is_err());
    }
}
