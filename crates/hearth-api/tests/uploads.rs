//! `POST /hearth/v1/uploads` over real sockets, signed by the `aws-sigv4`
//! crate as a Rust client signs it (`x-amz-content-sha256` computed before
//! the body is sent, and signed): the file lands under the caller's account
//! with the hash declared; unsigned, mismatched, oversized, unlengthed and
//! wrongly scoped uploads are refused in the AWS shape and leave nothing
//! behind; a ninth concurrent upload is throttled.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use hearth_api::{Api, AppState, DataDir};
use hearth_code::{UploadId, Uploads};
use hearth_store::AccountName;
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Account {
    id: String,
    akid: String,
    secret: String,
}

struct Server {
    data: tempfile::TempDir,
    addr: SocketAddr,
    a: Account,
    b: Account,
}

fn account(dd: &DataDir, name: &str) -> Account {
    let acct = dd
        .store
        .create_account(&AccountName::new(name).unwrap(), false)
        .unwrap();
    let key = dd.store.create_access_key(&acct.account_id).unwrap();
    Account {
        id: acct.account_id.as_str().to_string(),
        akid: key.key.access_key_id.clone(),
        secret: key.secret_access_key.expose().to_string(),
    }
}

/// An API server with uploads, on its own runtime, and two accounts.
fn serve() -> Server {
    let data = tempfile::tempdir().unwrap();
    let dd = DataDir::open(data.path()).unwrap();
    let (a, b) = (account(&dd, "a"), account(&dd, "b"));
    let state = Arc::new(AppState {
        store: dd.store.clone(),
        sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
        managed_images: Vec::new(),
        region: "us-east-1".into(),
        images: hearth_control::ImageControl::new(
            dd.store.clone(),
            hearth_control::images::BuildSetup::without_engine(dd.path.clone(), "us-east-1".into()),
        ),
        microvms: hearth_control::MicrovmControl::new(
            dd.store.clone(),
            hearth_control::MicrovmSetup::without_engine(),
        ),
        proxy_tokens: None,
    });
    let api = Api::new(state).with_uploads(&data.path().join("uploads"));
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
            hearth_http::serve(
                l,
                hearth_http::Limits::default(),
                Arc::new(api),
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    });
    Server {
        addr: rx.recv().unwrap(),
        data,
        a,
        b,
    }
}

/// How to sign an upload.
struct Signing<'a> {
    account: &'a Account,
    /// Signed as the payload hash: the body's hash, or another.
    payload: SignableBody<'a>,
    /// `x-amz-content-sha256` sent and signed.
    checksum_header: bool,
    region: &'a str,
    content_length: Option<u64>,
}

impl<'a> Signing<'a> {
    fn of(account: &'a Account, body: &[u8]) -> Self {
        Signing {
            account,
            payload: SignableBody::Precomputed(sha256_hex(body)),
            checksum_header: true,
            region: "us-east-1",
            content_length: Some(body.len() as u64),
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The head of a signed upload, as the client sends it.
fn signed_head(addr: SocketAddr, s: Signing<'_>, extra: &[(&str, &str)]) -> Vec<u8> {
    let host = addr.to_string();
    let creds = Credentials::new(&s.account.akid, &s.account.secret, None, None, "test");
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    if s.checksum_header {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(s.region)
        .name("lambda")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let length = s.content_length.map(|n| n.to_string());
    let mut headers = vec![("content-type", "application/zip")];
    if let Some(n) = &length {
        headers.push(("content-length", n));
    }
    let url = format!("http://{host}/hearth/v1/uploads");
    let signable = SignableRequest::new("POST", url, headers.iter().copied(), s.payload).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (added, _) = instructions.into_parts();
    let mut head =
        format!("POST /hearth/v1/uploads HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers.iter().chain(extra) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    for h in &added {
        head.push_str(&format!("{}: {}\r\n", h.name(), h.value()));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One answer: status, error type, JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    error_type: Option<String>,
    json: Value,
    raw: String,
}

fn parse(raw: &[u8]) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = r.parse(raw).expect("a well-formed answer") else {
        panic!("partial answer: {:?}", String::from_utf8_lossy(raw));
    };
    let error_type = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-amzn-errortype"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    Answer {
        status: r.code.unwrap(),
        error_type,
        json: serde_json::from_slice(&raw[n..]).unwrap_or(Value::Null),
        raw: String::from_utf8_lossy(raw).into_owned(),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Send `head` and `body`, read the answer.
fn send(addr: SocketAddr, head: &[u8], body: &[u8]) -> Answer {
    let mut s = connect(addr);
    s.write_all(head).unwrap();
    // The server may refuse before the body and close: what it answered
    // is read all the same.
    let _ = s.write_all(body);
    parse(&read_to_close(&mut s))
}

fn upload(server: &Server, account: &Account, body: &[u8]) -> Answer {
    send(
        server.addr,
        &signed_head(server.addr, Signing::of(account, body), &[]),
        body,
    )
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Bytes that are not one repeated pattern.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn a_signed_upload_lands_under_the_callers_account_with_its_hash() {
    let server = serve();
    // Larger than any body the API reads into memory (6 MiB), and than the
    // whole unverified-body budget (16 MiB).
    let body = payload(20 * 1024 * 1024 + 3);
    let a = upload(&server, &server.a, &body);
    assert_eq!(a.status, 201, "{a:?}");
    let uri = a.json["uri"].as_str().unwrap();
    let id = UploadId::parse(uri.strip_prefix("upload://").unwrap()).unwrap();
    assert_eq!(a.json["sizeBytes"], body.len() as u64);
    assert_eq!(a.json["sha256"], sha256_hex(&body));

    let uploads_dir = server.data.path().join("uploads");
    let path = uploads_dir
        .join(&server.a.id)
        .join(format!("{}.zip", id.as_str()));
    assert_eq!(
        sha256_hex(&std::fs::read(&path).unwrap()),
        sha256_hex(&body)
    );
    let uploads = Uploads::new(&uploads_dir);
    assert_eq!(uploads.path(&server.a.id, &id).unwrap(), path);
    // Another account does not see it, and nothing else was left.
    assert!(uploads.path(&server.b.id, &id).is_err());
    assert_eq!(files_under(&uploads_dir), vec![path]);

    // The other account's upload lands under its own id.
    let b = upload(&server, &server.b, b"PK\x05\x06 small");
    assert_eq!(b.status, 201, "{b:?}");
    let id_b = UploadId::parse(&b.json["uri"].as_str().unwrap()["upload://".len()..]).unwrap();
    assert!(uploads.path(&server.b.id, &id_b).is_ok());
    assert!(uploads.path(&server.a.id, &id_b).is_err());
}

#[test]
fn uploads_without_a_signed_payload_hash_are_refused_saying_why() {
    let server = serve();
    let body = payload(1000);
    // UNSIGNED-PAYLOAD.
    let head = signed_head(
        server.addr,
        Signing {
            payload: SignableBody::UnsignedPayload,
            ..Signing::of(&server.a, &body)
        },
        &[],
    );
    let a = send(server.addr, &head, &body);
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(
        a.error_type.as_deref(),
        Some("IncompleteSignatureException")
    );
    assert!(
        a.json["message"]
            .as_str()
            .unwrap()
            .contains("UNSIGNED-PAYLOAD"),
        "{a:?}"
    );
    // No x-amz-content-sha256 at all (the SDK's default for this service).
    let head = signed_head(
        server.addr,
        Signing {
            checksum_header: false,
            payload: SignableBody::Bytes(&body),
            ..Signing::of(&server.a, &body)
        },
        &[],
    );
    let a = send(server.addr, &head, &body);
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.json["message"]
            .as_str()
            .unwrap()
            .contains("x-amz-content-sha256"),
        "{a:?}"
    );
    assert!(files_under(&server.data.path().join("uploads")).is_empty());
}

#[test]
fn a_body_that_does_not_match_its_declared_hash_is_refused_and_removed() {
    let server = serve();
    let body = payload(3 * 1024 * 1024);
    let mut other = body.clone();
    other[1_000_000] ^= 1;
    let head = signed_head(
        server.addr,
        Signing {
            payload: SignableBody::Precomputed(sha256_hex(&other)),
            ..Signing::of(&server.a, &body)
        },
        &[],
    );
    let a = send(server.addr, &head, &body);
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.error_type.as_deref(), Some("ValidationException"));
    assert!(
        a.json["message"]
            .as_str()
            .unwrap()
            .contains("body does not match x-amz-content-sha256"),
        "{a:?}"
    );
    assert!(files_under(&server.data.path().join("uploads")).is_empty());
}

#[test]
fn an_upload_over_256_mib_is_refused_before_its_body_is_read() {
    let server = serve();
    let head = signed_head(
        server.addr,
        Signing {
            payload: SignableBody::Precomputed(sha256_hex(b"whatever")),
            content_length: Some(256 * 1024 * 1024 + 1),
            ..Signing::of(&server.a, b"")
        },
        &[("expect", "100-continue")],
    );
    // The head alone: the answer comes without a byte of the body.
    let mut s = connect(server.addr);
    s.write_all(&head).unwrap();
    let a = parse(&read_to_close(&mut s));
    assert!(!a.raw.contains("100 Continue"), "{a:?}");
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(
        a.error_type.as_deref(),
        Some("RequestEntityTooLargeException")
    );
    assert!(a.json["message"].as_str().is_some(), "{a:?}");
}

#[test]
fn an_upload_without_a_content_length_gets_411() {
    let server = serve();
    let head = signed_head(
        server.addr,
        Signing {
            content_length: None,
            ..Signing::of(&server.a, b"")
        },
        &[],
    );
    let a = send(server.addr, &head, b"");
    assert_eq!(a.status, 411, "{a:?}");
    assert_eq!(a.error_type.as_deref(), Some("ValidationException"));
}

#[test]
fn uploads_are_authenticated_like_every_request() {
    let server = serve();
    let body = payload(100);
    // Signed for another region than the server's.
    let head = signed_head(
        server.addr,
        Signing {
            region: "eu-west-1",
            ..Signing::of(&server.a, &body)
        },
        &[],
    );
    let a = send(server.addr, &head, &body);
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.error_type.as_deref(), Some("InvalidSignatureException"));
    // One account's key id with another's secret.
    let forged = Account {
        id: server.a.id.clone(),
        akid: server.a.akid.clone(),
        secret: server.b.secret.clone(),
    };
    let a = upload(&server, &forged, &body);
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.error_type.as_deref(), Some("InvalidSignatureException"));
    // An unknown key.
    let unknown = Account {
        akid: "AKIAUNKNOWNKEY000000".into(),
        ..forged
    };
    let a = upload(&server, &unknown, &body);
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.error_type.as_deref(), Some("UnrecognizedClientException"));
    assert!(files_under(&server.data.path().join("uploads")).is_empty());
}

#[test]
fn a_ninth_concurrent_upload_is_throttled() {
    let server = serve();
    let body = payload(1000);
    // Eight uploads that are told to go on, and send nothing yet: each
    // holds its slot.
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(server.addr);
            let head = signed_head(
                server.addr,
                Signing::of(&server.a, &body),
                &[("expect", "100-continue")],
            );
            s.write_all(&head).unwrap();
            let mut first = [0u8; 25];
            s.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
            s
        })
        .collect();
    let a = upload(&server, &server.b, &body);
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.error_type.as_deref(), Some("ThrottlingException"));
    // Once they go, uploads are taken again.
    drop(held);
    let t = std::time::Instant::now();
    loop {
        let a = upload(&server, &server.b, &body);
        if a.status == 201 {
            break;
        }
        assert_eq!(a.status, 429, "{a:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "slots were not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
