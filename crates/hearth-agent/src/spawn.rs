//! Starting one process: validation of an [`ExecRequest`] into a
//! [`SpawnSpec`] (reader thread), then `fork` + `execve` (the process's
//! supervisor thread), with pipes or a pseudo-terminal as its stdio.
//!
//! `std::process::Command` is not used: its failure path calls `waitpid` on
//! the child itself, which races with (and can panic against) the reaper that
//! owns all waiting in PID 1. Here the child is registered with the reaper
//! under the registry lock held across `fork`, so its status always reaches
//! its owner. Everything the child needs (C strings, pointer arrays, fds) is
//! prepared before `fork`; between `fork` and `execve` the child makes only
//! async-signal-safe calls and never allocates. A PTY child opens the slave
//! (by a path prepared before `fork`) after `setsid`, makes it its
//! controlling terminal with `TIOCSCTTY` and `dup2`s it onto 0, 1 and 2.
//! A failure in the child is
//! reported back as `(step, errno)` over a close-on-exec pipe: EOF on that
//! pipe means `execve` succeeded.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hearth_proto::{AgentError, AgentErrorKind, ExecRequest};

use crate::errors::{agent_error, check_path, invalid, io_error, kind_of_errno};
use crate::reaper::{self, ExitCallback};
use crate::users::{self, Creds};

/// `PATH` for children (and the default for `PATH` lookups).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` for root.
pub const DEFAULT_HOME: &str = "/root";
/// `TERM` for PTY processes whose request sets none.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// A validated, ready-to-exec command.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    /// `argv[0]` as the host sent it (for messages).
    pub argv0: String,
    /// The program after the `PATH` lookup.
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    creds: Option<Creds>,
}

/// What the child gets as stdin, stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stdio<'a> {
    /// Pipes for stdout and stderr; stdin is a pipe too when `stdin` is
    /// set, `/dev/null` otherwise.
    Pipes { stdin: bool },
    /// The slave of a pseudo-terminal (by path) as all three, and as the
    /// controlling terminal of the child's new session.
    Pty { slave_path: &'a CStr },
}

/// The agent's ends of a child's stdio.
#[derive(Debug)]
pub(crate) enum ChildIo {
    Pipes {
        /// Write end of stdin, when a pipe was asked for.
        stdin: Option<File>,
        stdout: File,
        stderr: File,
    },
    /// The terminal: the caller keeps the master.
    Pty,
}

/// A started process (leader of its own session and process group).
#[derive(Debug)]
pub(crate) struct Child {
    pub pid: libc::pid_t,
    pub io: ChildIo,
}

fn cstring(field: &str, s: &str) -> Result<CString, AgentError> {
    CString::new(s).map_err(|_| invalid(format_args!("{field} contains a NUL byte")))
}

impl SpawnSpec {
    /// Validate `req` and resolve everything that can be resolved up front
    /// (user, environment, program path). `etc_dir` is normally `/etc`.
    pub(crate) fn prepare(req: &ExecRequest, etc_dir: &Path) -> Result<SpawnSpec, AgentError> {
        if let Some(size) = req.pty {
            if size.cols == 0 || size.rows == 0 {
                return Err(invalid(format_args!(
                    "terminal size {}x{} has a zero dimension",
                    size.cols, size.rows
                )));
            }
        }
        let Some(argv0) = req.argv.first() else {
            return Err(invalid("argv is empty"));
        };
        if argv0.is_empty() {
            return Err(invalid("argv[0] is empty"));
        }
        let argv = req
            .argv
            .iter()
            .enumerate()
            .map(|(i, a)| cstring(&format!("argv[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = req.cwd.as_deref().unwrap_or("/");
        check_path("cwd", cwd)?;
        let creds = match &req.user {
            Some(user) => Some(users::resolve(user, etc_dir)?),
            None => None,
        };

        let mut env: Vec<(String, String)> = Vec::new();
        if !req.clear_env {
            let home = creds.as_ref().map_or(DEFAULT_HOME, |c| c.home.as_str());
            env.push(("PATH".into(), DEFAULT_PATH.into()));
            env.push(("HOME".into(), home.into()));
            if req.pty.is_some() {
                env.push(("TERM".into(), DEFAULT_TERM.into()));
            }
        }
        for (key, value) in &req.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(format_args!(
                    "environment variable name {key:?} is invalid"
                )));
            }
            if value.contains('\0') {
                return Err(invalid(format_args!(
                    "environment variable {key} contains a NUL byte"
                )));
            }
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
        let search_path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let program = resolve_program(argv0, search_path)?;
        let envp = env
            .iter()
            .map(|(k, v)| cstring("environment", &format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(SpawnSpec {
            argv0: argv0.clone(),
            program: cstring("argv[0]", &program)?,
            argv,
            envp,
            cwd: cstring("cwd", cwd)?,
            creds,
        })
    }
}

/// `execvp`-style lookup of `argv0` in `search_path`, done in the agent
/// (before `fork`) so a missing program is a clean `NotFound`. Names with a
/// `/` are used as they are (relative ones against the child's cwd).
fn resolve_program(argv0: &str, search_path: &str) -> Result<String, AgentError> {
    if argv0.contains('/') {
        return Ok(argv0.to_string());
    }
    let mut not_executable = None;
    for dir in search_path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{argv0}", dir.trim_end_matches('/'));
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
            if meta.is_file() {
                not_executable.get_or_insert(candidate);
            }
        }
    }
    match not_executable {
        Some(path) => Err(agent_error(
            AgentErrorKind::PermissionDenied,
            format_args!("{argv0}: {path} is not executable"),
        )),
        None => Err(agent_error(
            AgentErrorKind::NotFound,
            format_args!("{argv0}: command not found in PATH {search_path}"),
        )),
    }
}

/// The steps of the child between `fork` and `execve`, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Setsid = 1,
    Dup2 = 2,
    Setgroups = 3,
    Setgid = 4,
    Setuid = 5,
    Chdir = 6,
    Exec = 7,
    OpenTty = 8,
    SetCtty = 9,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Setsid => "setsid",
            Step::Dup2 => "dup2",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
            Step::Chdir => "chdir",
            Step::Exec => "execve",
            Step::OpenTty => "open the terminal",
            Step::SetCtty => "TIOCSCTTY",
        }
    }

    fn from_u32(v: u32) -> Option<Step> {
        [
            Step::Setsid,
            Step::Dup2,
            Step::Setgroups,
            Step::Setgid,
            Step::Setuid,
            Step::Chdir,
            Step::Exec,
            Step::OpenTty,
            Step::SetCtty,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

/// A close-on-exec pipe, both ends above the stdio fds.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new fds into the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Move `fd` to a number >= 3 (close-on-exec), so the child's `dup2`s onto
/// 0, 1 and 2 can never clobber a source fd.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd (or -1); the
    // original stays owned by `fd` and is closed when it drops.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn open_dev_null() -> io::Result<OwnedFd> {
    let file = File::open("/dev/null")?;
    above_stdio(OwnedFd::from(file))
}

/// The child's stdio, prepared before `fork`.
enum ChildStdio<'a> {
    /// `dup2` these onto 0, 1 and 2.
    Fds([libc::c_int; 3]),
    /// Open this terminal after `setsid` and make it fds 0, 1, 2.
    Tty(&'a CStr),
}

/// Everything the child touches, prepared before `fork`.
struct ChildPlan<'a> {
    stdio: ChildStdio<'a>,
    report_fd: libc::c_int,
    program: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    cwd: &'a CStr,
    creds: Option<&'a Creds>,
}

/// The agent's ends of the pipes of a child, before `fork`.
struct PipeEnds {
    stdin_child: OwnedFd,
    stdin_parent: Option<OwnedFd>,
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
}

/// Start `spec` in a new session with `stdio`. `on_exit` gets its exit
/// status (from the reaper thread).
pub(crate) fn spawn(
    spec: &SpawnSpec,
    stdio: Stdio<'_>,
    on_exit: ExitCallback,
) -> Result<Child, AgentError> {
    let fail = |what: &str, e: io::Error| io_error(format_args!("{what} for {}", spec.argv0), &e);
    let pipes = match stdio {
        Stdio::Pty { .. } => None,
        Stdio::Pipes { stdin } => {
            let (out_r, out_w) = pipe().map_err(|e| fail("stdout pipe", e))?;
            let (err_r, err_w) = pipe().map_err(|e| fail("stderr pipe", e))?;
            let (stdin_child, stdin_parent) = if stdin {
                let (r, w) = pipe().map_err(|e| fail("stdin pipe", e))?;
                (r, Some(w))
            } else {
                (
                    open_dev_null().map_err(|e| fail("open /dev/null", e))?,
                    None,
                )
            };
            Some(PipeEnds {
                stdin_child,
                stdin_parent,
                out_r,
                out_w,
                err_r,
                err_w,
            })
        }
    };
    let (report_r, report_w) = pipe().map_err(|e| fail("exec report pipe", e))?;

    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let child_stdio = match (&pipes, stdio) {
        (Some(p), _) => ChildStdio::Fds([
            p.stdin_child.as_raw_fd(),
            p.out_w.as_raw_fd(),
            p.err_w.as_raw_fd(),
        ]),
        (None, Stdio::Pty { slave_path }) => ChildStdio::Tty(slave_path),
        (None, Stdio::Pipes { .. }) => {
            return Err(agent_error(
                AgentErrorKind::Io,
                "internal error: pipes were not prepared",
            ))
        }
    };
    let plan = ChildPlan {
        stdio: child_stdio,
        report_fd: report_w.as_raw_fd(),
        program: &spec.program,
        argv: &argv,
        envp: &envp,
        cwd: &spec.cwd,
        creds: spec.creds.as_ref(),
    };

    let registry = reaper::global();
    let mut guard = registry.lock_for_spawn();
    // SAFETY: fork has no memory-safety preconditions. The child runs only
    // exec_child, which makes async-signal-safe calls on data prepared
    // above and never returns (execve or _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see exec_child's contract.
        unsafe { exec_child(&plan) }
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        drop(guard);
        return Err(fail("fork", e));
    }
    guard.register(pid, on_exit);
    drop(guard);
    drop(report_w);
    let io = match pipes {
        Some(p) => {
            drop((p.stdin_child, p.out_w, p.err_w));
            ChildIo::Pipes {
                stdin: p.stdin_parent.map(File::from),
                stdout: File::from(p.out_r),
                stderr: File::from(p.err_r),
            }
        }
        None => ChildIo::Pty,
    };

    let mut report = [0u8; 8];
    let mut got = 0;
    let mut report_file = File::from(report_r);
    while got < report.len() {
        match report_file.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                registry.unregister(pid);
                return Err(fail("read exec report", e));
            }
        }
    }
    if got == 0 {
        return Ok(Child { pid, io });
    }
    // The child failed before execve and exits with 127; the reaper reaps
    // it and drops its status.
    registry.unregister(pid);
    if got < report.len() {
        return Err(agent_error(
            AgentErrorKind::Io,
            format_args!("{}: truncated exec report from the child", spec.argv0),
        ));
    }
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let err = io::Error::from_raw_os_error(errno);
    let what = match Step::from_u32(step) {
        Some(Step::Exec) => format!("exec {} ({})", spec.argv0, spec.program.to_string_lossy()),
        Some(Step::Chdir) => format!("chdir {} for {}", spec.cwd.to_string_lossy(), spec.argv0),
        Some(other) => format!("{} for {}", other.name(), spec.argv0),
        None => format!("child setup step {step} for {}", spec.argv0),
    };
    Err(agent_error(
        kind_of_errno(errno),
        format_args!("{what}: {err}"),
    ))
}

/// The child side of `spawn`.
///
/// # Safety
///
/// Call only in the child right after `fork`. It makes only
/// async-signal-safe calls (no allocation, no locks) on the pointers in
/// `plan`, which stay valid because the child has a copy of the parent's
/// memory, and it never returns.
unsafe fn exec_child(plan: &ChildPlan<'_>) -> ! {
    let report = |step: Step| -> ! {
        // SAFETY: errno location is thread-local and valid; write() on our
        // own pipe fd and _exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
            buf[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(plan.report_fd, buf.as_ptr().cast(), buf.len());
            libc::_exit(127)
        }
    };
    // SAFETY: every call below is async-signal-safe and takes either plain
    // integers or pointers into memory prepared before fork.
    unsafe {
        // The agent's threads may block signals and Rust ignores SIGPIPE;
        // a child must start with the defaults.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        if libc::setsid() < 0 {
            report(Step::Setsid);
        }
        match plan.stdio {
            ChildStdio::Fds(fds) => {
                for (target, &src) in fds.iter().enumerate() {
                    let target = target as libc::c_int;
                    let ok = if src == target {
                        libc::fcntl(src, libc::F_SETFD, 0) >= 0
                    } else {
                        libc::dup2(src, target) >= 0
                    };
                    if !ok {
                        report(Step::Dup2);
                    }
                }
            }
            ChildStdio::Tty(path) => {
                // A session leader without a terminal: opening one without
                // O_NOCTTY may already make it the controlling terminal;
                // TIOCSCTTY makes sure.
                let tty = libc::open(path.as_ptr(), libc::O_RDWR);
                if tty < 0 {
                    report(Step::OpenTty);
                }
                if libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                    report(Step::SetCtty);
                }
                for target in 0..3 {
                    if tty != target && libc::dup2(tty, target) < 0 {
                        report(Step::Dup2);
                    }
                }
                if tty > 2 {
                    libc::close(tty);
                }
            }
        }
        if let Some(creds) = plan.creds {
            if libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) < 0 {
                report(Step::Setgroups);
            }
            if libc::setgid(creds.gid) < 0 {
                report(Step::Setgid);
            }
            if libc::setuid(creds.uid) < 0 {
                report(Step::Setuid);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            report(Step::Chdir);
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        report(Step::Exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn env_of(spec: &SpawnSpec) -> Vec<String> {
        spec.envp
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let mut r = req(&["sh"]);
        r.env = vec![("HOME".into(), "/h".into()), ("A".into(), "1".into())];
        let spec = SpawnSpec::prepare(&r, Path::new("/etc")).unwrap();
        assert_eq!(
            env_of(&spec),
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/h".into(),
                "A=1".into()
            ]
        );
        assert!(spec.program.to_str().unwrap().ends_with("/sh"));

        r.clear_env = true;
        r.argv = vec!["/bin/sh".into()];
        let spec = SpawnSpec::prepare(&r, Path::new("/etc")).unwrap();
        assert_eq!(env_of(&spec), ["HOME=/h", "A=1"]);
    }

    #[test]
    fn terminal_processes_get_a_default_term() {
        let mut r = req(&["sh"]);
        r.pty = Some(hearth_proto::PtySize { cols: 80, rows: 24 });
        let spec = SpawnSpec::prepare(&r, Path::new("/etc")).unwrap();
        assert!(env_of(&spec).contains(&format!("TERM={DEFAULT_TERM}")));
        r.env = vec![("TERM".into(), "dumb".into())];
        let spec = SpawnSpec::prepare(&r, Path::new("/etc")).unwrap();
        assert!(env_of(&spec).contains(&"TERM=dumb".to_string()));
        assert!(!env_of(&spec).contains(&format!("TERM={DEFAULT_TERM}")));
        r.clear_env = true;
        r.env = vec![];
        let spec = SpawnSpec::prepare(&r, Path::new("/etc")).unwrap();
        assert!(env_of(&spec).is_empty());
        // Pipes: no TERM.
        let spec = SpawnSpec::prepare(&req(&["sh"]), Path::new("/etc")).unwrap();
        assert!(!env_of(&spec).iter().any(|e| e.starts_with("TERM=")));
    }

    #[test]
    fn bad_requests_are_rejected() {
        let etc = Path::new("/etc");
        let kind = |r: &ExecRequest| SpawnSpec::prepare(r, etc).unwrap_err().kind;
        assert_eq!(kind(&req(&[])), AgentErrorKind::InvalidRequest);
        assert_eq!(kind(&req(&[""])), AgentErrorKind::InvalidRequest);
        assert_eq!(kind(&req(&["sh", "a\0b"])), AgentErrorKind::InvalidRequest);
        let mut r = req(&["sh"]);
        r.env = vec![("A=B".into(), "x".into())];
        assert_eq!(kind(&r), AgentErrorKind::InvalidRequest);
        let mut r = req(&["sh"]);
        r.cwd = Some("relative".into());
        assert_eq!(kind(&r), AgentErrorKind::InvalidRequest);
        assert_eq!(
            kind(&req(&["no-such-program-hearth"])),
            AgentErrorKind::NotFound
        );
    }

    #[test]
    fn path_lookup_uses_the_requested_path() {
        let mut r = req(&["sh"]);
        r.env = vec![("PATH".into(), "/nonexistent:relative".into())];
        let e = SpawnSpec::prepare(&r, Path::new("/etc")).unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::NotFound);
        assert!(e.message.contains("/nonexistent"), "{}", e.message);
    }
}
