//! The real thing, against the real cache: kernel download, initramfs with
//! the real agent, mmdebstrap images. `scripts/test.sh` runs `hearth setup`
//! first, so here every step should come back cached; on a machine where it
//! did not, this test does the full provisioning (minutes, root, registry
//! access). Needs `HEARTH_AGENT` (the static agent; scripts/test.sh sets it).

use std::cell::RefCell;
use std::fs;

use hearth_artifacts::cpio::read_newc;
use hearth_artifacts::kernel::KernelMeta;
use hearth_artifacts::{cache_dir, setup, Manifest, Progress, SetupOptions, Status, Step};

#[test]
fn e2e_setup_provisions_everything_then_reuses_it() {
    let agent = std::env::var("HEARTH_AGENT").expect(
        "HEARTH_AGENT must name the static hearth-agent binary (scripts/test.sh builds it)",
    );
    let opts = SetupOptions::new(cache_dir(), agent.clone().into());
    let log = RefCell::new(Vec::<Progress>::new());
    let progress = |p: Progress| {
        if !matches!(p.status, Status::Info(_)) {
            eprintln!("{}: {:?}", p.step, p.status);
        }
        log.borrow_mut().push(p);
    };

    let manifest = setup(&opts, &progress).expect("setup");
    assert_eq!(Manifest::load(&opts.cache_dir).unwrap(), manifest);
    assert!(manifest.kernel.path.is_file());
    assert!(manifest.kernel.release.ends_with("-cloud-amd64"));
    assert_eq!(manifest.images.len(), 2);
    for image in &manifest.images {
        assert_eq!(fs::metadata(&image.path).unwrap().len(), image.size_bytes);
        assert_eq!(image.version, "1");
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
