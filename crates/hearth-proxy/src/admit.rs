//! Admission of a request the proxy has authenticated: the per-microVM
//! rate, the microVM's ingress connectors, and the answer a client gets
//! when opening something in the microVM fails. Shared by the HTTP path
//! ([`crate::forward`]) and the shell ([`crate::shell`]); runs on the
//! request's task.

use http::StatusCode;
use std::time::Instant;

use crate::body::Reject;
use crate::ctx::Shared;
use crate::OpenError;
use hearth_token::Claims;

/// 429 (with `Retry-After`) when the token's microVM is above its rate.
pub(crate) fn rate_limit(shared: &Shared, claims: &Claims, microvm_id: &str) -> Result<(), Reject> {
    shared
        .limiter
        .check(&claims.microvm_id, Instant::now())
        .map_err(|wait| {
            Reject::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests to microVM {microvm_id} (limit {} per second)",
                    shared.cfg.max_requests_per_sec_per_microvm
                ),
            )
            .retry_after(wait)
        })
}

/// What a request asks a microVM's ingress connectors to let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// An HTTP request or a WebSocket to an app's port.
    Http,
    /// The interactive shell.
    Shell,
}

/// Asks [`Upstreams::ingress`](crate::Upstreams::ingress) whether the
/// microVM's ingress connectors let `admit` in: 403 naming the connectors
/// when they do not, the mapped [`OpenError`] when the question fails.
/// Opens nothing (a refused request never resumes a microVM).
pub(crate) async fn require_ingress(
    shared: &Shared,
    claims: &Claims,
    microvm_id: &str,
    admit: Admit,
) -> Result<(), Reject> {
    let ingress = shared
        .upstreams
        .ingress(&claims.account_id, &claims.microvm_id)
        .await
        .map_err(|e| open_reject(e, microvm_id, Opening::Ingress))?;
    let (allowed, what, connector) = match admit {
        Admit::Http => (ingress.http, "HTTP requests", "HTTP_INGRESS"),
        Admit::Shell => (ingress.shell, "shell sessions", "SHELL_INGRESS"),
    };
    if allowed {
        return Ok(());
    }
    Err(Reject::new(
        StatusCode::FORBIDDEN,
        format!(
            "microVM {microvm_id} does not accept {what}: its ingress network connectors \
             do not include {connector} or ALL_INGRESS"
        ),
    ))
}

/// What was being opened when an [`OpenError`] came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// The ingress question ([`require_ingress`]).
    Ingress,
    /// A stream to this port.
    Port(u16),
    /// A shell.
    Shell,
}

/// The answer the client gets for an [`OpenError`].
pub(crate) fn open_reject(e: OpenError, microvm_id: &str, opening: Opening) -> Reject {
    match e {
        OpenError::NotFound => Reject::new(
            StatusCode::NOT_FOUND,
            format!("microVM {microvm_id} not found"),
        ),
        OpenError::NotRunning { state, hint } => Reject::new(
            StatusCode::CONFLICT,
            format!("microVM {microvm_id} is {state}: {hint}"),
        ),
        OpenError::Refused => Reject::new(
            StatusCode::BAD_GATEWAY,
            match opening {
                Opening::Port(port) => {
                    format!("nothing is listening on port {port} in microVM {microvm_id}")
                }
                Opening::Shell => format!("microVM {microvm_id} refused to start a shell"),
                Opening::Ingress => format!("microVM {microvm_id} refused the connection"),
            },
        ),
        OpenError::Unavailable(why) => Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("microVM {microvm_id} is unavailable: {why}"),
        ),
        OpenError::Busy => Reject::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("microVM {microvm_id} is busy; retry shortly"),
        )
        .retry_after(std::time::Duration::from_secs(1)),
    }
}
