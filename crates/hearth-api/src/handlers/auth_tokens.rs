//! Handlers of the auth-token operations: CreateMicrovmAuthToken mints a
//! token for the endpoint proxy (HMAC-signed with the server's proxy key:
//! account, microVM, allowed ports, expiry); CreateMicrovmShellAuthToken
//! mints a shell token (no ports) for a microVM whose ingress connectors
//! let shells in (`SHELL_INGRESS` or `ALL_INGRESS`; any other microVM is a
//! ValidationException that says so). Runs on the request task.

use hearth_token::{Claims, TokenKind};

use super::{handler, microvms, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::shapes::PortSpecification;
use crate::ops::{self, auth_tokens::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::CreateMicrovmAuthToken => create),
    handler!(ops::CreateMicrovmShellAuthToken => create_shell),
];

/// The header a token travels in.
pub const TOKEN_HEADER: &str = "X-aws-proxy-auth";
/// Longest token life, in minutes (the model's bound).
const MAX_EXPIRATION_MINUTES: i32 = 60;

fn port(name: &str, v: i32) -> Result<u16, ApiError> {
    u16::try_from(v).ok().filter(|p| *p >= 1).ok_or_else(|| {
        ApiError::Validation(format!("allowedPorts: {name} {v} is outside 1..=65535"))
    })
}

/// The ports a token allows, as inclusive ranges.
fn port_ranges(specs: &[PortSpecification]) -> Result<Vec<(u16, u16)>, ApiError> {
    if specs.is_empty() {
        return Err(ApiError::Validation(
            "allowedPorts: give at least one port, range or allPorts".into(),
        ));
    }
    specs
        .iter()
        .map(|s| match s {
            PortSpecification::Port(p) => port("port", *p).map(|p| (p, p)),
            PortSpecification::Range(r) => {
                let (a, b) = (
                    port("startPort", r.start_port)?,
                    port("endPort", r.end_port)?,
                );
                if a > b {
                    return Err(ApiError::Validation(format!(
                        "allowedPorts: range {a}-{b} ends before it starts"
                    )));
                }
                Ok((a, b))
            }
            PortSpecification::AllPorts(_) => Ok((1, u16::MAX)),
        })
        .collect()
}

/// Checks the expiry asked for and mints a token of `kind` for `m`.
fn mint(
    ctx: &RequestContext<'_>,
    m: hearth_store::Microvm,
    kind: TokenKind,
    ports: Vec<(u16, u16)>,
    expiration_in_minutes: i32,
) -> Result<AuthToken, ApiError> {
    if !(1..=MAX_EXPIRATION_MINUTES).contains(&expiration_in_minutes) {
        return Err(ApiError::Validation(format!(
            "expirationInMinutes: {expiration_in_minutes} is outside 1..={MAX_EXPIRATION_MINUTES}"
        )));
    }
    let key = ctx.state.proxy_tokens.as_ref().ok_or_else(|| {
        ApiError::Validation(
            "this server runs no endpoint proxy (hearth serve --no-proxy), so it mints no tokens"
                .into(),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let token = key.mint(&Claims {
        account_id: m.account_id.to_string(),
        microvm_id: m.microvm_id,
        kind,
        ports,
        expires_at_secs: now + i64::from(expiration_in_minutes) * 60,
    });
    Ok(AuthToken {
        auth_token: [(TOKEN_HEADER.to_string(), token)].into_iter().collect(),
    })
}

async fn create(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmAuthTokenInput,
) -> Result<AuthToken, ApiError> {
    let m = microvms::existing(ctx, &input.microvm_identifier).await?;
    let ports = port_ranges(&input.allowed_ports)?;
    mint(ctx, m, TokenKind::Http, ports, input.expiration_in_minutes)
}

async fn create_shell(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmShellAuthTokenInput,
) -> Result<AuthToken, ApiError> {
    let m = microvms::existing(ctx, &input.microvm_identifier).await?;
    let connectors: Option<Vec<String>> = m
        .doc
        .get("ingressNetworkConnectors")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if !hearth_control::connectors::IngressRules::of(connectors.as_deref()).shell {
        return Err(ApiError::Validation(format!(
            "microVM {} does not accept shell sessions: its ingressNetworkConnectors do not \
             include SHELL_INGRESS or ALL_INGRESS (they are fixed at RunMicrovm; run a new \
             microVM with one of them)",
            m.microvm_id
        )));
    }
    mint(
        ctx,
        m,
        TokenKind::Shell,
        Vec::new(),
        input.expiration_in_minutes,
    )
}
