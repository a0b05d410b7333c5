//! Body types: the proxy's response body, the activity-counting body
//! (requests and responses), and the JSON error responses the proxy answers itself. Polled by
//! whichever task serves the request; nothing here buffers a streamed body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What the proxy answers with: an upstream body streamed through, or a
/// small body of its own.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub(crate) fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A refusal the proxy answers itself: a status, a message for the user,
/// and for 429 how long to wait.
#[derive(Debug)]
pub(crate) struct Reject {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

impl Reject {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// `{"message": ...}` with `content-type: application/json`, and
    /// `Retry-After` in whole seconds (at least 1) when set.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({ "message": self.message }).to_string();
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// A body that calls `activity` for each data frame that passes through.
pub(crate) struct ActivityBody<B> {
    inner: B,
    activity: Arc<dyn Fn() + Send + Sync>,
}

impl<B> ActivityBody<B> {
    pub(crate) fn new(inner: B, activity: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self { inner, activity }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ActivityBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if frame.is_data() {
                (this.activity)();
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reject_is_json_with_a_whole_second_retry_after() {
        let resp = Reject::new(StatusCode::TOO_MANY_REQUESTS, "slow \"down\"")
            .retry_after(Duration::from_millis(200))
            .into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["retry-after"], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message"], "slow \"down\"");
    }
}
