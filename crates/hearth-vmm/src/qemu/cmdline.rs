//! The QEMU command line. Pure: arguments from a description of what the
//! process gets. Identical across accelerators but for `-accel`/`-cpu`, and
//! the device layout (what a snapshot's device state must find) is the same
//! for a boot, a restore and a pre-started QEMU.
//!
//! QEMU reaches nothing by path on the host: the jail hides it. Its
//! descriptors (see the constants) are inherited; memory and boot files are
//! named `/proc/self/fd/N`, disks `/dev/fdset/N`.
//!
//! A network interface ([`Plan::nic`]) is QEMU's user-mode network (slirp:
//! NAT, gateway `10.0.2.2`, no IPv6) on a virtio-net device, placed after
//! every other device so the others keep their virtio-mmio slots. Slirp
//! opens the guest's connections as QEMU's own sockets; the supervisor has
//! put QEMU in the egress network's namespace, whose filter decides where
//! they may go (`hearth-net`).

use serde_json::Value;

use crate::accel::Accel;
use crate::spec::MachineConfig;

/// The machine type and options; part of every restore requirement.
pub const MACHINE: &str = "microvm,x-option-roms=off,rtc=on,memory-backend=mem,suppress-vmdesc=on";
/// QEMU's listening QMP socket.
pub const QMP_FD: i32 = 3;
/// The agent channel (the supervisor holds the other end).
pub const AGENT_FD: i32 = 4;
/// The serial console (the supervisor logs it).
pub const CONSOLE_FD: i32 = 5;
/// Guest RAM's file (own memory or a snapshot's sealed image).
pub const MEMORY_FD: i32 = 10;
/// Boot files.
pub const KERNEL_FD: i32 = 11;
pub const INITRD_FD: i32 = 12;
/// Disk layers given at start (boot), from here on.
pub const FIRST_DISK_FD: i32 = 20;
/// The node the virtio-blk device is attached to: a `raw` filter whose
/// `file` child is the chain's top, swapped by `blockdev-reopen`.
pub const ROOT_NODE: &str = "root";
/// The placeholder a waiting QEMU's root node starts on.
pub const PLACEHOLDER_NODE: &str = "placeholder";
/// The user-mode network backend of a microVM with a network interface.
pub const NIC_NETDEV: &str = "user,id=net0,ipv6=off,net=10.0.2.0/24,host=10.0.2.2";
/// Its device (the guest's `eth0`).
pub const NIC_DEVICE: &str = "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56";
/// The same device with no backend: an unplugged network slot.
pub const NIC_DEVICE_UNPLUGGED: &str = "virtio-net-device,mac=52:54:00:12:34:56";

/// The network device on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicArg {
    /// No device.
    None,
    /// The device with no backend (see [`crate::MachineConfig::nic_slot`]).
    Unplugged,
    /// The device on QEMU's user-mode network.
    User,
}

pub fn cpu_model(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    }
}

/// How guest RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamArg {
    /// The file at [`MEMORY_FD`], mapped shared (the guest writes it) or
    /// privately (copy-on-write).
    File { shared: bool },
    /// Anonymous RAM (the benchmark's baselines only).
    Anonymous,
}

/// The root disk at start.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskArg {
    None,
    /// A disk of this size arrives later ([`super::handover`]).
    Placeholder {
        size_bytes: u64,
    },
    /// The chain now: `-add-fd` pairs (fd, fdset) and `-blockdev` nodes.
    Chain {
        fds: Vec<(i32, u64)>,
        nodes: Vec<Value>,
        top: String,
    },
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub accel: Accel,
    pub machine: &'a MachineConfig,
    pub ram: RamArg,
    /// The kernel command line, for a boot (kernel and initrd at their fds).
    pub boot_cmdline: Option<&'a str>,
    pub disk: DiskArg,
    /// Wait for `migrate-incoming` (a restore).
    pub incoming: bool,
    /// `-sandbox on` with every deny option.
    pub sandbox: bool,
    /// The network device, if any.
    pub nic: NicArg,
}

/// The arguments (without the program).
pub fn args(p: &Plan<'_>) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
    push(&["-M", MACHINE]);
    push(&["-accel", p.accel.qemu_arg()]);
    push(&["-cpu", cpu_model(p.accel)]);
    push(&["-m", &format!("{}M", p.machine.mem_size_mib)]);
    push(&["-smp", &p.machine.vcpu_count.to_string()]);
    let mem = match p.ram {
        RamArg::File { shared } => format!(
            "memory-backend-file,id=mem,size={}M,mem-path=/proc/self/fd/{MEMORY_FD},share={}",
            p.machine.mem_size_mib,
            if shared { "on" } else { "off" }
        ),
        RamArg::Anonymous => format!("memory-backend-ram,id=mem,size={}M", p.machine.mem_size_mib),
    };
    push(&["-object", &mem]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-global", "migration.send-configuration=off"]);
    if p.sandbox {
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    if let Some(cmdline) = p.boot_cmdline {
        // Only the firmware reads these, at boot. A restored guest never
        // boots again (-no-reboot).
        push(&["-kernel", &format!("/proc/self/fd/{KERNEL_FD}")]);
        push(&["-initrd", &format!("/proc/self/fd/{INITRD_FD}")]);
        push(&["-append", cmdline]);
    }
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&[
        "-chardev",
        &format!("socket,id=con,fd={CONSOLE_FD}"),
        "-serial",
        "chardev:con",
    ]);
    push(&["-device", "virtio-serial-device,max_ports=2"]);
    push(&["-chardev", &format!("socket,id=agent,fd={AGENT_FD}")]);
    push(&[
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            hearth_proto::AGENT_PORT_NAME
        ),
    ]);
    push(&[
        "-object",
        "rng-builtin,id=rng",
        "-device",
        "virtio-rng-device,rng=rng",
    ]);
    match &p.disk {
        DiskArg::None => {}
        DiskArg::Placeholder { size_bytes } => {
            push(&[
                "-blockdev",
                &format!(
                    "driver=null-co,node-name={PLACEHOLDER_NODE},size={size_bytes},read-zeroes=on"
                ),
                "-blockdev",
                &format!("driver=raw,node-name={ROOT_NODE},file={PLACEHOLDER_NODE}"),
            ]);
            push(&["-device", &format!("virtio-blk-device,drive={ROOT_NODE}")]);
        }
        DiskArg::Chain { fds, nodes, top } => {
            for (fd, set) in fds {
                push(&["-add-fd", &format!("fd={fd},set={set}")]);
            }
            for n in nodes {
                push(&["-blockdev", &n.to_string()]);
            }
            push(&[
                "-blockdev",
                &format!("driver=raw,node-name={ROOT_NODE},file={top}"),
            ]);
            push(&["-device", &format!("virtio-blk-device,drive={ROOT_NODE}")]);
        }
    }
    match p.nic {
        NicArg::None => {}
        NicArg::Unplugged => push(&["-device", NIC_DEVICE_UNPLUGGED]),
        NicArg::User => push(&["-netdev", NIC_NETDEV, "-device", NIC_DEVICE]),
    }
    if p.incoming {
        push(&["-incoming", "defer"]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineConfig {
        MachineConfig {
            mem_size_mib: 512,
            vcpu_count: 1,
            cmdline: "console=ttyS0".into(),
            disk_size_bytes: Some(1 << 30),
            nic_slot: false,
        }
    }

    fn plan(accel: Accel, m: &MachineConfig) -> Plan<'_> {
        Plan {
            accel,
            machine: m,
            ram: RamArg::File { shared: false },
            boot_cmdline: None,
            disk: DiskArg::Placeholder {
                size_bytes: 1 << 30,
            },
            incoming: true,
            sandbox: true,
            nic: NicArg::None,
        }
    }

    #[test]
    fn command_line_differs_only_in_accelerator() {
        let m = machine();
        let tcg = args(&plan(Accel::Tcg, &m));
        let kvm = args(&plan(Accel::Kvm, &m));
        let diff: Vec<_> = tcg.iter().zip(kvm.iter()).filter(|(a, b)| a != b).collect();
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(tcg.iter().any(|a| a.contains("share=off")));
        assert!(tcg.ends_with(&["-incoming".to_string(), "defer".to_string()]));
        assert!(tcg.iter().any(|a| a.starts_with("on,obsolete=deny")));
    }

    #[test]
    fn boot_and_restore_have_the_same_devices() {
        let m = machine();
        let devices = |a: &[String]| -> Vec<String> {
            a.windows(2)
                .filter(|w| w[0] == "-device")
                .map(|w| w[1].clone())
                .collect()
        };
        let restore = args(&plan(Accel::Tcg, &m));
        let mut boot = plan(Accel::Tcg, &m);
        boot.boot_cmdline = Some("console=ttyS0");
        boot.incoming = false;
        boot.disk = DiskArg::Chain {
            fds: vec![(20, 1)],
            nodes: vec![],
            top: "g0l0".into(),
        };
        let boot = args(&boot);
        assert_eq!(devices(&boot), devices(&restore));
        assert!(boot.contains(&"/proc/self/fd/11".to_string()));
        assert!(!restore.iter().any(|a| a == "-kernel"));
    }

    #[test]
    fn a_nic_adds_a_user_network_device_after_every_other_device() {
        let m = machine();
        let mut p = plan(Accel::Tcg, &m);
        let without = args(&p);
        assert!(!without.iter().any(|a| a.contains("netdev")));
        p.nic = NicArg::User;
        let with = args(&p);
        let devices: Vec<&String> = with
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| &w[1])
            .collect();
        assert_eq!(devices.last().unwrap().as_str(), NIC_DEVICE);
        let netdev = with.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(with[netdev + 1], NIC_NETDEV);
        assert!(NIC_NETDEV.contains("ipv6=off"));
        // Everything else is unchanged, in the same order.
        let rest: Vec<&String> = with
            .iter()
            .enumerate()
            .filter(|(i, _)| !(netdev..netdev + 4).contains(i))
            .map(|(_, a)| a)
            .collect();
        assert_eq!(rest, without.iter().collect::<Vec<_>>());
    }
}
