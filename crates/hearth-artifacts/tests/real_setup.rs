//! The real thing, from nothing: host packages, kernel download, initramfs
//! with the real agent, mmdebstrap images, into a cache directory of the
//! test's own (about a minute and a half; root and registry access). Then a
//! second run that finds everything cached. Needs `HEARTH_AGENT` (the static
//! agent; scripts/test.sh sets it).

use std::cell::RefCell;
use std::fs;

use hearth_artifacts::cpio::read_newc;
use hearth_artifacts::kernel::KernelMeta;
use hearth_artifacts::{setup, Manifest, Progress, SetupOptions, Status, Step};

#[test]
fn e2e_setup_provisions_everything_from_an_empty_cache_then_reuses_it() {
    let agent = std::env::var("HEARTH_AGENT").expect(
        "HEARTH_AGENT must name the static hearth-agent binary (scripts/test.sh builds it)",
    );
    let cache = tempfile::Builder::new()
        .prefix("hearth-setup-test-")
        .tempdir()
        .unwrap();
    let opts = SetupOptions::new(cache.path().join("cache"), agent.clone().into());
    let log = RefCell::new(Vec::<Progress>::new());
    let progress = |p: Progress| {
        if !matches!(p.status, Status::Info(_)) {
            eprintln!("{}: {:?}", p.step, p.status);
        }
        log.borrow_mut().push(p);
    };

    let manifest = setup(&opts, &progress).expect("setup");
    assert_eq!(Manifest::load(&opts.cache_dir).unwrap(), manifest);
    // Everything but the host's packages was built, not found.
    let built: Vec<Step> = log
        .borrow()
        .iter()
        .filter(|p| matches!(p.status, Status::Done { .. }))
        .map(|p| p.step.clone())
        .collect();
    for step in [
        Step::Kernel,
        Step::Initramfs,
        Step::Image("debian-12-minimal".into()),
        Step::Image("debian-12-python".into()),
    ] {
        assert!(built.contains(&step), "{step} was not built: {built:?}");
    }
    assert!(manifest.kernel.path.starts_with(cache.path()));
    assert!(!manifest.qemu.version.is_empty());
    assert!(manifest.kernel.path.is_file());
    assert!(manifest.kernel.release.ends_with("-cloud-amd64"));
    assert_eq!(manifest.images.len(), 2);
    for image in &manifest.images {
        assert_eq!(fs::metadata(&image.path).unwrap().len(), image.size_bytes);
        assert_eq!(image.version, "1");
        // The image's own apt sources take the point-release and security
        // updates, and it has room for an image build's installs.
        let sources = debugfs_cat(&image.path, "/etc/apt/sources.list");
        for suite in [
            "bookworm main",
            "bookworm-updates main",
            "bookworm-security main",
        ] {
            assert!(sources.contains(suite), "{}: {sources}", image.name);
        }
        let (free_inodes, free_bytes) = free_space(&image.path);
        assert!(
            free_inodes >= 200_000,
            "{}: {free_inodes} free inodes",
            image.name
        );
        assert!(
            free_bytes >= 1536 << 20,
            "{}: {free_bytes} bytes free",
            image.name
        );
    }

    // The initramfs holds the agent as /init and the kernel's modules.
    let cpio = read_newc(&fs::read(&manifest.initramfs.path).unwrap()).unwrap();
    let member = |name: &str| {
        cpio.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(member("init").data, fs::read(agent).unwrap());
    let kernel_dir = manifest.kernel.path.parent().unwrap();
    let meta: KernelMeta =
        serde_json::from_slice(&fs::read(kernel_dir.join("kernel.json")).unwrap()).unwrap();
    let order = String::from_utf8(member("lib/modules/hearth/load-order").data.clone()).unwrap();
    assert_eq!(order.lines().collect::<Vec<_>>(), meta.load_order);
    assert_eq!(
        &meta.load_order[..3],
        ["virtio_ring", "virtio", "virtio_mmio"]
    );
    for m in &meta.load_order {
        member(&format!("lib/modules/hearth/{m}.ko"));
    }

    // Second run: nothing to do.
    log.borrow_mut().clear();
    let again = setup(&opts, &progress).expect("second setup");
    assert_eq!(again, manifest);
    let statuses: Vec<(Step, Status)> = log
        .borrow()
        .iter()
        .map(|p| (p.step.clone(), p.status.clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (Step::HostPackages, Status::Cached),
            (Step::Kernel, Status::Cached),
            (Step::Initramfs, Status::Cached),
            (Step::Image("debian-12-minimal".into()), Status::Cached),
            (Step::Image("debian-12-python".into()), Status::Cached),
        ]
    );
}

/// A file of an ext4 image, read with e2fsprogs' debugfs (no mount).
fn debugfs_cat(image: &std::path::Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (free inodes, free bytes) of an ext4 image, from its superblock.
fn free_space(image: &std::path::Path) -> (u64, u64) {
    let out = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .expect("run dumpe2fs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs output"))
    };
    (
        field("Free inodes:"),
        field("Free blocks:") * field("Block size:"),
    )
}
