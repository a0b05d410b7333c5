//! Confinement of the child, applied by the child itself between `fork` and
//! `execve` (the supervisor is single-threaded, so the child may allocate).
//!
//! In order: new mount, network, IPC and UTS namespaces (the PID namespace
//! was entered by the supervisor before `fork`, so the child is its PID 1);
//! every mount made private; a tmpfs on [`JailSpec::root_mountpoint`] that
//! receives read-only binds of the program's directories, the allowed
//! device nodes and a `/proc` of the new PID namespace; `pivot_root` into
//! it and the old root detached; the root made read-only; then the child's
//! own uid and gid with no supplementary groups, which drops every
//! capability, and `no_new_privs`. The network namespace is empty (only a
//! loopback interface that stays down): a microVM without an egress
//! connector has no network at all. A microVM with one has joined the
//! egress network's namespace before ([`join_netns`], [`Network::Joined`]),
//! and keeps it.
//!
//! Nothing of the host's file system is visible afterwards except what the
//! spec binds: the child reaches its data (disks, memory files) only
//! through descriptors the supervisor handed it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::JailSpec;
use crate::sys::cstring;

/// A failed step, named for the exit record.
#[derive(Debug)]
pub struct JailError {
    pub step: String,
    pub source: io::Error,
}

impl std::fmt::Display for JailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

fn step<T>(what: impl Into<String>, r: io::Result<T>) -> Result<T, JailError> {
    r.map_err(|source| JailError {
        step: what.into(),
        source,
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(|s| CString::new(s).expect("no NUL"));
    let fst = fstype.map(|s| CString::new(s).expect("no NUL"));
    let dat = data.map(|s| CString::new(s).expect("no NUL"));
    let tgt = cstring(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NUL-terminated or null and outlives the call.
    check(unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&fst), flags, ptr(&dat).cast()) })
}

/// `path` under the new root.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Bind `host` read-only (no setuid, no devices) at the same path in `root`.
fn bind_ro(root: &Path, host: &Path) -> Result<(), JailError> {
    let meta = step(
        format!("inspect {}", host.display()),
        fs::symlink_metadata(host),
    )?;
    let target = inside(root, host);
    create_parent(&target)?;
    if meta.file_type().is_symlink() {
        let dest = step(format!("read link {}", host.display()), fs::read_link(host))?;
        return step(
            format!("link {}", target.display()),
            std::os::unix::fs::symlink(dest, &target),
        );
    }
    if meta.is_dir() {
        create_dir(&target)?;
    } else {
        create_file(&target, 0o644)?;
    }
    bind(
        host,
        &target,
        libc::MS_BIND | libc::MS_REC,
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        "read-only",
    )
}

/// Bind a device node at the same path in `root` (no exec, no setuid).
fn bind_device(root: &Path, host: &Path) -> Result<(), JailError> {
    let target = inside(root, host);
    create_parent(&target)?;
    create_file(&target, 0o600)?;
    bind(
        host,
        &target,
        libc::MS_BIND,
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "noexec",
    )
}

/// Bind `host` on `target`, then remount the bind with `flags` (a bind
/// takes its flags only on a remount).
fn bind(
    host: &Path,
    target: &Path,
    bind_flags: libc::c_ulong,
    flags: libc::c_ulong,
    flags_name: &str,
) -> Result<(), JailError> {
    let what = format!("bind {}", host.display());
    step(
        what.clone(),
        mount(
            Some(&host.to_string_lossy()),
            target,
            None,
            bind_flags,
            None,
        ),
    )?;
    step(
        format!("{what} {flags_name}"),
        mount(
            None,
            target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | flags,
            None,
        ),
    )
}

/// Create the directories above `target` (mode 0755).
fn create_parent(target: &Path) -> Result<(), JailError> {
    target.parent().map_or(Ok(()), create_dir)
}

/// Create `dir` and the directories above it (mode 0755).
fn create_dir(dir: &Path) -> Result<(), JailError> {
    step(
        format!("create {}", dir.display()),
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir),
    )
}

/// Create an empty file to bind over (kept if it exists).
fn create_file(path: &Path, mode: u32) -> Result<(), JailError> {
    step(
        format!("create {}", path.display()),
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
            .map(drop),
    )
}

/// The network namespace the jailed child ends up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A new one of its own, empty: no network at all.
    Isolated,
    /// The one it already joined ([`join_netns`]).
    Joined,
}

/// Join the network namespace `ns` (an open `/run/netns/NAME` or
/// `/proc/PID/ns/net`). Needs `CAP_SYS_ADMIN`, so it comes before
/// [`enter`] drops privileges.
pub fn join_netns(ns: std::os::fd::BorrowedFd<'_>) -> Result<(), JailError> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns takes a descriptor the caller holds open and a flag;
    // the kernel checks that it is a network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    step("join the network namespace", check(rc))
}

/// Enter the jail. Must run in the freshly forked child.
pub fn enter(spec: &JailSpec, network: Network) -> Result<(), JailError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if network == Network::Isolated {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(flags) };
    step("unshare namespaces", check(rc))?;
    step(
        "make mounts private",
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        ),
    )?;
    let root = &spec.root_mountpoint;
    step(
        format!("mount the jail root on {}", root.display()),
        mount(
            Some("hearth-jail"),
            root,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755,size=1m"),
        ),
    )?;
    for dir in &spec.ro_binds {
        bind_ro(root, dir)?;
    }
    for dev in &spec.devices {
        bind_device(root, dev)?;
    }
    let proc_dir = root.join("proc");
    step(
        "create /proc",
        fs::DirBuilder::new().mode(0o555).create(&proc_dir),
    )?;
    step(
        "mount /proc",
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
    )?;
    let old = root.join(".old-root");
    step(
        "create the old-root mountpoint",
        fs::DirBuilder::new().mode(0o700).create(&old),
    )?;
    let (new_c, old_c) = (step("path", cstring(root))?, step("path", cstring(&old))?);
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_c.as_ptr(), old_c.as_ptr()) };
    step("pivot_root", check(rc as libc::c_int))?;
    step("chdir /", std::env::set_current_dir("/"))?;
    let old_in = CString::new("/.old-root").expect("no NUL");
    // SAFETY: the path is NUL-terminated.
    let rc = unsafe { libc::umount2(old_in.as_ptr(), libc::MNT_DETACH) };
    step("detach the old root", check(rc))?;
    step(
        "remove the old-root mountpoint",
        fs::remove_dir("/.old-root"),
    )?;
    step(
        "make the root read-only",
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        ),
    )?;
    let host = b"hearth-microvm";
    // SAFETY: sethostname reads exactly `len` bytes.
    let rc = unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    step("set the hostname", check(rc))?;
    drop_privileges(spec.uid, spec.gid)
}

/// Become `uid`/`gid` with no supplementary groups (and so no
/// capabilities), and forbid gaining privileges again.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    let groups = [gid];
    // SAFETY: setgroups reads `groups.len()` gids from the array.
    let rc = unsafe { libc::setgroups(1, groups.as_ptr()) };
    step("setgroups", check(rc))?;
    // SAFETY: plain integers.
    let rc = unsafe { libc::setresgid(gid, gid, gid) };
    step("setresgid", check(rc))?;
    // SAFETY: plain integers.
    let rc = unsafe { libc::setresuid(uid, uid, uid) };
    step("setresuid", check(rc))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    step("no_new_privs", check(rc))
}
