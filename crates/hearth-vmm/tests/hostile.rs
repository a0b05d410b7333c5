//! End-to-end: a hostile guest on the agent channel.
//!
//! The guest here is not the Hearth agent but a busybox `/init` that speaks
//! just enough protocol to look healthy (one valid `Hello` frame) and then
//! writes garbage or an oversized frame header into the agent port. The host
//! must mark that microVM failed, stay responsive, and leave every other
//! microVM alone.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use hearth_artifacts::cpio::{write_newc, Entry};
use hearth_proto::{encode_frame, GuestMessage, Hello, MAGIC, PROTO_VERSION};
use hearth_vmm::{
    AgentClientError, BootSpec, Lifetime, MicroVm, VmBackend, VmError, VmId, VmState,
};
use support::*;

/// Octal escapes for busybox printf.
fn octal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

/// Build an initramfs whose init writes `before` (after a valid hello when
/// `hello` is set) into the agent port, then idles.
fn hostile_initramfs(env: &Env, name: &str, hello: bool, payload: &[u8]) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (Debian busybox-static) is needed; `hearth setup` installs it");
    let modules_dir = env.manifest.kernel.path.parent().unwrap().join("modules");
    let mut entries = vec![
        Entry::dir("bin", 0o755),
        Entry::dir("dev", 0o755),
        Entry::dir("proc", 0o755),
        Entry::dir("sys", 0o755),
        Entry::dir("lib", 0o755),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::file("bin/busybox", 0o755, busybox),
    ];
    let mods = ["virtio_ring", "virtio", "virtio_mmio", "virtio_console"];
    for m in mods {
        let data = std::fs::read(modules_dir.join(format!("{m}.ko")))
            .expect("kernel module from hearth setup");
        entries.push(Entry::file(&format!("lib/{m}.ko"), 0o644, data));
    }
    let hello_frame = encode_frame(&GuestMessage::Hello(Hello {
        proto_version: PROTO_VERSION,
        agent_version: "hostile".into(),
        kernel_release: "x".into(),
        uptime_ms: 0,
        capabilities: vec![],
    }))
    .unwrap();
    let script = format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in {mods}; do $B insmod /lib/$m.ko; done
port=
for i in 1 2 3 4 5 6 7 8 9 10; do
  for p in /sys/class/virtio-ports/*; do
    [ "$($B cat $p/name 2>/dev/null)" = hearth.agent ] && port=/dev/$($B basename $p)
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  $B sleep 0.5
done
exec 3<>$port
{hello}
$B sleep 2
$B printf '{payload}' >&3
while :; do $B sleep 1000; done
"#,
        mods = mods.join(" "),
        hello = if hello {
            format!("$B printf '{}' >&3", octal(&hello_frame))
        } else {
            String::new()
        },
        payload = octal(payload),
    );
    entries.push(Entry::file("init", 0o755, script.into_bytes()));
    let path = env.state.path().join(format!("{name}.cpio"));
    write_newc(&entries, std::fs::File::create(&path).unwrap()).unwrap();
    path
}

fn hostile_spec(env: &Env, id: &str, initramfs: PathBuf) -> BootSpec {
    BootSpec {
        id: VmId::new(id).unwrap(),
        kernel: env.manifest.kernel.path.clone(),
        initramfs,
        root_disk: None,
        root_overlays: vec![],
        nic: None,
        nic_slot: false,
        mem_size_mib: 128,
        vcpu_count: 1,
        extra_cmdline: vec![],
        lifetime: Lifetime::Process,
    }
}

async fn wait_failed(vm: &mut hearth_vmm::QemuVm) -> String {
    for _ in 0..200 {
        if let VmState::Failed { reason } = vm.state() {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} was never marked failed; console: {}",
        vm.id(),
        vm.console_tail()
    );
}

#[tokio::test]
async fn e2e_hostile_guest_is_isolated_and_marked_failed() {
    let env = env();
    let healthy = env
        .backend
        .boot(env.boot_spec("healthy", Some("debian-12-minimal")))
        .await
        .expect("boot healthy");

    let mut garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    garbage.extend(std::iter::repeat_n(0xA5u8, 4096));
    let mut oversized = MAGIC.to_vec();
    oversized.extend([PROTO_VERSION, 0, 0xff, 0xff, 0xff, 0x7f]);
    oversized.extend(std::iter::repeat_n(0u8, 1024));

    for (name, payload, expect) in [
        ("garbage", garbage, "magic"),
        ("oversized", oversized, "exceeds"),
    ] {
        let initramfs = hostile_initramfs(&env, name, true, &payload);
        let mut vm = env
            .backend
            .boot(hostile_spec(&env, &format!("hostile-{name}"), initramfs))
            .await
            .expect("boot");
        let reason = wait_failed(&mut vm).await;
        assert!(reason.contains(expect), "{name}: {reason}");
        // Requests fail fast instead of hanging on the broken channel.
        let t = std::time::Instant::now();
        let err = vm.agent().ping(Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(err, AgentClientError::ChannelFailed(_)), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1));
        // Nothing else is affected.
        let out = healthy
            .agent()
            .run(&["uname", "-n"], T)
            .await
            .expect("healthy VM still answers");
        assert_eq!(out.stdout_str().trim(), "healthy");
        let pid = vm.pid();
        vm.terminate().await.unwrap();
        assert!(!pid_alive(pid));
    }

    // Garbage before any hello: the boot itself fails, cleanly.
    let initramfs = hostile_initramfs(&env, "no-hello", false, b"\xff\xfe garbage");
    let err = env
        .backend
        .boot(hostile_spec(&env, "hostile-nohello", initramfs))
        .await
        .err()
        .expect("boot must fail");
    assert!(
        matches!(
            err,
            VmError::Agent {
                source: AgentClientError::ChannelFailed(_),
                ..
            }
        ),
        "unexpected error: {err}"
    );
    assert!(!env.state.path().join("vms/hostile-nohello").exists());

    healthy.terminate().await.unwrap();
    env.assert_no_leftovers();
}
