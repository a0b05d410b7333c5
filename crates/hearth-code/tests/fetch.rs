//! Fetching file:// and upload:// artifacts: what is copied, what is
//! refused at fetch time, and that a failed fetch leaves nothing behind.

use std::path::Path;

use hearth_code::{CodeError, FetchLimits, Fetcher, SourceConfig, Uploads};
use sha2::{Digest, Sha256};

fn fetcher(roots: &[&Path], data: &Path) -> Fetcher {
    Fetcher::new(
        SourceConfig {
            artifact_roots: roots.iter().map(|r| r.to_path_buf()).collect(),
            s3: None,
        },
        Uploads::new(data.join("uploads")),
    )
}

fn payload(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect()
}

#[tokio::test]
async fn a_file_artifact_is_copied_with_its_size_and_sha256() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let bytes = payload(300_000);
    let zip = root.path().join("app.zip");
    std::fs::write(&zip, &bytes).unwrap();
    let f = fetcher(&[root.path()], data.path());
    let source = f.parse(&format!("file://{}", zip.display())).unwrap();
    let dest = data.path().join("a.zip");
    let fetched = f
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap();
    assert_eq!(fetched.size_bytes, 300_000);
    assert_eq!(fetched.sha256_hex, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn an_artifact_over_the_limit_is_refused_and_removed() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let zip = root.path().join("big.zip");
    std::fs::write(&zip, payload(200_000)).unwrap();
    let f = fetcher(&[root.path()], data.path());
    let source = f.parse(&format!("file://{}", zip.display())).unwrap();
    let dest = data.path().join("a.zip");
    let err = f
        .fetch(
            &source,
            "111122223333",
            &dest,
            &FetchLimits {
                max_archive_bytes: 150_000,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodeError::TooLarge { max_bytes: 150_000 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the artifact is larger than the limit of 150000 bytes"
    );
    assert!(!dest.exists(), "a refused fetch leaves nothing behind");
    // Exactly at the limit is fine.
    f.fetch(
        &source,
        "111122223333",
        &dest,
        &FetchLimits {
            max_archive_bytes: 200_000,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_existing_destination_is_neither_overwritten_nor_removed() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let zip = root.path().join("app.zip");
    std::fs::write(&zip, b"new").unwrap();
    let f = fetcher(&[root.path()], data.path());
    let source = f.parse(&format!("file://{}", zip.display())).unwrap();
    let dest = data.path().join("a.zip");
    std::fs::write(&dest, b"old").unwrap();
    let err = f
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CodeError::DestinationExists), "{err:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_after_parsing_is_refused_at_fetch() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("apps")).unwrap();
    std::fs::write(root.path().join("apps/app.zip"), b"inside").unwrap();
    std::fs::write(outside.path().join("app.zip"), b"secret").unwrap();
    let f = fetcher(&[root.path()], data.path());
    let uri = format!("file://{}/apps/app.zip", root.path().display());
    let source = f.parse(&uri).unwrap();

    // Between parse and fetch, apps/ becomes a link out of the root.
    std::fs::rename(root.path().join("apps"), root.path().join("old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("apps")).unwrap();
    let dest = data.path().join("a.zip");
    let err = f
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CodeError::FileOutsideRoots { .. }), "{err:?}");
    assert!(!dest.exists());

    // The file itself replaced by a link: not followed.
    std::fs::remove_file(root.path().join("apps")).unwrap();
    std::fs::rename(root.path().join("old"), root.path().join("apps")).unwrap();
    let source = f.parse(&uri).unwrap();
    std::fs::remove_file(root.path().join("apps/app.zip")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("app.zip"),
        root.path().join("apps/app.zip"),
    )
    .unwrap();
    let err = f
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CodeError::FileNotRegular { .. }), "{err:?}");
    assert!(!dest.exists());
}

#[tokio::test]
async fn an_upload_is_fetched_only_by_its_account() {
    let data = tempfile::tempdir().unwrap();
    let f = fetcher(&[], data.path());
    let tmp = data.path().join("incoming");
    let bytes = payload(70_000);
    std::fs::write(&tmp, &bytes).unwrap();
    let id = f
        .uploads()
        .put_from_file("111122223333", &tmp)
        .await
        .unwrap();
    let source = f.parse(&format!("upload://{id}")).unwrap();

    let dest = data.path().join("a.zip");
    let fetched = f
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap();
    assert_eq!(fetched.sha256_hex, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    let other = data.path().join("b.zip");
    let err = f
        .fetch(&source, "444455556666", &other, &FetchLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CodeError::UploadNotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("upload {id} was not found"));
    assert!(!other.exists());
}
