//! Inputs and outputs of the image operations: CreateMicrovmImage,
//! GetMicrovmImage, ListMicrovmImages, UpdateMicrovmImage,
//! DeleteMicrovmImage. Plain serde data, read and written on the request task
//! by the handlers (conventions in [`crate::ops`]).

use serde::{Deserialize, Serialize};

use super::shapes::{
    CodeArtifact, CpuConfiguration, EnvironmentVariables, Hooks, Logging, Resources, Tags,
};

/// `CreateMicrovmImageRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMicrovmImageInput {
    pub name: String,
    pub base_image_arn: String,
    pub base_image_version: Option<String>,
    pub build_role_arn: String,
    pub description: Option<String>,
    pub code_artifact: CodeArtifact,
    pub logging: Option<Logging>,
    pub egress_network_connectors: Option<Vec<String>>,
    pub cpu_configurations: Option<Vec<CpuConfiguration>>,
    pub resources: Option<Vec<Resources>>,
    pub additional_os_capabilities: Option<Vec<String>>,
    pub hooks: Option<Hooks>,
    pub environment_variables: Option<EnvironmentVariables>,
    pub kms_key_identifier: Option<String>,
    pub tags: Option<Tags>,
    pub client_token: Option<String>,
}

/// `CreateMicrovmImageResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMicrovmImageOutput {
    pub image_arn: String,
    pub name: String,
    pub state: String,
    pub image_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_active_image_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_failed_image_version: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// `GetMicrovmImageInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetMicrovmImageInput {
    /// ARN, id or name.
    pub image_identifier: String,
}

/// `GetMicrovmImageOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMicrovmImageOutput {
    pub image_arn: String,
    pub name: String,
    /// `MicrovmImageState` enum.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_active_image_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_failed_image_version: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// `ListMicrovmImagesRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListMicrovmImagesInput {
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
    /// Only images whose name contains this.
    pub name_filter: Option<String>,
}

/// `ListMicrovmImagesResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMicrovmImagesOutput {
    pub items: Vec<MicrovmImageSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `MicrovmImageSummary`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmImageSummary {
    pub image_arn: String,
    pub name: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_active_image_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_failed_image_version: Option<String>,
    pub created_at: i64,
}

/// `UpdateMicrovmImageRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateMicrovmImageInput {
    pub image_identifier: String,
    pub base_image_arn: String,
    pub base_image_version: Option<String>,
    pub build_role_arn: String,
    pub description: Option<String>,
    pub code_artifact: CodeArtifact,
    pub logging: Option<Logging>,
    pub egress_network_connectors: Option<Vec<String>>,
    pub cpu_configurations: Option<Vec<CpuConfiguration>>,
    pub resources: Option<Vec<Resources>>,
    pub additional_os_capabilities: Option<Vec<String>>,
    pub hooks: Option<Hooks>,
    pub environment_variables: Option<EnvironmentVariables>,
    pub kms_key_identifier: Option<String>,
    pub client_token: Option<String>,
}

/// `UpdateMicrovmImageResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMicrovmImageOutput {
    pub image_arn: String,
    pub name: String,
    pub state: String,
    pub image_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_active_image_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_failed_image_version: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
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

/// `DeleteMicrovmImageInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteMicrovmImageInput {
    pub image_identifier: String,
}

/// `DeleteMicrovmImageOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMicrovmImageOutput {
    /// The identifier as the caller gave it.
    pub image_identifier: String,
    pub state: String,
}

operations! {
    CreateMicrovmImage: CreateMicrovmImageInput => CreateMicrovmImageOutput;
    GetMicrovmImage: GetMicrovmImageInput => GetMicrovmImageOutput;
    ListMicrovmImages: ListMicrovmImagesInput => ListMicrovmImagesOutput;
    UpdateMicrovmImage: UpdateMicrovmImageInput => UpdateMicrovmImageOutput;
    DeleteMicrovmImage: DeleteMicrovmImageInput => DeleteMicrovmImageOutput;
}
