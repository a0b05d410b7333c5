//! The API against the real clients: the aws CLI, boto3 and
//! capo-lambda-microvms (Python, from the venv scripts/test.sh builds), and
//! the official Rust SDK. Each test starts its own `hearth serve`.

mod support_api;

use serde_json::Value;
use support_api::*;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Every operation is reachable through the CLI and answers either success
/// or the right AWS error, with exit code 255 for errors.
#[test]
fn cli_reaches_every_operation_with_the_right_answers() {
    let s = Server::start();
    let a = s.admin.clone();
    let arn = s.seed_image(&a, "web");
    // Two: the first is touched by a lifecycle request (and found lost, as
    // the engine has no such microVM); the second keeps the image in use.
    let mvms = s.seed_microvms(&a, &arn, 2);
    let ok = |args: &[&str]| {
        let (code, out, err) = aws(&s, &a, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        if out.trim().is_empty() {
            Value::Null
        } else {
            json(&out)
        }
    };
    let fails = |args: &[&str], error: &str| {
        let (code, _, err) = aws(&s, &a, args);
        assert_eq!(code, 255, "{args:?} should fail with {error}: {err}");
        assert!(
            err.contains(&format!("An error occurred ({error})")),
            "{args:?}: {err}"
        );
    };
    let v = ok(&["lambda-microvms", "list-managed-microvm-images"]);
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["imageArn"]
        .as_str()
        .unwrap()
        .contains(":aws:microvm-image:")));
    let managed = "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-minimal";
    // `hearth setup` (scripts/test.sh) built the managed images; the server
    // offers them from its manifest.
    let listed: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["imageArn"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&managed),
        "{managed} not listed: {listed:?} (run `hearth setup`)"
    );
    let v = ok(&[
        "lambda-microvms",
        "list-managed-microvm-image-versions",
        "--image-identifier",
        managed,
    ]);
    assert_eq!(v["items"][0]["imageVersion"], "1");
    fails(
        &[
            "lambda-microvms",
            "list-managed-microvm-image-versions",
            "--image-identifier",
            "nope",
        ],
        "ResourceNotFoundException",
    );

    let v = ok(&[
        "lambda-microvms",
        "get-microvm-image",
        "--image-identifier",
        &arn,
    ]);
    assert_eq!(v["name"], "web");
    assert_eq!(
        ok(&[
            "lambda-microvms",
            "get-microvm-image",
            "--image-identifier",
            "web"
        ])["imageArn"],
        arn.as_str()
    );
    assert_eq!(
        ok(&["lambda-microvms", "list-microvm-images"])["items"][0]["imageArn"],
        arn.as_str()
    );
    let v = ok(&[
        "lambda-microvms",
        "get-microvm-image-version",
        "--image-identifier",
        &arn,
        "--image-version",
        "1",
    ]);
    assert_eq!(v["status"], "ACTIVE");
    assert_eq!(
        ok(&[
            "lambda-microvms",
            "list-microvm-image-versions",
            "--image-identifier",
            &arn
        ])["items"][0]["imageVersion"],
        "1"
    );
    let v = ok(&[
        "lambda-microvms",
        "get-microvm-image-build",
        "--image-identifier",
        &arn,
        "--image-version",
        "1",
        "--build-id",
        "bld-1",
    ]);
    assert_eq!(v["buildState"], "SUCCESSFUL");
    assert_eq!(
        ok(&[
            "lambda-microvms",
            "list-microvm-image-builds",
            "--image-identifier",
            &arn,
            "--image-version",
            "1"
        ])["items"][0]["buildId"],
        "bld-1"
    );
    fails(
        &[
            "lambda-microvms",
            "list-microvm-image-builds",
            "--image-identifier",
            &arn,
            "--image-version",
            "9",
        ],
        "ResourceNotFoundException",
    );
    assert_eq!(
        ok(&[
            "lambda-microvms",
            "get-microvm",
            "--microvm-identifier",
            &mvms[0]
        ])["state"],
        "RUNNING"
    );
    assert_eq!(
        ok(&["lambda-microvms", "list-microvms"])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let v = ok(&[
        "lambda-microvms",
        "update-microvm-image-version",
        "--image-identifier",
        &arn,
        "--image-version",
        "1",
        "--status",
        "INACTIVE",
    ]);
    assert_eq!(v["status"], "INACTIVE");

    // Tags on the image ARN.
    ok(&[
        "lambda",
        "tag-resource",
        "--resource",
        &arn,
        "--tags",
        "team=core,env=test",
    ]);
    let t = ok(&["lambda", "list-tags", "--resource", &arn]);
    assert_eq!(t["Tags"]["team"], "core");
    ok(&[
        "lambda",
        "untag-resource",
        "--resource",
        &arn,
        "--tag-keys",
        "team",
    ]);
    let t = ok(&["lambda", "list-tags", "--resource", &arn]);
    assert!(
        t["Tags"].get("team").is_none() && t["Tags"]["env"] == "test",
        "{t}"
    );

    // Image builds that could never run are refused at once, before any
    // record is written: an unknown base image, and a file:// artifact on a
    // server without --artifact-root. (Builds themselves: image_builds.rs.)
    fails(
        &[
            "lambda-microvms",
            "create-microvm-image",
            "--name",
            "x",
            "--base-image-arn",
            "arn:aws:lambda:us-east-1:aws:microvm-image:no-such-image",
            "--build-role-arn",
            "arn:aws:iam::123456789012:role/b",
            "--code-artifact",
            "uri=file:///etc/passwd",
        ],
        "ValidationException",
    );
    fails(
        &[
            "lambda-microvms",
            "create-microvm-image",
            "--name",
            "x",
            "--base-image-arn",
            managed,
            "--build-role-arn",
            "arn:aws:iam::123456789012:role/b",
            "--code-artifact",
            "uri=file:///etc/passwd",
        ],
        "ValidationException",
    );
    // The seeded version has no snapshot: nothing to launch, no change.
    fails(
        &["lambda-microvms", "run-microvm", "--image-identifier", &arn],
        "ResourceNotFoundException",
    );
    fails(
        &[
            "lambda-microvms",
            "update-microvm-image",
            "--image-identifier",
            &arn,
            "--base-image-arn",
            managed,
            "--build-role-arn",
            "arn:aws:iam::123456789012:role/b",
            "--code-artifact",
            "uri=file:///etc/passwd",
        ],
        "ValidationException",
    );
    // The refused update made no version and left the image as it was.
    let v = ok(&[
        "lambda-microvms",
        "list-microvm-image-versions",
        "--image-identifier",
        &arn,
    ]);
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        ok(&[
            "lambda-microvms",
            "get-microvm-image",
            "--image-identifier",
            &arn
        ])["state"],
        "CREATED"
    );
    fails(
        &[
            "lambda-microvms",
            "suspend-microvm",
            "--microvm-identifier",
            &mvms[0],
        ],
        // Seeded RUNNING with no microVM in the engine: found lost.
        "ConflictException",
    );
    for op in ["suspend-microvm", "resume-microvm", "terminate-microvm"] {
        fails(
            &["lambda-microvms", op, "--microvm-identifier", "mvm-missing"],
            "ResourceNotFoundException",
        );
    }
    fails(
        &[
            "lambda-microvms",
            "create-microvm-auth-token",
            "--microvm-identifier",
            "mvm-missing",
            "--expiration-in-minutes",
            "5",
            "--allowed-ports",
            "port=8080",
        ],
        "ResourceNotFoundException",
    );
    fails(
        &[
            "lambda-microvms",
            "create-microvm-shell-auth-token",
            "--microvm-identifier",
            "mvm-missing",
            "--expiration-in-minutes",
            "5",
        ],
        "ResourceNotFoundException",
    );
    // Error classes: validation (server-side pattern), conflict, not found.
    fails(
        &[
            "lambda-microvms",
            "list-microvm-images",
            "--name-filter",
            "has space",
        ],
        "ValidationException",
    );
    fails(
        &[
            "lambda-microvms",
            "delete-microvm-image",
            "--image-identifier",
            &arn,
        ],
        "ConflictException",
    );
    fails(
        &[
            "lambda-microvms",
            "get-microvm",
            "--microvm-identifier",
            "mvm-missing",
        ],
        "ResourceNotFoundException",
    );
    assert_eq!(
        ok(&["lambda-microvms", "list-microvm-images"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Delete a version, then (with no microVMs left) the image.
    ok(&[
        "lambda-microvms",
        "delete-microvm-image-version",
        "--image-identifier",
        &arn,
        "--image-version",
        "1",
    ]);
    fails(
        &[
            "lambda-microvms",
            "get-microvm-image-version",
            "--image-identifier",
            &arn,
            "--image-version",
            "1",
        ],
        "ResourceNotFoundException",
    );
}

/// Authentication failures map to 403 with an AWS error type in the CLI too.
#[test]
fn cli_auth_errors() {
    let s = Server::start();
    let mut bad = s.admin.clone();
    bad.secret = "x".repeat(40);
    let (code, _, err) = aws(&s, &bad, &["lambda-microvms", "list-microvms"]);
    assert_eq!(code, 255);
    assert!(err.contains("(InvalidSignatureException)"), "{err}");
    let mut unknown = s.admin.clone();
    unknown.access_key_id = "AKIAAAAAAAAAAAAAAAAA".into();
    let (code, _, err) = aws(&s, &unknown, &["lambda-microvms", "list-microvms"]);
    assert_eq!(code, 255);
    assert!(err.contains("(UnrecognizedClientException)"), "{err}");
    // A revoked key stops working at once.
    let other = s.create_account("revokee");
    assert_eq!(aws(&s, &other, &["lambda-microvms", "list-microvms"]).0, 0);
    let out = hearth()
        .arg("--data-dir")
        .arg(s.data.path())
        .args(["key", "revoke", &other.access_key_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, err) = aws(&s, &other, &["lambda-microvms", "list-microvms"]);
    assert_eq!(code, 255);
    assert!(err.contains("(UnrecognizedClientException)"), "{err}");
}

/// Another account sees nothing of the admin's and gets 404 for it.
#[test]
fn cross_account_isolation() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "private");
    let mvm = s.seed_microvms(&s.admin, &arn, 1).remove(0);
    let b = s.create_account("tenant-b");
    assert_ne!(b.account_id, s.admin.account_id);
    let (code, out, _) = aws(&s, &b, &["lambda-microvms", "list-microvm-images"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["items"].as_array().unwrap().len(), 0);
    let (_, out, _) = aws(&s, &b, &["lambda-microvms", "list-microvms"]);
    assert_eq!(json(&out)["items"].as_array().unwrap().len(), 0);
    for args in [
        vec![
            "lambda-microvms",
            "get-microvm-image",
            "--image-identifier",
            arn.as_str(),
        ],
        vec![
            "lambda-microvms",
            "get-microvm",
            "--microvm-identifier",
            mvm.as_str(),
        ],
        vec![
            "lambda-microvms",
            "delete-microvm-image",
            "--image-identifier",
            arn.as_str(),
        ],
        vec!["lambda", "list-tags", "--resource", arn.as_str()],
        vec![
            "lambda",
            "tag-resource",
            "--resource",
            arn.as_str(),
            "--tags",
            "x=y",
        ],
    ] {
        let (code, _, err) = aws(&s, &b, &args);
        assert_eq!(code, 255, "{args:?}");
        assert!(
            err.contains("(ResourceNotFoundException)"),
            "{args:?}: {err}"
        );
    }
    // And nothing changed for the owner.
    let (code, out, _) = aws(&s, &s.admin, &["lambda", "list-tags", "--resource", &arn]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["Tags"], serde_json::json!({}));
}

/// The CLI's auto-pagination walks more than 50 items; boto3 too (script).
#[test]
fn pagination_over_more_than_fifty_items() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "many");
    let ids = s.seed_microvms(&s.admin, &arn, 120);
    let (code, out, err) = aws(&s, &s.admin, &["lambda-microvms", "list-microvms"]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<String> = json(&out)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["microvmId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids);
    let (code, out, _) = aws(
        &s,
        &s.admin,
        &["lambda-microvms", "list-microvms", "--max-items", "7"],
    );
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["items"].as_array().unwrap().len(), 7);
    assert!(
        v["NextToken"].is_string() || v["nextToken"].is_string(),
        "{v}"
    );
}

/// boto3: SigV4 negatives with raw signed requests, malformed input, the
/// paginator, and that rejected requests change nothing.
#[test]
fn boto3_suite() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "boto");
    s.seed_microvms(&s.admin, &arn, 60);
    let out = python(&s, "boto3_suite.py", &[("IMAGE_ARN", &arn)]);
    assert!(out.contains("boto3 suite: ok"), "{out}");
}

/// capo-lambda-microvms validates nothing client-side: server validation.
#[test]
fn capo_suite() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "capo");
    let out = python(&s, "capo_suite.py", &[("IMAGE_ARN", &arn)]);
    assert!(out.contains("capo suite: ok"), "{out}");
}

/// The outside attack on the API, kept: unauthenticated memory and slow
/// clients, unsigned parts of a request, region, tags, error shapes and
/// client tokens, each as the probe found it (clients/attack_suite.py).
#[test]
fn attack_suite() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "attack");
    let pid = s.child.id().to_string();
    let other = s.create_account("other");
    let out = python(
        &s,
        "attack_suite.py",
        &[
            ("IMAGE_ARN", &arn),
            ("HEARTH_PROXY", &s.proxy),
            ("HEARTH_PID", &pid),
            ("OTHER_AK", &other.access_key_id),
            ("OTHER_SK", &other.secret),
        ],
    );
    assert!(out.contains("attack suite: ok"), "{out}");
}
