//! Verifies requests recorded from real AWS clients (botocore, the JavaScript SDK v3)
//! talking to a local HTTP server; see `tests/fixtures/gen_*` for how they were made.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_sigv4::{parse_amz_date, verify, Request, SecretKey, SigV4Error, VerifyOptions};
use serde_json::Value;

struct Fixture {
    name: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    session_token: Option<String>,
}

struct FixtureSet {
    now: SystemTime,
    access_key_id: String,
    secret: String,
    requests: Vec<Fixture>,
}

fn load(file: &str) -> FixtureSet {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = |v: &Value| v.as_str().unwrap().to_owned();
    let now = parse_amz_date(v["now"].as_str().unwrap()).unwrap();
    let requests = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Fixture {
            name: s(&r["name"]),
            method: s(&r["method"]),
            target: s(&r["target"]),
            headers: r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (s(&h[0]), s(&h[1])))
                .collect(),
            body: r["body"].as_str().unwrap().as_bytes().to_vec(),
            session_token: r["session_token"].as_str().map(str::to_owned),
        })
        .collect::<Vec<_>>();
    assert!(requests.len() >= 40, "{file}: too few fixtures");
    FixtureSet {
        now: UNIX_EPOCH + Duration::from_secs(now as u64),
        access_key_id: s(&v["access_key_id"]),
        secret: s(&v["secret_access_key"]),
        requests,
    }
}

fn check(
    f: &Fixture,
    target: &str,
    body: &[u8],
    headers: &[(String, String)],
    keys: &HashMap<String, SecretKey>,
    now: SystemTime,
) -> Result<hearth_sigv4::Verified, SigV4Error> {
    let hs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let (raw_path, raw_query) = Request::split_target(target);
    let req = Request {
        method: &f.method,
        raw_path,
        raw_query,
        headers: &hs,
        body,
    };
    verify(&req, keys, now, VerifyOptions::new("lambda"))
}

fn run(file: &str) {
    let set = load(file);
    let keys: HashMap<String, SecretKey> = HashMap::from([(
        set.access_key_id.clone(),
        SecretKey::new(set.secret.clone()),
    )]);
    let wrong: HashMap<String, SecretKey> = HashMap::from([(
        set.access_key_id.clone(),
        SecretKey::new(format!("{}x", set.secret)),
    )]);
    for f in &set.requests {
        let ok = check(f, &f.target, &f.body, &f.headers, &keys, set.now)
            .unwrap_or_else(|e| panic!("{file} {}: {e:?}", f.name));
        assert_eq!(ok.access_key_id, set.access_key_id, "{}", f.name);
        assert_eq!(ok.region, "us-east-1");
        assert_eq!(ok.session_token, f.session_token, "{}", f.name);
        assert!(ok.payload_signed);
        assert!(ok.signed_headers.iter().any(|h| h == "host"));

        let code = |r: Result<_, SigV4Error>| r.map(|_| ()).unwrap_err().error_code();
        assert_eq!(
            code(check(f, &f.target, &f.body, &f.headers, &wrong, set.now)),
            "InvalidSignatureException",
            "{}: wrong secret",
            f.name
        );
        // One more byte in the path (before any query), or in the body.
        let (p, q) = Request::split_target(&f.target);
        let tampered = if q.is_empty() {
            format!("{p}x")
        } else {
            format!("{p}x?{q}")
        };
        assert_eq!(
            code(check(f, &tampered, &f.body, &f.headers, &keys, set.now)),
            "InvalidSignatureException",
            "{}: tampered path",
            f.name
        );
        let tampered = format!("{p}?{q}&x=1");
        assert_eq!(
            code(check(f, &tampered, &f.body, &f.headers, &keys, set.now)),
            "InvalidSignatureException",
            "{}: tampered query",
            f.name
        );
        let mut body = f.body.clone();
        body.push(b' ');
        let r = check(f, &f.target, &body, &f.headers, &keys, set.now);
        // Clients that send x-amz-content-sha256 get the more specific payload error.
        assert!(
            matches!(
                r,
                Err(SigV4Error::SignatureMismatch | SigV4Error::PayloadHashMismatch)
            ),
            "{}: tampered body {r:?}",
            f.name
        );
        let stale = set.now + Duration::from_secs(16 * 60);
        assert!(
            matches!(
                check(f, &f.target, &f.body, &f.headers, &keys, stale),
                Err(SigV4Error::Expired { .. })
            ),
            "{}: stale",
            f.name
        );
        // Every signed header is really covered.
        for h in &ok.signed_headers {
            let headers: Vec<(String, String)> = f
                .headers
                .iter()
                .map(|(k, v)| {
                    if k.eq_ignore_ascii_case(h) {
                        (k.clone(), format!("{v}0"))
                    } else {
                        (k.clone(), v.clone())
                    }
                })
                .collect();
            let r = check(f, &f.target, &f.body, &headers, &keys, set.now);
            assert!(r.is_err(), "{}: tampered {h}", f.name);
        }
    }
}

#[test]
fn botocore_requests_verify() {
    run("botocore.json");
}

#[test]
fn js_sdk_requests_verify() {
    run("js_sdk.json");
}

#[test]
fn fixtures_cover_the_interesting_shapes() {
    let set = load("botocore.json");
    let targets: Vec<&str> = set.requests.iter().map(|f| f.target.as_str()).collect();
    assert!(targets.iter().any(|t| t.contains("%3Amicrovm%2Fmvm-")));
    assert!(targets
        .iter()
        .any(|t| t.contains("tagKeys=a%3Ab&tagKeys=a%20b")));
    assert!(targets.iter().any(|t| t.starts_with("/hearth/api/")));
    assert!(set
        .requests
        .iter()
        .any(|f| f.method == "POST" && f.body.is_empty()));
    // botocore sends no x-amz-content-sha256 for this service; the JS SDK does.
    let has = |set: &FixtureSet| {
        set.requests.iter().all(|f| {
            f.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-amz-content-sha256"))
        })
    };
    assert!(!has(&set));
    assert!(has(&load("js_sdk.json")));
}
