//! The black-box end-to-end harness shared by the image build and microVM
//! tests: a real `hearth serve` child (its own data dir, state dir and
//! `--artifact-root` in a temp dir, loopback ports), the shared e2e lock,
//! the Python client scenarios (boto3, the aws CLI, `requests`) run from the
//! test venv, and what a client cannot see: the server's processes as /proc
//! shows them and the files they hold.
//!
//! Runs on the test's own thread; nothing here starts threads of its own.

#![allow(dead_code)]

pub mod shell;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One TCG guest workload at a time across test binaries: every test that
/// boots a microVM holds this lock for its whole run.
pub fn e2e_lock() -> std::fs::File {
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
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Default for Work {
    fn default() -> Self {
        Work::new()
    }
}

impl Work {
    pub fn new() -> Self {
        let w = Work {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["data", "state", "artifacts"] {
            std::fs::create_dir_all(w.dir.path().join(d)).unwrap();
        }
        w
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }
    /// The engine's state directory of `hearth serve` (`<data>/engine`).
    pub fn engine(&self) -> PathBuf {
        self.data().join("engine")
    }
    /// A microVM's files in the engine.
    pub fn microvm_files(&self, id: &str) -> PathBuf {
        self.engine().join("vms").join(id)
    }
    /// `data/images/<image id>/<version>` and `data/builds/<build id>`,
    /// those that exist.
    pub fn build_files(&self, image_id: &str, version: &str, build_id: &str) -> Vec<PathBuf> {
        [
            self.data().join("images").join(image_id).join(version),
            self.data().join("builds").join(build_id),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }
    pub fn server_log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
    /// The last lines of every server run's stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.server_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// The guest egress a server prepares for its builds.
pub enum Egress {
    /// `--no-egress`: builds have no network (all but the PyPI build need
    /// none, and servers of other tests then share no namespace).
    None,
    /// A filtered egress namespace of this name on this /30.
    Namespace {
        netns: &'static str,
        link_net: &'static str,
    },
}

/// A running `hearth serve`, killed (SIGKILL) and reaped when dropped.
pub struct Serve {
    pub child: Child,
    /// `http://127.0.0.1:<port>` of the API.
    pub api: String,
    /// `127.0.0.1:<port>` of the endpoint proxy.
    pub proxy_addr: String,
    /// The CA that signed the proxy's certificate.
    pub proxy_ca: PathBuf,
    pub access_key_id: String,
    pub secret: String,
}

impl Serve {
    /// On loopback ports it picks, without egress, with the default
    /// microVM settings (one warmed clone and one pre-started QEMU per
    /// image version).
    pub fn start(w: &Work) -> Serve {
        Serve::launch(w, "127.0.0.1:0", "127.0.0.1:0", &Egress::None)
    }

    /// On loopback ports it picks, with this egress for builds.
    pub fn start_with(w: &Work, egress: &Egress) -> Serve {
        Serve::launch(w, "127.0.0.1:0", "127.0.0.1:0", egress)
    }

    /// On these API and proxy addresses (a restart keeps its ports, so
    /// the endpoints it handed out stay right).
    pub fn start_on(w: &Work, api: &str, proxy: &str) -> Serve {
        Serve::launch(w, api, proxy, &Egress::None)
    }

    fn launch(w: &Work, api: &str, proxy: &str, egress: &Egress) -> Serve {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:<port>` of the API.
    pub fn api_addr(&self) -> &str {
        self.api.strip_prefix("http://").unwrap()
    }

    /// SIGTERM, as a service manager stops it; asserts that it exits 0
    /// within a minute.
    pub fn stop(mut self, w: &Work) {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "hearth serve did not stop within 60 s of SIGTERM\n{}",
                w.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "hearth serve stopped with {status} after SIGTERM\n{}",
            w.log_tail()
        );
    }

    /// SIGKILL, as a crash would; reaped.
    pub fn kill9(mut self) {
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
pub struct Cleanup<'a>(pub &'a Work);

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

/// The Python venv with boto3, requests and the aws CLI
/// (`scripts/test.sh` creates it). Missing = failure, never a skip.
pub fn pyenv() -> PathBuf {
    let p = std::env::var_os("HEARTH_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../target/pyenv"));
    assert!(
        p.join("bin/python").is_file() && p.join("bin/aws").is_file(),
        "end-to-end tests need the Python venv with boto3 and the aws CLI at {} (scripts/test.sh creates it)",
        p.display()
    );
    p
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn examples_dir() -> PathBuf {
    manifest_dir().join("../../examples")
}

/// Run scenario `name` of `tests/clients/<script>` against `s` (one
/// scenario per call; arguments as `key=value`); returns its `RESULT`
/// document. The script sees only what this sets: the API endpoint and
/// credentials, the aws CLI, the artifact, example and test-app dirs, the
/// proxy (as `HTTPS_PROXY` with its CA bundle) and the engine dir. Panics
/// with the script's output and the server's log when the scenario fails.
pub fn client_scenario(
    w: &Work,
    s: &Serve,
    script: &str,
    name: &str,
    args: &[(&str, &str)],
) -> Value {
    let started = Instant::now();
    let py = pyenv();
    let env: [(&str, OsString); 19] = [
        ("PATH", "/usr/bin:/bin".into()),
        ("HOME", w.dir.path().into()),
        ("HEARTH_ENDPOINT", s.api.clone().into()),
        ("AWS_ACCESS_KEY_ID", s.access_key_id.clone().into()),
        ("AWS_SECRET_ACCESS_KEY", s.secret.clone().into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_MAX_ATTEMPTS", "1".into()),
        ("AWS_CLI", py.join("bin/aws").into()),
        ("CREDENTIALS_FILE", w.data().join("credentials").into()),
        ("ARTIFACT_DIR", w.artifacts().into()),
        ("EXAMPLES_DIR", examples_dir().into()),
        ("APPS_DIR", manifest_dir().join("tests/apps").into()),
        ("PROXY_ADDR", s.proxy_addr.clone().into()),
        ("PROXY_CA", s.proxy_ca.clone().into()),
        ("HTTPS_PROXY", format!("http://{}", s.proxy_addr).into()),
        ("REQUESTS_CA_BUNDLE", s.proxy_ca.clone().into()),
        ("ENGINE_DIR", w.engine().into()),
        ("SERVE_PID", s.pid().to_string().into()),
        ("PYTHONUNBUFFERED", "1".into()),
    ];
    let out = Command::new(py.join("bin/python"))
        .arg(manifest_dir().join("tests/clients").join(script))
        .arg(name)
        .args(args.iter().map(|(k, v)| format!("{k}={v}")))
        .env_clear()
        .envs(env)
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

pub fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {v}"))
}

/// Every file below `dir`, as strings.
pub fn files_under(dir: &Path) -> Vec<String> {
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

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// --- processes ---------------------------------------------------------------

/// A process as /proc shows it: pid, parent, command name, real uid,
/// start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub uid: u32,
    pub start_ticks: u64,
}

pub fn proc_of(pid: u32) -> Option<Proc> {
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
        ppid: f.get(1)?.parse().ok()?,
        comm,
        uid,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

pub fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_of)
        .collect()
}

/// Every live descendant of `root` (supervisors, QEMUs, ...).
pub fn descendants(root: u32) -> Vec<Proc> {
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

pub fn is_qemu(p: &Proc) -> bool {
    p.comm.starts_with("qemu-system")
}

/// Whether the same process (pid and start time) still lives.
pub fn still_alive(p: &Proc) -> bool {
    proc_of(p.pid).is_some_and(|now| now.start_ticks == p.start_ticks)
}

/// Whether the process has a file below `dir` open.
pub fn holds_file_under(pid: u32, dir: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
}

/// The QEMU of a running microVM: the one that holds its files open.
pub fn qemu_of(w: &Work, id: &str) -> Option<Proc> {
    let dir = w.microvm_files(id);
    all_procs()
        .into_iter()
        .find(|p| is_qemu(p) && holds_file_under(p.pid, &dir))
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token signed with the server's own key (`<data>/proxy/token.key`):
/// what the API would never mint (expired, another account's, a shell
/// token for a microVM without the shell) but the proxy must still judge by
/// its claims.
pub fn mint(w: &Work, claims: &hearth_token::Claims) -> String {
    let key =
        hearth_token::TokenKey::load_or_create(&w.data().join("proxy").join("token.key")).unwrap();
    key.mint(claims)
}
