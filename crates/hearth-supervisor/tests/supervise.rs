//! The real supervisor binary with a shell as its child: the relay keeps
//! frame alignment across host restarts, the child is confined, and the
//! supervisor leaves an exit record. Needs root (namespaces, cgroups).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_proto::{encode_frame, FrameDecoder, HostMessage};
use hearth_supervisor::{
    CgroupSpec, ControlRequest, ControlResponse, ExitRecord, JailSpec, SupervisorConfig,
    CONFIG_VERSION, CONTROL_VERSION, EXIT_FILE,
};

const CONTROL_FD: i32 = 4;

struct Running {
    child: Child,
    dir: tempfile::TempDir,
}

impl Running {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("supervisor.sock")
    }
}

fn config(
    dir: &Path,
    script: &str,
    jail: Option<JailSpec>,
    cgroup: Option<CgroupSpec>,
) -> SupervisorConfig {
    SupervisorConfig {
        version: CONFIG_VERSION,
        dir: dir.to_path_buf(),
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        child_fds: vec![],
        agent_fd: 4,
        console_fd: 5,
        control_fd: CONTROL_FD,
        console_log_cap_bytes: 1 << 20,
        stderr_cap_bytes: 4096,
        jail,
        cgroup,
        linger: false,
        transparent_huge_pages: false,
        netns: None,
    }
}

fn start(cfg_of: impl FnOnce(&Path) -> SupervisorConfig) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg_of(dir.path());
    let listener = UnixListener::bind(dir.path().join("supervisor.sock")).unwrap();
    let (cfg_r, mut cfg_w) = std::io::pipe().unwrap();
    cfg_w.write_all(&serde_json::to_vec(&cfg).unwrap()).unwrap();
    drop(cfg_w);
    let cfg_r: OwnedFd = cfg_r.into();
    let listener: OwnedFd = listener.into();
    let (a, b) = (cfg_r.as_raw_fd(), listener.as_raw_fd());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth-supervisor"));
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    // SAFETY: dup2 in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first: either source may sit on 3 or 4.
            let (ha, hb) = (
                libc::fcntl(a, libc::F_DUPFD, 100),
                libc::fcntl(b, libc::F_DUPFD, 100),
            );
            if ha < 0 || hb < 0 || libc::dup2(ha, 3) < 0 || libc::dup2(hb, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    Running { child, dir }
}

fn control(sock: &Path, req: &ControlRequest) -> (ControlResponse, UnixStream) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    (serde_json::from_str(&answer).unwrap(), s)
}

fn attach(sock: &Path) -> UnixStream {
    let (r, s) = control(
        sock,
        &ControlRequest::Attach {
            version: CONTROL_VERSION,
        },
    );
    assert!(r.ok, "{r:?}");
    s
}

fn ping(n: u64) -> Vec<u8> {
    encode_frame(&HostMessage::StreamData {
        stream: n,
        data: vec![n as u8; 1000],
    })
    .unwrap()
}

fn read_frames(s: &mut UnixStream, count: usize) -> Vec<u64> {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < count {
        while let Some(HostMessage::StreamData { stream, .. }) = dec.decode_next().unwrap() {
            out.push(stream);
        }
        if out.len() >= count {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {out:?}");
        dec.push(&buf[..n]);
    }
    out
}

fn wait_exit(r: &mut Running) -> ExitRecord {
    let t = Instant::now();
    loop {
        if let Some(status) = r.child.try_wait().unwrap() {
            assert!(status.success(), "supervisor {status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "supervisor did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serde_json::from_slice(&std::fs::read(r.dir.path().join(EXIT_FILE)).unwrap()).unwrap()
}

#[test]
fn relay_keeps_frames_whole_across_hosts_and_a_dead_host_stops_a_non_lingering_child() {
    // The child echoes every agent byte back and writes to its console.
    let mut r = start(|d| config(d, "echo console-says-hi >&5; exec cat <&4 >&4", None, None));
    let mut host = attach(&r.sock());
    // A second host is refused while one is attached.
    let (second, _) = control(
        &r.sock(),
        &ControlRequest::Attach {
            version: CONTROL_VERSION,
        },
    );
    assert!(!second.ok && second.error.unwrap().contains("attached"));
    host.write_all(&ping(1)).unwrap();
    assert_eq!(read_frames(&mut host, 1), vec![1]);
    // Linger, then leave in the middle of a frame: the half frame never
    // reaches the guest, and the next host starts on a boundary.
    let (l, _) = control(
        &r.sock(),
        &ControlRequest::Linger {
            version: CONTROL_VERSION,
            linger: true,
        },
    );
    assert!(l.ok && l.status.unwrap().linger);
    let f = ping(2);
    host.write_all(&f[..500]).unwrap();
    drop(host);
    std::thread::sleep(Duration::from_millis(200));
    let mut host = attach(&r.sock());
    host.write_all(&ping(3)).unwrap();
    assert_eq!(read_frames(&mut host, 1), vec![3]);
    let (s, _) = control(
        &r.sock(),
        &ControlRequest::Status {
            version: CONTROL_VERSION,
        },
    );
    let s = s.status.unwrap();
    assert_eq!((s.frames_to_guest, s.frames_from_guest), (2, 2));
    assert!(s.attached);
    // Not lingering any more: losing the host stops the child.
    let (l, _) = control(
        &r.sock(),
        &ControlRequest::Linger {
            version: CONTROL_VERSION,
            linger: false,
        },
    );
    assert!(l.ok);
    drop(host);
    let exit = wait_exit(&mut r);
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    let console = std::fs::read_to_string(r.dir.path().join("console.log")).unwrap();
    assert!(console.contains("console-says-hi"), "{console:?}");
    // Version mismatches are refused with a reason.
}

#[test]
fn the_child_is_confined() {
    let name = format!("sup-test-{}", std::process::id());
    let mountpoint = std::env::temp_dir().join("hearth-jail-test");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let jail = JailSpec {
        uid: 1_610_600_001,
        gid: 1_610_600_001,
        root_mountpoint: mountpoint,
        ro_binds: ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect(),
        devices: vec!["/dev/null".into()],
    };
    let cg = CgroupSpec {
        name: name.clone(),
        memory_max_bytes: 64 << 20,
        cpu_quota_us: 50_000,
        cpu_period_us: 100_000,
        pids_max: 16,
    };
    let mut r = start(|d| config(d, "exec sleep 60", Some(jail), Some(cg)));
    let host = attach(&r.sock());
    let (s, _) = control(
        &r.sock(),
        &ControlRequest::Status {
            version: CONTROL_VERSION,
        },
    );
    let pid = s.status.unwrap().child_pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), "1610600001");
    assert_eq!(field("Gid:"), "1610600001");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("NSpid:"), pid.to_string()); // first of two: host pid
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "{status}"
    );
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let its = if ns == "pid" {
            std::fs::read_link(format!("/proc/{pid}/ns/pid_for_children")).unwrap_or(its)
        } else {
            its
        };
        assert_ne!(mine, its, "{ns} namespace is shared");
    }
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert!(
        !root
            .iter()
            .any(|n| n == "root" || n == "tmp" || n == "home" || n == "work"),
        "{root:?}"
    );
    assert!(
        root.contains(&"usr".to_string()) && root.contains(&"proc".to_string()),
        "{root:?}"
    );
    // The network namespace has only a loopback interface.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"]);
    // Its cgroups carry the limits.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let leaf = |ctrl: &str| {
        cgroups
            .lines()
            .find(|l| {
                let mut f = l.splitn(3, ':');
                f.next();
                let c = f.next().unwrap_or("");
                c.split(',').any(|x| x == ctrl) || (c.is_empty())
            })
            .map(|l| l.splitn(3, ':').nth(2).unwrap().to_string())
            .unwrap()
    };
    for ctrl in ["memory", "pids", "cpu"] {
        assert!(
            leaf(ctrl).ends_with(&format!("/hearth-vms/{name}")),
            "{ctrl}: {cgroups}"
        );
    }
    drop(host); // not lingering: the child goes
    let exit = wait_exit(&mut r);
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    // The leaves are gone with it.
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
        let p = entry.unwrap().path();
        assert!(!find_dir(&p, &name, 6), "{} still has {name}", p.display());
    }
}

fn find_dir(p: &Path, name: &str, depth: u32) -> bool {
    if depth == 0 {
        return false;
    }
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_type().is_ok_and(|t| t.is_dir())
                    && (e.file_name() == name || find_dir(&e.path(), name, depth - 1))
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_child_that_cannot_start_is_reported() {
    let mut r = start(|d| {
        let mut c = config(d, "true", None, None);
        c.program = "/nonexistent/qemu".into();
        c
    });
    let t = Instant::now();
    while r.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit: ExitRecord =
        serde_json::from_slice(&std::fs::read(r.dir.path().join(EXIT_FILE)).unwrap()).unwrap();
    let why = exit.start_error.unwrap();
    assert!(why.contains("execve /nonexistent/qemu"), "{why}");
}

#[test]
fn requests_of_another_version_are_refused() {
    let mut r = start(|d| config(d, "exec sleep 30", None, None));
    let (resp, _) = control(&r.sock(), &ControlRequest::Status { version: 99 });
    assert!(!resp.ok && resp.error.unwrap().contains("99"));
    let (k, _) = control(
        &r.sock(),
        &ControlRequest::Kill {
            version: CONTROL_VERSION,
        },
    );
    assert!(k.ok);
    let exit = wait_exit(&mut r);
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}

/// Transparent huge pages are off for the child unless its config asks for
/// them (anonymous guest RAM, as a stock QEMU would back it).
#[test]
fn transparent_huge_pages_are_off_unless_asked_for() {
    for (allowed, want) in [(false, "THP_enabled:\t0"), (true, "THP_enabled:\t1")] {
        let mut r = start(|d| {
            let mut c = config(d, "grep THP_enabled /proc/self/status >&2", None, None);
            c.transparent_huge_pages = allowed;
            c
        });
        let exit = wait_exit(&mut r);
        let tail = exit.stderr_tail;
        assert!(tail.contains(want), "allowed={allowed}: {tail:?}");
    }
}

/// A named network namespace with a veth pair of its own (so that it can
/// be told apart by its interfaces), removed on drop.
struct TestNetns(String);

impl TestNetns {
    fn create(name: &str) -> TestNetns {
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip")
            .args(["netns", "delete", name])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output();
        ip(&["netns", "add", name]);
        let ns = TestNetns(name.to_string());
        ip(&[
            "-n",
            name,
            "link",
            "add",
            "hearth-t0",
            "type",
            "veth",
            "peer",
            "name",
            "hearth-t1",
        ]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output();
    }
}

/// A jailed child given a network namespace is in exactly that one (and
/// still in private mount, IPC and UTS namespaces, as its own user).
#[test]
fn a_jailed_child_joins_the_network_namespace_it_is_given() {
    use std::os::unix::fs::MetadataExt;
    let ns = TestNetns::create("hearth-test-sup-netns");
    let mountpoint = std::env::temp_dir().join("hearth-jail-test-netns");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let jail = JailSpec {
        uid: 1_610_600_002,
        gid: 1_610_600_002,
        root_mountpoint: mountpoint,
        ro_binds: ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect(),
        devices: vec!["/dev/null".into()],
    };
    let mut r = start(|d| {
        let mut c = config(d, "exec sleep 60", Some(jail), None);
        c.netns = Some(ns.path());
        c
    });
    let host = attach(&r.sock());
    let (s, _) = control(
        &r.sock(),
        &ControlRequest::Status {
            version: CONTROL_VERSION,
        },
    );
    let pid = s.status.unwrap().child_pid;
    let its_net = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(
        its_net,
        std::fs::metadata(ns.path()).unwrap().ino(),
        "the child is not in the namespace it was given"
    );
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    assert!(dev.contains("hearth-t0"), "{dev}");
    for other in ["mnt", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{other}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{other}")).unwrap();
        assert_ne!(mine, its, "{other} namespace is shared");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("1610600002")),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
    drop(host);
    let exit = wait_exit(&mut r);
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}

/// A network namespace that does not exist fails the start (no child runs
/// without the namespace it was meant to be in).
#[test]
fn a_missing_network_namespace_fails_the_start() {
    let mut r = start(|d| {
        let mut c = config(d, "exec sleep 60", None, None);
        c.netns = Some("/run/netns/hearth-test-no-such-namespace".into());
        c
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the supervisor runs on"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
    assert!(
        !r.dir.path().join(EXIT_FILE).exists(),
        "a child was started"
    );
}
