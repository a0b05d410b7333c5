//! The child's cgroups: one leaf per microVM with memory, CPU and PID
//! limits, in cgroup v2 where the host has the controller there, in the
//! controller's v1 hierarchy otherwise (hosts mix both: this project's
//! machines mount every v1 controller beside a v2 hierarchy that has none).
//!
//! Created by the supervisor (main thread) before it forks the child; the
//! child joins them itself ([`Cgroups::join_self`]) before it leaves the
//! host's mount namespace; the supervisor removes them after the child is
//! gone. Leaves live under `<the supervisor's own cgroup>/hearth-vms/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::CgroupSpec;

/// The controllers a microVM is limited by.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// Directory under the supervisor's cgroup that holds the leaves.
pub const PARENT_DIR: &str = "hearth-vms";

/// Which hierarchy a controller lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// cgroup v2: the unified hierarchy's directory of this process.
    V2 { own_dir: PathBuf },
    /// cgroup v1: the controller's hierarchy's directory of this process.
    V1 { own_dir: PathBuf },
}

/// A mount of a cgroup hierarchy, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    mountpoint: PathBuf,
    /// The hierarchy path the mount shows at its mountpoint.
    root: String,
    v2: bool,
    /// v1 controllers on this hierarchy.
    controllers: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let right: Vec<&str> = right.split_whitespace().collect();
            let (root, mountpoint) = (*left.get(3)?, *left.get(4)?);
            let fstype = *right.first()?;
            let super_opts = right.get(2).copied().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                mountpoint: PathBuf::from(unescape_mount(mountpoint)),
                root: unescape_mount(root),
                v2,
                controllers: super_opts
                    .split(',')
                    .filter(|o| CONTROLLERS.contains(o))
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup path per hierarchy (`/proc/self/cgroup`):
/// (v1 controller list or empty for v2, path).
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            Some((
                ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// The directory of `path` (a hierarchy path) under a mount of that hierarchy.
fn dir_under(m: &CgroupMount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        path.strip_prefix(m.root.as_str())?
    };
    Some(m.mountpoint.join(rel.trim_start_matches('/')))
}

/// Where each of [`CONTROLLERS`] lives for this process, from the text of
/// `/proc/self/mountinfo` and `/proc/self/cgroup` (separated for tests)
/// and the v2 controllers available to this process's cgroup.
fn placements_from(
    mountinfo: &str,
    proc_cgroup: &str,
    v2_available: &dyn Fn(&Path) -> Vec<String>,
) -> Result<Vec<(&'static str, Placement)>, String> {
    let mounts = parse_mountinfo(mountinfo);
    let mine = parse_proc_cgroup(proc_cgroup);
    let v2_dir = mounts.iter().find(|m| m.v2).and_then(|m| {
        let path = mine.iter().find(|(c, _)| c.is_empty())?.1.clone();
        dir_under(m, &path)
    });
    let v2_ctrls = v2_dir.as_deref().map(v2_available).unwrap_or_default();
    let mut out = Vec::new();
    for ctrl in CONTROLLERS {
        if let (Some(dir), true) = (&v2_dir, v2_ctrls.iter().any(|c| c == ctrl)) {
            out.push((
                ctrl,
                Placement::V2 {
                    own_dir: dir.clone(),
                },
            ));
            continue;
        }
        let v1 = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl))
            .and_then(|m| {
                let path = mine
                    .iter()
                    .find(|(c, _)| c.iter().any(|c| c == ctrl))?
                    .1
                    .clone();
                dir_under(m, &path)
            });
        match v1 {
            Some(own_dir) => out.push((ctrl, Placement::V1 { own_dir })),
            None => {
                return Err(format!(
                    "the {ctrl} cgroup controller is neither in a cgroup v2 hierarchy nor \
                     mounted as cgroup v1 for this process"
                ))
            }
        }
    }
    Ok(out)
}

/// Where each controller lives for this process.
pub fn placements() -> Result<Vec<(&'static str, Placement)>, String> {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"));
    placements_from(
        &read("/proc/self/mountinfo")?,
        &read("/proc/self/cgroup")?,
        &|dir: &Path| {
            fs::read_to_string(dir.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        },
    )
}

/// One microVM's cgroup leaves.
#[derive(Debug)]
pub struct Cgroups {
    /// Leaf directories (one per hierarchy used), with their version.
    leaves: Vec<(PathBuf, bool)>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("create cgroup {}: {e}", path.display()),
        )),
    }
}

impl Cgroups {
    /// Create the leaves of `spec` and set their limits.
    pub fn create(spec: &CgroupSpec) -> io::Result<Cgroups> {
        let placements = placements().map_err(io::Error::other)?;
        let mut leaves: Vec<(PathBuf, bool)> = Vec::new();
        let mut v2_enabled = false;
        for (ctrl, place) in &placements {
            let (own, v2) = match place {
                Placement::V2 { own_dir } => (own_dir, true),
                Placement::V1 { own_dir } => (own_dir, false),
            };
            let parent = own.join(PARENT_DIR);
            let leaf = parent.join(&spec.name);
            if !leaves.iter().any(|(l, _)| l == &leaf) {
                if v2 && !v2_enabled {
                    // Controllers must be enabled on the way down to the leaf.
                    let enable: Vec<String> = placements
                        .iter()
                        .filter(|(_, p)| matches!(p, Placement::V2 { .. }))
                        .map(|(c, _)| format!("+{c}"))
                        .collect();
                    write(&own.join("cgroup.subtree_control"), &enable.join(" "))?;
                    mkdir(&parent)?;
                    write(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
                    v2_enabled = true;
                } else {
                    mkdir(&parent)?;
                }
                mkdir(&leaf)?;
                leaves.push((leaf.clone(), v2));
            }
            let result = match (*ctrl, v2) {
                ("memory", true) => {
                    write(&leaf.join("memory.max"), &spec.memory_max_bytes.to_string())
                }
                ("memory", false) => write(
                    &leaf.join("memory.limit_in_bytes"),
                    &spec.memory_max_bytes.to_string(),
                ),
                ("cpu", true) => write(
                    &leaf.join("cpu.max"),
                    &format!("{} {}", spec.cpu_quota_us, spec.cpu_period_us),
                ),
                ("cpu", false) => write(
                    &leaf.join("cpu.cfs_period_us"),
                    &spec.cpu_period_us.to_string(),
                )
                .and_then(|()| {
                    write(
                        &leaf.join("cpu.cfs_quota_us"),
                        &spec.cpu_quota_us.to_string(),
                    )
                }),
                ("pids", _) => write(&leaf.join("pids.max"), &spec.pids_max.to_string()),
                (other, _) => Err(io::Error::other(format!("no limit for {other}"))),
            };
            if let Err(e) = result {
                let cg = Cgroups { leaves };
                cg.remove();
                return Err(e);
            }
        }
        Ok(Cgroups { leaves })
    }

    /// Move the calling process into every leaf (the child, before `execve`).
    pub fn join_self(&self) -> io::Result<()> {
        for (leaf, _) in &self.leaves {
            write(&leaf.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    pub fn leaves(&self) -> impl Iterator<Item = &Path> {
        self.leaves.iter().map(|(p, _)| p.as_path())
    }

    /// Remove the leaves (after the child is gone). Best effort: a leaf
    /// still busy is retried briefly, then left for `hearth gc`.
    pub fn remove(&self) {
        for (leaf, _) in &self.leaves {
            for _ in 0..50 {
                match fs::remove_dir(leaf) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1_BESIDE_V2: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const CGROUP_V1: &str = "8:pids:/\n4:memory:/process_api/c26\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_controllers_beside_an_empty_v2() {
        let p = placements_from(MOUNTINFO_V1_BESIDE_V2, CGROUP_V1, &|_| {
            vec!["hugetlb".into()]
        })
        .unwrap();
        assert_eq!(
            p,
            [
                (
                    "memory",
                    Placement::V1 {
                        own_dir: "/sys/fs/cgroup/memory/process_api/c26".into()
                    }
                ),
                (
                    "cpu",
                    Placement::V1 {
                        own_dir: "/sys/fs/cgroup/cpu".into()
                    }
                ),
                (
                    "pids",
                    Placement::V1 {
                        own_dir: "/sys/fs/cgroup/pids".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn pure_v2_with_a_container_root() {
        let mountinfo = "29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let p = placements_from(mountinfo, "0::/kubepods/pod1/app\n", &|d| {
            assert_eq!(d, Path::new("/sys/fs/cgroup/app"));
            vec!["cpu".into(), "memory".into(), "pids".into(), "io".into()]
        })
        .unwrap();
        assert!(p.iter().all(|(_, pl)| *pl
            == Placement::V2 {
                own_dir: "/sys/fs/cgroup/app".into()
            }));
    }

    #[test]
    fn a_missing_controller_is_named() {
        let err = placements_from(
            "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "0::/\n",
            &|_| vec!["memory".into()],
        )
        .unwrap_err();
        assert!(err.contains("cpu"), "{err}");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount(r"/trail\"), r"/trail\");
    }
}
