//! Hearth's own endpoints beside the AWS API, under `/hearth/v1/`.
//!
//! Owns their routing: [`Extensions::route`] maps a method and path to an
//! [`Endpoint`], which says how the pipeline ([`crate::server`])
//! authenticates the request and carries the handler it runs then. The
//! pipeline owns authentication (the same code as for every AWS operation);
//! a handler owns the rest and answers a whole or a streamed
//! [`hearth_http::Response`]. Runs on the request's connection task.
//!
//! The endpoints (docs in the README):
//!
//! | route | authentication | handler |
//! |---|---|---|
//! | `GET /hearth/v1/ping` | none | `pong` |
//! | `POST /hearth/v1/uploads` | SigV4 over a declared `x-amz-content-sha256` | [`uploads`] |
//! | `GET /hearth/v1/images/{image}/versions/{v}/builds/{id}/logs` | SigV4 | `logs` (streamed) |
//! | `GET /hearth/v1/microvms/{id}/logs` | SigV4 | `logs` (streamed) |
//!
//! Adding one: an arm in the `match` of [`Extensions::route`] naming the
//! method, the kind of authentication and the handler, e.g.
//!
//! ```ignore
//! ["builds", build_id, "logs"] => {
//!     let build_id = build_id.to_string();
//!     (Method::GET, Endpoint::signed(move |r| build_logs::get(r, build_id)))
//! }
//! ```
//!
//! with `async fn get(r: SignedRequest, build_id: String) -> Result<hearth_http::Response, ApiError>`;
//! to stream the answer, it returns a response whose body is the
//! [`hearth_http::ResponseBody`] of [`hearth_http::body_channel`] and gives
//! the [`hearth_http::BodySender`] to a task it spawns.
//!
//! Path segments are plain: `A-Z a-z 0-9 - _ . ~`, neither empty nor `.`
//! or `..`, no percent-encoding; so the path routed is the path signed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hearth_http::{Body, Response};
use http::{HeaderValue, Method};

use crate::context::{AppState, Caller};
use crate::error::ApiError;

mod logs;
pub mod uploads;

pub use uploads::UploadStore;

/// Where Hearth's own endpoints live.
pub const PREFIX: &str = "/hearth/v1/";

/// The future of an extension handler.
pub(crate) type ExtFuture = Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>;

/// An extension handler, given the request as its kind of authentication
/// leaves it.
pub(crate) type Handler<R> = Box<dyn FnOnce(R) -> ExtFuture + Send>;

/// How an endpoint is authenticated, with its handler.
pub(crate) enum Endpoint {
    /// Not at all (health checks). The body is not read.
    Open(Handler<OpenRequest>),
    /// As every AWS operation: the body (at most
    /// [`crate::server::MAX_BODY_BYTES`]) read within the unverified-body
    /// budget, and covered by the signature.
    Signed(Handler<SignedRequest>),
    /// Over the payload hash the request declares in a signed
    /// `x-amz-content-sha256`: the signature is checked before the body is
    /// read, and the body is left on the connection for the handler to
    /// stream, hash and check against [`StreamedRequest::declared`].
    DeclaredPayload(Handler<StreamedRequest>),
}

/// Box `f` as a [`Handler`].
fn handler<R, F, Fut>(f: F) -> Handler<R>
where
    F: FnOnce(R) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    Box::new(move |r| Box::pin(f(r)))
}

impl Endpoint {
    #[allow(dead_code)] // the next signed routes (build logs) use it
    pub(crate) fn signed<F, Fut>(f: F) -> Self
    where
        F: FnOnce(SignedRequest) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
    {
        Endpoint::Signed(handler(f))
    }

    fn open<F, Fut>(f: F) -> Self
    where
        F: FnOnce(OpenRequest) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
    {
        Endpoint::Open(handler(f))
    }

    fn declared_payload<F, Fut>(f: F) -> Self
    where
        F: FnOnce(StreamedRequest) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
    {
        Endpoint::DeclaredPayload(handler(f))
    }
}

/// A request to an endpoint that is not authenticated.
pub struct OpenRequest {
    pub state: Arc<AppState>,
    pub parts: http::request::Parts,
}

/// A request to an endpoint authenticated as every AWS operation.
pub struct SignedRequest {
    pub state: Arc<AppState>,
    pub caller: Caller,
    /// Method, URI (the query too) and headers.
    pub parts: http::request::Parts,
    /// The whole body, verified.
    pub body: Bytes,
}

/// A request to an endpoint authenticated over its declared payload hash:
/// its head is authenticated, its body not read (and not verified) yet.
pub struct StreamedRequest {
    pub state: Arc<AppState>,
    pub caller: Caller,
    pub parts: http::request::Parts,
    pub body: Body,
    /// The SHA-256 the signature covers: the body is the caller's only if it
    /// has this hash.
    pub declared: hearth_sigv4::DeclaredPayload,
}

/// The extension endpoints of one server, with what they need besides the
/// [`AppState`].
#[derive(Default)]
pub(crate) struct Extensions {
    /// Where uploads go; `None`: this server takes none.
    pub uploads: Option<Arc<UploadStore>>,
}

impl Extensions {
    /// The endpoint for `method` and `path`: `None` when the path is not
    /// under [`PREFIX`] (an AWS operation); an error (404, 405, answered
    /// after authentication) when nothing here matches.
    pub(crate) fn route(&self, method: &Method, path: &str) -> Option<Result<Endpoint, ApiError>> {
        let rest = path.strip_prefix(PREFIX)?;
        let unknown =
            || ApiError::UnknownOperation(format!("No operation matches {method} {path}"));
        let segments: Vec<&str> = rest.split('/').collect();
        if !segments.iter().all(|s| plain_segment(s)) {
            return Some(Err(unknown()));
        }
        let (allowed, endpoint) = match segments.as_slice() {
            ["ping"] => (Method::GET, Endpoint::open(ping)),
            ["uploads"] => (Method::POST, self.uploads_endpoint()),
            ["images", image, "versions", version, "builds", build, "logs"] => {
                let (i, v, b) = (image.to_string(), version.to_string(), build.to_string());
                (
                    Method::GET,
                    Endpoint::signed(move |r| logs::get(r, i, v, b)),
                )
            }
            ["microvms", microvm, "logs"] => {
                let m = microvm.to_string();
                (
                    Method::GET,
                    Endpoint::signed(move |r| logs::get_microvm(r, m)),
                )
            }
            _ => return Some(Err(unknown())),
        };
        if *method != allowed {
            return Some(Err(ApiError::MethodNotAllowed {
                message: format!("{method} is not allowed here; allowed: {allowed}"),
                allowed: vec![allowed.to_string()],
            }));
        }
        Some(Ok(endpoint))
    }

    fn uploads_endpoint(&self) -> Endpoint {
        match &self.uploads {
            Some(store) => {
                let store = store.clone();
                Endpoint::declared_payload(move |r| uploads::put(store, r))
            }
            None => Endpoint::declared_payload(|_| async {
                Err(ApiError::NotImplemented(
                    "This server does not accept uploads".into(),
                ))
            }),
        }
    }
}

/// A path segment routed as it is: not empty, no dot segment, only
/// unreserved characters (nothing percent-encoded).
fn plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// `GET /hearth/v1/ping`: the unauthenticated ceiling `hearth bench api`
/// compares against.
async fn ping(_: OpenRequest) -> Result<Response, ApiError> {
    let mut r = http::Response::new(hearth_http::ResponseBody::from("pong"));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> Option<Result<&'static str, u16>> {
        Extensions::default().route(&method, path).map(|r| {
            r.map(|e| match e {
                Endpoint::Open(_) => "open",
                Endpoint::Signed(_) => "signed",
                Endpoint::DeclaredPayload(_) => "declared",
            })
            .map_err(|e| e.status().as_u16())
        })
    }

    #[test]
    fn routes_their_methods_and_paths_that_are_not_plain() {
        assert_eq!(route(Method::GET, "/2025-09-09/microvms"), None);
        assert_eq!(route(Method::GET, "/hearth/v1"), None);
        assert_eq!(route(Method::GET, "/hearth/v1/ping"), Some(Ok("open")));
        assert_eq!(
            route(Method::POST, "/hearth/v1/uploads"),
            Some(Ok("declared"))
        );
        assert_eq!(route(Method::POST, "/hearth/v1/ping"), Some(Err(405)));
        assert_eq!(route(Method::GET, "/hearth/v1/uploads"), Some(Err(405)));
        for path in [
            "/hearth/v1/",
            "/hearth/v1/nothing",
            "/hearth/v1/ping/",
            "/hearth/v1//ping",
            "/hearth/v1/./ping",
            "/hearth/v1/x/../ping",
            "/hearth/v1/%70ing",
            "/hearth/v1/uploads/%2e%2e",
        ] {
            assert_eq!(route(Method::GET, path), Some(Err(404)), "{path}");
        }
    }
}
