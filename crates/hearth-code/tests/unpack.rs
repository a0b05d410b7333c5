//! unpack_zip against honest and hostile archives. Every refusal is checked
//! for its reason, the entry it names, and that nothing is left on disk.

mod support;

use std::os::unix::fs::PermissionsExt;

use hearth_code::{unpack_zip, ContextEntry, EntryKind, PathProblem, UnpackError, UnpackLimits};
use support::*;

/// Unpack `bytes` with `limits`; on refusal assert nothing was left behind.
fn unpack_bytes(
    bytes: &[u8],
    limits: &UnpackLimits,
) -> Result<hearth_code::ContextSummary, UnpackError> {
    let dest = Dest::new();
    std::fs::write(dest.zip(), bytes).unwrap();
    let result = unpack_zip(&dest.zip(), &dest.dir(), limits);
    if result.is_err() {
        assert_eq!(
            dest.leftovers(),
            Vec::<String>::new(),
            "a refused archive leaves nothing behind"
        );
    }
    result
}

fn refuse(items: &[Item<'_>]) -> UnpackError {
    unpack_bytes(&zip_bytes(items), &UnpackLimits::default()).unwrap_err()
}

const GOOD: Item<'static> = Item::File("Dockerfile", b"FROM debian-12-minimal\n");

#[test]
fn an_honest_archive_unpacks_with_modes_and_a_sorted_summary() {
    let dest = Dest::new();
    write_zip(
        &dest.zip(),
        &[
            Item::File("Dockerfile", b"FROM x\n"),
            Item::FileMode("bin/run.sh", b"#!/bin/sh\n", 0o755),
            Item::FileAttrs("bin/setuid", b"s", (0o104777) << 16),
            Item::DirMode("private/", 0o700),
            Item::Dir("empty/"),
            Item::Stored("./app/main.py", b"print('hi')\n"),
            Item::FileMode("secret.txt", b"k", 0o600),
            Item::Dir("./"),
        ],
    );
    let summary = unpack_zip(&dest.zip(), &dest.dir(), &UnpackLimits::default()).unwrap();
    let ctx = dest.dir();
    assert_eq!(std::fs::read(ctx.join("Dockerfile")).unwrap(), b"FROM x\n");
    assert_eq!(
        std::fs::read(ctx.join("app/main.py")).unwrap(),
        b"print('hi')\n"
    );
    let mode = |p: &str| {
        std::fs::symlink_metadata(ctx.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/run.sh"), 0o755, "the executable bit is kept");
    assert_eq!(
        mode("bin/setuid"),
        0o755,
        "setuid and world write are dropped"
    );
    assert_eq!(mode("Dockerfile"), 0o644);
    assert_eq!(mode("secret.txt"), 0o600);
    assert_eq!(mode("private"), 0o700);
    assert_eq!(mode("bin"), 0o755, "an implied directory");
    assert_eq!(mode(""), 0o700, "the context directory itself");

    let listed: Vec<(&str, EntryKind, u64, u32)> = summary
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.size_bytes, e.mode))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("Dockerfile", EntryKind::File, 7, 0o644),
            ("app", EntryKind::Dir, 0, 0o755),
            ("app/main.py", EntryKind::File, 12, 0o644),
            ("bin", EntryKind::Dir, 0, 0o755),
            ("bin/run.sh", EntryKind::File, 10, 0o755),
            ("bin/setuid", EntryKind::File, 1, 0o755),
            ("empty", EntryKind::Dir, 0, 0o755),
            ("private", EntryKind::Dir, 0, 0o700),
            ("secret.txt", EntryKind::File, 1, 0o600),
        ]
    );
    assert_eq!(summary.file_count, 5);
    assert_eq!(summary.dir_count, 4);
    assert_eq!(summary.total_bytes, 7 + 12 + 10 + 1 + 1);
}

#[test]
fn the_summary_round_trips_through_json() {
    let summary = unpack_bytes(
        &zip_bytes(&[GOOD, Item::Dir("d/")]),
        &UnpackLimits::default(),
    )
    .unwrap();
    let json = serde_json::to_string(&summary).unwrap();
    assert!(json.contains("\"kind\":\"file\""), "{json}");
    let back: hearth_code::ContextSummary = serde_json::from_str(&json).unwrap();
    assert_eq!(back, summary);
    assert_eq!(
        back.entries[1],
        ContextEntry {
            path: "d".into(),
            kind: EntryKind::Dir,
            size_bytes: 0,
            mode: 0o755
        }
    );
}

fn assert_unsafe(err: UnpackError, entry: &str, problem: PathProblem) {
    match &err {
        UnpackError::UnsafePath {
            entry: e,
            problem: p,
        } => {
            assert_eq!(e.as_str(), format!("{entry:?}"), "{err}");
            assert_eq!(p, &problem, "{err}");
        }
        other => panic!("expected UnsafePath for {entry:?}, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("{entry:?}")), "{err}");
}

#[test]
fn zip_slip_names_are_refused_after_good_entries_were_written() {
    // The writer stores names as given; a good entry first proves the
    // partly unpacked directory is removed.
    assert_unsafe(
        refuse(&[GOOD, Item::File("../x", b"x")]),
        "../x",
        PathProblem::ParentComponent,
    );
    assert_unsafe(
        refuse(&[GOOD, Item::File("a/../../x", b"x")]),
        "a/../../x",
        PathProblem::ParentComponent,
    );
    assert_unsafe(
        refuse(&[GOOD, Item::File("/etc/x", b"x")]),
        "/etc/x",
        PathProblem::Absolute,
    );
    assert_unsafe(
        refuse(&[GOOD, Item::File("C:/x", b"x")]),
        "C:/x",
        PathProblem::DrivePrefix,
    );
    assert_unsafe(
        refuse(&[GOOD, Item::File("..\\x", b"x")]),
        "..\\x",
        PathProblem::Backslash,
    );
    assert_unsafe(
        refuse(&[GOOD, Item::File("a\u{0}b", b"x")]),
        "a\u{0}b",
        PathProblem::ControlCharacter,
    );
    assert_unsafe(
        refuse(&[GOOD, Item::File("a\nb", b"x")]),
        "a\nb",
        PathProblem::ControlCharacter,
    );
}

#[test]
fn a_name_patched_to_escape_after_writing_is_refused() {
    // Names the writer might one day sanitise, patched in afterwards.
    let mut bytes = zip_bytes(&[GOOD, Item::File("__/__/etc/passwd", b"x")]);
    replace_all(&mut bytes, b"__/__/etc/passwd", b"../../etc/passwd");
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert_unsafe(err, "../../etc/passwd", PathProblem::ParentComponent);

    let mut bytes = zip_bytes(&[GOOD, Item::File("_etc_x", b"x")]);
    replace_all(&mut bytes, b"_etc_x", b"/etc/x");
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert_unsafe(err, "/etc/x", PathProblem::Absolute);
}

#[test]
fn path_length_and_depth_limits_are_enforced() {
    let deep = vec!["d"; 65].join("/");
    assert_unsafe(
        refuse(&[GOOD, Item::File(&deep, b"x")]),
        &deep,
        PathProblem::TooDeep {
            depth: 65,
            max_depth: 64,
        },
    );
    let long = vec!["n".repeat(200); 21].join("/");
    let err = refuse(&[GOOD, Item::File(&long, b"x")]);
    assert!(
        matches!(
            &err,
            UnpackError::UnsafePath {
                problem: PathProblem::TooLong {
                    max_bytes: 4096,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("..."),
        "a long name is shortened: {err}"
    );
}

#[test]
fn a_symlink_entry_is_refused() {
    let err = refuse(&[GOOD, Item::Symlink("link", "/etc/passwd")]);
    assert!(
        matches!(&err, UnpackError::Symlink { entry } if entry.as_str() == "\"link\""),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "entry \"link\" is a symbolic link; a build context cannot contain symbolic links"
    );
}

#[test]
fn a_symlink_mode_in_a_dos_made_archive_is_still_refused() {
    // Host system DOS (0) with S_IFLNK in the high bits: some unzip tools
    // honour the bits, so the server must too.
    let mut bytes = zip_bytes(&[GOOD, Item::File("link", b"/etc/passwd")]);
    let (_, central) = headers(&bytes);
    bytes[central[1] + 5] = 0; // version made by: host system DOS
    set_external_attributes(&mut bytes, 1, (0o120777) << 16);
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::Symlink { .. }), "{err:?}");
}

#[test]
fn devices_fifos_and_sockets_are_refused() {
    for (mode, kind) in [
        (0o010644, "named pipe"),
        (0o020644, "character device"),
        (0o060644, "block device"),
        (0o140644, "socket"),
    ] {
        let mut bytes = zip_bytes(&[GOOD, Item::File("dev", b"")]);
        set_external_attributes(&mut bytes, 1, mode << 16);
        let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::SpecialFile { entry, kind: k } if entry.as_str() == "\"dev\"" && *k == kind),
            "{mode:o}: {err:?}"
        );
    }
}

#[test]
fn duplicate_entries_are_refused_by_name() {
    let mut bytes = zip_bytes(&[
        GOOD,
        Item::File("a.txt", b"one"),
        Item::File("b.txt", b"two"),
    ]);
    replace_all(&mut bytes, b"b.txt", b"a.txt");
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::DuplicateEntry { entry } if entry.as_str() == "\"a.txt\""),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the archive has more than one entry named \"a.txt\""
    );

    // The same path spelled two ways.
    let err = refuse(&[GOOD, Item::File("a.txt", b"1"), Item::File("./a.txt", b"2")]);
    assert!(matches!(err, UnpackError::DuplicateEntry { .. }), "{err:?}");
    let err = refuse(&[GOOD, Item::Dir("d/"), Item::Dir("./d/")]);
    assert!(matches!(err, UnpackError::DuplicateEntry { .. }), "{err:?}");
}

#[test]
fn a_file_and_a_directory_at_one_path_are_refused() {
    let err = refuse(&[GOOD, Item::File("a", b"1"), Item::File("a/b", b"2")]);
    assert!(
        matches!(&err, UnpackError::Conflict { entry, other } if entry.as_str() == "\"a/b\"" && other.as_str() == "\"a\""),
        "{err:?}"
    );
    let err = refuse(&[GOOD, Item::File("a/b", b"2"), Item::File("a", b"1")]);
    assert!(
        matches!(err, UnpackError::FileOverDirectory { .. }),
        "{err:?}"
    );
    // An explicit directory entry after files inside it is fine.
    let summary = unpack_bytes(
        &zip_bytes(&[Item::File("a/b", b"2"), Item::DirMode("a/", 0o750)]),
        &UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(summary.entries[0].path, "a");
    assert_eq!(summary.entries[0].mode, 0o750);
}

#[test]
fn an_encrypted_entry_is_refused() {
    let mut bytes = zip_bytes(&[GOOD, Item::File("secret", b"data")]);
    set_flags(&mut bytes, 1, 0x0001);
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Encrypted { entry } if entry.as_str() == "\"secret\""),
        "{err:?}"
    );
    assert!(err.to_string().contains("encrypted"));
}

#[test]
fn an_unsupported_compression_method_is_refused() {
    let mut bytes = zip_bytes(&[GOOD, Item::Stored("data.bin", b"data")]);
    set_method(&mut bytes, 1, 12); // bzip2
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::UnsupportedCompression { entry, .. } if entry.as_str() == "\"data.bin\""),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("only stored and deflated"),
        "{err}"
    );
}

#[test]
fn a_zip_bomb_is_refused_by_its_ratio() {
    // 8 MiB of zeros deflate to a few KiB: far past 100:1.
    // (The bomb comes first: after other entries the whole-archive ratio
    // may trip in the same piece.)
    let zeros = vec![0u8; 8 << 20];
    let err = refuse(&[Item::File("bomb", &zeros), GOOD]);
    assert!(
        matches!(&err, UnpackError::EntryRatio { entry, max_ratio: 100 } if entry.as_str() == "\"bomb\""),
        "{err:?}"
    );
    // Below the 1 MiB floor, any ratio is fine.
    let small = vec![0u8; 512 << 10];
    unpack_bytes(
        &zip_bytes(&[Item::File("zeros", &small)]),
        &UnpackLimits::default(),
    )
    .unwrap();
}

#[test]
fn a_bomb_whose_header_lies_about_its_size_stops_at_the_declared_size() {
    // Declares 1000 bytes, inflates to 16 MiB: inflation stops at the
    // declared size instead of writing what the header hid.
    let zeros = vec![0u8; 16 << 20];
    let mut bytes = zip_bytes(&[GOOD, Item::File("liar", &zeros)]);
    set_uncompressed_size(&mut bytes, 1, 1000);
    let limits = UnpackLimits {
        max_ratio: u64::MAX,
        ..UnpackLimits::default()
    };
    let err = unpack_bytes(&bytes, &limits).unwrap_err();
    assert!(
        matches!(&err, UnpackError::EntryCorrupt { entry, .. } if entry.as_str() == "\"liar\""),
        "{err:?}"
    );
    assert!(err.to_string().contains("declared"), "{err}");
}

#[test]
fn total_inflated_bytes_are_bounded_even_with_honest_headers() {
    let data: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let limits = UnpackLimits {
        max_total_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let err = unpack_bytes(
        &zip_bytes(&[Item::File("a", &data), Item::File("b", &data)]),
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { max_bytes } if max_bytes == 1 << 20),
        "{err:?}"
    );
}

#[test]
fn the_whole_archive_ratio_is_bounded() {
    // Each entry stays under the per-entry floor, together they pass it.
    let zeros = vec![0u8; 900 << 10];
    let items: Vec<Item<'_>> = ["a", "b", "c"]
        .iter()
        .map(|n| Item::File(n, &zeros))
        .collect();
    let err = unpack_bytes(&zip_bytes(&items), &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::TotalRatio { max_ratio: 100 }),
        "{err:?}"
    );
}

#[test]
fn too_many_entries_are_refused_at_the_default_limit() {
    let names: Vec<String> = (0..20_001).map(|i| format!("f{i}")).collect();
    let items: Vec<Item<'_>> = names.iter().map(|n| Item::Stored(n, b"")).collect();
    let err = refuse(&items);
    assert!(
        matches!(
            err,
            UnpackError::TooManyEntries {
                count: 20_001,
                max: 20_000
            }
        ),
        "{err:?}"
    );
    // Exactly at the limit is fine.
    let at_limit = unpack_bytes(&zip_bytes(&items[..20_000]), &UnpackLimits::default()).unwrap();
    assert_eq!(at_limit.file_count, 20_000);
}

#[test]
fn entries_sharing_one_body_are_refused() {
    let mut bytes = zip_bytes(&[Item::File("a", b"same"), Item::File("b", b"same")]);
    share_local_header(&mut bytes, 1, 0);
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::OverlappingEntries), "{err:?}");
}

#[test]
fn a_local_header_that_disagrees_with_the_central_directory_is_refused() {
    // Central directory says "safe.txt", the local header "../x.txt".
    let mut bytes = zip_bytes(&[GOOD, Item::File("safe.txt", b"x")]);
    let (local, _) = headers(&bytes);
    let at = local[1] + 30;
    bytes[at..at + 8].copy_from_slice(b"../x.txt");
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::EntryUnreadable { entry, .. } if entry.as_str() == "\"safe.txt\""),
        "{err:?}"
    );
}

#[test]
fn a_corrupted_body_is_refused_by_its_checksum() {
    let mut bytes = zip_bytes(&[GOOD, Item::Stored("data", b"hello world")]);
    replace_all(&mut bytes, b"hello world", b"HELLO WORLD");
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::EntryCorrupt { .. }), "{err:?}");
}

#[test]
fn a_directory_entry_with_data_is_refused() {
    let mut bytes = zip_bytes(&[GOOD, Item::Stored("d_", b"payload")]);
    replace_all(&mut bytes, b"d_", b"d/");
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::InconsistentKind { entry } if entry.as_str() == "\"d/\""),
        "a name ending in / with a regular file's mode: {err:?}"
    );
    set_external_attributes(&mut bytes, 1, 0o040755 << 16);
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(&err, UnpackError::DirectoryWithData { size_bytes: 7, .. }),
        "{err:?}"
    );
}

#[test]
fn something_that_is_not_a_zip_is_refused() {
    let err = unpack_bytes(b"<html>not a zip</html>", &UnpackLimits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::NotAZip { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("the artifact is not a readable zip archive"));
}

#[test]
fn an_existing_destination_is_left_alone() {
    let dest = Dest::new();
    write_zip(&dest.zip(), &[GOOD]);
    std::fs::create_dir(dest.dir()).unwrap();
    std::fs::write(dest.dir().join("mine"), b"keep").unwrap();
    let err = unpack_zip(&dest.zip(), &dest.dir(), &UnpackLimits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::DestinationExists), "{err:?}");
    assert_eq!(std::fs::read(dest.dir().join("mine")).unwrap(), b"keep");
}

#[test]
fn error_messages_name_no_server_directory() {
    let dest = Dest::new();
    write_zip(&dest.zip(), &[GOOD, Item::File("../x", b"x")]);
    let err = unpack_zip(&dest.zip(), &dest.dir(), &UnpackLimits::default()).unwrap_err();
    let tmp = dest.tmp.path().to_string_lossy().into_owned();
    assert!(!err.to_string().contains(&tmp), "{err}");
    std::fs::create_dir(dest.dir()).unwrap();
    let err = unpack_zip(&dest.zip(), &dest.dir(), &UnpackLimits::default()).unwrap_err();
    assert!(!err.to_string().contains(&tmp), "{err}");
}

#[test]
fn the_entry_count_an_end_record_declares_is_checked_before_parsing() {
    // One real entry, an end record claiming 30,000: refused for the count
    // before the central directory is read into memory.
    let mut bytes = zip_bytes(&[GOOD]);
    let eocd = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    bytes[eocd + 8..eocd + 10].copy_from_slice(&30_000u16.to_le_bytes());
    bytes[eocd + 10..eocd + 12].copy_from_slice(&30_000u16.to_le_bytes());
    let err = unpack_bytes(&bytes, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::TooManyEntries {
                count: 30_000,
                max: 20_000
            }
        ),
        "{err:?}"
    );
}
