//! The guest's side: how a guest whose NIC is QEMU's user-mode network
//! configures itself. Pure: the commands and the file text; the caller runs
//! them through the guest agent (`AgentClient::run`, `write_file`).
//!
//! QEMU's user-mode network (libslirp) puts the guest on `10.0.2.0/24`
//! with the gateway `10.0.2.2`; the guest's address is its own choice
//! (`10.0.2.15`, what slirp's DHCP would hand out). Guests configure it
//! statically: the base images carry `ip` (iproute2) but no DHCP client,
//! and a static setup is one round trip.
//!
//! Resolvers: slirp's DNS proxy (`10.0.2.3`) forwards to the nameservers of
//! `/etc/resolv.conf` *as QEMU sees it*, and a confined QEMU sees a private
//! root without `/etc/resolv.conf` (slirp then falls back to loopback,
//! the namespace's own, which the filter refuses). So the guest names the host's resolvers
//! directly; the namespace's filter lets DNS to exactly those through.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The guest's interface: the only NIC, named by the kernel (the guest
/// runs no udev renaming).
pub const GUEST_INTERFACE: &str = "eth0";
/// The guest's address on slirp's network.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Slirp's network prefix length.
pub const GUEST_PREFIX_LEN: u8 = 24;
/// Slirp's gateway. A connection to it reaches QEMU's own loopback, which
/// in an egress namespace is not the host's (and the filter refuses it).
pub const GUEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// How one guest's network is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetConfig {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Written to the guest's `/etc/resolv.conf`.
    pub nameservers: Vec<Ipv4Addr>,
}

impl GuestNetConfig {
    /// Slirp's defaults with these resolvers.
    pub fn new(nameservers: Vec<Ipv4Addr>) -> Self {
        Self {
            interface: GUEST_INTERFACE.to_string(),
            address: GUEST_ADDR,
            prefix_len: GUEST_PREFIX_LEN,
            gateway: GUEST_GATEWAY,
            nameservers,
        }
    }
}

/// The commands that bring the guest's network up, in order; each is an
/// argv for the agent, and each may be run again (they replace, never
/// add twice).
pub fn guest_setup_commands(cfg: &GuestNetConfig) -> Vec<Vec<String>> {
    let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let dev = cfg.interface.as_str();
    vec![
        argv(&["ip", "link", "set", "lo", "up"]),
        argv(&["ip", "link", "set", dev, "up"]),
        argv(&[
            "ip",
            "addr",
            "replace",
            &format!("{}/{}", cfg.address, cfg.prefix_len),
            "dev",
            dev,
        ]),
        argv(&[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &cfg.gateway.to_string(),
            "dev",
            dev,
        ]),
    ]
}

/// Where [`guest_resolv_conf`] goes in the guest.
pub const GUEST_RESOLV_CONF_PATH: &str = "/etc/resolv.conf";

/// The guest's `/etc/resolv.conf`.
pub fn guest_resolv_conf(cfg: &GuestNetConfig) -> String {
    let mut s = String::from(
        "# Written by Hearth: the host's resolvers, reached through its egress filter.\n",
    );
    for n in &cfg.nameservers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    s.push_str("options timeout:2 attempts:3\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_commands_address_and_route_the_interface() {
        let cfg = GuestNetConfig::new(vec![Ipv4Addr::new(10, 255, 255, 53)]);
        let cmds = guest_setup_commands(&cfg);
        let lines: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "ip link set lo up",
                "ip link set eth0 up",
                "ip addr replace 10.0.2.15/24 dev eth0",
                "ip route replace default via 10.0.2.2 dev eth0",
            ]
        );
    }

    #[test]
    fn resolv_conf_names_each_resolver() {
        let cfg = GuestNetConfig::new(vec![
            Ipv4Addr::new(10, 255, 255, 53),
            Ipv4Addr::new(192, 0, 2, 53),
        ]);
        let text = guest_resolv_conf(&cfg);
        assert!(text.contains("\nnameserver 10.255.255.53\nnameserver 192.0.2.53\n"));
        assert!(text.ends_with("options timeout:2 attempts:3\n"));
    }
}
