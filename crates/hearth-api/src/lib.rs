//! The Lambda MicroVMs API server.
//!
//! Owns the HTTP side of Hearth's control plane: SigV4 authentication,
//! model-driven routing and validation (`hearth-api-model`), AWS-shaped
//! errors, pagination tokens, idempotency, the typed operations (`ops`) and
//! their handlers over the store (`hearth-store`). Runs on the caller's Tokio
//! runtime; store calls are blocking and go through `spawn_blocking`.

#![forbid(unsafe_code)]

pub mod context;
pub mod datadir;
pub mod error;
pub mod ext;
pub mod handlers;
pub mod ops;
pub mod paging;
pub mod server;

pub use context::{AppState, Caller, ManagedImage};
pub use datadir::DataDir;
pub use server::Api;
