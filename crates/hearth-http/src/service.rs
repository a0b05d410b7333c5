//! What answers requests: the one trait a listener's service implements.

use std::future::Future;

use crate::{Request, Response};

/// What answers requests. The future runs on the connection's task, to its
/// end even if the client leaves.
pub trait Service: Send + Sync + 'static {
    fn call(&self, req: Request) -> impl Future<Output = Response> + Send;
}
