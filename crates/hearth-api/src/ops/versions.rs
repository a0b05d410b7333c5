//! Inputs and outputs of the image version and build operations:
//! GetMicrovmImageVersion, ListMicrovmImageVersions,
//! UpdateMicrovmImageVersion, DeleteMicrovmImageVersion,
//! GetMicrovmImageBuild, ListMicrovmImageBuilds. Plain serde data, read and
//! written on the request task by the handlers (conventions in
//! [`crate::ops`]).

use serde::{Deserialize, Serialize};

use super::shapes::{
    CodeArtifact, CpuConfiguration, EnvironmentVariables, Hooks, Logging, Resources, SnapshotBuild,
    Tags,
};

/// One image version as every version answer gives it: the model's
/// `GetMicrovmImageVersionOutput`, `MicrovmImageVersionSummary` and
/// `UpdateMicrovmImageVersionResponse` have the same members.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVersion {
    pub image_arn: String,
    pub image_version: String,
    /// `MicrovmImageVersionState` enum.
    pub state: String,
    /// `MicrovmImageVersionStatus` enum.
    pub status: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    pub base_image_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_image_version: Option<String>,
    pub build_role_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub code_artifact: CodeArtifact,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_network_connectors: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_configurations: Option<Vec<CpuConfiguration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Resources>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_os_capabilities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_variables: Option<EnvironmentVariables>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_identifier: Option<String>,
}

/// `GetMicrovmImageVersionInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetMicrovmImageVersionInput {
    pub image_identifier: String,
    pub image_version: String,
}

/// `GetMicrovmImageVersionOutput`.
pub type GetMicrovmImageVersionOutput = ImageVersion;

/// `ListMicrovmImageVersionsInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListMicrovmImageVersionsInput {
    pub image_identifier: String,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// `ListMicrovmImageVersionsOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImageVersionsOutput {
    pub items: Vec<ImageVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `UpdateMicrovmImageVersionRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateMicrovmImageVersionInput {
    pub image_identifier: String,
    pub image_version: String,
    /// `MicrovmImageVersionStatus` enum.
    pub status: String,
}

/// `UpdateMicrovmImageVersionResponse`.
pub type UpdateMicrovmImageVersionOutput = ImageVersion;

/// `DeleteMicrovmImageVersionInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteMicrovmImageVersionInput {
    pub image_identifier: String,
    pub image_version: String,
}

/// `DeleteMicrovmImageVersionOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMicrovmImageVersionOutput {
    /// The identifier as the caller gave it.
    pub image_identifier: String,
    pub image_version: String,
    pub state: String,
}

/// `GetMicrovmImageBuildInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetMicrovmImageBuildInput {
    pub image_identifier: String,
    pub image_version: String,
    pub build_id: String,
}

/// `GetMicrovmImageBuildOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMicrovmImageBuildOutput {
    pub image_arn: String,
    pub image_version: String,
    pub build_id: String,
    /// `BuildState` enum.
    pub build_state: String,
    /// `Architecture` enum.
    pub architecture: String,
    /// `Chipset` enum.
    pub chipset: String,
    pub chipset_generation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_build: Option<SnapshotBuild>,
}

/// `ListMicrovmImageBuildsInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListMicrovmImageBuildsInput {
    pub image_identifier: String,
    pub image_version: String,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
    pub architecture: Option<String>,
    pub chipset: Option<String>,
    pub chipset_generation: Option<String>,
}

/// `ListMicrovmImageBuildsOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImageBuildsOutput {
    pub items: Vec<MicrovmImageBuildSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `MicrovmImageBuildSummary`: a build without its `snapshotBuild`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageBuildSummary {
    pub image_arn: String,
    pub image_version: String,
    pub build_id: String,
    pub build_state: String,
    pub architecture: String,
    pub chipset: String,
    pub chipset_generation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    pub created_at: i64,
}

operations! {
    GetMicrovmImageVersion: GetMicrovmImageVersionInput => GetMicrovmImageVersionOutput;
    ListMicrovmImageVersions: ListMicrovmImageVersionsInput => ListMicrovmImageVersionsOutput;
    UpdateMicrovmImageVersion: UpdateMicrovmImageVersionInput => UpdateMicrovmImageVersionOutput;
    DeleteMicrovmImageVersion: DeleteMicrovmImageVersionInput => DeleteMicrovmImageVersionOutput;
    GetMicrovmImageBuild: GetMicrovmImageBuildInput => GetMicrovmImageBuildOutput;
    ListMicrovmImageBuilds: ListMicrovmImageBuildsInput => ListMicrovmImageBuildsOutput;
}
