//! PID-1 init duties (main thread, before serving).
//!
//! In order: kernel filesystems, kernel modules, the root disk and the
//! switch into it, the loopback interface, the hostname. Every step logs a
//! clear line on failure and the agent carries on: a guest that cannot mount
//! its root disk still serves the channel, so the host sees a `Hello` and
//! can diagnose it.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::agent_log;

/// Where the kernel modules of the initramfs live.
pub const MODULE_DIR: &str = "/lib/modules/hearth";
/// The root disk.
pub const ROOT_DEVICE: &str = "/dev/vda";
/// Where the root disk is mounted before the switch.
pub const NEW_ROOT: &str = "/newroot";
/// How long to wait for the root disk to appear.
pub const ROOT_WAIT_MS: u64 = 10_000;
/// Poll interval while waiting for a device.
const DEVICE_POLL_MS: u64 = 20;

/// What the agent reads from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `hearth.rootflags=`: mount options for the root disk.
    pub rootflags: Option<String>,
    /// `hearth.noroot`: serve from the initramfs, mount no root disk.
    pub noroot: bool,
    /// `hearth.hostname=`.
    pub hostname: Option<String>,
}

/// Parse `/proc/cmdline`; unknown words are ignored, the last value wins.
pub fn parse_cmdline(line: &str) -> Cmdline {
    let mut out = Cmdline::default();
    for word in line.split_whitespace() {
        if word == "hearth.noroot" {
            out.noroot = true;
        } else if let Some(v) = word.strip_prefix("hearth.rootflags=") {
            out.rootflags = (!v.is_empty()).then(|| v.to_string());
        } else if let Some(v) = word.strip_prefix("hearth.hostname=") {
            out.hostname = (!v.is_empty()).then(|| v.to_string());
        }
    }
    out
}

/// A failed init step.
#[derive(Debug)]
pub enum InitError {
    Mount {
        what: String,
        target: String,
        source: io::Error,
    },
    Mkdir {
        path: String,
        source: io::Error,
    },
    Module {
        name: String,
        source: io::Error,
    },
    DeviceMissing {
        device: String,
        waited_ms: u64,
    },
    SwitchRoot {
        step: &'static str,
        source: io::Error,
    },
    Loopback {
        step: &'static str,
        source: io::Error,
    },
    Hostname {
        name: String,
        reason: String,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Mount {
                what,
                target,
                source,
            } => write!(f, "mount {what} on {target}: {source}"),
            InitError::Mkdir { path, source } => write!(f, "mkdir {path}: {source}"),
            InitError::Module { name, source } => write!(f, "load module {name}: {source}"),
            InitError::DeviceMissing { device, waited_ms } => {
                write!(f, "{device} did not appear within {waited_ms} ms")
            }
            InitError::SwitchRoot { step, source } => write!(f, "switch root: {step}: {source}"),
            InitError::Loopback { step, source } => write!(f, "bring up lo: {step}: {source}"),
            InitError::Hostname { name, reason } => write!(f, "set hostname {name:?}: {reason}"),
        }
    }
}

impl std::error::Error for InitError {}

fn cstr(s: &str) -> CString {
    // Every string passed here is a constant or comes from the kernel
    // command line, neither of which can hold a NUL; fall back to "" anyway.
    CString::new(s).unwrap_or_default()
}

/// `mount(2)`.
fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    let (c_source, c_target) = (cstr(source), cstr(target));
    let c_fstype = fstype.map(cstr);
    let c_data = data.map(cstr);
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call, or null where mount(2) allows it (fstype, data).
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            c_data
                .as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(InitError::Mount {
            what: fstype.unwrap_or(source).to_string(),
            target: target.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn mkdir_p(path: &str, mode: u32) -> Result<(), InitError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| InitError::Mkdir {
            path: path.to_string(),
            source,
        })
}

/// Mount a kernel filesystem, creating the mount point; EBUSY (already
/// mounted, e.g. devtmpfs by CONFIG_DEVTMPFS_MOUNT) is fine.
fn mount_fs(
    fstype: &str,
    target: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    mkdir_p(target, 0o755)?;
    match mount(fstype, target, Some(fstype), flags, data) {
        Err(InitError::Mount { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
            Ok(())
        }
        other => other,
    }
}

fn log_err<T>(result: Result<T, InitError>) -> Option<T> {
    result.map_err(|e| agent_log!("init: {e}")).ok()
}

/// Mount /proc, /sys, /dev (+ /dev/pts, /dev/shm) and /run.
pub fn mount_kernel_filesystems() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    log_err(mount_fs("proc", "/proc", nosuid_nodev_noexec, None));
    log_err(mount_fs("sysfs", "/sys", nosuid_nodev_noexec, None));
    log_err(mount_fs(
        "devtmpfs",
        "/dev",
        libc::MS_NOSUID,
        Some("mode=0755"),
    ));
    ensure_stdio();
    log_err(mount_fs(
        "devpts",
        "/dev/pts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    ));
    log_err(mount_fs(
        "tmpfs",
        "/dev/shm",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    ));
    log_err(mount_fs(
        "tmpfs",
        "/run",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    ));
}

/// Make sure fds 0, 1 and 2 are open (the kernel leaves them closed when
/// the initramfs has no /dev/console), so no later fd lands on them.
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let open = |path| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
        };
        let opened = open("/dev/console").or_else(|_| open("/dev/null"));
        let Ok(file) = opened else { return };
        let owned = OwnedFd::from(file);
        if owned.as_raw_fd() != fd {
            // SAFETY: dup2 onto a closed fd number; `owned` stays valid and
            // is closed when it drops, the new fd `fd` is deliberately leaked.
            unsafe { libc::dup2(owned.as_raw_fd(), fd) };
        } else {
            // It landed exactly on `fd`: keep it open for good, without
            // close-on-exec, as children expect.
            let raw = std::os::fd::IntoRawFd::into_raw_fd(owned);
            // SAFETY: clearing FD_CLOEXEC on our own fd.
            unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        }
    }
}

/// Load the modules named in `<dir>/load-order` (one per line, without
/// `.ko`, dependencies first). Returns how many were loaded or present.
pub fn load_modules(dir: &Path) -> usize {
    let order_path = dir.join("load-order");
    let order = match fs::read_to_string(&order_path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            agent_log!("init: read {}: {e}", order_path.display());
            return 0;
        }
    };
    let mut loaded = 0;
    for name in module_names(&order) {
        match load_module(dir, name) {
            Ok(()) => loaded += 1,
            Err(e) => agent_log!("init: {e}"),
        }
    }
    loaded
}

/// Module names from a load-order file: trimmed, no blanks or comments,
/// nothing that could leave the module directory.
fn module_names(order: &str) -> impl Iterator<Item = &str> {
    order.lines().map(str::trim).filter(|name| {
        let ok = !name.is_empty()
            && !name.starts_with('#')
            && !name.starts_with('.')
            && !name.contains('/');
        if !ok && !name.is_empty() && !name.starts_with('#') {
            agent_log!("init: ignoring bad module name {name:?}");
        }
        ok
    })
}

fn load_module(dir: &Path, name: &str) -> Result<(), InitError> {
    let err = |source| InitError::Module {
        name: name.to_string(),
        source,
    };
    let file = fs::File::open(dir.join(format!("{name}.ko"))).map_err(err)?;
    let params = c"";
    // SAFETY: finit_module(fd, param_values, flags) reads the open module
    // file and the NUL-terminated (empty) parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(err(e));
        }
    }
    Ok(())
}

/// Wait until `path` exists, polling for at most `timeout_ms`.
pub fn wait_for_path(path: &str, timeout_ms: u64) -> Result<(), InitError> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() >= Duration::from_millis(timeout_ms) {
            return Err(InitError::DeviceMissing {
                device: path.to_string(),
                waited_ms: timeout_ms,
            });
        }
        thread::sleep(Duration::from_millis(DEVICE_POLL_MS));
    }
    Ok(())
}

/// Mount the root disk at [`NEW_ROOT`] and switch into it.
pub fn mount_root(cmdline: &Cmdline) -> Result<(), InitError> {
    wait_for_path(ROOT_DEVICE, ROOT_WAIT_MS)?;
    mkdir_p(NEW_ROOT, 0o755)?;
    mount(
        ROOT_DEVICE,
        NEW_ROOT,
        Some("ext4"),
        0,
        cmdline.rootflags.as_deref(),
    )?;
    switch_root(NEW_ROOT)
}

fn sys_ok(rc: libc::c_int, step: &'static str) -> Result<(), InitError> {
    if rc != 0 {
        return Err(InitError::SwitchRoot {
            step,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Switch root like busybox `switch_root` (minus deleting the initramfs):
/// move the kernel filesystems into `new_root`, move it onto `/`, chroot.
fn switch_root(new_root: &str) -> Result<(), InitError> {
    let c_new_root = cstr(new_root);
    // SAFETY: chdir reads a valid NUL-terminated path.
    sys_ok(unsafe { libc::chdir(c_new_root.as_ptr()) }, "chdir")?;
    for (dir, fstype, data) in [
        ("/dev", "devtmpfs", Some("mode=0755")),
        ("/proc", "proc", None),
        ("/sys", "sysfs", None),
        ("/run", "tmpfs", Some("mode=0755")),
    ] {
        let target = format!("{new_root}{dir}");
        if let Err(e) = mkdir_p(&target, 0o755) {
            agent_log!("init: {e}");
            continue;
        }
        if let Err(e) = mount(dir, &target, None, libc::MS_MOVE, None) {
            // Fall back to a fresh instance so the new root still has it.
            agent_log!("init: {e}; mounting a new {fstype} there instead");
            log_err(mount(fstype, &target, Some(fstype), 0, data));
        }
    }
    let dot = c".";
    let slash = c"/";
    // SAFETY: valid NUL-terminated strings; null fstype/data are allowed
    // with MS_MOVE.
    let moved = unsafe {
        libc::mount(
            dot.as_ptr(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    if let Err(e) = sys_ok(moved, "mount --move . /") {
        // chroot below still gives every process the new root's view.
        agent_log!("init: {e}");
    }
    // SAFETY: chroot and chdir read valid NUL-terminated paths.
    sys_ok(unsafe { libc::chroot(dot.as_ptr()) }, "chroot .")?;
    // SAFETY: as above.
    sys_ok(unsafe { libc::chdir(slash.as_ptr()) }, "chdir /")?;
    Ok(())
}

/// Give `lo` 127.0.0.1/8 and bring it up.
pub fn setup_loopback() -> Result<(), InitError> {
    // Called right after the failing call, so errno is still its own.
    let fail = |step| InitError::Loopback {
        step,
        source: io::Error::last_os_error(),
    };
    // SAFETY: socket takes plain integers; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: `raw` is a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ifreq is plain data for which all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let set_addr = |ifr: &mut libc::ifreq, addr: [u8; 4]| {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes);
        // the union field is plain data and is overwritten whole.
        unsafe {
            std::ptr::write(
                std::ptr::addr_of_mut!(ifr.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(),
                sin,
            );
        }
    };
    set_addr(&mut ifr, [127, 0, 0, 1]);
    // SAFETY: SIOCSIFADDR reads an ifreq from the valid pointer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &ifr) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(InitError::Loopback {
                step: "SIOCSIFADDR 127.0.0.1",
                source: e,
            });
        }
    }
    set_addr(&mut ifr, [255, 0, 0, 0]);
    // SAFETY: SIOCSIFNETMASK reads an ifreq from the valid pointer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &ifr) } != 0 {
        return Err(fail("SIOCSIFNETMASK 255.0.0.0"));
    }
    // SAFETY: SIOCGIFFLAGS writes the flags into the valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
        return Err(fail("SIOCGIFFLAGS"));
    }
    // SAFETY: SIOCGIFFLAGS just set the flags member of the union.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads an ifreq from the valid pointer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
        return Err(fail("SIOCSIFFLAGS IFF_UP"));
    }
    Ok(())
}

/// `sethostname` from the command line.
pub fn set_hostname(name: &str) -> Result<(), InitError> {
    if !hearth_proto::valid_hostname(name) {
        return Err(InitError::Hostname {
            name: name.to_string(),
            reason: "not a valid host name".into(),
        });
    }
    // SAFETY: sethostname reads exactly `len` bytes from the pointer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(InitError::Hostname {
            name: name.to_string(),
            reason: io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// All init duties, in order. Never fails: problems are logged.
pub fn run() -> Cmdline {
    mount_kernel_filesystems();
    let cmdline = match fs::read_to_string("/proc/cmdline") {
        Ok(line) => parse_cmdline(&line),
        Err(e) => {
            agent_log!("init: read /proc/cmdline: {e}");
            Cmdline::default()
        }
    };
    let loaded = load_modules(Path::new(MODULE_DIR));
    if loaded > 0 {
        agent_log!("init: {loaded} kernel modules loaded");
    }
    if cmdline.noroot {
        agent_log!("init: hearth.noroot: serving from the initramfs");
    } else if let Err(e) = mount_root(&cmdline) {
        agent_log!("init: no root disk, serving from the initramfs: {e}");
    }
    log_err(setup_loopback());
    if let Some(name) = &cmdline.hostname {
        log_err(set_hostname(name));
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words_are_recognised() {
        let c = parse_cmdline(
            "console=ttyS0 hearth.rootflags=data=ordered,noatime quiet hearth.hostname=vm-7 hearth.noroot\n",
        );
        assert_eq!(
            c,
            Cmdline {
                rootflags: Some("data=ordered,noatime".into()),
                noroot: true,
                hostname: Some("vm-7".into()),
            }
        );
        assert_eq!(
            parse_cmdline("hearth.norootx hearth.rootflags="),
            Cmdline::default()
        );
    }

    #[test]
    fn module_names_are_filtered() {
        let names: Vec<&str> =
            module_names("virtio_mmio\n\n# comment\n  virtio_blk  \n../evil\na/b\n.hidden\n")
                .collect();
        assert_eq!(names, ["virtio_mmio", "virtio_blk"]);
    }

    #[test]
    fn missing_load_order_loads_nothing() {
        assert_eq!(load_modules(Path::new("/nonexistent-hearth-modules")), 0);
    }

    #[test]
    fn waiting_for_a_missing_path_times_out() {
        let start = Instant::now();
        let e = wait_for_path("/nonexistent-hearth-device", 60).unwrap_err();
        assert!(matches!(e, InitError::DeviceMissing { waited_ms: 60, .. }));
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert!(wait_for_path("/", 0).is_ok());
    }
}
