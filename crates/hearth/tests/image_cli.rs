//! `hearth image ...` against a live `hearth serve`: the CLI finds the
//! server's credentials in its data directory, speaks the API through the
//! Rust SDK, and reports API errors as the aws CLI does (exit 255).
//! Builds that need a real builder are seeded into the store.

mod support_api;

use std::process::Output;

use hearth_store::{AccountId, NewBuild, NewImageVersion, Store};
use serde_json::{json, Value};
use support_api::*;

/// `hearth image ARGS` against `s`, with no AWS variables: credentials come
/// from the data directory's `credentials` file.
fn image(s: &Server, args: &[&str]) -> Output {
    hearth()
        .arg("--data-dir")
        .arg(s.data.path())
        .arg("image")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", s.data.path())
        .env("HEARTH_ENDPOINT", &s.api)
        .output()
        .expect("run hearth image")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn image_ls_lists_images_with_the_data_dir_credentials() {
    let s = Server::start();
    let out = image(&s, &["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "NAME  STATE  LATEST-ACTIVE  CREATED\n");

    s.seed_image(&s.admin, "web");
    let out = image(&s, &["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = table.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["web", "CREATED", "1"], "{table}");
    assert!(cells[3].starts_with("2026-"), "{table}");

    let out = image(&s, &["ls", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "web");
    assert_eq!(v[0]["latestActiveImageVersion"], "1");
}

#[test]
fn image_create_with_an_unknown_base_prints_the_validation_error_and_exits_255() {
    let s = Server::start();
    let out = image(
        &s,
        &[
            "create",
            "app",
            "--code",
            "s3://bucket/app.zip",
            "--base",
            "no-such-base-image",
        ],
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "An error occurred (ValidationException) when calling the CreateMicrovmImage operation: "
        ),
        "{err}"
    );
    assert!(err.contains("microvm-image:no-such-base-image"), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn image_rm_of_an_unknown_name_is_resource_not_found_and_exits_255() {
    let s = Server::start();
    let out = image(&s, &["rm", "nope"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim(),
        "An error occurred (ResourceNotFoundException) when calling the DeleteMicrovmImage operation: MicroVM image nope not found"
    );
}

#[test]
fn image_get_shows_the_image_with_its_versions() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "api");
    let out = image(&s, &["get", "api"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["imageArn"], arn);
    assert_eq!(v["name"], "api");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{v}");
    assert_eq!(versions[0]["imageVersion"], "1");
    assert_eq!(versions[0]["status"], "ACTIVE");
    assert_eq!(
        versions[0]["codeArtifact"],
        json!({ "uri": "s3://bucket/app.zip" })
    );
}

/// Seed version 2 of `img-<name>` with one FAILED build.
fn seed_failed_version(s: &Server, name: &str) {
    let st = s.store();
    let acct = AccountId::new(&s.admin.account_id).unwrap();
    let image_id = format!("img-{name}");
    let v = st
        .create_image_version(
            &acct,
            &image_id,
            &NewImageVersion {
                state: "FAILED".into(),
                status: "INACTIVE".into(),
                created_at_secs: 1_790_000_010,
                doc: json!({
                    "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-python",
                    "buildRoleArn": format!("arn:aws:iam::{}:role/build", s.admin.account_id),
                    "codeArtifact": { "uri": "s3://bucket/app.zip" },
                }),
            },
        )
        .unwrap();
    st.create_build(
        &acct,
        &NewBuild {
            image_id,
            version: v.version.clone(),
            build_id: "bld-2".into(),
            state: "FAILED".into(),
            created_at_secs: 1_790_000_011,
            doc: json!({
                "architecture": "X86_64", "chipset": "INTEL", "chipsetGeneration": "any",
                "stateReason": "step 2/3 (RUN false) exited with status 1",
            }),
        },
    )
    .unwrap();
}

#[test]
fn image_logs_follow_reports_the_final_build_state_in_its_exit_code() {
    let s = Server::start();
    s.seed_image(&s.admin, "svc");
    // The latest version's latest build by default: version 1, SUCCESSFUL.
    let out = image(&s, &["logs", "svc", "--follow"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("build bld-1 of version 1: SUCCESSFUL"),
        "{stdout}"
    );

    seed_failed_version(&s, "svc");
    let out = image(&s, &["logs", "svc", "--follow"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "build bld-2 of version 2: FAILED (step 2/3 (RUN false) exited with status 1)"
        ),
        "{stdout}"
    );
    // An older version by name.
    let out = image(&s, &["logs", "svc", "--version", "1", "--follow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
