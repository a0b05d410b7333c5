//! Inputs and outputs of the microVM operations: RunMicrovm, GetMicrovm,
//! ListMicrovms, SuspendMicrovm, ResumeMicrovm, TerminateMicrovm. Plain serde
//! data, read and written on the request task by the handlers (conventions in
//! [`crate::ops`]).

use serde::{Deserialize, Serialize};

use super::shapes::{Empty, IdlePolicy, Logging};

/// `RunMicrovmRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunMicrovmInput {
    pub image_identifier: String,
    pub image_version: Option<String>,
    pub ingress_network_connectors: Option<Vec<String>>,
    pub egress_network_connectors: Option<Vec<String>>,
    pub execution_role_arn: Option<String>,
    pub idle_policy: Option<IdlePolicy>,
    pub logging: Option<Logging>,
    pub kms_key_identifier: Option<String>,
    /// Sensitive: never log it.
    pub run_hook_payload: Option<String>,
    pub maximum_duration_in_seconds: Option<i32>,
    pub client_token: Option<String>,
}

/// One microVM as RunMicrovm and GetMicrovm answer it (`RunMicrovmResponse`
/// and `GetMicrovmResponse` have the same members).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Microvm {
    pub microvm_id: String,
    /// `MicrovmState` enum.
    pub state: String,
    pub endpoint: String,
    pub image_arn: String,
    pub image_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration_in_seconds: i32,
    pub started_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_network_connectors: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_network_connectors: Option<Vec<String>>,
}

/// `RunMicrovmResponse`.
pub type RunMicrovmOutput = Microvm;

/// `GetMicrovmRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetMicrovmInput {
    pub microvm_identifier: String,
}

/// `GetMicrovmResponse`.
pub type GetMicrovmOutput = Microvm;

/// `ListMicrovmsRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListMicrovmsInput {
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
    /// Only microVMs of this image (ARN, id or name).
    pub image_identifier: Option<String>,
    pub image_version: Option<String>,
}

/// `ListMicrovmsResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmsOutput {
    pub items: Vec<MicrovmItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `MicrovmItem`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmItem {
    pub microvm_id: String,
    pub state: String,
    pub image_arn: String,
    pub image_version: String,
    pub started_at: i64,
}

/// `SuspendMicrovmRequest`, `ResumeMicrovmRequest`, `TerminateMicrovmRequest`:
/// the microVM alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MicrovmIdentifierInput {
    pub microvm_identifier: String,
}

/// `SuspendMicrovmRequest`.
pub type SuspendMicrovmInput = MicrovmIdentifierInput;
/// `ResumeMicrovmRequest`.
pub type ResumeMicrovmInput = MicrovmIdentifierInput;
/// `TerminateMicrovmRequest`.
pub type TerminateMicrovmInput = MicrovmIdentifierInput;
/// `SuspendMicrovmResponse` (no members).
pub type SuspendMicrovmOutput = Empty;
/// `ResumeMicrovmResponse` (no members).
pub type ResumeMicrovmOutput = Empty;
/// `TerminateMicrovmResponse` (no members).
pub type TerminateMicrovmOutput = Empty;

operations! {
    RunMicrovm: RunMicrovmInput => RunMicrovmOutput;
    GetMicrovm: GetMicrovmInput => GetMicrovmOutput;
    ListMicrovms: ListMicrovmsInput => ListMicrovmsOutput;
    SuspendMicrovm: SuspendMicrovmInput => SuspendMicrovmOutput;
    ResumeMicrovm: ResumeMicrovmInput => ResumeMicrovmOutput;
    TerminateMicrovm: TerminateMicrovmInput => TerminateMicrovmOutput;
}
