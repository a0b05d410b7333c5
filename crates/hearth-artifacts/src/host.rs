//! The host's Debian packages: converging them to a set Hearth can run on,
//! in one apt transaction, and checking the binaries it will execute.
//!
//! Runs on the thread that calls [`crate::setup`]; every step is a short
//! child process (`dpkg-query`, `apt-cache`, `apt-get`, the QEMU binaries).
//!
//! # Why not "install what is missing"
//!
//! QEMU is one Debian source package (`qemu`) built into many binary
//! packages (`qemu-system-x86`, `qemu-system-common`, `qemu-utils`, ...)
//! whose versions must belong together. A host can start with some of them
//! from elsewhere: this project's machine image ships `qemu-utils` 10.0 from
//! bookworm-backports, whose `Breaks: qemu-system-common (<< 1:8.0)` makes
//! apt *remove* it when `qemu-system-x86` 7.2 (the version the configured
//! sources offer) is installed on its own. So setup decides on one source
//! version for the whole QEMU family ([`plan`], a pure function of the
//! facts gathered by [`HostFacts::gather`]) and installs every member pinned
//! to it, downgrading or removing strays, in a single `apt-get install`.
//! Afterwards it runs `qemu-system-x86_64 --version` and `qemu-img --version`
//! and refuses a pair that does not report the same version ([`verify_qemu`]):
//! package names alone say nothing about which binary is on `PATH`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::control::{stanzas, Stanza};
use crate::{exec, Progress, Reporter, SetupError, Step};

/// The Debian source package every QEMU binary package is built from.
pub const QEMU_SOURCE: &str = "qemu";
/// QEMU binary packages Hearth runs (system emulator, `qemu-img`).
pub const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-utils"];
/// The other packages Hearth needs on the host: `mmdebstrap` and `mke2fs` to
/// build images, a static busybox for the hostile-guest tests, `ip` and
/// `nft` for guest egress (a filtered network namespace, `hearth-net`).
pub const OTHER_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "e2fsprogs",
    "busybox-static",
    "iproute2",
    "nftables",
];

/// Binaries Hearth executes, checked after every convergence.
pub const QEMU_SYSTEM_BINARY: &str = "qemu-system-x86_64";
pub const QEMU_IMG_BINARY: &str = "qemu-img";

/// Where dpkg and apt read the installed-package database; tests point it at
/// a constructed status file to reproduce a host's starting state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageDb {
    /// A dpkg admin directory (holding `status`); `None` is the host's own.
    pub admindir: Option<PathBuf>,
}

impl PackageDb {
    /// `dpkg-query` against this database.
    fn dpkg_query(&self) -> Command {
        let mut c = Command::new("dpkg-query");
        c.env("LC_ALL", "C.UTF-8");
        if let Some(dir) = &self.admindir {
            c.arg(format!("--admindir={}", dir.display()));
        }
        c
    }

    /// `apt-get`/`apt-cache` against this database.
    pub fn apt(&self, program: &str) -> Command {
        let mut c = apt(program);
        if let Some(dir) = &self.admindir {
            c.arg("-o").arg(format!(
                "Dir::State::status={}",
                dir.join("status").display()
            ));
        }
        c
    }
}

/// An `apt-get`/`apt-cache` command: non-interactive, untranslated output.
pub(crate) fn apt(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("LANGUAGE", "");
    c
}

/// One installed (or half-installed) binary package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub package: String,
    pub version: String,
    pub source: String,
    pub source_version: String,
    /// dpkg's `ii`: installed and configured.
    pub ok: bool,
}

/// A version of a package the configured apt sources offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    pub version: String,
    pub source_version: String,
}

/// What the host has and what its sources offer, for the packages that matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Every installed package built from [`QEMU_SOURCE`], and every package
    /// of [`QEMU_PACKAGES`] and [`OTHER_PACKAGES`] that is installed.
    pub installed: Vec<Installed>,
    /// apt's candidate for `qemu-system-x86`, as (version, source version).
    pub qemu_candidate: Option<Available>,
    /// Versions on offer, per QEMU-family package that the plan may pin.
    pub available: Vec<(String, Vec<Available>)>,
}

impl HostFacts {
    /// Read the facts from dpkg and apt.
    pub fn gather(db: &PackageDb) -> Result<HostFacts, SetupError> {
        let step = Step::HostPackages;
        let out = exec::run_unchecked(
            &step,
            db.dpkg_query().args([
                "-W",
                "-f=${Package}\t${Version}\t${source:Package}\t${source:Version}\t${db:Status-Abbrev}\n",
            ]),
        )?;
        let wanted: BTreeSet<&str> = QEMU_PACKAGES
            .iter()
            .chain(OTHER_PACKAGES)
            .copied()
            .collect();
        let installed: Vec<Installed> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_dpkg_line)
            .filter(|p| p.source == QEMU_SOURCE || wanted.contains(p.package.as_str()))
            .collect();
        let mut family: BTreeSet<String> = QEMU_PACKAGES.iter().map(|s| s.to_string()).collect();
        family.extend(
            installed
                .iter()
                .filter(|p| p.source == QEMU_SOURCE)
                .map(|p| p.package.clone()),
        );
        let mut available = Vec::new();
        for package in family {
            available.push((package.clone(), available_versions(db, &package)?));
        }
        let qemu_candidate = candidate(db, "qemu-system-x86")?.and_then(|v| {
            available
                .iter()
                .find(|(p, _)| p == "qemu-system-x86")
                .and_then(|(_, vs)| vs.iter().find(|a| a.version == v).cloned())
        });
        Ok(HostFacts {
            installed,
            qemu_candidate,
            available,
        })
    }

    fn installed(&self, package: &str) -> Option<&Installed> {
        self.installed.iter().find(|p| p.package == package)
    }
}

/// `pkg\tver\tsrc\tsrcver\tii ` -> [`Installed`] (only entries dpkg knows as
/// at least unpacked; `un`/`pn` lines are packages it merely remembers).
fn parse_dpkg_line(line: &str) -> Option<Installed> {
    let mut f = line.split('\t');
    let (package, version, source, source_version, status) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    // Desired state, then current state: `ii`, `rc` (removed, config files
    // kept), `un` (unknown), `iU` (unpacked), `iF` (half-configured)...
    let current = status.trim().chars().nth(1)?;
    if version.is_empty() || matches!(current, 'n' | 'c') {
        return None;
    }
    Some(Installed {
        package: package.to_string(),
        version: version.to_string(),
        source: if source.is_empty() { package } else { source }.to_string(),
        source_version: if source_version.is_empty() {
            version
        } else {
            source_version
        }
        .to_string(),
        ok: current == 'i',
    })
}

/// The candidate version apt would install for `package`.
fn candidate(db: &PackageDb, package: &str) -> Result<Option<String>, SetupError> {
    let out = exec::run(
        &Step::HostPackages,
        db.apt("apt-cache").args(["policy", package]),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| v != "(none)"))
}

/// Every version of `package` the sources offer, with its source version.
fn available_versions(db: &PackageDb, package: &str) -> Result<Vec<Available>, SetupError> {
    let out = exec::run_unchecked(
        &Step::HostPackages,
        db.apt("apt-cache").args(["show", package]),
    )?;
    if !out.status.success() {
        return Ok(Vec::new()); // apt knows no such package
    }
    Ok(stanzas(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .filter_map(available_of)
        .collect())
}

/// (Version, source version) of one `apt-cache show` stanza. `Source:` is
/// absent when it equals the package and version, `name` when only the
/// version matches, `name (version)` otherwise.
fn available_of(s: &Stanza) -> Option<Available> {
    let version = s.get("Version")?.to_string();
    let source_version = s
        .get("Source")
        .and_then(|src| src.split_once('('))
        .map(|(_, v)| v.trim_end_matches(')').trim().to_string())
        .unwrap_or_else(|| version.clone());
    Some(Available {
        version,
        source_version,
    })
}

/// One apt transaction: what to install (`pkg` or `pkg=version`) and remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The QEMU source version every family member will have.
    pub qemu_source_version: Option<String>,
    pub install: Vec<String>,
    pub remove: Vec<String>,
    /// Why, in a line, for the progress log.
    pub reason: String,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty()
    }

    /// The `apt-get install` arguments (`pkg=ver` pins, `pkg-` removals).
    pub fn apt_args(&self) -> Vec<String> {
        self.install
            .iter()
            .cloned()
            .chain(self.remove.iter().map(|p| format!("{p}-")))
            .collect()
    }
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the configured apt sources offer no qemu-system-x86 (run `apt-get update`, or add a Debian mirror)")]
    NoQemuCandidate,
    #[error("the apt sources offer no {package} built from qemu {source_version}, so it cannot match qemu-system-x86")]
    NoMatchingVersion {
        package: String,
        source_version: String,
    },
}

/// Decide the transaction that brings the host to a working package set.
///
/// The QEMU family is already fine when `qemu-system-x86` and `qemu-utils`
/// are installed, configured, and built from the same source version, and no
/// other installed member of the family is from another version. Otherwise
/// every member is pinned to the source version of apt's `qemu-system-x86`
/// candidate: needed members are installed at it, other installed members
/// are moved to it when the sources have it, and removed when they do not.
pub fn plan(facts: &HostFacts) -> Result<Plan, PlanError> {
    let mut p = Plan::default();
    let family: Vec<&Installed> = facts
        .installed
        .iter()
        .filter(|i| i.source == QEMU_SOURCE)
        .collect();
    let current = match (
        facts.installed("qemu-system-x86"),
        facts.installed("qemu-utils"),
    ) {
        (Some(s), Some(u)) if s.ok && u.ok && s.source_version == u.source_version => {
            Some(s.source_version.clone())
        }
        _ => None,
    };
    let consistent = current
        .as_ref()
        .is_some_and(|v| family.iter().all(|i| i.ok && &i.source_version == v));
    if consistent {
        p.qemu_source_version = current;
    } else {
        let target = facts
            .qemu_candidate
            .as_ref()
            .ok_or(PlanError::NoQemuCandidate)?
            .source_version
            .clone();
        let version_for = |package: &str| {
            facts
                .available
                .iter()
                .find(|(name, _)| name == package)
                .and_then(|(_, vs)| vs.iter().find(|a| a.source_version == target))
                .map(|a| a.version.clone())
        };
        for package in QEMU_PACKAGES {
            let version = version_for(package).ok_or_else(|| PlanError::NoMatchingVersion {
                package: package.to_string(),
                source_version: target.clone(),
            })?;
            p.install.push(format!("{package}={version}"));
        }
        for other in family
            .iter()
            .filter(|i| !QEMU_PACKAGES.contains(&i.package.as_str()))
        {
            if other.ok && other.source_version == target {
                continue;
            }
            match version_for(&other.package) {
                Some(v) => p.install.push(format!("{}={v}", other.package)),
                None => p.remove.push(other.package.clone()),
            }
        }
        let found: Vec<String> = family
            .iter()
            .map(|i| format!("{} {}", i.package, i.version))
            .collect();
        p.reason = format!(
            "QEMU packages to qemu {target} in one transaction (installed: {})",
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        );
        p.qemu_source_version = Some(target);
    }
    let missing: Vec<&str> = OTHER_PACKAGES
        .iter()
        .copied()
        .filter(|name| !facts.installed(name).is_some_and(|i| i.ok))
        .collect();
    if !missing.is_empty() {
        p.install.extend(missing.iter().map(|s| s.to_string()));
        let what = format!("install {}", missing.join(" "));
        p.reason = if p.reason.is_empty() {
            what
        } else {
            format!("{}; {what}", p.reason)
        };
    }
    Ok(p)
}

/// The QEMU Hearth runs, as its binaries report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuInfo {
    /// Upstream version both binaries report, e.g. `7.2.19`.
    pub version: String,
    /// The distribution's package version in parentheses, if any.
    pub package_version: Option<String>,
    pub system_binary: PathBuf,
    pub img_binary: PathBuf,
}

/// `QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b2)` or
/// `qemu-img version 7.2.19 (Debian ...)` -> (`7.2.19`, `1:7.2+dfsg-...`).
pub fn parse_version_line(text: &str) -> Option<(String, Option<String>)> {
    let line = text.lines().next()?;
    let rest = &line[line.find("version ")? + "version ".len()..];
    let version = rest.split_whitespace().next()?.to_string();
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let package = rest
        .split_once('(')
        .map(|(_, p)| p.trim_end_matches(')').trim())
        .map(|p| p.strip_prefix("Debian ").unwrap_or(p).to_string());
    Some((version, package))
}

/// Run both QEMU binaries and check that they exist, run, and are one
/// version.
pub fn verify_qemu(system: &Path, img: &Path) -> Result<QemuInfo, SetupError> {
    let step = Step::HostPackages;
    let report = |bin: &Path| -> Result<(String, Option<String>), SetupError> {
        let out = exec::run(&step, Command::new(bin).arg("--version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version_line(&text).ok_or_else(|| {
            SetupError::unexpected(
                &step,
                format!(
                    "`{} --version` printed no version: {:?}",
                    bin.display(),
                    text.trim()
                ),
            )
        })
    };
    let (sys_version, sys_package) = report(system)?;
    let (img_version, _) = report(img)?;
    if sys_version != img_version {
        return Err(SetupError::unexpected(
            &step,
            format!(
                "{} is QEMU {sys_version} but {} is {img_version}: the QEMU packages do not \
                 belong together (re-run `hearth setup` to converge them)",
                system.display(),
                img.display()
            ),
        ));
    }
    Ok(QemuInfo {
        version: sys_version,
        package_version: sys_package,
        system_binary: system.to_path_buf(),
        img_binary: img.to_path_buf(),
    })
}

/// `apt-get update`.
pub(crate) fn apt_update(step: &Step) -> Result<(), SetupError> {
    exec::run(step, apt("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// The `apt-get install` that carries out `plan` (simulated with `-s`).
pub fn install_command(db: &PackageDb, plan: &Plan, simulate: bool) -> Command {
    let mut c = db.apt("apt-get");
    c.args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--allow-downgrades",
    ]);
    if simulate {
        c.arg("-s");
    }
    c.args(plan.apt_args());
    c
}

/// Converge the host's packages (or, when `install` is false, fail naming
/// what is wrong), then verify the QEMU binaries.
pub(crate) fn ensure(install: bool, progress: &dyn Fn(Progress)) -> Result<QemuInfo, SetupError> {
    let mut r = Reporter::new(Step::HostPackages, progress);
    let db = PackageDb::default();
    let mut facts = HostFacts::gather(&db)?;
    let mut planned = plan(&facts);
    if !planned.as_ref().is_ok_and(Plan::is_empty) && install {
        // A stale package index can hide the versions the plan needs.
        r.started();
        apt_update(r.step())?;
        facts = HostFacts::gather(&db)?;
        planned = plan(&facts);
    }
    let plan = planned.map_err(|e| SetupError::unexpected(r.step(), e.to_string()))?;
    if !plan.is_empty() {
        if !install {
            return Err(SetupError::HostPackagesMissing {
                packages: plan.apt_args(),
            });
        }
        r.info(plan.reason.clone());
        exec::run(r.step(), &mut install_command(&db, &plan, false))?;
        let after = plan_after_install(&db)?;
        if !after.is_empty() {
            return Err(SetupError::unexpected(
                r.step(),
                format!(
                    "apt-get install succeeded but the packages still need: {}",
                    after.apt_args().join(" ")
                ),
            ));
        }
    }
    let qemu = verify_qemu(Path::new(QEMU_SYSTEM_BINARY), Path::new(QEMU_IMG_BINARY))?;
    if plan.is_empty() {
        r.cached();
    } else {
        r.info(format!(
            "QEMU {} ({})",
            qemu.version,
            qemu.package_version.as_deref().unwrap_or("unknown package")
        ));
        r.done();
    }
    Ok(qemu)
}

fn plan_after_install(db: &PackageDb) -> Result<Plan, SetupError> {
    plan(&HostFacts::gather(db)?)
        .map_err(|e| SetupError::unexpected(&Step::HostPackages, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPO: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";
    const V72: &str = "1:7.2+dfsg-7+deb12u18+b2";
    const S72: &str = "1:7.2+dfsg-7+deb12u18";

    fn inst(package: &str, version: &str, source: &str, source_version: &str) -> Installed {
        Installed {
            package: package.into(),
            version: version.into(),
            source: source.into(),
            source_version: source_version.into(),
            ok: true,
        }
    }

    fn bookworm_offer() -> Vec<(String, Vec<Available>)> {
        let a = |v: &str| Available {
            version: v.into(),
            source_version: S72.into(),
        };
        vec![
            ("qemu-system-x86".into(), vec![a(V72)]),
            ("qemu-utils".into(), vec![a(V72)]),
            ("qemu-system-common".into(), vec![a(V72)]),
            ("qemu-block-extra".into(), vec![a(V72)]),
        ]
    }

    fn others() -> Vec<Installed> {
        OTHER_PACKAGES
            .iter()
            .map(|p| inst(p, "1", p, "1"))
            .collect()
    }

    #[test]
    fn backports_qemu_utils_is_pinned_down_with_the_system_emulator() {
        let mut installed = others();
        installed.push(inst("qemu-utils", BPO, "qemu", BPO));
        installed.push(inst("qemu-block-extra", BPO, "qemu", BPO));
        installed.push(inst("qemu-system-modules-opengl", BPO, "qemu", BPO));
        let facts = HostFacts {
            installed,
            qemu_candidate: Some(Available {
                version: V72.into(),
                source_version: S72.into(),
            }),
            available: bookworm_offer(),
        };
        let p = plan(&facts).unwrap();
        assert_eq!(p.qemu_source_version.as_deref(), Some(S72));
        assert_eq!(
            p.install,
            [
                format!("qemu-system-x86={V72}"),
                format!("qemu-utils={V72}"),
                format!("qemu-block-extra={V72}"),
            ]
        );
        assert_eq!(p.remove, ["qemu-system-modules-opengl"]);
        assert!(p
            .apt_args()
            .contains(&"qemu-system-modules-opengl-".to_string()));
        assert!(p.reason.contains(BPO), "{}", p.reason);
    }

    #[test]
    fn a_consistent_family_is_left_alone_whatever_its_version() {
        let mut installed = others();
        installed.push(inst("qemu-system-x86", BPO, "qemu", BPO));
        installed.push(inst("qemu-system-common", BPO, "qemu", BPO));
        installed.push(inst("qemu-utils", BPO, "qemu", BPO));
        let facts = HostFacts {
            installed,
            qemu_candidate: None,
            available: vec![],
        };
        let p = plan(&facts).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.qemu_source_version.as_deref(), Some(BPO));
    }

    #[test]
    fn a_fresh_host_installs_everything_and_a_broken_member_is_redone() {
        let facts = HostFacts {
            installed: vec![],
            qemu_candidate: Some(Available {
                version: V72.into(),
                source_version: S72.into(),
            }),
            available: bookworm_offer(),
        };
        let p = plan(&facts).unwrap();
        assert_eq!(p.install.len(), 2 + OTHER_PACKAGES.len());
        let mut installed = others();
        installed.push(inst("qemu-system-x86", V72, "qemu", S72));
        let mut half = inst("qemu-utils", V72, "qemu", S72);
        half.ok = false;
        installed.push(half);
        let p = plan(&HostFacts {
            installed,
            ..facts.clone()
        })
        .unwrap();
        assert_eq!(
            p.install,
            [
                format!("qemu-system-x86={V72}"),
                format!("qemu-utils={V72}")
            ]
        );
        assert_eq!(
            plan(&HostFacts {
                qemu_candidate: None,
                ..facts
            }),
            Err(PlanError::NoQemuCandidate)
        );
    }

    #[test]
    fn dpkg_lines_and_apt_stanzas() {
        let i = parse_dpkg_line("qemu-utils\t1:10.0\tqemu\t1:10.0\tii ").unwrap();
        assert_eq!((i.source.as_str(), i.ok), ("qemu", true));
        let i = parse_dpkg_line("dash\t0.5\t\t\tii ").unwrap();
        assert_eq!(
            (i.source.as_str(), i.source_version.as_str()),
            ("dash", "0.5")
        );
        assert!(parse_dpkg_line("gone\t\t\t\tun ").is_none());
        assert!(parse_dpkg_line("old\t1\told\t1\trc ").is_none());
        assert!(!parse_dpkg_line("x\t1\tx\t1\tiU ").unwrap().ok);
        let s = stanzas(&format!(
            "Package: qemu-system-x86\nVersion: {V72}\nSource: qemu ({S72})\n\n\
             Package: qemu-system-data\nVersion: {S72}\nSource: qemu\n"
        ));
        assert_eq!(available_of(&s[0]).unwrap().source_version, S72);
        assert_eq!(available_of(&s[1]).unwrap().source_version, S72);
    }

    #[test]
    fn version_lines() {
        assert_eq!(
            parse_version_line(
                "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b2)\nCopyright"
            ),
            Some(("7.2.19".into(), Some(V72.into())))
        );
        assert_eq!(
            parse_version_line("qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            Some(("10.0.2".into(), Some("1:10.0.2+ds-2".into())))
        );
        assert_eq!(parse_version_line("nothing here"), None);
    }
}
