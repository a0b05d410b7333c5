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
//!  main thread ─ init, then serve::serve: read + decode host frames, route them
//!                (inline: files, ping, signals, resize, quiesce/thaw/restore/
//!                reattach/power-off; it never waits on a stream)
//!  "writer"    ─ writer.rs: the only thread that writes the channel (quiesce gate,
//!                drops frames of ended streams and old connections)
//!  "reaper"    ─ reaper.rs: waitpid(-1) forever, hands statuses to owners
//!  "exec-N"    ─ process.rs: supervises the process started by Exec request N
//!  "out-N"     ─ process.rs: output of the current incarnation (stdout+stderr
//!                pipes, or the PTY master) to the process's route, within credit
//!  "in-N"      ─ inbox.rs/process.rs: host input of stream N (stdin pipe, PTY)
//!  "tcp-N"     ─ tcp.rs: connects, then writes host input of TCP stream N
//!  "tcp-rx-N"  ─ tcp.rs: reads the socket of TCP stream N, within credit
//! ```
//!
//! Modules, leaves first: `credit`, `ring`, `fdio`, `errors` (plain data and
//! helpers); `writer` (outbox, scopes); `inbox` (host input queue + pump);
//! `stream` (the `Stream` trait and table); `pty`, `spawn`, `reaper`;
//! `sink` (output routing of a process); `process` (supervision, pumps,
//! registry); `session`; the request handlers `exec`, `attach`, `tcp`,
//! `files`, `control`; and `serve`, the router. No module depends on one
//! after it.
//!
//! The channel to the writer is a bounded `sync_channel`: a paused writer
//! (quiesce) back-pressures producers instead of growing memory. Every
//! stream has a credit window in each direction (`credit.rs`), so a stalled
//! consumer stops only its own stream.

mod attach;
pub mod channel;
mod control;
mod credit;
mod errors;
mod exec;
mod fdio;
mod files;
mod inbox;
pub mod init;
pub mod log;
pub mod pid1;
mod process;
mod pty;
mod reaper;
pub mod restore;
mod ring;
mod serve;
mod session;
mod sink;
mod spawn;
mod stream;
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
