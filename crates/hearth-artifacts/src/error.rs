//! The error [`setup`](crate::setup) returns: every variant names the step
//! that failed and, where there is one, the command or path involved.

use std::io;
use std::path::PathBuf;

use crate::elf::ElfError;
use crate::kernel::ModuleError;
use crate::manifest::ManifestError;
use crate::Step;

/// The build command for a suitable agent, quoted in errors.
pub const AGENT_BUILD_HINT: &str = "RUSTFLAGS='-C target-feature=+crt-static' cargo build \
     --profile release-agent -p hearth-agent --target x86_64-unknown-linux-gnu";

/// Why [`setup`](crate::setup) failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A command ran and exited unsuccessfully.
    #[error("{step}: `{command}` failed ({status}){}", tail(stderr_tail))]
    CommandFailed {
        step: Step,
        command: String,
        status: String,
        /// The last lines of its standard error.
        stderr_tail: String,
    },
    /// A command could not be started at all.
    #[error("{step}: could not run `{command}`")]
    CommandSpawn {
        step: Step,
        command: String,
        #[source]
        source: io::Error,
    },
    /// A file system operation failed.
    #[error("{step}: cannot {action} {}", path.display())]
    Io {
        step: Step,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Host packages are missing and installing them was not allowed.
    #[error(
        "host packages missing: {}; install them with `apt-get install --no-install-recommends {}` \
         or let setup install them",
        packages.join(", "),
        packages.join(" ")
    )]
    HostPackagesMissing { packages: Vec<String> },
    /// A tool's output or an unpacked package was not what setup expects.
    #[error("{step}: {message}")]
    Unexpected { step: Step, message: String },
    /// The kernel's modules could not be resolved.
    #[error("kernel: cannot collect the guest modules")]
    Modules {
        #[source]
        source: ModuleError,
    },
    /// The agent binary cannot be `/init`.
    #[error(
        "initramfs: {} cannot be the guest agent: it must be an x86-64 ELF executable, static or \
         with its libraries on this host (`cargo build --release` builds one; so does \
         `{AGENT_BUILD_HINT}`)",
        path.display()
    )]
    Agent {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    /// A metadata file could not be written or parsed.
    #[error("{step}: invalid metadata {}", path.display())]
    Metadata {
        step: Step,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// An image name that is not a managed image.
    #[error("unknown image {name:?}; managed images are: {}", known.join(", "))]
    UnknownImage { name: String, known: Vec<String> },
    /// The manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl SetupError {
    pub(crate) fn io(
        step: &Step,
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> SetupError {
        let step = step.clone();
        let path = path.into();
        move |source| SetupError::Io {
            step,
            action,
            path,
            source,
        }
    }

    pub(crate) fn unexpected(step: &Step, message: impl Into<String>) -> SetupError {
        SetupError::Unexpected {
            step: step.clone(),
            message: message.into(),
        }
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            SetupError::CommandFailed { step, .. }
            | SetupError::CommandSpawn { step, .. }
            | SetupError::Io { step, .. }
            | SetupError::Unexpected { step, .. }
            | SetupError::Metadata { step, .. } => step.clone(),
            SetupError::HostPackagesMissing { .. } => Step::HostPackages,
            SetupError::Modules { .. } => Step::Kernel,
            SetupError::Agent { .. } => Step::Initramfs,
            SetupError::UnknownImage { name, .. } => Step::Image(name.clone()),
            SetupError::Manifest(_) => Step::Cache,
        }
    }
}

fn tail(stderr_tail: &str) -> String {
    if stderr_tail.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", stderr_tail.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_failure_names_step_command_and_stderr() {
        let e = SetupError::CommandFailed {
            step: Step::Image("debian-12-minimal".into()),
            command: "mmdebstrap --variant=minbase".into(),
            status: "exit status: 1".into(),
            stderr_tail: "E: cannot reach mirror\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "image debian-12-minimal: `mmdebstrap --variant=minbase` failed (exit status: 1):\n\
             E: cannot reach mirror"
        );
        assert_eq!(e.step(), Step::Image("debian-12-minimal".into()));
    }

    #[test]
    fn missing_packages_tell_how_to_install() {
        let e = SetupError::HostPackagesMissing {
            packages: vec!["qemu-utils".into(), "mmdebstrap".into()],
        };
        assert!(e
            .to_string()
            .contains("apt-get install --no-install-recommends qemu-utils mmdebstrap"));
    }
}
