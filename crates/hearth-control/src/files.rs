//! Where image builds keep their files under the data directory, and how
//! they are removed. Blocking file work, called through `spawn_blocking`
//! or at start-up.
//!
//! ```text
//! <data>/images/<image id>/<version>/   the version's disk layer (read-only
//!                                        base of every microVM of it)
//! <data>/builds/<build id>/             a build's scratch: the fetched
//!                                        artifact and the unpacked context,
//!                                        removed when the build ends
//! <data>/logs/<account>/<group>/<stream>.log
//! <data>/engine/                         the engine's state: microVMs and
//!                                        the snapshot catalog
//! ```

use std::path::{Path, PathBuf};

use hearth_vmm::disk::LayerLocation;
use hearth_vmm::Catalog;

/// The build-related directories of a data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub images: PathBuf,
    pub builds: PathBuf,
    pub logs: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            images: data_dir.join("images"),
            builds: data_dir.join("builds"),
            logs: data_dir.join("logs"),
        }
    }

    pub fn version_dir(&self, image_id: &str, version: &str) -> PathBuf {
        self.images.join(image_id).join(version)
    }

    pub fn image_dir(&self, image_id: &str) -> PathBuf {
        self.images.join(image_id)
    }

    pub fn build_dir(&self, build_id: &str) -> PathBuf {
        self.builds.join(build_id)
    }
}

/// Delete every catalog snapshot whose disk stands on a file under `dir`
/// (a version's or an image's directory), then `dir` itself. Snapshots
/// that something still depends on are kept, and so is `dir`: returns the
/// ids kept.
pub fn remove_owned(catalog: Option<&Catalog>, dir: &Path) -> Vec<String> {
    let mut kept = Vec::new();
    // Layers are recorded by canonical path.
    let dir = &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if let Some(catalog) = catalog {
        for snap in catalog.list() {
            let owned = snap.record.disk.as_ref().is_some_and(|chain| {
                chain.layers.iter().any(|l| match &l.location {
                    LayerLocation::External { path } => path.starts_with(dir),
                    _ => false,
                })
            });
            if owned && catalog.delete(&snap.id).is_err() {
                kept.push(snap.id.to_string());
            }
        }
    }
    if kept.is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
    kept
}
