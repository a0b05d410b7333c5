//! The supervisor's instructions: one JSON document that `hearth` writes
//! into a pipe inherited as fd [`CONFIG_FD`], read once at start (main
//! thread). A plain versioned serde struct.

use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the supervisor reads its [`SupervisorConfig`] (until EOF).
pub const CONFIG_FD: RawFd = 3;
/// Version of [`SupervisorConfig`] this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Largest configuration accepted.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Everything the supervisor needs to start and hold one child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorConfig {
    pub version: u32,
    /// The microVM directory. Opened once at start; the console log and the
    /// exit record are written relative to that open directory, so it may
    /// be renamed while the supervisor runs.
    pub dir: PathBuf,
    /// Absolute path of the program to run (QEMU) and its arguments.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Inherited descriptors to hand on: (number in the supervisor, number
    /// in the child). Every other descriptor is closed in the child.
    pub child_fds: Vec<(RawFd, RawFd)>,
    /// The child's number for its end of the agent channel (the supervisor
    /// keeps the other end and relays it to the attached `hearth`).
    pub agent_fd: RawFd,
    /// The child's number for its end of the serial console stream.
    pub console_fd: RawFd,
    /// The supervisor's inherited listening control socket.
    pub control_fd: RawFd,
    /// Console bytes kept in `console.log` (the rest is read and dropped,
    /// so a chatty guest can neither block nor fill the disk).
    pub console_log_cap_bytes: u64,
    /// Bytes of the child's stderr kept (its tail goes to the exit record).
    pub stderr_cap_bytes: u64,
    /// Confinement; `None` runs the child unconfined (debugging only).
    pub jail: Option<JailSpec>,
    /// Resource limits; `None` leaves the child in the supervisor's cgroups.
    pub cgroup: Option<CgroupSpec>,
    /// Keep running (and keep the child) when the attached `hearth`
    /// connection ends. Off until `hearth` commits the microVM.
    pub linger: bool,
    /// Let the child use transparent huge pages. Off for Hearth's microVMs
    /// (their RAM is a file mapping, and THP only inflates QEMU's TCG
    /// translation buffer); on for anonymous guest RAM (the benchmarks'
    /// stock-QEMU baseline), which a stock QEMU backs with huge pages.
    #[serde(default)]
    pub transparent_huge_pages: bool,
    /// A network namespace for the child to join (`/run/netns/NAME`, as
    /// `ip netns add` registers it) instead of the empty one the jail
    /// gives it: a microVM with a network interface, whose QEMU opens the
    /// guest's connections as its own sockets there. Opened by the
    /// supervisor before `fork`, joined by the child before it confines
    /// itself and drops its privileges. Applies with or without a jail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// How the child is confined (applied in the child, before `execve`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// The child's own user and group; it keeps no capabilities.
    pub uid: u32,
    pub gid: u32,
    /// An empty directory on the host; in the child's private mount
    /// namespace a tmpfs is mounted on it and becomes the child's root.
    pub root_mountpoint: PathBuf,
    /// Host directories visible read-only at the same path (the program's
    /// files and libraries: `/usr`, ...). Host symlinks such as `/lib ->
    /// usr/lib` are recreated as symlinks.
    pub ro_binds: Vec<PathBuf>,
    /// Host device nodes visible at the same path (`/dev/null`, `/dev/kvm`).
    pub devices: Vec<PathBuf>,
}

/// The child's cgroup and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Leaf name, unique per microVM (`[A-Za-z0-9._-]`); created under
    /// `<the supervisor's own cgroup>/hearth-vms/` in every hierarchy used.
    pub name: String,
    pub memory_max_bytes: u64,
    /// CPU bandwidth: `cpu_quota_us` of CPU time per `cpu_period_us`.
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    pub pids_max: u64,
}

impl SupervisorConfig {
    /// Check what can be checked before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != CONFIG_VERSION {
            return Err(format!(
                "config version {} (this supervisor reads {CONFIG_VERSION})",
                self.version
            ));
        }
        if !self.program.is_absolute() {
            return Err(format!(
                "program {} is not an absolute path",
                self.program.display()
            ));
        }
        let mut targets: Vec<RawFd> = self.child_fds.iter().map(|(_, t)| *t).collect();
        targets.extend([self.agent_fd, self.console_fd]);
        let n = targets.len();
        targets.sort_unstable();
        targets.dedup();
        if targets.len() != n || targets.iter().any(|t| *t < 3 || *t > 1000) {
            return Err(format!(
                "child descriptor numbers must be distinct and in 3..=1000: {:?}",
                self.child_fds
            ));
        }
        if let Some(cg) = &self.cgroup {
            let ok_name = !cg.name.is_empty()
                && cg
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
            if !ok_name {
                return Err(format!("cgroup name {:?} is not valid", cg.name));
            }
            if cg.cpu_period_us == 0 || cg.memory_max_bytes == 0 || cg.pids_max == 0 {
                return Err("cgroup limits must be non-zero".into());
            }
        }
        if let Some(ns) = &self.netns {
            if !ns.is_absolute() {
                return Err(format!(
                    "network namespace {} is not an absolute path",
                    ns.display()
                ));
            }
        }
        if let Some(j) = &self.jail {
            if j.uid == 0 || j.gid == 0 {
                return Err("the jailed child must not run as root".into());
            }
            for p in j.ro_binds.iter().chain(&j.devices) {
                if !p.is_absolute() {
                    return Err(format!("{} is not an absolute path", p.display()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> SupervisorConfig {
        SupervisorConfig {
            version: CONFIG_VERSION,
            dir: "/state/vms/vm-1".into(),
            program: "/usr/bin/qemu-system-x86_64".into(),
            args: vec!["-M".into(), "microvm".into()],
            child_fds: vec![(5, 3), (6, 7)],
            agent_fd: 4,
            console_fd: 5,
            control_fd: 4,
            console_log_cap_bytes: 8 << 20,
            stderr_cap_bytes: 64 << 10,
            jail: Some(JailSpec {
                uid: 1_610_612_737,
                gid: 1_610_612_737,
                root_mountpoint: "/run/hearth/jail".into(),
                ro_binds: vec!["/usr".into()],
                devices: vec!["/dev/null".into()],
            }),
            cgroup: Some(CgroupSpec {
                name: "vm-1".into(),
                memory_max_bytes: 768 << 20,
                cpu_quota_us: 100_000,
                cpu_period_us: 100_000,
                pids_max: 128,
            }),
            linger: false,
            transparent_huge_pages: false,
            netns: Some("/run/netns/builders".into()),
        }
    }

    /// A configuration without a network namespace (every one written
    /// before the field existed) reads as none, and none is not written.
    #[test]
    fn netns_is_optional_on_the_wire() {
        let mut c = sample();
        c.netns = None;
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("netns"), "{json}");
        assert_eq!(serde_json::from_str::<SupervisorConfig>(&json).unwrap(), c);
    }

    #[test]
    fn round_trips_and_validates() {
        let c = sample();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SupervisorConfig>(&json).unwrap(), c);
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.child_fds.push((9, 4)); // clashes with agent_fd
        assert!(bad.validate().unwrap_err().contains("distinct"));
        let mut bad = c.clone();
        bad.jail.as_mut().unwrap().uid = 0;
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.cgroup.as_mut().unwrap().name = "../x".into();
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.netns = Some("netns/builders".into());
        assert!(bad.validate().unwrap_err().contains("absolute"));
        let mut bad = c;
        bad.version = 99;
        assert!(bad.validate().unwrap_err().contains("99"));
    }
}
