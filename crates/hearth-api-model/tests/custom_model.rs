//! Features the Lambda MicroVMs model does not use (greedy labels, header
//! members, map query members, boolean/long/timestamp conversions, sparse
//! member order), exercised with a small hand-written model.

use hearth_api_model::sample::sample_request;
use hearth_api_model::{ConstraintKind, InputError, Model, RouteError};
use serde_json::json;

/// Written as text: `serde_json::json!` would sort the member keys, and
/// member order is part of what is tested.
const MODEL: &str = r#"{
  "version": "2.0",
  "metadata": {"apiVersion": "2020-01-01", "protocol": "rest-json", "signingName": "demo"},
  "operations": {
    "GetObject": {
      "name": "GetObject",
      "http": {"method": "GET", "requestUri": "/buckets/{Bucket}/objects/{Key+}"},
      "input": {"shape": "GetObjectInput"},
      "output": {"shape": "GetObjectOutput"}
    },
    "GetObjectMeta": {
      "name": "GetObjectMeta",
      "http": {"method": "GET", "requestUri": "/buckets/{Bucket}/objects/{Key+}/meta"},
      "input": {"shape": "MetaInput"}
    },
    "GetBucket": {
      "name": "GetBucket",
      "http": {"method": "GET", "requestUri": "/buckets/{Bucket}"},
      "input": {"shape": "BucketInput"}
    },
    "ListBuckets": {"name": "ListBuckets", "http": {"method": "GET", "requestUri": "/buckets"}},
    "Root": {"name": "Root", "http": {"method": "GET", "requestUri": "/"}}
  },
  "shapes": {
    "GetObjectInput": {"type": "structure", "required": ["Key", "Bucket"], "members": {
      "Zeta": {"shape": "Flag", "location": "querystring", "locationName": "zeta"},
      "Key": {"shape": "Str", "location": "uri", "locationName": "Key"},
      "Bucket": {"shape": "Str", "location": "uri", "locationName": "Bucket"},
      "Alpha": {"shape": "Big", "location": "querystring", "locationName": "alpha"},
      "Since": {"shape": "Time", "location": "header", "locationName": "X-Since"},
      "Ids": {"shape": "IntList", "location": "header", "locationName": "X-Ids"},
      "Extra": {"shape": "StrMap", "location": "querystring"},
      "Meta": {"shape": "StrMap", "location": "headers", "locationName": "x-meta-"},
      "Score": {"shape": "Score", "location": "querystring", "locationName": "score"}
    }},
    "GetObjectOutput": {"type": "structure", "members": {
      "Body": {"shape": "Str", "locationName": "body"},
      "ETag": {"shape": "Str", "location": "header", "locationName": "ETag"}
    }},
    "MetaInput": {"type": "structure", "required": ["Bucket", "Key"], "members": {
      "Bucket": {"shape": "Str", "location": "uri", "locationName": "Bucket"},
      "Key": {"shape": "Str", "location": "uri", "locationName": "Key"}
    }},
    "BucketInput": {"type": "structure", "required": ["Bucket"], "members": {
      "Bucket": {"shape": "Str", "location": "uri", "locationName": "Bucket"},
      "renamed": {"shape": "Str", "locationName": "RenamedOnWire"}
    }},
    "Str": {"type": "string", "min": 1},
    "Flag": {"type": "boolean"},
    "Big": {"type": "long", "min": -5},
    "Time": {"type": "timestamp"},
    "Int": {"type": "integer", "max": 10},
    "IntList": {"type": "list", "member": {"shape": "Int"}},
    "StrMap": {"type": "map", "key": {"shape": "Str"}, "value": {"shape": "Str"}},
    "Score": {"type": "double", "min": 0.5}
  }
}"#;

fn model() -> Model {
    Model::parse(MODEL.as_bytes()).unwrap()
}

#[test]
fn greedy_routing() {
    let m = model();
    let r = m.route("GET", "/buckets/b/objects/a/b%2Fc/d").unwrap();
    assert_eq!(r.operation.name, "GetObject");
    assert_eq!(r.label("Key"), Some("a/b/c/d"));
    // The more literal template wins.
    let r = m.route("GET", "/buckets/b/objects/a/b/meta").unwrap();
    assert_eq!(r.operation.name, "GetObjectMeta");
    assert_eq!(r.label("Key"), Some("a/b"));
    assert_eq!(
        m.route("GET", "/buckets/b/objects").unwrap_err(),
        RouteError::NotFound
    );
    // Empty and dot segments are refused before matching, greedy labels
    // included (the signature covers the path without them).
    for path in [
        "/buckets/b/objects/",
        "/buckets/b/objects/x//y",
        "/buckets/b/objects/x/../y",
        "/buckets/b/objects/x/%2E/y",
    ] {
        assert!(
            matches!(
                m.route("GET", path).unwrap_err(),
                RouteError::InvalidPath { .. }
            ),
            "{path}"
        );
    }
    assert_eq!(m.route("GET", "/").unwrap().operation.name, "Root");
    assert_eq!(
        m.route("GET", "/buckets").unwrap().operation.name,
        "ListBuckets"
    );
    assert_eq!(
        m.route("POST", "/buckets/b/objects/k").unwrap_err(),
        RouteError::MethodNotAllowed {
            allowed: vec!["GET".into()]
        }
    );
}

#[test]
fn headers_query_maps_and_conversions() {
    let m = model();
    let op = m.operation("GetObject").unwrap();
    let r = m.route("GET", "/buckets/b/objects/k").unwrap();
    let headers = vec![
        ("x-since".to_string(), "1700000000.5".to_string()),
        ("X-IDS".to_string(), "1, 2".to_string()),
        ("x-ids".to_string(), "3".to_string()),
        ("X-Meta-Color".to_string(), "blue".to_string()),
    ];
    let v = m
        .parse_input(
            op,
            &r.labels,
            "zeta=true&alpha=-5&score=0.5&free=form&other=x",
            &headers,
            b"",
        )
        .unwrap();
    assert_eq!(
        v,
        json!({
            "Key": "k", "Bucket": "b", "Zeta": true, "Alpha": -5, "Since": 1700000000.5,
            "Ids": [1, 2, 3], "Extra": {"free": "form", "other": "x"}, "Meta": {"color": "blue"}, "Score": 0.5,
        })
    );
    let bad = |q: &str, h: &[(&str, &str)]| {
        let h: Vec<(String, String)> = h
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        match m.parse_input(op, &r.labels, q, &h, b"") {
            Err(InputError::Validation(v)) => v,
            other => panic!("{q} {h:?}: {other:?}"),
        }
    };
    // A map key, like any single-valued parameter, may not repeat: the
    // signature does not fix which copy comes first.
    let e = bad("free=form&free=second&a=1&a=2&free=third", &[]);
    let got: Vec<_> = e
        .messages
        .iter()
        .map(|f| (f.path.as_str(), f.kind, f.constraint.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "Extra",
                ConstraintKind::Repeated,
                "Query parameter 'free' must not be repeated"
            ),
            (
                "Extra",
                ConstraintKind::Repeated,
                "Query parameter 'a' must not be repeated"
            ),
        ]
    );
    let e = bad("zeta=true&zeta=false", &[]);
    assert_eq!(
        (e.messages[0].path.as_str(), e.messages[0].kind),
        ("Zeta", ConstraintKind::Repeated)
    );
    let e = bad("zeta=yes", &[]);
    assert_eq!(
        (e.messages[0].path.as_str(), e.messages[0].kind),
        ("Zeta", ConstraintKind::Type)
    );
    let e = bad("alpha=-6", &[]);
    assert_eq!(e.messages[0].kind, ConstraintKind::Range);
    let e = bad("alpha=9223372036854775808", &[]);
    assert_eq!(
        e.messages[0].constraint,
        "Member must have value less than or equal to 9223372036854775807"
    );
    let e = bad("score=0.4", &[]);
    assert_eq!(e.messages[0].kind, ConstraintKind::Range);
    let e = bad("score=NaN", &[]);
    assert_eq!(e.messages[0].kind, ConstraintKind::Type);
    let e = bad("", &[("X-Since", "yesterday")]);
    assert_eq!(e.messages[0].path, "Since");
    let e = bad("", &[("X-Ids", "1,x")]);
    assert_eq!(e.messages[0].path, "Ids.2.member");
    let e = bad("", &[("X-Ids", "1,11")]);
    assert_eq!(e.messages[0].path, "Ids.2.member");
    assert_eq!(e.messages[0].kind, ConstraintKind::Range);
}

#[test]
fn error_order_follows_the_model_not_the_alphabet() {
    let m = model();
    let op = m.operation("GetObject").unwrap();
    let err = m
        .parse_input(op, &[], "zeta=x&alpha=y", &[], b"")
        .unwrap_err();
    let InputError::Validation(v) = err else {
        panic!()
    };
    let paths: Vec<_> = v.messages.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["Zeta", "Key", "Bucket", "Alpha"]);
}

#[test]
fn body_members_use_their_location_name() {
    let m = model();
    let op = m.operation("GetBucket").unwrap();
    let labels = vec![("Bucket".to_string(), "b".to_string())];
    let v = m
        .parse_input(
            op,
            &labels,
            "",
            &[],
            br#"{"RenamedOnWire":"x","renamed":"ignored"}"#,
        )
        .unwrap();
    assert_eq!(v, json!({"Bucket": "b", "renamed": "x"}));
    let out = m.operation("GetObject").unwrap();
    m.check_output(out, &json!({"body": "x"})).unwrap();
    assert!(m.check_output(out, &json!({"Body": "x"})).is_err());
    // Header-bound output members are not expected in the body.
    assert!(m.check_output(out, &json!({"ETag": "x"})).is_err());
}

#[test]
fn samples_round_trip_through_the_custom_model() {
    let m = model();
    for op in m.operations() {
        for full in [false, true] {
            let req = sample_request(&m, op, full).unwrap();
            let r = m.route(&req.method, &req.path).unwrap();
            assert_eq!(r.operation.name, op.name);
            let v = m
                .parse_input(op, &r.labels, &req.query, &req.headers, &req.body)
                .unwrap();
            assert_eq!(v, req.input, "{} full={full}", op.name);
        }
    }
}
