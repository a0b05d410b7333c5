//! The embedded model loads, has the expected operations, compiles every
//! pattern, and maps error shapes to HTTP statuses.

use hearth_api_model::{Fault, Model, ModelError, Pattern, ShapeKind};
use serde_json::{json, Value};
use std::io::Read;

fn raw_model() -> Value {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/model/lambda-microvms-2025-09-09.json.gz"
    ))
    .unwrap();
    let mut s = String::new();
    flate2_read(&gz, &mut s);
    serde_json::from_str(&s).unwrap()
}

// flate2 is a normal dependency of the crate, so it is available to tests.
fn flate2_read(gz: &[u8], out: &mut String) {
    flate2::read::GzDecoder::new(gz)
        .read_to_string(out)
        .unwrap();
}

/// (name, method, requestUri, responseCode) for all 24 operations.
pub const OPERATIONS: &[(&str, &str, &str, u16)] = &[
    (
        "CreateMicrovmAuthToken",
        "POST",
        "/2025-09-09/microvms/{microvmIdentifier}/auth-token",
        200,
    ),
    (
        "CreateMicrovmImage",
        "POST",
        "/2025-09-09/microvm-images",
        201,
    ),
    (
        "CreateMicrovmShellAuthToken",
        "POST",
        "/2025-09-09/microvms/{microvmIdentifier}/shell-auth-token",
        200,
    ),
    (
        "DeleteMicrovmImage",
        "DELETE",
        "/2025-09-09/microvm-images/{imageIdentifier}",
        200,
    ),
    (
        "DeleteMicrovmImageVersion",
        "DELETE",
        "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}",
        200,
    ),
    (
        "GetMicrovm",
        "GET",
        "/2025-09-09/microvms/{microvmIdentifier}",
        200,
    ),
    (
        "GetMicrovmImage",
        "GET",
        "/2025-09-09/microvm-images/{imageIdentifier}",
        200,
    ),
    (
        "GetMicrovmImageBuild",
        "GET",
        "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}/builds/{buildId}",
        200,
    ),
    (
        "GetMicrovmImageVersion",
        "GET",
        "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}",
        200,
    ),
    (
        "ListManagedMicrovmImageVersions",
        "GET",
        "/2025-09-09/managed-microvm-images/{imageIdentifier}/versions",
        200,
    ),
    (
        "ListManagedMicrovmImages",
        "GET",
        "/2025-09-09/managed-microvm-images",
        200,
    ),
    (
        "ListMicrovmImageBuilds",
        "GET",
        "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}/builds",
        200,
    ),
    (
        "ListMicrovmImageVersions",
        "GET",
        "/2025-09-09/microvm-images/{imageIdentifier}/versions",
        200,
    ),
    (
        "ListMicrovmImages",
        "GET",
        "/2025-09-09/microvm-images",
        200,
    ),
    ("ListMicrovms", "GET", "/2025-09-09/microvms", 200),
    ("ListTags", "GET", "/2017-03-31/tags/{Resource}", 200),
    (
        "ResumeMicrovm",
        "POST",
        "/2025-09-09/microvms/{microvmIdentifier}/resume",
        200,
    ),
    ("RunMicrovm", "POST", "/2025-09-09/microvms", 200),
    (
        "SuspendMicrovm",
        "POST",
        "/2025-09-09/microvms/{microvmIdentifier}/suspend",
        200,
    ),
    ("TagResource", "POST", "/2017-03-31/tags/{Resource}", 204),
    (
        "TerminateMicrovm",
        "DELETE",
        "/2025-09-09/microvms/{microvmIdentifier}",
        200,
    ),
    (
        "UntagResource",
        "DELETE",
        "/2017-03-31/tags/{Resource}",
        204,
    ),
    (
        "UpdateMicrovmImage",
        "PUT",
        "/2025-09-09/microvm-images/{imageIdentifier}",
        200,
    ),
    (
        "UpdateMicrovmImageVersion",
        "PATCH",
        "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}",
        200,
    ),
];

#[test]
fn metadata() {
    let m = Model::get();
    assert_eq!(m.api_version(), "2025-09-09");
    assert_eq!(m.signing_name(), "lambda");
    assert_eq!(m.protocol(), "rest-json");
}

#[test]
fn operations_match_the_table() {
    let m = Model::get();
    let got: Vec<(&str, &str, &str, u16)> = m
        .operations()
        .map(|o| {
            (
                o.name.as_str(),
                o.http_method.as_str(),
                o.request_uri.as_str(),
                o.response_code,
            )
        })
        .collect();
    assert_eq!(got, OPERATIONS);
    for (name, ..) in OPERATIONS {
        assert_eq!(m.operation(name).unwrap().name, *name);
    }
    assert!(m.operation("Nope").is_none());
    let tag = m.operation("TagResource").unwrap();
    assert_eq!(tag.input.as_deref(), Some("TagResourceRequest"));
    assert_eq!(tag.output, None);
    assert!(tag.idempotent);
    assert!(m.operation("GetMicrovm").unwrap().readonly);
}

#[test]
fn every_model_pattern_compiles() {
    let raw = raw_model();
    let mut n = 0;
    for (name, def) in raw["shapes"].as_object().unwrap() {
        if let Some(p) = def.get("pattern").and_then(Value::as_str) {
            n += 1;
            let compiled = Pattern::new(p).unwrap_or_else(|e| panic!("{name}: {p}: {e}"));
            assert_eq!(compiled.as_str(), p);
            // The loaded model carries the same pattern.
            match &Model::get().shape(name).unwrap().kind {
                ShapeKind::String {
                    pattern: Some(lp), ..
                } => assert_eq!(lp.as_str(), p),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    assert_eq!(n, 13, "the model has 13 patterns");
}

#[test]
fn model_patterns_accept_and_reject() {
    let m = Model::get();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "NonBlankString",
            &["x", "a:b/c"],
            &["", "a b", "a\tb", " x"],
        ),
        ("ImageName", &["my-image_1", "A"], &["my image", "a.b", ""]),
        (
            "RoleArn",
            &[
                "arn:aws:iam::123456789012:role/r",
                "arn:aws-cn:iam::123456789012:role/path/r",
            ],
            &[
                "arn:aws:iam::12345678901:role/r",
                "arn:aws:iam::123456789012:user/u",
            ],
        ),
        (
            "KmsKeyIdentifier",
            &[
                "alias/k",
                "1234abcd-12ab-34cd-56ef-1234567890ab",
                "arn:aws:kms:us-east-1:123456789012:key/abc",
            ],
            &[
                "alias/",
                "not a key",
                "arn:aws:kms:us-east-1:1234:key/abc x",
            ],
        ),
        (
            "MicrovmImageArn",
            &["arn:aws:lambda:us-east-1:123456789012:microvm-image:x"],
            &["arn:aws:lambda:us-east-1:123456789012:function:x"],
        ),
        (
            "TaggableResource",
            &[
                "arn:aws:lambda:us-east-1:123456789012:microvm-image:img",
                "arn:aws:lambda:us-gov-west-1:123456789012:function:f:$LATEST",
            ],
            &[
                "arn:aws:lambda:us-east-1:123456789012:microvm-image:img/1",
                "arn:aws:lambda:us-east-1:123456789012:microvm:abc",
                // Java's \d is ASCII only.
                "arn:aws:lambda:us-east-١:123456789012:microvm-image:img",
            ],
        ),
        (
            "TagKey",
            &["env", "a b", "é:ü/=+-@", ""],
            &["a*b", "a\u{1}"],
        ),
        (
            "CloudWatchLoggingLogGroupString",
            &["/aws/x#1"],
            &["a b", "a:b"],
        ),
        (
            "CloudWatchLoggingLogStreamString",
            &["", "a b"],
            &["a:b", "a*"],
        ),
        ("EnvironmentVariableKey", &["FOO", "a=b"], &["A B"]),
        ("Version", &["1", "$LATEST"], &["1 "]),
    ];
    for (shape, good, bad) in cases {
        let ShapeKind::String {
            pattern: Some(p), ..
        } = &m.shape(shape).unwrap().kind
        else {
            panic!("{shape} has no pattern");
        };
        for g in *good {
            assert!(p.is_match(g), "{shape} should accept {g:?}");
        }
        for b in *bad {
            assert!(!p.is_match(b), "{shape} should reject {b:?}");
        }
    }
}

#[test]
fn error_shapes() {
    let m = Model::get();
    let expect = [
        ("ValidationException", 400, Fault::Client),
        ("ServiceQuotaExceededException", 402, Fault::Client),
        ("AccessDeniedException", 403, Fault::Client),
        ("ResourceNotFoundException", 404, Fault::Client),
        ("ConflictException", 409, Fault::Client),
        ("ResourceConflictException", 409, Fault::Client),
        ("ThrottlingException", 429, Fault::Client),
        ("TooManyRequestsException", 429, Fault::Client),
        ("InvalidParameterValueException", 400, Fault::Client),
        ("InternalServerException", 500, Fault::Server),
        ("InsufficientCapacityException", 500, Fault::Server),
        ("ServiceException", 500, Fault::Server),
    ];
    for (name, status, fault) in expect {
        let info = m.error_shape(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!((info.http_status, info.fault), (status, fault), "{name}");
    }
    assert!(m.error_shape("ThrottlingException").unwrap().throttling);
    assert!(!m.error_shape("ConflictException").unwrap().throttling);
    assert!(m.error_shape("GetMicrovmRequest").is_none());
    assert!(m.error_shape("NoSuchShape").is_none());
    // Every operation's errors are error shapes.
    for op in m.operations() {
        for e in &op.errors {
            assert!(m.error_shape(e).is_some(), "{}: {e}", op.name);
        }
    }
}

#[test]
fn idempotency_members() {
    let m = Model::get();
    for op in m.operations() {
        let expected = match op.name.as_str() {
            "CreateMicrovmImage" | "UpdateMicrovmImage" | "RunMicrovm" => Some("clientToken"),
            _ => None,
        };
        assert_eq!(m.op_idempotency_member(op), expected, "{}", op.name);
    }
    let run = m.operation("RunMicrovm").unwrap();
    let input = json!({"imageIdentifier": "img", "clientToken": "tok"});
    assert_eq!(m.idempotency_token(run, &input), Some("tok"));
    assert_eq!(m.idempotency_token(run, &json!({})), None);
}

fn tiny_model(ops: Value, shapes: Value) -> Result<Model, ModelError> {
    let doc = json!({
        "version": "2.0",
        "metadata": {"apiVersion": "1", "protocol": "rest-json", "signingName": "x"},
        "operations": ops,
        "shapes": shapes,
    });
    Model::parse(&serde_json::to_vec(&doc).unwrap())
}

#[test]
fn inconsistent_models_are_rejected() {
    let in_shape = json!({"type": "structure", "required": ["id"], "members": {
        "id": {"shape": "S", "location": "uri", "locationName": "id"}}});
    let op = |uri: &str| json!({"name": "Op", "http": {"method": "GET", "requestUri": uri}, "input": {"shape": "In"}});
    // Consistent.
    tiny_model(
        json!({"Op": op("/a/{id}")}),
        json!({"In": in_shape, "S": {"type": "string"}}),
    )
    .unwrap();
    // Unknown shape.
    assert!(tiny_model(json!({"Op": op("/a/{id}")}), json!({"In": in_shape})).is_err());
    // Label without a uri member, and uri member without a label.
    assert!(tiny_model(
        json!({"Op": op("/a/{other}")}),
        json!({"In": in_shape, "S": {"type": "string"}})
    )
    .is_err());
    assert!(tiny_model(
        json!({"Op": op("/a")}),
        json!({"In": in_shape, "S": {"type": "string"}})
    )
    .is_err());
    // A pattern the regex crate cannot compile.
    let err = tiny_model(
        json!({"Op": op("/a/{id}")}),
        json!({"In": in_shape, "S": {"type": "string", "pattern": "(?<=x)y"}}),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Pattern { .. }), "{err}");
    // Two operations on the same method and path shape.
    let op2 = json!({"name": "Op2", "http": {"method": "GET", "requestUri": "/a/{id}"}, "input": {"shape": "In"}});
    assert!(tiny_model(
        json!({"Op": op("/a/{id}"), "Op2": op2}),
        json!({"In": in_shape, "S": {"type": "string"}})
    )
    .is_err());
    // Not gzip / not JSON.
    assert!(Model::from_gzip(b"nope").is_err());
    assert!(Model::parse(b"{").is_err());
}
