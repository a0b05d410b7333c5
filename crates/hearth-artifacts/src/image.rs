//! Managed base images: Debian root file systems built with `mmdebstrap`
//! (no loop mounts) and turned into sparse ext4 files with `mke2fs -d`.
//!
//! Build: `mmdebstrap --variant=minbase [--include=...] --mode=root bookworm
//! <tree> "deb <mirror> bookworm main" "deb <mirror> bookworm-updates main"
//! "deb <security mirror> bookworm-security main"` (stdin from `/dev/null`,
//! since mmdebstrap reads a sources list from a non-terminal stdin), so the
//! image has the point releases' and the security fixes, and its own
//! `sources.list` names all three for the `apt-get install`s of image builds.
//! Then a small post-processing of the tree (empty machine-id, `localhost`
//! hostname and hosts, a placeholder resolv.conf, no apt caches), then
//! `mke2fs -t ext4 -i 8192 -d <tree> -L hearth-root` into a file of
//! `used * 1.25 + 2 GiB`: the image is sparse, so the headroom (the user's
//! free space and inodes inside the microVM, enough for the `pip install` and
//! `apt-get install` steps of an image build) costs nothing until used.
//!
//! Stored as `<cache>/images/<name>/<key>/{rootfs.ext4, image.json}`, keyed
//! by (name, suite, variant, packages, recipe version); not by the mirror,
//! and not by the date (the security suite moves; the recipe does not).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::{self, KeyBuilder, Staging};
use crate::manifest::ImageArtifact;
use crate::{exec, Progress, Reporter, SetupError, Step};

/// Bumped whenever the build or post-processing changes.
const RECIPE_VERSION: u32 = 2;

/// The Debian suite of the managed images.
pub const SUITE: &str = "bookworm";
/// Mirror used when the host's apt sources name none for [`SUITE`].
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Security mirror used when the host's apt sources name none for
/// `<SUITE>-security`.
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// The image file's name.
pub const IMAGE_FILE: &str = "rootfs.ext4";
/// Metadata file of an image artifact.
pub const META_FILE: &str = "image.json";
/// File system label of every image.
pub const FS_LABEL: &str = "hearth-root";
/// Version of every managed image.
pub const IMAGE_VERSION: &str = "1";

const MIB: u64 = 1024 * 1024;
/// Free space added to every image on top of 25% of its contents: room for
/// the `apt-get install` and `pip install` steps of an image build. The
/// file is sparse and every microVM writes to its own qcow2 layer, so free
/// space costs nothing until it is used.
const HEADROOM_BYTES: u64 = 2048 * MIB;
/// Bytes per inode (`mke2fs -i`): one inode per 8 KiB, twice ext4's default,
/// because package trees (Python's above all) are many small files.
const BYTES_PER_INODE: u64 = 8192;

/// What a managed image is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    pub name: &'static str,
    pub suite: &'static str,
    pub variant: &'static str,
    /// Packages added to the variant's set.
    pub packages: &'static [&'static str],
}

/// The managed base images. Each carries `iproute2`: a guest given a
/// network interface configures it with `ip` (see `hearth-net`'s guest
/// module; minbase has neither `ip` nor a DHCP client).
pub const MANAGED_IMAGES: &[ImageSpec] = &[
    ImageSpec {
        name: "debian-12-minimal",
        suite: SUITE,
        variant: "minbase",
        packages: &["iproute2"],
    },
    ImageSpec {
        name: "debian-12-python",
        suite: SUITE,
        variant: "minbase",
        packages: &["iproute2", "python3", "python3-pip", "python3-venv"],
    },
];

/// A managed image by name.
pub fn managed_image(name: &str) -> Option<&'static ImageSpec> {
    MANAGED_IMAGES.iter().find(|s| s.name == name)
}

/// Contents of `image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    /// Resource part of the image ARN:
    /// `arn:aws:lambda:<region>:aws:<arn_resource>`.
    pub arn_resource: String,
    pub version: String,
    /// Size of the (sparse) ext4 file.
    pub size_bytes: u64,
    /// Bytes of file system contents it was built from.
    pub used_bytes: u64,
    pub suite: String,
    pub variant: String,
    pub packages: Vec<String>,
    /// Informational: not part of the key.
    pub mirror: String,
    /// Informational: not part of the key.
    #[serde(default)]
    pub security_mirror: String,
    /// Inodes of the file system (`mke2fs -i`), for the free-inode check.
    #[serde(default)]
    pub inodes: u64,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    pub key: String,
    pub recipe_version: u32,
}

/// The cache key of an image.
pub(crate) fn key(spec: &ImageSpec) -> String {
    KeyBuilder::new("image")
        .field("name", spec.name)
        .field("suite", spec.suite)
        .field("variant", spec.variant)
        .list("packages", spec.packages)
        .field("recipe", RECIPE_VERSION.to_le_bytes())
        .finish()
}

/// `arn:aws:lambda:<region>:aws:` + this.
pub fn arn_resource(name: &str) -> String {
    format!("microvm-image:{name}")
}

/// The mirror for `suite` named by the host's apt sources (deb822
/// `debian.sources` first, then `sources.list`), else [`DEFAULT_MIRROR`].
pub fn detect_mirror(suite: &str) -> String {
    detect_named_mirror(suite).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// The mirror for `suite` named by the host's apt sources, if any.
fn detect_named_mirror(suite: &str) -> Option<String> {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|t| mirror_from_deb822(&t, suite));
    deb822.or_else(|| {
        fs::read_to_string("/etc/apt/sources.list")
            .ok()
            .and_then(|t| mirror_from_sources_list(&t, suite))
    })
}

/// Where an image's packages come from: the suite and its `-updates` from
/// one mirror, `-security` from the security mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub mirror: String,
    pub security_mirror: String,
}

impl Sources {
    /// Both mirrors as the host's apt sources name them (else Debian's).
    pub fn detect(suite: &str) -> Sources {
        Sources {
            mirror: detect_mirror(suite),
            security_mirror: detect_named_mirror(&format!("{suite}-security"))
                .unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.to_string()),
        }
    }

    /// `mmdebstrap` source lines for `suite`.
    pub fn lines(&self, suite: &str) -> Vec<String> {
        vec![
            format!("deb {} {suite} main", self.mirror),
            format!("deb {} {suite}-updates main", self.mirror),
            format!("deb {} {suite}-security main", self.security_mirror),
        ]
    }
}

fn usable_uri(uri: &str) -> bool {
    ["http://", "https://", "file:/"]
        .iter()
        .any(|p| uri.starts_with(p))
}

/// First usable `URIs:` entry of an enabled `deb` stanza whose `Suites:`
/// include `suite`.
fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    let mut stanzas: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let stanza = stanzas.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !stanza.is_empty() {
                stanzas.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    stanzas.iter().find_map(|fields| {
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let enabled = !get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no"));
        let deb = get("types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = get("suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        if !(enabled && deb && has_suite) {
            return None;
        }
        get("uris")?
            .split_whitespace()
            .find(|u| usable_uri(u))
            .map(|u| u.trim_end_matches('/').to_string())
    })
}

/// First usable URI of a `deb [options] URI suite ...` line for `suite`.
fn mirror_from_sources_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // Options: `[arch=amd64 signed-by=...]`, possibly several words.
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        (words.next()? == suite && usable_uri(uri)).then(|| uri.trim_end_matches('/').to_string())
    })
}

/// Image file size for `used_bytes` of contents: `used * 1.25 + 512 MiB`,
/// rounded up to a MiB.
pub fn image_size_bytes(used_bytes: u64) -> u64 {
    let want = used_bytes + used_bytes.div_ceil(4) + HEADROOM_BYTES;
    want.div_ceil(MIB) * MIB
}

/// Apparent size of a tree (like `du -sb`): every entry's length, each
/// hard-linked inode counted once, symlinks not followed.
pub fn tree_size_bytes(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = fs::symlink_metadata(&p)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
        if meta.is_dir() {
            for e in fs::read_dir(&p)? {
                pending.push(e?.path());
            }
        }
    }
    Ok(total)
}

/// Replaces `<tree>/<rel>` with a regular file holding `contents`, never
/// following a symlink out of the tree (resolv.conf often is one).
fn write_tree_file(tree: &Path, rel: &str, contents: &[u8]) -> io::Result<()> {
    let path = tree.join(rel);
    let mut dir = tree.to_path_buf();
    if let Some(parent) = Path::new(rel).parent() {
        for c in parent.components() {
            dir.push(c);
            let m = fs::symlink_metadata(&dir)?;
            if !m.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
        }
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            )))
        }
        Ok(_) => fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o644);
    io::Write::write_all(&mut opts.open(&path)?, contents)
}

/// Removes the entries of `dir` for which `pick(name, is_dir)` holds (not
/// following symlinks). A missing `dir` is fine.
fn remove_entries(dir: &Path, pick: impl Fn(&str, bool) -> bool) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let is_dir = e.file_type()?.is_dir();
        if pick(&e.file_name().to_string_lossy(), is_dir) {
            if is_dir {
                fs::remove_dir_all(e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

/// The post-processing applied to every image tree.
pub fn post_process(tree: &Path) -> io::Result<()> {
    // Each microVM gets its own identity at run time (agent duty).
    write_tree_file(tree, "etc/machine-id", b"")?;
    write_tree_file(tree, "etc/hostname", b"localhost\n")?;
    write_tree_file(
        tree,
        "etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    write_tree_file(
        tree,
        "etc/resolv.conf",
        b"# Written by Hearth. A microVM has no network unless an egress connector\n\
          # is attached; name servers are configured then.\n",
    )?;
    let deb = |name: &str, is_dir: bool| !is_dir && name.ends_with(".deb");
    remove_entries(&tree.join("var/cache/apt/archives"), deb)?;
    remove_entries(&tree.join("var/cache/apt/archives/partial"), deb)?;
    // Package lists: everything but the (emptied) partial/ directory.
    remove_entries(&tree.join("var/lib/apt/lists"), |name, is_dir| {
        !(is_dir && name == "partial")
    })?;
    remove_entries(&tree.join("var/lib/apt/lists/partial"), |_, _| true)?;
    Ok(())
}

fn artifact(dir: &Path, meta: &ImageMeta) -> ImageArtifact {
    ImageArtifact {
        name: meta.name.clone(),
        path: dir.join(IMAGE_FILE),
        size_bytes: meta.size_bytes,
        key: meta.key.clone(),
        version: meta.version.clone(),
    }
}

fn cached(dir: &Path, key: &str) -> Option<ImageArtifact> {
    let meta: ImageMeta = cache::load_meta(dir, META_FILE)?;
    let a = artifact(dir, &meta);
    let complete =
        meta.key == key && fs::metadata(&a.path).is_ok_and(|m| m.len() == meta.size_bytes);
    complete.then_some(a)
}

/// Makes sure the image `spec` exists, building it from `sources` if not.
pub(crate) fn ensure(
    cache_dir: &Path,
    spec: &ImageSpec,
    sources: &Sources,
    progress: &dyn Fn(Progress),
) -> Result<ImageArtifact, SetupError> {
    let mut r = Reporter::new(Step::Image(spec.name.to_string()), progress);
    let key = key(spec);
    let dir = cache_dir.join("images").join(spec.name).join(&key);
    if let Some(a) = cached(&dir, &key) {
        r.cached();
        return Ok(a);
    }
    r.started();
    build(&dir, spec, &key, sources, &r)?;
    let a = cached(&dir, &key).ok_or_else(|| {
        SetupError::unexpected(
            r.step(),
            format!("{} is incomplete after publishing", dir.display()),
        )
    })?;
    r.done();
    Ok(a)
}

fn build(
    dir: &Path,
    spec: &ImageSpec,
    key: &str,
    sources: &Sources,
    r: &Reporter<'_>,
) -> Result<(), SetupError> {
    let step = r.step();
    let staging = Staging::begin(step, dir)?;
    let tree: PathBuf = staging.path().join("tree");
    let image = staging.path().join(IMAGE_FILE);

    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", spec.variant));
    if !spec.packages.is_empty() {
        cmd.arg(format!("--include={}", spec.packages.join(",")));
    }
    cmd.args(["--mode=root", spec.suite])
        .arg(&tree)
        .args(sources.lines(spec.suite));
    r.info(format!(
        "mirrors {} and {} ({suite}, {suite}-updates, {suite}-security)",
        sources.mirror,
        sources.security_mirror,
        suite = spec.suite
    ));
    exec::run_streaming(step, &mut cmd, &mut |line| r.info(line))?;

    post_process(&tree).map_err(SetupError::io(step, "post-process", &tree))?;
    let used_bytes = tree_size_bytes(&tree).map_err(SetupError::io(step, "measure", &tree))?;
    let size_bytes = image_size_bytes(used_bytes);
    r.info(format!(
        "contents {} MiB, image {} MiB",
        used_bytes.div_ceil(MIB),
        size_bytes / MIB
    ));
    exec::run(
        step,
        Command::new("mke2fs")
            .args(["-t", "ext4", "-i", &BYTES_PER_INODE.to_string(), "-d"])
            .arg(&tree)
            .args(["-L", FS_LABEL, "-F", "-q"])
            .arg(&image)
            .arg(format!("{}M", size_bytes / MIB)),
    )?;
    cache::remove_tree(step, &tree)?;
    let actual = fs::metadata(&image).map_err(SetupError::io(step, "inspect", &image))?;
    if actual.len() != size_bytes {
        return Err(SetupError::unexpected(
            step,
            format!("mke2fs made {} bytes, expected {size_bytes}", actual.len()),
        ));
    }
    cache::sync_file(&image).map_err(SetupError::io(step, "sync", &image))?;

    let meta = ImageMeta {
        name: spec.name.to_string(),
        arn_resource: arn_resource(spec.name),
        version: IMAGE_VERSION.to_string(),
        size_bytes,
        used_bytes,
        suite: spec.suite.to_string(),
        variant: spec.variant.to_string(),
        packages: spec.packages.iter().map(|p| p.to_string()).collect(),
        mirror: sources.mirror.clone(),
        security_mirror: sources.security_mirror.clone(),
        inodes: size_bytes / BYTES_PER_INODE,
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        key: key.to_string(),
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

    #[test]
    fn managed_images() {
        let min = managed_image("debian-12-minimal").unwrap();
        assert_eq!((min.suite, min.variant), ("bookworm", "minbase"));
        assert_eq!(min.packages, ["iproute2"]);
        let py = managed_image("debian-12-python").unwrap();
        assert_eq!(
            py.packages,
            ["iproute2", "python3", "python3-pip", "python3-venv"]
        );
        assert!(managed_image("debian-11").is_none());
        assert_eq!(
            arn_resource("debian-12-python"),
            "microvm-image:debian-12-python"
        );
    }

    #[test]
    fn keys_differ_per_image_and_ignore_the_mirror() {
        let [a, b] = [&MANAGED_IMAGES[0], &MANAGED_IMAGES[1]].map(key);
        assert_ne!(a, b);
        assert_eq!(a, key(&MANAGED_IMAGES[0]));
        let more = ImageSpec {
            packages: &["python3"],
            ..MANAGED_IMAGES[0]
        };
        assert_ne!(key(&more), a);
    }

    #[test]
    fn sources_cover_updates_and_security() {
        let s = Sources {
            mirror: "http://m/debian".into(),
            security_mirror: "http://m/debian-security".into(),
        };
        assert_eq!(
            s.lines("bookworm"),
            [
                "deb http://m/debian bookworm main",
                "deb http://m/debian bookworm-updates main",
                "deb http://m/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn size_rule() {
        assert_eq!(image_size_bytes(0), 2048 * MIB);
        // 178 MiB of contents -> 222.5 + 2048 -> 2271 MiB.
        assert_eq!(image_size_bytes(178 * MIB), 2271 * MIB);
        assert_eq!(image_size_bytes(1), 2049 * MIB);
        // At one inode per 8 KiB such an image has ~290k inodes: room for
        // a Python dependency tree on top of the base system's ~10k.
        assert!(image_size_bytes(178 * MIB) / BYTES_PER_INODE > 250_000);
        assert_eq!(image_size_bytes(100 * MIB) % MIB, 0);
    }

    #[test]
    fn mirror_from_deb822_sources() {
        let text = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                    URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_from_deb822(text, "bookworm-security").as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(mirror_from_deb822(text, "trixie"), None);

        let text = "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n\n\
                    Types: deb deb-src\nURIs: cdrom:/x http://mirror.example/debian/\nSuites: sid\n bookworm\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let text = "# deb http://commented.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] https://mirror.example/debian/ bookworm main contrib\n\
                    deb http://later.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources_list(text, "bookworm").as_deref(),
            Some("https://mirror.example/debian")
        );
        assert_eq!(mirror_from_sources_list("", "bookworm"), None);
    }

    #[test]
    fn post_processing() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let outside = dir.path().join("host-resolv.conf");
        fs::write(&outside, b"nameserver 1.1.1.1\n").unwrap();
        for d in [
            "etc",
            "var/cache/apt/archives/partial",
            "var/lib/apt/lists/partial",
            "var/lib/apt/lists/auxfiles",
        ] {
            fs::create_dir_all(tree.join(d)).unwrap();
        }
        fs::write(tree.join("etc/machine-id"), b"0123456789abcdef\n").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("etc/resolv.conf")).unwrap();
        fs::write(tree.join("var/cache/apt/archives/a_1_amd64.deb"), b"deb").unwrap();
        fs::write(tree.join("var/cache/apt/archives/lock"), b"").unwrap();
        fs::write(tree.join("var/cache/apt/archives/partial/b.deb"), b"deb").unwrap();
        fs::write(
            tree.join("var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease"),
            b"x",
        )
        .unwrap();
        fs::write(tree.join("var/lib/apt/lists/partial/y"), b"y").unwrap();
        post_process(&tree).unwrap();

        assert_eq!(fs::read(tree.join("etc/machine-id")).unwrap(), b"");
        assert_eq!(fs::read(tree.join("etc/hostname")).unwrap(), b"localhost\n");
        assert!(fs::read_to_string(tree.join("etc/hosts"))
            .unwrap()
            .starts_with("127.0.0.1\tlocalhost\n"));
        let resolv = fs::symlink_metadata(tree.join("etc/resolv.conf")).unwrap();
        assert!(resolv.is_file(), "symlink replaced by a file");
        assert!(!fs::read_to_string(tree.join("etc/resolv.conf"))
            .unwrap()
            .contains("nameserver"));
        assert_eq!(
            fs::read(&outside).unwrap(),
            b"nameserver 1.1.1.1\n",
            "host file untouched"
        );
        assert!(!tree.join("var/cache/apt/archives/a_1_amd64.deb").exists());
        assert!(!tree.join("var/cache/apt/archives/partial/b.deb").exists());
        assert!(tree.join("var/cache/apt/archives/lock").exists());
        let lists: Vec<_> = fs::read_dir(tree.join("var/lib/apt/lists"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(lists, ["partial"]);
        assert_eq!(
            fs::read_dir(tree.join("var/lib/apt/lists/partial"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn post_processing_refuses_a_symlinked_etc() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(&tree).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tree.join("etc")).unwrap();
        assert!(post_process(&tree).is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn tree_size_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d/a"), vec![0u8; 1000]).unwrap();
        fs::hard_link(t.join("d/a"), t.join("b")).unwrap();
        std::os::unix::fs::symlink("d/a", t.join("c")).unwrap();
        let dirs = fs::metadata(t).unwrap().len() + fs::metadata(t.join("d")).unwrap().len();
        assert_eq!(tree_size_bytes(t).unwrap(), dirs + 1000 + 3);
    }

    #[test]
    fn image_meta_round_trip() {
        let meta = ImageMeta {
            name: "debian-12-minimal".into(),
            arn_resource: arn_resource("debian-12-minimal"),
            version: IMAGE_VERSION.into(),
            size_bytes: 735 * MIB,
            used_bytes: 178 * MIB,
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: vec![],
            mirror: DEFAULT_MIRROR.into(),
            security_mirror: DEFAULT_SECURITY_MIRROR.into(),
            inodes: 735 * MIB / BYTES_PER_INODE,
            built_at: 1_700_000_000,
            key: "k".into(),
            recipe_version: RECIPE_VERSION,
        };
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(META_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cache::load_meta::<ImageMeta>(dir.path(), META_FILE),
            Some(meta.clone())
        );
        assert!(cached(dir.path(), "k").is_none(), "no image file yet");
        let f = fs::File::create(dir.path().join(IMAGE_FILE)).unwrap();
        f.set_len(meta.size_bytes).unwrap();
        assert_eq!(cached(dir.path(), "k").unwrap().size_bytes, meta.size_bytes);
        assert!(cached(dir.path(), "other").is_none());
    }
}
