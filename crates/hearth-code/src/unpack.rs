//! Unpacking a build's zip into a build context directory, safely.
//!
//! [`unpack_zip`] owns the whole job: it creates the destination directory
//! itself, checks every entry before it touches the disk, inflates under
//! byte and ratio limits counted on the bytes actually produced, and
//! removes everything it wrote when any entry is refused. It is blocking
//! file I/O: async callers run it on `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive, ZipReadOptions};

use crate::names::{clean_name, dir_mode, file_mode, NameLimits, PathProblem, ShownName};

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFSOCK: u32 = 0o140000;

/// Inflated bytes are read and checked in pieces of this size, so no limit
/// is overshot by more than one piece.
const CHUNK_BYTES: usize = 64 * 1024;

/// What [`unpack_zip`] accepts. The defaults are the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Sum of every entry's inflated bytes (default 1 GiB).
    pub max_total_bytes: u64,
    /// Entries in the archive, directories included (default 20,000).
    pub max_entries: u64,
    /// Bytes in one entry name (default 4096).
    pub max_path_bytes: usize,
    /// Components in one entry name (default 64).
    pub max_depth: usize,
    /// Inflated bytes per compressed byte, for one entry and for the whole
    /// archive (default 100).
    pub max_ratio: u64,
    /// The ratio is only checked once this many bytes have been inflated
    /// (for one entry, or in total) (default 1 MiB).
    pub ratio_floor_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 1 << 30,
            max_entries: 20_000,
            max_path_bytes: 4096,
            max_depth: 64,
            max_ratio: 100,
            ratio_floor_bytes: 1 << 20,
        }
    }
}

/// What an entry of the build context is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
}

/// One file or directory written into the build context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    /// Relative, `/`-separated, normalised (`./a/` is listed as `a`).
    pub path: String,
    pub kind: EntryKind,
    /// Bytes written (0 for a directory).
    pub size_bytes: u64,
    /// Permission bits as written (see the crate docs for the masking).
    pub mode: u32,
}

/// What [`unpack_zip`] wrote: every entry, sorted by path, and totals.
///
/// Directories the archive only implies (`a/` for an entry `a/b`) are
/// listed too, with mode `0o755`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSummary {
    pub entries: Vec<ContextEntry>,
    pub file_count: u64,
    pub dir_count: u64,
    /// Sum of the files' sizes.
    pub total_bytes: u64,
}

/// Why an archive was refused. Safe to show to the caller: it names
/// entries of their own archive and never a directory of the server.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the artifact is not a readable zip archive: {source}")]
    NotAZip {
        #[source]
        source: ZipError,
    },
    #[error("the archive has {count} entries, more than the limit of {max}")]
    TooManyEntries { count: u64, max: u64 },
    #[error("the archive has more than one entry named {entry}")]
    DuplicateEntry { entry: ShownName },
    #[error("the archive has entries whose data overlaps (a zip bomb construction)")]
    OverlappingEntries,
    #[error("entry {entry} is refused: {problem}")]
    UnsafePath {
        entry: ShownName,
        problem: PathProblem,
    },
    #[error("entry {entry} is a symbolic link; a build context cannot contain symbolic links")]
    Symlink { entry: ShownName },
    #[error("entry {entry} is a {kind}; only regular files and directories are allowed")]
    SpecialFile {
        entry: ShownName,
        kind: &'static str,
    },
    #[error("entry {entry} has a name ending in `/` but a regular file's mode")]
    InconsistentKind { entry: ShownName },
    #[error("entry {entry} is a directory but has {size_bytes} bytes of data")]
    DirectoryWithData { entry: ShownName, size_bytes: u64 },
    #[error("entry {entry} conflicts with entry {other}: one is a file, the other needs it to be a directory")]
    Conflict { entry: ShownName, other: ShownName },
    #[error("entry {entry} is a file, but earlier entries are inside it")]
    FileOverDirectory { entry: ShownName },
    #[error("entry {entry} is encrypted; encrypted archives are not supported")]
    Encrypted { entry: ShownName },
    #[error("entry {entry} uses compression method {method}; only stored and deflated entries are supported")]
    UnsupportedCompression { entry: ShownName, method: String },
    #[error("the archive inflates to more than {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    #[error("entry {entry} inflates more than {max_ratio} times its compressed size")]
    EntryRatio { entry: ShownName, max_ratio: u64 },
    #[error("the archive inflates more than {max_ratio} times its size")]
    TotalRatio { max_ratio: u64 },
    #[error("entry {entry}: its data does not match its header ({source})")]
    EntryCorrupt {
        entry: ShownName,
        #[source]
        source: io::Error,
    },
    #[error("entry {entry} could not be read: {source}")]
    EntryUnreadable {
        entry: ShownName,
        #[source]
        source: ZipError,
    },
    #[error("the build context directory already exists")]
    DestinationExists,
    /// A file-system operation on the server failed (not the archive's
    /// fault). The message names the operation, not the path.
    #[error("could not {op} while unpacking the build context: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Io { op, source }
}

/// Removes the destination directory unless disarmed (on success).
struct RemoveDirOnDrop<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for RemoveDirOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            // remove_dir_all does not follow symbolic links; we never make any.
            let _ = fs::remove_dir_all(self.dir);
        }
    }
}

/// Unpack `zip` into `dest_dir`, which must not exist yet (its parent must).
///
/// `dest_dir` is created with mode `0o700`; every file in it is created
/// new (`O_EXCL | O_NOFOLLOW`) below directories this call created. On any
/// error, `dest_dir` and everything in it is removed (unless it already
/// existed: then nothing is touched and [`UnpackError::DestinationExists`]
/// is returned).
pub fn unpack_zip(
    zip: &Path,
    dest_dir: &Path,
    limits: &UnpackLimits,
) -> Result<ContextSummary, UnpackError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dest_dir)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => UnpackError::DestinationExists,
            _ => UnpackError::Io {
                op: "create the build context directory",
                source: e,
            },
        })?;
    let mut guard = RemoveDirOnDrop {
        dir: dest_dir,
        armed: true,
    };
    let summary = unpack_into(zip, dest_dir, limits)?;
    guard.armed = false;
    Ok(summary)
}

/// What the unpacker knows about a path it has written.
#[derive(Debug, Clone)]
struct Node {
    kind: EntryKind,
    size_bytes: u64,
    mode: u32,
    /// Named by an entry of its own (not only implied by a deeper one).
    explicit: bool,
}

fn unpack_into(
    zip_path: &Path,
    dest_dir: &Path,
    limits: &UnpackLimits,
) -> Result<ContextSummary, UnpackError> {
    let mut file = File::open(zip_path).map_err(io_err("open the archive"))?;
    let archive_bytes = file
        .metadata()
        .map_err(io_err("read the archive's size"))?
        .len();

    // The zip reader parses the whole central directory into memory: check
    // the entry count the end records declare before letting it.
    let declared = declared_entry_count(&mut file).map_err(io_err("read the archive"))?;
    if declared > limits.max_entries {
        return Err(UnpackError::TooManyEntries {
            count: declared,
            max: limits.max_entries,
        });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read the archive"))?;
    let mut archive =
        ZipArchive::new(BufReader::new(file)).map_err(|source| UnpackError::NotAZip { source })?;
    let count = archive.len() as u64;
    if count > limits.max_entries {
        return Err(UnpackError::TooManyEntries {
            count,
            max: limits.max_entries,
        });
    }
    if archive.has_duplicate_names() {
        let entry = File::open(zip_path)
            .ok()
            .and_then(|f| {
                first_duplicate_name(&mut BufReader::new(f), archive.central_directory_start())
            })
            .map(|name| ShownName::new(&String::from_utf8_lossy(&name)))
            .unwrap_or_else(|| ShownName::new("?"));
        return Err(UnpackError::DuplicateEntry { entry });
    }
    if archive
        .has_overlapping_entries()
        .map_err(|source| UnpackError::NotAZip { source })?
    {
        return Err(UnpackError::OverlappingEntries);
    }

    let name_limits = NameLimits {
        max_path_bytes: limits.max_path_bytes,
        max_depth: limits.max_depth,
    };
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    let mut total_bytes: u64 = 0;
    let mut buf = vec![0u8; CHUNK_BYTES];

    for index in 0..archive.len() {
        let plan = plan_entry(&archive, index, name_limits, archive_bytes, &tree)?;
        let Some(plan) = plan else { continue };
        make_parents(dest_dir, &plan.path, &mut tree)?;
        let target = dest_dir.join(&plan.path);
        // Defence in depth: a clean name cannot leave dest_dir.
        if !target.starts_with(dest_dir) {
            return Err(UnpackError::UnsafePath {
                entry: plan.shown,
                problem: PathProblem::ParentComponent,
            });
        }
        match plan.kind {
            EntryKind::Dir => {
                let mode = dir_mode(plan.mode.unwrap_or(0o755));
                match tree.get_mut(&plan.path) {
                    Some(node) => {
                        // Implied earlier by a deeper entry: now it has a mode.
                        node.explicit = true;
                        node.mode = mode;
                    }
                    None => {
                        make_dir(&target)?;
                        tree.insert(
                            plan.path.clone(),
                            Node {
                                kind: EntryKind::Dir,
                                size_bytes: 0,
                                mode,
                                explicit: true,
                            },
                        );
                    }
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err("set a directory's mode"))?;
            }
            EntryKind::File => {
                let mode = file_mode(plan.mode.unwrap_or(0o644));
                let reader = archive
                    .by_index_with_options(
                        index,
                        ZipReadOptions::new().enforce_header_consistency(true),
                    )
                    .map_err(|source| UnpackError::EntryUnreadable {
                        entry: plan.shown.clone(),
                        source,
                    })?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&target)
                    .map_err(io_err("create a file"))?;
                let written = inflate_entry(
                    reader,
                    &mut out,
                    &mut buf,
                    &plan,
                    limits,
                    archive_bytes,
                    &mut total_bytes,
                )?;
                out.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err("set a file's mode"))?;
                tree.insert(
                    plan.path.clone(),
                    Node {
                        kind: EntryKind::File,
                        size_bytes: written,
                        mode,
                        explicit: true,
                    },
                );
            }
        }
    }

    let mut summary = ContextSummary::default();
    for (path, node) in tree {
        match node.kind {
            EntryKind::File => {
                summary.file_count += 1;
                summary.total_bytes += node.size_bytes;
            }
            EntryKind::Dir => summary.dir_count += 1,
        }
        summary.entries.push(ContextEntry {
            path,
            kind: node.kind,
            size_bytes: node.size_bytes,
            mode: node.mode,
        });
    }
    Ok(summary)
}

/// One entry, checked, before anything is written for it.
struct EntryPlan {
    path: String,
    shown: ShownName,
    kind: EntryKind,
    /// Permission bits from the archive, if it has any.
    mode: Option<u32>,
    /// The compressed size, capped at the archive's size (a header can lie).
    compressed_bytes: u64,
}

/// Check entry `index` against every rule that needs no data; `None` for an
/// entry naming the destination itself (`./`).
fn plan_entry<R: Read + Seek>(
    archive: &ZipArchive<R>,
    index: usize,
    name_limits: NameLimits,
    archive_bytes: u64,
    tree: &BTreeMap<String, Node>,
) -> Result<Option<EntryPlan>, UnpackError> {
    let entry = archive
        .by_index_data(index)
        .map_err(|source| UnpackError::NotAZip { source })?;
    let raw_shown = ShownName::new(&String::from_utf8_lossy(entry.name_raw()));
    let name = entry.name().map_err(|_| UnpackError::UnsafePath {
        entry: raw_shown.clone(),
        problem: PathProblem::NotUtf8,
    })?;
    let shown = ShownName::new(&name);
    let clean = clean_name(&name, name_limits).map_err(|problem| UnpackError::UnsafePath {
        entry: shown.clone(),
        problem,
    })?;

    if entry.encrypted() {
        return Err(UnpackError::Encrypted { entry: shown });
    }
    // The file type is read from the Unix mode bits whatever system the
    // archive claims: other unzip tools honour them, so must we.
    let unix = entry.external_attributes() >> 16;
    let file_type = unix & S_IFMT;
    let special = match file_type {
        0 | S_IFREG | S_IFDIR => None,
        S_IFLNK => return Err(UnpackError::Symlink { entry: shown }),
        S_IFIFO => Some("named pipe"),
        S_IFCHR => Some("character device"),
        S_IFBLK => Some("block device"),
        S_IFSOCK => Some("socket"),
        _ => Some("file of an unknown type"),
    };
    if let Some(kind) = special {
        return Err(UnpackError::SpecialFile { entry: shown, kind });
    }
    let kind = if clean.trailing_slash || file_type == S_IFDIR {
        if file_type == S_IFREG {
            return Err(UnpackError::InconsistentKind { entry: shown });
        }
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    match entry.compression() {
        CompressionMethod::Stored | CompressionMethod::Deflated => {}
        other => {
            return Err(UnpackError::UnsupportedCompression {
                entry: shown,
                method: format!("{other:?}"),
            })
        }
    }
    if kind == EntryKind::Dir && (entry.size() != 0 || entry.compressed_size() > 2) {
        // An empty deflate stream is 2 bytes; anything more is data.
        return Err(UnpackError::DirectoryWithData {
            entry: shown,
            size_bytes: entry.size().max(entry.compressed_size()),
        });
    }
    if clean.path.is_empty() {
        if kind == EntryKind::File {
            return Err(UnpackError::UnsafePath {
                entry: shown,
                problem: PathProblem::Empty,
            });
        }
        return Ok(None);
    }
    // Same path twice after normalising (`a` and `./a`), or a file where a
    // directory is needed.
    if let Some(node) = tree.get(&clean.path) {
        if node.explicit {
            return Err(UnpackError::DuplicateEntry { entry: shown });
        }
        if kind == EntryKind::File {
            return Err(UnpackError::FileOverDirectory { entry: shown });
        }
    }
    for (at, _) in clean.path.match_indices('/') {
        let parent = &clean.path[..at];
        if let Some(node) = tree.get(parent) {
            if node.kind == EntryKind::File {
                return Err(UnpackError::Conflict {
                    entry: shown,
                    other: ShownName::new(parent),
                });
            }
        }
    }
    let mode = (unix != 0).then_some(unix & 0o7777);
    Ok(Some(EntryPlan {
        path: clean.path,
        shown,
        kind,
        mode,
        compressed_bytes: entry.compressed_size().min(archive_bytes),
    }))
}

fn make_dir(path: &Path) -> Result<(), UnpackError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_err("create a directory"))
}

/// Create the directories `path` needs that do not exist yet (mode
/// `0o755`), recording them as implied.
fn make_parents(
    dest_dir: &Path,
    path: &str,
    tree: &mut BTreeMap<String, Node>,
) -> Result<(), UnpackError> {
    for (at, _) in path.match_indices('/') {
        let parent = &path[..at];
        if tree.contains_key(parent) {
            continue;
        }
        let dir = dest_dir.join(parent);
        make_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err("set a directory's mode"))?;
        tree.insert(
            parent.to_owned(),
            Node {
                kind: EntryKind::Dir,
                size_bytes: 0,
                mode: 0o755,
                explicit: false,
            },
        );
    }
    Ok(())
}

/// Copy one entry's inflated bytes into `out`, counting what is actually
/// produced and stopping at the first limit passed.
fn inflate_entry(
    mut reader: impl Read,
    out: &mut File,
    buf: &mut [u8],
    plan: &EntryPlan,
    limits: &UnpackLimits,
    archive_bytes: u64,
    total_bytes: &mut u64,
) -> Result<u64, UnpackError> {
    let mut written: u64 = 0;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(UnpackError::EntryCorrupt {
                    entry: plan.shown.clone(),
                    source,
                })
            }
        };
        written += n as u64;
        *total_bytes += n as u64;
        if *total_bytes > limits.max_total_bytes {
            return Err(UnpackError::TooLarge {
                max_bytes: limits.max_total_bytes,
            });
        }
        if written > limits.ratio_floor_bytes
            && written
                > plan
                    .compressed_bytes
                    .max(1)
                    .saturating_mul(limits.max_ratio)
        {
            return Err(UnpackError::EntryRatio {
                entry: plan.shown.clone(),
                max_ratio: limits.max_ratio,
            });
        }
        // Many small entries, each under the floor, can still add up.
        if *total_bytes > limits.ratio_floor_bytes
            && *total_bytes > archive_bytes.max(1).saturating_mul(limits.max_ratio)
        {
            return Err(UnpackError::TotalRatio {
                max_ratio: limits.max_ratio,
            });
        }
        out.write_all(&buf[..n]).map_err(io_err("write a file"))?;
    }
    Ok(written)
}

const EOCD_SIG: [u8; 4] = *b"PK\x05\x06";
const EOCD64_LOCATOR_SIG: [u8; 4] = *b"PK\x06\x07";
const EOCD64_SIG: [u8; 4] = *b"PK\x06\x06";
const CDFH_SIG: [u8; 4] = *b"PK\x01\x02";
const EOCD_BYTES: usize = 22;

/// The largest entry count any end-of-central-directory record in the
/// archive's tail declares (zip64 records included), or 0 if none.
///
/// Every candidate record counts, not just the one a reader will settle on:
/// a stray signature can only make this larger, never hide a real count.
fn declared_entry_count(file: &mut File) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    let tail_len = len.min((EOCD_BYTES + 0xFFFF) as u64);
    let tail_start = len - tail_len;
    file.seek(SeekFrom::Start(tail_start))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    let mut max = 0u64;
    for pos in (0..tail.len().saturating_sub(EOCD_BYTES - 1)).rev() {
        if tail[pos..pos + 4] != EOCD_SIG {
            continue;
        }
        let record = &tail[pos..pos + EOCD_BYTES];
        let on_disk = u64::from(u16::from_le_bytes([record[8], record[9]]));
        let total = u64::from(u16::from_le_bytes([record[10], record[11]]));
        max = max.max(on_disk).max(total);
        if on_disk == 0xFFFF || total == 0xFFFF {
            max = max.max(zip64_entry_count(file, tail_start + pos as u64)?);
        }
    }
    Ok(max)
}

/// The entry count of the zip64 end record a locator just before the
/// end record at `eocd_offset` points to (0 if there is none).
fn zip64_entry_count(file: &mut File, eocd_offset: u64) -> io::Result<u64> {
    let Some(locator_offset) = eocd_offset.checked_sub(20) else {
        return Ok(0);
    };
    let mut locator = [0u8; 20];
    file.seek(SeekFrom::Start(locator_offset))?;
    file.read_exact(&mut locator)?;
    if locator[..4] != EOCD64_LOCATOR_SIG {
        return Ok(0);
    }
    let record_offset = u64::from_le_bytes(locator[8..16].try_into().expect("8 bytes"));
    let mut record = [0u8; 40];
    file.seek(SeekFrom::Start(record_offset))?;
    match file.read_exact(&mut record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
        Err(e) => return Err(e),
    }
    if record[..4] != EOCD64_SIG {
        return Ok(0);
    }
    let on_disk = u64::from_le_bytes(record[24..32].try_into().expect("8 bytes"));
    let total = u64::from_le_bytes(record[32..40].try_into().expect("8 bytes"));
    Ok(on_disk.max(total))
}

/// Walk the central directory from `start` and return the first name seen
/// twice (the zip reader keeps only one entry per name, so it cannot say).
fn first_duplicate_name<R: Read + Seek>(reader: &mut R, start: u64) -> Option<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    reader.seek(SeekFrom::Start(start)).ok()?;
    loop {
        let mut header = [0u8; 46];
        reader.read_exact(&mut header).ok()?;
        if header[..4] != CDFH_SIG {
            return None;
        }
        let name_len = usize::from(u16::from_le_bytes([header[28], header[29]]));
        let extra_len = i64::from(u16::from_le_bytes([header[30], header[31]]));
        let comment_len = i64::from(u16::from_le_bytes([header[32], header[33]]));
        let mut name = vec![0u8; name_len];
        reader.read_exact(&mut name).ok()?;
        reader
            .seek(SeekFrom::Current(extra_len + comment_len))
            .ok()?;
        if !seen.insert(name.clone()) {
            return Some(name);
        }
    }
}
