//! The guest kernel: Debian's `linux-image-cloud-amd64`, downloaded with
//! `apt-get download` and unpacked with `dpkg-deb -x` into the cache (never
//! installed on the host), and the modules Hearth's initramfs loads.
//!
//! The package ships no `modules.dep`, so dependencies are read from each
//! module's `.modinfo` section (`name=` and `depends=` strings) and resolved
//! into a load order, dependencies first: for the guest modules that is
//! `virtio_ring, virtio, virtio_mmio, virtio_blk, ...`.
//!
//! Stored as `<cache>/kernel/<key>/{vmlinuz, modules/<name>.ko, kernel.json}`,
//! keyed by (package, version, module list, recipe version).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cache::{self, KeyBuilder, Staging};
use crate::host;
use crate::manifest::KernelArtifact;
use crate::{exec, Progress, Reporter, SetupError, Step};

/// The Debian meta-package that tracks the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the initramfs loads (by module name), before their dependencies
/// are added.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_rng",
    "virtio_net",
    "overlay",
];

/// Bumped whenever the way the kernel artifact is produced changes.
const RECIPE_VERSION: u32 = 1;

/// Metadata file of a kernel artifact.
pub const META_FILE: &str = "kernel.json";

/// Contents of `kernel.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMeta {
    pub key: String,
    /// Kernel release (`uname -r`), e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// The versioned package, e.g. `linux-image-6.1.0-57-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.192-3`.
    pub version: String,
    /// Module names in load order (dependencies first); each is
    /// `modules/<name>.ko`.
    pub load_order: Vec<String>,
    pub recipe_version: u32,
}

/// A kernel artifact ready for use.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    pub artifact: KernelArtifact,
    pub dir: PathBuf,
    pub load_order: Vec<String>,
}

impl Kernel {
    /// Path of a module's `.ko` file.
    pub(crate) fn module_path(&self, name: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{name}.ko"))
    }

    fn from_meta(dir: PathBuf, meta: KernelMeta) -> Self {
        Kernel {
            artifact: KernelArtifact {
                path: dir.join("vmlinuz"),
                release: meta.release,
                package: meta.package,
                package_version: meta.version,
                key: meta.key,
            },
            dir,
            load_order: meta.load_order,
        }
    }
}

/// Why the guest modules could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {module} not found in the kernel package{}", needed_by.as_ref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    NotFound {
        module: String,
        needed_by: Option<String>,
    },
    #[error("module dependency cycle: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
    #[error("{} declares module name {found:?}, expected {expected:?}", path.display())]
    NameMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot decompress {} with `{command}` (install the tool or use uncompressed modules): {detail}", path.display())]
    Decompress {
        path: PathBuf,
        command: String,
        detail: String,
    },
}

/// Module name as the kernel knows it: `-` becomes `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The `name=` and `depends=` fields of a module's `.modinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: Option<String>,
    /// Normalised names of the modules this one depends on.
    pub depends: Vec<String>,
}

/// Reads `name=` and `depends=` from a module's bytes: from its `.modinfo`
/// section if it parses as ELF, else from NUL-separated strings anywhere in
/// the bytes. The first occurrence of each field wins.
pub fn parse_modinfo(module: &[u8]) -> ModInfo {
    let data = crate::elf::section(module, ".modinfo").unwrap_or(module);
    let mut info = ModInfo::default();
    let mut seen_depends = false;
    for s in data.split(|&b| b == 0) {
        if let Some(v) = s.strip_prefix(b"depends=") {
            if !seen_depends {
                seen_depends = true;
                info.depends = String::from_utf8_lossy(v)
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(normalize)
                    .collect();
            }
        } else if let Some(v) = s.strip_prefix(b"name=") {
            if info.name.is_none() {
                info.name = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    info
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

/// `virtio-rng.ko.xz` -> (`virtio_rng`, Xz).
fn module_file_name(file_name: &str) -> Option<(String, Compression)> {
    let (stem, c) = if let Some(s) = file_name.strip_suffix(".ko") {
        (s, Compression::None)
    } else if let Some(s) = file_name.strip_suffix(".ko.xz") {
        (s, Compression::Xz)
    } else if let Some(s) = file_name.strip_suffix(".ko.zst") {
        (s, Compression::Zstd)
    } else if let Some(s) = file_name.strip_suffix(".ko.gz") {
        (s, Compression::Gzip)
    } else {
        return None;
    };
    (!stem.is_empty()).then(|| (normalize(stem), c))
}

/// Reads a module file, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` with the
/// `xz`/`zstd`/`gzip` tools.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tool = match module_file_name(&file_name).map(|(_, c)| c) {
        Some(Compression::Xz) => "xz",
        Some(Compression::Zstd) => "zstd",
        Some(Compression::Gzip) => "gzip",
        Some(Compression::None) | None => {
            return fs::read(path).map_err(|source| ModuleError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut cmd = Command::new(tool);
    cmd.args(["-d", "-c", "--"]).arg(path);
    let command = exec::command_line(&cmd);
    let decompress = |detail: String| ModuleError::Decompress {
        path: path.to_path_buf(),
        command: command.clone(),
        detail,
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| decompress(e.to_string()))?;
    if !out.status.success() {
        return Err(decompress(exec::tail_of(&String::from_utf8_lossy(
            &out.stderr,
        ))));
    }
    Ok(out.stdout)
}

/// Every module file of an unpacked kernel, by module name.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Indexes `<release_dir>/kernel/**.ko*` and reads
    /// `<release_dir>/modules.builtin` (modules compiled into the kernel,
    /// which need no loading) if present.
    pub fn scan(release_dir: &Path) -> Result<Self, ModuleError> {
        let mut index = ModuleIndex::default();
        let mut pending = vec![release_dir.join("kernel")];
        while let Some(dir) = pending.pop() {
            let io_err = |source| ModuleError::Io {
                path: dir.clone(),
                source,
            };
            let mut entries: Vec<fs::DirEntry> = fs::read_dir(&dir)
                .map_err(io_err)?
                .collect::<Result<_, _>>()
                .map_err(io_err)?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let ft = e.file_type().map_err(io_err)?;
                if ft.is_dir() {
                    pending.push(e.path());
                } else if ft.is_file() {
                    if let Some((name, _)) = module_file_name(&e.file_name().to_string_lossy()) {
                        if let Some(prev) = index.modules.get(&name) {
                            tracing::warn!(module = %name, kept = %prev.display(), ignored = %e.path().display(), "duplicate module");
                        } else {
                            index.modules.insert(name, e.path());
                        }
                    }
                }
            }
        }
        let builtin_file = release_dir.join("modules.builtin");
        match fs::read_to_string(&builtin_file) {
            Ok(text) => {
                for line in text.lines() {
                    let file = line.rsplit('/').next().unwrap_or(line);
                    if let Some((name, _)) = module_file_name(file.trim()) {
                        index.builtin.insert(name);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ModuleError::Io {
                    path: builtin_file,
                    source,
                })
            }
        }
        Ok(index)
    }

    /// The file of a module, by (normalised) name.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.modules.get(&normalize(name)).map(PathBuf::as_path)
    }

    /// Number of module files indexed.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether no module file was found.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// A module in load order, with its (decompressed) contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// The modules `wanted` and everything they depend on, dependencies first.
/// Modules built into the kernel are left out. The order is deterministic:
/// depth-first, in the order of `wanted` and of each `depends=` list.
pub fn resolve_load_order(
    index: &ModuleIndex,
    wanted: &[&str],
) -> Result<Vec<ResolvedModule>, ModuleError> {
    let mut marks = BTreeMap::new();
    let mut stack = Vec::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(index, &normalize(w), None, &mut marks, &mut stack, &mut out)?;
    }
    Ok(out)
}

fn visit(
    index: &ModuleIndex,
    name: &str,
    needed_by: Option<&str>,
    marks: &mut BTreeMap<String, Mark>,
    stack: &mut Vec<String>,
    out: &mut Vec<ResolvedModule>,
) -> Result<(), ModuleError> {
    match marks.get(name) {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::Visiting) => {
            let start = stack.iter().position(|s| s == name).unwrap_or(0);
            let mut chain = stack[start..].to_vec();
            chain.push(name.to_string());
            return Err(ModuleError::Cycle { chain });
        }
        None => {}
    }
    let Some(path) = index.modules.get(name) else {
        if index.builtin.contains(name) {
            marks.insert(name.to_string(), Mark::Done);
            return Ok(());
        }
        return Err(ModuleError::NotFound {
            module: name.to_string(),
            needed_by: needed_by.map(str::to_string),
        });
    };
    let bytes = read_module(path)?;
    let info = parse_modinfo(&bytes);
    if let Some(found) = info.name {
        if normalize(&found) != name {
            return Err(ModuleError::NameMismatch {
                path: path.clone(),
                expected: name.to_string(),
                found,
            });
        }
    }
    marks.insert(name.to_string(), Mark::Visiting);
    stack.push(name.to_string());
    for dep in &info.depends {
        visit(index, dep, Some(name), marks, stack, out)?;
    }
    stack.pop();
    marks.insert(name.to_string(), Mark::Done);
    out.push(ResolvedModule {
        name: name.to_string(),
        bytes,
    });
    Ok(())
}

/// The versioned kernel package and its candidate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelPackage {
    pub name: String,
    pub version: String,
}

/// Field `field` of the first stanza of Debian control-format `text`.
fn control_field(text: &str, field: &str) -> Option<String> {
    crate::control::first_field(text, field)
}

/// The versioned `linux-image-*` package named in a `Depends:` value, and
/// the version it is pinned to with `(= version)`, if it is.
fn image_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends.split([',', '|']).find_map(|alt| {
        let (name, relation) = match alt.split_once('(') {
            Some((n, r)) => (n, Some(r.trim_end().trim_end_matches(')').trim())),
            None => (alt, None),
        };
        let name = name.split(':').next().unwrap_or("").trim();
        if !name.starts_with("linux-image-") || name == META_PACKAGE {
            return None;
        }
        let pinned = relation
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        Some((name.to_string(), pinned))
    })
}

fn apt_show(step: &Step, package: &str) -> Result<String, SetupError> {
    let out = exec::run(
        step,
        host::apt("apt-cache").args(["show", "--no-all-versions", package]),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves [`META_PACKAGE`] to the versioned package it depends on and that
/// package's candidate version.
pub(crate) fn resolve_package(step: &Step) -> Result<KernelPackage, SetupError> {
    let meta = apt_show(step, META_PACKAGE)?;
    let depends = control_field(&meta, "Depends").unwrap_or_default();
    let (name, pinned) = image_dependency(&depends).ok_or_else(|| {
        SetupError::unexpected(
            step,
            format!("{META_PACKAGE} depends on no linux-image package (Depends: {depends:?})"),
        )
    })?;
    // The meta-package normally pins the exact version (`(= 6.1.192-3)`):
    // that saves a second apt-cache run, which costs a second or more on
    // hosts where apt keeps no binary package cache.
    let version = match pinned {
        Some(v) => v,
        None => {
            let show = apt_show(step, &name)?;
            control_field(&show, "Version").ok_or_else(|| {
                SetupError::unexpected(step, format!("apt-cache shows no version for {name}"))
            })?
        }
    };
    Ok(KernelPackage { name, version })
}

/// The cache key of a kernel artifact.
pub(crate) fn key(package: &KernelPackage, modules: &[&str]) -> String {
    KeyBuilder::new("kernel")
        .field("package", &package.name)
        .field("version", &package.version)
        .list("modules", modules)
        .field("recipe", RECIPE_VERSION.to_le_bytes())
        .finish()
}

/// The complete kernel artifact in `dir`, if there is one for `key`.
fn cached(dir: &Path, key: &str) -> Option<Kernel> {
    let meta: KernelMeta = cache::load_meta(dir, META_FILE)?;
    let kernel = Kernel::from_meta(dir.to_path_buf(), meta);
    let complete = kernel.artifact.key == key
        && kernel.artifact.path.is_file()
        && kernel
            .load_order
            .iter()
            .all(|m| kernel.module_path(m).is_file());
    complete.then_some(kernel)
}

/// Makes sure the kernel artifact for the current candidate package exists.
pub(crate) fn ensure(
    cache_dir: &Path,
    allow_apt_update: bool,
    progress: &dyn Fn(Progress),
) -> Result<Kernel, SetupError> {
    let mut r = Reporter::new(Step::Kernel, progress);
    let mut started = false;
    let resolved = match resolve_package(r.step()) {
        Err(SetupError::CommandFailed { .. }) if allow_apt_update => {
            // Most likely the package lists were never fetched.
            r.started();
            started = true;
            r.info("package lists lack the kernel; running apt-get update");
            host::apt_update(r.step()).and_then(|()| resolve_package(r.step()))
        }
        other => other,
    };
    let package = match resolved {
        Ok(p) => p,
        Err(e) => {
            // Offline, or apt lists cleaned: a kernel already in the cache
            // is better than no kernel.
            let Some(k) = newest_cached(cache_dir) else {
                return Err(e);
            };
            r.info(format!(
                "cannot resolve {META_PACKAGE} ({e}); using cached {} {}",
                k.artifact.package, k.artifact.package_version
            ));
            if started {
                r.done();
            } else {
                r.cached();
            }
            return Ok(k);
        }
    };
    let key = key(&package, GUEST_MODULES);
    let dir = cache_dir.join("kernel").join(&key);
    if let Some(k) = cached(&dir, &key) {
        if started {
            r.done();
        } else {
            r.cached();
        }
        return Ok(k);
    }
    if !started {
        r.started();
    }
    r.info(format!("{} {}", package.name, package.version));
    build(&dir, &package, &key, &r)?;
    let k = cached(&dir, &key).ok_or_else(|| {
        SetupError::unexpected(
            r.step(),
            format!("{} is incomplete after publishing", dir.display()),
        )
    })?;
    r.done();
    Ok(k)
}

/// The most recently built complete kernel artifact of the current recipe
/// and module list, if any.
fn newest_cached(cache_dir: &Path) -> Option<Kernel> {
    let entries = fs::read_dir(cache_dir.join("kernel")).ok()?;
    entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let meta: KernelMeta = cache::load_meta(&dir, META_FILE)?;
            let package = KernelPackage {
                name: meta.package,
                version: meta.version,
            };
            let key = key(&package, GUEST_MODULES);
            if e.file_name().to_str() != Some(key.as_str()) {
                return None;
            }
            let built = fs::metadata(dir.join(META_FILE))
                .and_then(|m| m.modified())
                .ok()?;
            Some((built, cached(&dir, &key)?))
        })
        .max_by_key(|(built, _)| *built)
        .map(|(_, k)| k)
}

/// The single `lib/modules/<release>` directory of an unpacked package.
fn find_release(step: &Step, root: &Path) -> Result<(String, PathBuf), SetupError> {
    let mut found = Vec::new();
    for base in [root.join("lib/modules"), root.join("usr/lib/modules")] {
        let Ok(entries) = fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().join("kernel").is_dir() {
                found.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(SetupError::unexpected(
            step,
            format!("expected one lib/modules/<release>/kernel directory in the kernel package, found {n}"),
        )),
    }
}

fn find_vmlinuz(step: &Step, root: &Path, release: &str) -> Result<PathBuf, SetupError> {
    let boot = root.join("boot");
    let exact = boot.join(format!("vmlinuz-{release}"));
    if exact.is_file() {
        return Ok(exact);
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir(&boot)
        .map_err(SetupError::io(step, "list", &boot))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                && p.is_file()
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| SetupError::unexpected(step, "the kernel package has no boot/vmlinuz-*"))
}

fn build(
    dir: &Path,
    package: &KernelPackage,
    key: &str,
    r: &Reporter<'_>,
) -> Result<(), SetupError> {
    let step = r.step();
    let staging = Staging::begin(step, dir)?;
    let work = staging.path().join("work");
    fs::create_dir(&work).map_err(SetupError::io(step, "create directory", &work))?;

    exec::run(
        step,
        host::apt("apt-get")
            .current_dir(&work)
            .args(["download", "-q"])
            .arg(format!("{}={}", package.name, package.version)),
    )?;
    let debs: Vec<PathBuf> = fs::read_dir(&work)
        .map_err(SetupError::io(step, "list", &work))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let [deb] = debs.as_slice() else {
        return Err(SetupError::unexpected(
            step,
            format!(
                "apt-get download left {} .deb files in {}",
                debs.len(),
                work.display()
            ),
        ));
    };
    let size = fs::metadata(deb).map(|m| m.len()).unwrap_or(0);
    r.info(format!("downloaded {:.1} MB", size as f64 / 1e6));

    let root = work.join("root");
    exec::run(step, Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let (release, release_dir) = find_release(step, &root)?;
    let vmlinuz = find_vmlinuz(step, &root, &release)?;
    let dest = staging.path().join("vmlinuz");
    fs::rename(&vmlinuz, &dest).map_err(SetupError::io(step, "move", &vmlinuz))?;
    cache::sync_file(&dest).map_err(SetupError::io(step, "sync", &dest))?;

    let index = ModuleIndex::scan(&release_dir).map_err(|source| SetupError::Modules { source })?;
    let modules = resolve_load_order(&index, GUEST_MODULES)
        .map_err(|source| SetupError::Modules { source })?;
    let modules_dir = staging.path().join("modules");
    fs::create_dir(&modules_dir).map_err(SetupError::io(step, "create directory", &modules_dir))?;
    for m in &modules {
        let p = modules_dir.join(format!("{}.ko", m.name));
        cache::write_synced(&p, &m.bytes).map_err(SetupError::io(step, "write", &p))?;
    }
    let load_order: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    r.info(format!(
        "release {release}; {} module files; load order {}",
        index.len(),
        load_order.join(" ")
    ));

    cache::remove_tree(step, &work)?;
    let meta = KernelMeta {
        key: key.to_string(),
        release,
        package: package.name.clone(),
        version: package.version.clone(),
        load_order,
        recipe_version: RECIPE_VERSION,
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|source| SetupError::Metadata {
        step: step.clone(),
        path: dir.join(META_FILE),
        source,
    })?;
    staging.publish(META_FILE, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that look like a module: junk, then NUL-separated modinfo strings.
    fn fake_ko(name: &str, depends: &str) -> Vec<u8> {
        let mut b = b"\x7fELF-not-really\0\x01\x02license=GPL\0".to_vec();
        b.extend_from_slice(
            format!("depends={depends}\0retpoline=Y\0intree=Y\0name={name}\0vermagic=6.1.0 SMP\0")
                .as_bytes(),
        );
        b.extend_from_slice(b"\0\0trailing junk");
        b
    }

    /// A kernel tree `lib/modules/<rel>` with the given (path, name, depends).
    fn tree(mods: &[(&str, &str, &str)], builtin: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("lib/modules/6.1.0-test");
        fs::create_dir_all(rel.join("kernel")).unwrap();
        for (path, name, deps) in mods {
            let p = rel.join("kernel").join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, fake_ko(name, deps)).unwrap();
        }
        let list: String = builtin.iter().map(|b| format!("kernel/{b}\n")).collect();
        fs::write(rel.join("modules.builtin"), list).unwrap();
        (dir, rel)
    }

    fn names(m: &[ResolvedModule]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    fn debian_like() -> (tempfile::TempDir, PathBuf) {
        tree(
            &[
                ("drivers/virtio/virtio.ko", "virtio", "virtio_ring"),
                ("drivers/virtio/virtio_ring.ko", "virtio_ring", ""),
                (
                    "drivers/virtio/virtio_mmio.ko",
                    "virtio_mmio",
                    "virtio,virtio_ring",
                ),
                (
                    "drivers/virtio/virtio_balloon.ko",
                    "virtio_balloon",
                    "virtio,virtio_ring",
                ),
                (
                    "drivers/block/virtio_blk.ko",
                    "virtio_blk",
                    "virtio,virtio_ring",
                ),
                (
                    "drivers/char/virtio_console.ko",
                    "virtio_console",
                    "virtio,virtio_ring",
                ),
                (
                    "drivers/char/hw_random/virtio-rng.ko",
                    "virtio_rng",
                    "virtio,virtio_ring",
                ),
                (
                    "drivers/net/virtio_net.ko",
                    "virtio_net",
                    "virtio_ring,virtio,net_failover",
                ),
                ("drivers/net/net_failover.ko", "net_failover", "failover"),
                ("net/core/failover.ko", "failover", ""),
                ("fs/overlayfs/overlay.ko", "overlay", ""),
            ],
            &[],
        )
    }

    #[test]
    fn modinfo_from_raw_bytes() {
        let info = parse_modinfo(&fake_ko("virtio_net", "virtio_ring,virtio, net-failover"));
        assert_eq!(info.name.as_deref(), Some("virtio_net"));
        assert_eq!(info.depends, ["virtio_ring", "virtio", "net_failover"]);
        let info = parse_modinfo(&fake_ko("overlay", ""));
        assert!(info.depends.is_empty());
        assert_eq!(parse_modinfo(b"nothing here"), ModInfo::default());
    }

    #[test]
    fn modinfo_from_elf_section_ignores_strings_elsewhere() {
        use object::write::Object;
        use object::{Architecture, BinaryFormat, Endianness, SectionKind};
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        for (name, data) in [
            (&b".rodata"[..], &b"\0depends=decoy\0name=decoy\0"[..]),
            (
                b".modinfo",
                b"license=GPL\0depends=virtio\0name=virtio_mmio\0",
            ),
        ] {
            let id = obj.add_section(Vec::new(), name.to_vec(), SectionKind::ReadOnlyData);
            obj.append_section_data(id, data, 1);
        }
        let ko = obj.write().unwrap();
        let info = parse_modinfo(&ko);
        assert_eq!(info.name.as_deref(), Some("virtio_mmio"));
        assert_eq!(info.depends, ["virtio"]);
    }

    #[test]
    fn module_file_names() {
        assert_eq!(
            module_file_name("virtio-rng.ko"),
            Some(("virtio_rng".into(), Compression::None))
        );
        assert_eq!(
            module_file_name("overlay.ko.xz"),
            Some(("overlay".into(), Compression::Xz))
        );
        assert_eq!(
            module_file_name("overlay.ko.zst"),
            Some(("overlay".into(), Compression::Zstd))
        );
        assert_eq!(module_file_name("modules.order"), None);
        assert_eq!(module_file_name(".ko"), None);
    }

    #[test]
    fn closure_in_dependency_order() {
        let (_d, rel) = debian_like();
        let index = ModuleIndex::scan(&rel).unwrap();
        assert_eq!(index.len(), 11);
        assert!(index
            .path("virtio-rng")
            .unwrap()
            .ends_with("hw_random/virtio-rng.ko"));
        let order = resolve_load_order(&index, GUEST_MODULES).unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "virtio_console",
                "virtio_rng",
                "failover",
                "net_failover",
                "virtio_net",
                "overlay"
            ]
        );
        // Every module comes after its dependencies.
        for (i, m) in order.iter().enumerate() {
            for dep in parse_modinfo(&m.bytes).depends {
                let j = order.iter().position(|o| o.name == dep).unwrap();
                assert!(j < i, "{dep} must load before {}", m.name);
            }
        }
        assert_eq!(
            order[5].bytes,
            fs::read(index.path("virtio_rng").unwrap()).unwrap()
        );
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let (_d, rel) = tree(
            &[("a.ko", "a", "b,c"), ("c.ko", "c", "")],
            &["drivers/b.ko"],
        );
        let index = ModuleIndex::scan(&rel).unwrap();
        let order = resolve_load_order(&index, &["a"]).unwrap();
        assert_eq!(names(&order), ["c", "a"]);
    }

    #[test]
    fn missing_dependency_is_named() {
        let (_d, rel) = tree(&[("a.ko", "a", "ghost")], &[]);
        let index = ModuleIndex::scan(&rel).unwrap();
        let err = resolve_load_order(&index, &["a"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module ghost not found in the kernel package (needed by a)"
        );
        let err = resolve_load_order(&index, &["nope"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module nope not found in the kernel package"
        );
    }

    #[test]
    fn cycles_are_reported() {
        let (_d, rel) = tree(
            &[("a.ko", "a", "b"), ("b.ko", "b", "c"), ("c.ko", "c", "a")],
            &[],
        );
        let index = ModuleIndex::scan(&rel).unwrap();
        let err = resolve_load_order(&index, &["a"]).unwrap_err();
        assert_eq!(err.to_string(), "module dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn name_mismatch_is_reported() {
        let (_d, rel) = tree(&[("a.ko", "not_a", "")], &[]);
        let index = ModuleIndex::scan(&rel).unwrap();
        assert!(matches!(
            resolve_load_order(&index, &["a"]),
            Err(ModuleError::NameMismatch { .. })
        ));
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let has = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        for (tool, ext) in [("xz", "xz"), ("zstd", "zst"), ("gzip", "gz")] {
            if !has(tool) {
                continue;
            }
            let (_d, rel) = tree(&[("b.ko", "b", "")], &[]);
            let ko = rel.join(format!("kernel/a.ko.{ext}"));
            let raw = fake_ko("a", "b");
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("{tool} -c > '{}'", ko.display()))
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&raw)?;
                    c.wait()
                })
                .unwrap();
            assert!(out.success());
            let index = ModuleIndex::scan(&rel).unwrap();
            let order = resolve_load_order(&index, &["a"]).unwrap();
            assert_eq!(names(&order), ["b", "a"]);
            assert_eq!(order[1].bytes, raw, "{tool}");
        }
    }

    #[test]
    fn corrupt_compressed_module_fails_clearly() {
        let (_d, rel) = tree(&[], &[]);
        fs::write(rel.join("kernel/a.ko.xz"), b"not xz").unwrap();
        let index = ModuleIndex::scan(&rel).unwrap();
        let err = resolve_load_order(&index, &["a"]).unwrap_err();
        assert!(matches!(err, ModuleError::Decompress { .. }), "{err}");
        assert!(err.to_string().contains("xz -d -c"), "{err}");
    }

    #[test]
    fn apt_output_parsing() {
        let show = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+3)\n\
                    Version: 6.1.192-3\nDepends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n\
                    Description: Linux for x86-64 cloud\n This package depends on the latest\n\n\
                    Package: other\nVersion: 9\n";
        assert_eq!(control_field(show, "Version").as_deref(), Some("6.1.192-3"));
        assert_eq!(
            control_field(show, "Description").as_deref(),
            Some("Linux for x86-64 cloud This package depends on the latest")
        );
        let deps = control_field(show, "Depends").unwrap();
        assert_eq!(
            image_dependency(&deps),
            Some((
                "linux-image-6.1.0-57-cloud-amd64".into(),
                Some("6.1.192-3".into())
            ))
        );
        assert_eq!(
            image_dependency(
                "kmod, linux-image-6.1.0-9-cloud-amd64-unsigned:amd64 (= 1) | linux-image-x"
            ),
            Some((
                "linux-image-6.1.0-9-cloud-amd64-unsigned".into(),
                Some("1".into())
            ))
        );
        assert_eq!(
            image_dependency("linux-image-6.1.0-9-cloud-amd64 (>= 6.1)"),
            Some(("linux-image-6.1.0-9-cloud-amd64".into(), None))
        );
        assert_eq!(
            image_dependency("linux-image-6.1.0-9-cloud-amd64"),
            Some(("linux-image-6.1.0-9-cloud-amd64".into(), None))
        );
        assert_eq!(image_dependency("kmod, linux-base"), None);
    }

    #[test]
    fn key_depends_on_package_version_and_modules() {
        let p = KernelPackage {
            name: "linux-image-6.1.0-57-cloud-amd64".into(),
            version: "6.1.192-3".into(),
        };
        let k = key(&p, GUEST_MODULES);
        assert_eq!(k, key(&p.clone(), GUEST_MODULES));
        let newer = KernelPackage {
            version: "6.1.193-1".into(),
            ..p.clone()
        };
        assert_ne!(k, key(&newer, GUEST_MODULES));
        assert_ne!(k, key(&p, &GUEST_MODULES[..5]));
    }

    #[test]
    fn newest_complete_cached_kernel_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        assert!(newest_cached(dir.path()).is_none());
        let make = |version: &str, key_override: Option<&str>, complete: bool| {
            let p = KernelPackage {
                name: "linux-image-6.1.0-57-cloud-amd64".into(),
                version: version.into(),
            };
            let k = key_override
                .map(str::to_string)
                .unwrap_or_else(|| key(&p, GUEST_MODULES));
            let kdir = dir.path().join("kernel").join(&k);
            fs::create_dir_all(kdir.join("modules")).unwrap();
            if complete {
                fs::write(kdir.join("vmlinuz"), b"bz").unwrap();
            }
            let meta = KernelMeta {
                key: k,
                release: "6.1.0-57-cloud-amd64".into(),
                package: p.name,
                version: p.version,
                load_order: vec![],
                recipe_version: RECIPE_VERSION,
            };
            fs::write(kdir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        make("1", None, true);
        make("2", None, true);
        make("3", None, false); // incomplete
        make("4", Some("not-its-key"), true); // other recipe or module list
        let k = newest_cached(dir.path()).unwrap();
        assert_eq!(k.artifact.package_version, "2");
    }

    #[test]
    fn kernel_meta_round_trip() {
        let meta = KernelMeta {
            key: "k".into(),
            release: "6.1.0-57-cloud-amd64".into(),
            package: "linux-image-6.1.0-57-cloud-amd64".into(),
            version: "6.1.192-3".into(),
            load_order: vec!["virtio_ring".into(), "virtio".into()],
            recipe_version: RECIPE_VERSION,
        };
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(META_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cache::load_meta::<KernelMeta>(dir.path(), META_FILE),
            Some(meta.clone())
        );
        // Not complete without its files.
        assert!(cached(dir.path(), "k").is_none());
        fs::write(dir.path().join("vmlinuz"), b"bz").unwrap();
        fs::create_dir(dir.path().join("modules")).unwrap();
        for m in &meta.load_order {
            fs::write(dir.path().join("modules").join(format!("{m}.ko")), b"ko").unwrap();
        }
        let k = cached(dir.path(), "k").unwrap();
        assert_eq!(k.artifact.package_version, "6.1.192-3");
        assert!(cached(dir.path(), "other-key").is_none());
    }
}
