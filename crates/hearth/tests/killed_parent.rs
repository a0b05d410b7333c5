//! End-to-end: a `hearth` process killed with SIGKILL leaves no QEMU behind,
//! and `hearth gc` removes the files it could not.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .is_some_and(|st| st != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn e2e_killed_hearth_leaves_no_qemu_behind() {
    // One TCG guest at a time across test binaries (see hearth-vmm tests).
    let lock = std::fs::File::create(std::env::temp_dir().join("hearth-e2e.lock")).unwrap();
    // SAFETY: flock on a valid fd we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["--state-dir"])
        .arg(state.path())
        .args(["vm", "boot", "--mem-mib", "256", "--hold"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run hearth");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let qemu_pid = info["qemu_pid"].as_u64().unwrap() as u32;
    let id = info["id"].as_str().unwrap().to_string();
    assert!(pid_alive(qemu_pid));
    assert!(state.path().join("vms").join(&id).is_dir());

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let t = Instant::now();
    while pid_alive(qemu_pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !pid_alive(qemu_pid),
        "QEMU {qemu_pid} outlived its killed parent"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["--state-dir"])
        .arg(state.path())
        .arg("gc")
        .output()
        .unwrap();
    assert!(out.status.success());
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["removed"], serde_json::json!([id]));
    assert_eq!(
        std::fs::read_dir(state.path().join("vms")).unwrap().count(),
        0
    );
}
