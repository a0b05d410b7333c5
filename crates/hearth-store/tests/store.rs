//! Black-box tests of the store through the `Store` trait, on a real SQLite
//! file in a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use hearth_store::*;
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in_dir(dir.path()).unwrap();
    Fixture { _dir: dir, store }
}

fn account(store: &dyn Store, name: &str) -> AccountId {
    store
        .create_account(&AccountName::new(name).unwrap(), false)
        .unwrap()
        .account_id
}

fn new_image(account: &AccountId, name: &str, created_at_secs: i64) -> NewImage {
    let image_id = ids::new_image_id();
    NewImage {
        arn: format!("arn:aws:lambda:us-east-1:{account}:microvm-image:{image_id}"),
        image_id,
        name: name.to_owned(),
        state: "CREATING".into(),
        created_at_secs,
        doc: json!({ "name": name, "latestActiveImageVersion": null }),
        tags: BTreeMap::new(),
    }
}

fn new_version(created_at_secs: i64) -> NewImageVersion {
    NewImageVersion {
        state: "PENDING".into(),
        status: "INACTIVE".into(),
        created_at_secs,
        doc: json!({ "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-python" }),
    }
}

fn new_microvm(image_arn: &str, version: &str, created_at_secs: i64) -> NewMicrovm {
    NewMicrovm {
        microvm_id: ids::new_microvm_id(),
        image_arn: image_arn.to_owned(),
        image_version: version.to_owned(),
        state: "PENDING".into(),
        created_at_secs,
        doc: json!({ "maximumDurationInSeconds": 3600, "idlePolicy": { "maxIdleDurationSeconds": 60 } }),
    }
}

fn update(state: &str, doc: serde_json::Value, at: i64) -> StateUpdate {
    StateUpdate {
        state: state.into(),
        doc,
        updated_at_secs: at,
        expected_state: None,
    }
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T>, kind: ResourceKind) {
    match r {
        Err(StoreError::NotFound { kind: k, .. }) => assert_eq!(k, kind),
        other => panic!("expected NotFound({kind:?}), got {other:?}"),
    }
}

/// Reads every page of a list, asserting the page sizes.
fn drain<T>(
    mut next_page: impl FnMut(&PageRequest) -> Page<T>,
    limit: u32,
) -> (Vec<T>, Vec<usize>) {
    let mut req = PageRequest::first(limit);
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = next_page(&req);
        sizes.push(page.items.len());
        all.extend(page.items);
        match page.next {
            Some(c) => req = PageRequest::after(limit, c),
            None => return (all, sizes),
        }
        assert!(sizes.len() < 100, "pagination does not end");
    }
}

// ------------------------------------------------------------------ accounts

#[test]
fn accounts_round_trip() {
    let f = fixture();
    let name = AccountName::new("alice.dev-1_x").unwrap();
    let a = f.store.create_account(&name, true).unwrap();
    assert_eq!(a.account_id.as_str().len(), 12);
    assert!(a.is_admin);
    assert!(a.created_at_secs > 1_600_000_000);
    assert_eq!(f.store.get_account(&a.account_id).unwrap(), a);
    assert_eq!(f.store.get_account_by_name("alice.dev-1_x").unwrap(), a);
    assert_not_found(f.store.get_account_by_name("bob"), ResourceKind::Account);
    assert_not_found(
        f.store
            .get_account(&AccountId::new("000000000000").unwrap()),
        ResourceKind::Account,
    );

    match f.store.create_account(&name, false) {
        Err(StoreError::Conflict(ConflictKind::NameTaken { kind, name: n })) => {
            assert_eq!(kind, ResourceKind::Account);
            assert_eq!(n, "alice.dev-1_x");
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }

    let b = f
        .store
        .create_account(&AccountName::new("bob").unwrap(), false)
        .unwrap();
    assert_ne!(a.account_id, b.account_id);
    let listed = f.store.list_accounts(&PageRequest::first(50)).unwrap();
    assert_eq!(listed.items.len(), 2);
    assert!(listed.next.is_none());
    assert!(listed.items.contains(&a) && listed.items.contains(&b));
}

// ---------------------------------------------------------------- access keys

#[test]
fn access_keys_create_list_revoke() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let b = account(&f.store, "bob");

    let k1 = f.store.create_access_key(&a).unwrap();
    let k2 = f.store.create_access_key(&a).unwrap();
    let kb = f.store.create_access_key(&b).unwrap();
    assert!(ids::is_access_key_id(&k1.key.access_key_id));
    assert_eq!(k1.secret_access_key.expose().len(), 40);
    assert_ne!(k1.secret_access_key, k2.secret_access_key);
    assert_ne!(k1.key.access_key_id, k2.key.access_key_id);
    assert_eq!(k1.key.account_id, a);
    assert!(k1.key.revoked_at_secs.is_none());

    let (owner, secret) = f.store.secret_for(&k1.key.access_key_id).unwrap().unwrap();
    assert_eq!(owner, a);
    assert_eq!(secret, k1.secret_access_key);
    let (owner, _) = f.store.secret_for(&kb.key.access_key_id).unwrap().unwrap();
    assert_eq!(owner, b);
    assert!(f
        .store
        .secret_for("AKIA0000000000000000")
        .unwrap()
        .is_none());

    let listed = f.store.list_access_keys(&a).unwrap();
    let ids: BTreeSet<_> = listed.iter().map(|k| k.access_key_id.clone()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([k1.key.access_key_id.clone(), k2.key.access_key_id.clone()])
    );

    // Another account cannot revoke the key.
    assert_not_found(
        f.store.revoke_access_key(&b, &k1.key.access_key_id),
        ResourceKind::AccessKey,
    );
    assert!(f.store.secret_for(&k1.key.access_key_id).unwrap().is_some());

    let revoked = f
        .store
        .revoke_access_key(&a, &k1.key.access_key_id)
        .unwrap();
    let at = revoked.revoked_at_secs.expect("revoked");
    assert!(f.store.secret_for(&k1.key.access_key_id).unwrap().is_none());
    assert!(f.store.secret_for(&k2.key.access_key_id).unwrap().is_some());
    // Revoking again is idempotent and keeps the first time.
    let again = f
        .store
        .revoke_access_key(&a, &k1.key.access_key_id)
        .unwrap();
    assert_eq!(again.revoked_at_secs, Some(at));
    {
        // Make the first revocation visibly old, then revoke once more.
        let raw = rusqlite::Connection::open(f.store.path()).unwrap();
        raw.execute(
            "UPDATE access_keys SET revoked_at = 12345 WHERE access_key_id = ?1",
            [&k1.key.access_key_id],
        )
        .unwrap();
    }
    let again = f
        .store
        .revoke_access_key(&a, &k1.key.access_key_id)
        .unwrap();
    assert_eq!(again.revoked_at_secs, Some(12345));
    let at = 12345;
    let listed = f.store.list_access_keys(&a).unwrap();
    assert_eq!(listed.len(), 2, "revoked keys stay listed");
    assert!(listed
        .iter()
        .any(|k| k.access_key_id == k1.key.access_key_id && k.revoked_at_secs == Some(at)));

    assert_not_found(
        f.store
            .create_access_key(&AccountId::new("999999999999").unwrap()),
        ResourceKind::Account,
    );
}

// -------------------------------------------------------------------- images

#[test]
fn images_round_trip() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let mut new = new_image(&a, "flask-app", 1000);
    new.tags = BTreeMap::from([("team".to_owned(), "web".to_owned())]);
    let img = f.store.create_image(&a, &new).unwrap();
    assert_eq!(img.image_id, new.image_id);
    assert_eq!(img.updated_at_secs, 1000);
    assert_eq!(f.store.get_image(&a, &new.image_id).unwrap(), img);
    assert_eq!(f.store.get_image_by_arn(&a, &new.arn).unwrap(), img);
    assert_eq!(f.store.get_image_by_name(&a, "flask-app").unwrap(), img);
    assert_eq!(f.store.list_tags(&a, &new.arn).unwrap(), new.tags);

    let doc = json!({ "name": "flask-app", "latestActiveImageVersion": "1" });
    let updated = f
        .store
        .update_image(&a, &img.image_id, &update("CREATED", doc.clone(), 1005))
        .unwrap();
    assert_eq!(updated.state, "CREATED");
    assert_eq!(updated.doc, doc);
    assert_eq!(updated.updated_at_secs, 1005);
    assert_eq!(updated.created_at_secs, 1000);
    assert_eq!(f.store.get_image(&a, &img.image_id).unwrap(), updated);

    // Conditional update.
    let mut cond = update("UPDATING", doc.clone(), 1010);
    cond.expected_state = Some("CREATING".into());
    match f.store.update_image(&a, &img.image_id, &cond) {
        Err(StoreError::Conflict(ConflictKind::StateMismatch {
            expected, found, ..
        })) => {
            assert_eq!(expected, "CREATING");
            assert_eq!(found, "CREATED");
        }
        other => panic!("expected StateMismatch, got {other:?}"),
    }
    assert_eq!(
        f.store.get_image(&a, &img.image_id).unwrap().state,
        "CREATED"
    );
    cond.expected_state = Some("CREATED".into());
    assert_eq!(
        f.store
            .update_image(&a, &img.image_id, &cond)
            .unwrap()
            .state,
        "UPDATING"
    );

    // Name filter (contains, case-sensitive).
    f.store
        .create_image(&a, &new_image(&a, "other", 1001))
        .unwrap();
    let filtered = |s: &str| {
        f.store
            .list_images(
                &a,
                &ImageFilter {
                    name_contains: Some(s.into()),
                },
                &PageRequest::first(50),
            )
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(filtered("lask"), vec!["flask-app"]);
    assert_eq!(filtered("FLASK"), Vec::<String>::new());
    assert_eq!(filtered("-"), vec!["flask-app"]);
    assert_eq!(filtered("%"), Vec::<String>::new(), "no LIKE wildcards");
    let all = f
        .store
        .list_images(&a, &ImageFilter::default(), &PageRequest::first(50))
        .unwrap();
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items[0].name, "flask-app", "ordered by created_at");

    // Delete takes versions, builds and the ARN's tags with it.
    let v = f
        .store
        .create_image_version(&a, &img.image_id, &new_version(1002))
        .unwrap();
    f.store
        .create_build(
            &a,
            &NewBuild {
                image_id: img.image_id.clone(),
                version: v.version.clone(),
                build_id: ids::new_build_id(),
                state: "PENDING".into(),
                created_at_secs: 1002,
                doc: json!({}),
            },
        )
        .unwrap();
    f.store.delete_image(&a, &img.image_id).unwrap();
    assert_not_found(f.store.get_image(&a, &img.image_id), ResourceKind::Image);
    assert_not_found(
        f.store.get_image_version(&a, &img.image_id, "1"),
        ResourceKind::ImageVersion,
    );
    assert!(f.store.list_tags(&a, &new.arn).unwrap().is_empty());
    assert!(f
        .store
        .list_builds_all_accounts(&[], &PageRequest::first(50))
        .unwrap()
        .items
        .is_empty());
    assert_not_found(f.store.delete_image(&a, &img.image_id), ResourceKind::Image);
    // The name is free again.
    f.store
        .create_image(&a, &new_image(&a, "flask-app", 1100))
        .unwrap();
}

#[test]
fn image_names_are_unique_per_account() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let b = account(&f.store, "bob");
    f.store.create_image(&a, &new_image(&a, "app", 1)).unwrap();
    match f.store.create_image(&a, &new_image(&a, "app", 2)) {
        Err(StoreError::Conflict(ConflictKind::NameTaken { kind, name })) => {
            assert_eq!(kind, ResourceKind::Image);
            assert_eq!(name, "app");
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }
    // Same name in another account is fine.
    f.store.create_image(&b, &new_image(&b, "app", 3)).unwrap();
    assert_eq!(
        f.store
            .list_images(&a, &ImageFilter::default(), &PageRequest::first(50))
            .unwrap()
            .items
            .len(),
        1
    );

    // A duplicate id is AlreadyExists, not NameTaken.
    let first = new_image(&a, "x1", 4);
    f.store.create_image(&a, &first).unwrap();
    let mut dup = new_image(&a, "x2", 5);
    dup.image_id = first.image_id.clone();
    assert!(matches!(
        f.store.create_image(&a, &dup),
        Err(StoreError::Conflict(ConflictKind::AlreadyExists {
            kind: ResourceKind::Image,
            ..
        }))
    ));
    // Failed creates leave nothing behind (the tag insert rolled back too).
    assert_not_found(f.store.get_image_by_name(&a, "x2"), ResourceKind::Image);
}

// ------------------------------------------------------------ image versions

#[test]
fn image_versions_round_trip() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let img = f.store.create_image(&a, &new_image(&a, "app", 10)).unwrap();
    let v1 = f
        .store
        .create_image_version(&a, &img.image_id, &new_version(11))
        .unwrap();
    let v2 = f
        .store
        .create_image_version(&a, &img.image_id, &new_version(12))
        .unwrap();
    assert_eq!(v1.version, "1");
    assert_eq!(v2.version, "2");
    assert_eq!(
        f.store.get_image_version(&a, &img.image_id, "1").unwrap(),
        v1
    );
    for bad in ["01", "0", "x", "", "3"] {
        assert_not_found(
            f.store.get_image_version(&a, &img.image_id, bad),
            ResourceKind::ImageVersion,
        );
    }

    let upd = VersionUpdate {
        state: "SUCCESSFUL".into(),
        status: "ACTIVE".into(),
        doc: json!({ "imageVersion": "1" }),
        updated_at_secs: 20,
        expected_state: Some("PENDING".into()),
    };
    let got = f
        .store
        .update_image_version(&a, &img.image_id, "1", &upd)
        .unwrap();
    assert_eq!(
        (got.state.as_str(), got.status.as_str()),
        ("SUCCESSFUL", "ACTIVE")
    );
    assert_eq!(got.created_at_secs, 11);
    assert_eq!(
        f.store.get_image_version(&a, &img.image_id, "1").unwrap(),
        got
    );
    assert!(matches!(
        f.store.update_image_version(&a, &img.image_id, "1", &upd),
        Err(StoreError::Conflict(ConflictKind::StateMismatch { .. }))
    ));

    let listed = f
        .store
        .list_image_versions(&a, &img.image_id, &PageRequest::first(50))
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        vec!["1", "2"]
    );

    f.store
        .delete_image_version(&a, &img.image_id, "2")
        .unwrap();
    assert_not_found(
        f.store.delete_image_version(&a, &img.image_id, "2"),
        ResourceKind::ImageVersion,
    );
    // Numbers are never reused.
    let v3 = f
        .store
        .create_image_version(&a, &img.image_id, &new_version(13))
        .unwrap();
    assert_eq!(v3.version, "3");

    assert_not_found(
        f.store
            .create_image_version(&a, "img-nope", &new_version(1)),
        ResourceKind::Image,
    );
    assert_not_found(
        f.store
            .list_image_versions(&a, "img-nope", &PageRequest::first(10)),
        ResourceKind::Image,
    );
}

#[test]
fn version_numbers_allocate_sequentially_under_concurrency() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let img = f.store.create_image(&a, &new_image(&a, "app", 1)).unwrap();
    let store = Arc::new(f.store);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            let (a, image_id) = (a.clone(), img.image_id.clone());
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        store
                            .create_image_version(&a, &image_id, &new_version(100 + t * 10 + i))
                            .unwrap()
                            .version
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|v| v.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=80).collect::<Vec<_>>());
}

#[test]
fn version_numbers_allocate_sequentially_across_connections() {
    // Separate SqliteStore instances on one file behave like separate
    // processes: atomicity must come from SQLite, not from our mutex.
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open_in_dir(dir.path()).unwrap();
    let a = account(&first, "alice");
    let img = first.create_image(&a, &new_image(&a, "app", 1)).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = SqliteStore::open_in_dir(dir.path()).unwrap();
            let (a, image_id) = (a.clone(), img.image_id.clone());
            std::thread::spawn(move || {
                (0..15)
                    .map(|_| {
                        store
                            .create_image_version(&a, &image_id, &new_version(5))
                            .unwrap()
                            .version
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|v| v.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=60).collect::<Vec<_>>());
}

// -------------------------------------------------------------------- builds

#[test]
fn builds_round_trip_and_filters() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let img = f.store.create_image(&a, &new_image(&a, "app", 1)).unwrap();
    let v = f
        .store
        .create_image_version(&a, &img.image_id, &new_version(2))
        .unwrap();
    let mk = |id: &str, chipset: &str, at: i64| NewBuild {
        image_id: img.image_id.clone(),
        version: v.version.clone(),
        build_id: id.to_owned(),
        state: "PENDING".into(),
        created_at_secs: at,
        doc: json!({ "architecture": "x86_64", "chipset": chipset, "chipsetGeneration": "1" }),
    };
    let b1 = f.store.create_build(&a, &mk("bld-1", "intel", 3)).unwrap();
    let b2 = f.store.create_build(&a, &mk("bld-2", "amd", 4)).unwrap();
    assert_eq!(b1.version, "1");
    assert_eq!(
        f.store.get_build(&a, &img.image_id, "1", "bld-1").unwrap(),
        b1
    );
    assert!(matches!(
        f.store.create_build(&a, &mk("bld-1", "intel", 5)),
        Err(StoreError::Conflict(ConflictKind::AlreadyExists {
            kind: ResourceKind::Build,
            ..
        }))
    ));
    assert_not_found(
        f.store.create_build(
            &a,
            &NewBuild {
                version: "7".into(),
                ..mk("bld-9", "intel", 5)
            },
        ),
        ResourceKind::ImageVersion,
    );

    let list = |filter: BuildFilter| {
        f.store
            .list_builds(&a, &img.image_id, "1", &filter, &PageRequest::first(50))
            .unwrap()
            .items
            .into_iter()
            .map(|b| b.build_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(list(BuildFilter::default()), vec!["bld-1", "bld-2"]);
    assert_eq!(
        list(BuildFilter {
            chipset: Some("amd".into()),
            ..Default::default()
        }),
        vec!["bld-2"]
    );
    assert_eq!(
        list(BuildFilter {
            architecture: Some("x86_64".into()),
            chipset_generation: Some("1".into()),
            ..Default::default()
        }),
        vec!["bld-1", "bld-2"]
    );
    assert!(list(BuildFilter {
        architecture: Some("arm64".into()),
        ..Default::default()
    })
    .is_empty());
    assert_not_found(
        f.store.list_builds(
            &a,
            &img.image_id,
            "9",
            &BuildFilter::default(),
            &PageRequest::first(5),
        ),
        ResourceKind::ImageVersion,
    );

    let done = f
        .store
        .update_build(
            &a,
            &img.image_id,
            "1",
            "bld-2",
            &update(
                "FAILED",
                json!({ "stateReason": "Dockerfile RUN failed" }),
                9,
            ),
        )
        .unwrap();
    assert_eq!(done.state, "FAILED");
    assert_eq!(done.created_at_secs, b2.created_at_secs);
    assert_eq!(
        f.store.get_build(&a, &img.image_id, "1", "bld-2").unwrap(),
        done
    );

    let pending = f
        .store
        .list_builds_all_accounts(&["PENDING".into()], &PageRequest::first(50))
        .unwrap();
    assert_eq!(pending.items, vec![b1.clone()]);

    f.store
        .delete_build(&a, &img.image_id, "1", "bld-1")
        .unwrap();
    assert_not_found(
        f.store.get_build(&a, &img.image_id, "1", "bld-1"),
        ResourceKind::Build,
    );
    // Deleting the version deletes its builds.
    f.store
        .delete_image_version(&a, &img.image_id, "1")
        .unwrap();
    assert_not_found(
        f.store.get_build(&a, &img.image_id, "1", "bld-2"),
        ResourceKind::Build,
    );
}

// ------------------------------------------------------------------ microvms

#[test]
fn microvms_round_trip_filters_and_counts() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let arn1 = "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-python";
    let arn2 = "arn:aws:lambda:us-east-1:111111111111:microvm-image:img-x";
    let m1 = f
        .store
        .create_microvm(&a, &new_microvm(arn1, "1", 10))
        .unwrap();
    let m2 = f
        .store
        .create_microvm(&a, &new_microvm(arn1, "2", 11))
        .unwrap();
    let m3 = f
        .store
        .create_microvm(&a, &new_microvm(arn2, "1", 12))
        .unwrap();
    assert_eq!(f.store.get_microvm(&a, &m1.microvm_id).unwrap(), m1);

    let mut dup = new_microvm(arn1, "1", 13);
    dup.microvm_id = m1.microvm_id.clone();
    assert!(matches!(
        f.store.create_microvm(&a, &dup),
        Err(StoreError::Conflict(ConflictKind::AlreadyExists {
            kind: ResourceKind::Microvm,
            ..
        }))
    ));

    let running = f
        .store
        .update_microvm(
            &a,
            &m2.microvm_id,
            &update("RUNNING", json!({ "endpoint": "x.localhost" }), 20),
        )
        .unwrap();
    assert_eq!(running.state, "RUNNING");
    assert_eq!(f.store.get_microvm(&a, &m2.microvm_id).unwrap(), running);

    let list_ids = |filter: MicrovmFilter| {
        f.store
            .list_microvms(&a, &filter, &PageRequest::first(50))
            .unwrap()
            .items
            .into_iter()
            .map(|m| m.microvm_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list_ids(MicrovmFilter::default()),
        vec![
            m1.microvm_id.clone(),
            m2.microvm_id.clone(),
            m3.microvm_id.clone()
        ]
    );
    assert_eq!(
        list_ids(MicrovmFilter {
            image_arn: Some(arn1.into()),
            ..Default::default()
        }),
        vec![m1.microvm_id.clone(), m2.microvm_id.clone()]
    );
    assert_eq!(
        list_ids(MicrovmFilter {
            image_arn: Some(arn1.into()),
            image_version: Some("1".into()),
            ..Default::default()
        }),
        vec![m1.microvm_id.clone()]
    );
    assert_eq!(
        list_ids(MicrovmFilter {
            states: vec!["RUNNING".into(), "SUSPENDED".into()],
            ..Default::default()
        }),
        vec![m2.microvm_id.clone()]
    );
    assert_eq!(f.store.count_microvms(&a, &[]).unwrap(), 3);
    assert_eq!(f.store.count_microvms(&a, &["PENDING".into()]).unwrap(), 2);
    let all_pending = f
        .store
        .list_microvms_all_accounts(&["PENDING".into()], &PageRequest::first(50))
        .unwrap();
    assert_eq!(all_pending.items, vec![m1.clone(), m3.clone()]);

    f.store.delete_microvm(&a, &m1.microvm_id).unwrap();
    assert_not_found(
        f.store.get_microvm(&a, &m1.microvm_id),
        ResourceKind::Microvm,
    );
    assert_not_found(
        f.store.delete_microvm(&a, &m1.microvm_id),
        ResourceKind::Microvm,
    );
    assert_eq!(f.store.count_microvms(&a, &[]).unwrap(), 2);
}

// ---------------------------------------------------------------------- tags

#[test]
fn tags_put_list_remove() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let arn = "arn:aws:lambda:us-east-1:123456789012:microvm-image:img-1";
    assert!(f.store.list_tags(&a, arn).unwrap().is_empty());
    f.store
        .put_tags(
            &a,
            arn,
            &BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            50,
        )
        .unwrap()
        .unwrap();
    f.store
        .put_tags(
            &a,
            arn,
            &BTreeMap::from([("b".into(), "two".into()), ("c".into(), "".into())]),
            50,
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        f.store.list_tags(&a, arn).unwrap(),
        BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "two".into()),
            ("c".into(), "".into())
        ])
    );
    f.store
        .remove_tags(&a, arn, &["a".into(), "zzz".into()])
        .unwrap();
    assert_eq!(
        f.store.list_tags(&a, arn).unwrap(),
        BTreeMap::from([("b".into(), "two".into()), ("c".into(), "".into())])
    );
    assert!(f.store.list_tags(&a, "arn:other").unwrap().is_empty());
}

// ----------------------------------------------------------------- isolation

#[test]
fn accounts_are_isolated() {
    let f = fixture();
    let s: &dyn Store = &f.store;
    let a = account(s, "alice");
    let b = account(s, "bob");

    let img_new = new_image(&a, "secret-app", 1);
    let img = s.create_image(&a, &img_new).unwrap();
    let v = s
        .create_image_version(&a, &img.image_id, &new_version(2))
        .unwrap();
    let build = s
        .create_build(
            &a,
            &NewBuild {
                image_id: img.image_id.clone(),
                version: v.version.clone(),
                build_id: ids::new_build_id(),
                state: "PENDING".into(),
                created_at_secs: 3,
                doc: json!({}),
            },
        )
        .unwrap();
    let mvm = s
        .create_microvm(&a, &new_microvm(&img.arn, &v.version, 4))
        .unwrap();
    s.put_tags(
        &a,
        &img.arn,
        &BTreeMap::from([("k".into(), "v".into())]),
        50,
    )
    .unwrap()
    .unwrap();

    // Reads.
    assert_not_found(s.get_image(&b, &img.image_id), ResourceKind::Image);
    assert_not_found(s.get_image_by_arn(&b, &img.arn), ResourceKind::Image);
    assert_not_found(s.get_image_by_name(&b, "secret-app"), ResourceKind::Image);
    assert_not_found(
        s.get_image_version(&b, &img.image_id, "1"),
        ResourceKind::ImageVersion,
    );
    assert_not_found(
        s.get_build(&b, &img.image_id, "1", &build.build_id),
        ResourceKind::Build,
    );
    assert_not_found(s.get_microvm(&b, &mvm.microvm_id), ResourceKind::Microvm);
    assert!(s.list_tags(&b, &img.arn).unwrap().is_empty());

    // Lists.
    let p = PageRequest::first(50);
    assert!(s
        .list_images(&b, &ImageFilter::default(), &p)
        .unwrap()
        .items
        .is_empty());
    assert_not_found(
        s.list_image_versions(&b, &img.image_id, &p),
        ResourceKind::Image,
    );
    assert_not_found(
        s.list_builds(&b, &img.image_id, "1", &BuildFilter::default(), &p),
        ResourceKind::ImageVersion,
    );
    assert!(s
        .list_microvms(&b, &MicrovmFilter::default(), &p)
        .unwrap()
        .items
        .is_empty());
    assert!(s
        .list_microvms(
            &b,
            &MicrovmFilter {
                image_arn: Some(img.arn.clone()),
                ..Default::default()
            },
            &p
        )
        .unwrap()
        .items
        .is_empty());
    assert_eq!(s.count_microvms(&b, &[]).unwrap(), 0);
    assert!(s.list_access_keys(&b).unwrap().is_empty());

    // Writes through another account's ids.
    let upd = update("DELETED", json!({}), 9);
    assert_not_found(s.update_image(&b, &img.image_id, &upd), ResourceKind::Image);
    assert_not_found(
        s.update_image_version(
            &b,
            &img.image_id,
            "1",
            &VersionUpdate {
                state: "FAILED".into(),
                status: "INACTIVE".into(),
                doc: json!({}),
                updated_at_secs: 9,
                expected_state: None,
            },
        ),
        ResourceKind::ImageVersion,
    );
    assert_not_found(
        s.update_build(&b, &img.image_id, "1", &build.build_id, &upd),
        ResourceKind::Build,
    );
    assert_not_found(
        s.update_microvm(&b, &mvm.microvm_id, &upd),
        ResourceKind::Microvm,
    );
    assert_not_found(
        s.create_image_version(&b, &img.image_id, &new_version(9)),
        ResourceKind::Image,
    );
    assert_not_found(
        s.create_build(
            &b,
            &NewBuild {
                image_id: img.image_id.clone(),
                version: "1".into(),
                build_id: ids::new_build_id(),
                state: "PENDING".into(),
                created_at_secs: 9,
                doc: json!({}),
            },
        ),
        ResourceKind::ImageVersion,
    );
    s.remove_tags(&b, &img.arn, &["k".into()]).unwrap();
    s.put_tags(
        &b,
        &img.arn,
        &BTreeMap::from([("k".into(), "evil".into())]),
        50,
    )
    .unwrap()
    .unwrap();
    assert_not_found(
        s.delete_build(&b, &img.image_id, "1", &build.build_id),
        ResourceKind::Build,
    );
    assert_not_found(
        s.delete_image_version(&b, &img.image_id, "1"),
        ResourceKind::ImageVersion,
    );
    assert_not_found(s.delete_microvm(&b, &mvm.microvm_id), ResourceKind::Microvm);
    assert_not_found(s.delete_image(&b, &img.image_id), ResourceKind::Image);

    // Nothing of A's changed.
    assert_eq!(s.get_image(&a, &img.image_id).unwrap(), img);
    assert_eq!(s.get_image_version(&a, &img.image_id, "1").unwrap(), v);
    assert_eq!(
        s.get_build(&a, &img.image_id, "1", &build.build_id)
            .unwrap(),
        build
    );
    assert_eq!(s.get_microvm(&a, &mvm.microvm_id).unwrap(), mvm);
    assert_eq!(
        s.list_tags(&a, &img.arn).unwrap(),
        BTreeMap::from([("k".into(), "v".into())])
    );
    // B's same-ARN tag is B's own.
    assert_eq!(
        s.list_tags(&b, &img.arn).unwrap(),
        BTreeMap::from([("k".into(), "evil".into())])
    );

    // Idempotency records are per account too.
    assert_eq!(
        s.idempotency_begin(&a, "RunMicrovm", "tok", "fp-a", 1)
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        s.idempotency_begin(&b, "RunMicrovm", "tok", "fp-b", 1)
            .unwrap(),
        IdempotencyBegin::Started
    );
}

// ---------------------------------------------------------------- pagination

#[test]
fn pagination_120_items_in_pages_of_50() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let other = account(&f.store, "bob");
    let mut expected = Vec::new();
    for i in 0..120 {
        // Several items share a second: the id breaks the tie.
        let m = f
            .store
            .create_microvm(&a, &new_microvm("arn:i", "1", 1000 + i / 7))
            .unwrap();
        expected.push(m.microvm_id);
        f.store
            .create_microvm(&other, &new_microvm("arn:i", "1", 1000 + i / 7))
            .unwrap();
    }
    let (items, sizes) = drain(
        |req| {
            f.store
                .list_microvms(&a, &MicrovmFilter::default(), req)
                .unwrap()
        },
        50,
    );
    assert_eq!(sizes, vec![50, 50, 20]);
    let got: Vec<_> = items.iter().map(|m| m.microvm_id.clone()).collect();
    let unique: BTreeSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 120, "no duplicates");
    let mut want = expected.clone();
    want.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want, "no gaps, nothing foreign");
    // Stable order: (created_at, id).
    for w in items.windows(2) {
        assert!(
            (w[0].created_at_secs, &w[0].microvm_id) < (w[1].created_at_secs, &w[1].microvm_id)
        );
    }
    // Same order when read again.
    let (again, _) = drain(
        |req| {
            f.store
                .list_microvms(&a, &MicrovmFilter::default(), req)
                .unwrap()
        },
        50,
    );
    assert_eq!(
        again.iter().map(|m| &m.microvm_id).collect::<Vec<_>>(),
        got.iter().collect::<Vec<_>>()
    );

    // Exactly a multiple of the limit: no trailing empty page.
    let (_, sizes) = drain(
        |req| {
            f.store
                .list_microvms(&a, &MicrovmFilter::default(), req)
                .unwrap()
        },
        40,
    );
    assert_eq!(sizes, vec![40, 40, 40]);

    // Limits are clamped.
    let page = f
        .store
        .list_microvms(&a, &MicrovmFilter::default(), &PageRequest::first(500))
        .unwrap();
    assert_eq!(page.items.len(), 50);
    let page = f
        .store
        .list_microvms(&a, &MicrovmFilter::default(), &PageRequest::first(0))
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

#[test]
fn pagination_is_stable_under_inserts() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let mut originals = BTreeSet::new();
    for i in 0..120 {
        let img = f
            .store
            .create_image(&a, &new_image(&a, &format!("img{i}"), 1000 + i / 10))
            .unwrap();
        originals.insert(img.image_id);
    }
    let mut seen = Vec::new();
    let mut req = PageRequest::first(50);
    let mut inserted = 0;
    loop {
        let page = f
            .store
            .list_images(&a, &ImageFilter::default(), &req)
            .unwrap();
        seen.extend(page.items.into_iter().map(|i| i.image_id));
        // Insert new items between page reads (newer timestamps, as a real
        // clock would give).
        for _ in 0..7 {
            f.store
                .create_image(
                    &a,
                    &new_image(&a, &format!("new{inserted}"), 5000 + inserted),
                )
                .unwrap();
            inserted += 1;
        }
        match page.next {
            Some(c) => req = PageRequest::after(50, c),
            None => break,
        }
        assert!(inserted < 1000);
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert!(originals.is_subset(&unique), "every original item seen");
    assert_eq!(
        &seen[..120].iter().cloned().collect::<BTreeSet<_>>(),
        &originals
    );
}

#[test]
fn version_and_account_lists_paginate() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let img = f.store.create_image(&a, &new_image(&a, "app", 1)).unwrap();
    for _ in 0..120 {
        // All in the same second: ordering falls to the version number,
        // numerically ("9" < "10").
        f.store
            .create_image_version(&a, &img.image_id, &new_version(7))
            .unwrap();
    }
    let (items, sizes) = drain(
        |req| f.store.list_image_versions(&a, &img.image_id, req).unwrap(),
        50,
    );
    assert_eq!(sizes, vec![50, 50, 20]);
    let got: Vec<String> = items.into_iter().map(|v| v.version).collect();
    let want: Vec<String> = (1..=120).map(|n: i64| n.to_string()).collect();
    assert_eq!(got, want);

    // A cursor from another list is rejected rather than misread.
    let bad = PageRequest::after(
        10,
        Cursor {
            created_at_secs: 7,
            id: "img-abc".into(),
        },
    );
    assert!(matches!(
        f.store.list_image_versions(&a, &img.image_id, &bad),
        Err(StoreError::InvalidArgument { .. })
    ));

    for i in 0..12 {
        account(&f.store, &format!("user{i}"));
    }
    let (accounts, sizes) = drain(|req| f.store.list_accounts(req).unwrap(), 5);
    assert_eq!(sizes, vec![5, 5, 3]);
    let names: BTreeSet<_> = accounts.iter().map(|a| a.name.to_string()).collect();
    assert_eq!(names.len(), 13);
}

#[test]
fn cursor_serde_round_trip() {
    let c = Cursor {
        created_at_secs: 1_700_000_000,
        id: "mvm-abc".into(),
    };
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), c);
}

// --------------------------------------------------------------- idempotency

#[test]
fn idempotency_records_expire_and_abandoned_ones_are_taken_over() {
    use hearth_store::{IDEMPOTENCY_IN_PROGRESS_TTL_SECS, IDEMPOTENCY_RECORD_TTL_SECS};
    let f = fixture();
    let a = account(&f.store, "alice");
    let fp = request_fingerprint(b"a");
    let other = request_fingerprint(b"b");
    let t0 = 1_000_000;
    // In progress: still so just before its lifetime, taken over after it.
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t", &fp, t0)
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        f.store
            .idempotency_begin(
                &a,
                "RunMicrovm",
                "t",
                &fp,
                t0 + IDEMPOTENCY_IN_PROGRESS_TTL_SECS
            )
            .unwrap(),
        IdempotencyBegin::InProgress {
            created_at_secs: t0
        }
    );
    let t1 = t0 + IDEMPOTENCY_IN_PROGRESS_TTL_SECS + 1;
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t", &fp, t1)
            .unwrap(),
        IdempotencyBegin::Started
    );
    // Completed: replayed (and a different request refused) for 24 hours,
    // then the token is free again, whatever the request.
    let resp = StoredResponse {
        status: 200,
        body: b"{}".to_vec(),
    };
    f.store
        .idempotency_complete(&a, "RunMicrovm", "t", &resp)
        .unwrap();
    let last = t1 + IDEMPOTENCY_RECORD_TTL_SECS;
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t", &fp, last)
            .unwrap(),
        IdempotencyBegin::Completed(resp)
    );
    assert!(matches!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t", &other, last)
            .unwrap(),
        IdempotencyBegin::Mismatch { .. }
    ));
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t", &other, last + 1)
            .unwrap(),
        IdempotencyBegin::Started
    );
}

#[test]
fn idempotency_begin_complete_replay_conflict() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let fp = request_fingerprint(br#"{"imageIdentifier":"img-1"}"#);
    let other_fp = request_fingerprint(br#"{"imageIdentifier":"img-2"}"#);

    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &fp, 100)
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &fp, 101)
            .unwrap(),
        IdempotencyBegin::InProgress {
            created_at_secs: 100
        }
    );
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &other_fp, 101)
            .unwrap(),
        IdempotencyBegin::Mismatch {
            fingerprint: fp.clone()
        }
    );
    // Same token, other operation: independent.
    assert_eq!(
        f.store
            .idempotency_begin(&a, "UpdateMicrovmImage", "t1", &other_fp, 101)
            .unwrap(),
        IdempotencyBegin::Started
    );

    let resp = StoredResponse {
        status: 200,
        body: br#"{"microvmId":"mvm-1"}"#.to_vec(),
    };
    f.store
        .idempotency_complete(&a, "RunMicrovm", "t1", &resp)
        .unwrap();
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &fp, 102)
            .unwrap(),
        IdempotencyBegin::Completed(resp.clone())
    );
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &other_fp, 102)
            .unwrap(),
        IdempotencyBegin::Mismatch {
            fingerprint: fp.clone()
        }
    );
    assert!(matches!(
        f.store.idempotency_complete(&a, "RunMicrovm", "t1", &resp),
        Err(StoreError::Conflict(ConflictKind::AlreadyExists { .. }))
    ));
    assert_not_found(
        f.store
            .idempotency_complete(&a, "RunMicrovm", "nope", &resp),
        ResourceKind::IdempotencyRecord,
    );
    // Abort does not touch a completed record.
    f.store.idempotency_abort(&a, "RunMicrovm", "t1").unwrap();
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &fp, 103)
            .unwrap(),
        IdempotencyBegin::Completed(resp.clone())
    );

    // Abort clears a started one so that a retry runs again.
    f.store
        .idempotency_begin(&a, "RunMicrovm", "t2", &fp, 200)
        .unwrap();
    f.store.idempotency_abort(&a, "RunMicrovm", "t2").unwrap();
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t2", &other_fp, 201)
            .unwrap(),
        IdempotencyBegin::Started
    );

    // Empty body (e.g. 204) round-trips.
    f.store
        .idempotency_complete(
            &a,
            "RunMicrovm",
            "t2",
            &StoredResponse {
                status: 204,
                body: vec![],
            },
        )
        .unwrap();
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t2", &other_fp, 202)
            .unwrap(),
        IdempotencyBegin::Completed(StoredResponse {
            status: 204,
            body: vec![]
        })
    );

    // Purge removes records created before the cutoff only.
    assert_eq!(f.store.purge_idempotency(150).unwrap(), 2); // t1 RunMicrovm + UpdateMicrovmImage
    assert_eq!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t1", &other_fp, 300)
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert!(matches!(
        f.store
            .idempotency_begin(&a, "RunMicrovm", "t2", &other_fp, 300)
            .unwrap(),
        IdempotencyBegin::Completed(_)
    ));
}

#[test]
fn idempotency_begin_is_atomic_under_concurrency() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let store = Arc::new(f.store);
    let started: usize = (0..8)
        .map(|_| {
            let (store, a) = (Arc::clone(&store), a.clone());
            std::thread::spawn(move || {
                store
                    .idempotency_begin(&a, "RunMicrovm", "race", "fp", 1)
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| *r == IdempotencyBegin::Started)
        .count();
    assert_eq!(started, 1);
}

#[test]
fn read_then_write_operations_are_atomic_across_connections() {
    // Separate stores on one file stand in for separate processes: checks
    // that read before they write (idempotency, name uniqueness) must hold
    // the write lock from the start of the transaction.
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open_in_dir(dir.path()).unwrap();
    let a = account(&first, "alice");
    let stores: Vec<_> = (0..6)
        .map(|_| SqliteStore::open_in_dir(dir.path()).unwrap())
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(stores.len()));
    let results: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let (a, barrier) = (a.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut started = 0;
                let mut created = 0;
                for round in 0..20 {
                    barrier.wait();
                    let token = format!("tok{round}");
                    if store
                        .idempotency_begin(&a, "RunMicrovm", &token, "fp", 1)
                        .unwrap()
                        == IdempotencyBegin::Started
                    {
                        started += 1;
                    }
                    match store.create_image(&a, &new_image(&a, &format!("n{round}"), 1)) {
                        Ok(_) => created += 1,
                        Err(StoreError::Conflict(ConflictKind::NameTaken { .. })) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (started, created)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results.iter().map(|r| r.0).sum::<usize>(), 20);
    assert_eq!(results.iter().map(|r| r.1).sum::<usize>(), 20);
}

// ---------------------------------------------------------- file & integrity

#[test]
fn database_file_is_private() {
    let f = fixture();
    let a = account(&f.store, "alice");
    f.store.create_access_key(&a).unwrap();
    let path = f.store.path().to_owned();
    assert_eq!(path.file_name().unwrap(), DB_FILE_NAME);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database mode {mode:o}");
    for suffix in ["-wal", "-shm"] {
        let side = format!("{}{suffix}", path.display());
        if let Ok(m) = std::fs::metadata(&side) {
            assert_eq!(m.permissions().mode() & 0o077, 0, "{side}");
        }
    }
}

#[test]
fn existing_file_with_wide_mode_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = SqliteStore::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn corrupt_json_is_reported_not_panicked() {
    let f = fixture();
    let a = account(&f.store, "alice");
    let img = f.store.create_image(&a, &new_image(&a, "app", 1)).unwrap();
    let m = f
        .store
        .create_microvm(&a, &new_microvm(&img.arn, "1", 2))
        .unwrap();
    {
        let raw = rusqlite::Connection::open(f.store.path()).unwrap();
        raw.execute(
            "UPDATE microvm_images SET doc = '{not json' WHERE image_id = ?1",
            [&img.image_id],
        )
        .unwrap();
        raw.execute(
            "UPDATE microvms SET doc = '' WHERE microvm_id = ?1",
            [&m.microvm_id],
        )
        .unwrap();
    }
    let err = f.store.get_image(&a, &img.image_id).unwrap_err();
    match &err {
        StoreError::Corrupt { detail } => assert!(detail.contains(&img.image_id), "{detail}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        f.store
            .list_images(&a, &ImageFilter::default(), &PageRequest::first(10)),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        f.store.get_microvm(&a, &m.microvm_id),
        Err(StoreError::Corrupt { .. })
    ));
    // The store stays usable.
    f.store.create_image(&a, &new_image(&a, "fine", 3)).unwrap();
    assert_eq!(f.store.get_image_by_name(&a, "fine").unwrap().name, "fine");
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, key, image_id) = {
        let s = SqliteStore::open_in_dir(dir.path()).unwrap();
        let a = account(&s, "alice");
        let key = s.create_access_key(&a).unwrap();
        let img = s.create_image(&a, &new_image(&a, "app", 1)).unwrap();
        s.create_image_version(&a, &img.image_id, &new_version(2))
            .unwrap();
        (a, key, img.image_id)
    };
    let s = SqliteStore::open_in_dir(dir.path()).unwrap();
    let (owner, secret) = s.secret_for(&key.key.access_key_id).unwrap().unwrap();
    assert_eq!(owner, a);
    assert_eq!(secret, key.secret_access_key);
    assert_eq!(s.get_image(&a, &image_id).unwrap().name, "app");
    // The version counter survived too.
    assert_eq!(
        s.create_image_version(&a, &image_id, &new_version(3))
            .unwrap()
            .version,
        "2"
    );
}

#[test]
fn store_is_usable_as_trait_object_across_threads() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Store>();
    let f = fixture();
    let store: Arc<dyn Store> = Arc::new(f.store);
    let a = account(store.as_ref(), "alice");
    let key = store.create_access_key(&a).unwrap();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (store, a, kid) = (Arc::clone(&store), a.clone(), key.key.access_key_id.clone());
            std::thread::spawn(move || {
                for j in 0..20 {
                    assert!(store.secret_for(&kid).unwrap().is_some());
                    store
                        .create_microvm(&a, &new_microvm("arn:x", "1", i * 100 + j))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.count_microvms(&a, &[]).unwrap(), 120);
}

/// The start-up listing of images crosses accounts and filters by state.
#[test]
fn images_of_every_account_are_listed_by_state() {
    let f = fixture();
    let (a, b) = (account(&f.store, "a"), account(&f.store, "b"));
    let ia = f.store.create_image(&a, &new_image(&a, "web", 1)).unwrap();
    let ib = f.store.create_image(&b, &new_image(&b, "api", 2)).unwrap();
    f.store
        .update_image(&b, &ib.image_id, &update("CREATED", json!({}), 3))
        .unwrap();
    let all = f
        .store
        .list_images_all_accounts(&[], &PageRequest::first(50))
        .unwrap();
    assert_eq!(all.items.len(), 2);
    let creating = f
        .store
        .list_images_all_accounts(
            &["CREATING".into(), "UPDATING".into()],
            &PageRequest::first(50),
        )
        .unwrap();
    assert_eq!(
        creating
            .items
            .iter()
            .map(|i| &i.image_id)
            .collect::<Vec<_>>(),
        vec![&ia.image_id]
    );
}
