//! Handlers of the auth-token operations: CreateMicrovmAuthToken mints a
//! token for the endpoint proxy (HMAC-signed with the server's proxy key:
//! account, microVM, allowed ports, expiry); CreateMicrovmShellAuthToken
//! arrives with the shell connector (501 until then, after looking the
//! microVM up, so an absent one is a 404). Runs on the request task.

use hearth_token::{Claims, TokenKind};

use super::{handler, microvms, NotYet, Registration};
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

async fn create(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmAuthTokenInput,
) -> Result<AuthToken, ApiError> {
    let m = microvms::existing(ctx, &input.microvm_identifier).await?;
    if !(1..=MAX_EXPIRATION_MINUTES).contains(&input.expiration_in_minutes) {
        return Err(ApiError::Validation(format!(
            "expirationInMinutes: {} is outside 1..={MAX_EXPIRATION_MINUTES}",
            input.expiration_in_minutes
        )));
    }
    let ports = port_ranges(&input.allowed_ports)?;
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
        kind: TokenKind::Http,
        ports,
        expires_at_secs: now + i64::from(input.expiration_in_minutes) * 60,
    });
    Ok(AuthToken {
        auth_token: [(TOKEN_HEADER.to_string(), token)].into_iter().collect(),
    })
}

async fn create_shell(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmShellAuthTokenInput,
) -> Result<AuthToken, ApiError> {
    microvms::existing(ctx, &input.microvm_identifier).await?;
    Err(NotYet {
        operation: ctx.operation,
        arrives: "shell tokens arrive with the shell connector (SHELL_INGRESS)",
    }
    .into())
}
