//! The state one serve session shares with its request handlers and stream
//! threads: the writer's outbox, the stream table, the processes, and the
//! system seam. Made by `serve` on the reader thread and handed to the
//! handlers as `&Arc<Session>`; stream threads keep only the parts they
//! need (an `Outbox` clone, the `Arc<StreamTable>`), never the session.

use std::path::PathBuf;
use std::sync::Arc;

use crate::process::Processes;
use crate::restore::SystemOps;
use crate::stream::StreamTable;
use crate::writer::Outbox;

pub(crate) struct Session {
    pub outbox: Outbox,
    pub streams: Arc<StreamTable>,
    pub processes: Arc<Processes>,
    pub system: Arc<dyn SystemOps>,
    /// Where user names are looked up (`/etc`).
    pub etc_dir: PathBuf,
}
