//! Guest egress: the way an image builder's microVM reaches the internet,
//! and nothing else.
//!
//! # Design
//!
//! ```text
//!  guest eth0 10.0.2.15 ──virtio-net──▶ QEMU user-mode network (libslirp)
//!                                       │ ordinary sockets, opened by QEMU
//!  ┌── network namespace NAME ──────────▼──────────────────────────────┐
//!  │ eth0 10.213.0.2/30 (default via .1)   lo: its own                 │
//!  │ nft output: answers ok; DNS to the host's resolvers ok;           │
//!  │             private, special and host destinations rejected;      │
//!  │             IPv6 rejected; the rest ok                            │
//!  └── veth ───────────────────────────────────────────────────────────┘
//!  host hx-NAME 10.213.0.1/30; ip_forward=1; table inet hearth_egress_NAME:
//!    forward: the same checks again for what comes from the veth,
//!             only answers go to it; input: nothing from the veth reaches
//!             the host but answers (and DNS to a resolver that is the
//!             host itself); postrouting: masquerade 10.213.0.0/30
//! ```
//!
//! The guest's NIC is QEMU's user-mode network: it gives the guest NAT and
//! a gateway with nothing to configure on the host per microVM and no
//! privileges in the guest. Its weakness is that every connection the
//! guest makes becomes a socket QEMU opens, wherever QEMU runs. So QEMU
//! runs in a network namespace of its own making: the supervisor's child
//! joins it with `setns(CLONE_NEWNET)` before it confines itself and
//! drops its privileges, and from then on every socket slirp opens lives
//! there. In that namespace the host's loopback does not exist (the
//! namespace has its own, where nothing listens and which the filter
//! refuses too), and an nftables filter decides where else packets may go.
//! Connections the guest makes to slirp's gateway `10.0.2.2`, which slirp
//! maps to loopback, reach nothing.
//!
//! Refused destinations: `0.0.0.0/8`, `10/8`, `100.64/10`, `127/8`,
//! `169.254/16`, `172.16/12`, `192.0.0/24`, `192.168/16`, `198.18/15`,
//! `224/4`, `240/4`, `255.255.255.255`, every address of the host and every
//! subnet the host is directly on (read from `ip -j addr` and `ip -j
//! route` at each [`EgressNet::ensure`]), and all of IPv6. The one private
//! destination allowed is DNS (UDP and TCP port 53) to the host's
//! resolvers from `/etc/resolv.conf` (or systemd-resolved's upstream list
//! when that names only a loopback stub): a resolver often has a private
//! address, and builds need names. Everything else public is allowed.
//!
//! The filter rejects (ICMP "administratively prohibited"), so a socket in
//! the namespace fails at once; a guest behind slirp sees a connection
//! that times out instead, since slirp connects without blocking and does
//! not pass the later error on.
//!
//! Many microVMs share one egress network (one namespace, one veth); it is
//! prepared once, at every start of `hearth serve` (idempotent), and its
//! rules follow the host as it was then: re-run [`EgressNet::ensure`]
//! after the host's addresses change.
//!
//! Limits: another nftables or iptables table that drops forwarded packets
//! (a Docker host's `FORWARD` policy, say) also drops the guests'; the
//! host's `net.ipv4.ip_forward` is switched on and left on.
//!
//! # Modules
//!
//! * [`egress`]: [`EgressNet::ensure`] and [`teardown`], the namespace, the
//!   veth pair and the rules (blocking; the caller's thread);
//! * `rules`: the two nftables scripts (pure);
//! * [`host`]: the host's addresses, subnets and resolvers;
//! * [`guest`]: the commands and `resolv.conf` a guest uses (pure);
//! * [`netns`]: running a closure inside a namespace (its own thread);
//! * [`cidr`]: IPv4 prefixes.
//!
//! Everything here needs root and the `ip` (iproute2) and `nft` (nftables)
//! programs, which `hearth setup` installs.

pub mod cidr;
mod cmd;
pub mod egress;
mod error;
pub mod guest;
pub mod host;
pub mod netns;
mod rules;
pub mod testing;

pub use cidr::Ipv4Cidr;
pub use egress::{teardown, EgressConfig, EgressNet, DEFAULT_LINK_NET, NETNS_DIR, NS_INTERFACE};
pub use error::NetError;
pub use guest::{
    guest_attach_command, guest_mac, guest_release_command, guest_resolv_conf,
    guest_setup_commands, GuestNetConfig, GUEST_GATEWAY, GUEST_RESOLV_CONF_PATH,
};
pub use netns::in_netns;
pub use rules::{NS_TABLE, REFUSED_RANGES};
