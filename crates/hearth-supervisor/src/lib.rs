//! `hearth-supervisor`: the small process that holds one microVM.
//!
//! Hearth starts one supervisor per microVM and the supervisor starts QEMU.
//! The supervisor is what lets a microVM outlive the `hearth` process: it
//! owns QEMU's agent channel (a socket pair whose other end QEMU holds, so
//! the guest never sees the host disconnect), QEMU's console, and QEMU
//! itself (its parent, with `PR_SET_PDEATHSIG`). A `hearth` process attaches
//! to it over a UNIX socket in the microVM's directory, and a restarted
//! `hearth` attaches again. QMP does not go through the supervisor: QEMU
//! listens on a socket of its own that any `hearth` can reconnect to.
//!
//! What it owns, and in which module:
//!
//! * [`config`]: what it is told to run, read once from fd 3 at start;
//! * [`control`]: the JSON-lines protocol on its control socket (attach,
//!   status, linger, kill), and the exit record it leaves behind;
//! * [`relay`]: the frame-aligned relay between QEMU's agent socket and the
//!   attached `hearth` (a `hearth` that dies mid-frame costs that one frame,
//!   never the alignment of the stream);
//! * [`jail`]: confinement of the child before `execve`: namespaces (the
//!   network one empty, or the egress network's namespace the config
//!   names), a private read-only root, its own uid, no new privileges;
//! * [`cgroup`]: the child's cgroups (v2 where the host has the controller
//!   there, v1 otherwise) with memory, CPU and PID limits;
//! * [`run`]: the single-threaded `poll` loop that ties them together.
//!
//! The supervisor is single-threaded (so `fork` is safe), runs as root, and
//! answers only root peers on its control socket.

pub mod cgroup;
pub mod config;
pub mod control;
pub mod jail;
pub mod relay;
pub mod run;
mod sys;

pub use config::{CgroupSpec, JailSpec, SupervisorConfig, CONFIG_FD, CONFIG_VERSION};
pub use control::{
    ControlRequest, ControlResponse, ExitRecord, SupervisorStatus, CONTROL_VERSION, EXIT_FILE,
};
