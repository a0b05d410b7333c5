//! Input decoding and validation for every operation, and output checks.

use hearth_api_model::sample::{render_request, sample_request, sample_value, SampleRequest};
use hearth_api_model::{ConstraintKind, InputError, Location, Model, Operation, ValidationError};
use serde_json::{json, Value};

fn model() -> &'static Model {
    Model::get()
}

fn op(name: &str) -> &'static Operation {
    model().operation(name).unwrap()
}

fn parse(req: &SampleRequest, op: &Operation) -> Result<Value, InputError> {
    let r = model().route(&req.method, &req.path).unwrap();
    assert_eq!(r.operation.name, op.name);
    model().parse_input(op, &r.labels, &req.query, &req.headers, &req.body)
}

/// Parse `body` for a body-only operation with the given labels.
fn parse_body(op_name: &str, labels: &[(&str, &str)], body: &Value) -> Result<Value, InputError> {
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    model().parse_input(
        op(op_name),
        &labels,
        "",
        &[],
        &serde_json::to_vec(body).unwrap(),
    )
}

fn validation(r: Result<Value, InputError>) -> ValidationError {
    match r {
        Err(InputError::Validation(v)) => v,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn run_input() -> Value {
    json!({"imageIdentifier": "img"})
}

fn image_input() -> Value {
    json!({
        "name": "img",
        "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:al2023",
        "buildRoleArn": "arn:aws:iam::123456789012:role/build",
        "codeArtifact": {"uri": "s3://bucket/key.zip"},
    })
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

#[test]
fn minimal_and_full_inputs_validate_for_every_operation() {
    let m = model();
    for op in m.operations() {
        for full in [false, true] {
            let req = sample_request(m, op, full).unwrap();
            let parsed = parse(&req, op).unwrap_or_else(|e| panic!("{} full={full}: {e}", op.name));
            assert_eq!(parsed, req.input, "{} full={full}", op.name);
        }
    }
}

#[test]
fn every_missing_required_member_is_named() {
    let m = model();
    let mut checked = 0;
    for op in m.operations() {
        let Some(st) = op.input.as_deref().and_then(|i| m.structure(i)) else {
            continue;
        };
        let full = sample_request(m, op, true).unwrap();
        for req_name in &st.required {
            checked += 1;
            let member = st.member(req_name).unwrap();
            let mut input = full.input.clone();
            input.as_object_mut().unwrap().remove(req_name);
            let err = if member.location == Location::Uri {
                // The path cannot be rendered without the label: drop it
                // from the labels instead.
                let labels: Vec<_> = full
                    .labels
                    .iter()
                    .filter(|(n, _)| *n != member.location_name)
                    .cloned()
                    .collect();
                let r = render_request(m, op, &with_label_placeholder(&input, req_name)).unwrap();
                validation(m.parse_input(op, &labels, &r.query, &r.headers, &r.body))
            } else {
                let r = render_request(m, op, &input).unwrap();
                validation(parse(&r, op))
            };
            assert_eq!(err.messages.len(), 1, "{}: {err}", op.name);
            let fe = &err.messages[0];
            assert_eq!(fe.path, *req_name);
            assert_eq!(fe.kind, ConstraintKind::Required);
            assert_eq!(
                fe.message,
                format!("Value null at '{req_name}' failed to satisfy constraint: Member must not be null")
            );
            assert_eq!(
                err.to_string(),
                format!("1 validation error detected: {}", fe.message)
            );
        }
    }
    assert!(checked > 30, "{checked}");
}

fn with_label_placeholder(input: &Value, member: &str) -> Value {
    with(input.clone(), member, json!("placeholder"))
}

#[test]
fn the_aws_style_message() {
    let body = with(
        run_input(),
        "idlePolicy",
        json!({"maxIdleDurationSeconds": 59, "suspendedDurationSeconds": 0, "autoResumeEnabled": true}),
    );
    let err = validation(parse_body("RunMicrovm", &[], &body));
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value '59' at 'idlePolicy.maxIdleDurationSeconds' \
         failed to satisfy constraint: Member must have value greater than or equal to 60"
    );
    assert_eq!(err.messages[0].kind, ConstraintKind::Range);

    // Several errors, in model order, joined by "; ".
    let body = json!({
        "imageIdentifier": "",
        "maximumDurationInSeconds": 0,
        "idlePolicy": {"maxIdleDurationSeconds": 60},
    });
    let err = validation(parse_body("RunMicrovm", &[], &body));
    let paths: Vec<&str> = err.messages.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "imageIdentifier",
            "idlePolicy.suspendedDurationSeconds",
            "idlePolicy.autoResumeEnabled",
            "maximumDurationInSeconds"
        ]
    );
    let s = err.to_string();
    assert!(s.starts_with("4 validation errors detected: Value '' at 'imageIdentifier' failed to satisfy constraint: Member must have length greater than or equal to 1; "), "{s}");
    assert_eq!(s.matches("; ").count(), 3);
}

#[test]
fn nested_required_members() {
    let body = with(
        run_input(),
        "idlePolicy",
        json!({"maxIdleDurationSeconds": 60}),
    );
    let err = validation(parse_body("RunMicrovm", &[], &body));
    assert!(err.has_path("idlePolicy.suspendedDurationSeconds"));
    assert!(err.has_path("idlePolicy.autoResumeEnabled"));
    // null is "not set".
    let body = with(
        run_input(),
        "idlePolicy",
        json!({"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": null, "autoResumeEnabled": false}),
    );
    let err = validation(parse_body("RunMicrovm", &[], &body));
    assert_eq!(err.messages.len(), 1);
    assert_eq!(
        err.messages[0].message,
        "Value null at 'idlePolicy.suspendedDurationSeconds' failed to satisfy constraint: Member must not be null"
    );
    // Lists of structures name the element (1-based).
    let body = with(
        image_input(),
        "cpuConfigurations",
        json!([{"architecture": "X86_64"}, {}]),
    );
    let err = validation(parse_body("CreateMicrovmImage", &[], &body));
    assert_eq!(
        err.messages[0].path,
        "cpuConfigurations.2.member.architecture"
    );
}

#[test]
fn integer_ranges() {
    let auth = |body: Value| {
        parse_body(
            "CreateMicrovmAuthToken",
            &[("microvmIdentifier", "m")],
            &body,
        )
    };
    let ok = json!({"expirationInMinutes": 1, "allowedPorts": [{"port": 8080}]});
    auth(ok.clone()).unwrap();
    let err = validation(auth(with(ok.clone(), "expirationInMinutes", json!(0))));
    assert_eq!(
        err.messages[0].constraint,
        "Member must have value greater than or equal to 1"
    );
    // No model max: the 32-bit bound applies.
    auth(with(ok.clone(), "expirationInMinutes", json!(2147483647))).unwrap();
    let err = validation(auth(with(
        ok.clone(),
        "expirationInMinutes",
        json!(2147483648u64),
    )));
    assert_eq!(
        err.messages[0].constraint,
        "Member must have value less than or equal to 2147483647"
    );
    assert_eq!(err.messages[0].kind, ConstraintKind::Range);
    let err = validation(auth(with(
        ok.clone(),
        "expirationInMinutes",
        json!(u64::MAX),
    )));
    assert_eq!(err.messages[0].kind, ConstraintKind::Range);
    let err = validation(auth(with(ok.clone(), "expirationInMinutes", json!(1e300))));
    assert_eq!(err.messages[0].kind, ConstraintKind::Range);
    // Ports: 1..=65535, inside a union inside a list.
    for (port, good) in [(0, false), (1, true), (65535, true), (65536, false)] {
        let r = auth(with(ok.clone(), "allowedPorts", json!([{"port": port}])));
        assert_eq!(r.is_ok(), good, "{port}");
        if !good {
            assert_eq!(validation(r).messages[0].path, "allowedPorts.1.member.port");
        }
    }
    let r = auth(with(
        ok.clone(),
        "allowedPorts",
        json!([{"range": {"startPort": 9000, "endPort": 70000}}]),
    ));
    assert_eq!(
        validation(r).messages[0].path,
        "allowedPorts.1.member.range.endPort"
    );
    // maximumDurationInSeconds 1..=28800; hooks timeouts 1..=60 / 1..=3600.
    parse_body(
        "RunMicrovm",
        &[],
        &with(run_input(), "maximumDurationInSeconds", json!(28800)),
    )
    .unwrap();
    let err = validation(parse_body(
        "RunMicrovm",
        &[],
        &with(run_input(), "maximumDurationInSeconds", json!(28801)),
    ));
    assert_eq!(
        err.messages[0].constraint,
        "Member must have value less than or equal to 28800"
    );
    let hooks = json!({"port": 8080, "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 61},
                        "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": 3601}});
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(image_input(), "hooks", hooks),
    ));
    let paths: Vec<_> = err.messages.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "hooks.microvmHooks.runTimeoutInSeconds",
            "hooks.microvmImageHooks.readyTimeoutInSeconds"
        ]
    );
}

#[test]
fn string_lengths_count_characters() {
    let mk = |name: String| {
        parse_body(
            "CreateMicrovmImage",
            &[],
            &with(image_input(), "name", json!(name)),
        )
    };
    mk("a".repeat(64)).unwrap();
    let err = validation(mk("a".repeat(200)));
    assert_eq!(err.messages.len(), 1);
    let fe = &err.messages[0];
    assert_eq!(fe.kind, ConstraintKind::Length);
    assert_eq!(
        fe.constraint,
        "Member must have length less than or equal to 64"
    );
    // The echoed value is truncated.
    assert_eq!(
        fe.message,
        format!(
            "Value '{}...' at 'name' failed to satisfy constraint: Member must have length less than or equal to 64",
            "a".repeat(64)
        )
    );
    // Tag values: max 256 characters, not bytes.
    let tag = |v: String| {
        parse_body(
            "TagResource",
            &[(
                "Resource",
                "arn:aws:lambda:us-east-1:123456789012:microvm-image:img",
            )],
            &json!({"Tags": {"k": v}}),
        )
    };
    tag("é".repeat(256)).unwrap();
    let err = validation(tag("é".repeat(257)));
    assert_eq!(err.messages[0].kind, ConstraintKind::MapValue);
    assert_eq!(err.messages[0].path, "Tags");
    assert!(err.messages[0].constraint.starts_with(
        "Map value must satisfy constraint: [Member must have length less than or equal to 256"
    ));
    // Lists: egress connectors at most 1 on images, allowedPorts at least 1.
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(image_input(), "egressNetworkConnectors", json!(["a", "b"])),
    ));
    assert_eq!(err.messages[0].message, "Value '[a, b]' at 'egressNetworkConnectors' failed to satisfy constraint: Member must have length less than or equal to 1");
    let err = validation(parse_body(
        "CreateMicrovmAuthToken",
        &[("microvmIdentifier", "m")],
        &json!({"expirationInMinutes": 5, "allowedPorts": []}),
    ));
    assert_eq!(
        err.messages[0].constraint,
        "Member must have length greater than or equal to 1"
    );
}

#[test]
fn patterns_and_enums() {
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(
            image_input(),
            "buildRoleArn",
            json!("arn:aws:iam::123:role/x"),
        ),
    ));
    assert_eq!(err.messages.len(), 1);
    assert_eq!(
        err.messages[0].message,
        "Value 'arn:aws:iam::123:role/x' at 'buildRoleArn' failed to satisfy constraint: \
         Member must satisfy regular expression pattern: arn:aws[a-z\\-]*:iam::[0-9]{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
    );
    // A too-short string that also breaks the pattern gets both errors.
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(image_input(), "buildRoleArn", json!("x")),
    ));
    let kinds: Vec<_> = err.messages.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [ConstraintKind::Length, ConstraintKind::Pattern]);

    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(
            image_input(),
            "cpuConfigurations",
            json!([{"architecture": "ARM"}]),
        ),
    ));
    assert_eq!(
        err.messages[0].message,
        "Value 'ARM' at 'cpuConfigurations.1.member.architecture' failed to satisfy constraint: \
         Member must satisfy enum value set: [ARM_64, X86_64]"
    );
    let err = validation(parse_body(
        "UpdateMicrovmImageVersion",
        &[("imageIdentifier", "i"), ("imageVersion", "1")],
        &json!({"status": "active"}),
    ));
    assert_eq!(err.messages[0].kind, ConstraintKind::Enum);
    parse_body(
        "UpdateMicrovmImageVersion",
        &[("imageIdentifier", "i"), ("imageVersion", "1")],
        &json!({"status": "INACTIVE"}),
    )
    .unwrap();
    // Map keys.
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(
            image_input(),
            "environmentVariables",
            json!({"A B": "x", "OK": "y"}),
        ),
    ));
    assert_eq!(err.messages.len(), 1);
    assert_eq!(
        err.messages[0].message,
        "Value 'A B' at 'environmentVariables' failed to satisfy constraint: \
         Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [^\\s]+]"
    );
    // Image version labels must be non-blank.
    let err = validation(model().parse_input(
        op("GetMicrovmImageVersion"),
        &[
            ("imageIdentifier".into(), "i".into()),
            ("imageVersion".into(), "1 2".into()),
        ],
        "",
        &[],
        b"",
    ));
    assert_eq!(err.messages[0].path, "imageVersion");
    assert_eq!(err.messages[0].kind, ConstraintKind::Pattern);
}

#[test]
fn sensitive_values_are_not_echoed() {
    let err = validation(parse_body(
        "RunMicrovm",
        &[],
        &with(run_input(), "runHookPayload", json!("s".repeat(4097))),
    ));
    assert_eq!(
        err.messages[0].message,
        "Value at 'runHookPayload' failed to satisfy constraint: Member must have length less than or equal to 4096"
    );
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(
            image_input(),
            "environmentVariables",
            json!({"K": "secret".repeat(1000)}),
        ),
    ));
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn unions() {
    let img = |ca: Value| {
        parse_body(
            "CreateMicrovmImage",
            &[],
            &with(image_input(), "codeArtifact", ca),
        )
    };
    img(json!({"uri": "s3://b/k"})).unwrap();
    for bad in [json!({}), json!({"uri": null}), json!({"other": "x"})] {
        let err = validation(img(bad.clone()));
        assert_eq!(err.messages.len(), 1, "{bad}: {err}");
        assert_eq!(err.messages[0].kind, ConstraintKind::Union);
        assert_eq!(
            err.messages[0].message,
            "Value at 'codeArtifact' failed to satisfy constraint: Member must have exactly one of [uri] set"
        );
    }
    let log = |l: Value| parse_body("RunMicrovm", &[], &with(run_input(), "logging", l));
    assert_eq!(
        log(json!({"disabled": {}})).unwrap()["logging"],
        json!({"disabled": {}})
    );
    log(json!({"cloudWatch": {"logGroup": "/g"}})).unwrap();
    let err = validation(log(json!({"disabled": {}, "cloudWatch": {}})));
    assert_eq!(
        err.messages[0].constraint,
        "Member must have exactly one of [disabled, cloudWatch] set"
    );
    let err = validation(log(json!({})));
    assert_eq!(err.messages[0].path, "logging");
    // Union members inside lists.
    let auth = |p: Value| {
        parse_body(
            "CreateMicrovmAuthToken",
            &[("microvmIdentifier", "m")],
            &json!({"expirationInMinutes": 5, "allowedPorts": p}),
        )
    };
    let parsed = auth(
        json!([{"port": 8080}, {"range": {"startPort": 9000, "endPort": 9010}}, {"allPorts": {}}]),
    )
    .unwrap();
    assert_eq!(parsed["allowedPorts"][2], json!({"allPorts": {}}));
    let err = validation(auth(json!([{"port": 1}, {"port": 1, "allPorts": {}}])));
    assert_eq!(err.messages[0].path, "allowedPorts.2.member");
    assert_eq!(
        err.messages[0].constraint,
        "Member must have exactly one of [port, range, allPorts] set"
    );
    let err = validation(auth(json!([{}])));
    assert_eq!(err.messages[0].path, "allowedPorts.1.member");
    let err = validation(auth(json!([null])));
    assert_eq!(err.messages[0].path, "allowedPorts.1.member");
    assert_eq!(err.messages[0].kind, ConstraintKind::Required);
}

#[test]
fn wrong_json_types() {
    let auth = |k: &str, v: Value| {
        parse_body(
            "CreateMicrovmAuthToken",
            &[("microvmIdentifier", "m")],
            &with(
                json!({"expirationInMinutes": 5, "allowedPorts": [{"port": 1}]}),
                k,
                v,
            ),
        )
    };
    for (k, v, ty) in [
        ("expirationInMinutes", json!("10"), "integer"),
        ("expirationInMinutes", json!(1.5), "integer"),
        ("expirationInMinutes", json!(true), "integer"),
        ("expirationInMinutes", json!([1]), "integer"),
        ("allowedPorts", json!({"port": 1}), "list"),
        ("allowedPorts", json!("8080"), "list"),
        ("allowedPorts", json!([8080]), "structure"),
    ] {
        let err = validation(auth(k, v.clone()));
        assert_eq!(err.messages.len(), 1, "{k}={v}: {err}");
        assert_eq!(err.messages[0].kind, ConstraintKind::Type, "{k}={v}");
        assert_eq!(
            err.messages[0].constraint,
            format!("Member must be of type {ty}")
        );
    }
    assert_eq!(
        validation(auth("expirationInMinutes", json!("10"))).messages[0].message,
        "Value '10' at 'expirationInMinutes' failed to satisfy constraint: Member must be of type integer"
    );
    // 5.0 is accepted and normalised.
    assert_eq!(
        auth("expirationInMinutes", json!(5.0)).unwrap()["expirationInMinutes"],
        json!(5)
    );
    let run = |k: &str, v: Value| parse_body("RunMicrovm", &[], &with(run_input(), k, v));
    for (k, v) in [
        ("imageIdentifier", json!(5)),
        ("idlePolicy", json!("x")),
        ("ingressNetworkConnectors", json!("a")),
        ("ingressNetworkConnectors", json!([1])),
        ("logging", json!([])),
    ] {
        let err = validation(run(k, v.clone()));
        assert_eq!(err.messages[0].kind, ConstraintKind::Type, "{k}={v}");
    }
    let err = validation(run(
        "idlePolicy",
        json!({"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0, "autoResumeEnabled": "true"}),
    ));
    assert_eq!(err.messages[0].path, "idlePolicy.autoResumeEnabled");
    assert_eq!(err.messages[0].constraint, "Member must be of type boolean");
    let err = validation(parse_body(
        "TagResource",
        &[(
            "Resource",
            "arn:aws:lambda:us-east-1:123456789012:microvm-image:img",
        )],
        &json!({"Tags": ["a"]}),
    ));
    assert_eq!(err.messages[0].constraint, "Member must be of type map");
}

#[test]
fn malformed_and_non_object_bodies() {
    let m = model();
    let run = op("RunMicrovm");
    for body in [
        &b"{"[..],
        b"{\"imageIdentifier\": }",
        b"not json",
        b"{\"a\":1}x",
        b"\xff\xfe",
    ] {
        match m.parse_input(run, &[], "", &[], body) {
            Err(e @ InputError::BodyNotJson { .. }) => {
                assert_eq!(e.error_type(), "SerializationException");
                assert!(e.to_string().contains("not valid JSON"), "{e}");
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
    for body in [&b"[]"[..], b"\"x\"", b"1", b"null", b"true"] {
        let e = m.parse_input(run, &[], "", &[], body).unwrap_err();
        assert!(matches!(e, InputError::BodyNotJson { .. }), "{e:?}");
        assert!(e.to_string().contains("must be a JSON object"), "{e}");
    }
    // Empty and {} bodies are an empty object: then required members are missing.
    for body in [&b""[..], b"{}", b"  {} ", b"\n"] {
        let err = validation(m.parse_input(run, &[], "", &[], body));
        assert_eq!(err.messages[0].path, "imageIdentifier");
        assert_eq!(
            InputError::Validation(err).error_type(),
            "ValidationException"
        );
    }
    // Operations without body members ignore the body (suspend sends none).
    let suspend = op("SuspendMicrovm");
    let labels = [("microvmIdentifier".to_string(), "m".to_string())];
    for body in [&b""[..], b"{}", b"garbage"] {
        assert_eq!(
            m.parse_input(suspend, &labels, "", &[], body).unwrap(),
            json!({"microvmIdentifier": "m"})
        );
    }
}

#[test]
fn unknown_members_are_dropped() {
    let body = json!({
        "imageIdentifier": "img",
        "futureField": {"x": 1},
        "idlePolicy": {"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0,
                       "autoResumeEnabled": true, "futureNested": 1},
        "logging": {"cloudWatch": {"logGroup": "/g", "extra": true}},
    });
    let parsed = parse_body("RunMicrovm", &[], &body).unwrap();
    assert_eq!(
        parsed,
        json!({
            "imageIdentifier": "img",
            "idlePolicy": {"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0, "autoResumeEnabled": true},
            "logging": {"cloudWatch": {"logGroup": "/g"}},
        })
    );
    // A body key that names a URI member does not override the label.
    let parsed = parse_body(
        "UpdateMicrovmImageVersion",
        &[("imageIdentifier", "from-path"), ("imageVersion", "1")],
        &json!({"status": "ACTIVE", "imageIdentifier": "from-body"}),
    )
    .unwrap();
    assert_eq!(parsed["imageIdentifier"], "from-path");
    // Optional members set to null are absent.
    let parsed = parse_body(
        "RunMicrovm",
        &[],
        &json!({"imageIdentifier": "i", "imageVersion": null}),
    )
    .unwrap();
    assert_eq!(parsed, json!({"imageIdentifier": "i"}));
}

#[test]
fn labels_are_decoded_values() {
    let m = model();
    let arn = "arn:aws:lambda:us-east-1:123456789012:microvm-image:my-image";
    let r = m
        .route("GET", "/2025-09-09/microvm-images/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Amicrovm-image%3Amy-image")
        .unwrap();
    let parsed = m.parse_input(r.operation, &r.labels, "", &[], b"").unwrap();
    assert_eq!(parsed, json!({"imageIdentifier": arn}));
    // MicrovmImageIdentifier is 1..=256 characters.
    let long = "i".repeat(257);
    let r = m
        .route("GET", &format!("/2025-09-09/microvm-images/{long}"))
        .unwrap();
    let err = validation(m.parse_input(r.operation, &r.labels, "", &[], b""));
    assert_eq!(err.messages[0].path, "imageIdentifier");
    // Tag resources must be Lambda ARNs.
    let r = m.route("GET", "/2017-03-31/tags/not-an-arn").unwrap();
    let err = validation(m.parse_input(r.operation, &r.labels, "", &[], b""));
    assert_eq!(err.messages[0].path, "Resource");
    assert_eq!(err.messages[0].kind, ConstraintKind::Pattern);
}

#[test]
fn repeated_query_keys_make_lists() {
    let m = model();
    let path =
        "/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Amicrovm-image%3Aimg";
    let r = m.route("DELETE", path).unwrap();
    let untag = |q: &str| m.parse_input(r.operation, &r.labels, q, &[], b"");
    assert_eq!(
        untag("tagKeys=a&tagKeys=b%20c&tagKeys=d%2Be+f&other=x").unwrap(),
        json!({
            "Resource": "arn:aws:lambda:us-east-1:123456789012:microvm-image:img",
            "TagKeys": ["a", "b c", "d+e+f"],
        })
    );
    assert_eq!(untag("tagKeys=only").unwrap()["TagKeys"], json!(["only"]));
    // A leading `?` belongs to the first key, as in the signature.
    assert!(untag("?tagKeys=only").is_err());
    let err = validation(untag(""));
    assert_eq!(err.messages[0].path, "TagKeys");
    assert_eq!(err.messages[0].kind, ConstraintKind::Required);
    let err = validation(untag("tagKeys=ok&tagKeys=&tagKeys=a%2Ab"));
    let paths: Vec<_> = err.messages.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["TagKeys.2.member", "TagKeys.3.member"]);
    assert_eq!(err.messages[0].kind, ConstraintKind::Length);
    assert_eq!(err.messages[1].kind, ConstraintKind::Pattern);
}

#[test]
fn integer_query_parameters() {
    let m = model();
    let list = op("ListMicrovms");
    let q = |s: &str| m.parse_input(list, &[], s, &[], b"");
    assert_eq!(q("").unwrap(), json!({}));
    assert_eq!(q("maxResults=50").unwrap(), json!({"maxResults": 50}));
    assert_eq!(
        q("maxResults=1&nextToken=abc%3D%3D").unwrap(),
        json!({"maxResults": 1, "nextToken": "abc=="})
    );
    for (v, kind, constraint) in [
        (
            "0",
            ConstraintKind::Range,
            "Member must have value greater than or equal to 1",
        ),
        (
            "-3",
            ConstraintKind::Range,
            "Member must have value greater than or equal to 1",
        ),
        (
            "51",
            ConstraintKind::Range,
            "Member must have value less than or equal to 50",
        ),
        (
            "99999999999999999999",
            ConstraintKind::Range,
            "Member must have value less than or equal to 50",
        ),
        (
            "abc",
            ConstraintKind::Type,
            "Member must be of type integer",
        ),
        ("", ConstraintKind::Type, "Member must be of type integer"),
        (
            "1.0",
            ConstraintKind::Type,
            "Member must be of type integer",
        ),
        (
            "1e1",
            ConstraintKind::Type,
            "Member must be of type integer",
        ),
        (
            "%FF",
            ConstraintKind::Type,
            "Member must be of type integer",
        ),
    ] {
        let err = validation(q(&format!("maxResults={v}")));
        assert_eq!(err.messages.len(), 1, "{v}");
        assert_eq!(
            (err.messages[0].kind, err.messages[0].constraint.as_str()),
            (kind, constraint),
            "{v}"
        );
        assert_eq!(err.messages[0].path, "maxResults");
    }
    assert_eq!(
        validation(q("maxResults=abc")).to_string(),
        "1 validation error detected: Value 'abc' at 'maxResults' failed to satisfy constraint: Member must be of type integer"
    );
    // A repeated scalar is refused (no occurrence wins); unknown keys are
    // ignored, repeated or not.
    assert_eq!(
        validation(q("maxResults=2&maxResults=3&bogus=1")).messages[0].kind,
        ConstraintKind::Repeated
    );
    assert_eq!(
        q("maxResults=2&bogus=1&bogus=2").unwrap(),
        json!({"maxResults": 2})
    );
    // Query enums and patterns.
    let builds = op("ListMicrovmImageBuilds");
    let labels = [
        ("imageIdentifier".to_string(), "i".to_string()),
        ("imageVersion".to_string(), "1".to_string()),
    ];
    assert_eq!(
        m.parse_input(
            builds,
            &labels,
            "architecture=ARM_64&chipset=GRAVITON",
            &[],
            b""
        )
        .unwrap(),
        json!({"imageIdentifier": "i", "imageVersion": "1", "architecture": "ARM_64", "chipset": "GRAVITON"})
    );
    let err = validation(m.parse_input(builds, &labels, "architecture=arm64", &[], b""));
    assert_eq!(err.messages[0].kind, ConstraintKind::Enum);
    let images = op("ListMicrovmImages");
    assert_eq!(
        m.parse_input(images, &[], "nameFilter=a+b", &[], b"")
            .unwrap(),
        json!({"nameFilter": "a+b"})
    );
    let err = validation(m.parse_input(images, &[], "nameFilter=a%20b", &[], b""));
    assert_eq!(err.messages[0].kind, ConstraintKind::Pattern);
}

#[test]
fn error_count_is_capped() {
    let vars: serde_json::Map<String, Value> =
        (0..150).map(|i| (format!("K {i}"), json!("v"))).collect();
    let err = validation(parse_body(
        "CreateMicrovmImage",
        &[],
        &with(image_input(), "environmentVariables", Value::Object(vars)),
    ));
    assert_eq!(
        err.messages.len(),
        hearth_api_model::validate::MAX_FIELD_ERRORS
    );
}

// ---------------------------------------------------------------- outputs

#[test]
fn sample_outputs_conform() {
    let m = model();
    for op in m.operations() {
        match &op.output {
            Some(out) => {
                for full in [false, true] {
                    let v = sample_value(m, out, full).unwrap();
                    m.check_output(op, &v)
                        .unwrap_or_else(|e| panic!("{}: {e}", op.name));
                }
            }
            None => {
                m.check_output(op, &Value::Null).unwrap();
                m.check_output(op, &json!({})).unwrap();
                assert!(m.check_output(op, &json!({"x": 1})).is_err());
            }
        }
    }
}

#[test]
fn output_checks_are_strict() {
    let m = model();
    let get = op("GetMicrovm");
    let good = json!({
        "microvmId": "mvm-1",
        "state": "RUNNING",
        "endpoint": "mvm-1.example",
        "imageArn": "arn:aws:lambda:us-east-1:123456789012:microvm-image:img",
        "imageVersion": "1",
        "maximumDurationInSeconds": 3600,
        "startedAt": 1700000000.5,
        "idlePolicy": {"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0, "autoResumeEnabled": false},
        "ingressNetworkConnectors": ["arn:aws:lambda:us-east-1:aws:network-connector:aws-network-connector:ALL_INGRESS"],
    });
    m.check_output(get, &good).unwrap();
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("endpoint");
    assert!(m
        .check_output(get, &missing)
        .unwrap_err()
        .has_path("endpoint"));
    let err = m
        .check_output(get, &with(good.clone(), "state", json!("RUN")))
        .unwrap_err();
    assert_eq!(err.messages[0].kind, ConstraintKind::Enum);
    let err = m
        .check_output(
            get,
            &with(good.clone(), "startedAt", json!("2024-01-01T00:00:00Z")),
        )
        .unwrap_err();
    assert_eq!(err.messages[0].kind, ConstraintKind::Type);
    let err = m
        .check_output(get, &with(good.clone(), "microvmID", json!("x")))
        .unwrap_err();
    assert_eq!(err.messages[0].kind, ConstraintKind::Unknown);
    assert_eq!(err.messages[0].path, "microvmID");
    let err = m
        .check_output(get, &with(good.clone(), "idlePolicy", json!({"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0, "autoResumeEnabled": false, "x": 1})))
        .unwrap_err();
    assert_eq!(err.messages[0].path, "idlePolicy.x");
    assert!(m.check_output(get, &json!([])).is_err());
    // Auth tokens: a map of 1..=10 entries.
    let auth = op("CreateMicrovmAuthToken");
    m.check_output(auth, &json!({"authToken": {"X-aws-proxy-auth": "tok"}}))
        .unwrap();
    let err = m.check_output(auth, &json!({"authToken": {}})).unwrap_err();
    assert_eq!(err.messages[0].kind, ConstraintKind::Length);
    // Lists.
    let list = op("ListMicrovms");
    m.check_output(list, &json!({"items": []})).unwrap();
    assert!(m
        .check_output(list, &json!({}))
        .unwrap_err()
        .has_path("items"));
    let err = m
        .check_output(list, &json!({"items": [{"microvmId": "m"}]}))
        .unwrap_err();
    assert!(err.has_path("items.1.member.state"));
    // Error bodies.
    m.check_shape(
        "ResourceNotFoundException",
        &json!({"message": "x", "resourceType": "MICROVM"}),
    )
    .unwrap();
    assert!(m
        .check_shape("ResourceNotFoundException", &json!({}))
        .is_err());
    // Retry-After is a header member, not expected in the body.
    m.check_shape("ThrottlingException", &json!({"message": "slow down"}))
        .unwrap();
    assert!(m
        .check_shape("ThrottlingException", &json!({"retryAfterSeconds": 1}))
        .is_err());
    assert!(m.check_shape("NoSuchShape", &json!({})).is_err());
}

#[test]
fn a_query_longer_than_a_signature_covers_is_refused() {
    let m = model();
    let r = m.route("GET", "/2025-09-09/microvms").unwrap();
    let pad: Vec<String> = (0..256).map(|i| format!("p{i}=x")).collect();
    // The 257th parameter is not signed (hearth_sigv4::MAX_QUERY_PARAMS): never read it.
    let q = format!("{}&maxResults=50", pad.join("&"));
    let e = m
        .parse_input(r.operation, &r.labels, &q, &[], b"")
        .unwrap_err();
    assert_eq!(e, InputError::TooManyQueryParameters { max: 256 });
    assert_eq!(e.error_type(), "ValidationException");
    assert_eq!(
        e.to_string(),
        "The query string has more than 256 parameters."
    );
    // 256 parameters are read; empty pieces are not parameters (nor are they
    // signed).
    let q = format!("{}&&&maxResults=50&", pad[..255].join("&"));
    let v = m.parse_input(r.operation, &r.labels, &q, &[], b"").unwrap();
    assert_eq!(v["maxResults"], 50);
}

#[test]
fn a_repeated_single_valued_query_parameter_is_refused() {
    // The canonical query is sorted, so `maxResults=1&maxResults=50` and its
    // reverse carry the same signature: which copy wins must not be decided
    // by order, so neither wins.
    let m = model();
    let r = m.route("GET", "/2025-09-09/microvms").unwrap();
    for (q, param) in [
        ("maxResults=1&maxResults=50", "maxResults"),
        ("maxResults=50&maxResults=1", "maxResults"),
        ("maxResults=5&maxResults=5", "maxResults"),
        ("maxResults=1&max%52esults=50", "maxResults"),
        ("nextToken=a&maxResults=1&nextToken=b", "nextToken"),
        ("imageIdentifier=x&imageIdentifier", "imageIdentifier"),
        ("maxResults=abc&maxResults=1", "maxResults"),
    ] {
        let e = validation(m.parse_input(r.operation, &r.labels, q, &[], b""));
        assert_eq!(e.messages.len(), 1, "{q}: {e}");
        assert_eq!(e.messages[0].path, param, "{q}");
        assert_eq!(
            e.messages[0].message,
            format!(
                "Value at '{param}' failed to satisfy constraint: \
                 Query parameter '{param}' must not be repeated"
            ),
            "{q}"
        );
        assert_eq!(e.messages[0].kind, ConstraintKind::Repeated, "{q}");
    }
    // Different members, and unknown keys, may each appear once or more.
    let v = m
        .parse_input(
            r.operation,
            &r.labels,
            "maxResults=5&nextToken=t&x=1&x=2",
            &[],
            b"",
        )
        .unwrap();
    assert_eq!(v, json!({"maxResults": 5, "nextToken": "t"}));
}
