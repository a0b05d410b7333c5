//! Root disks: qcow2 overlays over read-only bases.
//!
//! Owns the creation of a microVM's private disk layer. Runs `qemu-img` as a
//! short blocking child from the backend task. The overlay is created with
//! `-u` (the backing file is not opened), so creating it costs one small
//! file write however large the base is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Disk failures.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot inspect base image {path}")]
    Base {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img create {overlay} failed: {stderr}")]
    Create { overlay: PathBuf, stderr: String },
}

/// The format of a backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Create `overlay` (qcow2) on top of `base`, with the same virtual size.
pub fn create_overlay(
    qemu_img: &Path,
    base: &Path,
    base_format: DiskFormat,
    virtual_size_bytes: u64,
    overlay: &Path,
) -> Result<(), DiskError> {
    let base = std::fs::canonicalize(base).map_err(|source| DiskError::Base {
        path: base.into(),
        source,
    })?;
    let out = Command::new(qemu_img)
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-F",
            base_format.as_str(),
            "-b",
        ])
        .arg(&base)
        .arg(overlay)
        .arg(virtual_size_bytes.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskError::Spawn {
            program: qemu_img.into(),
            source,
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(overlay);
        return Err(DiskError::Create {
            overlay: overlay.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Virtual size of a raw base image (its length).
pub fn raw_size_bytes(base: &Path) -> Result<u64, DiskError> {
    std::fs::metadata(base)
        .map(|m| m.len())
        .map_err(|source| DiskError::Base {
            path: base.into(),
            source,
        })
}
