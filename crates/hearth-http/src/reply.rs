//! Request ids and the AWS-shaped error answer, for the front end's own
//! refusals and for services that want the same shape. Pure functions.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::{Response, ResponseBody};

/// The header every answer carries (the AWS clients read it, any case).
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// The id of one request, in its extensions; the front end puts it in the
/// answer's [`REQUEST_ID_HEADER`] unless the service already did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Where a request came from, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
}

/// A new random request id, formatted as AWS formats them (a UUID).
pub fn new_request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An AWS REST-JSON error answer: `status`, `x-amzn-ErrorType: error_type`
/// and `{"message": message}`.
pub fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "message": message }))
        .expect("a JSON object serializes");
    let mut r = http::Response::new(ResponseBody::from(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(error_type) {
        h.insert("x-amzn-errortype", v);
    }
    r
}
