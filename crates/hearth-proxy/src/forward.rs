//! One request: CONNECT, routing, auth, rate limit, ingress, and forwarding
//! to the app over a stream from [`Upstreams::open`](crate::Upstreams::open).
//!
//! Runs on the task hyper polls the request on (the connection's task for
//! HTTP/1.1, a stream task for HTTP/2). Checks happen in this order, each
//! answering the client itself when it fails: CONNECT is tunnelled only to
//! endpoint names; plain HTTP with TLS on is refused; the host must be an
//! endpoint (404); the token must verify and be for this microVM (403). The
//! token's kind then decides what the request is: a shell token goes to
//! [`crate::shell`] (which refuses anything but a WebSocket without a port);
//! an HTTP token must allow the port (403), the microVM must be under its
//! rate (429), its ingress connectors must let HTTP in (403, asked of
//! [`Upstreams::ingress`](crate::Upstreams::ingress) before anything is
//! opened), and the stream must open (404/409/502/503/429). The request
//! then goes to the app as HTTP/1.1 over its own upstream connection, whose
//! task is spawned per request; bodies stream through both ways. A
//! WebSocket `101` turns both connections into a byte pipe on a task of its
//! own.

use crate::admit::{open_reject, rate_limit, require_ingress, Admit, Opening};
use crate::body::{empty, ActivityBody, ProxyBody, Reject};
use crate::ctx::{spawn_guarded, ConnCtx, Shared};
use crate::headers::{self, Credentials, Origin};
use crate::io::Tapped;
use crate::{route, shell};
use hearth_token::{Claims, TokenKind};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// Handles one request; every failure becomes a JSON answer.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    ctx: ConnCtx,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    match handle_inner(&shared, &ctx, req).await {
        Ok(resp) => resp,
        Err(reject) => {
            tracing::debug!(
                peer = %ctx.peer,
                %method,
                status = reject.status.as_u16(),
                message = %reject.message,
                "request refused by the proxy"
            );
            reject.into_response()
        }
    }
}

async fn handle_inner(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Reject> {
    if req.method() == Method::CONNECT {
        // Tunnels are opened by the connection (`conn`), which checks them
        // with `check_connect` first.
        return Err(Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is handled by the connection",
        ));
    }
    if ctx.plain_only_connect {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks HTTPS: use https://, or CONNECT through it as an HTTPS proxy",
        ));
    }
    let authority = request_authority(&req)?;
    let host = route::host_of_authority(&authority);
    let microvm_id = route::microvm_of_host(&host, &shared.domain)
        .ok_or_else(|| {
            Reject::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no microVM endpoint is served at {host:?}; endpoints are <microvmId>.{}",
                    shared.domain
                ),
            )
        })?
        .to_string();
    let websocket = headers::is_websocket_upgrade(req.version(), req.headers());
    let creds = headers::credentials(req.headers(), websocket);
    let claims = authorize(shared, &microvm_id, &creds)?;
    match claims.kind {
        TokenKind::Http => {}
        TokenKind::Shell => {
            return shell::open(shared, ctx, req, websocket, &creds, &claims, &microvm_id).await
        }
    }
    let port = match &creds.port {
        Some(raw) => headers::parse_port(raw)?,
        None => shared.cfg.default_port,
    };
    if !claims.allows_port(port) {
        return Err(Reject::new(
            StatusCode::FORBIDDEN,
            format!("port {port} is not allowed by this auth token"),
        ));
    }
    rate_limit(shared, &claims, &microvm_id)?;
    require_ingress(shared, &claims, &microvm_id, Admit::Http).await?;
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    let upstream = shared
        .upstreams
        .open(&claims.account_id, &claims.microvm_id, port)
        .await
        .map_err(|e| open_reject(e, &microvm_id, Opening::Port(port)))?;
    let activity = upstream.activity;
    activity();

    let (parts, body) = req.into_parts();
    let fwd_headers = headers::forward_request_headers(
        parts.headers,
        parts.version,
        &authority,
        websocket.then_some(&creds),
        Origin {
            peer_ip: ctx.peer.ip(),
            https: ctx.https,
        },
    )?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let mut fwd = Request::new(ActivityBody::new(body, activity.clone()));
    *fwd.method_mut() = parts.method;
    *fwd.uri_mut() = path
        .parse()
        .map_err(|_| Reject::new(StatusCode::BAD_REQUEST, "the request path is not valid"))?;
    *fwd.version_mut() = Version::HTTP_11;
    *fwd.headers_mut() = fwd_headers;

    let bad_gateway = |what: String| {
        Reject::new(
            StatusCode::BAD_GATEWAY,
            format!("the app on port {port} of microVM {microvm_id} {what}"),
        )
    };
    let (mut sender, upstream_conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(upstream.io))
        .await
        .map_err(|e| bad_gateway(format!("could not be reached ({e})")))?;
    spawn_guarded(shared, ctx, async move {
        if let Err(e) = upstream_conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    let mut resp = sender
        .send_request(fwd)
        .await
        .map_err(|e| bad_gateway(format!("closed the connection without answering ({e})")))?;
    tracing::debug!(
        peer = %ctx.peer,
        microvm_id = %claims.microvm_id,
        port,
        status = resp.status().as_u16(),
        "request forwarded"
    );

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(bad_gateway(
                "switched protocols on a request that did not ask to".into(),
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = headers::websocket_101_headers(resp.into_parts().0.headers, &creds);
        spawn_guarded(shared, ctx, async move {
            match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(client), Ok(app)) => {
                    let mut client = Tapped::both(TokioIo::new(client), activity);
                    let mut app = TokioIo::new(app);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
                        tracing::debug!(error = %e, "WebSocket pipe ended with an error");
                    }
                }
                (client, app) => tracing::debug!(
                    client_ok = client.is_ok(),
                    app_ok = app.is_ok(),
                    "WebSocket upgrade did not complete"
                ),
            }
        });
        return Ok(out);
    }

    let (parts, body) = resp.into_parts();
    // Response bytes count as use too: a long download is not idle.
    let mut out = Response::new(ActivityBody::new(body, activity).boxed());
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers::response_headers(parts.headers);
    Ok(out)
}

/// The host the request is for: the URI's authority (HTTP/2 `:authority`,
/// HTTP/1.1 absolute form), else the `Host` header.
fn request_authority(req: &Request<Incoming>) -> Result<String, Reject> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_string());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| Reject::new(StatusCode::BAD_REQUEST, "the request names no host"))
}

/// Verifies the token and that it is for `microvm_id`; the caller looks at
/// its kind.
fn authorize(shared: &Shared, microvm_id: &str, creds: &Credentials) -> Result<Claims, Reject> {
    let forbidden = |m: String| Reject::new(StatusCode::FORBIDDEN, m);
    let token = creds.token.as_deref().ok_or_else(|| {
        forbidden(
            "missing auth token: send the X-aws-proxy-auth header (for a WebSocket, the \
             lambda-microvms.authentication.<token> subprotocol)"
                .into(),
        )
    })?;
    let claims = shared
        .key
        .verify(token, now_secs())
        .map_err(|e| forbidden(e.to_string()))?;
    if !claims.microvm_id.eq_ignore_ascii_case(microvm_id) {
        return Err(forbidden(format!(
            "this auth token is not for microVM {microvm_id}"
        )));
    }
    Ok(claims)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether a CONNECT may open a tunnel: only to `<microvmId>.<domain>:<port>`
/// over HTTP/1.x on a client's own connection. Any other target is refused:
/// this is not an open proxy.
pub(crate) fn check_connect(
    shared: &Shared,
    ctx: &ConnCtx,
    req: &Request<Incoming>,
) -> Result<(), Reject> {
    // Python's http.client tunnels with `CONNECT ... HTTP/1.0`.
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    if !ctx.outer || !http1 {
        return Err(Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is accepted only over HTTP/1.x on a direct connection to the proxy",
        ));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| Reject::new(StatusCode::BAD_REQUEST, "CONNECT needs a host:port target"))?;
    let host = route::host_of_authority(authority.as_str());
    if route::microvm_of_host(&host, &shared.domain).is_none() {
        return Err(Reject::new(
            StatusCode::FORBIDDEN,
            format!(
                "this proxy tunnels only to its endpoints <microvmId>.{}, not to {host:?}",
                shared.domain
            ),
        ));
    }
    Ok(())
}
