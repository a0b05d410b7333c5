//! Running microVMs end to end, black-box: a real `hearth serve` (its own
//! data dir, state dir and `--artifact-root`), images built from
//! `examples/hello-stdlib` or from the test apps in `tests/apps/`, and
//! real clients: the aws CLI and boto3 for the API, curl, Python
//! `requests` (HTTPS_PROXY with REQUESTS_CA_BUNDLE) and a WebSocket client
//! for the endpoint proxy (clients/microvms.py, one scenario per call).
//! What a client cannot see (the server's files, its QEMU processes, its
//! memory, a SIGKILL and a restart, tokens minted with the server's key
//! that the API would never mint) is done and checked here.
//!
//! Every test boots microVMs: all are named `e2e_*` (one at a time, see
//! .config/nextest.toml) and hold the shared e2e lock for their whole run.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_token::{Claims, TokenKey, TokenKind};
use serde_json::Value;

/// One TCG guest workload at a time across test binaries (as the other
/// end-to-end tests do).
fn e2e_lock() -> std::fs::File {
    let lock = std::fs::File::create(std::env::temp_dir().join("hearth-e2e.lock")).unwrap();
    let asked = Instant::now();
    // SAFETY: flock on a valid fd we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0);
    eprintln!(
        "e2e lock taken after {:.1} s",
        asked.elapsed().as_secs_f64()
    );
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
    /// The engine's state directory of `hearth serve` (`<data>/engine`).
    fn engine(&self) -> PathBuf {
        self.data().join("engine")
    }
    /// A microVM's files in the engine.
    fn microvm_files(&self, id: &str) -> PathBuf {
        self.engine().join("vms").join(id)
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
}

/// A running `hearth serve`.
struct Serve {
    child: Child,
    api: String,
    /// `127.0.0.1:<port>` of the endpoint proxy.
    proxy_addr: String,
    proxy_ca: PathBuf,
    access_key_id: String,
    secret: String,
}

impl Serve {
    /// On loopback ports it picks, with the default microVM settings
    /// (one warmed clone and one pre-started QEMU per image version).
    fn start(w: &Work) -> Serve {
        Serve::start_on(w, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// On these API and proxy addresses (a restart keeps its ports, so
    /// the endpoints it handed out stay right).
    fn start_on(w: &Work, api: &str, proxy: &str) -> Serve {
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
            .args(["serve", "--listen", api, "--proxy-listen", proxy])
            .arg("--artifact-root")
            .arg(w.artifacts())
            .arg("--no-egress")
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
        let proxy = info["proxy"].as_str().unwrap();
        Serve {
            api: info["api"].as_str().unwrap().to_string(),
            proxy_addr: proxy
                .strip_prefix("https://")
                .unwrap_or_else(|| panic!("the proxy speaks HTTPS: {info}"))
                .to_string(),
            proxy_ca: PathBuf::from(info["proxyCa"].as_str().unwrap()),
            access_key_id: field("aws_access_key_id"),
            secret: field("aws_secret_access_key"),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn api_addr(&self) -> &str {
        self.api.strip_prefix("http://").unwrap()
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

/// Ends every microVM a test left (they are persistent: they outlive the
/// server, warmed clones included): the supervisors and QEMUs that hold a
/// file of this test's data dir open. Nothing else is touched.
struct Cleanup<'a>(&'a Work);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let mine = self.0.data();
        for p in all_procs() {
            if (is_qemu(&p) || p.comm.starts_with("hearth-super")) && holds_file_under(p.pid, &mine)
            {
                // SAFETY: kill(2) of a process of this test; at worst it is gone.
                unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Whether the process has a file below `dir` open.
fn holds_file_under(pid: u32, dir: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
}

/// An account made with `hearth account create` on the server's data dir.
struct Account {
    id: String,
    access_key_id: String,
    secret: String,
}

fn create_account(w: &Work, name: &str) -> Account {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--data-dir")
        .arg(w.data())
        .args(["account", "create", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Account {
        id: v["accountId"].as_str().unwrap().into(),
        access_key_id: v["accessKeyId"].as_str().unwrap().into(),
        secret: v["secretAccessKey"].as_str().unwrap().into(),
    }
}

/// The Python venv with boto3, requests and the aws CLI (`scripts/test.sh`
/// creates it). Missing = failure, never a skip.
fn pyenv() -> PathBuf {
    let p = std::env::var_os("HEARTH_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv"));
    assert!(
        p.join("bin/python").is_file() && p.join("bin/aws").is_file(),
        "microVM tests need the Python venv with boto3 and the aws CLI at {} (scripts/test.sh creates it)",
        p.display()
    );
    p
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a scenario of clients/microvms.py against `s`; returns its
/// `RESULT` document. Panics with the script's output and the server's
/// log when the scenario fails.
fn scenario(w: &Work, s: &Serve, name: &str, args: &[(&str, &str)]) -> Value {
    let started = Instant::now();
    let py = pyenv();
    let out = Command::new(py.join("bin/python"))
        .arg(manifest_dir().join("tests/clients/microvms.py"))
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
        .env("AWS_CLI", py.join("bin/aws"))
        .env("CREDENTIALS_FILE", w.data().join("credentials"))
        .env("ARTIFACT_DIR", w.artifacts())
        .env("EXAMPLES_DIR", manifest_dir().join("../../examples"))
        .env("APPS_DIR", manifest_dir().join("tests/apps"))
        .env("PROXY_ADDR", &s.proxy_addr)
        .env("PROXY_CA", &s.proxy_ca)
        .env("HTTPS_PROXY", format!("http://{}", s.proxy_addr))
        .env("REQUESTS_CA_BUNDLE", &s.proxy_ca)
        .env("ENGINE_DIR", w.engine())
        .env("SERVE_PID", s.pid().to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Shown with --nocapture (and by nextest for a failed test).
    eprintln!(
        "--- scenario {name} ({:.1} s)\n{stdout}",
        started.elapsed().as_secs_f64()
    );
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

/// The 12-digit account of an ARN.
fn account_of(arn: &str) -> &str {
    arn.split(':')
        .nth(4)
        .unwrap_or_else(|| panic!("not an ARN: {arn}"))
}

/// A token signed with the server's own key (`<data>/proxy/token.key`):
/// what the API would never mint (expired, another account's, a shell
/// token) but the proxy must still judge by its claims.
fn mint(w: &Work, claims: &Claims) -> String {
    let key = TokenKey::load_or_create(&w.data().join("proxy").join("token.key")).unwrap();
    key.mint(claims)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// --- processes ---------------------------------------------------------------

/// A process as /proc shows it: pid, command name, real uid, start time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    comm: String,
    uid: u32,
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Proc {
        pid,
        comm,
        uid,
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

fn is_qemu(p: &Proc) -> bool {
    p.comm.starts_with("qemu-system")
}

/// Whether the same process (pid and start time) still lives.
fn still_alive(p: &Proc) -> bool {
    proc_of(p.pid).is_some_and(|now| now.start_ticks == p.start_ticks)
}

/// The QEMU of a running microVM: the one that holds its files open.
fn qemu_of(w: &Work, id: &str) -> Option<Proc> {
    let dir = w.microvm_files(id);
    all_procs()
        .into_iter()
        .find(|p| is_qemu(p) && holds_file_under(p.pid, &dir))
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

// --- tests -------------------------------------------------------------------

/// The announcement's walk-through, with the real `aws lambda-microvms`
/// CLI (credentials from `<data>/credentials`) and curl through the proxy:
/// build hello-stdlib, run it with an idle policy, mint a token, GET
/// /state, suspend-microvm (SUSPENDED), GET again: auto-resumed with its
/// memory (same process, counter + 1), terminate-microvm: get-microvm
/// says TERMINATED and the engine keeps no directory for it.
#[test]
fn e2e_reference_scenario_through_the_aws_cli() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "reference-cli", &[("name", "hello")]);
    let id = str_of(&r, "microvmId");
    assert!(
        !w.microvm_files(id).exists(),
        "a terminated microVM's files remain: {}",
        w.microvm_files(id).display()
    );
}

/// Python `requests` through HTTPS_PROXY with REQUESTS_CA_BUNDLE reaches
/// the app: its state, 3 MiB up, 1 MB down, the request headers it sees
/// (no X-aws-proxy-auth or X-aws-proxy-port, no token anywhere, Host is
/// the endpoint), X-aws-proxy-port 9090 reaching its second port and 502
/// where nothing listens; a WebSocket authenticated by subprotocols
/// echoes text, binary and ping, on 8080 and on 9090, and the app never
/// sees the `lambda-microvms` subprotocols; without a token, with a
/// tampered one or on a port it does not allow, the upgrade is 403.
#[test]
fn e2e_python_requests_and_websockets_reach_the_app_through_the_proxy_without_its_credentials() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    scenario(&w, &s, "data-plane", &[("name", "probe")]);
}

/// A token opens only its microVM, on its ports, in its account, until
/// it expires: missing, malformed, re-signed-less (MAC changed, claims
/// widened to all ports, claims moved to another microVM), another
/// microVM's, a port outside it, expired or shell tokens are 403; a
/// correctly signed token naming another account, or a microVM that does
/// not exist, is 404; none reaches the app. Ranges and allPorts open what
/// they say. Account B gets 404 for every call on A's microVM (so it can
/// never mint a token for it), lists nothing and cannot run A's image.
#[test]
fn e2e_tokens_open_only_their_own_microvm_on_their_ports_in_their_account() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let b = create_account(&w, "tenant-b");
    let r = scenario(&w, &s, "token-setup", &[("name", "probe")]);
    let (image, a_id) = (str_of(&r, "imageArn"), str_of(&r, "a"));
    let account_a = account_of(image);
    assert_ne!(account_a, b.id);
    let claims = |account: &str, microvm: &str, kind, expires_at_secs| Claims {
        account_id: account.into(),
        microvm_id: microvm.into(),
        kind,
        ports: if kind == TokenKind::Http {
            vec![(8080, 8080)]
        } else {
            vec![]
        },
        expires_at_secs,
    };
    let expired = mint(
        &w,
        &claims(account_a, a_id, TokenKind::Http, now_secs() - 5),
    );
    let foreign = mint(&w, &claims(&b.id, a_id, TokenKind::Http, now_secs() + 600));
    let ghost = "mvm-doesnotexist0000";
    let ghost_token = mint(
        &w,
        &claims(account_a, ghost, TokenKind::Http, now_secs() + 600),
    );
    let shell = mint(
        &w,
        &claims(account_a, a_id, TokenKind::Shell, now_secs() + 600),
    );
    scenario(
        &w,
        &s,
        "token-scope",
        &[
            ("a", a_id),
            ("b", str_of(&r, "b")),
            ("expired", &expired),
            ("foreign", &foreign),
            ("ghost", ghost),
            ("ghost_token", &ghost_token),
            ("shell", &shell),
        ],
    );
    scenario(
        &w,
        &s,
        "cross-account",
        &[
            ("a", a_id),
            ("imageArn", image),
            ("b_key", &b.access_key_id),
            ("b_secret", &b.secret),
        ],
    );
}

/// The idle policy for real, its deadlines overlapped: a microVM with
/// maxIdleDurationSeconds 60 and no traffic is still RUNNING at 55 s and
/// SUSPENDED by ~75 s, and five requests at once resume it (once: one
/// process answers all, each counted once); one whose only traffic is
/// a WebSocket message every 10 s stays RUNNING; suspendedDurationSeconds
/// 5 after an explicit suspend ends TERMINATED within ~10 s with the
/// retention reason and its files deleted; maximumDurationInSeconds 8 ends
/// TERMINATED with "maximum duration of the microVM elapsed". Without
/// autoResume a SUSPENDED microVM answers 409 through the proxy (and stays
/// SUSPENDED) until ResumeMicrovm brings it back with its memory. Suspend
/// of a SUSPENDED or TERMINATED microVM, resume of a RUNNING or
/// TERMINATED one and terminate of a TERMINATED one are ConflictExceptions.
#[test]
fn e2e_idle_policy_deadlines_and_manual_lifecycle_requests_act_on_time_and_refuse_bad_transitions()
{
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "build", &[("name", "probe"), ("app", "probe")]);
    let r = scenario(&w, &s, "lifecycle", &[("imageArn", str_of(&r, "imageArn"))]);
    eprintln!("lifecycle timings: {r}");
    for id in r["ids"].as_array().unwrap() {
        let dir = w.microvm_files(id.as_str().unwrap());
        assert!(!dir.exists(), "terminated, yet {} remains", dir.display());
    }
}

/// 100 MiB up and 100 MiB down through the proxy at once, both intact,
/// while a third client's GET /state every 0.5 s answers within 2 s; the
/// server's RSS grows by less than 64 MiB (bodies stream, nothing is
/// buffered whole).
#[test]
fn e2e_100_mib_each_way_streams_through_the_proxy_with_prompt_side_requests_and_bounded_memory() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "streaming", &[("name", "probe")]);
    eprintln!("streaming: {r}");
}

/// SIGKILL `hearth serve` while one microVM runs and one is suspended,
/// start it again on the same directories and ports: the running one's
/// QEMU lived on and is the same process, both are listed RUNNING and
/// SUSPENDED, the running one answers with its memory (same hostname and
/// process, counter + 1), the suspended one resumes on request with its
/// memory, and the tokens minted before the kill still work. A third,
/// idle limit 60 s without auto-resume, requested every 5 s for 65 s up to
/// the kill, keeps its idle clock: it stays RUNNING after the restart and
/// answers.
#[test]
fn e2e_a_sigkilled_server_restarts_with_its_running_and_suspended_microvms_intact() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let before = scenario(&w, &s, "restart-before", &[("name", "hello")]);
    let running = str_of(&before["running"], "id").to_string();
    let suspended = str_of(&before["suspended"], "id").to_string();
    let qemu = qemu_of(&w, &running).expect("the running microVM's QEMU");
    assert!(
        qemu_of(&w, &suspended).is_none(),
        "a suspended microVM has no QEMU"
    );
    let (api, proxy) = (s.api_addr().to_string(), s.proxy_addr.clone());
    s.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        still_alive(&qemu),
        "the running microVM's QEMU died with the server"
    );
    let s = Serve::start_on(&w, &api, &proxy);
    // The server prints its line once recovery is done.
    assert!(
        still_alive(&qemu),
        "the running microVM was re-adopted, not relaunched: its QEMU is the same process"
    );
    scenario(&w, &s, "restart-after", &[("before", &before.to_string())]);
    assert!(still_alive(&qemu), "the re-adopted QEMU still runs");
    let resumed = wait_for("the resumed microVM's QEMU", Duration::from_secs(5), || {
        qemu_of(&w, &suspended)
    });
    assert_ne!(resumed.pid, qemu.pid);
}

/// Many microVMs of one image at once: SUSPENDED ones, each having
/// answered, then RUNNING ones beside them, each answering with its own
/// hostname (its microVM id) and counter; ListMicrovms pages through all
/// with their states, and suspended ones picked at random resume with
/// their own memory.
#[test]
fn e2e_twenty_running_beside_a_hundred_suspended_microvms_each_keep_their_own_state() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let started = Instant::now();
    let r = scenario(&w, &s, "build", &[("name", "hello")]);
    let (suspended, running) = (
        std::env::var("HEARTH_MANY_SUSPENDED").unwrap_or_else(|_| "100".into()),
        std::env::var("HEARTH_MANY_RUNNING").unwrap_or_else(|_| "20".into()),
    );
    let r = scenario(
        &w,
        &s,
        "many",
        &[
            ("imageArn", str_of(&r, "imageArn")),
            ("suspended", &suspended),
            ("running", &running),
        ],
    );
    eprintln!(
        "many: {} s, RunMicrovm p50 {} s, suspend p50 {} s ({:.0} s with the build)",
        r["totalSecs"],
        r["runP50Secs"],
        r["suspendP50Secs"],
        started.elapsed().as_secs_f64()
    );
    for id in r["running"].as_array().unwrap() {
        assert!(
            qemu_of(&w, id.as_str().unwrap()).is_some(),
            "{id} RUNNING has a QEMU"
        );
    }
    drop(s);
    drop(_cleanup);
    let checked = Instant::now();
    drop(w);
    eprintln!(
        "{:.0} s in all; removing the test's directory took {:.0} s of it",
        started.elapsed().as_secs_f64(),
        checked.elapsed().as_secs_f64()
    );
}
