//! One egress network: the namespace, its veth pair and /30, the host's
//! forwarding and NAT, and both filters. [`EgressNet::ensure`] converges
//! the host to it (create what is missing, replace the rules); [`teardown`]
//! removes it. Both are blocking (a few dozen `ip`/`nft` runs) and hold a
//! per-name lock file, so two processes preparing the same network do not
//! interleave; call them from a blocking context.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;
use crate::cmd;
use crate::error::NetError;
use crate::guest::GuestNetConfig;
use crate::host;
use crate::netns;
use crate::rules::{self, Plan};

/// Where `ip netns` registers named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// The namespace end of the veth pair.
pub const NS_INTERFACE: &str = "eth0";
/// The default /30 between host (`.1`) and namespace (`.2`).
pub const DEFAULT_LINK_NET: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// Longest egress network name.
pub const MAX_NAME_LEN: usize = 40;
/// Lock files, one per egress network name.
const LOCK_DIR: &str = "/run/hearth-net";
/// `IFNAMSIZ` less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// What egress network to prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressConfig {
    /// The namespace's name (`/run/netns/<name>`), also naming the host's
    /// nftables table and veth: `[a-z0-9-]`, starting with a letter, at
    /// most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// Network address of the /30 between host and namespace (host `.1`,
    /// namespace `.2`). Must not overlap anything the host routes.
    pub link_net: Ipv4Addr,
    /// The resolvers guests may use; `None` reads the host's
    /// ([`host::host_nameservers`]). DNS to these, on port 53, is the one
    /// private destination the filter lets through.
    pub nameservers: Option<Vec<Ipv4Addr>>,
}

impl EgressConfig {
    /// `name` on the default link network with the host's resolvers.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            link_net: DEFAULT_LINK_NET,
            nameservers: None,
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        let invalid = |reason| NetError::InvalidName {
            name: self.name.clone(),
            reason,
        };
        let n = &self.name;
        if n.is_empty() || n.len() > MAX_NAME_LEN {
            return Err(invalid("it must be 1 to 40 bytes long"));
        }
        if !n.as_bytes()[0].is_ascii_lowercase() {
            return Err(invalid("it must start with a lowercase letter"));
        }
        if !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("it may hold only a-z, 0-9 and '-'"));
        }
        if u32::from(self.link_net) % 4 != 0 {
            return Err(NetError::InvalidLinkNet {
                link_net: self.link_net,
            });
        }
        for a in self.nameservers.iter().flatten() {
            if let Some(reason) = host::unusable_nameserver(*a) {
                return Err(NetError::InvalidNameserver {
                    address: *a,
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// Names derived from an egress network's name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    netns: String,
    netns_path: PathBuf,
    host_if: String,
    host_table: String,
}

/// FNV-1a, 64 bits: a short stable tag for names too long for an interface.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Names {
    fn of(name: &str) -> Self {
        let short = format!("hx-{name}");
        let host_if = if short.len() <= MAX_IFNAME_LEN {
            short
        } else {
            format!("hx-{:012x}", fnv1a(name) & 0xffff_ffff_ffff)
        };
        Self {
            netns: name.to_string(),
            netns_path: Path::new(NETNS_DIR).join(name),
            host_if,
            host_table: format!("hearth_egress_{}", name.replace('-', "_")),
        }
    }
}

/// A prepared egress network (see the crate documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressNet {
    name: String,
    netns_path: PathBuf,
    host_interface: String,
    host_addr: Ipv4Addr,
    ns_addr: Ipv4Addr,
    nameservers: Vec<Ipv4Addr>,
    refused: Vec<Ipv4Cidr>,
}

/// Held while an egress network is changed.
struct Lock(#[allow(dead_code)] File);

fn lock(name: &str) -> Result<Lock, NetError> {
    let dir = Path::new(LOCK_DIR);
    fs::create_dir_all(dir).map_err(|source| NetError::Io {
        op: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(format!("{name}.lock"));
    let f = File::create(&path).map_err(|source| NetError::Io {
        op: "create",
        path: path.clone(),
        source,
    })?;
    // SAFETY: flock on a descriptor we own; it blocks until the lock is free.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(NetError::Io {
            op: "lock",
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Lock(f))
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let current = fs::read_to_string(path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    fs::write(path, value).map_err(|source| NetError::Io {
        op: "write",
        path: PathBuf::from(path),
        source,
    })
}

/// Does interface `dev` exist (in the namespace `netns`, or the host's)?
fn link_exists(netns: Option<&str>, dev: &str) -> Result<bool, NetError> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["link", "show", "dev", dev]);
    Ok(cmd::run_any("ip", &args, None)?.success)
}

/// Give `dev` exactly the IPv4 address `addr/30`.
fn set_only_address(netns: Option<&str>, dev: &str, addr: Ipv4Addr) -> Result<(), NetError> {
    fn with<'a>(netns: Option<&'a str>, rest: &[&'a str]) -> Vec<&'a str> {
        let pre = netns.map(|ns| ["-n", ns]);
        pre.iter().flatten().chain(rest).copied().collect()
    }
    #[derive(Deserialize)]
    struct Info {
        local: String,
        prefixlen: u8,
    }
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<Info>,
    }
    let want = format!("{addr}/30");
    let links: Vec<Link> = cmd::ip_json(&with(netns, &["-4", "addr", "show", "dev", dev]))?;
    for info in links.iter().flat_map(|l| &l.addr_info) {
        let have = format!("{}/{}", info.local, info.prefixlen);
        if have != want {
            cmd::ip(&with(netns, &["addr", "del", &have, "dev", dev]))?;
        }
    }
    cmd::ip(&with(netns, &["addr", "replace", &want, "dev", dev])).map(drop)
}

impl EgressNet {
    /// Create or converge the egress network `cfg` describes and return
    /// it. Idempotent: what exists is kept (a namespace QEMUs already run
    /// in stays the same namespace), what is missing is made, and both
    /// rulesets are replaced atomically with ones computed from the host
    /// as it is now (its addresses, subnets and resolvers are read again).
    pub fn ensure(cfg: &EgressConfig) -> Result<EgressNet, NetError> {
        cfg.validate()?;
        let names = Names::of(&cfg.name);
        let _lock = lock(&cfg.name)?;
        let nameservers = match &cfg.nameservers {
            Some(n) => n.clone(),
            None => host::host_nameservers()?,
        };
        let link = Ipv4Cidr::new(cfg.link_net, 30).expect("30 <= 32");
        let base = u32::from(cfg.link_net);
        let (host_addr, ns_addr) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let ns = names.netns.as_str();

        // The namespace: a registered one is kept; a stale file replaced.
        if !netns::is_namespace(&names.netns_path) {
            if names.netns_path.exists() {
                let _ = cmd::run_any("ip", &["netns", "delete", ns], None)?;
                let _ = fs::remove_file(&names.netns_path);
            }
            cmd::ip(&["netns", "add", ns])?;
        }
        // No IPv6 in the namespace at all (the filter refuses it too).
        netns::in_netns(&names.netns_path, || {
            for conf in ["all", "default"] {
                let p = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                if Path::new(&p).exists() {
                    write_sysctl(&p, "1")?;
                }
            }
            Ok::<(), NetError>(())
        })??;

        // The veth pair: both ends or neither.
        let host_end = link_exists(None, &names.host_if)?;
        let ns_end = link_exists(Some(ns), NS_INTERFACE)?;
        if host_end != ns_end {
            if host_end {
                cmd::ip(&["link", "del", &names.host_if])?;
            } else {
                cmd::ip(&["-n", ns, "link", "del", NS_INTERFACE])?;
            }
        }
        if !(host_end && ns_end) {
            cmd::ip(&[
                "link",
                "add",
                &names.host_if,
                "type",
                "veth",
                "peer",
                "name",
                NS_INTERFACE,
                "netns",
                ns,
            ])?;
        }
        set_only_address(None, &names.host_if, host_addr)?;
        set_only_address(Some(ns), NS_INTERFACE, ns_addr)?;
        cmd::ip(&["link", "set", &names.host_if, "up"])?;
        cmd::ip(&["-n", ns, "link", "set", NS_INTERFACE, "up"])?;
        // Loopback stays inside the namespace (down, the kernel would route
        // 127/8 out of eth0); the filter refuses it all the same.
        cmd::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        cmd::ip(&[
            "-n",
            ns,
            "route",
            "replace",
            "default",
            "via",
            &host_addr.to_string(),
            "dev",
            NS_INTERFACE,
        ])?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;

        // The filters, from the host as it is now (the veth included).
        let mut local = host::local_destinations()?;
        local.push(Ipv4Cidr::host(host_addr));
        let plan = Plan {
            host_table: names.host_table.clone(),
            host_if: names.host_if.clone(),
            link,
            ns_addr,
            nameservers: nameservers.clone(),
            refused: rules::refused(&local),
        };
        cmd::nft_script(Some(ns), &rules::ns_script(&plan))?;
        cmd::nft_script(None, &rules::host_script(&plan))?;
        Ok(EgressNet {
            name: cfg.name.clone(),
            netns_path: names.netns_path,
            host_interface: names.host_if,
            host_addr,
            ns_addr,
            nameservers,
            refused: plan.refused,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what a QEMU joins (`hearth_vmm::NicSpec`).
    pub fn netns_path(&self) -> &Path {
        &self.netns_path
    }

    /// The host end of the veth pair.
    pub fn host_interface(&self) -> &str {
        &self.host_interface
    }

    /// The host's address on the /30 (the namespace's gateway).
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The namespace's address (what guests' connections come from before
    /// the host masquerades them).
    pub fn ns_addr(&self) -> Ipv4Addr {
        self.ns_addr
    }

    /// The resolvers guests may reach.
    pub fn nameservers(&self) -> &[Ipv4Addr] {
        &self.nameservers
    }

    /// Every destination refused, as of the last `ensure`.
    pub fn refused(&self) -> &[Ipv4Cidr] {
        &self.refused
    }

    /// How a guest behind QEMU's user-mode network configures itself to
    /// use this egress network.
    pub fn guest_config(&self) -> GuestNetConfig {
        GuestNetConfig::new(self.nameservers.clone())
    }

    /// Remove this egress network ([`teardown`]).
    pub fn teardown(&self) -> Result<(), NetError> {
        teardown(&self.name)
    }
}

/// Remove the egress network `name`: the host's table, the veth pair and
/// the namespace's registration. What is already gone is skipped. A QEMU
/// still in the namespace keeps it alive but loses its way out.
/// `net.ipv4.ip_forward` is left on (other egress networks may need it).
pub fn teardown(name: &str) -> Result<(), NetError> {
    EgressConfig::new(name).validate()?;
    let names = Names::of(name);
    let _lock = lock(name)?;
    let table = cmd::run_any("nft", &["list", "table", "inet", &names.host_table], None)?;
    if table.success {
        cmd::run("nft", &["delete", "table", "inet", &names.host_table], None)?;
    }
    if link_exists(None, &names.host_if)? {
        cmd::ip(&["link", "del", &names.host_if])?;
    }
    if names.netns_path.exists() {
        cmd::ip(&["netns", "delete", name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_and_differ_per_network() {
        let n = Names::of("builders");
        assert_eq!(n.host_if, "hx-builders");
        assert_eq!(n.host_table, "hearth_egress_builders");
        assert_eq!(n.netns_path, Path::new("/run/netns/builders"));
        let a = Names::of("hearth-test-egress-one");
        let b = Names::of("hearth-test-egress-two");
        assert_eq!(a.host_if.len(), 15);
        assert_ne!(a.host_if, b.host_if);
        assert_eq!(a.host_if, Names::of("hearth-test-egress-one").host_if);
    }

    #[test]
    fn config_validation() {
        assert!(EgressConfig::new("builders").validate().is_ok());
        for bad in ["", "Builders", "1abc", "a_b", "a.b", &"a".repeat(41)] {
            assert!(
                matches!(
                    EgressConfig::new(bad).validate(),
                    Err(NetError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        let mut c = EgressConfig::new("x");
        c.link_net = Ipv4Addr::new(10, 213, 0, 1);
        assert!(matches!(c.validate(), Err(NetError::InvalidLinkNet { .. })));
        let mut c = EgressConfig::new("x");
        c.nameservers = Some(vec![Ipv4Addr::new(127, 0, 0, 53)]);
        assert!(matches!(
            c.validate(),
            Err(NetError::InvalidNameserver { .. })
        ));
    }
}
