//! Handlers of the auth-token operations: CreateMicrovmAuthToken and
//! CreateMicrovmShellAuthToken. Tokens are minted by the microVM proxy of
//! the RunMicrovm issue; until then both look the microVM up (404 when
//! absent) and answer 501. Runs on the request task.

use super::{handler, microvms, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::{self, auth_tokens::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::CreateMicrovmAuthToken => create),
    handler!(ops::CreateMicrovmShellAuthToken => create_shell),
];

async fn create(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmAuthTokenInput,
) -> Result<AuthToken, ApiError> {
    microvms::existing(ctx, &input.microvm_identifier).await?;
    Err(microvms::lifecycle_not_yet(ctx))
}

async fn create_shell(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmShellAuthTokenInput,
) -> Result<AuthToken, ApiError> {
    microvms::existing(ctx, &input.microvm_identifier).await?;
    Err(microvms::lifecycle_not_yet(ctx))
}
