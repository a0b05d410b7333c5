//! AWS-shaped errors.
//!
//! Owns the mapping from every failure the API can report to the wire form
//! the AWS clients parse (docs/WIRE-FORMAT.md, "Responses"): HTTP status by shape, the
//! `x-amzn-errortype` header, a JSON body with `message` plus the modelled
//! members. Built on the request task; no I/O.

use bytes::Bytes;
use hearth_store::{ResourceKind, StoreError};
use http::{HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

/// One API failure, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: input does not satisfy the model.
    #[error("{0}")]
    Validation(String),
    /// 400: the body is not the JSON the protocol carries (the AWS REST-JSON
    /// protocol's `SerializationException`).
    #[error("{0}")]
    Serialization(String),
    /// 403: signature, key or date problems (code from the verifier). The
    /// message does not repeat the code: clients print both.
    #[error("{message}")]
    Auth { code: &'static str, message: String },
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    AccessDenied(String),
    /// 404: no such resource *for this account*.
    #[error("{message}")]
    NotFound {
        message: String,
        resource_type: &'static str,
        resource_id: String,
    },
    /// 404: no operation at this path.
    #[error("{0}")]
    UnknownOperation(String),
    /// 405: the path exists with other methods (sent in `Allow`).
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        allowed: Vec<String>,
    },
    /// 409: state conflict, or a reused client token with a different request.
    #[error("{message}")]
    Conflict {
        message: String,
        resource_id: Option<String>,
        resource_type: Option<&'static str>,
    },
    /// 402.
    #[error("{0}")]
    QuotaExceeded(String),
    /// 413: the body is larger than the API accepts (refused from its
    /// `Content-Length`, before it is read).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body could not be read (too slow, cut off): the front end's
    /// status and error type.
    #[error("{message}")]
    Body {
        status: StatusCode,
        shape: &'static str,
        message: String,
    },
    /// 429.
    #[error("rate exceeded")]
    Throttling { retry_after_secs: u32 },
    /// 501: the operation exists in the API but this build cannot perform it yet.
    #[error("{0}")]
    NotImplemented(String),
    /// 500: the service cannot take the work now (no room for another
    /// running microVM); the message says why.
    #[error("{0}")]
    InsufficientCapacity(String),
    /// 500: our fault. The message is generic; details go to the log.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(resource_type: &'static str, resource_id: impl Into<String>) -> Self {
        let resource_id = resource_id.into();
        ApiError::NotFound {
            message: format!("{resource_type} {resource_id} not found"),
            resource_type,
            resource_id,
        }
    }

    /// An internal failure: logs the detail, tells the client only that it happened.
    pub fn internal(context: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {detail}");
        ApiError::Internal(format!(
            "internal error while {context}; see the server log"
        ))
    }

    /// The modelled shape name (`x-amzn-errortype`).
    pub fn shape(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "ValidationException",
            ApiError::Serialization(_) => "SerializationException",
            ApiError::Auth { code, .. } => code,
            ApiError::AccessDenied(_) => "AccessDeniedException",
            ApiError::NotFound { .. } => "ResourceNotFoundException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowedException",
            ApiError::Conflict { .. } => "ConflictException",
            ApiError::QuotaExceeded(_) => "ServiceQuotaExceededException",
            ApiError::PayloadTooLarge(_) => "RequestEntityTooLargeException",
            ApiError::Body { shape, .. } => shape,
            ApiError::Throttling { .. } => "ThrottlingException",
            ApiError::NotImplemented(_) => "NotImplementedException",
            ApiError::InsufficientCapacity(_) => "InsufficientCapacityException",
            ApiError::Internal(_) => "InternalServerException",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::Serialization(_) => StatusCode::BAD_REQUEST,
            ApiError::Auth { .. } | ApiError::AccessDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::UnknownOperation(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::QuotaExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Body { status, .. } => *status,
            ApiError::Throttling { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::InsufficientCapacity(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The JSON body: `message` plus modelled members.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("message".into(), json!(self.to_string()));
        match self {
            ApiError::NotFound {
                resource_type,
                resource_id,
                ..
            } => {
                m.insert("resourceType".into(), json!(resource_type));
                m.insert("resourceId".into(), json!(resource_id));
            }
            ApiError::Conflict {
                resource_id,
                resource_type,
                ..
            } => {
                if let Some(id) = resource_id {
                    m.insert("resourceId".into(), json!(id));
                }
                if let Some(t) = resource_type {
                    m.insert("resourceType".into(), json!(t));
                }
            }
            ApiError::Throttling { retry_after_secs } => {
                m.insert("retryAfterSeconds".into(), json!(retry_after_secs));
            }
            _ => {}
        }
        Value::Object(m)
    }
}

impl ApiError {
    /// The whole answer: status, `x-amzn-errortype`, the JSON body, and
    /// `retry-after` or `allow` where they apply.
    pub fn to_response(&self) -> hearth_http::Response {
        let body = serde_json::to_vec(&self.body()).expect("a JSON object serializes");
        let mut resp = http::Response::new(Bytes::from(body).into());
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-amzn-errortype", HeaderValue::from_static(self.shape()));
        match self {
            ApiError::Throttling { retry_after_secs } => {
                h.insert("retry-after", HeaderValue::from(*retry_after_secs));
            }
            ApiError::MethodNotAllowed { allowed, .. } => {
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    h.insert("allow", v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// A body that could not be read, as the front end would answer it.
pub(crate) fn body_error(e: hearth_http::BodyError) -> ApiError {
    ApiError::Body {
        status: e.status(),
        shape: e.error_type(),
        message: e.to_string(),
    }
}

/// Map store failures to API errors.
pub fn store_error(what: &'static str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { kind, id } => ApiError::not_found(resource_name(kind), id),
        StoreError::Conflict(c) => ApiError::Conflict {
            message: c.to_string(),
            resource_id: None,
            resource_type: None,
        },
        other => ApiError::internal(what, other),
    }
}

fn resource_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Image => "MicroVM image",
        ResourceKind::ImageVersion => "MicroVM image version",
        ResourceKind::Build => "MicroVM image build",
        ResourceKind::Microvm => "MicroVM",
        _ => "Resource",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_statuses_and_bodies() {
        let e = ApiError::not_found("MicroVM", "mvm-1");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.shape(), "ResourceNotFoundException");
        assert_eq!(e.body()["resourceId"], "mvm-1");
        assert_eq!(ApiError::QuotaExceeded("x".into()).status().as_u16(), 402);
        let t = ApiError::Throttling {
            retry_after_secs: 3,
        };
        let r = t.to_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.headers()["x-amzn-errortype"], "ThrottlingException");
    }

    #[test]
    fn auth_messages_do_not_repeat_the_code_and_405_says_what_is_allowed() {
        let e = ApiError::Auth {
            code: "InvalidSignatureException",
            message: "The request signature we calculated does not match".into(),
        };
        assert!(!e.to_string().contains("InvalidSignatureException"), "{e}");
        let r = ApiError::MethodNotAllowed {
            message: "no".into(),
            allowed: vec!["GET".into(), "DELETE".into()],
        }
        .to_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET, DELETE");
        let r = ApiError::Serialization("not JSON".into()).to_response();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["x-amzn-errortype"], "SerializationException");
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let e = ApiError::internal("listing microVMs", "sqlite: disk I/O error at /secret/path");
        assert!(!e.to_string().contains("/secret/path"));
    }
}
