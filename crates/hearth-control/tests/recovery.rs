//! Start-up recovery against a real SQLite store: whatever a previous
//! server left unfinished ends FAILED with a reason, never stuck.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_control::images::BuildSetup;
use hearth_control::ImageControl;
use hearth_store::{AccountName, NewBuild, NewImage, NewImageVersion, SqliteStore, Store};
use serde_json::json;

fn setup() -> (
    tempfile::TempDir,
    Arc<dyn Store>,
    ImageControl,
    hearth_store::AccountId,
) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_dir(dir.path()).unwrap());
    let acct = store
        .create_account(&AccountName::new("a").unwrap(), false)
        .unwrap()
        .account_id;
    let control = ImageControl::new(
        store.clone(),
        BuildSetup::without_engine(dir.path().to_path_buf(), "us-east-1".into()),
    );
    (dir, store, control, acct)
}

fn image(store: &dyn Store, acct: &hearth_store::AccountId, name: &str) -> String {
    image_in(store, acct, name, "CREATING")
}

fn image_in(store: &dyn Store, acct: &hearth_store::AccountId, name: &str, state: &str) -> String {
    let id = hearth_store::ids::new_image_id();
    store
        .create_image(
            acct,
            &NewImage {
                arn: format!("arn:aws:lambda:us-east-1:{acct}:microvm-image:{id}"),
                image_id: id.clone(),
                name: name.into(),
                state: state.into(),
                created_at_secs: 1,
                doc: json!({}),
                tags: BTreeMap::new(),
            },
        )
        .unwrap();
    id
}

fn version(store: &dyn Store, acct: &hearth_store::AccountId, image_id: &str) -> String {
    store
        .create_image_version(
            acct,
            image_id,
            &NewImageVersion {
                state: "PENDING".into(),
                status: "INACTIVE".into(),
                created_at_secs: 1,
                doc: json!({}),
            },
        )
        .unwrap()
        .version
}

#[test]
fn an_image_left_between_its_creation_writes_fails_with_its_version() {
    let (_d, store, control, acct) = setup();
    // The server ended after writing the image and its version, before the build.
    let img = image(store.as_ref(), &acct, "half-made");
    let v = version(store.as_ref(), &acct, &img);
    // And after writing only an image.
    let bare = image(store.as_ref(), &acct, "bare");
    assert_eq!(control.recover().unwrap(), 2);
    let i = store.get_image(&acct, &img).unwrap();
    assert_eq!(i.state, "CREATE_FAILED");
    assert_eq!(i.doc["latestFailedImageVersion"], "1");
    let ver = store.get_image_version(&acct, &img, &v).unwrap();
    assert_eq!(ver.state, "FAILED");
    assert!(ver.doc["stateReason"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert_eq!(
        store.get_image(&acct, &bare).unwrap().state,
        "CREATE_FAILED"
    );
    // A second start finds nothing left to end.
    assert_eq!(control.recover().unwrap(), 0);
}

#[test]
fn an_interrupted_build_fails_its_version_and_image() {
    let (_d, store, control, acct) = setup();
    let img = image(store.as_ref(), &acct, "web");
    let v = version(store.as_ref(), &acct, &img);
    store
        .create_build(
            &acct,
            &NewBuild {
                image_id: img.clone(),
                version: v.clone(),
                build_id: "bld-interrupted".into(),
                state: "IN_PROGRESS".into(),
                created_at_secs: 1,
                doc: json!({"architecture": "X86_64", "chipset": "INTEL", "chipsetGeneration": "g"}),
            },
        )
        .unwrap();
    assert_eq!(control.recover().unwrap(), 1);
    let b = store.get_build(&acct, &img, &v, "bld-interrupted").unwrap();
    assert_eq!(b.state, "FAILED");
    assert!(b.doc["stateReason"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert_eq!(
        store.get_image_version(&acct, &img, &v).unwrap().state,
        "FAILED"
    );
    assert_eq!(store.get_image(&acct, &img).unwrap().state, "CREATE_FAILED");
}

/// An image left DELETING (a microVM stood on its snapshot when it was
/// deleted) goes with its files once nothing stands on it (here: a server
/// without an engine, so no snapshot can); images in other states stay.
#[tokio::test]
async fn finish_deletions_removes_images_left_deleting_and_nothing_else() {
    let (d, store, control, acct) = setup();
    let deleting = image_in(&*store, &acct, "deleting", "DELETING");
    let created = image_in(&*store, &acct, "created", "CREATED");
    let files = d.path().join("images").join(&deleting);
    std::fs::create_dir_all(files.join("1")).unwrap();
    std::fs::write(files.join("1").join("disk.qcow2"), b"layer").unwrap();

    assert_eq!(control.finish_deletions().await.unwrap(), 1);
    assert!(
        store.get_image(&acct, &deleting).is_err(),
        "its records went"
    );
    assert!(!files.exists(), "its files went");
    assert_eq!(store.get_image(&acct, &created).unwrap().state, "CREATED");
    assert_eq!(control.finish_deletions().await.unwrap(), 0, "idempotent");
}
