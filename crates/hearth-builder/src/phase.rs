//! The phases of a build, in order, as the builder reports them.

use std::fmt;

/// Where a build is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Unpacking the code artifact and reading the Dockerfile.
    Prepare,
    /// Starting the builder microVM (base image, egress, build context).
    BuilderStart,
    /// One Dockerfile instruction that changes the disk (1-based index).
    Step {
        index: usize,
        total: usize,
        description: String,
    },
    /// Powering the builder off and keeping its disk.
    BuilderStop,
    /// Booting the image's disk and starting CMD/ENTRYPOINT.
    AppStart,
    /// Waiting for the ready hook or the first EXPOSEd port.
    Ready,
    /// Calling the validate hook.
    Validate,
    /// Quiescing and snapshotting memory and disk.
    Snapshot,
}

impl Phase {
    /// A short stable name (benchmarks and logs key on it).
    pub fn name(&self) -> String {
        match self {
            Phase::Prepare => "prepare".into(),
            Phase::BuilderStart => "builder_start".into(),
            Phase::Step { index, .. } => format!("step_{index}"),
            Phase::BuilderStop => "builder_stop".into(),
            Phase::AppStart => "app_start".into(),
            Phase::Ready => "app_ready".into(),
            Phase::Validate => "validate".into(),
            Phase::Snapshot => "snapshot".into(),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Prepare => f.write_str("preparing the build context"),
            Phase::BuilderStart => f.write_str("starting the builder microVM"),
            Phase::Step {
                index,
                total,
                description,
            } => write!(f, "step {index}/{total} ({description})"),
            Phase::BuilderStop => f.write_str("saving the builder's disk"),
            Phase::AppStart => f.write_str("starting the app"),
            Phase::Ready => f.write_str("waiting for the app to be ready"),
            Phase::Validate => f.write_str("the validate hook"),
            Phase::Snapshot => f.write_str("the snapshot"),
        }
    }
}
