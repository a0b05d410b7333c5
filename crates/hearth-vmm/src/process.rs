//! Starting child processes (each microVM's supervisor) with descriptors at
//! fixed numbers and tied to this process: every child gets
//! `PR_SET_PDEATHSIG(SIGKILL)` until it is told to outlive Hearth. Called
//! from async tasks of the backend; the fork/exec is short.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! the process. Spawns therefore happen on one dedicated, never-exiting thread
//! (see [`spawn_child`]), never on a transient blocking-pool thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;

/// A file descriptor handed to the child at a fixed number.
pub struct PassFd {
    pub fd: OwnedFd,
    pub target: RawFd,
}

/// What to start.
pub struct SpawnRequest {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub fds: Vec<PassFd>,
    /// Where the child's stderr goes.
    pub stderr: OwnedFd,
}

type SpawnJob = (SpawnRequest, std_mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static std_mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<std_mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("hearth-spawner".into())
            .spawn(move || {
                for (req, reply) in rx {
                    let _ = reply.send(spawn_here(req));
                }
            })
            .expect("spawn the spawner thread");
        tx
    })
}

/// Start a process on the spawner thread. Blocks the caller for the fork/exec.
pub fn spawn_child(req: SpawnRequest) -> io::Result<Child> {
    let (tx, rx) = std_mpsc::channel();
    spawner()
        .send((req, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

fn spawn_here(req: SpawnRequest) -> io::Result<Child> {
    // Move every fd out of the 0..=9 range first so the dup2s in the child
    // cannot clobber a source that happens to sit on another's target number.
    let mut moved: Vec<(OwnedFd, RawFd)> = Vec::with_capacity(req.fds.len());
    for p in req.fds {
        // SAFETY: F_DUPFD_CLOEXEC on a valid, owned fd returns a new fd or -1.
        let high = unsafe { libc::fcntl(p.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if high < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `high` is a fresh fd we own exclusively.
        moved.push((unsafe { OwnedFd::from_raw_fd(high) }, p.target));
    }
    let plan: Vec<(RawFd, RawFd)> = moved.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let parent_pid = std::process::id() as libc::pid_t;

    let mut cmd = Command::new(&req.program);
    cmd.args(&req.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(req.stderr));
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid, dup2, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            for (src, target) in &plan {
                // dup2 onto a different number clears FD_CLOEXEC on the copy.
                if libc::dup2(*src, *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(moved);
    child
}

/// A connected UNIX stream socket pair (both ends CLOEXEC; tests).
#[cfg(test)]
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid two-element array for socketpair to fill.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe (both ends CLOEXEC): (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn passes_fds_at_fixed_numbers() {
        let (mine, theirs) = socketpair().unwrap();
        let (_err_r, err_w) = pipe().unwrap();
        let child = spawn_child(SpawnRequest {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello >&3".into()],
            fds: vec![PassFd {
                fd: theirs,
                target: 3,
            }],
            stderr: err_w,
        })
        .unwrap();
        let mut child = child;
        let mut s = std::os::unix::net::UnixStream::from(mine);
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "hello\n");
        child.wait().unwrap();
    }
}
