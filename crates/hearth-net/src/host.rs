//! What the host is, as the egress filter needs it: its own addresses and
//! the subnets it is directly on (read with `ip -j`), and the nameservers
//! it resolves with (read from `resolv.conf`). Read at every
//! [`crate::EgressNet::ensure`]; blocking, on the caller's thread.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cidr::Ipv4Cidr;
use crate::cmd;
use crate::error::NetError;

/// The resolver configuration read first.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Read when [`RESOLV_CONF`] names only loopback resolvers (a local stub
/// such as systemd-resolved's `127.0.0.53`, unreachable from another
/// namespace): the upstream servers that stub forwards to.
pub const UPSTREAM_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// On-link routes broader than this are not counted as a subnet the host
/// is on (a VPN-style `0.0.0.0/1 dev tun0` would otherwise block half the
/// internet); every real LAN is narrower.
pub const MIN_ONLINK_PREFIX_LEN: u8 = 8;

#[derive(Debug, Deserialize)]
struct Link {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<String>,
    /// The peer of a point-to-point address.
    address: Option<String>,
    prefixlen: u8,
}

#[derive(Debug, Deserialize)]
struct Route {
    dst: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    gateway: Option<String>,
    via: Option<serde_json::Value>,
    nexthops: Option<serde_json::Value>,
}

/// The host's IPv4 addresses (as `/32`s) and the subnets of those
/// addresses: `ip -j -4 addr show` output.
pub(crate) fn parse_addresses(json: &str) -> Result<Vec<Ipv4Cidr>, serde_json::Error> {
    let links: Vec<Link> = serde_json::from_str(json)?;
    let mut out = Vec::new();
    for a in links.iter().flat_map(|l| &l.addr_info) {
        if a.family != "inet" {
            continue;
        }
        for text in [&a.local, &a.address].into_iter().flatten() {
            if let Ok(addr) = text.parse::<Ipv4Addr>() {
                out.push(Ipv4Cidr::host(addr));
                if a.prefixlen >= MIN_ONLINK_PREFIX_LEN {
                    out.extend(Ipv4Cidr::new(addr, a.prefixlen));
                }
            }
        }
    }
    Ok(out)
}

/// The destinations the host reaches without a gateway, in every routing
/// table: `ip -j -4 route show table all` output.
pub(crate) fn parse_onlink_routes(json: &str) -> Result<Vec<Ipv4Cidr>, serde_json::Error> {
    let routes: Vec<Route> = serde_json::from_str(json)?;
    Ok(routes
        .iter()
        .filter(|r| r.gateway.is_none() && r.via.is_none() && r.nexthops.is_none())
        .filter(|r| {
            matches!(
                r.kind.as_deref(),
                None | Some("unicast" | "local" | "broadcast" | "anycast")
            )
        })
        .filter_map(|r| r.dst.parse::<Ipv4Cidr>().ok())
        .filter(|c| c.prefix_len() >= MIN_ONLINK_PREFIX_LEN)
        .collect())
}

/// The host's own addresses and every subnet it is directly on.
pub(crate) fn local_destinations() -> Result<Vec<Ipv4Cidr>, NetError> {
    let parse = |command: &str, text: String, f: fn(&str) -> Result<_, _>| {
        f(if text.trim().is_empty() { "[]" } else { &text }).map_err(|source| NetError::Parse {
            command: command.to_string(),
            source,
        })
    };
    let addrs = cmd::ip(&["-j", "-4", "addr", "show"])?;
    let mut out: Vec<Ipv4Cidr> = parse("ip -j -4 addr show", addrs, parse_addresses)?;
    let routes = cmd::ip(&["-j", "-4", "route", "show", "table", "all"])?;
    out.extend(parse(
        "ip -j -4 route show table all",
        routes,
        parse_onlink_routes,
    )?);
    Ok(out)
}

/// The IPv4 `nameserver` lines of a `resolv.conf` text, in order.
pub fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|w| w.parse::<Ipv4Addr>().ok())
        .collect()
}

/// Why `address` cannot serve a guest as its resolver, if it cannot.
pub(crate) fn unusable_nameserver(address: Ipv4Addr) -> Option<&'static str> {
    if address.is_loopback() {
        Some("a loopback address is the namespace's own")
    } else if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        Some("it is not a unicast address")
    } else {
        None
    }
}

fn read_nameservers(path: &Path) -> Vec<Ipv4Addr> {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// The host's IPv4 nameservers that a namespace can reach: those of
/// [`RESOLV_CONF`] that are not loopback, or else those of
/// [`UPSTREAM_RESOLV_CONF`]. IPv6 nameservers are left out (the guest has
/// no IPv6).
pub fn host_nameservers() -> Result<Vec<Ipv4Addr>, NetError> {
    let paths = [
        PathBuf::from(RESOLV_CONF),
        PathBuf::from(UPSTREAM_RESOLV_CONF),
    ];
    for path in &paths {
        let usable: Vec<Ipv4Addr> = read_nameservers(path)
            .into_iter()
            .filter(|a| unusable_nameserver(*a).is_none())
            .collect();
        if !usable.is_empty() {
            return Ok(usable);
        }
    }
    Err(NetError::NoNameserver {
        paths: paths.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_give_each_address_and_its_subnet() {
        let json = r#"[
          {"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
          {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24},
                                        {"family":"inet6","local":"fd00::2","prefixlen":64}]},
          {"ifname":"wg0","addr_info":[{"family":"inet","local":"100.64.0.5","address":"100.64.0.1","prefixlen":32}]},
          {"ifname":"tun0","addr_info":[{"family":"inet","local":"203.0.113.5","prefixlen":1}]},
          {"ifname":"down0"}
        ]"#;
        let got = parse_addresses(json).unwrap();
        for want in [
            "127.0.0.1/32",
            "127.0.0.0/8",
            "192.0.2.2/32",
            "192.0.2.0/24",
            "100.64.0.5/32",
            "100.64.0.1/32",
            "203.0.113.5/32",
        ] {
            assert!(got.contains(&c(want)), "{want} missing from {got:?}");
        }
        assert!(!got.iter().any(|p| p.prefix_len() < 8), "{got:?}");
    }

    #[test]
    fn onlink_routes_leave_out_gateways_defaults_and_unreachables() {
        let json = r#"[
          {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
          {"dst":"default","dev":"ppp0","flags":[]},
          {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","flags":[]},
          {"dst":"198.51.100.0/24","gateway":"192.0.2.1","dev":"eth0","flags":[]},
          {"dst":"203.0.113.0/24","nexthops":[{"gateway":"192.0.2.1"}],"flags":[]},
          {"type":"unreachable","dst":"10.9.0.0/16","flags":[]},
          {"type":"local","dst":"192.0.2.2","dev":"eth0","table":"local","flags":[]},
          {"type":"broadcast","dst":"192.0.2.255","dev":"eth0","table":"local","flags":[]},
          {"dst":"0.0.0.0/1","dev":"tun0","flags":[]},
          {"dst":"10.254.7.0/30","dev":"veth7","table":"42","flags":[]}
        ]"#;
        let got = parse_onlink_routes(json).unwrap();
        assert_eq!(
            got,
            [
                c("192.0.2.0/24"),
                c("192.0.2.2"),
                c("192.0.2.255"),
                c("10.254.7.0/30")
            ]
        );
    }

    #[test]
    fn resolv_conf_nameservers_in_order_ipv4_only() {
        let text = "# comment\nsearch example.org\nnameserver 10.255.255.53\n\
                    nameserver fd00::53\nnameserver   192.0.2.53 # x\noptions ndots:1\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "10.255.255.53".parse::<Ipv4Addr>().unwrap(),
                "192.0.2.53".parse().unwrap()
            ]
        );
        assert!(unusable_nameserver("127.0.0.53".parse().unwrap()).is_some());
        assert!(unusable_nameserver("10.255.255.53".parse().unwrap()).is_none());
    }
}
