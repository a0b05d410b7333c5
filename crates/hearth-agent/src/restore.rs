//! Post-restore duties and other whole-system effects.
//!
//! [`SystemOps`] is the seam between protocol handling and the kernel:
//! [`RealSystem`] sets the wall clock, feeds and reseeds the kernel RNG,
//! sets the hostname and machine id, syncs filesystems and powers the
//! machine off; host tests pass a fake so they can exercise validation
//! without touching the host. All of it runs inline on the reader thread.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use hearth_proto::{
    valid_hostname, valid_machine_id, AgentError, RestoreRequest, RESTORE_ENTROPY_BYTES,
};

use crate::agent_log;
use crate::errors::{invalid, io_error};

/// `_IOW('R', 0x03, int[2])`: add entropy, crediting `entropy_count` bits.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// How long power-off waits for processes to exit after SIGTERM.
const POWER_OFF_TERM_WAIT_MS: u64 = 3000;
/// How long power-off waits for processes to die after SIGKILL.
const POWER_OFF_KILL_WAIT_MS: u64 = 1000;
/// How often power-off checks whether processes are left.
const POWER_OFF_POLL_MS: u64 = 20;

/// Whole-system effects used by the agent.
pub trait SystemOps: Send + Sync {
    /// Set CLOCK_REALTIME.
    fn set_wall_clock(&self, unix_time_ns: u64) -> io::Result<()>;
    /// Mix `entropy` into the kernel pool (credited) and reseed the CRNG.
    fn add_entropy(&self, entropy: &[u8]) -> io::Result<()>;
    /// Set the kernel hostname (and `/etc/hostname`, best effort).
    fn set_hostname(&self, hostname: &str) -> io::Result<()>;
    /// Write the identity files (`/etc/hostname`, `/etc/machine-id`); a
    /// read-only filesystem is only a warning.
    fn persist_identity(&self, hostname: Option<&str>, machine_id: Option<&str>) -> io::Result<()>;
    /// `sync()`, then optionally drop the page cache.
    fn quiesce_filesystems(&self, drop_caches: bool) -> io::Result<()>;
    /// Whether [`SystemOps::power_off`] may be called here.
    fn can_power_off(&self) -> bool {
        true
    }
    /// SIGTERM every process, wait up to ~3 s, SIGKILL the rest, sync,
    /// remount `/` read-only (best effort) and power off. Returns only on
    /// failure (or when faked).
    fn power_off(&self) -> io::Result<()>;
}

/// Validate a `Restore` request and apply it through `system`.
pub(crate) fn apply(system: &dyn SystemOps, req: &RestoreRequest) -> Result<(), AgentError> {
    if req.entropy.len() != RESTORE_ENTROPY_BYTES {
        return Err(invalid(format_args!(
            "restore entropy is {} bytes, expected exactly {RESTORE_ENTROPY_BYTES}",
            req.entropy.len()
        )));
    }
    if req.unix_time_ns == 0 || req.unix_time_ns > i64::MAX as u64 {
        return Err(invalid(format_args!(
            "restore time {} ns is not a valid wall clock",
            req.unix_time_ns
        )));
    }
    if let Some(name) = &req.hostname {
        if !valid_hostname(name) {
            return Err(invalid(format_args!("hostname {name:?} is not valid")));
        }
    }
    if let Some(id) = &req.machine_id {
        if !valid_machine_id(id) {
            return Err(invalid(format_args!(
                "machine id {id:?} is not 32 lowercase hex digits"
            )));
        }
    }
    system
        .set_wall_clock(req.unix_time_ns)
        .map_err(|e| io_error("set the wall clock (clock_settime)", &e))?;
    system
        .add_entropy(&req.entropy)
        .map_err(|e| io_error("add entropy to the kernel RNG", &e))?;
    if let Some(name) = &req.hostname {
        system
            .set_hostname(name)
            .map_err(|e| io_error(format_args!("set hostname {name}"), &e))?;
    }
    Ok(())
}

/// The second half of a restore, run by the reader thread right *after*
/// `Restored` is sent and before it serves the next request: persist the
/// identity in `/etc`. Under TCG the first ext4 write of a restored guest
/// costs ~140 ms of code translation; keeping it off the critical path makes
/// the guest ready that much sooner, and the reader's ordering still
/// guarantees that no later request observes the old files.
pub(crate) fn persist_identity(system: &dyn SystemOps, req: &RestoreRequest) {
    if let Err(e) = system.persist_identity(req.hostname.as_deref(), req.machine_id.as_deref()) {
        agent_log!("restore: cannot persist the new identity: {e}");
    }
}

/// The real kernel.
pub struct RealSystem;

/// Write a small identity file; a read-only or missing `/etc` is a warning.
fn write_identity_file(path: &str, contents: &str) -> io::Result<()> {
    match std::fs::write(path, contents) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::ENOENT)) => {
            agent_log!("warning: cannot write {path}: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl SystemOps for RealSystem {
    fn set_wall_clock(&self, unix_time_ns: u64) -> io::Result<()> {
        let ts = libc::timespec {
            tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: clock_settime only reads the timespec we pass.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn add_entropy(&self, entropy: &[u8]) -> io::Result<()> {
        // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
        // built in u32 words so the ioctl sees an aligned struct.
        let words = entropy.len().div_ceil(4);
        let mut info = vec![0u32; 2 + words];
        info[0] = (entropy.len() * 8) as u32;
        info[1] = entropy.len() as u32;
        for (i, chunk) in entropy.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            info[2 + i] = u32::from_ne_bytes(word);
        }
        let urandom = OpenOptions::new().write(true).open("/dev/urandom")?;
        // SAFETY: RNDADDENTROPY reads a rand_pool_info of 8 + buf_size bytes
        // from the pointer; `info` holds exactly that, u32-aligned.
        if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("RNDADDENTROPY: {e}")));
        }
        // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory.
        if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("RNDRESEEDCRNG: {e}")));
        }
        Ok(())
    }

    fn set_hostname(&self, hostname: &str) -> io::Result<()> {
        // SAFETY: sethostname reads exactly `len` bytes from the pointer.
        if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn persist_identity(&self, hostname: Option<&str>, machine_id: Option<&str>) -> io::Result<()> {
        if let Some(h) = hostname {
            write_identity_file("/etc/hostname", &format!("{h}\n"))?;
        }
        if let Some(m) = machine_id {
            write_identity_file("/etc/machine-id", &format!("{m}\n"))?;
        }
        Ok(())
    }

    fn quiesce_filesystems(&self, drop_caches: bool) -> io::Result<()> {
        // SAFETY: sync has no arguments and no memory effects.
        unsafe { libc::sync() };
        if drop_caches {
            std::fs::write("/proc/sys/vm/drop_caches", "3")
                .map_err(|e| io::Error::new(e.kind(), format!("drop caches: {e}")))?;
        }
        Ok(())
    }

    /// Only PID 1 powers off: elsewhere `kill(-1)` would hit every process
    /// of the user running the agent.
    fn can_power_off(&self) -> bool {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() == 1 }
    }

    fn power_off(&self) -> io::Result<()> {
        if !self.can_power_off() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only PID 1 powers the machine off",
            ));
        }
        // kill(-1) signals every process but PID 1; the reaper reaps them.
        // SAFETY: kill takes plain integers and has no memory effects.
        unsafe { libc::kill(-1, libc::SIGTERM) };
        if !wait_for_no_children(POWER_OFF_TERM_WAIT_MS) {
            agent_log!("power-off: processes left after SIGTERM; killing them");
            // SAFETY: as above.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            wait_for_no_children(POWER_OFF_KILL_WAIT_MS);
        }
        // SAFETY: sync has no arguments and no memory effects.
        unsafe { libc::sync() };
        let root = c"/";
        // SAFETY: a remount of "/" with NULL source/type/data; the strings
        // are NUL-terminated literals.
        let remounted = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if remounted != 0 {
            agent_log!(
                "power-off: remount / read-only: {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: reboot takes a command constant; as PID 1 with
        // CAP_SYS_BOOT it powers off and does not return.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        Err(io::Error::last_os_error())
    }
}

/// Wait up to `timeout_ms` until this process has no child left, zombies
/// included. As PID 1 every process of the guest is its child, directly or
/// as an orphan re-parented to init, so `ECHILD` means none is left.
/// (`kill(-1, 0)` cannot tell: it also finds the kernel's threads, which
/// are kthreadd's children, not ours.) `WNOWAIT` leaves every exit status
/// to the reaper thread, which reaps the zombies meanwhile.
fn wait_for_no_children(timeout_ms: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into the siginfo_t we pass; WNOHANG
        // makes it return at once and WNOWAIT leaves the child waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r != 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ECHILD) => return true,
                Some(libc::EINTR) => continue,
                _ => {}
            }
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(POWER_OFF_POLL_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::AgentErrorKind;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl SystemOps for Recorder {
        fn set_wall_clock(&self, ns: u64) -> io::Result<()> {
            self.0.lock().unwrap().push(format!("clock {ns}"));
            Ok(())
        }
        fn add_entropy(&self, e: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().push(format!("entropy {}", e.len()));
            Err(io::Error::from_raw_os_error(libc::ENOTTY))
        }
        fn set_hostname(&self, h: &str) -> io::Result<()> {
            self.0.lock().unwrap().push(format!("hostname {h}"));
            Ok(())
        }
        fn persist_identity(&self, h: Option<&str>, m: Option<&str>) -> io::Result<()> {
            self.0.lock().unwrap().push(format!("persist {h:?} {m:?}"));
            Ok(())
        }
        fn quiesce_filesystems(&self, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn power_off(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn good() -> RestoreRequest {
        RestoreRequest {
            unix_time_ns: 1_700_000_000_000_000_000,
            entropy: vec![7; RESTORE_ENTROPY_BYTES],
            hostname: Some("vm-1".into()),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        }
    }

    #[test]
    fn invalid_requests_touch_nothing() {
        let cases = [
            RestoreRequest {
                entropy: vec![1; RESTORE_ENTROPY_BYTES - 1],
                ..good()
            },
            RestoreRequest {
                entropy: vec![1; RESTORE_ENTROPY_BYTES + 1],
                ..good()
            },
            RestoreRequest {
                unix_time_ns: 0,
                ..good()
            },
            RestoreRequest {
                unix_time_ns: u64::MAX,
                ..good()
            },
            RestoreRequest {
                hostname: Some("bad.name".into()),
                ..good()
            },
            RestoreRequest {
                machine_id: Some("0".repeat(32)),
                ..good()
            },
        ];
        for req in cases {
            let rec = Recorder::default();
            let e = apply(&rec, &req).unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::InvalidRequest, "{req:?}");
            assert!(rec.0.lock().unwrap().is_empty());
        }
    }

    /// Outside PID 1 the real system refuses to power off (and a test must
    /// never call `power_off` on it: that would `kill(-1)`).
    #[test]
    fn only_pid_1_may_power_off() {
        assert!(!RealSystem.can_power_off());
    }

    /// The wait ends as soon as the last child is gone, and only then.
    /// It counts every child of the process, and other tests (and the spawn
    /// module's reaper thread, which reaps any child) share the test
    /// binary's process: so the check runs alone, in a process of its own.
    #[test]
    fn power_off_waits_for_the_last_child_only() {
        const ALONE: &str = "HEARTH_AGENT_TEST_POWER_OFF_ALONE";
        const NAME: &str = "restore::tests::power_off_waits_for_the_last_child_only";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        // Alive (and, once it exits, a zombie until reaped): it counts.
        assert!(!wait_for_no_children(100));
        let reaper = std::thread::spawn(move || child.wait());
        let t0 = std::time::Instant::now();
        assert!(wait_for_no_children(5000));
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
        reaper.join().unwrap().unwrap();
    }

    #[test]
    fn entropy_failure_is_an_error_and_stops_the_restore() {
        let rec = Recorder::default();
        let e = apply(&rec, &good()).unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::Io);
        assert!(e.message.contains("entropy"), "{}", e.message);
        assert_eq!(
            *rec.0.lock().unwrap(),
            ["clock 1700000000000000000", "entropy 64"]
        );
    }
}
