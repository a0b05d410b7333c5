//! Inputs and outputs of the managed image operations:
//! ListManagedMicrovmImages and ListManagedMicrovmImageVersions. Plain serde
//! data, read and written on the request task by the handlers (conventions in
//! [`crate::ops`]).

use serde::{Deserialize, Serialize};

use super::shapes::CpuConfiguration;

/// `ListManagedMicrovmImagesInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListManagedMicrovmImagesInput {
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// `ListManagedMicrovmImagesOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListManagedMicrovmImagesOutput {
    pub items: Vec<ManagedMicrovmImageSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `ManagedMicrovmImageSummary`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedMicrovmImageSummary {
    pub image_arn: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
}

/// `ListManagedMicrovmImageVersionsInput`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListManagedMicrovmImageVersionsInput {
    /// ARN or name.
    pub image_identifier: String,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// `ListManagedMicrovmImageVersionsOutput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListManagedMicrovmImageVersionsOutput {
    pub items: Vec<ManagedMicrovmImageVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `ManagedMicrovmImageVersion`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedMicrovmImageVersion {
    pub image_arn: String,
    pub image_version: String,
    /// `ManagedMicrovmImageVersionStatus` enum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_cpu_configurations: Option<Vec<CpuConfiguration>>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<i64>,
}

operations! {
    ListManagedMicrovmImages: ListManagedMicrovmImagesInput => ListManagedMicrovmImagesOutput;
    ListManagedMicrovmImageVersions: ListManagedMicrovmImageVersionsInput => ListManagedMicrovmImageVersionsOutput;
}
