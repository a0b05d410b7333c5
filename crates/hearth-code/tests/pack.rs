//! pack_dir: what the CLI sends is what the server unpacks, byte for byte
//! the same each time, and what the server would refuse is refused early.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hearth_code::{pack_dir, unpack_zip, EntryKind, PackError, UnpackLimits};

fn no_ignore(_: &Path) -> bool {
    false
}

fn sample_tree(dir: &Path) {
    std::fs::write(
        dir.join("Dockerfile"),
        b"FROM debian-12-python\nCOPY . /app\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("app/static")).unwrap();
    std::fs::write(dir.join("app/main.py"), b"print('hi')\n").unwrap();
    std::fs::write(dir.join("app/run.sh"), b"#!/bin/sh\nexec python3 main.py\n").unwrap();
    std::fs::set_permissions(
        dir.join("app/run.sh"),
        std::fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    std::fs::create_dir(dir.join("empty")).unwrap();
    std::fs::write(dir.join("app/static/big.txt"), "line\n".repeat(50_000)).unwrap();
}

#[test]
fn a_packed_directory_unpacks_to_the_same_tree_with_exec_bits() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("code.zip");
    let packed = pack_dir(src.path(), &zip, &no_ignore).unwrap();
    assert_eq!(packed.file_count, 4);
    assert_eq!(packed.dir_count, 3);
    assert_eq!(packed.archive_bytes, std::fs::metadata(&zip).unwrap().len());

    let ctx = work.path().join("ctx");
    let summary = unpack_zip(&zip, &ctx, &UnpackLimits::default()).unwrap();
    assert_eq!(summary.total_bytes, packed.total_bytes);
    let listed: Vec<(&str, EntryKind, u32)> = summary
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.mode))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("Dockerfile", EntryKind::File, 0o644),
            ("app", EntryKind::Dir, 0o755),
            ("app/main.py", EntryKind::File, 0o644),
            ("app/run.sh", EntryKind::File, 0o755),
            ("app/static", EntryKind::Dir, 0o755),
            ("app/static/big.txt", EntryKind::File, 0o644),
            ("empty", EntryKind::Dir, 0o755),
        ]
    );
    for file in [
        "Dockerfile",
        "app/main.py",
        "app/run.sh",
        "app/static/big.txt",
    ] {
        assert_eq!(
            std::fs::read(src.path().join(file)).unwrap(),
            std::fs::read(ctx.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn packing_is_deterministic() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let work = tempfile::tempdir().unwrap();
    pack_dir(src.path(), &work.path().join("1.zip"), &no_ignore).unwrap();
    // Touch a file: timestamps are not recorded.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(src.path().join("app/main.py"), b"print('hi')\n").unwrap();
    pack_dir(src.path(), &work.path().join("2.zip"), &no_ignore).unwrap();
    assert_eq!(
        std::fs::read(work.path().join("1.zip")).unwrap(),
        std::fs::read(work.path().join("2.zip")).unwrap()
    );
}

#[test]
fn symlinks_are_refused_unless_ignored() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("app/passwd")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("code.zip");
    let err = pack_dir(src.path(), &zip, &no_ignore).unwrap_err();
    assert!(
        matches!(&err, PackError::Symlink { path } if path.as_str() == "\"app/passwd\""),
        "{err:?}"
    );
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!zip.exists(), "nothing written");

    // A link inside the tree is refused as well: none is followed.
    std::fs::remove_file(src.path().join("app/passwd")).unwrap();
    std::os::unix::fs::symlink("main.py", src.path().join("app/alias.py")).unwrap();
    let err = pack_dir(src.path(), &zip, &no_ignore).unwrap_err();
    assert!(matches!(err, PackError::Symlink { .. }), "{err:?}");

    let ignore = |p: &Path| p == Path::new("app/alias.py");
    pack_dir(src.path(), &zip, &ignore).unwrap();
}

#[test]
fn ignored_directories_are_not_descended_into() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    std::fs::create_dir(src.path().join(".git")).unwrap();
    std::fs::write(src.path().join(".git/HEAD"), b"ref").unwrap();
    std::os::unix::fs::symlink("/", src.path().join(".git/root")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("code.zip");
    let ignore = |p: &Path| p.starts_with(".git");
    let packed = pack_dir(src.path(), &zip, &ignore).unwrap();
    assert_eq!(packed.file_count, 4);
    let summary = unpack_zip(&zip, &work.path().join("ctx"), &UnpackLimits::default()).unwrap();
    assert!(summary.entries.iter().all(|e| !e.path.starts_with(".git")));
}

#[test]
fn special_files_bad_names_and_an_output_inside_the_tree_are_refused() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("code.zip");

    let status = std::process::Command::new("mkfifo")
        .arg(src.path().join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = pack_dir(src.path(), &zip, &no_ignore).unwrap_err();
    assert!(matches!(err, PackError::SpecialFile { .. }), "{err:?}");
    std::fs::remove_file(src.path().join("pipe")).unwrap();

    std::fs::write(src.path().join("a\\b"), b"x").unwrap();
    let err = pack_dir(src.path(), &zip, &no_ignore).unwrap_err();
    assert!(matches!(err, PackError::BadName { .. }), "{err:?}");
    std::fs::remove_file(src.path().join("a\\b")).unwrap();

    let err = pack_dir(src.path(), &src.path().join("self.zip"), &no_ignore).unwrap_err();
    assert!(matches!(err, PackError::OutputInsideDir), "{err:?}");

    std::fs::write(&zip, b"existing").unwrap();
    let err = pack_dir(src.path(), &zip, &no_ignore).unwrap_err();
    assert!(matches!(err, PackError::OutputExists), "{err:?}");
    assert_eq!(std::fs::read(&zip).unwrap(), b"existing");
}
