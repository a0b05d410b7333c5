//! End-to-end: what a running microVM's QEMU can reach, read from `/proc`
//! of the real process. Its own uid with no capabilities and no new
//! privileges, seccomp on, its own mount, PID, network, IPC and UTS
//! namespaces (an empty network), a private read-only root that shows no
//! host data, cgroups with the machine's limits, and only its own files
//! open for writing (the snapshot's memory is a write-sealed memfd).

mod support;

use std::path::Path;

use hearth_vmm::confine::{CPU_PERIOD_US, PIDS_MAX, QEMU_OVERHEAD_BYTES, UID_BASE};
use hearth_vmm::{LaunchSpec, MicroVm, SnapshotMode, VmBackend, VmId};
use support::*;

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The cgroup directory of `pid` for controller `ctrl` (v1 or v2).
fn cgroup_dir(pid: u32, ctrl: &str) -> std::path::PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let v1 = ctrls.split(',').any(|c| c == ctrl);
        let v2 = ctrls.is_empty();
        for m in mountinfo.lines() {
            let (left, right) = m.split_once(" - ").unwrap();
            let mp = left.split_whitespace().nth(4).unwrap();
            let fstype = right.split_whitespace().next().unwrap();
            let opts = right.split_whitespace().nth(2).unwrap_or("");
            let dir = Path::new(mp).join(path.trim_start_matches('/'));
            if v1 && fstype == "cgroup" && opts.split(',').any(|o| o == ctrl) {
                return dir;
            }
            if v2
                && fstype == "cgroup2"
                && std::fs::read_to_string(dir.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == ctrl))
            {
                return dir;
            }
        }
    }
    panic!("no {ctrl} cgroup for {pid}: {cgroups}");
}

fn read_number(dir: &Path, files: &[&str]) -> String {
    files
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .unwrap_or_else(|| panic!("none of {files:?} in {}", dir.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn e2e_each_qemu_is_confined() {
    let env = env();
    let mut src = env
        .backend
        .boot(env.boot_spec("conf-src", Some("debian-12-minimal")))
        .await
        .expect("boot");
    let snap = src.snapshot(SnapshotMode::Consume).await.unwrap();
    drop(src);
    let a = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("conf-a").unwrap()))
        .await
        .unwrap();
    let b = env
        .backend
        .launch(&snap, LaunchSpec::ephemeral(VmId::new("conf-b").unwrap()))
        .await
        .unwrap();
    let me = std::process::id();
    for vm in [&a, &b] {
        let pid = vm.pid();
        let id = vm.id().to_string();
        // Its own uid and group, no capabilities, seccomp, no new privileges.
        let uid: u32 = status_field(pid, "Uid:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(uid >= UID_BASE, "{id} runs as uid {uid}");
        assert_eq!(uid, vm.uid());
        assert!(status_field(pid, "Uid:")
            .split_whitespace()
            .all(|u| u == uid.to_string()));
        assert!(status_field(pid, "Gid:")
            .split_whitespace()
            .all(|g| g == uid.to_string()));
        assert_eq!(status_field(pid, "Groups:"), uid.to_string());
        assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm:"), "0000000000000000");
        assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
        assert_eq!(
            status_field(pid, "Seccomp:"),
            "2",
            "{id}: seccomp filter mode"
        );
        // Namespaces of its own; PID 1 of its PID namespace.
        for ns in ["mnt", "pid", "net", "ipc", "uts"] {
            let mine = std::fs::read_link(format!("/proc/{me}/ns/{ns}")).unwrap();
            let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            assert_ne!(mine, its, "{id} shares the {ns} namespace");
        }
        let nspid: Vec<String> = status_field(pid, "NSpid:")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(nspid, [pid.to_string(), "1".to_string()]);
        // An empty network: a loopback interface only.
        let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "{id}");
        // A root that shows no host data, read-only.
        let root = format!("/proc/{pid}/root");
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for hidden in ["root", "home", "tmp", "var", "work", "run"] {
            assert!(
                !names.iter().any(|n| n == hidden),
                "{id} sees /{hidden}: {names:?}"
            );
        }
        // Of /etc, only the dynamic loader's cache.
        let etc: Vec<String> = std::fs::read_dir(Path::new(&root).join("etc"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            etc.iter().all(|n| n == "ld.so.cache"),
            "{id} sees /etc/{etc:?}"
        );
        assert!(!Path::new(&root)
            .join(env.state.path().strip_prefix("/").unwrap())
            .exists());
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
        let root_mount = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("/"))
            .unwrap();
        assert!(
            root_mount
                .split_whitespace()
                .nth(3)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "{root_mount}"
        );
        // Cgroups with the machine's limits.
        let m = vm.machine();
        let mem = cgroup_dir(pid, "memory");
        assert!(
            mem.to_string_lossy().contains("hearth-vms"),
            "{}",
            mem.display()
        );
        assert_eq!(
            read_number(&mem, &["memory.max", "memory.limit_in_bytes"]),
            (m.mem_size_bytes() + QEMU_OVERHEAD_BYTES).to_string()
        );
        let pids = cgroup_dir(pid, "pids");
        assert_eq!(read_number(&pids, &["pids.max"]), PIDS_MAX.to_string());
        let cpu = cgroup_dir(pid, "cpu");
        let quota = (CPU_PERIOD_US * (u64::from(m.vcpu_count) + 1)).to_string();
        let cpu_max = read_number(&cpu, &["cpu.max", "cpu.cfs_quota_us"]);
        assert!(cpu_max.starts_with(&quota), "{cpu_max}");
        // Only its own files are open for writing; the snapshot's memory is
        // a sealed memfd that refuses writes even through QEMU's descriptor.
        let own = env.state.path().join("vms").join(vm.id().as_str());
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let target = std::fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap();
            let writable = flags & libc::O_ACCMODE as u32 != 0;
            if target.starts_with("/memfd:hearth-") {
                let w = std::fs::OpenOptions::new()
                    .write(true)
                    .open(e.path())
                    .unwrap();
                use std::os::unix::fs::FileExt;
                let err = w.write_at(b"x", 0).unwrap_err();
                assert_eq!(
                    err.raw_os_error(),
                    Some(libc::EPERM),
                    "{id}: the image took a write"
                );
            } else if target.starts_with('/') && writable && !target.starts_with("/dev/") {
                assert!(
                    Path::new(&target).starts_with(&own),
                    "{id} can write {target}"
                );
            }
        }
    }
    assert_ne!(a.uid(), b.uid());
    a.terminate().await.unwrap();
    b.terminate().await.unwrap();
    env.backend.delete_snapshot(&snap).unwrap();
    env.assert_no_leftovers();
}
