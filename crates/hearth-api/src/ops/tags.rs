//! Inputs and outputs of the tag operations: TagResource, UntagResource,
//! ListTags. These keep the Lambda tagging API's spelling (`Resource`,
//! `Tags`, `TagKeys`). Plain serde data, read and written on the request task
//! by the handlers (conventions in [`crate::ops`]).

use serde::{Deserialize, Serialize};

use super::shapes::{Empty, Tags};

/// `TagResourceRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagResourceInput {
    /// The resource's ARN.
    pub resource: String,
    pub tags: Tags,
}

/// TagResource has no output shape (204, empty body).
pub type TagResourceOutput = Empty;

/// `UntagResourceRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct UntagResourceInput {
    pub resource: String,
    /// Sent as the `tagKeys` query parameter.
    pub tag_keys: Vec<String>,
}

/// UntagResource has no output shape (204, empty body).
pub type UntagResourceOutput = Empty;

/// `ListTagsRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ListTagsInput {
    pub resource: String,
}

/// `ListTagsResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

operations! {
    TagResource: TagResourceInput => TagResourceOutput;
    UntagResource: UntagResourceInput => UntagResourceOutput;
    ListTags: ListTagsInput => ListTagsOutput;
}
