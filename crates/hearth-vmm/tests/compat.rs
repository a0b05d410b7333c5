//! End-to-end: a snapshot taken while an agent of protocol 1 ran (the
//! agent as it was before protocol 2; `fixtures/agent-v1`) restores with
//! today's host, and its clones are driven in protocol 1.

mod support;

use std::path::Path;

use hearth_proto::{ExecRequest, PtySize};
use hearth_vmm::{AgentClientError, LaunchSpec, MicroVm, SnapshotMode, VmBackend, VmId};
use support::*;

const V1_AGENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/agent-v1/hearth-agent"
);
const V1_AGENT_SHA256: &str = "39bd548aefa27cd95d72f8ef8072605d69ca8f7dc22101b1349e86c95a389d66";

#[tokio::test]
async fn e2e_protocol_v1_snapshot_still_restores() {
    let env = env();
    let digest = {
        use std::process::Command;
        let out = Command::new("sha256sum").arg(V1_AGENT).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(digest, V1_AGENT_SHA256, "the fixture changed");
    let initramfs = env.state.path().join("v1.cpio");
    hearth_artifacts::initramfs::write_for_agent(Path::new(V1_AGENT), &env.manifest, &initramfs)
        .expect("initramfs with the protocol-1 agent");

    // Boot it: the host learns the version from its first frame.
    let mut spec = env.boot_spec("v1-src", Some("debian-12-minimal"));
    spec.initramfs = initramfs;
    let mut src = env
        .backend
        .boot(spec)
        .await
        .expect("boot a protocol-1 guest");
    assert_eq!(src.agent().version(), Some(1));
    start_counter(&src).await;
    let snap = src.snapshot(SnapshotMode::Consume).await.expect("snapshot");
    assert_eq!(snap.record.requirements.agent_protocol, 1);

    // Clones restore and speak protocol 1 with today's host.
    for name in ["v1-a", "v1-b"] {
        let clone = env
            .backend
            .launch(&snap, LaunchSpec::ephemeral(VmId::new(name).unwrap()))
            .await
            .expect("launch a protocol-1 clone");
        assert_eq!(clone.agent().version(), Some(1));
        assert_eq!(sh(&clone, "hostname").await, name);
        assert_eq!(sh(&clone, "cat /root/disk-file").await, "seed");
        let c1: u64 = sh(&clone, "cat /run/counter").await.parse().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let c2: u64 = sh(&clone, "cat /run/counter").await.parse().unwrap();
        assert!(c2 > c1, "the snapshot's process goes on counting");
        // Files, with version 1's explicit mode.
        clone
            .agent()
            .write_file("/root/from-host", b"v1 ok", None, T)
            .await
            .unwrap();
        assert_eq!(
            sh(
                &clone,
                "cat /root/from-host; echo; stat -c %a /root/from-host"
            )
            .await,
            "v1 ok\n644"
        );
        // What version 1 cannot do is refused before anything is sent.
        let err = clone
            .agent()
            .exec(
                ExecRequest {
                    argv: vec!["/bin/sh".into()],
                    pty: Some(PtySize { cols: 80, rows: 24 }),
                    ..Default::default()
                },
                T,
            )
            .await
            .err()
            .expect("PTY on protocol 1");
        assert!(matches!(err, AgentClientError::Unsupported(_)), "{err}");
        // Suspend and resume in protocol 1.
        let mut clone = clone;
        let suspended = clone.suspend().await.expect("suspend");
        let clone = env.backend.resume(suspended).await.expect("resume");
        assert_eq!(sh(&clone, "cat /root/from-host").await, "v1 ok");
        clone.terminate().await.unwrap();
    }
    env.backend.delete_snapshot(&snap).unwrap();
    env.assert_no_leftovers();
}
