//! End-to-end through the `hearth` binary: persistent microVMs outlive a
//! `hearth` process killed with SIGKILL and are adopted by the next one,
//! with the same QEMU processes and their state intact; microVMs that were
//! not persistent die with it, and `hearth gc` removes what they left.

mod support_e2e;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support_e2e::{e2e_lock, proc_of};

fn pid_alive(pid: u32) -> bool {
    proc_of(pid).is_some()
}

fn hearth(state: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hearth");
    assert!(
        out.status.success(),
        "hearth {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn e2e_persistent_microvms_outlive_a_killed_hearth_and_are_adopted() {
    let _lock = e2e_lock();
    let state = tempfile::tempdir().unwrap();
    // Three persistent microVMs, each with a secret in memory (tmpfs) and a
    // process that keeps counting there.
    let script = "head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /run/token; \
                  (i=0; while :; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done) \
                  >/dev/null 2>&1 </dev/null & cat /run/token";
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--state-dir")
        .arg(state.path())
        .args([
            "vm",
            "boot",
            "--count",
            "3",
            "--persist",
            "--hold",
            "--mem-mib",
            "256",
        ])
        .args(["--", "/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run hearth");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut vms = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let token = v["output"].as_str().unwrap().trim().to_string();
        assert_eq!(token.len(), 16, "{v}");
        vms.push((
            v["id"].as_str().unwrap().to_string(),
            v["qemu_pid"].as_u64().unwrap() as u32,
            token,
        ));
    }

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for (id, pid, _) in &vms {
        assert!(pid_alive(*pid), "{id}'s QEMU {pid} died with hearth");
    }

    // A new hearth adopts all three: the same QEMU processes...
    let list = json(&hearth(state.path(), &["vm", "list"]));
    let running = list["running"].as_array().unwrap();
    assert_eq!(running.len(), 3, "{list}");
    assert!(list["lost"].as_array().unwrap().is_empty(), "{list}");
    for (id, pid, token) in &vms {
        let entry = running
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not adopted: {list}"));
        assert_eq!(entry["qemu_pid"].as_u64(), Some(u64::from(*pid)));
        // ... answering on their agent channel, with their memory intact
        // and their process still counting.
        let out = hearth(state.path(), &["vm", "exec", id, "--", "cat", "/run/token"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), token);
        let count = |out: std::process::Output| -> u64 {
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let c1 = count(hearth(
            state.path(),
            &["vm", "exec", id, "--", "cat", "/run/counter"],
        ));
        std::thread::sleep(Duration::from_millis(400));
        let c2 = count(hearth(
            state.path(),
            &["vm", "exec", id, "--", "cat", "/run/counter"],
        ));
        assert!(c2 > c1, "{id} stopped counting ({c1} -> {c2})");
    }
    // Nothing is garbage while they run.
    let gc = json(&hearth(state.path(), &["gc"]));
    assert_eq!(gc["removed"], serde_json::json!([]), "{gc}");
    for (id, pid, _) in &vms {
        hearth(state.path(), &["vm", "stop", id]);
        assert!(!pid_alive(*pid), "{id}'s QEMU survived stop");
    }
    let list = json(&hearth(state.path(), &["vm", "list"]));
    assert_eq!(list["running"], serde_json::json!([]), "{list}");
    assert_eq!(
        std::fs::read_dir(state.path().join("vms")).unwrap().count(),
        0
    );
}

#[test]
fn e2e_a_killed_hearth_takes_its_ephemeral_microvm_and_gc_removes_its_files() {
    let _lock = e2e_lock();
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
    let gc = json(&hearth(state.path(), &["gc"]));
    assert_eq!(gc["removed"], serde_json::json!([id]));
    assert_eq!(gc["uids"], serde_json::json!(1), "{gc}");
    assert_eq!(
        std::fs::read_dir(state.path().join("vms")).unwrap().count(),
        0
    );
}
