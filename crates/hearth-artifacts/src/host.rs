//! The host's Debian packages: which ones Hearth needs, whether they are
//! installed (`dpkg-query`), and installing the missing ones (`apt-get`).

use std::process::Command;

use crate::{exec, Progress, Reporter, SetupError, Step};

/// Packages Hearth needs on the host: QEMU and `qemu-img` to run microVMs,
/// `mmdebstrap` and `mke2fs` to build images, a static busybox for tests and
/// debugging initramfs images.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "mmdebstrap",
    "e2fsprogs",
    "busybox-static",
];

/// An `apt-get`/`apt-cache` command: non-interactive, untranslated output.
pub(crate) fn apt(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("LANGUAGE", "");
    c
}

/// Whether a `dpkg-query -W -f='${Status}'` status means "installed"
/// (`install ok installed`, `hold ok installed`).
fn status_is_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    words.len() == 3 && words[1] == "ok" && words[2] == "installed"
}

/// Whether one package is installed.
pub(crate) fn is_installed(step: &Step, package: &str) -> Result<bool, SetupError> {
    let mut c = Command::new("dpkg-query");
    c.env("LC_ALL", "C.UTF-8")
        .args(["-W", "-f=${Status}", package]);
    let out = exec::run_unchecked(step, &mut c)?;
    // dpkg-query exits 1 for a package it has never heard of.
    Ok(out.status.success() && status_is_installed(&String::from_utf8_lossy(&out.stdout)))
}

/// The packages of [`HOST_PACKAGES`] that are not installed.
pub fn missing_packages() -> Result<Vec<String>, SetupError> {
    let step = Step::HostPackages;
    let mut missing = Vec::new();
    for p in HOST_PACKAGES {
        if !is_installed(&step, p)? {
            missing.push(p.to_string());
        }
    }
    Ok(missing)
}

/// `apt-get update`.
pub(crate) fn apt_update(step: &Step) -> Result<(), SetupError> {
    exec::run(step, apt("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// Installs what is missing (after one `apt-get update`), or fails listing it
/// when `install` is false.
pub(crate) fn ensure(install: bool, progress: &dyn Fn(Progress)) -> Result<(), SetupError> {
    let mut r = Reporter::new(Step::HostPackages, progress);
    let missing = missing_packages()?;
    if missing.is_empty() {
        r.cached();
        return Ok(());
    }
    if !install {
        return Err(SetupError::HostPackagesMissing { packages: missing });
    }
    r.started();
    r.info(format!("installing {}", missing.join(" ")));
    apt_update(r.step())?;
    exec::run(
        r.step(),
        apt("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        return Err(SetupError::unexpected(
            r.step(),
            format!(
                "apt-get install succeeded but {} still not installed",
                still.join(", ")
            ),
        ));
    }
    r.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_parsing() {
        assert!(status_is_installed("install ok installed"));
        assert!(status_is_installed("hold ok installed"));
        assert!(!status_is_installed("unknown ok not-installed"));
        assert!(!status_is_installed("deinstall ok config-files"));
        assert!(!status_is_installed("install ok half-installed"));
        assert!(!status_is_installed(""));
    }

    #[test]
    fn dpkg_query_answers_for_real_packages() {
        let step = Step::HostPackages;
        assert!(is_installed(&step, "dpkg").unwrap());
        assert!(!is_installed(&step, "hearth-no-such-package").unwrap());
    }
}
