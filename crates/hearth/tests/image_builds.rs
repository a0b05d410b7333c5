//! Image builds end to end, black-box: a real `hearth serve` (its own data
//! dir, state dir and `--artifact-root`), boto3 as the client
//! (clients/image_builds.py, one scenario per call), code artifacts zipped
//! from `examples/` by the script. What a client cannot see (the server's
//! files, its QEMU processes, a SIGKILL and a restart) is checked here.
//!
//! Tests whose builds boot microVMs are named `e2e_*` and hold the shared
//! e2e lock for their whole run (one TCG workload at a time on this
//! machine); at most two builds run at once inside one test. Tests whose
//! builds fail before any microVM starts (refused requests, a bad
//! Dockerfile) take no lock.

mod support_e2e;

use std::time::Duration;

use serde_json::Value;
use support_e2e::*;

/// Run a scenario of clients/image_builds.py against `s`.
fn scenario(w: &Work, s: &Serve, name: &str, args: &[(&str, &str)]) -> Value {
    client_scenario(w, s, "image_builds.py", name, args)
}

/// Assert that a build left nothing under the data dir.
fn assert_no_build_files(w: &Work, r: &Value) {
    let left = w.build_files(
        str_of(r, "imageId"),
        str_of(r, "version"),
        str_of(r, "buildId"),
    );
    assert!(left.is_empty(), "the build left files behind: {left:?}");
}

// --- requests refused at once (no microVM, no lock) ---------------------------

/// An unknown base image (or version), a `file://` outside the artifact
/// roots or missing under one, an unsupported scheme: ValidationException
/// before anything is created.
#[test]
fn create_refuses_what_it_could_never_build_synchronously() {
    let w = Work::new();
    let s = Serve::start(&w);
    scenario(&w, &s, "refused-at-once", &[("name", "never")]);
}

/// `minimumMemoryInMiB` outside the server's range (64, 100000) is a
/// ValidationException naming the member; nothing is created.
#[test]
fn create_refuses_minimum_memory_outside_the_servers_range() {
    let w = Work::new();
    let s = Serve::start(&w);
    scenario(&w, &s, "memory-range", &[("name", "mem")]);
}

/// A second image with a taken name: 400 ValidationException with the
/// service's exact message, and still one image.
#[test]
fn a_taken_image_name_is_refused_with_the_services_message() {
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "duplicate-name", &[("name", "dup")]);
    assert_eq!(
        r["message"],
        "A MicroVM image with the name 'dup' already exists in this account"
    );
}

/// boto3 with an explicit clientToken: the same request twice answers the
/// same image (one image, one version); the same token with another body
/// is a ConflictException.
#[test]
fn a_client_token_replay_answers_the_same_image_and_a_changed_body_conflicts() {
    let w = Work::new();
    let s = Serve::start(&w);
    scenario(&w, &s, "client-token", &[("name", "tok")]);
}

// --- builds that fail before a microVM starts (no lock) -----------------------

/// `VOLUME /x` on line 3: the build fails naming the line, the image is
/// CREATE_FAILED, and no files are left.
#[test]
fn a_dockerfile_with_an_unsupported_instruction_fails_naming_its_line() {
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "unsupported-instruction", &[("name", "volume")]);
    assert_no_build_files(&w, &r);
}

/// `FROM python:3.12` on a debian-12-python build: FAILED, naming FROM.
#[test]
fn a_from_that_is_not_the_base_image_fails_naming_from() {
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "from-mismatch", &[("name", "from")]);
    assert_no_build_files(&w, &r);
}

// --- builds in microVMs (e2e lock) ---------------------------------------------

/// hello-stdlib from a `file://` artifact: build SUCCESSFUL with snapshot
/// sizes, version SUCCESSFUL and ACTIVE, image CREATED, and the version's
/// files in the data dir; the build's scratch directory is gone.
#[test]
fn e2e_hello_stdlib_from_a_file_artifact_builds_to_an_active_version() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "success", &[("name", "hello")]);
    assert_no_build_files_but_the_version(&w, &r);
    assert!(
        descendants(s.pid()).iter().all(|p| !is_qemu(p)),
        "no microVM runs once the build ended: {:?}",
        descendants(s.pid())
    );
}

/// `RUN echo doomed-marker && false`: the build FAILS with a reason that
/// names the step and quotes its output; version FAILED, image
/// CREATE_FAILED; nothing left under `images/<id>/<version>`.
#[test]
fn e2e_a_failing_run_step_fails_the_build_naming_the_step_and_quoting_its_output() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "failing-run", &[("name", "doomed")]);
    assert_no_build_files(&w, &r);
    assert!(
        !w.data()
            .join("images")
            .join(str_of(&r, "imageId"))
            .join("1")
            .exists(),
        "a failed version has no files"
    );
}

/// The ready hook answers 503 for 8 s (READY_DELAY_SECS through
/// environmentVariables), then 200: the build waits for it and succeeds,
/// and its log shows the waiting.
#[test]
fn e2e_the_ready_hook_holds_the_snapshot_until_it_answers_200() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    // The log is read through GET /hearth/v1/images/{imageId}/versions/{v}/builds/{buildId}/logs.
    scenario(
        &w,
        &s,
        "ready-gating",
        &[("name", "slow-ready"), ("delay", "8")],
    );
}

/// A validate hook that answers 500 (VALIDATE_FAIL=1): FAILED, the reason
/// names the validate hook.
#[test]
fn e2e_a_validate_hook_that_refuses_fails_the_build() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "validate-rejects", &[("name", "invalid")]);
    assert_no_build_files(&w, &r);
}

/// DeleteMicrovmImage while the build runs in its microVM: the image is
/// gone (404), its files are gone, the build's microVMs end, and the server
/// builds another image afterwards.
#[test]
fn e2e_deleting_an_image_mid_build_removes_everything_and_the_server_builds_on() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "start-slow-build", &[("name", "doomed-build")]);
    // The builder microVM runs (the RUN step sleeps for two minutes).
    let qemus = wait_for("the builder's QEMU", Duration::from_secs(120), || {
        let q: Vec<Proc> = descendants(s.pid()).into_iter().filter(is_qemu).collect();
        (!q.is_empty()).then_some(q)
    });
    let (arn, build) = (str_of(&r, "imageArn"), str_of(&r, "buildId"));
    scenario(
        &w,
        &s,
        "delete-image",
        &[("arn", arn), ("build", build), ("name", "doomed-build")],
    );
    wait_for(
        "the deleted build's microVMs to end",
        Duration::from_secs(30),
        || qemus.iter().all(|p| !still_alive(p)).then_some(()),
    );
    let image_dir = w.data().join("images").join(str_of(&r, "imageId"));
    assert!(
        !image_dir.exists(),
        "the image's files remain: {}",
        image_dir.display()
    );
    assert_no_build_files(&w, &r);
    let logs = files_under(&w.data().join("logs"));
    assert!(
        !logs.iter().any(|p| p.contains("doomed-build")),
        "the deleted image's build log remains: {logs:?}"
    );
    // The server still builds.
    scenario(&w, &s, "success", &[("name", "after-delete")]);
}

/// Two images created back to back build to SUCCESSFUL, one of them with
/// `resources: [{minimumMemoryInMiB: 256}]`, which its version reports.
#[test]
fn e2e_two_builds_at_once_both_succeed_and_keep_their_minimum_memory() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "two-at-once", &[("name", "pair")]);
    let images = r["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for img in images {
        assert_no_build_files_but_the_version(&w, img);
    }
}

/// SIGKILL `hearth serve` while a build runs in its microVM, start it again
/// on the same data dir: the build is FAILED as interrupted, its version
/// FAILED and image CREATE_FAILED (never stuck), its files removed, and
/// none of the killed server's QEMUs survive.
#[test]
fn e2e_a_build_interrupted_by_a_killed_server_ends_failed_after_restart() {
    let _lock = e2e_lock();
    let w = Work::new();
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "start-slow-build", &[("name", "interrupted")]);
    wait_for("the builder's QEMU", Duration::from_secs(120), || {
        descendants(s.pid()).into_iter().find(is_qemu)
    });
    let children = descendants(s.pid());
    assert!(children.iter().any(is_qemu));
    s.kill9();
    wait_for(
        "the killed server's supervisors and QEMUs to end",
        Duration::from_secs(30),
        || children.iter().all(|p| !still_alive(p)).then_some(()),
    );
    let s = Serve::start(&w);
    scenario(
        &w,
        &s,
        "expect-interrupted",
        &[
            ("arn", str_of(&r, "imageArn")),
            ("build", str_of(&r, "buildId")),
        ],
    );
    assert_no_build_files(&w, &r);
    assert!(
        descendants(s.pid()).iter().all(|p| !is_qemu(p)),
        "the restarted server starts no microVM for the interrupted build"
    );
    assert!(
        children.iter().all(|p| !still_alive(p)),
        "a QEMU of the killed server came back: {children:?}"
    );
}

/// The announcement's Flask app: `pip install` of the pinned requirements
/// from PyPI in the builder (internet egress), gunicorn on 8080, SUCCESSFUL.
#[test]
fn e2e_flask_hello_builds_with_pip_install_from_pypi() {
    let _lock = e2e_lock();
    let w = Work::new();
    // An egress namespace of this test's own (not the default one a
    // developer's `hearth serve` may be using), removed at the end.
    const NETNS: &str = "hearth-e2e-ib";
    struct Teardown;
    impl Drop for Teardown {
        fn drop(&mut self) {
            if let Err(e) = hearth_net::teardown(NETNS) {
                eprintln!("tearing down {NETNS}: {e}");
            }
        }
    }
    let _teardown = Teardown;
    let s = Serve::start_with(
        &w,
        &Egress::Namespace {
            netns: NETNS,
            link_net: "10.213.0.200",
        },
    );
    let r = scenario(&w, &s, "flask", &[("name", "flask-hello")]);
    drop(s);
    assert_no_build_files_but_the_version(&w, &r);
}

/// A successful build keeps its version's files and nothing else.
fn assert_no_build_files_but_the_version(w: &Work, r: &Value) {
    assert!(
        w.data()
            .join("images")
            .join(str_of(r, "imageId"))
            .join(str_of(r, "version"))
            .is_dir(),
        "a successful version keeps its files: {r}"
    );
    assert!(
        !w.data().join("builds").join(str_of(r, "buildId")).exists(),
        "the build's scratch directory is removed: {r}"
    );
}
