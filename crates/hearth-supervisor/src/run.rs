//! The supervisor process: start the child, then one `poll` loop on the
//! main (and only) thread until the child is gone.
//!
//! ```text
//!  start: read config (fd 3) -> cgroups -> [open netns] -> [unshare PID ns] -> fork
//!           child: join cgroups -> [join netns] -> jail -> fds in place -> pdeathsig -> execve
//!  loop:  control socket ──accept──▶ one request line ──▶ answer
//!                                     attach: the connection becomes `attached`
//!         attached  ◀──frames──▶ relay ◀──frames──▶ QEMU's agent socket
//!         console socket ──▶ console.log (capped, then dropped)
//!         child stderr   ──▶ tail for the exit record
//!         pidfd readable ──▶ child exited: exit.json, cgroups removed, exit
//!  attached connection ends: relay detaches; unless lingering, kill the child
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cgroup::Cgroups;
use crate::config::{SupervisorConfig, CONFIG_FD, MAX_CONFIG_BYTES};
use crate::control::{
    ControlRequest, ControlResponse, ExitRecord, SupervisorStatus, CONSOLE_LOG, CONTROL_VERSION,
    EXIT_FILE, MAX_REQUEST_BYTES,
};
use crate::relay::{GuestToHost, HostToGuest, READ_CHUNK_BYTES};
use crate::{jail, sys};

/// How long a control connection may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a killed child may take to be reaped before giving up.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

macro_rules! log {
    ($($arg:tt)*) => { eprintln!("hearth-supervisor[{}]: {}", std::process::id(), format!($($arg)*)) };
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cfg = match read_config() {
        Ok(c) => c,
        Err(e) => {
            log!("{e}");
            return ExitCode::from(2);
        }
    };
    match Supervisor::start(cfg) {
        Ok(mut s) => {
            s.run();
            ExitCode::SUCCESS
        }
        Err(e) => {
            log!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn read_config() -> Result<SupervisorConfig, String> {
    let fd = sys::adopt_fd(CONFIG_FD).map_err(|e| format!("no configuration on fd 3: {e}"))?;
    let mut bytes = Vec::new();
    fs::File::from(fd)
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read the configuration: {e}"))?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err("the configuration is too large".into());
    }
    let cfg: SupervisorConfig =
        serde_json::from_slice(&bytes).map_err(|e| format!("bad configuration: {e}"))?;
    cfg.validate()?;
    Ok(cfg)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A control connection that has not sent its request yet.
struct Pending {
    fd: OwnedFd,
    buf: Vec<u8>,
    since: Instant,
}

struct Supervisor {
    cfg: SupervisorConfig,
    /// The microVM directory, held open so it may be renamed.
    dir: OwnedFd,
    child_pid: libc::pid_t,
    child_start_ticks: u64,
    pidfd: OwnedFd,
    signals: OwnedFd,
    listener: OwnedFd,
    pending: Vec<Pending>,
    attached: Option<OwnedFd>,
    agent: Option<OwnedFd>,
    g2h: GuestToHost,
    h2g: HostToGuest,
    console: Option<OwnedFd>,
    console_log: Option<fs::File>,
    console_logged_bytes: u64,
    stderr: Option<OwnedFd>,
    stderr_tail: Vec<u8>,
    cgroups: Option<Cgroups>,
    linger: bool,
    killed_at: Option<Instant>,
}

/// The child's side of its descriptors, prepared before `fork`.
struct ChildFds {
    /// (descriptor in this process, number in the child), every one of them.
    plan: Vec<(RawFd, RawFd)>,
    stdin_null: OwnedFd,
    stderr_w: OwnedFd,
    report_w: OwnedFd,
    alive_r: OwnedFd,
    /// The network namespace to join, opened before `fork` so a missing
    /// one fails the start with its path.
    netns: Option<OwnedFd>,
}

impl Supervisor {
    fn start(cfg: SupervisorConfig) -> Result<Supervisor, String> {
        // SAFETY: setting SIGPIPE's disposition has no memory effects.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        if cfg.linger {
            sys::set_parent_death_signal(0).map_err(|e| format!("clear pdeathsig: {e}"))?;
        }
        let dir: OwnedFd = fs::File::open(&cfg.dir)
            .map_err(|e| format!("open {}: {e}", cfg.dir.display()))?
            .into();
        let console_log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(in_dir(&dir, CONSOLE_LOG))
            .map_err(|e| format!("open the console log: {e}"))?;
        let listener = sys::adopt_fd(cfg.control_fd).map_err(|e| format!("control socket: {e}"))?;
        sys::set_nonblocking(listener.as_raw_fd()).map_err(|e| e.to_string())?;
        let mut inherited = Vec::new();
        for (from, to) in &cfg.child_fds {
            let fd = sys::adopt_fd(*from).map_err(|e| format!("child descriptor {to}: {e}"))?;
            inherited.push((fd, *to));
        }
        let (agent, agent_child) = sys::socketpair().map_err(|e| e.to_string())?;
        let (console, console_child) = sys::socketpair().map_err(|e| e.to_string())?;
        let (stderr_r, stderr_w) = sys::pipe().map_err(|e| e.to_string())?;
        let (report_r, report_w) = sys::pipe().map_err(|e| e.to_string())?;
        let (alive_r, alive_w) = sys::pipe().map_err(|e| e.to_string())?;
        let stdin_null: OwnedFd = fs::File::open("/dev/null")
            .map_err(|e| format!("open /dev/null: {e}"))?
            .into();
        // Before the cgroups, which a failure here would leave behind.
        let netns: Option<OwnedFd> = match &cfg.netns {
            Some(p) => Some(
                fs::File::open(p)
                    .map_err(|e| format!("open the network namespace {}: {e}", p.display()))?
                    .into(),
            ),
            None => None,
        };
        let cgroups = match &cfg.cgroup {
            Some(spec) => Some(Cgroups::create(spec).map_err(|e| format!("cgroups: {e}"))?),
            None => None,
        };
        let signals = sys::signalfd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(|e| format!("signalfd: {e}"))?;
        if cfg.jail.is_some() {
            // SAFETY: unshare takes flags only. The next child is PID 1 of a
            // new PID namespace; the supervisor itself stays where it is.
            if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                return Err(format!(
                    "unshare the PID namespace: {}",
                    io::Error::last_os_error()
                ));
            }
        }
        let mut plan: Vec<(RawFd, RawFd)> = inherited
            .iter()
            .map(|(fd, to)| (fd.as_raw_fd(), *to))
            .collect();
        plan.push((agent_child.as_raw_fd(), cfg.agent_fd));
        plan.push((console_child.as_raw_fd(), cfg.console_fd));
        let child_fds = ChildFds {
            plan,
            stdin_null,
            stderr_w,
            report_w,
            alive_r,
            netns,
        };
        // SAFETY: this process is single-threaded, so the child may run
        // ordinary code; it never returns (execve or _exit).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", io::Error::last_os_error()));
        }
        if pid == 0 {
            child_main(&cfg, &child_fds, cgroups.as_ref());
        }
        // The child's descriptors are its own now.
        drop((inherited, agent_child, console_child, child_fds));
        let start_error = wait_report(report_r);
        let mut s = Supervisor {
            child_pid: pid,
            child_start_ticks: sys::process_start_ticks(pid as u32).unwrap_or(0),
            pidfd: sys::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?,
            signals,
            listener,
            pending: Vec::new(),
            attached: None,
            agent: Some(agent),
            g2h: GuestToHost::default(),
            h2g: HostToGuest::default(),
            console: Some(console),
            console_log: Some(console_log),
            console_logged_bytes: 0,
            stderr: Some(stderr_r),
            stderr_tail: Vec::new(),
            cgroups,
            linger: cfg.linger,
            killed_at: None,
            dir,
            cfg,
        };
        // Held until the supervisor exits: the child checks it is open.
        std::mem::forget(alive_w);
        for fd in [
            s.agent.as_ref().map(|f| f.as_raw_fd()),
            s.console.as_ref().map(|f| f.as_raw_fd()),
            s.stderr.as_ref().map(|f| f.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            sys::set_nonblocking(fd).map_err(|e| e.to_string())?;
        }
        if let Some(e) = start_error {
            log!("the child could not start: {e}");
            s.finish(Some(e));
            return Err("the child could not start".into());
        }
        Ok(s)
    }

    fn status(&self) -> SupervisorStatus {
        SupervisorStatus {
            control_version: CONTROL_VERSION,
            supervisor_pid: std::process::id(),
            child_pid: self.child_pid as u32,
            child_start_ticks: self.child_start_ticks,
            linger: self.linger,
            attached: self.attached.is_some(),
            frames_to_guest: self.h2g.frames,
            frames_from_guest: self.g2h.frames,
        }
    }

    fn kill_child(&mut self) {
        if self.killed_at.is_none() {
            sys::kill(self.child_pid, libc::SIGKILL);
            self.killed_at = Some(Instant::now());
        }
    }

    fn detach(&mut self, why: &str) {
        if self.attached.take().is_some() {
            self.g2h.detach();
            self.h2g.detach();
            if !self.linger {
                log!("host detached ({why}); not lingering: stopping the child");
                self.kill_child();
            }
        }
    }

    fn run(&mut self) {
        loop {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut add = |fd: RawFd, events: libc::c_short| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                fds.len() - 1
            };
            let i_pid = add(self.pidfd.as_raw_fd(), libc::POLLIN);
            let i_sig = add(self.signals.as_raw_fd(), libc::POLLIN);
            let i_listen = add(self.listener.as_raw_fd(), libc::POLLIN);
            let i_pending: Vec<usize> = self
                .pending
                .iter()
                .map(|p| add(p.fd.as_raw_fd(), libc::POLLIN))
                .collect();
            let attached = self.attached.is_some();
            let i_attached = self.attached.as_ref().map(|a| {
                let mut ev = 0;
                if self.h2g.wants_read() {
                    ev |= libc::POLLIN;
                }
                if !self.g2h.pending().is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(a.as_raw_fd(), ev)
            });
            let i_agent = self.agent.as_ref().map(|a| {
                let mut ev = 0;
                if self.g2h.wants_read(attached) {
                    ev |= libc::POLLIN;
                }
                if !self.h2g.pending().is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(a.as_raw_fd(), ev)
            });
            let i_console = self
                .console
                .as_ref()
                .map(|c| add(c.as_raw_fd(), libc::POLLIN));
            let i_stderr = self
                .stderr
                .as_ref()
                .map(|c| add(c.as_raw_fd(), libc::POLLIN));
            if let Err(e) = sys::poll(&mut fds, 1000) {
                log!("poll: {e}");
                self.kill_child();
            }
            let rev = |i: usize| fds[i].revents;
            let gone = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;

            if rev(i_sig) != 0 {
                for sig in sys::read_signals(&self.signals) {
                    log!("signal {sig}: stopping the child");
                    self.kill_child();
                }
            }
            if let Some(i) = i_console {
                if rev(i) != 0 {
                    self.pump_console();
                }
            }
            if let Some(i) = i_stderr {
                if rev(i) != 0 {
                    self.pump_stderr();
                }
            }
            if let Some(i) = i_agent {
                let r = rev(i);
                if r & libc::POLLOUT != 0 {
                    self.write_agent();
                }
                if r & (libc::POLLIN | gone) != 0 {
                    self.read_agent();
                }
            }
            if let Some(i) = i_attached {
                let r = rev(i);
                if r & libc::POLLOUT != 0 {
                    self.write_attached();
                }
                if r & (libc::POLLIN | gone) != 0 {
                    self.read_attached();
                }
            }
            // Newest first, so removing by index stays valid.
            for (k, i) in i_pending.iter().enumerate().rev() {
                if rev(*i) != 0 {
                    self.serve_pending(k);
                }
            }
            self.pending.retain(|p| p.since.elapsed() < REQUEST_TIMEOUT);
            if rev(i_listen) != 0 {
                self.accept();
            }
            if rev(i_pid) != 0 {
                break;
            }
            if self.killed_at.is_some_and(|t| t.elapsed() > REAP_TIMEOUT) {
                log!("the child did not go away after SIGKILL");
                break;
            }
        }
        self.finish(None);
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accept4 with null address pointers only returns a fd.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 returned a new descriptor that we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            match sys::peer_uid(fd.as_raw_fd()) {
                // SAFETY: getuid has no preconditions.
                Ok(uid) if uid == 0 || uid == unsafe { libc::getuid() } => {
                    self.pending.push(Pending {
                        fd,
                        buf: Vec::new(),
                        since: Instant::now(),
                    })
                }
                Ok(uid) => log!("refused a control connection from uid {uid}"),
                Err(e) => log!("control connection without credentials: {e}"),
            }
        }
    }

    fn serve_pending(&mut self, k: usize) {
        let mut chunk = [0u8; 1024];
        let p = &mut self.pending[k];
        let n = match sys::read_some(p.fd.as_raw_fd(), &mut chunk) {
            Ok(Some(0)) | Err(_) => {
                self.pending.swap_remove(k);
                return;
            }
            Ok(None) => return,
            Ok(Some(n)) => n,
        };
        p.buf.extend_from_slice(&chunk[..n]);
        let Some(nl) = p.buf.iter().position(|b| *b == b'\n') else {
            if p.buf.len() > MAX_REQUEST_BYTES {
                let p = self.pending.swap_remove(k);
                reply(&p.fd, &ControlResponse::error("request line too long"));
            }
            return;
        };
        let p = self.pending.swap_remove(k);
        let rest = p.buf[nl + 1..].to_vec();
        let request = serde_json::from_slice::<ControlRequest>(&p.buf[..nl]);
        let response = match request {
            Err(e) => ControlResponse::error(format!("bad request: {e}")),
            Ok(r) if r.version() != CONTROL_VERSION => ControlResponse::error(format!(
                "control protocol version {} (this supervisor speaks {CONTROL_VERSION})",
                r.version()
            )),
            Ok(ControlRequest::Attach { .. }) => {
                if self.attached.is_some() {
                    ControlResponse::error("another hearth process is attached")
                } else {
                    reply(&p.fd, &ControlResponse::ok(self.attach_status()));
                    self.attached = Some(p.fd);
                    if !rest.is_empty() {
                        self.host_bytes(&rest);
                    }
                    return;
                }
            }
            Ok(ControlRequest::Status { .. }) => ControlResponse::ok(self.status()),
            Ok(ControlRequest::Linger { linger, .. }) => {
                self.linger = linger;
                let r = if linger {
                    sys::set_parent_death_signal(0)
                } else {
                    sys::set_parent_death_signal(libc::SIGKILL)
                };
                match r {
                    Ok(()) => ControlResponse::ok(self.status()),
                    Err(e) => ControlResponse::error(format!("pdeathsig: {e}")),
                }
            }
            Ok(ControlRequest::Kill { .. }) => {
                self.kill_child();
                ControlResponse::ok(self.status())
            }
        };
        reply(&p.fd, &response);
    }

    fn attach_status(&self) -> SupervisorStatus {
        let mut s = self.status();
        s.attached = true;
        s
    }

    fn host_bytes(&mut self, data: &[u8]) {
        if let Err(e) = self.h2g.fill(data) {
            log!("the attached host sent an invalid frame ({e}); dropping it");
            self.detach("invalid frame");
        }
    }

    fn read_attached(&mut self) {
        let Some(fd) = self.attached.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        match sys::read_some(fd, &mut buf) {
            Ok(Some(0)) => self.detach("connection closed"),
            Ok(Some(n)) => self.host_bytes(&buf[..n]),
            Ok(None) => {}
            Err(e) => self.detach(&format!("read: {e}")),
        }
    }

    fn write_attached(&mut self) {
        let Some(fd) = self.attached.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        match sys::write_some(fd, self.g2h.pending()) {
            Ok(Some(n)) => self.g2h.consumed(n),
            Ok(None) => {}
            Err(e) => self.detach(&format!("write: {e}")),
        }
    }

    fn read_agent(&mut self) {
        let Some(fd) = self.agent.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        if !self.g2h.wants_read(self.attached.is_some()) {
            // Only hang-up was reported: handled once the buffer drains.
            if sys::hung_up(fd) && self.g2h.pending().is_empty() {
                self.agent = None;
            }
            return;
        }
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        match sys::read_some(fd, &mut buf) {
            Ok(Some(0)) | Err(_) => self.agent = None,
            Ok(Some(n)) => self.g2h.fill(&buf[..n]),
            Ok(None) => {}
        }
    }

    fn write_agent(&mut self) {
        let Some(fd) = self.agent.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        match sys::write_some(fd, self.h2g.pending()) {
            Ok(Some(n)) => self.h2g.consumed(n),
            Ok(None) => {}
            Err(_) => self.agent = None,
        }
    }

    fn pump_console(&mut self) {
        let Some(fd) = self.console.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sys::read_some(fd, &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    self.console = None;
                    return;
                }
                Ok(None) => return,
                Ok(Some(n)) => {
                    let cap = self.cfg.console_log_cap_bytes;
                    if let Some(log) = self.console_log.as_mut() {
                        let take = cap.saturating_sub(self.console_logged_bytes).min(n as u64);
                        let _ = log.write_all(&buf[..take as usize]);
                        self.console_logged_bytes += take;
                        if self.console_logged_bytes >= cap {
                            let _ = log.write_all(b"\n[hearth: console log truncated]\n");
                            self.console_log = None;
                        }
                    }
                }
            }
        }
    }

    fn pump_stderr(&mut self) {
        let Some(fd) = self.stderr.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sys::read_some(fd, &mut buf) {
                Ok(Some(0)) | Err(_) => {
                    self.stderr = None;
                    return;
                }
                Ok(None) => return,
                Ok(Some(n)) => {
                    self.stderr_tail.extend_from_slice(&buf[..n]);
                    let cap = self.cfg.stderr_cap_bytes as usize;
                    if self.stderr_tail.len() > cap {
                        let cut = self.stderr_tail.len() - cap;
                        self.stderr_tail.drain(..cut);
                    }
                }
            }
        }
    }

    /// The child is gone (or never started): leave the exit record, remove
    /// the cgroups. The attached host sees its connection close when the
    /// process exits.
    fn finish(&mut self, start_error: Option<String>) {
        let (code, signal) = match sys::try_wait(self.child_pid) {
            Ok(Some(s)) => s,
            _ => {
                self.kill_child();
                let deadline = Instant::now() + REAP_TIMEOUT;
                loop {
                    match sys::try_wait(self.child_pid) {
                        Ok(Some(s)) => break s,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        _ => break (None, None),
                    }
                }
            }
        };
        self.pump_console();
        self.pump_stderr();
        let record = ExitRecord {
            version: ExitRecord::VERSION,
            code,
            signal,
            start_error,
            stderr_tail: String::from_utf8_lossy(&self.stderr_tail).into_owned(),
            at_unix_ms: unix_ms(),
        };
        let tmp = in_dir(&self.dir, &format!("{EXIT_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&record).expect("serialize exit record");
        if fs::write(&tmp, json)
            .and_then(|()| fs::rename(&tmp, in_dir(&self.dir, EXIT_FILE)))
            .is_err()
        {
            log!("could not write the exit record: {}", record.describe());
        }
        if let Some(cg) = self.cgroups.take() {
            cg.remove();
        }
    }
}

/// A path to `name` inside the open directory `dir` (through `/proc`, so
/// it stays right after the directory is renamed).
fn in_dir(dir: &OwnedFd, name: &str) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn reply(fd: &OwnedFd, r: &ControlResponse) {
    let mut line = serde_json::to_vec(r).expect("serialize response");
    line.push(b'\n');
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while done < line.len() && Instant::now() < deadline {
        match sys::write_some(fd.as_raw_fd(), &line[done..]) {
            Ok(Some(n)) => done += n,
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}

/// Read the child's start report: `None` when `execve` succeeded (EOF).
fn wait_report(r: OwnedFd) -> Option<String> {
    let mut text = String::new();
    let _ = fs::File::from(r).take(4096).read_to_string(&mut text);
    (!text.is_empty()).then_some(text)
}

/// The child, between `fork` and `execve`. Never returns.
fn child_main(cfg: &SupervisorConfig, fds: &ChildFds, cgroups: Option<&Cgroups>) -> ! {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        let msg = format!("{what}: {e}");
        // SAFETY: writing our own bytes to our own pipe, then _exit.
        unsafe {
            libc::write(fds.report_w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY: setting a signal disposition and the mask has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    // No transparent huge pages unless asked for: QEMU asks for them on its
    // 64 MiB TCG translation buffer, and an idle microVM then holds whole
    // 2 MiB pages of which it uses a few kilobytes (a Hearth microVM's RAM
    // is a shared or private file mapping, which THP does not back).
    // Inherited across execve.
    if !cfg.transparent_huge_pages {
        // SAFETY: PR_SET_THP_DISABLE takes integers only.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
            fail(
                "disable transparent huge pages",
                &io::Error::last_os_error(),
            );
        }
    }
    if let Some(cg) = cgroups {
        if let Err(e) = cg.join_self() {
            fail("join cgroups", &e);
        }
    }
    let network = match &fds.netns {
        Some(ns) => {
            if let Err(e) = jail::join_netns(ns.as_fd()) {
                fail("network namespace", &e);
            }
            jail::Network::Joined
        }
        None => jail::Network::Isolated,
    };
    if let Some(j) = &cfg.jail {
        if let Err(e) = jail::enter(j, network) {
            fail("jail", &e);
        }
    }
    // Every source above every target first, so no dup2 clobbers a source.
    let mut high = Vec::new();
    for (src, to) in &fds.plan {
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one.
        let h = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 1100) };
        if h < 0 {
            fail("move descriptors", &io::Error::last_os_error());
        }
        high.push((h, *to));
    }
    // SAFETY: marks descriptors close-on-exec; no memory effects.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let stdio = [
        (fds.stdin_null.as_raw_fd(), 0),
        (fds.stdin_null.as_raw_fd(), 1),
        (fds.stderr_w.as_raw_fd(), 2),
    ];
    for (src, to) in high.iter().copied().chain(stdio) {
        // SAFETY: dup2 between open descriptors; clears close-on-exec on `to`.
        if unsafe { libc::dup2(src, to) } < 0 {
            fail("place descriptors", &io::Error::last_os_error());
        }
    }
    // The parent-death signal is reset by a change of credentials, so it is
    // set last; then make sure the supervisor did not die before it.
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        fail("pdeathsig", &e);
    }
    if sys::hung_up(fds.alive_r.as_raw_fd()) {
        fail("start", &"the supervisor exited");
    }
    let program = match sys::cstring(&cfg.program) {
        Ok(p) => p,
        Err(e) => fail("program", &e),
    };
    let args: Vec<std::ffi::CString> = std::iter::once(cfg.program.as_os_str().to_owned())
        .chain(cfg.args.iter().map(Into::into))
        .map(|a| std::ffi::CString::new(a.into_encoded_bytes()).unwrap_or_default())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
    // SAFETY: program, argv and env are NUL-terminated arrays of C strings
    // that stay alive until execve replaces the process.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), env.as_ptr()) };
    fail(
        &format!("execve {}", cfg.program.display()),
        &io::Error::last_os_error(),
    )
}
