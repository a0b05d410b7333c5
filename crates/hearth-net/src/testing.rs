//! Test support for anything that checks egress on the real host: other
//! "machines" as network namespaces behind veths ([`Peer`]), listeners that
//! greet ([`serve_greeting`]), the host's primary address, and a guard that
//! removes an egress network. Used by the tests of this crate, of the
//! engine and of the server, and by `hearth bench connectors`; not by the
//! server itself. Helpers panic with the failing command's output: they
//! are for tests. Synchronous; listeners run on threads of their own.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{in_netns, NETNS_DIR};

/// `PATH` for `ip`.
const TOOLS_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The greeting [`serve_greeting`] sends first.
pub const GREETING: &[u8; 5] = b"hello";

/// Run `ip` with `args`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .env("PATH", TOOLS_PATH)
        .output()
        .expect("run ip (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `ip` with `args`, ignoring the outcome (clean-ups).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .env("PATH", TOOLS_PATH)
        .output();
}

/// Removes an egress network (by name) when dropped.
pub struct EgressGuard(pub String);

impl Drop for EgressGuard {
    fn drop(&mut self) {
        if let Err(e) = crate::teardown(&self.0) {
            eprintln!("teardown {}: {e}", self.0);
        }
    }
}

/// A namespace standing in for some other machine: a veth from the host
/// with `net.1` on the host and `net.2` inside, where the listeners go.
/// Removed when dropped.
pub struct Peer {
    pub name: String,
    pub host_if: String,
    /// The address inside (`net.2`).
    pub addr: Ipv4Addr,
}

impl Peer {
    /// Create namespace `name` linked by veth `host_if` on the /30 `net`
    /// (any leftover of the same names is removed first).
    pub fn create(name: &str, host_if: &str, net: Ipv4Addr) -> Peer {
        ip_quiet(&["link", "del", host_if]);
        ip_quiet(&["netns", "delete", name]);
        let base = u32::from(net);
        let (host, inside) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let peer = Peer {
            name: name.into(),
            host_if: host_if.into(),
            addr: inside,
        };
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", host_if]);
        ip(&["link", "set", host_if, "up"]);
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", name, "link", "set", "eth0", "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            name,
            "route",
            "add",
            "default",
            "via",
            &host.to_string(),
        ]);
        peer
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.host_if]);
        ip_quiet(&["netns", "delete", &self.name]);
    }
}

/// A TCP listener (in `netns`, or the host's namespace) on `addr` that
/// greets every connection with [`GREETING`] and, after `bulk_bytes` of
/// zeros, closes it. Runs until the process ends.
pub fn serve_greeting(netns: Option<&Path>, addr: Ipv4Addr, bulk_bytes: usize) -> SocketAddr {
    let bind = || TcpListener::bind((addr, 0)).expect("bind a listener");
    let listener = match netns {
        Some(p) => in_netns(p, bind).expect("enter the peer namespace"),
        None => bind(),
    };
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let _ = c.write_all(GREETING);
                let zeros = vec![0u8; 64 << 10];
                let mut left = bulk_bytes;
                while left > 0 {
                    let n = left.min(zeros.len());
                    if c.write_all(&zeros[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    local
}

/// Connect to `to` and read the greeting.
pub fn greet(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The host's source address for the internet (`ip route get 1.1.1.1`).
pub fn primary_address() -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["-j", "route", "get", "1.1.1.1"])
        .env("PATH", TOOLS_PATH)
        .output()
        .expect("ip route get");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j route get");
    v[0]["prefsrc"]
        .as_str()
        .expect("a route to the internet with a source address")
        .parse()
        .unwrap()
}
