//! The microVM side of the control plane against a real SQLite store, on a
//! server without an engine: what recovery and requests do with rows whose
//! microVMs the engine does not have. (With an engine, the end-to-end tests
//! of the `hearth` crate cover them.)

use std::sync::Arc;

use hearth_control::{ControlError, MicrovmControl, MicrovmSetup};
use hearth_store::{AccountId, AccountName, NewMicrovm, SqliteStore, Store};
use serde_json::json;

fn setup() -> (tempfile::TempDir, Arc<dyn Store>, MicrovmControl, AccountId) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_dir(dir.path()).unwrap());
    let acct = store
        .create_account(&AccountName::new("a").unwrap(), false)
        .unwrap()
        .account_id;
    let control = MicrovmControl::new(store.clone(), MicrovmSetup::without_engine());
    (dir, store, control, acct)
}

/// A row as `run` writes it, in `state`.
fn row(store: &dyn Store, acct: &AccountId, id: &str, state: &str) {
    store
        .create_microvm(
            acct,
            &NewMicrovm {
                microvm_id: id.into(),
                image_arn: format!("arn:aws:lambda:us-east-1:{acct}:microvm-image:img-1"),
                image_version: "1".into(),
                state: state.into(),
                created_at_secs: 100,
                doc: json!({
                    "endpoint": format!("{id}.localhost:9801"),
                    "maximumDurationInSeconds": 28800,
                    "startedAt": 100,
                    "hearth": {
                        "version": 1,
                        "imageId": "img-1",
                        "snapshotId": "snap-0123456789ab",
                        "hooks": {"port": 8080},
                        "lastActivityAt": 100
                    }
                }),
            },
        )
        .unwrap();
}

#[tokio::test]
async fn recovery_without_the_engine_ends_every_live_microvm_lost_and_leaves_ended_ones() {
    let (_d, store, control, acct) = setup();
    for (id, state) in [
        ("mvm-running", "RUNNING"),
        ("mvm-suspended", "SUSPENDED"),
        ("mvm-suspending", "SUSPENDING"),
        ("mvm-ending", "TERMINATING"),
    ] {
        row(store.as_ref(), &acct, id, state);
    }
    row(store.as_ref(), &acct, "mvm-done", "TERMINATED");
    let report = control.recover().await.unwrap();
    assert_eq!(report.lost, 4, "{report:?}");
    for id in [
        "mvm-running",
        "mvm-suspended",
        "mvm-suspending",
        "mvm-ending",
    ] {
        let m = store.get_microvm(&acct, id).unwrap();
        assert_eq!(m.state, "TERMINATED", "{id}");
        assert!(m.doc["terminatedAt"].as_i64().is_some(), "{id}: {}", m.doc);
        assert!(
            m.doc["stateReason"]
                .as_str()
                .is_some_and(|r| r.contains("lost")),
            "{id}: {}",
            m.doc
        );
    }
    let done = store.get_microvm(&acct, "mvm-done").unwrap();
    assert_eq!(
        done.updated_at_secs, done.created_at_secs,
        "an ended row was rewritten"
    );
}

#[tokio::test]
async fn a_request_for_a_live_row_no_task_owns_records_it_lost_and_conflicts() {
    let (_d, store, control, acct) = setup();
    row(store.as_ref(), &acct, "mvm-orphan", "RUNNING");
    let e = control.suspend(&acct, "mvm-orphan").await.unwrap_err();
    assert!(
        matches!(&e, ControlError::MicrovmConflict { id, reason } if id == "mvm-orphan" && reason.contains("TERMINATED")),
        "{e:?}"
    );
    assert_eq!(
        store.get_microvm(&acct, "mvm-orphan").unwrap().state,
        "TERMINATED"
    );
    // Another account's request does not find it at all.
    let other = store
        .create_account(&AccountName::new("b").unwrap(), false)
        .unwrap()
        .account_id;
    let e = control.terminate(&other, "mvm-orphan").await.unwrap_err();
    assert!(matches!(e, ControlError::Store(_)), "{e:?}");
}

#[tokio::test]
async fn the_proxy_cannot_open_a_stream_to_a_microvm_without_a_task() {
    let (_d, store, control, acct) = setup();
    row(store.as_ref(), &acct, "mvm-x", "RUNNING");
    let e = control.connect(&acct, "mvm-x", 8080).await.err().unwrap();
    assert!(
        matches!(
            e,
            hearth_control::ConnectError::Refused(hearth_control::OpenRefusal::NotFound(_))
        ),
        "{e:?}"
    );
}
