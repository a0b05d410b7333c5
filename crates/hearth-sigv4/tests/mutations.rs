//! Property tests: generated requests (paths of percent-encoded labels, queries with
//! repeated keys and reserved characters, header sets with obs-text values) signed by
//! the official `aws-sigv4` crate verify; any single mutation a man in the middle could
//! make to what the signature covers (a query parameter changed, added, removed or
//! duplicated, a byte of a signed header value changed, a 257th parameter appended) is
//! refused by `verify`. Path mutations that the canonical URI normalises away (dot and
//! empty segments) are the router's to refuse: see hearth-api-model's
//! `tests/signed_requests.rs`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use hearth_sigv4::{
    parse_amz_date, percent_decode, uri_encode, verify, Request, SecretKey, SigV4Error, Verified,
    VerifyOptions, MAX_QUERY_PARAMS,
};
use proptest::prelude::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const HOST: &str = "localhost:9000";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(parse_amz_date("20251129T123456Z").unwrap() as u64)
}

/// A request as the server receives it.
#[derive(Debug, Clone)]
struct Wire {
    method: String,
    path: String,
    /// `(encoded key, encoded value)` pairs, joined with `&` on the wire.
    query: Vec<(String, String)>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Wire {
    fn raw_query(&self) -> String {
        self.query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn verify(&self) -> Result<Verified, SigV4Error> {
        let hs: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let raw_query = self.raw_query();
        let keys = HashMap::from([(AKID.to_owned(), SecretKey::new(SECRET))]);
        verify(
            &Request {
                method: &self.method,
                raw_path: &self.path,
                raw_query: &raw_query,
                headers: &hs,
                body: &self.body,
            },
            &keys,
            t0(),
            VerifyOptions::new("lambda").with_region("us-east-1"),
        )
    }
}

/// What a generated request is made of, before signing.
#[derive(Debug, Clone)]
struct Spec {
    method: &'static str,
    labels: Vec<Vec<u8>>,
    query: Vec<(Vec<u8>, Vec<u8>)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Signs `spec` with aws-sigv4 (the Rust SDK's signer) and renders it as received.
fn aws_signed(spec: &Spec) -> Wire {
    let path: String = std::iter::once("/2025-09-09".to_owned())
        .chain(spec.labels.iter().map(|l| format!("/{}", uri_encode(l))))
        .collect();
    let query: Vec<(String, String)> = spec
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    let mut w = Wire {
        method: spec.method.to_owned(),
        path,
        query,
        headers: vec![("Host".to_owned(), HOST.as_bytes().to_vec())],
        body: spec.body.clone(),
    };
    let raw_query = w.raw_query();
    let url = if raw_query.is_empty() {
        format!("http://{HOST}{}", w.path)
    } else {
        format!("http://{HOST}{}?{raw_query}", w.path)
    };
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
    let signable = SignableRequest::new(
        spec.method,
        url,
        spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&spec.body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    w.headers.extend(
        spec.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
    );
    w.headers.extend(
        instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec())),
    );
    w
}

/// Bytes biased towards the characters that matter to encoding: reserved characters,
/// `%`, `+`, space, dots, and any byte (UTF-8 or not).
fn text_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"&=+%/?#:;,@!$'()*[] ~.-_aZ09".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..max)
}

/// Like [`text_bytes`], but UTF-8: the SDKs build queries from strings (and aws-sigv4
/// decodes the query it is given as UTF-8, lossily).
fn text_utf8(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let ch = prop_oneof![
        4 => prop::sample::select("&=+%/?#:;,@!$'()*[] ~.-_aZ09".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ];
    prop::collection::vec(ch, 0..max).prop_map(|c| c.into_iter().collect::<String>().into_bytes())
}

fn label() -> impl Strategy<Value = Vec<u8>> {
    text_bytes(12).prop_filter("a label is a non-empty, non-dot segment", |b| {
        !b.is_empty() && b.as_slice() != b"." && b.as_slice() != b".."
    })
}

fn query_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            b"maxResults".to_vec(),
            b"nextToken".to_vec(),
            b"tagKeys".to_vec(),
            b"a".to_vec(),
        ]),
        1 => text_utf8(8),
    ]
}

/// A header value as text (aws-sigv4 signs text): visible ASCII, runs of spaces, and
/// non-ASCII characters whose UTF-8 bytes are all obs-text (0x80-0xFF). No tabs: the
/// JavaScript SDK and botocore collapse them, aws-sigv4 does not.
fn header_value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[!-~]{1,6}",
        2 => " {1,3}",
        2 => prop::sample::select(vec!["\u{e9}", "\u{ff}", "\u{a0}", "\u{20ac}", "\u{85}", "\u{fe0f}"])
            .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 1..6).prop_map(|p| p.concat())
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
        prop::collection::vec(label(), 0..4),
        prop::collection::vec((query_key(), text_utf8(10)), 0..8),
        prop::collection::vec(("x-h-[a-c]{1,2}", header_value()), 0..4),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(method, labels, query, headers, body)| Spec {
            method,
            labels,
            query,
            headers,
            body,
        })
}

/// One change to what the signature covers.
#[derive(Debug, Clone)]
enum Mutation {
    ChangeQueryValue(prop::sample::Index, Vec<u8>),
    ChangeQueryKey(prop::sample::Index, Vec<u8>),
    AddQueryParam(prop::sample::Index, Vec<u8>, Vec<u8>),
    RemoveQueryParam(prop::sample::Index),
    DuplicateQueryParam(prop::sample::Index, prop::sample::Index),
    ChangeSignedHeaderByte(prop::sample::Index, prop::sample::Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), text_utf8(10)).prop_map(|(i, v)| Mutation::ChangeQueryValue(i, v)),
        (any::<Index>(), query_key()).prop_map(|(i, k)| Mutation::ChangeQueryKey(i, k)),
        (any::<Index>(), query_key(), text_utf8(10))
            .prop_map(|(i, k, v)| Mutation::AddQueryParam(i, k, v)),
        any::<Index>().prop_map(Mutation::RemoveQueryParam),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::DuplicateQueryParam(i, j)),
        (any::<Index>(), any::<Index>(), any::<u8>())
            .prop_map(|(h, i, b)| Mutation::ChangeSignedHeaderByte(h, i, b)),
    ]
}

/// Applies `m` to `w`; `None` when it does not apply (no query parameter to change) or
/// changes nothing the signature covers (a value replaced by one that decodes the same).
fn apply(w: &Wire, m: &Mutation) -> Option<Wire> {
    let mut t = w.clone();
    let decoded = |(k, v): &(String, String)| (percent_decode(k), percent_decode(v));
    match m {
        Mutation::ChangeQueryValue(i, v) => {
            let i = i.index(t.query.len().max(1));
            let pair = t.query.get_mut(i)?;
            if percent_decode(&pair.1) == *v {
                return None;
            }
            pair.1 = uri_encode(v);
        }
        Mutation::ChangeQueryKey(i, k) => {
            let i = i.index(t.query.len().max(1));
            let pair = t.query.get_mut(i)?;
            if percent_decode(&pair.0) == *k {
                return None;
            }
            pair.0 = uri_encode(k);
        }
        Mutation::AddQueryParam(i, k, v) => {
            let i = i.index(t.query.len() + 1);
            t.query.insert(i, (uri_encode(k), uri_encode(v)));
        }
        Mutation::RemoveQueryParam(i) => {
            if t.query.is_empty() {
                return None;
            }
            let i = i.index(t.query.len());
            t.query.remove(i);
        }
        Mutation::DuplicateQueryParam(i, j) => {
            if t.query.is_empty() {
                return None;
            }
            let pair = t.query[i.index(t.query.len())].clone();
            let j = j.index(t.query.len() + 1);
            t.query.insert(j, pair);
        }
        Mutation::ChangeSignedHeaderByte(h, i, b) => {
            // Any header but Authorization is signed (aws-sigv4 signs them all).
            let signed: Vec<usize> = (0..t.headers.len())
                .filter(|&n| !t.headers[n].0.eq_ignore_ascii_case("authorization"))
                .collect();
            let n = signed[h.index(signed.len())];
            let value = &mut t.headers[n].1;
            // A byte the canonical form keeps (not a space or tab), changed to another
            // such byte: the canonical value changes.
            let kept: Vec<usize> = (0..value.len())
                .filter(|&k| value[k] != b' ' && value[k] != b'\t')
                .collect();
            if kept.is_empty() || *b == b' ' || *b == b'\t' {
                return None;
            }
            let k = kept[i.index(kept.len())];
            if value[k] == *b {
                return None;
            }
            value[k] = *b;
        }
    }
    let mut before: Vec<_> = w.query.iter().map(decoded).collect();
    let mut after: Vec<_> = t.query.iter().map(decoded).collect();
    before.sort();
    after.sort();
    let headers_changed = w.headers != t.headers;
    (before != after || headers_changed).then_some(t)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn generated_requests_verify_and_every_mutation_is_refused(
        spec in spec(),
        mutations in prop::collection::vec(mutation(), 4),
    ) {
        let w = aws_signed(&spec);
        let v = w.verify();
        prop_assert!(v.is_ok(), "{:?}: {:?}", w, v);
        for m in &mutations {
            let Some(t) = apply(&w, m) else { continue };
            let r = t.verify();
            match m {
                // A signed header byte may also break the header's syntax
                // (X-Amz-Date, a control byte): any refusal will do.
                Mutation::ChangeSignedHeaderByte(..) => {
                    prop_assert!(r.is_err(), "{:?} on {:?}", m, w)
                }
                _ => prop_assert_eq!(
                    r.map(|_| ()),
                    Err(SigV4Error::SignatureMismatch),
                    "{:?} on {:?}",
                    m,
                    w
                ),
            }
        }
        // Reordering the query (the canonical form is sorted) and adding or changing
        // unsigned headers are not changes to what was signed.
        let mut t = w.clone();
        t.query.reverse();
        t.headers.push(("User-Agent".to_owned(), b"curl/8 \xff".to_vec()));
        prop_assert!(t.verify().is_ok());
    }

    #[test]
    fn a_257th_parameter_is_refused_wherever_it_goes(
        spec in spec(),
        key in query_key(),
        value in text_utf8(10),
        at in any::<prop::sample::Index>(),
    ) {
        let mut spec = spec;
        let mut i = 0;
        while spec.query.len() < MAX_QUERY_PARAMS {
            spec.query.push((format!("pad{i}").into_bytes(), b"x".to_vec()));
            i += 1;
        }
        let w = aws_signed(&spec);
        prop_assert!(w.verify().is_ok());
        let mut t = w.clone();
        let at = at.index(t.query.len() + 1);
        t.query.insert(at, (uri_encode(&key), uri_encode(&value)));
        let e = t.verify().unwrap_err();
        prop_assert_eq!(
            e,
            SigV4Error::Incomplete("Too many query parameters: at most 256 are accepted.")
        );
    }

    /// Header values that are not UTF-8 at all (aws-sigv4 cannot sign them), signed by
    /// `hearth_sigv4::sign` over the raw bytes: they verify, and changing any byte that
    /// is not a space or tab is a signature mismatch.
    #[test]
    fn raw_obs_text_values_are_covered_byte_for_byte(
        value in prop::collection::vec(
            prop_oneof![3 => 0x80u8..=0xff, 1 => Just(b' '), 1 => Just(b'\t'), 2 => 0x21u8..=0x7e],
            1..24,
        ),
        i in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let date = "20251129T123456Z";
        let headers: Vec<(String, Vec<u8>)> = vec![
            ("Host".into(), HOST.into()),
            ("X-Amz-Date".into(), date.into()),
            ("X-Obs".into(), value.clone()),
        ];
        let hs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let req = Request {
            method: "GET",
            raw_path: "/2025-09-09/microvms",
            raw_query: "",
            headers: &hs,
            body: b"",
        };
        let auth = hearth_sigv4::sign(
            &req,
            AKID,
            &SecretKey::new(SECRET),
            "us-east-1",
            "lambda",
            &["host", "x-amz-date", "x-obs"],
        )
        .unwrap();
        let mut w = Wire {
            method: "GET".into(),
            path: "/2025-09-09/microvms".into(),
            query: vec![],
            headers,
            body: vec![],
        };
        w.headers.push(("Authorization".into(), auth.into_bytes()));
        prop_assert!(w.verify().is_ok());
        let k = i.index(value.len());
        let new = value[k].wrapping_add(delta);
        prop_assume!(![b' ', b'\t'].contains(&value[k]) && ![b' ', b'\t'].contains(&new));
        let mut t = w.clone();
        t.headers[2].1[k] = new;
        let r = t.verify();
        if new < 0x20 || new == 0x7f {
            prop_assert_eq!(r.unwrap_err().error_code(), "IncompleteSignatureException");
        } else {
            prop_assert_eq!(r.unwrap_err(), SigV4Error::SignatureMismatch);
        }
    }
}
