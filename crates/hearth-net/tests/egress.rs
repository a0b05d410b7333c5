//! The egress network on the real host, without a VM: a thread that joins
//! the egress namespace stands in for QEMU's slirp (which opens its
//! sockets there in just the same way).
//!
//! Only addresses of this machine and of namespaces these tests create are
//! targeted (and the host's resolver, for one DNS query). Needs root, `ip`
//! and `nft`: without them the tests fail, they never skip. Everything
//! they create is removed by guards, also when an assertion fails.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_net::testing::{
    greet as greet_within, ip, primary_address, serve_greeting as serve, EgressGuard, Peer,
};
use hearth_net::{in_netns, EgressConfig, EgressNet};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `greet` from inside the egress namespace.
fn greet_from(egress: &EgressNet, to: SocketAddr) -> std::io::Result<String> {
    in_netns(egress.netns_path(), || greet(to)).expect("enter the egress namespace")
}

/// A refused connection fails at once (the filter rejects; nothing times
/// out) and never reads the greeting.
fn assert_refused(egress: &EgressNet, to: SocketAddr, what: &str) {
    let t = Instant::now();
    let r = greet_from(egress, to);
    let e = r.expect_err(&format!(
        "{what} ({to}) is reachable from the egress namespace"
    ));
    assert_ne!(
        e.kind(),
        std::io::ErrorKind::TimedOut,
        "{what} ({to}): the connection timed out instead of being refused"
    );
    assert!(t.elapsed() < CONNECT_TIMEOUT, "{what}: {e}");
}

/// One DNS query for `name` (type A) over UDP; the answer's record count.
fn dns_a_records(server: Ipv4Addr, name: &str) -> std::io::Result<u16> {
    let id: u16 = 0x4e7d;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, 1 question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.connect((server, 53))?;
    sock.send(&q)?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf)?;
    if n < 12 || buf[..2] != id.to_be_bytes() {
        return Err(std::io::Error::other("not an answer to the query"));
    }
    let rcode = buf[3] & 0x0f;
    if rcode != 0 {
        return Err(std::io::Error::other(format!("rcode {rcode}")));
    }
    Ok(u16::from_be_bytes([buf[6], buf[7]]))
}

/// The name resolved through the egress filter (a Debian mirror, which an
/// image build needs anyway).
const DNS_NAME: &str = "deb.debian.org";

#[test]
fn the_egress_namespace_reaches_public_addresses_and_dns_but_not_the_host_or_private_networks() {
    let name = "hearth-test-net-egress";
    let _ = hearth_net::teardown(name);
    let mut cfg = EgressConfig::new(name);
    cfg.link_net = Ipv4Addr::new(10, 213, 250, 0);
    // The filter is computed from the host as it is at `ensure`: the
    // peers below are created afterwards, as a remote network would be.
    let egress = EgressNet::ensure(&cfg).expect("ensure the egress network");
    let _guard = EgressGuard(name.into());
    assert_eq!(egress.netns_path(), Path::new("/run/netns").join(name));

    let public = Peer::create(
        "hearth-test-net-pub",
        "hxt-pub",
        Ipv4Addr::new(198, 51, 100, 0),
    );
    let private = Peer::create(
        "hearth-test-net-priv",
        "hxt-priv",
        Ipv4Addr::new(10, 254, 0, 0),
    );
    let link_local = Peer::create(
        "hearth-test-net-ll",
        "hxt-ll",
        Ipv4Addr::new(169, 254, 10, 0),
    );

    let public_srv = serve(Some(&public.path()), public.addr, 32 << 20);
    let private_srv = serve(Some(&private.path()), private.addr, 0);
    let link_local_srv = serve(Some(&link_local.path()), link_local.addr, 0);
    let loopback_srv = serve(None, Ipv4Addr::LOCALHOST, 0);
    let primary = primary_address();
    let primary_srv = serve(None, primary, 0);
    let link_host_srv = serve(None, egress.host_addr(), 0);

    // Controls: the host itself reaches every listener.
    for (what, srv) in [
        ("the public peer", public_srv),
        ("the private peer", private_srv),
        ("the link-local peer", link_local_srv),
        ("the host's loopback", loopback_srv),
        ("the host's primary address", primary_srv),
    ] {
        assert_eq!(
            greet(srv).unwrap_or_else(|e| panic!("host to {what}: {e}")),
            "hello"
        );
    }

    // The positive control: a public address is reached through the host.
    assert_eq!(
        greet_from(&egress, public_srv).expect("the public peer from the egress namespace"),
        "hello"
    );

    assert_refused(&egress, loopback_srv, "the host's loopback");
    assert_refused(&egress, primary_srv, "the host's primary address");
    assert_refused(&egress, link_host_srv, "the host's end of the veth");
    assert_refused(&egress, private_srv, "a private (10/8) network");
    assert_refused(&egress, link_local_srv, "a link-local network");

    // DNS through the allowed resolver works, from the host (control) and
    // from the namespace.
    let resolver = egress.nameservers()[0];
    let host_answers = dns_a_records(resolver, DNS_NAME).expect("DNS from the host");
    assert!(host_answers > 0);
    let ns_answers = in_netns(egress.netns_path(), || dns_a_records(resolver, DNS_NAME))
        .unwrap()
        .expect("DNS from the egress namespace");
    assert!(ns_answers > 0, "no A record for {DNS_NAME}");

    // Rough cost of the path: connect latency and bulk throughput to the
    // public peer, from the host and through the egress namespace.
    let measure = |label: &str, via_egress: bool| {
        let run = || {
            // The median of 9 connects (the first pays for neighbour
            // discovery and a new conntrack entry), then one bulk read.
            let mut connects: Vec<Duration> = (0..9)
                .map(|_| {
                    let t = Instant::now();
                    drop(TcpStream::connect_timeout(&public_srv, CONNECT_TIMEOUT).unwrap());
                    t.elapsed()
                })
                .collect();
            connects.sort();
            let connect = connects[4];
            let mut s = TcpStream::connect_timeout(&public_srv, CONNECT_TIMEOUT).unwrap();
            let t = Instant::now();
            let mut total = 0usize;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            (connect, total, t.elapsed())
        };
        let (connect, total, took) = if via_egress {
            in_netns(egress.netns_path(), run).unwrap()
        } else {
            run()
        };
        assert_eq!(total, 5 + (32 << 20));
        eprintln!(
            "{label}: connect {:.3} ms (median of 9), {:.0} MB/s",
            connect.as_secs_f64() * 1e3,
            total as f64 / took.as_secs_f64() / 1e6
        );
    };
    measure("host -> public peer", false);
    measure("egress namespace -> public peer", true);
}

#[test]
fn ensure_is_idempotent_repairs_a_missing_veth_and_teardown_removes_everything() {
    let name = "hearth-test-net-idem";
    let _ = hearth_net::teardown(name);
    let mut cfg = EgressConfig::new(name);
    cfg.link_net = Ipv4Addr::new(10, 213, 249, 0);
    let first = EgressNet::ensure(&cfg).expect("first ensure");
    let _guard = EgressGuard(name.into());
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    };
    let ns_inode = inode(first.netns_path());
    // What ensure returns but the refused list, which follows the host
    // (the other test adds peers to it while this one runs).
    let same = |e: &EgressNet| {
        (
            e.netns_path().to_path_buf(),
            e.host_interface().to_string(),
            e.host_addr(),
            e.ns_addr(),
            e.nameservers().to_vec(),
        )
    };
    let second = EgressNet::ensure(&cfg).expect("second ensure");
    assert_eq!(same(&first), same(&second));
    assert_eq!(
        inode(second.netns_path()),
        ns_inode,
        "a second ensure replaced the namespace (QEMUs in it would be cut off)"
    );
    let nft = |args: &[&str]| {
        Command::new("nft")
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("run nft (nftables must be installed)")
    };
    let tables = String::from_utf8_lossy(&nft(&["list", "tables"]).stdout).into_owned();
    assert_eq!(
        tables.matches("hearth_egress_hearth_test_net_idem").count(),
        1,
        "{tables}"
    );
    // Someone deletes the veth: the next ensure puts it back.
    ip(&["link", "del", first.host_interface()]);
    let third = EgressNet::ensure(&cfg).expect("ensure after the veth vanished");
    assert_eq!(same(&first), same(&third));
    assert!(Path::new("/sys/class/net")
        .join(third.host_interface())
        .exists());
    let routes = Command::new("ip")
        .args(["-n", name, "route", "show", "default"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("via 10.213.249.1 dev eth0"),
        "{routes:?}"
    );

    // No IPv6 inside: disabled on every interface, so none has an address.
    let ns_cat = |path: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", name, "cat", path])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ns_cat("/proc/sys/net/ipv6/conf/all/disable_ipv6"), "1");
    assert_eq!(ns_cat("/proc/sys/net/ipv6/conf/eth0/disable_ipv6"), "1");
    assert_eq!(ns_cat("/proc/net/if_inet6"), "");

    third.teardown().expect("teardown");
    assert!(!third.netns_path().exists());
    assert!(!Path::new("/sys/class/net")
        .join(third.host_interface())
        .exists());
    let tables = String::from_utf8_lossy(&nft(&["list", "tables"]).stdout).into_owned();
    assert!(
        !tables.contains("hearth_egress_hearth_test_net_idem"),
        "{tables}"
    );
    // Tearing down what is gone is not an error.
    hearth_net::teardown(name).expect("a second teardown");
}

/// Connect and read the greeting.
fn greet(to: SocketAddr) -> std::io::Result<String> {
    greet_within(to, CONNECT_TIMEOUT)
}
