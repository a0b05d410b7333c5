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
//! A service may read a large body piece by piece ([`Body::next_chunk`])
//! and may answer with a body produced over time ([`body_channel`]): it is
//! sent with `Transfer-Encoding: chunked`, each chunk as it comes, through a
//! bounded channel, and a client that stops reading is dropped after
//! [`Limits::write_timeout`] on one chunk.
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
mod response;
mod server;
mod service;

pub use body::{Body, BodyError};
pub use limits::Limits;
pub use reply::{error_response, new_request_id, ConnInfo, RequestId, REQUEST_ID_HEADER};
pub use response::{body_channel, BodySender, BodyStream, ResponseBody, StreamClosed};
pub use server::serve;
pub use service::Service;

/// A response as services build it: a whole body in memory, or one produced
/// over time ([`body_channel`]) and streamed to the client as it comes.
pub type Response = http::Response<ResponseBody>;
/// A request as services see it.
pub type Request = http::Request<Body>;
