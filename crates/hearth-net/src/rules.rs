//! The nftables rulesets of an egress network, as text for `nft -f`. Pure:
//! a [`Plan`] in, a script out.
//!
//! Each script first creates its table (so the `delete` cannot fail), then
//! deletes it and defines it whole: `nft -f` loads a file in one
//! transaction, so a re-run replaces the rules atomically and a packet
//! never sees a half-written filter.
//!
//! Inside the namespace (table [`NS_TABLE`], hook `output`): answers to
//! what the namespace started pass; IPv6 is refused; DNS (UDP and TCP port
//! 53) to the host's nameservers passes; every refused destination is
//! rejected with ICMP "administratively prohibited", so a connect fails at
//! once instead of timing out; everything else passes.
//!
//! On the host (a table of the egress network's own): traffic forwarded
//! from the veth goes through the same checks again (defence in depth: a
//! process that could rewrite the namespace's rules still meets these),
//! from the namespace's own address only; traffic forwarded *to* the veth
//! passes only as answers; nothing from the veth reaches the host itself
//! but answers and DNS to a nameserver that is one of the host's
//! addresses; the namespace's address is masqueraded behind whichever
//! interface a packet leaves by.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::cidr::{self, Ipv4Cidr};

/// The table inside an egress namespace.
pub const NS_TABLE: &str = "hearth_egress";

/// Destinations refused to guests whatever the host looks like:
/// "this network", private (RFC 1918), shared address space (CGNAT),
/// loopback, link-local (cloud metadata services live there), IETF
/// protocol assignments, benchmarking, multicast, reserved and the limited
/// broadcast address.
pub const REFUSED_RANGES: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
    (Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// What the rulesets are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The host's table for this egress network.
    pub host_table: String,
    /// The host end of the veth pair.
    pub host_if: String,
    /// The /30 between host and namespace.
    pub link: Ipv4Cidr,
    /// The namespace's address on it.
    pub ns_addr: Ipv4Addr,
    pub nameservers: Vec<Ipv4Addr>,
    /// Every refused destination: [`REFUSED_RANGES`] and the host's own
    /// addresses and subnets, without prefixes another one covers.
    pub refused: Vec<Ipv4Cidr>,
}

/// [`REFUSED_RANGES`] plus `local` (the host's addresses and subnets),
/// reduced to the prefixes no other covers.
pub(crate) fn refused(local: &[Ipv4Cidr]) -> Vec<Ipv4Cidr> {
    cidr::minimal(
        REFUSED_RANGES
            .iter()
            .filter_map(|(a, l)| Ipv4Cidr::new(*a, *l))
            .chain(local.iter().copied()),
    )
}

fn sets(s: &mut String, p: &Plan) {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", items.join(", "))
        }
    };
    let _ = writeln!(
        s,
        "\tset nameservers {{ type ipv4_addr;{} }}",
        list(p.nameservers.iter().map(ToString::to_string).collect())
    );
    let _ = writeln!(
        s,
        "\tset refused {{ type ipv4_addr; flags interval; auto-merge;{} }}",
        list(p.refused.iter().map(ToString::to_string).collect())
    );
}

fn replace_table(name: &str, body: &str) -> String {
    format!("table inet {name} {{}}\ndelete table inet {name}\ntable inet {name} {{\n{body}}}\n")
}

/// The script loaded inside the namespace.
pub(crate) fn ns_script(p: &Plan) -> String {
    let mut b = String::new();
    sets(&mut b, p);
    b.push_str(
        "\tchain output {\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tmeta nfproto ipv6 reject with icmpx type admin-prohibited\n\
         \t\tip daddr @nameservers udp dport 53 accept\n\
         \t\tip daddr @nameservers tcp dport 53 accept\n\
         \t\tip daddr @refused reject with icmpx type admin-prohibited\n\
         \t}\n",
    );
    replace_table(NS_TABLE, &b)
}

/// The script loaded on the host.
pub(crate) fn host_script(p: &Plan) -> String {
    let (dev, ns, link) = (&p.host_if, p.ns_addr, p.link);
    let mut b = String::new();
    sets(&mut b, p);
    let _ = write!(
        b,
        "\tchain from_namespace {{\n\
         \t\tct state established,related accept\n\
         \t\tmeta nfproto ipv6 drop\n\
         \t\tip saddr != {ns} drop\n\
         \t\tip daddr @nameservers udp dport 53 accept\n\
         \t\tip daddr @nameservers tcp dport 53 accept\n\
         \t\tip daddr @refused drop\n\
         \t\taccept\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{dev}\" jump from_namespace\n\
         \t\toifname \"{dev}\" ct state established,related accept\n\
         \t\toifname \"{dev}\" drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{dev}\" ct state established,related accept\n\
         \t\tiifname \"{dev}\" ip saddr {ns} ip daddr @nameservers udp dport 53 accept\n\
         \t\tiifname \"{dev}\" ip saddr {ns} ip daddr @nameservers tcp dport 53 accept\n\
         \t\tiifname \"{dev}\" drop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {link} oifname != \"{dev}\" masquerade\n\
         \t}}\n"
    );
    replace_table(&p.host_table, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let local: Vec<Ipv4Cidr> = ["192.0.2.2", "192.0.2.0/24", "10.213.0.1", "127.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        Plan {
            host_table: "hearth_egress_builders".into(),
            host_if: "hx-builders".into(),
            link: "10.213.0.0/30".parse().unwrap(),
            ns_addr: "10.213.0.2".parse().unwrap(),
            nameservers: vec!["10.255.255.53".parse().unwrap()],
            refused: refused(&local),
        }
    }

    #[test]
    fn refused_covers_the_fixed_ranges_and_the_host_once() {
        let r: Vec<String> = plan().refused.iter().map(ToString::to_string).collect();
        assert!(r.contains(&"192.0.2.0/24".to_string()), "{r:?}");
        assert!(r.contains(&"169.254.0.0/16".to_string()), "{r:?}");
        // Covered by 10/8, 127/8 and 240/4: not listed again.
        for covered in [
            "10.213.0.1/32",
            "127.0.0.1/32",
            "255.255.255.255/32",
            "192.0.2.2/32",
        ] {
            assert!(!r.contains(&covered.to_string()), "{covered} in {r:?}");
        }
        // The fixed ranges less 255.255.255.255 (inside 240/4), plus the
        // host's subnet.
        assert_eq!(r.len(), REFUSED_RANGES.len(), "{r:?}");
    }

    #[test]
    fn the_namespace_filter_lets_dns_through_before_refusing() {
        let s = ns_script(&plan());
        assert!(s.starts_with(
            "table inet hearth_egress {}\ndelete table inet hearth_egress\ntable inet hearth_egress {\n"
        ));
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}: {s}"));
        assert!(pos("elements = { 10.255.255.53 }") < pos("chain output"));
        assert!(pos("udp dport 53 accept") < pos("ip daddr @refused reject"));
        assert!(pos("ct state established,related accept") < pos("udp dport 53"));
        assert!(s.contains("meta nfproto ipv6 reject"));
        assert!(s.contains("10.0.0.0/8, "));
    }

    #[test]
    fn the_host_filter_names_its_veth_everywhere_and_masquerades_only_outward() {
        let s = host_script(&plan());
        assert!(s.contains("table inet hearth_egress_builders {\n"));
        assert!(s.contains("iifname \"hx-builders\" jump from_namespace"));
        assert!(s.contains("oifname \"hx-builders\" drop"));
        assert!(s.contains("iifname \"hx-builders\" drop"));
        assert!(s.contains("ip saddr != 10.213.0.2 drop"));
        assert!(s.contains("ip saddr 10.213.0.0/30 oifname != \"hx-builders\" masquerade"));
        let forward = &s[s.find("chain from_namespace").unwrap()..s.find("chain forward").unwrap()];
        assert!(forward.find("dport 53 accept").unwrap() < forward.find("@refused drop").unwrap());
    }

    #[test]
    fn no_nameservers_leaves_an_empty_set() {
        let mut p = plan();
        p.nameservers.clear();
        assert!(ns_script(&p).contains("set nameservers { type ipv4_addr; }"));
    }
}
