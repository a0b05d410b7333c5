//! Root disks as explicit chains of layers.
//!
//! Owns the shape of a microVM's disk: a read-only base (a managed image,
//! raw), the snapshot disks it was cloned through, and its own qcow2 layers,
//! the top one written. Every layer is named by where it lives
//! ([`LayerLocation`]), never by an absolute path inside the state
//! directory, so the state directory can move. The chain is always given to
//! QEMU (and to `qemu-img`) explicitly, node by node, so no layer relies on
//! the backing file name written in its header: own layers are created
//! without one.
//!
//! Blocking `qemu-img` children run from the backend's tasks through
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ids::SnapshotId;

/// Disk failures.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot inspect disk {path}")]
    Inspect {
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
    #[error("`qemu-img {op}` failed for {path}: {stderr}")]
    QemuImg {
        op: &'static str,
        path: PathBuf,
        stderr: String,
    },
}

/// The format of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Where a layer lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerLocation {
    /// Outside the state directory (a managed base image in the cache).
    External { path: PathBuf },
    /// A file of a snapshot in the catalog.
    Snapshot { id: SnapshotId, file: String },
    /// A file in the microVM's own directory.
    Own { file: String },
}

/// One layer of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayer {
    pub location: LayerLocation,
    pub format: DiskFormat,
}

/// A root disk: layers bottom first, the top one written by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChain {
    pub size_bytes: u64,
    pub layers: Vec<DiskLayer>,
}

/// A layer resolved to a path on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLayer {
    pub path: PathBuf,
    pub format: DiskFormat,
}

impl DiskChain {
    /// This chain with one more own layer on top.
    pub fn with_own_top(&self, file: &str) -> DiskChain {
        let mut c = self.clone();
        c.layers.push(DiskLayer {
            location: LayerLocation::Own { file: file.into() },
            format: DiskFormat::Qcow2,
        });
        c
    }

    /// The microVM's own layers (files in its directory), bottom first.
    pub fn own_files(&self) -> Vec<&str> {
        self.layers
            .iter()
            .filter_map(|l| match &l.location {
                LayerLocation::Own { file } => Some(file.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Snapshots the chain goes through.
    pub fn snapshots(&self) -> Vec<&SnapshotId> {
        self.layers
            .iter()
            .filter_map(|l| match &l.location {
                LayerLocation::Snapshot { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Paths of every layer on this host, bottom first.
    pub fn resolve(&self, snapshots_dir: &Path, vm_dir: &Path) -> Vec<ResolvedLayer> {
        self.layers
            .iter()
            .map(|l| ResolvedLayer {
                path: match &l.location {
                    LayerLocation::External { path } => path.clone(),
                    LayerLocation::Snapshot { id, file } => {
                        snapshots_dir.join(id.as_str()).join(file)
                    }
                    LayerLocation::Own { file } => vm_dir.join(file),
                },
                format: l.format,
            })
            .collect()
    }
}

/// QEMU `blockdev` options for a chain whose layer `i` is opened from
/// `files[i]` (a path, usually `/dev/fdset/N`). Node names start with
/// `prefix`; the top layer is writable, the rest read-only. Returns the
/// options bottom first and the top node's name.
pub fn blockdev_nodes(prefix: &str, layers: &[(String, DiskFormat)]) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    let mut below: Option<String> = None;
    let top = layers.len().saturating_sub(1);
    for (i, (file, format)) in layers.iter().enumerate() {
        let read_only = i != top;
        let file_node = format!("{prefix}f{i}");
        let fmt_node = format!("{prefix}l{i}");
        out.push(json!({
            "driver": "file",
            "node-name": file_node,
            "filename": file,
            "read-only": read_only,
        }));
        let mut node = json!({
            "driver": format.as_str(),
            "node-name": fmt_node,
            "file": file_node,
            "read-only": read_only,
        });
        if *format == DiskFormat::Qcow2 {
            node["backing"] = below.clone().map_or(Value::Null, Value::String);
        }
        out.push(node);
        below = Some(fmt_node);
    }
    (out, below.unwrap_or_default())
}

/// The same chain as a `qemu-img` `json:` image name (for offline work on
/// the host, where the layers are plain paths).
pub fn qemu_img_spec(layers: &[ResolvedLayer]) -> String {
    let mut spec: Option<Value> = None;
    for l in layers {
        let mut node = json!({
            "driver": l.format.as_str(),
            "file": { "driver": "file", "filename": l.path.to_string_lossy() },
        });
        if l.format == DiskFormat::Qcow2 {
            node["backing"] = spec.take().unwrap_or(Value::Null);
        }
        spec = Some(node);
    }
    format!("json:{}", spec.unwrap_or(Value::Null))
}

fn run_qemu_img(
    qemu_img: &Path,
    op: &'static str,
    path: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<(), DiskError> {
    let out = Command::new(qemu_img)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DiskError::Spawn {
            program: qemu_img.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::QemuImg {
            op,
            path: path.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Create an empty qcow2 layer of `size_bytes`, with no backing file in its
/// header (its backing is always given explicitly).
pub fn create_layer(qemu_img: &Path, path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let size = size_bytes.to_string();
    let r = run_qemu_img(
        qemu_img,
        "create",
        path,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    );
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Write the top layer of `chain` into the layer below it (offline, both
/// files the microVM's own). Crash-safe as used: until the caller drops the
/// top layer from its record, the top still overrides every block it held.
pub fn commit_top(qemu_img: &Path, chain: &[ResolvedLayer]) -> Result<(), DiskError> {
    let top = chain.last().map(|l| l.path.clone()).unwrap_or_default();
    let spec = qemu_img_spec(chain);
    run_qemu_img(
        qemu_img,
        "commit",
        &top,
        &["commit".as_ref(), "-q".as_ref(), spec.as_ref()],
    )
}

/// Write the blocks that the layers above `base_len` hold into one new
/// qcow2 file `dest` (no backing name in its header): the chain's own part,
/// flattened, for a snapshot.
pub fn flatten_onto(
    qemu_img: &Path,
    chain: &[ResolvedLayer],
    base_len: usize,
    dest: &Path,
) -> Result<(), DiskError> {
    // -U: the microVM's QEMU still holds the chain open (stopped, flushed).
    let spec = qemu_img_spec(chain);
    let mut args: Vec<std::ffi::OsString> = ["convert", "-q", "-U", "-O", "qcow2"]
        .iter()
        .map(Into::into)
        .collect();
    if base_len == 0 {
        args.extend([spec.into(), dest.as_os_str().to_owned()]);
        return run_qemu_img(qemu_img, "convert", dest, &os_refs(&args));
    }
    // Convert against the lower chain (-B), then forget the backing name.
    let base = qemu_img_spec(&chain[..base_len]);
    args.extend([
        "-B".into(),
        base.into(),
        "-F".into(),
        chain[base_len - 1].format.as_str().into(),
        spec.into(),
        dest.as_os_str().to_owned(),
    ]);
    run_qemu_img(qemu_img, "convert", dest, &os_refs(&args))?;
    run_qemu_img(
        qemu_img,
        "rebase",
        dest,
        &[
            "rebase".as_ref(),
            "-u".as_ref(),
            "-b".as_ref(),
            "".as_ref(),
            dest.as_os_str(),
        ],
    )
}

fn os_refs(args: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    args.iter().map(|a| a.as_os_str()).collect()
}

/// Virtual size of a raw base image (its length).
pub fn raw_size_bytes(base: &Path) -> Result<u64, DiskError> {
    std::fs::metadata(base)
        .map(|m| m.len())
        .map_err(|source| DiskError::Inspect {
            path: base.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> DiskChain {
        DiskChain {
            size_bytes: 1 << 30,
            layers: vec![
                DiskLayer {
                    location: LayerLocation::External {
                        path: "/cache/base.ext4".into(),
                    },
                    format: DiskFormat::Raw,
                },
                DiskLayer {
                    location: LayerLocation::Snapshot {
                        id: SnapshotId::new("snap-1").unwrap(),
                        file: "disk.qcow2".into(),
                    },
                    format: DiskFormat::Qcow2,
                },
            ],
        }
        .with_own_top("disk-1.qcow2")
    }

    #[test]
    fn chains_resolve_relative_to_where_things_are_now() {
        let c = chain();
        assert_eq!(c.own_files(), ["disk-1.qcow2"]);
        assert_eq!(c.snapshots().len(), 1);
        let r = c.resolve(
            Path::new("/new/state/snapshots"),
            Path::new("/new/state/vms/a"),
        );
        assert_eq!(r[0].path, Path::new("/cache/base.ext4"));
        assert_eq!(
            r[1].path,
            Path::new("/new/state/snapshots/snap-1/disk.qcow2")
        );
        assert_eq!(r[2].path, Path::new("/new/state/vms/a/disk-1.qcow2"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<DiskChain>(&json).unwrap(), c);
    }

    #[test]
    fn blockdev_nodes_chain_bottom_up_with_only_the_top_writable() {
        let (nodes, top) = blockdev_nodes(
            "g1",
            &[
                ("/dev/fdset/1".into(), DiskFormat::Raw),
                ("/dev/fdset/2".into(), DiskFormat::Qcow2),
            ],
        );
        assert_eq!(top, "g1l1");
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[1]["driver"], "raw");
        assert!(nodes[1].get("backing").is_none());
        assert_eq!(nodes[3]["backing"], "g1l0");
        assert_eq!(nodes[3]["read-only"], false);
        assert_eq!(nodes[2]["read-only"], false);
        assert_eq!(nodes[0]["read-only"], true);
    }

    #[test]
    fn qemu_img_specs_nest_backings() {
        let r = chain().resolve(Path::new("/s"), Path::new("/v"));
        let spec = qemu_img_spec(&r);
        let v: Value = serde_json::from_str(spec.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["file"]["filename"], "/v/disk-1.qcow2");
        assert_eq!(v["backing"]["file"]["filename"], "/s/snap-1/disk.qcow2");
        assert_eq!(v["backing"]["backing"]["driver"], "raw");
    }
}
