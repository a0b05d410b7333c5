//! Hearth's HTTP/1.1 front end, for the API and the proxy listeners.
//!
//! Owns everything between an accepted TCP connection and a parsed request:
//! how many connections are held at once, how long a client may take to send
//! a request head, a body, or nothing at all, how many bytes a request head
//! may hold, and the AWS-shaped answer (`x-amzn-ErrorType`, a JSON `message`,
//! `x-amzn-RequestId`) to every request it refuses itself. A [`Service`] gets
//! each request's head at once and its body only when it asks
//! ([`Body::read_all`]): the API authenticates from the headers before it
//! reads a byte of the body, and a client that sent `Expect: 100-continue`
//! is told to go on only then.
//!
//! Memory an unauthenticated client can make a listener hold is bounded by
//! [`Limits::connection_memory_bound_bytes`]: every connection buffers at
//! most one request head plus one read; bodies are read only when a service
//! asks, and the API bounds those itself.
//!
//! Each connection runs on its own Tokio task ([`serve`]); a service's
//! future runs on that task to its end even when the client goes away, so a
//! request is never abandoned half-done.

#![forbid(unsafe_code)]

mod body;
mod conn;
mod h2;
mod io;
mod limits;
mod reply;
mod server;
mod service;

pub use body::{Body, BodyError};
pub use limits::Limits;
pub use reply::{error_response, new_request_id, ConnInfo, RequestId, REQUEST_ID_HEADER};
pub use server::serve;
pub use service::Service;

/// A response as services build it: the body is always in memory.
pub type Response = http::Response<bytes::Bytes>;
/// A request as services see it.
pub type Request = http::Request<Body>;
