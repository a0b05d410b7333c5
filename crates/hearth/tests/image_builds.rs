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

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One TCG guest workload at a time across test binaries (as the other
/// end-to-end tests do).
fn e2e_lock() -> std::fs::File {
    let lock = std::fs::File::create(std::env::temp_dir().join("hearth-e2e.lock")).unwrap();
    // SAFETY: flock on a valid fd we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0);
    lock
}

/// A test's directories: the server's data and state dirs, the artifact
/// root, and the server's log. Kept across restarts of the server.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        let w = Work {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["data", "state", "artifacts"] {
            std::fs::create_dir_all(w.dir.path().join(d)).unwrap();
        }
        w
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }
    fn server_log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
    /// The last lines of every server run's stderr, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.server_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
    /// `data/images/<image id>/<version>` and `data/builds/<build id>`.
    fn build_files(&self, image_id: &str, version: &str, build_id: &str) -> Vec<PathBuf> {
        [
            self.data().join("images").join(image_id).join(version),
            self.data().join("builds").join(build_id),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }
}

/// A running `hearth serve` on loopback ports it picks.
struct Serve {
    child: Child,
    api: String,
    access_key_id: String,
    secret: String,
}

/// The guest egress a server prepares for its builds.
enum Egress {
    /// `--no-egress`: builds have no network (all but the PyPI build need
    /// none, and servers of other tests then share no namespace).
    None,
    /// A filtered egress namespace of this name on this /30, removed when
    /// the guard is dropped.
    Namespace {
        netns: &'static str,
        link_net: &'static str,
    },
}

impl Serve {
    fn start(w: &Work) -> Serve {
        Serve::start_with(w, &Egress::None)
    }

    fn start_with(w: &Work, egress: &Egress) -> Serve {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(w.server_log())
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .arg("--data-dir")
            .arg(w.data())
            .arg("--state-dir")
            .arg(w.state())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
            ])
            .arg("--artifact-root")
            .arg(w.artifacts())
            .args(match egress {
                Egress::None => vec!["--no-egress"],
                Egress::Namespace { netns, link_net } => {
                    vec!["--egress-netns", netns, "--egress-link-net", link_net]
                }
            })
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start hearth serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hearth serve did not start ({e}): {line:?}\n{}",
                w.log_tail()
            )
        });
        let creds = std::fs::read_to_string(w.data().join("credentials")).unwrap();
        let field = |k: &str| {
            creds
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k} = ")))
                .unwrap_or_else(|| panic!("no {k} in the credentials file"))
                .to_string()
        };
        Serve {
            api: info["api"].as_str().unwrap().to_string(),
            access_key_id: field("aws_access_key_id"),
            secret: field("aws_secret_access_key"),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would; reaped.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python venv with boto3 (`scripts/test.sh` creates it). Missing =
/// failure, never a skip.
fn pyenv() -> PathBuf {
    let p = std::env::var_os("HEARTH_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv"));
    assert!(
        p.join("bin/python").is_file(),
        "image build tests need the Python venv with boto3 at {} (scripts/test.sh creates it)",
        p.display()
    );
    p
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Run a scenario of clients/image_builds.py against `s`; returns its
/// `RESULT` document. Panics with the script's output and the server's
/// log when the scenario fails.
fn scenario(w: &Work, s: &Serve, name: &str, args: &[(&str, &str)]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/image_builds.py");
    let mut cmd = Command::new(pyenv().join("bin/python"));
    cmd.arg(script)
        .arg(name)
        .args(args.iter().map(|(k, v)| format!("{k}={v}")))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", w.dir.path())
        .env("HEARTH_ENDPOINT", &s.api)
        .env("AWS_ACCESS_KEY_ID", &s.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("ARTIFACT_DIR", w.artifacts())
        .env("EXAMPLES_DIR", examples_dir());
    let out = cmd.output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Shown with --nocapture (and by nextest for a failed test).
    eprintln!("--- scenario {name}\n{stdout}");
    assert!(
        out.status.success(),
        "scenario {name} failed:\n--- stdout\n{stdout}\n--- stderr\n{}\n--- server log (tail)\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.log_tail()
    );
    let result = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("scenario {name} printed no RESULT:\n{stdout}"));
    serde_json::from_str(result).unwrap()
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {v}"))
}

/// Assert that a build left nothing under the data dir.
/// Every file below `dir`, as strings.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn assert_no_build_files(w: &Work, r: &Value) {
    let left = w.build_files(
        str_of(r, "imageId"),
        str_of(r, "version"),
        str_of(r, "buildId"),
    );
    assert!(left.is_empty(), "the build left files behind: {left:?}");
}

// --- processes ---------------------------------------------------------------

/// A process as /proc shows it: pid, parent, command name, start time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    start_ticks: u64,
}

fn proc_of(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... starttime(19).
    if f.first() == Some(&"Z") {
        return None;
    }
    Some(Proc {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        comm,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_of)
        .collect()
}

/// Every live descendant of `root` (supervisors, QEMUs, ...).
fn descendants(root: u32) -> Vec<Proc> {
    let procs = all_procs();
    let mut out: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|c| c.ppid == p) {
            out.push(c.clone());
            frontier.push(c.pid);
        }
    }
    out
}

fn is_qemu(p: &Proc) -> bool {
    p.comm.starts_with("qemu-system")
}

/// Whether the same process (pid and start time) still lives.
fn still_alive(p: &Proc) -> bool {
    proc_of(p.pid).is_some_and(|now| now.start_ticks == p.start_ticks)
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
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
