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

/// A virtio device's id for a network card (`/sys/bus/virtio/devices/*/device`).
const VIRTIO_NET_DEVICE_ID: &str = "0x0001";

/// Unbind the guest's virtio-net driver from every network device (the
/// interface disappears; the device is reset). An image's app microVM runs
/// it before its snapshot, so clones start with no network interface.
pub fn guest_release_command() -> Vec<String> {
    let script = format!(
        "for d in /sys/bus/virtio/devices/*; do \
           [ \"$(cat \"$d/device\" 2>/dev/null)\" = {VIRTIO_NET_DEVICE_ID} ] || continue; \
           [ -e \"$d/driver\" ] || continue; \
           basename \"$d\" > /sys/bus/virtio/drivers/virtio_net/unbind || exit 1; \
         done; \
         [ ! -e /sys/class/net/{GUEST_INTERFACE} ]"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// Bind the virtio-net driver to the guest's network device (released by
/// [`guest_release_command`]), wait for the interface, and give it `mac`
/// (each clone its own). Run before [`guest_setup_commands`].
pub fn guest_attach_command(mac: &str) -> Vec<String> {
    let script = format!(
        "for d in /sys/bus/virtio/devices/*; do \
           [ \"$(cat \"$d/device\" 2>/dev/null)\" = {VIRTIO_NET_DEVICE_ID} ] || continue; \
           [ -e \"$d/driver\" ] || basename \"$d\" > /sys/bus/virtio/drivers/virtio_net/bind || exit 1; \
         done; \
         i=0; while [ ! -e /sys/class/net/{GUEST_INTERFACE} ]; do \
           i=$((i+1)); [ $i -gt 100 ] && {{ echo 'no {GUEST_INTERFACE} appeared' >&2; exit 1; }}; sleep 0.05; \
         done; \
         ip link set dev {GUEST_INTERFACE} down && ip link set dev {GUEST_INTERFACE} address {mac}"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// A locally administered unicast MAC address derived from `seed` (a
/// microVM id), so clones of one snapshot do not share one.
pub fn guest_mac(seed: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    let b = h.finish().to_be_bytes();
    // 0x02: locally administered, unicast.
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
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
