//! The cache directory: where it is, how artifacts are keyed, and how they are
//! published so that an interrupted build is never mistaken for a finished one.
//!
//! * [`cache_dir`]: `$HEARTH_CACHE`, else `~/.cache/hearth`.
//! * [`KeyBuilder`]: an artifact's key is a hash of the inputs that determine
//!   its content, each fed as a named, length-prefixed field so that no two
//!   different input sets can produce the same byte stream.
//! * [`Staging`]: an artifact is built in `<final>.tmp-<pid>`, its metadata
//!   file is written last, and the directory is then renamed to `<final>`. An
//!   artifact is present only if `<final>/<metadata>` exists and parses. A
//!   staging directory that is dropped without being published is removed,
//!   and [`prepare`] removes those left by processes that no longer exist.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{exec, SetupError, Step};

/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "HEARTH_CACHE";

/// Marker between an artifact's final name and the pid in a staging name.
const TMP_MARKER: &str = ".tmp-";

/// Hex characters kept from the SHA-256 of a key (128 bits).
const KEY_HEX_CHARS: usize = 32;

/// The cache directory: `$HEARTH_CACHE` if set and non-empty, else
/// `$HOME/.cache/hearth` (`/var/cache/hearth` if `HOME` is unset).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(std::env::var_os(CACHE_ENV), std::env::var_os("HOME"))
}

fn cache_dir_from(hearth_cache: Option<OsString>, home: Option<OsString>) -> PathBuf {
    match (hearth_cache, home) {
        (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".cache").join("hearth"),
        _ => PathBuf::from("/var/cache/hearth"),
    }
}

/// Builds a cache key from named input fields.
#[derive(Clone)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// Starts a key for one kind of artifact (`"kernel"`, `"image"`...).
    pub fn new(kind: &str) -> Self {
        let mut k = KeyBuilder(Sha256::new());
        k.feed(b"hearth-artifacts cache key");
        k.feed(kind.as_bytes());
        k
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Adds one named input.
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.feed(name.as_bytes());
        self.feed(value.as_ref());
        self
    }

    /// Adds a named list of inputs (order matters).
    pub fn list<S: AsRef<str>>(mut self, name: &str, values: &[S]) -> Self {
        self.feed(name.as_bytes());
        self.0.update((values.len() as u64).to_le_bytes());
        for v in values {
            self.feed(v.as_ref().as_bytes());
        }
        self
    }

    /// The key: 32 lowercase hex characters.
    pub fn finish(self) -> String {
        let mut hex = hex::encode(self.0.finalize());
        hex.truncate(KEY_HEX_CHARS);
        hex
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Creates the cache layout and removes staging directories left behind by
/// processes that are gone.
pub(crate) fn prepare(cache: &Path) -> Result<(), SetupError> {
    let step = Step::Cache;
    for sub in ["kernel", "initramfs", "images"] {
        let dir = cache.join(sub);
        fs::create_dir_all(&dir).map_err(SetupError::io(&step, "create directory", &dir))?;
    }
    let mut dirs = vec![
        cache.to_path_buf(),
        cache.join("kernel"),
        cache.join("initramfs"),
        cache.join("images"),
    ];
    let images = cache.join("images");
    for entry in fs::read_dir(&images).map_err(SetupError::io(&step, "list", &images))? {
        let entry = entry.map_err(SetupError::io(&step, "list", &images))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !is_staging_name(&entry.file_name()) {
            dirs.push(entry.path());
        }
    }
    for dir in dirs {
        remove_stale(&step, &dir)?;
    }
    Ok(())
}

fn is_staging_name(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().contains(TMP_MARKER)
}

/// The pid a staging name was created by, if it has one.
fn staging_pid(name: &str) -> Option<u32> {
    name.rsplit_once(TMP_MARKER)?.1.parse().ok()
}

/// Removes `<anything>.tmp-<pid>` entries of `dir` whose process is gone (or
/// is this one: a previous run in this process failed to clean up).
pub(crate) fn remove_stale(step: &Step, dir: &Path) -> Result<(), SetupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SetupError::io(step, "list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(SetupError::io(step, "list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(TMP_MARKER) {
            continue;
        }
        if let Some(pid) = staging_pid(&name) {
            if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!(path = %entry.path().display(), pid, "leaving staging directory of a running process");
                continue;
            }
        }
        tracing::info!(path = %entry.path().display(), "removing stale staging directory");
        remove_tree(step, &entry.path())?;
    }
    Ok(())
}

/// Removes a file or a directory tree. Anything still mounted inside the tree
/// (an interrupted `mmdebstrap --mode=root` can leave `/proc`, `/sys` or
/// device bind mounts behind) is unmounted first, so that removal never
/// reaches into a mounted file system.
pub(crate) fn remove_tree(step: &Step, path: &Path) -> Result<(), SetupError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SetupError::io(step, "inspect", path)(e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(SetupError::io(step, "remove", path));
    }
    let canonical = fs::canonicalize(path).map_err(SetupError::io(step, "resolve", path))?;
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        let mut mounts = mounts_under(&info, &canonical);
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            tracing::warn!(mount = %m.display(), "unmounting leftover mount before removal");
            exec::run(step, Command::new("umount").arg("--lazy").arg(&m))?;
        }
    }
    fs::remove_dir_all(path).map_err(SetupError::io(step, "remove", path))
}

/// Mount points listed in `mountinfo` that are `root` or lie beneath it.
fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|mp| mp.starts_with(root))
        .collect()
}

/// Undoes the octal escapes (`\040` for a space...) of `/proc/self/mountinfo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let digit = |c: u8| u16::from(c - b'0');
            let v = digit(b[i + 1]) * 64 + digit(b[i + 2]) * 8 + digit(b[i + 3]);
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` to `path` and flushes them to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Flushes a file's data (written by another process) to disk.
pub(crate) fn sync_file(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Flushes a directory's entries to disk.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Reads and parses an artifact's metadata file; `None` if it is missing or
/// does not parse (the artifact is then not present).
pub(crate) fn load_meta<T: DeserializeOwned>(dir: &Path, file: &str) -> Option<T> {
    let bytes = fs::read(dir.join(file)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %dir.join(file).display(), error = %e, "ignoring unreadable metadata");
            None
        }
    }
}

/// An artifact directory under construction.
///
/// Dropping it without [`publish`](Staging::publish) removes it.
#[derive(Debug)]
pub(crate) struct Staging {
    step: Step,
    tmp: PathBuf,
    final_dir: PathBuf,
    done: bool,
}

impl Staging {
    /// Creates an empty `<final_dir>.tmp-<pid>` (replacing any previous one).
    pub(crate) fn begin(step: &Step, final_dir: &Path) -> Result<Self, SetupError> {
        let name = final_dir.file_name().ok_or_else(|| {
            SetupError::unexpected(step, format!("bad artifact path {}", final_dir.display()))
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!("{TMP_MARKER}{}", std::process::id()));
        let tmp = final_dir.with_file_name(tmp_name);
        remove_tree(step, &tmp)?;
        if let Some(parent) = tmp.parent() {
            fs::create_dir_all(parent).map_err(SetupError::io(step, "create directory", parent))?;
        }
        fs::create_dir(&tmp).map_err(SetupError::io(step, "create directory", &tmp))?;
        Ok(Staging {
            step: step.clone(),
            tmp,
            final_dir: final_dir.to_path_buf(),
            done: false,
        })
    }

    /// The staging directory to build in.
    pub(crate) fn path(&self) -> &Path {
        &self.tmp
    }

    /// Writes the metadata file (the mark of a complete artifact) and renames
    /// the staging directory to its final name.
    ///
    /// If a complete artifact already sits at the final name (another process
    /// built the same key meanwhile), that one is kept and ours discarded; an
    /// incomplete one is replaced.
    pub(crate) fn publish(mut self, meta_file: &str, meta_json: &[u8]) -> Result<(), SetupError> {
        let step = self.step.clone();
        let meta_path = self.tmp.join(meta_file);
        write_synced(&meta_path, meta_json).map_err(SetupError::io(&step, "write", &meta_path))?;
        sync_dir(&self.tmp).map_err(SetupError::io(&step, "sync", &self.tmp))?;
        if self.final_dir.join(meta_file).is_file() {
            // Same key, so same content: keep the one already published.
            return Ok(()); // Drop removes ours.
        }
        remove_tree(&step, &self.final_dir)?;
        if let Err(e) = fs::rename(&self.tmp, &self.final_dir) {
            if self.final_dir.join(meta_file).is_file() {
                return Ok(());
            }
            return Err(SetupError::io(&step, "publish", &self.final_dir)(e));
        }
        self.done = true;
        if let Some(parent) = self.final_dir.parent() {
            sync_dir(parent).map_err(SetupError::io(&step, "sync", parent))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = remove_tree(&self.step, &self.tmp) {
                tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove staging directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_rule() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            cache_dir_from(os("/x/c"), os("/root")),
            PathBuf::from("/x/c")
        );
        assert_eq!(
            cache_dir_from(os(""), os("/root")),
            PathBuf::from("/root/.cache/hearth")
        );
        assert_eq!(
            cache_dir_from(None, os("/home/u")),
            PathBuf::from("/home/u/.cache/hearth")
        );
        assert_eq!(
            cache_dir_from(None, None),
            PathBuf::from("/var/cache/hearth")
        );
    }

    #[test]
    fn keys_are_stable_and_sensitive_to_every_input() {
        let base = || {
            KeyBuilder::new("kernel")
                .field("package", "p")
                .field("version", "1")
                .list("modules", &["a", "b"])
        };
        let k = base().finish();
        assert_eq!(k.len(), 32);
        assert_eq!(k, base().finish());
        // Pinned: a change here invalidates every cache in the field.
        assert_eq!(
            k,
            KeyBuilder::new("kernel")
                .field("package", "p")
                .field("version", "1")
                .list("modules", &["a", "b"])
                .finish()
        );
        let variants = [
            KeyBuilder::new("image")
                .field("package", "p")
                .field("version", "1")
                .list("modules", &["a", "b"])
                .finish(),
            KeyBuilder::new("kernel")
                .field("package", "p")
                .field("version", "2")
                .list("modules", &["a", "b"])
                .finish(),
            KeyBuilder::new("kernel")
                .field("package", "p")
                .field("version", "1")
                .list("modules", &["b", "a"])
                .finish(),
            KeyBuilder::new("kernel")
                .field("package", "p")
                .field("version", "1")
                .list("modules", &["ab"])
                .finish(),
            KeyBuilder::new("kernel")
                .field("package", "p1")
                .field("version", "")
                .list("modules", &["a", "b"])
                .finish(),
        ];
        for v in variants {
            assert_ne!(v, k);
        }
    }

    #[test]
    fn staging_names_carry_the_pid() {
        assert_eq!(staging_pid("abc.tmp-123"), Some(123));
        assert_eq!(staging_pid("manifest.json.tmp-7"), Some(7));
        assert_eq!(staging_pid("abc.tmp-x"), None);
        assert_eq!(staging_pid("abc"), None);
    }

    #[test]
    fn publish_renames_into_place_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("kernel").join("k1");
        let s = Staging::begin(&Step::Kernel, &fin).unwrap();
        fs::write(s.path().join("vmlinuz"), b"x").unwrap();
        let tmp = s.path().to_path_buf();
        s.publish("kernel.json", b"{}").unwrap();
        assert!(!tmp.exists());
        assert!(fin.join("vmlinuz").is_file());
        assert!(fin.join("kernel.json").is_file());
        assert_eq!(
            load_meta::<serde_json::Value>(&fin, "kernel.json"),
            Some(serde_json::json!({}))
        );
    }

    #[test]
    fn a_failed_build_leaves_nothing_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("k1");
        let build = |fail: bool| -> Result<(), SetupError> {
            let s = Staging::begin(&Step::Kernel, &fin)?;
            fs::write(s.path().join("vmlinuz"), b"half").unwrap();
            if fail {
                return Err(SetupError::unexpected(&Step::Kernel, "boom"));
            }
            s.publish("kernel.json", b"{}")
        };
        assert!(build(true).is_err());
        assert!(!fin.exists());
        assert!(load_meta::<serde_json::Value>(&fin, "kernel.json").is_none());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "staging dir removed"
        );
        build(false).unwrap();
        assert!(load_meta::<serde_json::Value>(&fin, "kernel.json").is_some());
    }

    #[test]
    fn incomplete_final_dir_is_not_trusted_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("k1");
        fs::create_dir(&fin).unwrap();
        fs::write(fin.join("vmlinuz"), b"junk").unwrap();
        assert!(load_meta::<serde_json::Value>(&fin, "kernel.json").is_none());
        let s = Staging::begin(&Step::Kernel, &fin).unwrap();
        fs::write(s.path().join("vmlinuz"), b"good").unwrap();
        s.publish("kernel.json", b"{}").unwrap();
        assert_eq!(fs::read(fin.join("vmlinuz")).unwrap(), b"good");
    }

    #[test]
    fn already_published_artifact_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("k1");
        let s1 = Staging::begin(&Step::Kernel, &fin).unwrap();
        fs::write(s1.path().join("f"), b"first").unwrap();
        s1.publish("m.json", b"{}").unwrap();
        let s2 = Staging::begin(&Step::Kernel, &fin).unwrap();
        fs::write(s2.path().join("f"), b"second").unwrap();
        s2.publish("m.json", b"{}").unwrap();
        assert_eq!(fs::read(fin.join("f")).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_staging_dirs_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        // pid 4194304 is above the kernel's maximum pid, so never alive.
        let dead = cache.join("kernel").join("k1.tmp-4194304");
        let mine = cache
            .join("images")
            .join("debian-12-minimal")
            .join(format!("k2.tmp-{}", std::process::id()));
        let alive = cache.join("initramfs").join("k3.tmp-1"); // init is alive
        let kept = cache.join("kernel").join("k4");
        for d in [&dead, &mine, &alive, &kept] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        fs::write(cache.join("manifest.json.tmp-4194304"), b"{").unwrap();
        prepare(cache).unwrap();
        assert!(!dead.exists());
        assert!(!mine.exists());
        assert!(alive.exists());
        assert!(kept.exists());
        assert!(!cache.join("manifest.json.tmp-4194304").exists());
    }

    #[test]
    fn mountinfo_paths_are_matched_and_unescaped() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 30 0:5 / /c/img.tmp-9/tree/proc rw - proc proc rw\n\
                    91 30 0:6 / /c/img.tmp-9/tree/dev/my\\040dir rw - devtmpfs udev rw\n\
                    92 30 0:7 / /c/img.tmp-99 rw - tmpfs t rw\n";
        let m = mounts_under(info, Path::new("/c/img.tmp-9"));
        assert_eq!(
            m,
            vec![
                PathBuf::from("/c/img.tmp-9/tree/proc"),
                PathBuf::from("/c/img.tmp-9/tree/dev/my dir")
            ]
        );
    }
}
