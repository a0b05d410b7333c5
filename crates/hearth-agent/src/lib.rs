//! `hearth-agent`: the in-guest agent, PID 1 of every Hearth microVM.
//!
//! The binary (`main.rs`) decides whether it is PID 1. As PID 1 it runs
//! [`pid1::run`]: the init duties of [`init`], then [`serve`] on the
//! virtio-serial port found by [`channel`]. Anywhere else (host tests) only
//! [`serve`] runs, on whatever channel it is handed.
//!
//! Threads (all started by this crate):
//!
//! ```text
//!  main thread ─ init, then serve::serve: read + decode host frames, dispatch
//!  "writer"    ─ writer.rs: the only thread that writes the channel (quiesce gate)
//!  "reaper"    ─ reaper.rs: waitpid(-1) forever, hands statuses to owners
//!  "exec-N"    ─ exec.rs: supervises the process(es) of Exec stream N
//!  "out-N"/"err-N"/"stdin-N" ─ exec.rs: pipes of stream N
//!  "tcp-N"/"tcp-rx-N" ─ tcp.rs: both directions of TCP stream N
//! ```
//!
//! Every channel between threads is a bounded `sync_channel`: a paused writer
//! (quiesce) back-pressures producers instead of growing memory.

pub mod channel;
mod errors;
mod exec;
mod files;
pub mod init;
pub mod log;
pub mod pid1;
mod reaper;
pub mod restore;
mod serve;
mod spawn;
mod tcp;
mod users;
mod writer;

pub use restore::{RealSystem, SystemOps};
pub use serve::{serve, ServeConfig};

use std::sync::{Mutex, MutexGuard};

/// Lock a mutex, ignoring poisoning: a panicked thread must not take PID 1
/// down with it, and every critical section here leaves its data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
