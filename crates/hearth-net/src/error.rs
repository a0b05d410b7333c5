//! The crate's one error: every failure names what was being done and to
//! which namespace, interface or file.

use std::path::PathBuf;

/// Why preparing, using or removing an egress network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("egress network name {name:?} is not valid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{link_net} is not the network address of a /30 (it must be a multiple of 4)")]
    InvalidLinkNet { link_net: std::net::Ipv4Addr },
    #[error("nameserver {address} cannot be reached from a network namespace: {reason}")]
    InvalidNameserver {
        address: std::net::Ipv4Addr,
        reason: &'static str,
    },
    #[error("no IPv4 nameserver usable from a network namespace in {}", .paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
    NoNameserver { paths: Vec<PathBuf> },
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read the output of `{command}`")]
    Parse {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot enter the network namespace {}", .path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
