//! Property tests: the canonicalisation functions never panic and round-trip, `verify`
//! never panics on arbitrary input, and any single-byte change to the body or path of a
//! request signed by the official `aws-sigv4` crate makes it invalid.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use hearth_sigv4::{
    canonical_query, canonical_uri, parse_amz_date, percent_decode, uri_encode, verify, Request,
    SecretKey, SigV4Error, VerifyOptions,
};
use proptest::prelude::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(parse_amz_date("20251129T123456Z").unwrap() as u64)
}

fn is_canonical_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~%".contains(c)
}

fn decode_str(s: &str) -> Vec<u8> {
    percent_decode(s)
}

/// A path label as the clients send it: every byte outside the unreserved set encoded.
fn label() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..24).prop_filter("dot segments are normalised away", |b| {
        b.as_slice() != b"." && b.as_slice() != b".."
    })
}

/// Signs with aws-sigv4 and returns (wire headers, raw path, raw query, body).
fn aws_signed(method: &str, path: &str, query: &str, body: &[u8]) -> Vec<(String, String)> {
    let identity = Credentials::new(AKID, SECRET, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("lambda")
        .time(t0())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = if query.is_empty() {
        format!("http://localhost:9000{path}")
    } else {
        format!("http://localhost:9000{path}?{query}")
    };
    let headers = [("content-type", "application/json")];
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut out = vec![
        ("Host".to_owned(), "localhost:9000".to_owned()),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    out.extend(
        instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    out
}

fn check(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<hearth_sigv4::Verified, SigV4Error> {
    let hs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let keys = HashMap::from([(AKID.to_owned(), SecretKey::new(SECRET))]);
    verify(
        &Request {
            method,
            raw_path: path,
            raw_query: query,
            headers: &hs,
            body,
        },
        &keys,
        t0(),
        VerifyOptions::new("lambda"),
    )
}

proptest! {
    #[test]
    fn uri_encode_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let enc = uri_encode(&bytes);
        prop_assert!(enc.chars().all(is_canonical_char));
        prop_assert_eq!(percent_decode(&enc), bytes);
    }

    #[test]
    fn canonical_query_never_panics_and_is_idempotent(q in ".{0,200}") {
        let c = canonical_query(&q);
        prop_assert!(c.chars().all(|c| is_canonical_char(c) || c == '=' || c == '&'));
        prop_assert_eq!(canonical_query(&c), c);
    }

    #[test]
    fn canonical_query_sorts_encoded_pairs(
        pairs in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..12)),
            0..12,
        ),
        rotate in 0usize..12,
    ) {
        let mut encoded: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (uri_encode(k), uri_encode(v))).collect();
        // Any wire order gives the same canonical form.
        let mut wire = encoded.clone();
        if !wire.is_empty() {
            let n = rotate % wire.len();
            wire.rotate_left(n);
        }
        let raw: Vec<String> = wire.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let raw = raw.join("&");
        // Sorted as (key, value) tuples, not as "key=value" strings ("=" < "%7F=").
        encoded.sort();
        let want: Vec<String> = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect();
        prop_assert_eq!(canonical_query(&raw), want.join("&"));
        // Decoding the canonical form gives back the original byte strings.
        for part in canonical_query(&raw).split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap();
            prop_assert!(pairs.iter().any(|(pk, pv)| *pk == decode_str(k) && *pv == decode_str(v)));
        }
    }

    #[test]
    fn canonical_uri_never_panics(p in ".{0,200}") {
        let c = canonical_uri(&p);
        prop_assert!(c.starts_with('/') || !p.starts_with('/'));
        prop_assert!(c.chars().all(|c| is_canonical_char(c) || c == '/'));
    }

    #[test]
    fn canonical_uri_is_the_labels_encoded_twice(labels in prop::collection::vec(label(), 0..6)) {
        let raw: String = labels.iter().map(|l| format!("/{}", uri_encode(l))).collect();
        let c = canonical_uri(&raw);
        if labels.is_empty() {
            prop_assert_eq!(c, "/");
        } else {
            let segs: Vec<&str> = c.split('/').skip(1).collect();
            prop_assert_eq!(segs.len(), labels.len());
            for (seg, l) in segs.iter().zip(&labels) {
                prop_assert_eq!(seg.to_string(), uri_encode(uri_encode(l).as_bytes()));
                let once = String::from_utf8(percent_decode(seg)).unwrap();
                prop_assert_eq!(&percent_decode(&once), l);
            }
        }
    }

    #[test]
    fn verify_never_panics(
        method in "[A-Z]{0,8}",
        path in ".{0,80}",
        query in ".{0,80}",
        auth in ".{0,300}",
        date in "[0-9TZ]{0,20}",
        extra in prop::collection::vec(("[a-zA-Z-]{1,12}", ".{0,20}"), 0..6),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut headers = vec![
            ("Authorization".to_owned(), format!("AWS4-HMAC-SHA256 {auth}")),
            ("X-Amz-Date".to_owned(), date),
            ("Host".to_owned(), "h".to_owned()),
        ];
        headers.extend(extra);
        let r = check(&method, &path, &query, &headers, &body);
        prop_assert!(r.is_err());
        let e = r.unwrap_err();
        prop_assert_eq!(e.http_status(), 403);
        let r = check(&method, &path, &query, &headers[1..], &body);
        prop_assert_eq!(r.unwrap_err(), SigV4Error::MissingAuthentication);
    }

    #[test]
    fn any_body_byte_change_invalidates(
        body in prop::collection::vec(any::<u8>(), 1..200),
        idx in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let path = "/2025-09-09/microvms";
        let headers = aws_signed("POST", path, "", &body);
        prop_assert!(check("POST", path, "", &headers, &body).is_ok());
        let mut tampered = body.clone();
        let i = idx.index(tampered.len());
        tampered[i] = tampered[i].wrapping_add(delta);
        prop_assert_eq!(
            check("POST", path, "", &headers, &tampered).unwrap_err(),
            SigV4Error::SignatureMismatch
        );
    }

    #[test]
    fn any_path_byte_change_invalidates(
        labels in prop::collection::vec(label(), 1..5),
        idx in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            b"/%.-_~aAzZ09:+ %2F%3A".to_vec()
        ),
        query_keys in prop::collection::vec("[a-zA-Z]{1,6}", 0..3),
    ) {
        let path: String = labels.iter().map(|l| format!("/{}", uri_encode(l))).collect();
        let query: String = query_keys
            .iter()
            .map(|k| format!("{k}={}", uri_encode(k.as_bytes())))
            .collect::<Vec<_>>()
            .join("&");
        let headers = aws_signed("GET", &path, &query, b"");
        prop_assert!(check("GET", &path, &query, &headers, b"").is_ok());
        let mut bytes = path.clone().into_bytes();
        let i = idx.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let tampered = String::from_utf8(bytes).unwrap();
        // A change the normalisation undoes ("/a/./b" -> "/a///b") is no change.
        prop_assume!(canonical_uri(&tampered) != canonical_uri(&path));
        prop_assert_eq!(
            check("GET", &tampered, &query, &headers, b"").unwrap_err(),
            SigV4Error::SignatureMismatch
        );
    }
}
