//! Inputs and outputs of the auth-token operations: CreateMicrovmAuthToken
//! and CreateMicrovmShellAuthToken. Plain serde data, read and written on the
//! request task by the handlers (conventions in [`crate::ops`]).

use serde::{Deserialize, Serialize};

use super::shapes::{PortSpecification, TokenParts};

/// `CreateMicrovmAuthTokenRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMicrovmAuthTokenInput {
    pub microvm_identifier: String,
    pub expiration_in_minutes: i32,
    pub allowed_ports: Vec<PortSpecification>,
}

/// `CreateMicrovmShellAuthTokenRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMicrovmShellAuthTokenInput {
    pub microvm_identifier: String,
    pub expiration_in_minutes: i32,
}

/// `CreateMicrovmAuthTokenResponse` and `CreateMicrovmShellAuthTokenResponse`:
/// the headers a client sends to reach the microVM (sensitive).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthToken {
    pub auth_token: TokenParts,
}

/// `CreateMicrovmAuthTokenResponse`.
pub type CreateMicrovmAuthTokenOutput = AuthToken;
/// `CreateMicrovmShellAuthTokenResponse`.
pub type CreateMicrovmShellAuthTokenOutput = AuthToken;

operations! {
    CreateMicrovmAuthToken: CreateMicrovmAuthTokenInput => CreateMicrovmAuthTokenOutput;
    CreateMicrovmShellAuthToken: CreateMicrovmShellAuthTokenInput => CreateMicrovmShellAuthTokenOutput;
}
