//! Property tests across the signature and the model: a request signed with
//! SigV4 (`hearth_sigv4`) and then changed in a way the signature does not
//! see must be refused by routing or input parsing, since the server acts on
//! what they read.
//!
//! - Dot and empty segments inserted in the path keep a valid signature (the
//!   canonical URI is normalised): `Model::route` refuses them.
//! - A single-valued query parameter signed twice verifies in either order
//!   (the canonical query is sorted): `parse_input` refuses it in both.
//! - A 257th query parameter: refused by both `verify` and `parse_input`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hearth_api_model::sample::{sample_request, SampleRequest, AWS_ENCODE_SET};
use hearth_api_model::{
    ConstraintKind, InputError, Location, Model, Operation, RouteError, ShapeKind,
};
use hearth_sigv4::{
    parse_amz_date, sign, verify, Request, SecretKey, SigV4Error, Verified, VerifyOptions,
    MAX_QUERY_PARAMS,
};
use percent_encoding::utf8_percent_encode;
use proptest::prelude::*;
use serde_json::Value;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const DATE: &str = "20251129T123456Z";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(parse_amz_date(DATE).unwrap() as u64)
}

/// A request as the server receives it.
#[derive(Debug, Clone)]
struct Wire {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Wire {
    fn request<'a>(&'a self, hs: &'a [(&'a str, &'a [u8])]) -> Request<'a> {
        Request {
            method: &self.method,
            raw_path: &self.path,
            raw_query: &self.query,
            headers: hs,
            body: &self.body,
        }
    }

    fn header_slices(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }

    /// Signs the request as it stands (every header signed).
    fn signed(mut self) -> Wire {
        let hs = self.header_slices();
        let names: Vec<&str> = hs.iter().map(|(k, _)| *k).collect();
        let auth = sign(
            &self.request(&hs),
            AKID,
            &SecretKey::new(SECRET),
            "us-east-1",
            "lambda",
            &names,
        )
        .unwrap();
        self.headers
            .push(("Authorization".into(), auth.into_bytes()));
        self
    }

    fn verify(&self) -> Result<Verified, SigV4Error> {
        let hs = self.header_slices();
        let keys = HashMap::from([(AKID.to_owned(), SecretKey::new(SECRET))]);
        verify(
            &self.request(&hs),
            &keys,
            now(),
            VerifyOptions::new("lambda").with_region("us-east-1"),
        )
    }

    /// What the server would act on: the route, then the parsed input.
    fn read(&self, m: &Model) -> Result<(String, Value), Refused> {
        let r = m.route(&self.method, &self.path).map_err(Refused::Route)?;
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let input = m
            .parse_input(r.operation, &r.labels, &self.query, &headers, &self.body)
            .map_err(Refused::Input)?;
        Ok((r.operation.name.clone(), input))
    }
}

#[derive(Debug, PartialEq)]
enum Refused {
    Route(RouteError),
    Input(InputError),
}

fn wire(req: &SampleRequest) -> Wire {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("Host".into(), b"localhost:9000".to_vec()),
        ("X-Amz-Date".into(), DATE.into()),
    ];
    if !req.body.is_empty() {
        headers.push(("Content-Type".into(), b"application/json".to_vec()));
    }
    headers.extend(
        req.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
    );
    Wire {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers,
        body: req.body.clone(),
    }
}

fn ops() -> Vec<&'static Operation> {
    Model::get().operations().collect()
}

/// Operations with query members, each with its members' names and whether
/// they are lists.
fn query_ops() -> Vec<(&'static Operation, Vec<(String, bool)>)> {
    let m = Model::get();
    m.operations()
        .filter_map(|op| {
            let st = m.structure(op.input.as_deref()?)?;
            let members: Vec<(String, bool)> = st
                .members
                .iter()
                .filter(|mem| mem.location == Location::QueryString)
                .map(|mem| {
                    let list = matches!(
                        m.shape(&mem.shape).map(|s| &s.kind),
                        Some(ShapeKind::List { .. })
                    );
                    (mem.location_name.clone(), list)
                })
                .collect();
            (!members.is_empty()).then_some((op, members))
        })
        .collect()
}

/// Ways to put a dot or empty segment into a path after segment `at`.
#[derive(Debug, Clone, Copy)]
enum PathMutation {
    /// `/.`: normalised away, the signature still holds.
    Dot,
    /// `/x/..`: normalised away, the signature still holds.
    DotDot,
    /// `//` between two segments: normalised away, the signature still holds.
    Empty,
    /// `%2e`, `%2E%2e`, `.%2E`: left alone by the signature (it covers them
    /// as text) but decoded to `.`/`..` by a router.
    Encoded(&'static str),
    /// A trailing `/` (the signature covers it too).
    Trailing,
}

fn path_mutation() -> impl Strategy<Value = PathMutation> {
    prop_oneof![
        Just(PathMutation::Dot),
        Just(PathMutation::DotDot),
        Just(PathMutation::Empty),
        prop::sample::select(vec!["%2e", "%2E", "%2E%2e", "%2e.", ".%2E"])
            .prop_map(PathMutation::Encoded),
        Just(PathMutation::Trailing),
    ]
}

fn mutate_path(path: &str, at: prop::sample::Index, m: PathMutation, x: &str) -> String {
    let segs: Vec<&str> = path[1..].split('/').collect();
    let at = match m {
        // Between two segments: at the end it would be a trailing `/`, which
        // the signature covers.
        PathMutation::Empty => at.index(segs.len() - 1) + 1,
        _ => at.index(segs.len()) + 1,
    };
    let (head, tail) = segs.split_at(at);
    let insert = match m {
        PathMutation::Dot => vec![".".to_owned()],
        PathMutation::DotDot => vec![x.to_owned(), "..".to_owned()],
        PathMutation::Empty => vec![String::new()],
        PathMutation::Encoded(e) => vec![e.to_owned()],
        PathMutation::Trailing => {
            return format!("{path}/");
        }
    };
    let all: Vec<String> = head
        .iter()
        .map(|s| s.to_string())
        .chain(insert)
        .chain(tail.iter().map(|s| s.to_string()))
        .collect();
    format!("/{}", all.join("/"))
}

fn encoded(s: &str) -> String {
    utf8_percent_encode(s, AWS_ENCODE_SET).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn dot_and_empty_segments_are_refused_by_the_router(
        op in prop::sample::select(ops()),
        full in any::<bool>(),
        at in any::<prop::sample::Index>(),
        mutation in path_mutation(),
        x in "[a-z0-9-]{1,8}",
    ) {
        let m = Model::get();
        let req = sample_request(m, op, full).unwrap();
        let w = wire(&req).signed();
        prop_assert!(w.verify().is_ok());
        let (name, input) = w.read(m).unwrap();
        prop_assert_eq!(&name, &op.name);
        prop_assert_eq!(&input, &req.input);

        let mut t = w.clone();
        t.path = mutate_path(&w.path, at, mutation, &x);
        let signature_holds = t.verify().is_ok();
        if matches!(mutation, PathMutation::Dot | PathMutation::DotDot | PathMutation::Empty) {
            // The attack: the signature does not see this change...
            prop_assert!(signature_holds, "{}", t.path);
        }
        // ...so the router must refuse it, whatever the signature says.
        match t.read(m) {
            Err(Refused::Route(RouteError::InvalidPath { .. })) => {}
            other => prop_assert!(false, "{} -> {:?}", t.path, other),
        }
    }

    #[test]
    fn a_repeated_single_valued_parameter_is_refused_in_either_order(
        pick in any::<prop::sample::Index>(),
        member in any::<prop::sample::Index>(),
        a in "\\PC{0,12}",
        b in "\\PC{0,12}",
    ) {
        let m = Model::get();
        let candidates = query_ops();
        let (op, members) = &candidates[pick.index(candidates.len())];
        let (key, is_list) = &members[member.index(members.len())];
        let req = sample_request(m, op, false).unwrap();
        let mut base = wire(&req);
        // The sample's own query without `key`, then `key` twice.
        let others: Vec<&str> = req
            .query
            .split('&')
            .filter(|p| !p.is_empty() && p.split('=').next() != Some(key.as_str()))
            .collect();
        let forwards: Vec<String> = others
            .iter()
            .map(|p| p.to_string())
            .chain([format!("{key}={}", encoded(&a)), format!("{key}={}", encoded(&b))])
            .collect();
        base.query = forwards.join("&");
        let w = base.signed();
        prop_assert!(w.verify().is_ok());
        // The same signature holds for the other order.
        let mut swapped = w.clone();
        let mut backwards = forwards.clone();
        let n = backwards.len();
        backwards.swap(n - 1, n - 2);
        swapped.query = backwards.join("&");
        prop_assert!(swapped.verify().is_ok());

        let (first, second) = (w.read(m), swapped.read(m));
        if *is_list {
            // Lists may repeat; the two orders read the same items.
            if let (Ok((_, v1)), Ok((_, v2))) = (&first, &second) {
                let mut i1 = v1.as_object().unwrap().values().cloned().collect::<Vec<_>>();
                let mut i2 = v2.as_object().unwrap().values().cloned().collect::<Vec<_>>();
                for v in i1.iter_mut().chain(i2.iter_mut()) {
                    if let Value::Array(items) = v {
                        items.sort_by_key(|x| x.to_string());
                    }
                }
                prop_assert_eq!(i1, i2);
            } else {
                // Refused (e.g. an invalid tag key): refused either way.
                prop_assert!(first.is_err() && second.is_err(), "{:?} / {:?}", first, second);
            }
        } else {
            for r in [first, second] {
                match r {
                    Err(Refused::Input(InputError::Validation(v))) => {
                        prop_assert!(
                            v.messages.iter().any(|f| f.kind == ConstraintKind::Repeated
                                && f.constraint
                                    == format!("Query parameter '{key}' must not be repeated")),
                            "{}", v
                        );
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }

    #[test]
    fn a_257th_parameter_is_refused_by_the_signature_and_the_model(
        pick in any::<prop::sample::Index>(),
        member in any::<prop::sample::Index>(),
        value in "[0-9]{1,3}",
    ) {
        let m = Model::get();
        let candidates = query_ops();
        let (op, members) = &candidates[pick.index(candidates.len())];
        let (key, _) = &members[member.index(members.len())];
        let req = sample_request(m, op, false).unwrap();
        let mut base = wire(&req);
        let mut params: Vec<String> = req
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let mut i = 0;
        while params.len() < MAX_QUERY_PARAMS {
            params.push(format!("pad{i}=x"));
            i += 1;
        }
        base.query = params.join("&");
        let w = base.signed();
        prop_assert!(w.verify().is_ok());
        prop_assert!(w.read(m).is_ok());
        let mut t = w.clone();
        t.query.push_str(&format!("&{key}={value}"));
        prop_assert_eq!(t.verify().unwrap_err().error_code(), "IncompleteSignatureException");
        prop_assert_eq!(
            t.read(m).unwrap_err(),
            Refused::Input(InputError::TooManyQueryParameters { max: MAX_QUERY_PARAMS })
        );
    }
}
