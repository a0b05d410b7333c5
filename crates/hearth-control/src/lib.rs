//! Hearth's control plane. This part: image builds.
//!
//! [`ImageControl`] owns every image, version and build state change: the
//! API calls it with intents (create an image, add a version, delete,
//! re-status) and reads state back from the store. Each build is one Tokio
//! task that owns its build from PENDING to a final state: it fetches the
//! code artifact, runs [`hearth_builder::Builder`], and writes each state
//! change through the transition functions of [`hearth_domain`], so no
//! other code moves a build, its version or its image. Deleting an image
//! or version aborts its build's task; the engine's microVMs of that build
//! end with their handles. At start-up [`ImageControl::recover`] ends
//! every build a previous server left unfinished as FAILED, with a reason,
//! and removes its half-made files.
//!
//! Build logs are files that followers read while the build's task appends
//! ([`logs`]). Tasks run on the server's Tokio runtime; store calls run on
//! its blocking pool.

pub mod config;
pub mod connectors;
pub mod error;
pub mod files;
pub mod images;
pub mod logs;
pub mod microvms;

mod build_task;
mod recovery;
mod writes;

pub use config::{BaseImageFile, VersionConfig};
pub use error::ControlError;
pub use images::{BuildSetup, Created, ImageControl, LogHandle, DELETION_SWEEP};
pub use logs::LogProgress;
pub use microvms::{
    ConnectError, Connection, MicrovmControl, MicrovmSetup, OpenRefusal, RunRequest,
};
