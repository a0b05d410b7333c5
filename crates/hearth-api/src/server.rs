//! The request pipeline.
//!
//! Owns what happens to every HTTP request, in order: request id, body limit,
//! SigV4 authentication, model routing, input validation, idempotency, the
//! handler, and the AWS-shaped response. One axum fallback handler runs it on
//! the connection's Tokio task; store calls go through `spawn_blocking`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hearth_api_model::{InputError, Model, RouteError};
use hearth_sigv4::SecretKey;
use hearth_store::{IdempotencyBegin, StoredResponse};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::context::{blocking, unix_secs, AppState, Caller};
use crate::error::ApiError;
use crate::handlers;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Build the router. `/hearth/v1/ping` answers without authentication (the
/// ceiling `hearth bench api` compares against); everything else is the API.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/hearth/v1/ping", axum::routing::get(|| async { "pong" }))
        .fallback(handle)
        .with_state(state)
}

fn request_id() -> String {
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

async fn handle(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = request_id();
    let result = pipeline(&state, &method, &uri, &headers, body).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(request_id = %rid, path = uri.path(), error = e.shape(), "{e}");
            e.into_response()
        }
    };
    resp.headers_mut().insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&rid).expect("hex id"),
    );
    resp
}

async fn pipeline(
    state: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // 1. Body: at most MAX_BODY_BYTES are ever buffered. The body is read
    // up to the limit rather than refused on Content-Length alone, so that
    // the client, still sending, reliably gets the 400 instead of a reset.
    let body: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    if !body.is_empty() {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json")
            && !mime.eq_ignore_ascii_case("application/x-amz-json-1.1")
        {
            return Err(ApiError::Validation(format!(
                "Content-Type must be application/json for a request with a body (got {:?})",
                ct.chars().take(64).collect::<String>()
            )));
        }
    }

    // 2. Authentication.
    let raw_path = uri.path();
    let raw_query = uri.query().unwrap_or("");
    let header_pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("\u{fffd}")))
        .collect();
    let Some(auth_value) = headers.get("authorization") else {
        return Err(ApiError::Auth {
            code: "MissingAuthenticationTokenException",
            message: "Missing Authentication Token".into(),
        });
    };
    let auth_value = auth_value.to_str().unwrap_or("");
    let akid = match hearth_sigv4::parse_authorization(auth_value) {
        Ok(a) => a.access_key_id.to_string(),
        Err(e) => return Err(auth_err(e)),
    };
    let store = state.store.clone();
    let lookup_key = akid.clone();
    let found = blocking("looking up an access key", move || {
        store.secret_for(&lookup_key)
    })
    .await?;
    let (account_id, secret) = match found {
        Some((acct, secret)) => (acct, SecretKey::new(secret.expose().to_string())),
        None => {
            return Err(ApiError::Auth {
                code: "UnrecognizedClientException",
                message: "The security token included in the request is invalid.".into(),
            })
        }
    };
    let mut keys = HashMap::new();
    keys.insert(akid, secret);
    let req = hearth_sigv4::Request {
        method: method.as_str(),
        raw_path,
        raw_query,
        headers: &header_pairs,
        body: &body,
    };
    let verified =
        hearth_sigv4::verify(&req, &keys, SystemTime::now(), "lambda").map_err(auth_err)?;
    if verified.session_token.is_some() {
        // Hearth issues no temporary credentials, so no session token is valid.
        return Err(ApiError::Auth {
            code: "UnrecognizedClientException",
            message: "The security token included in the request is invalid.".into(),
        });
    }
    let caller = Caller {
        account_id,
        region: verified.region.clone(),
    };

    // 3. Route and validate.
    let model = Model::get();
    let route = model
        .route(method.as_str(), raw_path)
        .map_err(|e| match e {
            RouteError::NotFound => {
                ApiError::UnknownOperation(format!("No operation matches {} {}", method, raw_path))
            }
            RouteError::MethodNotAllowed { allowed } => ApiError::MethodNotAllowed {
                message: format!(
                    "{method} is not allowed here; allowed: {}",
                    allowed.join(", ")
                ),
                allowed,
            },
        })?;
    let op = route.operation;
    let owned_headers: Vec<(String, String)> = header_pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let input = model
        .parse_input(op, &route.labels, raw_query, &owned_headers, &body)
        .map_err(|e| match e {
            InputError::Validation(v) => ApiError::Validation(v.to_string()),
            InputError::BodyNotJson { detail } => {
                ApiError::Serialization(format!("Request body is not a JSON object: {detail}"))
            }
        })?;

    // 4. Idempotency (create/update image, run).
    let token = model.idempotency_token(op, &input).map(str::to_owned);
    if let Some(token) = &token {
        let fingerprint = fingerprint(
            &op.name,
            &input,
            model.op_idempotency_member(op).unwrap_or(""),
        );
        let (store, acct, opn, tok) = (
            state.store.clone(),
            caller.account_id.clone(),
            op.name.clone(),
            token.clone(),
        );
        let now = unix_secs();
        let begun = blocking("checking the client token", move || {
            store.idempotency_begin(&acct, &opn, &tok, &fingerprint, now)
        })
        .await?;
        match begun {
            IdempotencyBegin::Started => {}
            IdempotencyBegin::Completed(stored) => return Ok(stored_response(stored)),
            IdempotencyBegin::InProgress { .. } => {
                return Err(ApiError::Conflict {
                    message: "A request with this clientToken is still in progress".into(),
                    resource_id: None,
                    resource_type: None,
                })
            }
            _ => {
                return Err(ApiError::Conflict {
                    message: "The clientToken was already used with a different request".into(),
                    resource_id: None,
                    resource_type: None,
                })
            }
        }
    }

    // 5. The operation.
    let outcome = handlers::dispatch(state, &caller, &op.name, input).await;

    // 6. Respond (and remember the response for the client token).
    let (status, body) = match outcome {
        Ok(v) => (
            StatusCode::from_u16(op.response_code).unwrap_or(StatusCode::OK),
            v,
        ),
        Err(e) => {
            if let Some(tok) = token {
                let (store, acct, opn) = (
                    state.store.clone(),
                    caller.account_id.clone(),
                    op.name.clone(),
                );
                let _ = blocking("releasing the client token", move || {
                    store.idempotency_abort(&acct, &opn, &tok)
                })
                .await;
            }
            return Err(e);
        }
    };
    let bytes = if status == StatusCode::NO_CONTENT {
        Vec::new()
    } else {
        serde_json::to_vec(&body).expect("serialize")
    };
    if let Some(tok) = token {
        let stored = StoredResponse {
            status: status.as_u16(),
            body: bytes.clone(),
        };
        let (store, acct, opn) = (
            state.store.clone(),
            caller.account_id.clone(),
            op.name.clone(),
        );
        blocking("recording the client token", move || {
            store.idempotency_complete(&acct, &opn, &tok, &stored)
        })
        .await?;
    }
    Ok(json_response(status, bytes))
}

fn json_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    if status != StatusCode::NO_CONTENT {
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
    }
    r
}

fn stored_response(s: StoredResponse) -> Response {
    json_response(
        StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK),
        s.body,
    )
}

/// Stable fingerprint of a request: operation + canonical JSON of the input
/// without its client token (serde_json maps are sorted).
fn fingerprint(op: &str, input: &Value, token_member: &str) -> String {
    let mut v = input.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove(token_member);
    }
    let mut h = Sha256::new();
    h.update(op.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&v).expect("serialize"));
    hex::encode(h.finalize())
}

fn too_large() -> ApiError {
    ApiError::Validation(format!(
        "Request body exceeds the {MAX_BODY_BYTES}-byte limit"
    ))
}

fn auth_err(e: hearth_sigv4::SigV4Error) -> ApiError {
    ApiError::Auth {
        code: e.error_code(),
        message: e.to_string(),
    }
}
