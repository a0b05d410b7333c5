//! The initramfs: the agent as `/init`, the guest kernel modules and their
//! load order, and the few device nodes the kernel needs before `/dev` is
//! mounted. The agent loads the modules, mounts the root disk and switches
//! into it, staying PID 1.
//!
//! ```text
//! /init                               agent binary, 0755 (x86-64 ELF)
//! /lib64/ld-linux-x86-64.so.2, /lib/x86_64-linux-gnu/*.so*
//!                                     a dynamic agent's loader and
//!                                     libraries, from the host
//! /dev /proc /sys /run /newroot       empty directories
//! /dev/console                        char 5,1  0600
//! /dev/null                           char 1,3  0666
//! /lib/modules/hearth/<name>.ko       one per module
//! /lib/modules/hearth/load-order      module names, one a line, deps first
//! ```
//!
//! Stored as `<cache>/initramfs/<key>/initramfs.cpio` (uncompressed newc),
//! keyed by (agent bytes, kernel key, recipe version).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{self, KeyBuilder, Staging};
use crate::cpio::{self, Entry};
use crate::elf;
use crate::kernel::Kernel;
use crate::manifest::InitramfsArtifact;
use crate::{Progress, Reporter, SetupError, Step};

/// Bumped whenever the initramfs layout changes.
const RECIPE_VERSION: u32 = 2;

/// The archive's file name.
pub const ARCHIVE_FILE: &str = "initramfs.cpio";
/// Metadata file of an initramfs artifact.
pub const META_FILE: &str = "initramfs.json";
/// Where the modules and `load-order` live inside the initramfs.
pub const MODULES_DIR: &str = "lib/modules/hearth";
/// The load-order file inside the initramfs.
pub const LOAD_ORDER_FILE: &str = "lib/modules/hearth/load-order";

/// Contents of `initramfs.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsMeta {
    pub key: String,
    pub agent_sha256: String,
    /// A dynamically linked agent's loader and libraries (guest paths).
    #[serde(default)]
    pub libraries: Vec<String>,
    pub kernel_key: String,
    pub modules: Vec<String>,
    pub size_bytes: u64,
    pub recipe_version: u32,
}

/// A checked agent binary, with the loader and libraries it needs when it
/// is dynamically linked (whatever way it was built, it runs as `/init`).
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub bytes: Vec<u8>,
    /// Of the agent binary alone.
    pub sha256: String,
    /// (path in the guest, bytes), for a dynamically linked agent.
    pub libraries: Vec<(String, Vec<u8>)>,
    /// Of the agent and its libraries: part of the initramfs key.
    pub content_sha256: String,
}

/// Reads the agent binary; refuses anything but an x86-64 ELF executable.
/// A dynamically linked one brings its interpreter and libraries along,
/// taken from this host.
pub(crate) fn read_agent(path: &Path) -> Result<Agent, SetupError> {
    let step = Step::Initramfs;
    let bytes = fs::read(path).map_err(SetupError::io(&step, "read the agent binary", path))?;
    let bad = |source| SetupError::Agent {
        path: path.to_path_buf(),
        source,
    };
    let mut libraries = Vec::new();
    if let elf::Linkage::Dynamic {
        interpreter,
        needed,
    } = elf::executable_linkage(&bytes).map_err(bad)?
    {
        for (guest, host) in
            elf::library_closure(&interpreter, &needed, elf::LIBRARY_DIRS).map_err(bad)?
        {
            let data = fs::read(&host).map_err(SetupError::io(&step, "read", &host))?;
            libraries.push((guest, data));
        }
    }
    let sha256 = cache::sha256_hex(&bytes);
    let mut all = bytes.clone();
    for (guest, data) in &libraries {
        all.extend_from_slice(guest.as_bytes());
        all.extend_from_slice(data);
    }
    Ok(Agent {
        content_sha256: cache::sha256_hex(&all),
        sha256,
        bytes,
        libraries,
    })
}

/// The members of the initramfs, in archive order: `libraries` are a
/// dynamic agent's (guest path, bytes).
pub fn entries(
    agent: &[u8],
    libraries: &[(String, Vec<u8>)],
    modules: &[(String, Vec<u8>)],
) -> Vec<Entry> {
    let mut e = vec![
        Entry::dir("dev", 0o755),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::char_device("dev/null", 0o666, 1, 3),
        Entry::dir("proc", 0o555),
        Entry::dir("sys", 0o555),
        Entry::dir("run", 0o755),
        Entry::dir("newroot", 0o755),
        Entry::dir("lib", 0o755),
        Entry::dir("lib/modules", 0o755),
        Entry::dir(MODULES_DIR, 0o755),
    ];
    let mut order = String::new();
    for (name, bytes) in modules {
        e.push(Entry::file(
            &format!("{MODULES_DIR}/{name}.ko"),
            0o644,
            bytes.clone(),
        ));
        order.push_str(name);
        order.push('\n');
    }
    e.push(Entry::file(LOAD_ORDER_FILE, 0o644, order.into_bytes()));
    let mut dirs: Vec<String> = vec!["lib".into()];
    for (guest, bytes) in libraries {
        let rel = guest.trim_start_matches('/');
        let mut parent = String::new();
        for part in Path::new(rel)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&part.as_os_str().to_string_lossy());
            if !dirs.contains(&parent) {
                dirs.push(parent.clone());
                e.push(Entry::dir(&parent, 0o755));
            }
        }
        e.push(Entry::file(rel, 0o755, bytes.clone()));
    }
    e.push(Entry::file("init", 0o755, agent.to_vec()));
    e
}

/// Write an initramfs for `agent` (static or dynamic) with the modules of
/// the kernel `manifest` provisioned, to `out` (outside the cache: for a
/// custom agent or tests).
pub fn write_for_agent(
    agent: &Path,
    manifest: &crate::Manifest,
    out: &Path,
) -> Result<(), SetupError> {
    let step = Step::Initramfs;
    let agent = read_agent(agent)?;
    let kdir = manifest
        .kernel
        .path
        .parent()
        .ok_or_else(|| SetupError::unexpected(&step, "the kernel has no directory"))?;
    let meta: crate::kernel::KernelMeta = cache::load_meta(kdir, crate::kernel::META_FILE)
        .ok_or_else(|| SetupError::unexpected(&step, "the kernel's metadata is missing"))?;
    let mut modules = Vec::new();
    for name in &meta.load_order {
        let p = kdir.join("modules").join(format!("{name}.ko"));
        let bytes = fs::read(&p).map_err(SetupError::io(&step, "read", &p))?;
        modules.push((name.clone(), bytes));
    }
    let file = fs::File::create(out).map_err(SetupError::io(&step, "create", out))?;
    let mut w = std::io::BufWriter::new(file);
    cpio::write_newc(&entries(&agent.bytes, &agent.libraries, &modules), &mut w)
        .map_err(SetupError::io(&step, "write", out))?;
    Ok(())
}

/// The cache key of an initramfs.
pub(crate) fn key(agent_sha256: &str, kernel_key: &str) -> String {
    KeyBuilder::new("initramfs")
        .field("agent-sha256", agent_sha256)
        .field("kernel", kernel_key)
        .field("recipe", RECIPE_VERSION.to_le_bytes())
        .finish()
}

fn artifact(dir: &Path, meta: &InitramfsMeta) -> InitramfsArtifact {
    InitramfsArtifact {
        path: dir.join(ARCHIVE_FILE),
        key: meta.key.clone(),
        agent_sha256: meta.agent_sha256.clone(),
    }
}

fn cached(dir: &Path, key: &str) -> Option<InitramfsArtifact> {
    let meta: InitramfsMeta = cache::load_meta(dir, META_FILE)?;
    let a = artifact(dir, &meta);
    let complete =
        meta.key == key && fs::metadata(&a.path).is_ok_and(|m| m.len() == meta.size_bytes);
    complete.then_some(a)
}

/// Makes sure the initramfs for this agent and kernel exists.
pub(crate) fn ensure(
    cache_dir: &Path,
    agent: &Agent,
    kernel: &Kernel,
    progress: &dyn Fn(Progress),
) -> Result<InitramfsArtifact, SetupError> {
    let mut r = Reporter::new(Step::Initramfs, progress);
    let key = key(&agent.content_sha256, &kernel.artifact.key);
    let dir: PathBuf = cache_dir.join("initramfs").join(&key);
    if let Some(a) = cached(&dir, &key) {
        r.cached();
        return Ok(a);
    }
    r.started();
    let step = r.step();
    let mut modules = Vec::new();
    for name in &kernel.load_order {
        let p = kernel.module_path(name);
        let bytes = fs::read(&p).map_err(SetupError::io(step, "read", &p))?;
        modules.push((name.clone(), bytes));
    }
    let staging = Staging::begin(step, &dir)?;
    let out_path = staging.path().join(ARCHIVE_FILE);
    let file = fs::File::create(&out_path).map_err(SetupError::io(step, "create", &out_path))?;
    let mut w = std::io::BufWriter::new(file);
    let size_bytes = cpio::write_newc(&entries(&agent.bytes, &agent.libraries, &modules), &mut w)
        .map_err(SetupError::io(step, "write", &out_path))?;
    let file = w
        .into_inner()
        .map_err(|e| SetupError::io(step, "write", &out_path)(e.into_error()))?;
    file.sync_all()
        .map_err(SetupError::io(step, "sync", &out_path))?;
    r.info(format!(
        "{} modules, {} agent libraries, {:.1} MB",
        modules.len(),
        agent.libraries.len(),
        size_bytes as f64 / 1e6
    ));
    let meta = InitramfsMeta {
        key: key.clone(),
        agent_sha256: agent.sha256.clone(),
        libraries: agent.libraries.iter().map(|(g, _)| g.clone()).collect(),
        kernel_key: kernel.artifact.key.clone(),
        modules: kernel.load_order.clone(),
        size_bytes,
        recipe_version: RECIPE_VERSION,
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|source| SetupError::Metadata {
        step: step.clone(),
        path: dir.join(META_FILE),
        source,
    })?;
    staging.publish(META_FILE, &json)?;
    let a = cached(&dir, &key).ok_or_else(|| {
        SetupError::unexpected(
            step,
            format!("{} is incomplete after publishing", dir.display()),
        )
    })?;
    r.done();
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::EntryKind;
    use crate::manifest::KernelArtifact;

    #[test]
    fn layout_of_the_archive() {
        let modules = vec![
            ("virtio_ring".to_string(), b"ring".to_vec()),
            ("virtio".to_string(), b"v".to_vec()),
        ];
        let mut buf = Vec::new();
        cpio::write_newc(&entries(b"AGENT", &[], &modules), &mut buf).unwrap();
        let back = cpio::read_newc(&buf).unwrap();
        let find = |p: &str| {
            back.iter()
                .find(|e| e.name == p)
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        assert_eq!(find("init").mode, 0o100755);
        assert_eq!(find("init").data, b"AGENT");
        assert_eq!(find("dev/console").mode, 0o020600);
        assert_eq!(
            (find("dev/console").rdevmajor, find("dev/console").rdevminor),
            (5, 1)
        );
        assert_eq!(find("dev/null").mode, 0o020666);
        assert_eq!(
            (find("dev/null").rdevmajor, find("dev/null").rdevminor),
            (1, 3)
        );
        for d in [
            "dev",
            "proc",
            "sys",
            "run",
            "newroot",
            "lib",
            "lib/modules",
            "lib/modules/hearth",
        ] {
            assert_eq!(find(d).mode & 0o170000, 0o040000, "{d}");
        }
        assert_eq!(find("lib/modules/hearth/virtio_ring.ko").data, b"ring");
        assert_eq!(
            find("lib/modules/hearth/load-order").data,
            b"virtio_ring\nvirtio\n"
        );
        // Every parent directory precedes its children.
        for (i, e) in back.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                let j = back
                    .iter()
                    .position(|p| p.name == parent)
                    .expect("parent listed");
                assert!(j < i, "{parent} before {}", e.name);
            }
        }
    }

    #[test]
    fn static_and_dynamic_agents_are_taken_scripts_are_not() {
        let stat =
            read_agent(Path::new("/bin/busybox")).expect("busybox-static (setup installs it)");
        assert!(stat.libraries.is_empty());
        assert_eq!(stat.sha256, stat.content_sha256);
        let dynamic = read_agent(Path::new("/bin/ls")).unwrap();
        let paths: Vec<&str> = dynamic.libraries.iter().map(|(g, _)| g.as_str()).collect();
        assert!(paths[0].contains("ld-linux-x86-64"), "{paths:?}");
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
        assert_ne!(dynamic.sha256, dynamic.content_sha256);
        let lib_entries = entries(&dynamic.bytes, &dynamic.libraries, &[]);
        for p in &paths {
            assert!(
                lib_entries
                    .iter()
                    .any(|e| e.path == p.trim_start_matches('/')),
                "{p} not in the archive"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent");
        fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
        let msg = read_agent(&script).unwrap_err().to_string();
        assert!(msg.contains("x86-64 ELF executable"), "{msg}");
        let missing = read_agent(&dir.path().join("nope")).unwrap_err();
        assert!(
            missing.to_string().contains("read the agent binary"),
            "{missing}"
        );
    }

    #[test]
    fn build_then_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path();
        let kdir = cache_dir.join("kernel/kk");
        fs::create_dir_all(kdir.join("modules")).unwrap();
        fs::write(kdir.join("modules/virtio.ko"), b"vko").unwrap();
        let kernel = Kernel {
            artifact: KernelArtifact {
                path: kdir.join("vmlinuz"),
                release: "r".into(),
                package: "p".into(),
                package_version: "v".into(),
                key: "kk".into(),
            },
            dir: kdir,
            load_order: vec!["virtio".into()],
        };
        let agent = read_agent(Path::new("/bin/busybox")).unwrap();
        let events = std::cell::RefCell::new(Vec::new());
        let progress = |p: Progress| events.borrow_mut().push(p.status);
        let a = ensure(cache_dir, &agent, &kernel, &progress).unwrap();
        assert!(matches!(
            events.borrow()[..],
            [
                crate::Status::Started,
                crate::Status::Info(_),
                crate::Status::Done { .. }
            ]
        ));
        let back = cpio::read_newc(&fs::read(&a.path).unwrap()).unwrap();
        let init = back
            .iter()
            .find(|e| e.name == "init")
            .unwrap()
            .to_entry()
            .unwrap();
        assert_eq!(init.kind, EntryKind::File(agent.bytes.clone()));
        assert_eq!(a.agent_sha256, agent.sha256);

        events.borrow_mut().clear();
        let again = ensure(cache_dir, &agent, &kernel, &progress).unwrap();
        assert_eq!(again, a);
        assert_eq!(events.borrow()[..], [crate::Status::Cached]);

        // A different kernel gives a different initramfs.
        let mut k2 = kernel.clone();
        k2.artifact.key = "other".into();
        assert_ne!(
            ensure(cache_dir, &agent, &k2, &progress).unwrap().key,
            a.key
        );
    }
}
