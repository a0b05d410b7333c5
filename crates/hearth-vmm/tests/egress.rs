//! End-to-end: a microVM with a network interface, its QEMU in an egress
//! network's namespace (`hearth-net`), configured through the agent as an
//! image builder would configure it.
//!
//! From inside the guest: a name resolves, and a TCP listener at a public
//! (TEST-NET-2) address in a namespace this test creates greets it; the
//! host's loopback (through slirp's gateway 10.0.2.2), the host's own
//! address and listeners in private and link-local namespaces stay out of
//! reach, though the host itself reaches every one of them. Only addresses
//! of this machine and of namespaces the test creates are targeted (and
//! the host's resolver).

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use hearth_net::testing::{
    greet as greet_within, primary_address, serve_greeting as serve, EgressGuard, Peer,
};
use hearth_net::{
    guest_attach_command, guest_mac, guest_release_command, guest_resolv_conf,
    guest_setup_commands, EgressConfig, EgressNet, GUEST_GATEWAY, GUEST_RESOLV_CONF_PATH,
};
use hearth_vmm::{MicroVm, NicSpec, SnapshotMode, VmBackend, VmError, VmId, VmState};
use serde_json::Value;
use support::*;

/// Bytes the public listener sends after its greeting (the bulk test).
const BULK_BYTES: usize = 16 << 20;

/// Run in the guest: resolve a name, try each target (connect, read the
/// greeting), then time connects to and a bulk read from the public
/// listener. Prints one JSON object. A refused destination shows in the
/// guest as a connection that times out: slirp connects without blocking
/// and does not pass the later error (the filter's rejection) on.
const PROBE: &str = r#"
import json, socket, sys, time
req = json.loads(sys.argv[1])
out = {}
def attempt(host, port):
    t = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.settimeout(3)
        data = s.recv(5)
        s.close()
        return {"ok": True, "data": data.decode(), "ms": (time.monotonic() - t) * 1e3}
    except Exception as e:
        return {"ok": False, "error": repr(e), "ms": (time.monotonic() - t) * 1e3}
try:
    out["resolved"] = sorted({a[4][0] for a in socket.getaddrinfo(req["name"], 80, socket.AF_INET, socket.SOCK_STREAM)})
except Exception as e:
    out["resolve_error"] = repr(e)
out["targets"] = {k: attempt(h, p) for k, (h, p) in req["targets"].items()}
h, p = req["bulk"]
lat = []
for _ in range(9):
    t = time.monotonic()
    s = socket.create_connection((h, p), timeout=5)
    lat.append((time.monotonic() - t) * 1e3)
    s.close()
lat.sort()
out["connect_ms_median"] = lat[4]
s = socket.create_connection((h, p), timeout=10)
t = time.monotonic()
n = 0
while True:
    b = s.recv(262144)
    if not b:
        break
    n += len(b)
out["bulk_bytes"] = n
out["bulk_s"] = time.monotonic() - t
print(json.dumps(out))
"#;

/// The host's median connect time and bulk read rate to `to`.
fn host_measure(to: SocketAddr) -> (f64, f64) {
    let mut lat: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            drop(TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
    let t = Instant::now();
    let mut n = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let k = s.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    (lat[4], n as f64 / t.elapsed().as_secs_f64() / 1e6)
}

#[tokio::test]
async fn e2e_a_guest_with_a_nic_reaches_public_addresses_and_dns_but_not_the_host_or_private_networks(
) {
    let env = env();
    let name = "hearth-test-vmm-egress";
    let _ = hearth_net::teardown(name);
    let mut cfg = EgressConfig::new(name);
    cfg.link_net = Ipv4Addr::new(10, 213, 251, 0);
    let egress = EgressNet::ensure(&cfg).expect("ensure the egress network");
    let _egress_guard = EgressGuard(name.into());
    // Created after `ensure`, as remote networks would be.
    let public = Peer::create(
        "hearth-test-vmm-pub",
        "hxv-pub",
        Ipv4Addr::new(198, 51, 100, 4),
    );
    let private = Peer::create(
        "hearth-test-vmm-priv",
        "hxv-priv",
        Ipv4Addr::new(10, 254, 0, 4),
    );
    let link_local = Peer::create(
        "hearth-test-vmm-ll",
        "hxv-ll",
        Ipv4Addr::new(169, 254, 10, 4),
    );
    let public_srv = serve(Some(&public.path()), public.addr, BULK_BYTES);
    let private_srv = serve(Some(&private.path()), private.addr, 0);
    let link_local_srv = serve(Some(&link_local.path()), link_local.addr, 0);
    let loopback_srv = serve(None, Ipv4Addr::LOCALHOST, 0);
    let primary_srv = serve(None, primary_address(), 0);
    for (what, srv) in [
        ("public", public_srv),
        ("private", private_srv),
        ("link-local", link_local_srv),
        ("loopback", loopback_srv),
        ("primary", primary_srv),
    ] {
        assert_eq!(
            greet(srv).unwrap_or_else(|e| panic!("control: the host cannot reach {what}: {e}")),
            "hello"
        );
    }

    let mut spec = env.boot_spec("egress-guest", Some("debian-12-python"));
    spec.nic = Some(NicSpec {
        netns: egress.netns_path().to_path_buf(),
    });
    let mut vm = env.backend.boot(spec).await.expect("boot with a NIC");
    // QEMU runs in the egress namespace.
    let qemu_net = std::fs::metadata(format!("/proc/{}/ns/net", vm.pid()))
        .unwrap()
        .ino();
    assert_eq!(
        qemu_net,
        std::fs::metadata(egress.netns_path()).unwrap().ino(),
        "QEMU is not in the egress namespace"
    );

    // Configure the guest as a builder would.
    configure(&vm, &egress, vec![]).await;

    let target = |a: SocketAddr| serde_json::json!([a.ip().to_string(), a.port()]);
    let request = serde_json::json!({
        "name": "deb.debian.org",
        "targets": {
            "public": target(public_srv),
            "host loopback via the slirp gateway":
                serde_json::json!([GUEST_GATEWAY.to_string(), loopback_srv.port()]),
            "host primary address": target(primary_srv),
            "host end of the egress veth":
                serde_json::json!([egress.host_addr().to_string(), primary_srv.port()]),
            "private peer": target(private_srv),
            "link-local peer": target(link_local_srv),
        },
        "bulk": target(public_srv),
    });
    let t0 = Instant::now();
    let out = vm
        .agent()
        .run(
            &["python3", "-c", PROBE, &request.to_string()],
            Duration::from_secs(180),
        )
        .await
        .expect("run the probe");
    assert!(
        out.status.success(),
        "probe: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let probe_secs = t0.elapsed().as_secs_f64();
    let report: Value = serde_json::from_str(out.stdout_str().trim()).expect("probe JSON");
    eprintln!("guest probe ({probe_secs:.1} s): {report:#}");

    let resolved = report["resolved"]
        .as_array()
        .unwrap_or_else(|| panic!("the guest could not resolve a name: {report}"));
    assert!(!resolved.is_empty(), "{report}");
    let t = &report["targets"];
    assert_eq!(t["public"]["ok"], true, "public peer unreachable: {report}");
    assert_eq!(t["public"]["data"], "hello", "{report}");
    for refused in [
        "host loopback via the slirp gateway",
        "host primary address",
        "host end of the egress veth",
        "private peer",
        "link-local peer",
    ] {
        assert_eq!(
            t[refused]["ok"], false,
            "{refused} is reachable from the guest: {report}"
        );
    }
    assert_eq!(
        report["bulk_bytes"].as_u64(),
        Some(5 + BULK_BYTES as u64),
        "{report}"
    );
    let guest_mb_s =
        report["bulk_bytes"].as_f64().unwrap() / report["bulk_s"].as_f64().unwrap() / 1e6;
    let (host_ms, host_mb_s) = host_measure(public_srv);
    eprintln!(
        "public peer: guest through slirp connect {:.2} ms (median of 9), {guest_mb_s:.1} MB/s; \
         host directly connect {host_ms:.3} ms, {host_mb_s:.0} MB/s",
        report["connect_ms_median"].as_f64().unwrap()
    );

    // Not snapshotted (its clones would all need the NIC), and refusing
    // leaves it running.
    match vm.snapshot(SnapshotMode::KeepRunning).await.map(drop) {
        Err(VmError::Invalid(msg)) => assert!(msg.contains("network interface"), "{msg}"),
        other => panic!("a microVM with a NIC was snapshotted: {other:?}"),
    }
    assert_eq!(vm.state(), VmState::Running);
    assert_eq!(sh(&vm, "echo still-here").await, "still-here");
    vm.terminate().await.expect("terminate");
    env.assert_no_leftovers();
}

/// Bring a clone's released network slot up as the control plane does.
async fn attach_and_configure(vm: &hearth_vmm::QemuVm, egress: &EgressNet) {
    configure(
        vm,
        egress,
        vec![guest_attach_command(&guest_mac(vm.id().as_str()))],
    )
    .await;
}

/// Run `first`, then the guest's network setup, and write its resolvers.
async fn configure(vm: &hearth_vmm::QemuVm, egress: &EgressNet, first: Vec<Vec<String>>) {
    let gcfg = egress.guest_config();
    let mut cmds = first;
    cmds.extend(guest_setup_commands(&gcfg));
    for argv in cmds {
        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = vm.agent().run(&words, T).await.expect("agent run");
        assert!(
            out.status.success(),
            "{argv:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    vm.agent()
        .write_file(
            GUEST_RESOLV_CONF_PATH,
            guest_resolv_conf(&gcfg).as_bytes(),
            Some(0o644),
            T,
        )
        .await
        .expect("write resolv.conf");
}

/// Connect from the guest and read the 5-byte greeting: "hello", or the
/// error.
async fn guest_greet(vm: &hearth_vmm::QemuVm, to: SocketAddr) -> String {
    let script = format!(
        "import socket\ntry:\n s=socket.create_connection(('{}',{}),timeout=3); s.settimeout(3); print(s.recv(5).decode())\nexcept Exception as e:\n print('error', repr(e))",
        to.ip(),
        to.port()
    );
    let out = vm
        .agent()
        .run(&["python3", "-c", &script], T)
        .await
        .expect("agent run");
    out.stdout_str().trim().to_string()
}

/// A snapshot taken with an unplugged, released network slot: a clone
/// without egress has no interface at all (and binding the slot itself
/// gets it one that reaches nothing); clones with egress bind the
/// slot, each with its own MAC, and reach a public peer but not the host;
/// egress keeps working across suspend and resume.
#[tokio::test]
async fn e2e_clones_of_a_snapshot_get_egress_only_when_asked_and_keep_it_across_suspend() {
    let env = env();
    let name = "hearth-test-vmm-egc";
    let _ = hearth_net::teardown(name);
    let mut cfg = EgressConfig::new(name);
    cfg.link_net = Ipv4Addr::new(10, 213, 252, 0);
    let egress = EgressNet::ensure(&cfg).expect("ensure the egress network");
    let _egress_guard = EgressGuard(name.into());
    let public = Peer::create(
        "hearth-test-vmm-pub2",
        "hxv-pub2",
        Ipv4Addr::new(198, 51, 100, 8),
    );
    let public_srv = serve(Some(&public.path()), public.addr, 0);
    let loopback_srv = serve(None, Ipv4Addr::LOCALHOST, 0);

    let mut spec = env.boot_spec("egc-src", Some("debian-12-python"));
    spec.nic_slot = true;
    let mut src = env
        .backend
        .boot(spec)
        .await
        .expect("boot with a network slot");
    assert_eq!(
        sh(&src, "ls /sys/class/net | tr '\\n' ' '").await,
        "eth0 lo"
    );
    let release = guest_release_command();
    let words: Vec<&str> = release.iter().map(String::as_str).collect();
    let out = src.agent().run(&words, T).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sh(&src, "ls /sys/class/net").await, "lo");
    let snap = src.snapshot(SnapshotMode::Consume).await.expect("snapshot");
    assert!(snap.record.machine.nic_slot);

    // Without egress: no interface, and nothing to bind that goes anywhere.
    let plain = env
        .backend
        .launch(
            &snap,
            hearth_vmm::LaunchSpec::ephemeral(VmId::new("egc-plain").unwrap()),
        )
        .await
        .expect("launch without a NIC");
    assert_eq!(sh(&plain, "ls /sys/class/net").await, "lo");
    assert!(guest_greet(&plain, public_srv).await.starts_with("error"));
    // A hostile guest binding the unplugged slot itself gets an interface
    // with no backend: nothing leaves.
    attach_and_configure(&plain, &egress).await;
    assert_eq!(
        sh(&plain, "ls /sys/class/net | tr '\\n' ' '").await,
        "eth0 lo"
    );
    let unplugged = guest_greet(&plain, public_srv).await;
    assert!(unplugged.starts_with("error"), "{unplugged}");

    // With egress: two clones at once, each its own MAC.
    let mut clones = Vec::new();
    for n in ["egc-a", "egc-b"] {
        let mut ls = hearth_vmm::LaunchSpec::ephemeral(VmId::new(n).unwrap());
        ls.nic = Some(NicSpec {
            netns: egress.netns_path().to_path_buf(),
        });
        ls.lifetime = hearth_vmm::Lifetime::Persistent;
        let vm = env
            .backend
            .launch(&snap, ls)
            .await
            .expect("launch with a NIC");
        attach_and_configure(&vm, &egress).await;
        clones.push(vm);
    }
    let macs: Vec<String> = futures_join(&clones, "cat /sys/class/net/eth0/address").await;
    assert_ne!(macs[0], macs[1], "clones share a MAC");
    for vm in &clones {
        assert_eq!(guest_greet(vm, public_srv).await, "hello");
        let to_host = SocketAddr::new(GUEST_GATEWAY.into(), loopback_srv.port());
        assert!(guest_greet(vm, to_host).await.starts_with("error"));
    }

    // Suspend and resume one: its network comes back with it.
    let a = clones.remove(0);
    let mac_a = macs[0].clone();
    let suspended = {
        let mut a = a;
        a.suspend().await.expect("suspend a microVM with a NIC")
    };
    assert!(suspended.record.nic.is_some());
    let a = env.backend.resume(suspended).await.expect("resume it");
    assert_eq!(sh(&a, "cat /sys/class/net/eth0/address").await, mac_a);
    assert_eq!(guest_greet(&a, public_srv).await, "hello");
    // Still no snapshots of it.
    let mut a = a;
    assert!(matches!(
        a.snapshot(SnapshotMode::KeepRunning).await,
        Err(VmError::Invalid(m)) if m.contains("network interface")
    ));
    a.terminate().await.unwrap();
    for vm in clones {
        vm.terminate().await.unwrap();
    }
    plain.terminate().await.unwrap();
    env.backend
        .delete_snapshot(&snap)
        .expect("delete the snapshot");
    env.assert_no_leftovers();
}

async fn futures_join(vms: &[hearth_vmm::QemuVm], script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for vm in vms {
        out.push(sh(vm, script).await);
    }
    out
}

/// Connect and read the greeting.
fn greet(to: SocketAddr) -> std::io::Result<String> {
    greet_within(to, Duration::from_secs(3))
}
