//! Packing a directory into a build zip, client-side (`hearth image create
//! NAME --code DIR`).
//!
//! [`pack_dir`] walks the directory in a fixed order and writes entries with
//! fixed timestamps, so the same tree always gives the same bytes. It
//! follows no symbolic link and refuses any (the server would refuse the
//! entry anyway), as well as names the server would refuse. Blocking file
//! I/O on the caller's thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::names::{clean_name, dir_mode, file_mode, NameLimits, PathProblem, ShownName};
use crate::unpack::UnpackLimits;

/// What [`pack_dir`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackSummary {
    pub file_count: u64,
    pub dir_count: u64,
    /// Sum of the files' sizes.
    pub total_bytes: u64,
    /// Size of the zip written.
    pub archive_bytes: u64,
}

/// Why a directory could not be packed. Paths in messages are relative to
/// the directory being packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path} is a symbolic link; a build context cannot contain symbolic links (copy the file in, or list it in .dockerignore)")]
    Symlink { path: ShownName },
    #[error("{path} is not a regular file or directory")]
    SpecialFile { path: ShownName },
    #[error("{path} cannot be put in a build context: {problem}")]
    BadName {
        path: ShownName,
        problem: PathProblem,
    },
    #[error("the output file is inside the directory being packed")]
    OutputInsideDir,
    #[error("the output file already exists")]
    OutputExists,
    #[error("could not {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: ShownName,
        #[source]
        source: io::Error,
    },
    #[error("could not write the zip: {source}")]
    Zip {
        #[source]
        source: zip::result::ZipError,
    },
}

/// Zip the contents of `dir` into `out` (a new file), skipping every path
/// (relative to `dir`) for which `ignore` is true; an ignored directory is
/// not descended into. Entries are sorted by name at each level, stored
/// with 1980-01-01 timestamps and modes masked as the server masks them.
/// On error `out` is removed.
pub fn pack_dir(
    dir: &Path,
    out: &Path,
    ignore: &dyn Fn(&Path) -> bool,
) -> Result<PackSummary, PackError> {
    let io_at = |op: &'static str, path: &Path| {
        let path = ShownName::new(&path.to_string_lossy());
        move |source| PackError::Io { op, path, source }
    };
    let canonical_dir = dir.canonicalize().map_err(io_at("open", dir))?;
    if let Some(parent) = out.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let parent = parent.canonicalize().map_err(io_at("open", parent))?;
        if parent.starts_with(&canonical_dir) {
            return Err(PackError::OutputInsideDir);
        }
    }
    let mut entries = Vec::new();
    walk(&canonical_dir, Path::new(""), ignore, &mut entries)?;

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => PackError::OutputExists,
            _ => io_at("create", out)(e),
        })?;
    let result = write_zip(&canonical_dir, file, &entries);
    if result.is_err() {
        let _ = fs::remove_file(out);
    }
    let mut summary = result?;
    summary.archive_bytes = fs::metadata(out).map_err(io_at("read", out))?.len();
    Ok(summary)
}

struct Entry {
    rel: PathBuf,
    name: String,
    is_dir: bool,
    mode: u32,
    size_bytes: u64,
}

fn walk(
    root: &Path,
    rel: &Path,
    ignore: &dyn Fn(&Path) -> bool,
    out: &mut Vec<Entry>,
) -> Result<(), PackError> {
    let here = root.join(rel);
    let shown_here = ShownName::new(&rel.to_string_lossy());
    let read = fs::read_dir(&here).map_err(|source| PackError::Io {
        op: "read directory",
        path: shown_here.clone(),
        source,
    })?;
    let mut children = Vec::new();
    for child in read {
        let child = child.map_err(|source| PackError::Io {
            op: "read directory",
            path: shown_here.clone(),
            source,
        })?;
        children.push(child.file_name());
    }
    children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let limits = UnpackLimits::default();
    let name_limits = NameLimits {
        max_path_bytes: limits.max_path_bytes,
        max_depth: limits.max_depth,
    };
    for child in children {
        let child_rel = rel.join(&child);
        if ignore(&child_rel) {
            continue;
        }
        let shown = ShownName::new(&child_rel.to_string_lossy());
        let Some(name) = child_rel.to_str() else {
            return Err(PackError::BadName {
                path: shown,
                problem: PathProblem::NotUtf8,
            });
        };
        let meta = fs::symlink_metadata(root.join(&child_rel)).map_err(|source| PackError::Io {
            op: "read",
            path: shown.clone(),
            source,
        })?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(PackError::Symlink { path: shown });
        }
        if !kind.is_file() && !kind.is_dir() {
            return Err(PackError::SpecialFile { path: shown });
        }
        let checked = if kind.is_dir() {
            format!("{name}/")
        } else {
            name.to_owned()
        };
        clean_name(&checked, name_limits).map_err(|problem| PackError::BadName {
            path: shown.clone(),
            problem,
        })?;
        let mode = meta.permissions().mode();
        if kind.is_dir() {
            out.push(Entry {
                rel: child_rel.clone(),
                name: checked,
                is_dir: true,
                mode: dir_mode(mode),
                size_bytes: 0,
            });
            walk(root, &child_rel, ignore, out)?;
        } else {
            out.push(Entry {
                rel: child_rel,
                name: checked,
                is_dir: false,
                mode: file_mode(mode),
                size_bytes: meta.len(),
            });
        }
    }
    Ok(())
}

fn write_zip(root: &Path, file: File, entries: &[Entry]) -> Result<PackSummary, PackError> {
    let zip_err = |source| PackError::Zip { source };
    let mut writer = ZipWriter::new(BufWriter::new(file));
    let base = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    let mut summary = PackSummary::default();
    for entry in entries {
        let shown = || ShownName::new(&entry.rel.to_string_lossy());
        if entry.is_dir {
            writer
                .add_directory(
                    entry.name.as_str(),
                    base.compression_method(CompressionMethod::Stored)
                        .unix_permissions(entry.mode),
                )
                .map_err(zip_err)?;
            summary.dir_count += 1;
            continue;
        }
        let mut src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(root.join(&entry.rel))
            .map_err(|source| PackError::Io {
                op: "open",
                path: shown(),
                source,
            })?;
        let options = base
            .unix_permissions(entry.mode)
            .large_file(entry.size_bytes >= u64::from(u32::MAX));
        writer
            .start_file(entry.name.as_str(), options)
            .map_err(zip_err)?;
        let copied = io::copy(&mut src, &mut writer).map_err(|source| PackError::Io {
            op: "read",
            path: shown(),
            source,
        })?;
        summary.file_count += 1;
        summary.total_bytes += copied;
    }
    let inner = writer.finish().map_err(zip_err)?;
    let file = inner.into_inner().map_err(|e| PackError::Io {
        op: "write",
        path: ShownName::new("the zip"),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(|source| PackError::Io {
        op: "write",
        path: ShownName::new("the zip"),
        source,
    })?;
    Ok(summary)
}
