//! Property tests: routing and input parsing never panic on arbitrary input,
//! and whatever parses re-renders to a request that parses the same.

use hearth_api_model::sample::render_request;
use hearth_api_model::{Model, RouteError};
use proptest::prelude::*;
use serde_json::Value;

fn methods() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("PATCH".to_string()),
        Just("DELETE".to_string()),
        any::<String>(),
    ]
}

/// Paths built from plausible pieces, percent escapes and junk.
fn paths() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("2025-09-09".to_string()),
        Just("2017-03-31".to_string()),
        Just("microvms".to_string()),
        Just("microvm-images".to_string()),
        Just("managed-microvm-images".to_string()),
        Just("versions".to_string()),
        Just("builds".to_string()),
        Just("tags".to_string()),
        Just("suspend".to_string()),
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just(".%2E".to_string()),
        Just("...".to_string()),
        Just("%".to_string()),
        Just("%F".to_string()),
        Just("%FF".to_string()),
        Just("%2F".to_string()),
        Just("%3A".to_string()),
        "[a-zA-Z0-9%:+?#.-]{0,12}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..9).prop_map(|v| format!("/{}", v.join("/")))
}

/// Arbitrary JSON values, biased towards the shapes bodies hold.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (0i64..70000).prop_map(Value::from),
        "[a-zA-Z0-9 _:/-]{0,20}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((member_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Keys that are often real member names of the model.
fn member_name() -> impl Strategy<Value = String> {
    let names: Vec<String> = {
        let m = Model::get();
        let mut n: Vec<String> = m
            .shapes()
            .filter_map(|s| match &s.kind {
                hearth_api_model::ShapeKind::Structure(st) => Some(
                    st.members
                        .iter()
                        .map(|m| m.location_name.clone())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        n.sort();
        n.dedup();
        n
    };
    prop_oneof![
        3 => prop::sample::select(names),
        1 => "[a-zA-Z]{1,8}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("maxResults".to_string()),
        Just("nextToken".to_string()),
        Just("tagKeys".to_string()),
        Just("architecture".to_string()),
        Just("imageIdentifier".to_string()),
        "[a-zA-Z%=&+]{0,6}",
    ];
    let value = prop_oneof!["[0-9-]{0,25}", "[a-zA-Z0-9%+ ]{0,10}", any::<String>(),];
    prop::collection::vec((key, value), 0..6).prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn route_never_panics(method in methods(), path in paths()) {
        let m = Model::get();
        match m.route(&method, &path) {
            Ok(r) => {
                prop_assert_eq!(&r.operation.http_method, &method);
                for (_, v) in &r.labels {
                    prop_assert!(!v.is_empty());
                    prop_assert!(v != "." && v != "..");
                }
                // The router and the SigV4 canonical URI see the same path.
                prop_assert_eq!(hearth_sigv4::normalize_path(&path), path.clone());
            }
            Err(RouteError::InvalidPath { .. }) => {
                // Only paths whose meaning the signature does not fix.
                let segs: Vec<Vec<u8>> = path[1..]
                    .split('/')
                    .map(hearth_sigv4::percent_decode)
                    .collect();
                prop_assert!(
                    path.contains(['?', '#'])
                        || segs.iter().any(|s| s.is_empty() || s == b"." || s == b"..")
                );
            }
            Err(RouteError::MethodNotAllowed { allowed }) => {
                prop_assert!(!allowed.is_empty());
                prop_assert!(!allowed.contains(&method));
            }
            Err(RouteError::NotFound) => {}
        }
    }

    #[test]
    fn route_never_panics_on_any_string(method in any::<String>(), path in any::<String>()) {
        let _ = Model::get().route(&method, &path);
    }

    #[test]
    fn parse_input_never_panics_on_bytes(
        op_index in 0usize..24,
        labels in prop::collection::vec((member_name(), any::<String>()), 0..4),
        raw_query in any::<String>(),
        headers in prop::collection::vec((any::<String>(), any::<String>()), 0..3),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let m = Model::get();
        let op = m.operations().nth(op_index).unwrap();
        let _ = m.parse_input(op, &labels, &raw_query, &headers, &body);
    }

    #[test]
    fn parsed_inputs_round_trip(
        op_index in 0usize..24,
        label_value in prop_oneof![Just("x".to_string()), any::<String>()],
        raw_query in query(),
        body in prop::collection::vec((member_name(), json_value()), 0..8),
    ) {
        // A whole segment of "." or ".." never routes (the router refuses
        // dot segments, encoded or not, before any label is read), so no
        // client request can carry one.
        prop_assume!(label_value != "." && label_value != "..");
        let m = Model::get();
        let op = m.operations().nth(op_index).unwrap();
        let labels: Vec<(String, String)> = m
            .structure(op.input.as_deref().unwrap())
            .unwrap()
            .members
            .iter()
            .filter(|mem| mem.location == hearth_api_model::Location::Uri)
            .map(|mem| (mem.location_name.clone(), label_value.clone()))
            .collect();
        let body_obj = Value::Object(body.into_iter().collect());
        let body_bytes = serde_json::to_vec(&body_obj).unwrap();
        if let Ok(parsed) = m.parse_input(op, &labels, &raw_query, &[], &body_bytes) {
            // Valid input re-renders as a client request that routes and
            // parses to the same value.
            let req = render_request(m, op, &parsed).unwrap();
            let r = m.route(&req.method, &req.path).unwrap();
            prop_assert_eq!(&r.operation.name, &op.name);
            let again = m.parse_input(op, &r.labels, &req.query, &req.headers, &req.body).unwrap();
            prop_assert_eq!(again, parsed);
        }
    }

    #[test]
    fn check_output_never_panics(op_index in 0usize..24, body in json_value()) {
        let m = Model::get();
        let op = m.operations().nth(op_index).unwrap();
        let _ = m.check_output(op, &body);
    }
}
