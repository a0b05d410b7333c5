//! `<cache>/manifest.json`: what the last successful [`setup`](crate::setup)
//! provisioned and where it is. The rest of Hearth finds the kernel, the
//! initramfs and the base images through [`Manifest::load`].
//!
//! A plain versioned serde struct, written atomically (temp file + rename).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache;

/// Version of the manifest format this crate reads and writes.
pub const MANIFEST_VERSION: u32 = 2;
/// File name of the manifest in the cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything `hearth setup` provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub version: u32,
    pub cache_dir: PathBuf,
    /// The QEMU binaries setup verified (both report this version).
    pub qemu: crate::host::QemuInfo,
    pub kernel: KernelArtifact,
    pub initramfs: InitramfsArtifact,
    pub images: Vec<ImageArtifact>,
}

/// The guest kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelArtifact {
    /// The `vmlinuz` file.
    pub path: PathBuf,
    /// Kernel release, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// Debian package it came from, e.g. `linux-image-6.1.0-57-cloud-amd64`.
    pub package: String,
    /// That package's version, e.g. `6.1.192-3`.
    pub package_version: String,
    pub key: String,
}

/// The initramfs (agent as `/init` plus the kernel's modules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsArtifact {
    /// The uncompressed newc cpio archive.
    pub path: PathBuf,
    pub key: String,
    /// SHA-256 (hex) of the agent binary inside.
    pub agent_sha256: String,
}

/// A managed base image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageArtifact {
    /// e.g. `debian-12-minimal`.
    pub name: String,
    /// The sparse ext4 file; use it read-only (as a qcow2 backing file).
    pub path: PathBuf,
    pub size_bytes: u64,
    pub key: String,
    /// Image version, `"1"`.
    pub version: String,
}

/// Why the manifest cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no Hearth artifacts in {}: run `hearth setup` first", cache_dir.display())]
    Missing { cache_dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt: run `hearth setup` again", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has version {found}, this Hearth reads version {MANIFEST_VERSION}: run `hearth setup` again", path.display())]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Manifest {
    /// Path of the manifest in `cache_dir`.
    pub fn path_in(cache_dir: &Path) -> PathBuf {
        cache_dir.join(MANIFEST_FILE)
    }

    /// Loads `<cache_dir>/manifest.json`.
    pub fn load(cache_dir: &Path) -> Result<Manifest, ManifestError> {
        let path = Self::path_in(cache_dir);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing {
                    cache_dir: cache_dir.to_path_buf(),
                })
            }
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly =
            serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
                path: path.clone(),
                source,
            })?;
        if v.version != MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                path,
                found: v.version,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse { path, source })
    }

    /// Writes `<cache_dir>/manifest.json` atomically.
    pub fn save(&self) -> Result<(), ManifestError> {
        let path = Self::path_in(&self.cache_dir);
        let tmp = self
            .cache_dir
            .join(format!("{MANIFEST_FILE}.tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Parse {
            path: path.clone(),
            source,
        })?;
        let write = || -> io::Result<()> {
            cache::write_synced(&tmp, &json)?;
            fs::rename(&tmp, &path)?;
            cache::sync_dir(&self.cache_dir)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            ManifestError::Write {
                path: path.clone(),
                source,
            }
        })
    }

    /// The image called `name`, if it was provisioned.
    pub fn image(&self, name: &str) -> Option<&ImageArtifact> {
        self.images.iter().find(|i| i.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cache_dir: &Path) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            cache_dir: cache_dir.to_path_buf(),
            qemu: crate::host::QemuInfo {
                version: "7.2.19".into(),
                package_version: Some("1:7.2+dfsg-7+deb12u18+b2".into()),
                system_binary: "qemu-system-x86_64".into(),
                img_binary: "qemu-img".into(),
            },
            kernel: KernelArtifact {
                path: cache_dir.join("kernel/k/vmlinuz"),
                release: "6.1.0-57-cloud-amd64".into(),
                package: "linux-image-6.1.0-57-cloud-amd64".into(),
                package_version: "6.1.192-3".into(),
                key: "k".into(),
            },
            initramfs: InitramfsArtifact {
                path: cache_dir.join("initramfs/i/initramfs.cpio"),
                key: "i".into(),
                agent_sha256: "ab".repeat(32),
            },
            images: vec![ImageArtifact {
                name: "debian-12-minimal".into(),
                path: cache_dir.join("images/debian-12-minimal/m/rootfs.ext4"),
                size_bytes: 735 * 1024 * 1024,
                key: "m".into(),
                version: "1".into(),
            }],
        }
    }

    #[test]
    fn save_then_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample(dir.path());
        m.save().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(m.image("debian-12-minimal").unwrap().key, "m");
        assert!(m.image("debian-12-python").is_none());
        // Saving again replaces it.
        let mut m2 = m.clone();
        m2.images.clear();
        m2.save().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m2);
    }

    #[test]
    fn missing_manifest_says_run_setup() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Missing { .. }));
        assert!(
            err.to_string().contains("run `hearth setup` first"),
            "{err}"
        );
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = serde_json::to_value(sample(dir.path())).unwrap();
        v["version"] = (MANIFEST_VERSION + 1).into();
        fs::write(dir.path().join(MANIFEST_FILE), v.to_string()).unwrap();
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(ManifestError::UnsupportedVersion { found, .. }) if found == MANIFEST_VERSION + 1
        ));
        fs::write(dir.path().join(MANIFEST_FILE), b"{\"version\": 1").unwrap();
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(ManifestError::Parse { .. })
        ));
    }
}
