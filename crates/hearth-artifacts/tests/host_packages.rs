//! Host-package convergence against the real dpkg and apt, from the starting
//! state of this project's machine image: `qemu-utils` 10.0 from
//! bookworm-backports installed, no `qemu-system-*`, sources that offer only
//! bookworm's QEMU 7.2.
//!
//! The state is rebuilt in a private dpkg admin directory (the host's status
//! file with every package of the `qemu` source replaced by the backports
//! `qemu-utils` stanza from `fixtures/`), and apt resolves the transactions
//! with `-s`, so the host itself is not touched.

use std::fs;
use std::path::Path;
use std::process::Command;

use hearth_artifacts::host::{install_command, plan, HostFacts, PackageDb, OTHER_PACKAGES};

const BPO_STANZA: &str = include_str!("fixtures/dpkg-status-qemu-utils-10.0-bpo.stanza");

/// A dpkg admin dir whose status is the host's minus QEMU plus `extra`.
fn starting_state(dir: &Path, extra: &str) -> PackageDb {
    let host = fs::read_to_string("/var/lib/dpkg/status").expect("read the host's dpkg status");
    let mut status: Vec<&str> = host
        .split("\n\n")
        .filter(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let source = field("Source:").map(|s| s.split_whitespace().next().unwrap_or(""));
            let package = field("Package:").unwrap_or("");
            !(source == Some("qemu") || (source.is_none() && package.starts_with("qemu-")))
        })
        .filter(|s| !s.trim().is_empty())
        .collect();
    status.push(extra.trim());
    fs::write(dir.join("status"), status.join("\n\n") + "\n").unwrap();
    for sub in ["info", "updates", "triggers"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    PackageDb {
        admindir: Some(dir.to_path_buf()),
    }
}

/// What `apt-get -s` would do: (removed packages, package -> new version).
type Simulated = (Vec<String>, Vec<(String, String)>);

/// What `apt-get -s` would do, or a panic with apt's refusal.
fn simulate(cmd: &mut Command) -> Simulated {
    try_simulate(cmd).unwrap_or_else(|e| panic!("apt-get -s failed: {e}"))
}

/// [`simulate`], or apt's refusal (its output) when it finds no solution.
fn try_simulate(cmd: &mut Command) -> Result<Simulated, String> {
    let out = cmd.output().expect("run apt-get -s");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{text}\n{stderr}"));
    }
    let mut removed = Vec::new();
    let mut installed = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Remv") => removed.push(words.next().unwrap().to_string()),
            Some("Inst") => {
                let package = words.next().unwrap().to_string();
                // `Inst pkg [old] (new Release [arch])` or `Inst pkg (new ...)`.
                let version = line
                    .split_once('(')
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .unwrap()
                    .to_string();
                installed.push((package, version));
            }
            _ => {}
        }
    }
    Ok((removed, installed))
}

fn source_version(package: &str, version: &str) -> String {
    let out = Command::new("apt-cache")
        .args(["show", &format!("{package}={version}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Source: "))
        .and_then(|s| s.split_once('('))
        .map(|(_, v)| v.trim_end_matches(')').to_string())
        .unwrap_or_else(|| version.to_string())
}

#[test]
fn backports_qemu_utils_converges_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = starting_state(dir.path(), BPO_STANZA);
    let facts = HostFacts::gather(&db).expect("gather facts");
    let utils = facts
        .installed
        .iter()
        .find(|i| i.package == "qemu-utils")
        .expect("the starting state has qemu-utils");
    assert!(utils.version.contains("bpo12"), "{utils:?}");
    assert!(!facts
        .installed
        .iter()
        .any(|i| i.package == "qemu-system-x86"));

    // What setup used to do -- install only what is missing -- does not
    // converge: this is the state the test reproduces. With sources that
    // offer only bookworm's QEMU (the machine image), apt removes the
    // backports qemu-utils; where bookworm-backports is also configured,
    // apt refuses the transaction on qemu-utils' Breaks instead.
    let mut naive = db.apt("apt-get");
    naive
        .args(["install", "-s", "-y", "-q", "--no-install-recommends"])
        .arg("qemu-system-x86")
        .args(OTHER_PACKAGES);
    match try_simulate(&mut naive) {
        Ok((removed, _)) => assert!(
            removed.contains(&"qemu-utils".to_string()),
            "installing qemu-system-x86 alone no longer removes the backports qemu-utils; \
             the fixture does not reproduce the starting state (removed: {removed:?})"
        ),
        Err(refusal) => assert!(
            refusal.contains("qemu-utils : Breaks: qemu-system-common"),
            "apt refused the naive install for another reason: {refusal}"
        ),
    }

    // The plan: one transaction, every QEMU package at one source version.
    let p = plan(&facts).expect("plan");
    let (removed, installed) = simulate(&mut install_command(&db, &p, true));
    assert!(
        !removed
            .iter()
            .any(|r| r == "qemu-utils" || r == "qemu-system-x86"),
        "the transaction removes {removed:?}"
    );
    let new_version = |name: &str| {
        installed
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} is not installed by the plan: {installed:?}"))
    };
    let system = source_version("qemu-system-x86", &new_version("qemu-system-x86"));
    let utils = source_version("qemu-utils", &new_version("qemu-utils"));
    assert_eq!(
        system, utils,
        "QEMU packages from different source versions"
    );
    assert_eq!(p.qemu_source_version.as_deref(), Some(system.as_str()));
    for (name, version) in installed.iter().filter(|(n, _)| n.starts_with("qemu-")) {
        assert_eq!(
            source_version(name, version),
            system,
            "{name} {version} does not belong with the rest"
        );
    }
}
