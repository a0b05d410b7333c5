//! The request pipeline.
//!
//! Owns what happens to every API request, in order: authentication from the
//! headers alone (the `Authorization` header's form, its date, region and
//! service, and the access key) before a byte of the body is read; a body
//! budget that bounds what requests not yet authenticated may hold at once;
//! the body read and the signature verified over it; model routing and
//! input validation; idempotency; the handler; and the AWS-shaped answer.
//! Hearth's own endpoints (`/hearth/v1/...`, [`crate::ext`]) are routed
//! first: they say how they are authenticated (not at all, as above, or
//! over a declared payload hash with the body left for the handler to
//! stream), and the same authentication code runs for them.
//! [`Api`] is the [`hearth_http::Service`] of the API listener: each request
//! runs on its connection's Tokio task, to its end even if the client goes
//! away; store calls go through `spawn_blocking`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hearth_api_model::{InputError, Model, RouteError};
use hearth_http::{Body, RequestId};
use hearth_sigv4::SecretKey;
use hearth_store::{IdempotencyBegin, StoredResponse};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::context::{blocking, unix_secs, AppState, Caller};
use crate::error::{body_error, ApiError};
use crate::ext::{Endpoint, Extensions, OpenRequest, SignedRequest, StreamedRequest, UploadStore};
use crate::handlers;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Body bytes that requests not yet authenticated (their headers passed,
/// their signature not yet checked) may hold at once, server-wide.
pub const UNVERIFIED_BODY_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// How long a request waits for room in that budget before it is answered
/// `ThrottlingException` (which the AWS clients retry).
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// The budget is counted in KiB.
const BUDGET_UNIT_BYTES: usize = 1024;

/// Body bytes the requests of one access key may hold before their
/// signature is checked: room for one largest body and some small ones, so
/// that whoever knows a key id (they are not secret) cannot take the whole
/// budget alone. A request waits for room as for the server-wide budget.
pub const UNVERIFIED_BODY_BYTES_PER_KEY: usize = MAX_BODY_BYTES + 2 * 1024 * 1024;

/// The API listener's service.
pub struct Api {
    state: Arc<AppState>,
    unverified: BodyBudget,
    extensions: Extensions,
}

/// The unverified-body budget: server-wide, and per access key. Counted in
/// [`BUDGET_UNIT_BYTES`].
struct BodyBudget {
    all: Arc<Semaphore>,
    /// One semaphore per access key that has sent a body (keys passed the
    /// header checks, so they exist in the store: the map is bounded by the
    /// keys there are).
    by_key: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl BodyBudget {
    fn new() -> Self {
        BodyBudget {
            all: Arc::new(Semaphore::new(
                UNVERIFIED_BODY_BUDGET_BYTES / BUDGET_UNIT_BYTES,
            )),
            by_key: std::sync::Mutex::default(),
        }
    }

    /// Room for `bytes` of `key`'s, within the key's share and the whole
    /// budget, waiting at most `wait`; `None` if there is none by then.
    async fn reserve(
        &self,
        key: &str,
        bytes: usize,
        wait: Duration,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT_BYTES)).ok()?;
        let deadline = tokio::time::Instant::now() + wait;
        let per_key = {
            let mut m = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(
                        UNVERIFIED_BODY_BYTES_PER_KEY / BUDGET_UNIT_BYTES,
                    ))
                })
                .clone()
        };
        let mine = tokio::time::timeout_at(deadline, per_key.acquire_many_owned(units))
            .await
            .ok()?
            .ok()?;
        let all = tokio::time::timeout_at(deadline, self.all.clone().acquire_many_owned(units))
            .await
            .ok()?
            .ok()?;
        Some((mine, all))
    }
}

impl Api {
    pub fn new(state: Arc<AppState>) -> Self {
        Api {
            state,
            unverified: BodyBudget::new(),
            extensions: Extensions::default(),
        }
    }

    /// Accept code artifact uploads (`POST /hearth/v1/uploads`), kept under
    /// `uploads_dir` (`<data-dir>/uploads`). Without it, uploads are
    /// answered `NotImplementedException`.
    pub fn with_uploads(mut self, uploads_dir: &std::path::Path) -> Self {
        self.extensions.uploads = Some(Arc::new(UploadStore::new(uploads_dir)));
        self
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }
}

impl hearth_http::Service for Api {
    async fn call(&self, req: hearth_http::Request) -> hearth_http::Response {
        let rid = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(hearth_http::new_request_id);
        let path = req.uri().path().to_string();
        let mut resp = match self.pipeline(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(request_id = %rid, path = %path, error = e.shape(), "{e}");
                e.to_response()
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            resp.headers_mut().insert(hearth_http::REQUEST_ID_HEADER, v);
        }
        resp
    }
}

/// The active access key a request's headers name.
struct KnownKey {
    account_id: hearth_store::AccountId,
    access_key_id: String,
    secret: SecretKey,
}

impl KnownKey {
    /// The key as the verifier looks keys up: this one only.
    fn lookup(&self) -> impl Fn(&str) -> Option<SecretKey> + '_ {
        |id: &str| (id == self.access_key_id).then(|| self.secret.clone())
    }
}

impl Api {
    async fn pipeline(&self, req: hearth_http::Request) -> Result<hearth_http::Response, ApiError> {
        let (parts, body) = req.into_parts();
        let endpoint = match self.extensions.route(&parts.method, parts.uri.path()) {
            None => None,
            Some(Ok(endpoint)) => Some(endpoint),
            Some(Err(not_here)) => {
                // Said only to a caller who could have called it.
                self.authenticate(&parts, body).await?;
                return Err(not_here);
            }
        };
        let state = self.state.clone();
        match endpoint {
            None => {
                let (caller, body) = self.authenticate(&parts, body).await?;
                let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
                self.operation(method, uri, headers, &caller, body).await
            }
            Some(Endpoint::Open(handler)) => handler(OpenRequest { state, parts }).await,
            Some(Endpoint::Signed(handler)) => {
                let (caller, body) = self.authenticate(&parts, body).await?;
                handler(SignedRequest {
                    state,
                    caller,
                    parts,
                    body,
                })
                .await
            }
            Some(Endpoint::DeclaredPayload(handler)) => {
                let (caller, declared) = self.authenticate_declared_payload(&parts).await?;
                handler(StreamedRequest {
                    state,
                    caller,
                    parts,
                    body,
                    declared,
                })
                .await
            }
        }
    }

    /// Authenticate a request whose signature covers its body: from the
    /// headers alone first (nothing of the body is read for a request that
    /// cannot be from a known key), then the body within its limit and the
    /// budget for bodies whose signature is not yet checked, then the
    /// signature over it. Returns the caller and the verified body.
    async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<(Caller, Bytes), ApiError> {
        let (method, uri) = (&parts.method, &parts.uri);
        let header_pairs = header_pairs(&parts.headers);
        let key = self.authenticate_head(method, uri, &header_pairs).await?;
        if body.len_bytes() > MAX_BODY_BYTES as u64 {
            return Err(ApiError::PayloadTooLarge(format!(
                "The request body is {} bytes; the limit is {MAX_BODY_BYTES} bytes",
                body.len_bytes()
            )));
        }
        let body = self.read_body(body, &key.access_key_id).await?;
        let req = hearth_sigv4::Request {
            method: method.as_str(),
            raw_path: uri.path(),
            raw_query: uri.query().unwrap_or(""),
            headers: &header_pairs,
            body: &body,
        };
        let verified = hearth_sigv4::verify(
            &req,
            &key.lookup(),
            SystemTime::now(),
            self.verify_options(),
        )
        .map_err(auth_err)?;
        let caller = self.caller(key, &verified)?;
        Ok((caller, body))
    }

    /// Authenticate a request whose signature covers the SHA-256 it
    /// declares in `x-amz-content-sha256` (required), without reading its
    /// body: the same header checks and key lookup as [`Api::authenticate`],
    /// then the signature over the declared hash. The body is left for the
    /// handler, which must check it has that hash.
    async fn authenticate_declared_payload(
        &self,
        parts: &http::request::Parts,
    ) -> Result<(Caller, hearth_sigv4::DeclaredPayload), ApiError> {
        let (method, uri) = (&parts.method, &parts.uri);
        let header_pairs = header_pairs(&parts.headers);
        let key = self.authenticate_head(method, uri, &header_pairs).await?;
        let declared = hearth_sigv4::verify_declared_payload(
            method.as_str(),
            uri.path(),
            uri.query().unwrap_or(""),
            &header_pairs,
            &key.lookup(),
            SystemTime::now(),
            self.verify_options(),
        )
        .map_err(auth_err)?;
        let caller = self.caller(key, &declared.verified)?;
        Ok((caller, declared))
    }

    /// The caller a verified signature names.
    fn caller(&self, key: KnownKey, verified: &hearth_sigv4::Verified) -> Result<Caller, ApiError> {
        if verified.session_token.is_some() {
            // Hearth issues no temporary credentials, so no session token is valid.
            return Err(unrecognized_client());
        }
        Ok(Caller {
            account_id: key.account_id,
            region: self.state.region.clone(),
        })
    }

    /// What can be known from the headers: the `Authorization` header is
    /// well formed and fresh, scoped to this service and region, and names
    /// an active key. Returns its account and the key for verification.
    async fn authenticate_head(
        &self,
        method: &Method,
        uri: &Uri,
        header_pairs: &[(&str, &[u8])],
    ) -> Result<KnownKey, ApiError> {
        let auth = hearth_sigv4::precheck(
            method.as_str(),
            uri.path(),
            uri.query().unwrap_or(""),
            header_pairs,
            SystemTime::now(),
            self.verify_options(),
        )
        .map_err(auth_err)?;
        let access_key_id = auth.access_key_id.to_string();
        let store = self.state.store.clone();
        let lookup_key = access_key_id.clone();
        let found = blocking("looking up an access key", move || {
            store.secret_for(&lookup_key)
        })
        .await?;
        let Some((account_id, secret)) = found else {
            return Err(unrecognized_client());
        };
        Ok(KnownKey {
            account_id,
            access_key_id,
            secret: SecretKey::new(secret.expose().to_string()),
        })
    }

    /// Requests are signed for the `lambda` service in this server's region.
    fn verify_options(&self) -> hearth_sigv4::VerifyOptions<'_> {
        hearth_sigv4::VerifyOptions {
            service: "lambda",
            region: Some(&self.state.region),
        }
    }

    /// Read the body while holding its share of the unverified-body budget,
    /// within the share of its access key.
    async fn read_body(&self, body: Body, key_id: &str) -> Result<Bytes, ApiError> {
        let len = usize::try_from(body.len_bytes()).unwrap_or(usize::MAX);
        if len == 0 {
            return Ok(Bytes::new());
        }
        let Some(_room) = self.unverified.reserve(key_id, len, BUDGET_WAIT).await else {
            return Err(ApiError::Throttling {
                retry_after_secs: 1,
            });
        };
        body.read_all(MAX_BODY_BYTES).await.map_err(body_error)
    }

    /// Route, validate, run the operation (with its client token), answer.
    async fn operation(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        caller: &Caller,
        body: Bytes,
    ) -> Result<hearth_http::Response, ApiError> {
        let state = &self.state;
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
        let raw_path = uri.path();
        let raw_query = uri.query().unwrap_or("");
        let model = Model::get();
        let route = model
            .route(method.as_str(), raw_path)
            .map_err(|e| route_error(e, method, raw_path))?;
        let op = route.operation;
        let owned_headers: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let input = model
            .parse_input(op, &route.labels, raw_query, &owned_headers, &body)
            .map_err(|e| match e {
                InputError::Validation(v) => ApiError::Validation(v.to_string()),
                InputError::BodyNotJson { detail } => {
                    ApiError::Serialization(format!("Request body is not a JSON object: {detail}"))
                }
                e @ InputError::TooManyQueryParameters { .. } => {
                    ApiError::Validation(e.to_string())
                }
            })?;

        // Idempotency (create/update image, run).
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

        let outcome = handlers::dispatch(state, caller, &op.name, input).await;

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
            body
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
}

fn header_pairs(headers: &HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect()
}

fn route_error(e: RouteError, method: &Method, raw_path: &str) -> ApiError {
    match e {
        RouteError::NotFound => {
            ApiError::UnknownOperation(format!("No operation matches {method} {raw_path}"))
        }
        RouteError::MethodNotAllowed { allowed } => ApiError::MethodNotAllowed {
            message: format!(
                "{method} is not allowed here; allowed: {}",
                allowed.join(", ")
            ),
            allowed,
        },
        other => ApiError::Validation(other.to_string()),
    }
}

fn json_response(status: StatusCode, bytes: Vec<u8>) -> hearth_http::Response {
    let no_content = status == StatusCode::NO_CONTENT;
    let mut r = http::Response::new(hearth_http::ResponseBody::from(bytes));
    *r.status_mut() = status;
    if !no_content {
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
    }
    r
}

fn stored_response(s: StoredResponse) -> hearth_http::Response {
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
    let json = serde_json::to_vec(&v).expect("a JSON value serializes");
    hearth_store::request_fingerprint(&[op.as_bytes(), b"\0", &json].concat())
}

fn unrecognized_client() -> ApiError {
    ApiError::Auth {
        code: "UnrecognizedClientException",
        message: "The security token included in the request is invalid.".into(),
    }
}

fn auth_err(e: hearth_sigv4::SigV4Error) -> ApiError {
    ApiError::Auth {
        code: e.error_code(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_cannot_hold_more_than_its_share_of_unverified_bodies() {
        let budget = BodyBudget::new();
        let wait = Duration::from_millis(50);
        let a = budget.reserve("AKIAONE", MAX_BODY_BYTES, wait).await;
        let b = budget.reserve("AKIAONE", 2 * 1024 * 1024, wait).await;
        assert!(a.is_some() && b.is_some(), "a largest body and 2 MiB more");
        assert!(
            budget.reserve("AKIAONE", 1, wait).await.is_none(),
            "the key's share is full"
        );
        let other = budget.reserve("AKIATWO", MAX_BODY_BYTES, wait).await;
        assert!(other.is_some(), "another key has room");
        assert!(
            budget
                .reserve("AKIATHREE", MAX_BODY_BYTES, wait)
                .await
                .is_none(),
            "but the whole budget is full"
        );
        drop(a);
        assert!(budget
            .reserve("AKIAONE", MAX_BODY_BYTES, wait)
            .await
            .is_some());
    }
}
