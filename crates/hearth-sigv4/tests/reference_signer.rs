//! Requests signed by the official `aws-sigv4` crate (what the Rust SDK
//! `aws-sdk-lambdamicrovms` uses), with the SDK's settings for non-S3 services
//! (double percent-encoding, no `x-amz-content-sha256` header), verified by
//! `hearth_sigv4::verify`; plus the negative cases, each with its error code.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use hearth_sigv4::{
    parse_amz_date, precheck, verify, verify_declared_payload, DeclaredPayload, Request, SecretKey,
    SigV4Error, Verified, VerifyOptions, MAX_AUTHORIZATION_LEN, MAX_HEADERS, MAX_HEADER_VALUE_LEN,
    MAX_PATH_LEN, MAX_QUERY_LEN, MAX_QUERY_PARAMS,
};

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVz+token/=";
const HOST: &str = "127.0.0.1:9000";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(parse_amz_date("20251129T123456Z").unwrap() as u64)
}

/// A request as it arrives on the wire.
#[derive(Clone, Debug)]
struct Wire {
    method: String,
    path: String,
    query: String,
    /// Header values as raw bytes, as a server receives them.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Wire {
    fn verify_with(
        &self,
        keys: &HashMap<String, SecretKey>,
        now: SystemTime,
    ) -> Result<Verified, SigV4Error> {
        let hs: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let req = Request {
            method: &self.method,
            raw_path: &self.path,
            raw_query: &self.query,
            headers: &hs,
            body: &self.body,
        };
        verify(&req, keys, now, VerifyOptions::new("lambda"))
    }

    fn verify(&self) -> Result<Verified, SigV4Error> {
        self.verify_with(&keys(), t0())
    }

    fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        for (k, v) in &mut self.headers {
            if k.eq_ignore_ascii_case(name) {
                *v = value.as_ref().to_vec();
                return;
            }
        }
        panic!("no header {name}");
    }

    /// The headers as [`Request::headers`] takes them.
    fn header_slices(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }

    /// The one value of header `name`, as text.
    fn header(&self, name: &str) -> String {
        let (_, v) = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("no header {name}"));
        String::from_utf8(v.clone()).unwrap()
    }

    fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

fn keys() -> HashMap<String, SecretKey> {
    HashMap::from([(AKID.to_owned(), SecretKey::new(SECRET))])
}

struct Opts<'a> {
    token: Option<&'a str>,
    region: &'a str,
    service: &'a str,
    time: SystemTime,
    checksum_header: bool,
    unsigned_payload: bool,
    /// Sign this hex SHA-256 as the payload hash instead of hashing the body (a
    /// client streaming a file it hashed first).
    precomputed_sha256: Option<&'a str>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            token: None,
            region: "us-east-1",
            service: "lambda",
            time: t0(),
            checksum_header: false,
            unsigned_payload: false,
            precomputed_sha256: None,
        }
    }
}

/// Signs with `aws-sigv4` and returns the request as the server would receive it
/// (hyper adds `Host: <authority>` since the port is not the default one).
fn aws_sign(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8], o: Opts) -> Wire {
    let creds = Credentials::new(AKID, SECRET, o.token.map(str::to_owned), None, "test");
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    if o.checksum_header {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(o.region)
        .name(o.service)
        .time(o.time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let url = format!("http://{HOST}{target}");
    let signable_body = if o.unsigned_payload {
        SignableBody::UnsignedPayload
    } else if let Some(hash) = o.precomputed_sha256 {
        SignableBody::Precomputed(hash.to_owned())
    } else {
        SignableBody::Bytes(body)
    };
    let signable =
        SignableRequest::new(method, url, headers.iter().copied(), signable_body).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (added, params) = instructions.into_parts();
    assert!(params.is_empty());
    let mut wire_headers: Vec<(String, Vec<u8>)> = vec![("Host".into(), HOST.into())];
    wire_headers.extend(headers.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    wire_headers.extend(
        added
            .iter()
            .map(|h| (h.name().to_owned(), h.value().as_bytes().to_vec())),
    );
    let (path, query) = Request::split_target(target);
    Wire {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers: wire_headers,
        body: body.to_vec(),
    }
}

const ARN_PATH: &str =
    "/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Amicrovm-image%3Amy-img";
const JSON: &[u8] = br#"{"imageIdentifier":"arn:aws:lambda:us-east-1:123456789012:microvm-image:my-img","runHookPayload":"caf\u00e9 \n"}"#;

fn post_json() -> Wire {
    aws_sign(
        "POST",
        "/2025-09-09/microvms",
        &[
            ("content-type", "application/json"),
            ("content-length", &JSON.len().to_string()),
            ("x-amz-user-agent", "aws-sdk-rust/1.3.9   os/linux"),
        ],
        JSON,
        Opts::default(),
    )
}

fn err_code(r: Result<Verified, SigV4Error>) -> &'static str {
    let e = r.unwrap_err();
    assert_eq!(e.http_status(), 403);
    e.error_code()
}

/// (method, request target, headers, body)
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a [u8]);

#[test]
fn valid_requests_from_the_reference_signer() {
    let cases: Vec<Case> = vec![
        ("GET", ARN_PATH.to_owned(), vec![], b""),
        (
            "GET",
            "/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Amicrovm%2Fmvm-1"
                .to_owned(),
            vec![],
            b"",
        ),
        (
            "DELETE",
            format!("{ARN_PATH}?tagKeys=b&tagKeys=a&tagKeys=a-b&tagKeys=a%3Ab&tagKeys=a%20b&tagKeys=x%2Fy%2Bz%3D%40"),
            vec![],
            b"",
        ),
        (
            "GET",
            "/2025-09-09/microvms?nextToken=tok%2B%2F%3D%3A~%20en%20%C3%BC%26x%3Dy&maxResults=5&imageVersion=&flag"
                .to_owned(),
            vec![],
            b"",
        ),
        (
            "GET",
            "/2025-09-09/microvm-images?nameFilter=my%20image%2A%3F%23%5B%5D%21%24%27%28%29".to_owned(),
            vec![],
            b"",
        ),
        (
            "POST",
            "/2025-09-09/microvms/mvm-1/suspend".to_owned(),
            vec![("content-length", "0")],
            b"",
        ),
        (
            "POST",
            "/2025-09-09/microvms".to_owned(),
            vec![("content-type", "application/json")],
            JSON,
        ),
        (
            "DELETE",
            "/2025-09-09/microvms/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Amicrovm%2Fmvm-1"
                .to_owned(),
            vec![],
            b"",
        ),
        (
            "GET",
            "/2025-09-09/microvm-images/img/versions/1.2/builds/b-1%202~x".to_owned(),
            // Runs of spaces collapse. (Tabs: botocore and the JS SDK collapse them too,
            // aws-sigv4 keeps them; we follow botocore.)
            vec![("x-custom", "  a   b  c  "), ("X-Multi", "1"), ("x-multi", " 2 ")],
            b"",
        ),
        // Keys where "k=v" string order differs from (key, value) order.
        (
            "GET",
            "/2025-09-09/microvms?a-b=1&a=2&a%3Ab=3&a=1".to_owned(),
            vec![],
            b"",
        ),
        // The Rust SDK keeps the trailing slash of a path ending in `/.`; botocore does not.
        ("GET", "/2025-09-09/microvms/.".to_owned(), vec![], b""),
        ("GET", "/2025-09-09/microvms/a/..".to_owned(), vec![], b""),
    ];
    for token in [None, Some(TOKEN)] {
        for (method, target, headers, body) in &cases {
            let w = aws_sign(
                method,
                target,
                headers,
                body,
                Opts {
                    token,
                    ..Opts::default()
                },
            );
            let v = w
                .verify()
                .unwrap_or_else(|e| panic!("{method} {target}: {e:?}"));
            assert_eq!(v.access_key_id, AKID);
            assert_eq!(v.region, "us-east-1");
            assert_eq!(v.date, "20251129");
            assert_eq!(v.request_time, t0());
            assert_eq!(v.session_token.as_deref(), token);
            assert!(v.payload_signed);
            assert_eq!(
                v.signed_headers
                    .contains(&"x-amz-security-token".to_owned()),
                token.is_some()
            );
        }
    }
}

#[test]
fn checksum_header_and_unsigned_payload() {
    let w = aws_sign(
        "POST",
        "/2025-09-09/microvms",
        &[("content-type", "application/json")],
        JSON,
        Opts {
            checksum_header: true,
            ..Opts::default()
        },
    );
    assert!(w.verify().unwrap().payload_signed);
    let mut t = w.clone();
    t.body.push(b' ');
    assert_eq!(err_code(t.verify()), "InvalidSignatureException");
    assert_eq!(t.verify().unwrap_err(), SigV4Error::PayloadHashMismatch);

    let w = aws_sign(
        "POST",
        "/2025-09-09/microvms",
        &[],
        JSON,
        Opts {
            checksum_header: true,
            unsigned_payload: true,
            ..Opts::default()
        },
    );
    let v = w.verify().unwrap();
    assert!(!v.payload_signed);
}

#[test]
fn clock_window() {
    let w = post_json();
    let min = |m: u64| Duration::from_secs(m * 60);
    assert!(w.verify_with(&keys(), t0() + min(15)).is_ok());
    assert!(w.verify_with(&keys(), t0() - min(15)).is_ok());

    let e = w.verify_with(&keys(), t0() + min(16)).unwrap_err();
    assert_eq!(e.error_code(), "InvalidSignatureException");
    assert_eq!(
        e.to_string(),
        "Signature expired: 20251129T123456Z is now earlier than 20251129T123556Z \
         (20251129T125056Z - 15 min.)"
    );
    let e = w.verify_with(&keys(), t0() - min(16)).unwrap_err();
    assert_eq!(e.error_code(), "InvalidSignatureException");
    assert!(
        e.to_string().starts_with("Signature not yet current:"),
        "{e}"
    );
}

#[test]
fn scope_date_must_match_x_amz_date() {
    // Signed at 23:59:59, X-Amz-Date moved to the next day.
    let late = SystemTime::UNIX_EPOCH
        + Duration::from_secs(parse_amz_date("20251129T235959Z").unwrap() as u64);
    let mut w = aws_sign(
        "GET",
        ARN_PATH,
        &[],
        b"",
        Opts {
            time: late,
            ..Opts::default()
        },
    );
    w.set_header("x-amz-date", "20251130T000001Z");
    let e = w.verify_with(&keys(), late).unwrap_err();
    assert!(matches!(e, SigV4Error::WrongScope(_)), "{e:?}");
    assert_eq!(e.error_code(), "InvalidSignatureException");

    // Same day, different time: covered by the signature.
    let mut w = post_json();
    w.set_header("x-amz-date", "20251129T123457Z");
    assert_eq!(w.verify().unwrap_err(), SigV4Error::SignatureMismatch);
}

#[test]
fn wrong_secret_and_unknown_key() {
    let w = post_json();
    let wrong = HashMap::from([(AKID.to_owned(), SecretKey::new("not-the-secret"))]);
    assert_eq!(
        w.verify_with(&wrong, t0()).unwrap_err(),
        SigV4Error::SignatureMismatch
    );
    assert_eq!(
        err_code(w.verify_with(&wrong, t0())),
        "InvalidSignatureException"
    );
    let other = HashMap::from([("AKIDOTHER".to_owned(), SecretKey::new(SECRET))]);
    assert_eq!(
        err_code(w.verify_with(&other, t0())),
        "UnrecognizedClientException"
    );
    // Closures work as key lookups too.
    let hs: Vec<(&str, &[u8])> = w
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let req = Request {
        method: &w.method,
        raw_path: &w.path,
        raw_query: &w.query,
        headers: &hs,
        body: &w.body,
    };
    let revoked = |_: &str| None::<SecretKey>;
    assert_eq!(
        verify(&req, &revoked, t0(), VerifyOptions::new("lambda")).unwrap_err(),
        SigV4Error::UnrecognizedClient
    );
    let lookup = |k: &str| (k == AKID).then(|| SecretKey::from(SECRET));
    assert!(verify(&req, &lookup, t0(), VerifyOptions::new("lambda")).is_ok());
}

#[test]
fn tampering_is_detected() {
    let base = aws_sign(
        "DELETE",
        &format!("{ARN_PATH}?tagKeys=a&tagKeys=b"),
        &[("content-type", "application/json")],
        b"",
        Opts::default(),
    );
    assert!(base.verify().is_ok());
    let mismatch = |w: Wire, what: &str| {
        assert_eq!(
            w.verify().unwrap_err(),
            SigV4Error::SignatureMismatch,
            "{what}"
        )
    };

    let mut w = base.clone();
    w.body = b"{}".to_vec();
    mismatch(w, "body");
    let mut w = post_json();
    w.body[10] ^= 1;
    mismatch(w, "json body");
    let mut w = base.clone();
    w.path = w.path.replace("my-img", "my-imh");
    mismatch(w, "path");
    let mut w = base.clone();
    w.path = w.path.replace("%3Amy-img", "%3amy-img");
    mismatch(w, "path escape case");
    let mut w = base.clone();
    w.path = w.path.replace("%3Amy-img", "/my-img");
    mismatch(w, "path escape decoded");
    let mut w = base.clone();
    w.method = "GET".into();
    mismatch(w, "method");
    let mut w = base.clone();
    w.query = "tagKeys=a".into();
    mismatch(w, "query dropped key");
    let mut w = base.clone();
    w.query = "tagKeys=a&tagKeys=c".into();
    mismatch(w, "query value");
    let mut w = base.clone();
    w.query = "tagKeys=a&tagKeys=b&tagKeys=b".into();
    mismatch(w, "query repeated");
    let mut w = base.clone();
    w.set_header("content-type", "text/plain");
    mismatch(w, "signed header value");
    let mut w = base.clone();
    w.set_header("host", "127.0.0.1:9001");
    mismatch(w, "host");

    // Unsigned headers may change freely; reordering and repeating the query is fine.
    let mut w = base.clone();
    w.headers.push(("User-Agent".into(), "curl".into()));
    w.query = "tagKeys=b&tagKeys=a".into();
    assert!(w.verify().is_ok());

    // A signed header that disappeared.
    let mut w = base.clone();
    w.remove_header("content-type");
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");
}

#[test]
fn session_token_must_be_signed() {
    let mut w = post_json();
    w.headers
        .push(("X-Amz-Security-Token".into(), TOKEN.into()));
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");
}

#[test]
fn host_must_be_signed() {
    // Hand-signed (the reference signer always signs host).
    let mut w = post_json();
    w.remove_header("authorization");
    let hs: Vec<(&str, &[u8])> = w
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let req = Request {
        method: &w.method,
        raw_path: &w.path,
        raw_query: &w.query,
        headers: &hs,
        body: &w.body,
    };
    let secret = SecretKey::new(SECRET);
    let auth = hearth_sigv4::sign(
        &req,
        AKID,
        &secret,
        "us-east-1",
        "lambda",
        &["X-Amz-Date", "content-type"],
    )
    .unwrap();
    let mut w2 = w.clone();
    w2.headers.push(("Authorization".into(), auth.into()));
    let e = w2.verify().unwrap_err();
    assert_eq!(e.error_code(), "IncompleteSignatureException");
    assert_eq!(e.to_string(), "'Host' must be a signed header.");

    // The same hand signer with host included verifies (and matches the reference).
    let auth = hearth_sigv4::sign(
        &req,
        AKID,
        &secret,
        "us-east-1",
        "lambda",
        &[
            "host",
            "X-Amz-Date",
            "content-type",
            "content-length",
            "x-amz-user-agent",
        ],
    )
    .unwrap();
    let reference = post_json();
    assert_eq!(auth, reference.header("authorization"));
}

#[test]
fn wrong_service_in_scope() {
    let w = aws_sign(
        "GET",
        ARN_PATH,
        &[],
        b"",
        Opts {
            service: "execute-api",
            ..Opts::default()
        },
    );
    let e = w.verify().unwrap_err();
    assert!(matches!(e, SigV4Error::WrongScope(_)), "{e:?}");
    assert_eq!(e.error_code(), "InvalidSignatureException");
    assert_eq!(
        e.to_string(),
        "Credential should be scoped to correct service: 'lambda'."
    );
}

#[test]
fn missing_and_malformed_headers() {
    let base = post_json();
    let auth = base.header("authorization");

    let mut w = base.clone();
    w.remove_header("authorization");
    assert_eq!(err_code(w.verify()), "MissingAuthenticationTokenException");

    let mut w = base.clone();
    w.remove_header("x-amz-date");
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");

    let mut w = base.clone();
    w.set_header("x-amz-date", "2025-11-29T12:34:56Z");
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");

    for bad in [
        auth.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
        auth.replace("Credential=", "Cred="),
        auth.replace("/aws4_request", "/aws4"),
        auth.replace(", Signature=", ", Sig="),
        auth[..auth.len() - 1].to_owned(),
        "Bearer abc".to_owned(),
        String::new(),
    ] {
        let mut w = base.clone();
        w.set_header("authorization", &bad);
        assert_eq!(
            err_code(w.verify()),
            "IncompleteSignatureException",
            "{bad}"
        );
    }

    // Commas without spaces, extra spaces and upper-case hex are still accepted.
    for ok in [auth.replace(", ", ","), auth.replace(", ", " ,  "), {
        let (head, sig) = auth.split_at(auth.len() - 64);
        format!("{head}{}", sig.to_uppercase())
    }] {
        let mut w = base.clone();
        w.set_header("authorization", &ok);
        w.verify().unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }

    // Repeated Authorization.
    let mut w = base.clone();
    w.headers
        .push(("Authorization".into(), auth.clone().into()));
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");
}

#[test]
fn oversized_inputs_are_rejected() {
    let base = post_json();
    let auth = base.header("authorization");

    let mut w = base.clone();
    w.set_header(
        "authorization",
        format!("{auth}{}", " ".repeat(MAX_AUTHORIZATION_LEN)),
    );
    let e = w.verify().unwrap_err();
    assert_eq!(e.error_code(), "IncompleteSignatureException");

    let mut w = base.clone();
    for i in 0..300 {
        w.headers.push((format!("x-pad-{i}"), "x".into()));
    }
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");

    let mut w = base.clone();
    w.path = format!("/{}", "a".repeat(10_000));
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");

    let mut w = base.clone();
    w.set_header("content-type", "x".repeat(20_000));
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");
}

#[test]
fn messages_do_not_leak_the_expected_signature() {
    let w = post_json();
    let auth = &w.header("authorization");
    let good_sig = &auth[auth.len() - 64..];
    let mut t = w.clone();
    let forged = auth.replace(good_sig, &"0".repeat(64));
    t.set_header("authorization", &forged);
    let e = t.verify().unwrap_err();
    assert_eq!(e, SigV4Error::SignatureMismatch);
    let text = format!("{e} {e:?}");
    assert!(!text.contains(good_sig));
    assert!(!text.contains("POST\n"));
    assert!(!text.contains(SECRET));
}

#[test]
fn a_257th_query_parameter_is_refused_not_ignored() {
    // 256 parameters, signed: fine.
    let query: Vec<String> = (0..hearth_sigv4::MAX_QUERY_PARAMS)
        .map(|i| format!("p{i:03}=v"))
        .collect();
    let query = query.join("&");
    let w = aws_sign(
        "GET",
        &format!("/2025-09-09/microvms?{query}"),
        &[],
        b"",
        Opts::default(),
    );
    w.verify().unwrap();
    // The 257th appended after signing must not ride along unsigned.
    let mut t = w.clone();
    t.query.push_str("&maxResults=50");
    let e = t.verify().unwrap_err();
    assert_eq!(e.error_code(), "IncompleteSignatureException", "{e:?}");
    assert!(e.to_string().contains("256"), "{e}");
    // Nor may a client sign 257 parameters: the limit is a refusal.
    let w = aws_sign(
        "GET",
        &format!("/2025-09-09/microvms?{query}&maxResults=50"),
        &[],
        b"",
        Opts::default(),
    );
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");
    // Empty pieces (`&&`) are not parameters, on either side.
    let mut t = aws_sign(
        "GET",
        &format!("/2025-09-09/microvms?{query}"),
        &[],
        b"",
        Opts::default(),
    );
    t.query.push_str("&&");
    t.verify().unwrap();
}

#[test]
fn obs_text_header_values_are_signed_as_raw_bytes() {
    // Signed by aws-sigv4 over UTF-8 text: every byte of "é", "ÿ", "€" and the
    // no-break space is obs-text (0x80-0xFF) on the wire.
    let value = "  caf\u{e9}  \u{ff}\u{a0}x \u{20ac} ";
    let w = aws_sign(
        "GET",
        "/2025-09-09/microvms",
        &[("x-obs", value)],
        b"",
        Opts::default(),
    );
    w.verify().unwrap();
    let raw = value.as_bytes().to_vec();
    for (i, &b) in raw.iter().enumerate().filter(|(_, b)| **b >= 0x80) {
        for new in [b ^ 1, 0xff, b'?'] {
            if new == b {
                continue;
            }
            let mut t = w.clone();
            let mut tampered = raw.clone();
            tampered[i] = new;
            t.set_header("x-obs", &tampered);
            assert_eq!(
                t.verify().unwrap_err(),
                SigV4Error::SignatureMismatch,
                "byte {i}: {b:#x} -> {new:#x}"
            );
        }
    }

    // Bytes that are not UTF-8 at all, signed by hearth_sigv4::sign over the raw
    // bytes (aws-sigv4 takes header values as text): trimmed and collapsed on the
    // bytes, 0xA0 and 0x85 are not whitespace.
    let raw: &[u8] = b" \t\xff\xfe  a\xe9\t\tb\xa0\x85 ";
    let mut w = aws_sign("GET", "/2025-09-09/microvms", &[], b"", Opts::default());
    w.remove_header("authorization");
    w.headers.push(("X-Raw".into(), raw.to_vec()));
    let hs: Vec<(&str, &[u8])> = w
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let req = Request {
        method: &w.method,
        raw_path: &w.path,
        raw_query: &w.query,
        headers: &hs,
        body: &w.body,
    };
    let names = ["host", "x-amz-date", "x-raw"];
    let auth = hearth_sigv4::sign(
        &req,
        AKID,
        &SecretKey::new(SECRET),
        "us-east-1",
        "lambda",
        &names,
    )
    .unwrap();
    let creq = hearth_sigv4::canonical_request(
        &req,
        &names,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    .unwrap();
    let line: &[u8] = b"\nx-raw:\xff\xfe a\xe9 b\xa0\x85\n";
    assert!(
        creq.windows(line.len()).any(|w| w == line),
        "{}",
        String::from_utf8_lossy(&creq)
    );
    w.headers.push(("Authorization".into(), auth.into()));
    w.verify().unwrap();
    // Spacing is not signed: a different run of spaces and tabs verifies.
    let mut t = w.clone();
    t.set_header("x-raw", b"\xff\xfe a\xe9 \t b\xa0\x85");
    t.verify().unwrap();
    // Any other byte is.
    for i in 0..raw.len() {
        if raw[i] == b' ' || raw[i] == b'\t' {
            continue;
        }
        let mut tampered = raw.to_vec();
        tampered[i] ^= 1;
        let mut t = w.clone();
        t.set_header("x-raw", &tampered);
        assert_eq!(
            t.verify().unwrap_err(),
            SigV4Error::SignatureMismatch,
            "byte {i}"
        );
    }
    // Control bytes other than tab have no place in a signed header value.
    for bad in [&b"a\nb"[..], b"a\rb", b"a\0b", b"a\x7fb"] {
        let mut t = w.clone();
        t.set_header("x-raw", bad);
        assert_eq!(err_code(t.verify()), "IncompleteSignatureException");
    }
}

#[test]
fn the_scope_region_must_be_a_region_name() {
    for region in [
        "us-east-1",
        "eu-central-2",
        "us-gov-west-1",
        "ap-southeast-5",
        "cn-north-1",
        "il-central-1",
        "us-isob-east-1",
    ] {
        let w = aws_sign(
            "GET",
            ARN_PATH,
            &[],
            b"",
            Opts {
                region,
                ..Opts::default()
            },
        );
        let v = w.verify().unwrap_or_else(|e| panic!("{region}: {e:?}"));
        assert_eq!(v.region, region);
    }
    for region in [
        "us-east-1:123456789012",
        "evil:thing",
        "local",
        "US-EAST-1",
        "us-east",
        "us-east-123",
        "us_east_1",
        "u-east-1",
        "use-east-1",
        "us--east-1",
        "us-east-1-",
        "-us-east-1",
        "us-1",
        "us-a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-1",
    ] {
        let w = aws_sign(
            "GET",
            ARN_PATH,
            &[],
            b"",
            Opts {
                region,
                ..Opts::default()
            },
        );
        let e = w.verify().unwrap_err();
        assert_eq!(
            e,
            SigV4Error::WrongScope("Credential should be scoped to a valid region.".into()),
            "{region}"
        );
        assert_eq!(e.error_code(), "InvalidSignatureException");
    }
    // Not even ASCII: the Authorization header itself is malformed.
    let w = aws_sign(
        "GET",
        ARN_PATH,
        &[],
        b"",
        Opts {
            region: "us-east-\u{661}",
            ..Opts::default()
        },
    );
    assert_eq!(err_code(w.verify()), "IncompleteSignatureException");
}

#[test]
fn the_server_can_require_its_own_region() {
    let opts = VerifyOptions::new("lambda").with_region("us-east-1");
    let w = post_json();
    verify_opts(&w, opts).unwrap();
    let w = aws_sign(
        "GET",
        ARN_PATH,
        &[],
        b"",
        Opts {
            region: "eu-west-1",
            ..Opts::default()
        },
    );
    assert_eq!(w.verify().unwrap().region, "eu-west-1");
    let e = verify_opts(&w, opts).unwrap_err();
    assert_eq!(
        e,
        SigV4Error::WrongScope(
            "Credential should be scoped to region 'us-east-1', not 'eu-west-1'.".into()
        )
    );
    assert_eq!(e.error_code(), "InvalidSignatureException");
}

fn verify_opts(w: &Wire, opts: VerifyOptions<'_>) -> Result<Verified, SigV4Error> {
    let hs = w.header_slices();
    let req = Request {
        method: &w.method,
        raw_path: &w.path,
        raw_query: &w.query,
        headers: &hs,
        body: &w.body,
    };
    verify(&req, &keys(), t0(), opts)
}

fn precheck_wire<'a>(
    w: &Wire,
    hs: &'a [(&'a str, &'a [u8])],
    now: SystemTime,
) -> Result<hearth_sigv4::Authorization<'a>, SigV4Error> {
    precheck(
        &w.method,
        &w.path,
        &w.query,
        hs,
        now,
        VerifyOptions::new("lambda").with_region("us-east-1"),
    )
}

#[test]
fn precheck_refuses_from_the_head_alone() {
    let base = post_json();
    let hs = base.header_slices();
    let auth = precheck_wire(&base, &hs, t0()).unwrap();
    assert_eq!(auth.access_key_id, AKID);
    assert_eq!(auth.region, "us-east-1");
    assert_eq!(auth.service, "lambda");
    assert!(auth.signed_headers.contains(&"content-type"));
    // Neither the body nor the signature is looked at.
    let mut t = base.clone();
    t.body = b"something else entirely".to_vec();
    let auth_value = t.header("authorization");
    let forged = format!("{}{}", &auth_value[..auth_value.len() - 64], "0".repeat(64));
    t.set_header("authorization", forged);
    let hs = t.header_slices();
    precheck_wire(&t, &hs, t0()).unwrap();

    // Everything refusable from the head is refused by precheck, with the error verify
    // gives.
    let min = Duration::from_secs(60);
    let other_region = aws_sign(
        "POST",
        "/2025-09-09/microvms",
        &[],
        b"",
        Opts {
            region: "eu-west-1",
            ..Opts::default()
        },
    );
    let bad_region = aws_sign(
        "POST",
        "/2025-09-09/microvms",
        &[],
        b"",
        Opts {
            region: "us:east",
            ..Opts::default()
        },
    );
    let other_service = aws_sign(
        "POST",
        "/2025-09-09/microvms",
        &[],
        b"",
        Opts {
            service: "s3",
            ..Opts::default()
        },
    );
    let mut cases: Vec<(&str, Wire, SystemTime)> = vec![
        ("other region", other_region, t0()),
        ("invalid region", bad_region, t0()),
        ("other service", other_service, t0()),
        ("expired", base.clone(), t0() + 16 * min),
        ("not yet current", base.clone(), t0() - 16 * min),
    ];
    let mut add = |what: &'static str, f: &dyn Fn(&mut Wire)| {
        let mut w = base.clone();
        f(&mut w);
        cases.push((what, w, t0()));
    };
    add("no authorization", &|w| w.remove_header("authorization"));
    add("bad authorization", &|w| {
        w.set_header("authorization", "AWS4-HMAC-SHA256 Credential=x")
    });
    add("non-ASCII authorization", &|w| {
        w.set_header("authorization", b"AWS4-HMAC-SHA256 \xff")
    });
    add("long authorization", &|w| {
        w.set_header("authorization", "A".repeat(MAX_AUTHORIZATION_LEN + 1))
    });
    add("no date", &|w| w.remove_header("x-amz-date"));
    add("bad date", &|w| {
        w.set_header("x-amz-date", "20251129T123456")
    });
    add("non-ASCII date", &|w| {
        w.set_header("x-amz-date", b"20251129T12345\xe9Z")
    });
    add("other day", &|w| {
        w.set_header("x-amz-date", "20251130T000000Z")
    });
    add("signed header missing", &|w| {
        w.remove_header("content-type")
    });
    add("signed header too long", &|w| {
        w.set_header("content-type", "x".repeat(MAX_HEADER_VALUE_LEN + 1))
    });
    add("signed header with a control byte", &|w| {
        w.set_header(
            "content-type",
            "application/json
x: y",
        )
    });
    add("unsigned session token", &|w| {
        w.headers
            .push(("x-amz-security-token".into(), TOKEN.into()))
    });
    add("too many headers", &|w| {
        for i in 0..MAX_HEADERS {
            w.headers.push((format!("x-pad-{i}"), b"x".to_vec()));
        }
    });
    add("long path", &|w| {
        w.path = format!("/{}", "a".repeat(MAX_PATH_LEN))
    });
    add("long query", &|w| {
        w.query = format!("a={}", "a".repeat(MAX_QUERY_LEN))
    });
    add("257 parameters", &|w| {
        w.query = vec!["a=b"; MAX_QUERY_PARAMS + 1].join("&")
    });
    add("method not a token", &|w| w.method = "GE T".into());
    add("empty method", &|w| w.method = String::new());
    for (what, w, now) in &cases {
        let hs = w.header_slices();
        let pre = precheck_wire(w, &hs, *now).map(|_| ()).unwrap_err();
        let req = Request {
            method: &w.method,
            raw_path: &w.path,
            raw_query: &w.query,
            headers: &hs,
            body: &w.body,
        };
        let full = verify(
            &req,
            &keys(),
            *now,
            VerifyOptions::new("lambda").with_region("us-east-1"),
        )
        .unwrap_err();
        assert_eq!(pre, full, "{what}");
    }
}

fn verify_declared(w: &Wire) -> Result<DeclaredPayload, SigV4Error> {
    let hs = w.header_slices();
    verify_declared_payload(
        &w.method,
        &w.path,
        &w.query,
        &hs,
        &keys(),
        t0(),
        VerifyOptions::new("lambda").with_region("us-east-1"),
    )
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// An upload as the Rust SDK's signer sends one: `x-amz-content-sha256` signed,
/// its value computed before the body is sent (here: precomputed, or hashed by the
/// signer).
fn upload(body: &[u8], precomputed: Option<&str>, unsigned_payload: bool) -> Wire {
    aws_sign(
        "POST",
        "/hearth/v1/uploads",
        &[
            ("content-type", "application/zip"),
            ("content-length", &body.len().to_string()),
        ],
        body,
        Opts {
            checksum_header: true,
            unsigned_payload,
            precomputed_sha256: precomputed,
            ..Opts::default()
        },
    )
}

#[test]
fn a_declared_payload_hash_is_verified_before_the_body_and_matched_after() {
    let body = b"PK\x03\x04 a zip, not read by the verifier".as_slice();
    let hash = sha256_hex(body);
    for w in [upload(body, Some(&hash), false), upload(body, None, false)] {
        assert_eq!(w.header("x-amz-content-sha256"), hash);
        let d = verify_declared(&w).unwrap();
        assert_eq!(d.verified.access_key_id, AKID);
        assert!(d.verified.payload_signed);
        assert_eq!(hex::encode(d.sha256), hash);
        let mut real = [0u8; 32];
        hex::decode_to_slice(&hash, &mut real).unwrap();
        assert!(d.matches(&real));
        real[31] ^= 1;
        assert!(!d.matches(&real), "another body's hash does not match");
        // The same request, as `verify` sees it with its body, agrees.
        verify(
            &Request {
                method: &w.method,
                raw_path: &w.path,
                raw_query: &w.query,
                headers: &w.header_slices(),
                body,
            },
            &keys(),
            t0(),
            VerifyOptions::new("lambda"),
        )
        .unwrap();
    }
}

#[test]
fn a_declared_payload_hash_must_be_signed_hex_and_the_one_signed() {
    let body = b"data".as_slice();
    let hash = sha256_hex(body);
    let incomplete = |w: &Wire, says: &str| {
        let e = verify_declared(w).unwrap_err();
        assert_eq!(e.error_code(), "IncompleteSignatureException", "{e}");
        assert!(e.to_string().contains(says), "{e}");
    };
    // UNSIGNED-PAYLOAD: refused, saying why.
    incomplete(
        &upload(body, None, true),
        "UNSIGNED-PAYLOAD is not accepted",
    );
    // No header at all (the SDK's default for non-S3 services).
    let mut none = aws_sign("POST", "/hearth/v1/uploads", &[], body, Opts::default());
    incomplete(&none, "requires an x-amz-content-sha256 header");
    // Present but not signed.
    none.headers
        .push(("x-amz-content-sha256".into(), hash.clone().into_bytes()));
    incomplete(&none, "must be a signed header");
    // Not 64 lower-case hex digits, though signed as such.
    let upper = hash.to_uppercase();
    incomplete(
        &upload(body, Some(&upper), false),
        "64 lower-case hex digits",
    );
    incomplete(
        &upload(body, Some(&hash[..63]), false),
        "64 lower-case hex digits",
    );
    // Another hash than the one signed: the signature does not match.
    let mut swapped = upload(body, Some(&hash), false);
    swapped.set_header("x-amz-content-sha256", sha256_hex(b"other data"));
    assert_eq!(
        verify_declared(&swapped).unwrap_err(),
        SigV4Error::SignatureMismatch
    );
    // And the head checks still hold: an unknown key.
    let mut w = upload(body, Some(&hash), false);
    let auth = w.header("authorization").replace(AKID, "AKIDUNKNOWN");
    w.set_header("authorization", auth);
    assert_eq!(
        verify_declared(&w).unwrap_err(),
        SigV4Error::UnrecognizedClient
    );
}
