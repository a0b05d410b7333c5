//! Provisioning for Hearth: everything a microVM needs, built once and cached.
//!
//! `hearth setup` calls [`setup`], which idempotently provisions into a cache
//! directory (see [`cache_dir`]):
//!
//! 1. the host packages Hearth runs on ([`host`]),
//! 2. the guest kernel and the virtio/overlay modules the initramfs loads
//!    ([`kernel`]),
//! 3. the initramfs with the agent as `/init` ([`initramfs`], written with the
//!    [`cpio`] newc writer),
//! 4. the managed base images as ext4 files ([`image`]),
//!
//! and records where they are in a [`Manifest`] (`<cache>/manifest.json`) that
//! the rest of Hearth loads with [`Manifest::load`].
//!
//! # Cache layout
//!
//! ```text
//! <cache>/
//!   manifest.json                        written last, atomically
//!   kernel/<key>/vmlinuz
//!               /modules/<name>.ko
//!               /kernel.json             metadata, written last
//!   initramfs/<key>/initramfs.cpio
//!                  /initramfs.json
//!   images/<name>/<key>/rootfs.ext4
//!                      /image.json
//! ```
//!
//! Every artifact directory is named by a hash of the inputs that determine its
//! content (never of where those inputs were fetched from), is built in a
//! sibling `<key>.tmp-<pid>` directory and renamed into place once complete
//! ([`cache`] owns this). A directory counts as present only if its metadata
//! file is there, so an interrupted build is never trusted, and a second run
//! with the same inputs reports every step as [`Status::Cached`].

#![forbid(unsafe_code)]

pub mod cache;
mod control;
pub mod cpio;
pub mod elf;
mod error;
mod exec;
pub mod host;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod manifest;

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

pub use cache::cache_dir;
pub use error::SetupError;
pub use manifest::{ImageArtifact, InitramfsArtifact, KernelArtifact, Manifest, ManifestError};

/// A step of [`setup`], as reported through [`Progress`] and named in errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// Checking (and installing) the host's Debian packages.
    HostPackages,
    /// Downloading and unpacking the guest kernel and its modules.
    Kernel,
    /// Building the initramfs around the agent binary.
    Initramfs,
    /// Building the named managed base image.
    Image(String),
    /// Cache housekeeping: creating the layout, removing stale staging
    /// directories, writing the manifest.
    Cache,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::HostPackages => f.write_str("host packages"),
            Step::Kernel => f.write_str("kernel"),
            Step::Initramfs => f.write_str("initramfs"),
            Step::Image(name) => write!(f, "image {name}"),
            Step::Cache => f.write_str("cache"),
        }
    }
}

/// What happened to a step.
///
/// A step reports either `Cached`, or `Started`, any number of `Info`, then
/// `Done` (or nothing more if it fails: the error names the step). An `Info`
/// can also precede `Cached` (e.g. the kernel could not be resolved offline
/// and the cached one is used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Work on the step begins (it was not cached).
    Started,
    /// The artifact was already present for these inputs: nothing was done.
    Cached,
    /// The step finished after `elapsed_ms` milliseconds.
    Done { elapsed_ms: u64 },
    /// A line of detail (a tool's log line, a resolved version...).
    Info(String),
}

/// One progress report from [`setup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub step: Step,
    pub status: Status,
}

/// Inputs of [`setup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOptions {
    /// Where artifacts are cached; usually [`cache_dir()`].
    pub cache_dir: PathBuf,
    /// The `hearth-agent` binary that becomes `/init` (static, or dynamic:
    /// its loader and libraries are taken from this host).
    pub agent_binary: PathBuf,
    /// Managed images to build, by name (see [`image::MANAGED_IMAGES`]).
    pub images: Vec<String>,
    /// Debian mirror for the images; detected from the host's apt sources
    /// when `None`. Not part of any cache key.
    pub mirror: Option<String>,
    /// Allow `apt-get update` / `apt-get install` on the host. When false, a
    /// missing host package is an error.
    pub install_host_packages: bool,
}

impl SetupOptions {
    /// Options with the defaults: every managed image, detected mirror, host
    /// packages installed when missing.
    pub fn new(cache_dir: PathBuf, agent_binary: PathBuf) -> Self {
        SetupOptions {
            cache_dir,
            agent_binary,
            images: image::MANAGED_IMAGES
                .iter()
                .map(|s| s.name.to_string())
                .collect(),
            mirror: None,
            install_host_packages: true,
        }
    }
}

/// Reports the progress of one step.
pub(crate) struct Reporter<'a> {
    step: Step,
    progress: &'a dyn Fn(Progress),
    started: Instant,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(step: Step, progress: &'a dyn Fn(Progress)) -> Self {
        Reporter {
            step,
            progress,
            started: Instant::now(),
        }
    }

    pub(crate) fn step(&self) -> &Step {
        &self.step
    }

    fn emit(&self, status: Status) {
        (self.progress)(Progress {
            step: self.step.clone(),
            status,
        });
    }

    pub(crate) fn cached(&self) {
        self.emit(Status::Cached);
    }

    pub(crate) fn started(&mut self) {
        self.started = Instant::now();
        self.emit(Status::Started);
    }

    pub(crate) fn info(&self, message: impl Into<String>) {
        self.emit(Status::Info(message.into()));
    }

    pub(crate) fn done(&self) {
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.emit(Status::Done { elapsed_ms });
    }
}

/// Provisions everything in `opts.cache_dir` and writes the manifest.
///
/// Idempotent: artifacts already present for the same inputs are reused and
/// reported as [`Status::Cached`]. The agent binary and the image names are
/// checked before any work starts.
pub fn setup(opts: &SetupOptions, progress: &dyn Fn(Progress)) -> Result<Manifest, SetupError> {
    let cache = std::path::absolute(&opts.cache_dir).map_err(|source| SetupError::Io {
        step: Step::Cache,
        action: "resolve cache directory",
        path: opts.cache_dir.clone(),
        source,
    })?;

    // Validate every input before doing anything slow.
    let mut specs: Vec<&'static image::ImageSpec> = Vec::new();
    for name in &opts.images {
        let spec = image::managed_image(name).ok_or_else(|| SetupError::UnknownImage {
            name: name.clone(),
            known: image::MANAGED_IMAGES
                .iter()
                .map(|s| s.name.to_string())
                .collect(),
        })?;
        if !specs.iter().any(|s| s.name == spec.name) {
            specs.push(spec);
        }
    }
    let agent = initramfs::read_agent(&opts.agent_binary)?;

    cache::prepare(&cache)?;

    let qemu = host::ensure(opts.install_host_packages, progress)?;
    let kernel = kernel::ensure(&cache, opts.install_host_packages, progress)?;
    let initramfs = initramfs::ensure(&cache, &agent, &kernel, progress)?;

    let mut sources = image::Sources::detect(image::SUITE);
    if let Some(m) = &opts.mirror {
        sources.mirror = m.clone();
    }
    let mut images = Vec::new();
    for spec in specs {
        images.push(image::ensure(&cache, spec, &sources, progress)?);
    }

    let manifest = Manifest {
        version: manifest::MANIFEST_VERSION,
        cache_dir: cache.clone(),
        qemu,
        kernel: kernel.artifact,
        initramfs,
        images,
    };
    manifest.save()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_read_well_in_messages() {
        assert_eq!(Step::HostPackages.to_string(), "host packages");
        assert_eq!(
            Step::Image("debian-12-minimal".into()).to_string(),
            "image debian-12-minimal"
        );
    }

    #[test]
    fn default_options_build_every_managed_image() {
        let o = SetupOptions::new("/c".into(), "/a".into());
        assert_eq!(o.images, vec!["debian-12-minimal", "debian-12-python"]);
        assert!(o.install_host_packages);
        assert!(o.mirror.is_none());
    }

    #[test]
    fn unknown_image_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = SetupOptions::new(dir.path().join("cache"), "/nonexistent".into());
        o.images = vec!["debian-13-bogus".into()];
        let err = setup(&o, &|_| {}).unwrap_err();
        assert!(matches!(err, SetupError::UnknownImage { .. }), "{err}");
        assert!(!dir.path().join("cache").exists());
    }

    #[test]
    fn a_non_elf_agent_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"#!/bin/sh\necho hi\n").unwrap();
        let o = SetupOptions::new(dir.path().join("cache"), agent);
        let err = setup(&o, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("x86-64 ELF executable"), "{err}");
        assert!(!dir.path().join("cache").exists());
    }
}
