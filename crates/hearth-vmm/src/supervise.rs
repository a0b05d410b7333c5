//! Hearth's side of a microVM's supervisor (the `hearth-supervisor`
//! process, see that crate): starting one, and its control socket.
//!
//! [`spawn`] starts the supervisor from the dedicated spawner thread with a
//! parent-death signal, so until the microVM is committed and told to
//! linger it dies with this process. [`attach`] turns a connection to the
//! control socket into the agent channel. Everything here is short and
//! blocking (local sockets, a fork/exec); callers run it on their task.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use hearth_supervisor::control::{CONSOLE_LOG, CONTROL_SOCKET};
use hearth_supervisor::{
    ControlRequest, ControlResponse, ExitRecord, SupervisorConfig, SupervisorStatus, CONFIG_FD,
    CONTROL_VERSION, EXIT_FILE,
};

use crate::owner::ProcessIdentity;
use crate::process::{self, PassFd, SpawnRequest};
use crate::sockets;

/// The supervisor's own log in the run directory.
pub const SUPERVISOR_LOG: &str = "supervisor.log";
/// How long a control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptor numbers in the supervisor: its control socket, then the
/// child's descriptors from here on.
const CONTROL_FD: RawFd = 4;
const FIRST_CHILD_FD: RawFd = 5;

/// A supervisor process. Dropping the handle kills it (and with it its
/// QEMU) unless it was [`Supervisor::release`]d: every path that gives up
/// a microVM ends its process without having to remember to.
pub struct Supervisor {
    pub identity: ProcessIdentity,
    /// Ours to reap when this process started it.
    child: Option<Child>,
    /// Left running when dropped (a lingering supervisor).
    released: bool,
}

impl Supervisor {
    /// A supervisor some earlier Hearth process started.
    pub fn adopted(identity: ProcessIdentity) -> Self {
        Self {
            identity,
            child: None,
            released: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.identity.pid
    }

    /// Has it exited?
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !self.identity.alive(),
        }
    }

    /// SIGKILL it (its QEMU dies with it).
    pub fn kill(&mut self) {
        if self.identity.alive() {
            // SAFETY: kill takes integers; the identity check above makes a
            // reused pid unlikely, and a supervisor runs as root only.
            unsafe { libc::kill(self.identity.pid as libc::pid_t, libc::SIGKILL) };
        }
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
    }

    /// Wait up to `timeout` for it to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.exited() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Resolve when the supervisor has exited, never otherwise: the other
    /// branch of a `select!` beside the work it may end.
    pub async fn until_exit(&mut self) {
        while !self.exited() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop waiting for it: a lingering supervisor is left to run.
    pub fn release(mut self) {
        // Dropping a std Child neither kills nor waits.
        self.child = None;
        self.released = true;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.released {
            self.kill();
        }
    }
}

/// The files of a running supervisor, in a microVM's run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn control(&self) -> PathBuf {
        self.0.join(CONTROL_SOCKET)
    }
    pub fn qmp(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.0.join(CONSOLE_LOG)
    }

    /// How the supervisor's child ended, once it has.
    pub fn exit_record(&self) -> Option<ExitRecord> {
        serde_json::from_slice(&fs::read(self.0.join(EXIT_FILE)).ok()?).ok()
    }

    /// The last `max_bytes` of the console log.
    pub fn console_tail(&self, max_bytes: usize) -> String {
        let Ok(mut f) = fs::File::open(self.console_log()) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        use std::io::Seek;
        let _ = f.seek(io::SeekFrom::Start(len.saturating_sub(max_bytes as u64)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).trim().to_string()
    }
}

/// Start a supervisor for `cfg` (whose `control_fd`, `child_fds` and `dir`
/// this fills in): `control` is its listening control socket, `fds` the
/// child's descriptors with their numbers in the child.
pub fn spawn(
    program: &Path,
    mut cfg: SupervisorConfig,
    control: OwnedFd,
    fds: Vec<(OwnedFd, RawFd)>,
) -> io::Result<Supervisor> {
    cfg.control_fd = CONTROL_FD;
    cfg.child_fds = fds
        .iter()
        .enumerate()
        .map(|(i, (_, to))| (FIRST_CHILD_FD + i as RawFd, *to))
        .collect();
    let (cfg_r, cfg_w) = process::pipe()?;
    let mut w = fs::File::from(cfg_w);
    w.write_all(&serde_json::to_vec(&cfg).expect("serialize supervisor config"))?;
    drop(w);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.dir.join(SUPERVISOR_LOG))?;
    let mut pass = vec![
        PassFd {
            fd: cfg_r,
            target: CONFIG_FD,
        },
        PassFd {
            fd: control,
            target: CONTROL_FD,
        },
    ];
    for (i, (fd, _)) in fds.into_iter().enumerate() {
        pass.push(PassFd {
            fd,
            target: FIRST_CHILD_FD + i as RawFd,
        });
    }
    let child = process::spawn_child(SpawnRequest {
        program: program.to_path_buf(),
        args: vec![],
        fds: pass,
        stderr: log.into(),
    })?;
    let pid = child.id();
    let identity = ProcessIdentity::of(pid).unwrap_or(ProcessIdentity {
        pid,
        start_ticks: 0,
    });
    Ok(Supervisor {
        identity,
        child: Some(child),
        released: false,
    })
}

fn connect(run: &RunDir) -> io::Result<UnixStream> {
    let s = sockets::connect(&run.control())?;
    s.set_read_timeout(Some(CONTROL_TIMEOUT))?;
    s.set_write_timeout(Some(CONTROL_TIMEOUT))?;
    Ok(s)
}

/// Read one answer line byte by byte (frames may follow it).
fn read_answer(s: &mut UnixStream) -> io::Result<ControlResponse> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    while line.last() != Some(&b'\n') {
        if Instant::now() > deadline || line.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from the supervisor",
            ));
        }
        match s.read(&mut b) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the supervisor closed the connection",
                ))
            }
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    serde_json::from_slice(&line).map_err(io::Error::other)
}

fn ask(s: &mut UnixStream, req: &ControlRequest) -> io::Result<ControlResponse> {
    let mut line = serde_json::to_vec(req).expect("serialize control request");
    line.push(b'\n');
    s.write_all(&line)?;
    read_answer(s)
}

fn ok_status(r: ControlResponse) -> io::Result<SupervisorStatus> {
    match (r.ok, r.status) {
        (true, Some(s)) => Ok(s),
        _ => Err(io::Error::other(
            r.error
                .unwrap_or_else(|| "the supervisor refused".to_string()),
        )),
    }
}

/// Attach: the returned connection carries agent frames from now on.
pub fn attach(run: &RunDir) -> io::Result<(UnixStream, SupervisorStatus)> {
    let mut s = connect(run)?;
    let status = ok_status(ask(
        &mut s,
        &ControlRequest::Attach {
            version: CONTROL_VERSION,
        },
    )?)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok((s, status))
}

/// One request on a connection of its own.
pub fn request(run: &RunDir, req: &ControlRequest) -> io::Result<SupervisorStatus> {
    let mut s = connect(run)?;
    ok_status(ask(&mut s, req)?)
}

/// Let the supervisor (and its microVM) outlive this process, or not.
pub fn set_linger(run: &RunDir, linger: bool) -> io::Result<SupervisorStatus> {
    request(
        run,
        &ControlRequest::Linger {
            version: CONTROL_VERSION,
            linger,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `hearth-supervisor` that just waits.
    fn fake(dir: &Path) -> (PathBuf, SupervisorConfig) {
        let prog = dir.join("fake-supervisor");
        fs::write(&prog, "#!/bin/sh\nexec sleep 600\n").unwrap();
        fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = SupervisorConfig {
            version: hearth_supervisor::CONFIG_VERSION,
            dir: dir.to_path_buf(),
            program: "/bin/true".into(),
            args: Vec::new(),
            child_fds: Vec::new(),
            agent_fd: 0,
            console_fd: 0,
            control_fd: 0,
            console_log_cap_bytes: 0,
            stderr_cap_bytes: 0,
            jail: None,
            cgroup: None,
            linger: false,
            transparent_huge_pages: false,
            netns: None,
        };
        (prog, cfg)
    }

    fn start(dir: &Path, n: u32) -> Supervisor {
        let (prog, cfg) = fake(dir);
        let control = sockets::listen(&dir.join(format!("control-{n}.sock"))).unwrap();
        spawn(&prog, cfg, control.into(), Vec::new()).unwrap()
    }

    #[test]
    fn a_dropped_supervisor_is_killed_unless_released() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(dir.path(), 1);
        let id = sup.identity;
        assert!(id.alive());
        drop(sup);
        assert!(!id.alive(), "a dropped supervisor (and its QEMU) lives on");

        let sup = start(dir.path(), 2);
        let id = sup.identity;
        sup.release();
        assert!(id.alive(), "a released supervisor was killed");
        // SAFETY: kill and waitpid take integers; the pid is our child.
        unsafe {
            libc::kill(id.pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(id.pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
}
