//! Finding and opening the agent's virtio-serial port (main thread, at
//! start-up).
//!
//! The port is the virtio-serial port named [`AGENT_PORT_NAME`]:
//! `/sys/class/virtio-ports/vportNpM/name` holds the name and devtmpfs
//! creates `/dev/vportNpM`. It is opened once, `O_RDWR`, and kept open for
//! the agent's whole life: a port can be opened only once. While the host
//! is disconnected `read()` returns 0 (see [`crate::ServeConfig::port`]).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use hearth_proto::AGENT_PORT_NAME;

/// Where virtio-serial ports are listed.
pub const VIRTIO_PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long to wait for the port at boot before complaining.
pub const PORT_WAIT_MS: u64 = 10_000;
const PORT_POLL_MS: u64 = 20;

/// Why the port could not be opened.
#[derive(Debug)]
pub enum ChannelError {
    NotFound { name: String, waited_ms: u64 },
    Open { path: PathBuf, source: io::Error },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::NotFound { name, waited_ms } => write!(
                f,
                "no virtio-serial port named {name:?} under {VIRTIO_PORTS_DIR} after {waited_ms} ms"
            ),
            ChannelError::Open { path, source } => write!(f, "open {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ChannelError {}

/// The device node of the port called `name`, if it is listed in
/// `ports_dir` and its node exists in `dev_dir`.
pub fn find_port(ports_dir: &Path, dev_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(ports_dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let port_name = fs::read_to_string(entry.path().join("name")).ok()?;
        if port_name.trim_end() != name {
            return None;
        }
        let node = dev_dir.join(entry.file_name());
        node.exists().then_some(node)
    })
}

/// Wait (polling) up to `timeout_ms` for the agent port, then open it.
pub fn open_agent_port(timeout_ms: u64) -> Result<(PathBuf, File), ChannelError> {
    let start = Instant::now();
    let path = loop {
        if let Some(path) = find_port(
            Path::new(VIRTIO_PORTS_DIR),
            Path::new("/dev"),
            AGENT_PORT_NAME,
        ) {
            break path;
        }
        if start.elapsed() >= Duration::from_millis(timeout_ms) {
            return Err(ChannelError::NotFound {
                name: AGENT_PORT_NAME.to_string(),
                waited_ms: timeout_ms,
            });
        }
        thread::sleep(Duration::from_millis(PORT_POLL_MS));
    };
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
    {
        Ok(port) => Ok((path, port)),
        Err(source) => Err(ChannelError::Open { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_port_is_found() {
        let root = std::env::temp_dir().join(format!("hearth-agent-ports-{}", std::process::id()));
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        for (port, name) in [
            ("vport0p0", "other\n"),
            ("vport0p1", "hearth.agent\n"),
            ("vport1p1", "hearth.agent.x\n"),
        ] {
            fs::create_dir_all(sys.join(port)).unwrap();
            fs::write(sys.join(port).join("name"), name).unwrap();
        }
        fs::create_dir_all(&dev).unwrap();
        assert_eq!(find_port(&sys, &dev, AGENT_PORT_NAME), None, "node missing");
        fs::write(dev.join("vport0p1"), "").unwrap();
        fs::write(dev.join("vport1p1"), "").unwrap();
        assert_eq!(
            find_port(&sys, &dev, AGENT_PORT_NAME),
            Some(dev.join("vport0p1"))
        );
        assert_eq!(find_port(&root.join("nope"), &dev, AGENT_PORT_NAME), None);
    }
}
