//! Accelerator selection: KVM where it can run a standard guest, TCG elsewhere.
//!
//! Owns the decision and its reason. Runs once, on whatever task builds the
//! backend; the result is logged once and then only read.
//!
//! `/dev/kvm` is not enough: on hosts whose KVM is the PVM nested hypervisor
//! (module `kvm_pvm`) a standard guest kernel hangs or dies with "emulation
//! failure" (docs/ARCHITECTURE.md, "Hosts and the accelerator"). Such hosts get TCG unless the user forces KVM
//! (they may have a PVM-enabled guest kernel).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// What the user asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: expected auto, kvm or tcg"
            )),
        }
    }
}

/// The accelerator QEMU is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The `-accel` argument.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            // A bounded translation cache keeps the resident size of idle
            // guests small; 64 MiB is ample for one guest kernel + userland.
            Accel::Tcg => "tcg,tb-size=64",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The decision and why it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Host facts the decision depends on; separated so tests can supply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostKvmFacts {
    pub dev_kvm_usable: bool,
    pub kvm_pvm_loaded: bool,
}

impl HostKvmFacts {
    /// Read the facts of this host.
    pub fn probe() -> Self {
        let dev_kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let kvm_pvm_loaded = Path::new("/sys/module/kvm_pvm").exists()
            || std::fs::read_to_string("/proc/modules")
                .map(|m| m.lines().any(|l| l.starts_with("kvm_pvm ")))
                .unwrap_or(false);
        Self {
            dev_kvm_usable,
            kvm_pvm_loaded,
        }
    }
}

/// Pick the accelerator.
pub fn decide(choice: AccelChoice, facts: HostKvmFacts) -> AccelDecision {
    match choice {
        AccelChoice::Tcg => AccelDecision {
            accel: Accel::Tcg,
            reason: "TCG forced by --accel tcg".into(),
        },
        AccelChoice::Kvm => AccelDecision {
            accel: Accel::Kvm,
            reason: if facts.kvm_pvm_loaded {
                "KVM forced by --accel kvm on a PVM host: the guest kernel must have PVM guest support".into()
            } else {
                "KVM forced by --accel kvm".into()
            },
        },
        AccelChoice::Auto if !facts.dev_kvm_usable => AccelDecision {
            accel: Accel::Tcg,
            reason: "/dev/kvm is missing or not accessible: using TCG software emulation (slow)".into(),
        },
        AccelChoice::Auto if facts.kvm_pvm_loaded => AccelDecision {
            accel: Accel::Tcg,
            reason: "/dev/kvm is the PVM nested hypervisor (kvm_pvm), which cannot run standard guest kernels: using TCG software emulation (slow); pass --accel kvm with a PVM-enabled guest kernel to override".into(),
        },
        AccelChoice::Auto => AccelDecision {
            accel: Accel::Kvm,
            reason: "/dev/kvm is usable: using KVM".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM: HostKvmFacts = HostKvmFacts {
        dev_kvm_usable: true,
        kvm_pvm_loaded: true,
    };
    const KVM: HostKvmFacts = HostKvmFacts {
        dev_kvm_usable: true,
        kvm_pvm_loaded: false,
    };
    const NONE: HostKvmFacts = HostKvmFacts {
        dev_kvm_usable: false,
        kvm_pvm_loaded: false,
    };

    #[test]
    fn auto_picks_kvm_only_on_standard_kvm() {
        assert_eq!(decide(AccelChoice::Auto, KVM).accel, Accel::Kvm);
        assert_eq!(decide(AccelChoice::Auto, PVM).accel, Accel::Tcg);
        assert_eq!(decide(AccelChoice::Auto, NONE).accel, Accel::Tcg);
        assert!(decide(AccelChoice::Auto, PVM).reason.contains("PVM"));
    }

    #[test]
    fn overrides_win() {
        assert_eq!(decide(AccelChoice::Kvm, PVM).accel, Accel::Kvm);
        assert_eq!(decide(AccelChoice::Tcg, KVM).accel, Accel::Tcg);
    }

    #[test]
    fn parses_choice() {
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert!("xen".parse::<AccelChoice>().unwrap_err().contains("xen"));
    }
}
