//! IPv4 prefixes (`10.0.0.0/8`): the destinations an egress filter
//! refuses, the subnets a host is on. Plain data, no I/O.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 prefix; the address is always the network address (host bits
/// cleared on construction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl Ipv4Cidr {
    /// The prefix of `addr` of length `prefix_len` (host bits cleared);
    /// `None` for a length above 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then(|| Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        })
    }

    /// One address (`/32`).
    pub fn host(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 32,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains_addr(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.prefix_len) == u32::from(self.addr)
    }

    /// Does this prefix cover all of `other`?
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        self.prefix_len <= other.prefix_len && self.contains_addr(other.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A malformed prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IPv4 address or prefix")]
pub struct ParseCidrError {
    pub text: String,
}

impl FromStr for Ipv4Cidr {
    type Err = ParseCidrError;

    /// `a.b.c.d/n`, or `a.b.c.d` for a `/32` (as `ip` prints host routes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseCidrError {
            text: s.to_string(),
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, len).ok_or_else(bad)
    }
}

/// `prefixes` without the ones another covers, sorted.
pub fn minimal(prefixes: impl IntoIterator<Item = Ipv4Cidr>) -> Vec<Ipv4Cidr> {
    let mut all: Vec<Ipv4Cidr> = prefixes.into_iter().collect();
    // Shortest prefixes first, so a covering prefix is kept before any
    // prefix it covers is looked at.
    all.sort_by_key(|c| (c.prefix_len, c.addr));
    all.dedup();
    let mut kept: Vec<Ipv4Cidr> = Vec::new();
    for c in all {
        if !kept.iter().any(|k| k.contains(&c)) {
            kept.push(c);
        }
    }
    kept.sort();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_clears_host_bits_and_prints() {
        assert_eq!(c("192.0.2.77/24").to_string(), "192.0.2.0/24");
        assert_eq!(c("192.0.2.77").to_string(), "192.0.2.77/32");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0/8".parse::<Ipv4Cidr>().is_err());
        assert!("fd00::1".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn containment() {
        assert!(c("10.0.0.0/8").contains(&c("10.254.1.0/30")));
        assert!(!c("10.254.1.0/30").contains(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").contains_addr("203.0.113.9".parse().unwrap()));
        assert!(!c("172.16.0.0/12").contains_addr("172.32.0.1".parse().unwrap()));
        assert!(c("172.16.0.0/12").contains_addr("172.31.255.255".parse().unwrap()));
    }

    #[test]
    fn minimal_drops_covered_prefixes_and_duplicates() {
        let got = minimal([
            c("192.0.2.2"),
            c("10.213.0.0/30"),
            c("192.0.2.0/24"),
            c("10.0.0.0/8"),
            c("192.0.2.0/24"),
            c("198.51.100.1"),
        ]);
        assert_eq!(got, [c("10.0.0.0/8"), c("192.0.2.0/24"), c("198.51.100.1")]);
    }
}
