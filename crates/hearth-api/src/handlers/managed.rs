//! Handlers of the managed image operations: ListManagedMicrovmImages and
//! ListManagedMicrovmImageVersions, answered from the server's list of base
//! images (`AppState::managed_images`), the same for every account. ARNs
//! are in the caller's region, owner `aws`. Runs on the request task.

use hearth_control::config::managed_image_arn as managed_arn;

use super::{handler, Registration, DEFAULT_PAGE};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::{self, managed::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::ListManagedMicrovmImages => list),
    handler!(ops::ListManagedMicrovmImageVersions => list_versions),
];

/// The managed image handlers' own refusals.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagedImageError {
    /// No managed image by this name or ARN (404).
    #[error("Managed MicroVM image {identifier} not found")]
    NotFound { identifier: String },
    /// A managed image has one version, so there is never a second page
    /// (400, like any other invalid token).
    #[error("Invalid nextToken")]
    NoSecondPage,
}

async fn list(
    ctx: &RequestContext<'_>,
    input: ListManagedMicrovmImagesInput,
) -> Result<ListManagedMicrovmImagesOutput, ApiError> {
    let start = match &input.next_token {
        Some(t) => ctx.open_token::<usize>(t)?,
        None => 0,
    };
    let limit = input.max_results.unwrap_or(DEFAULT_PAGE) as usize;
    let all = &ctx.state.managed_images;
    let items = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| ManagedMicrovmImageSummary {
            image_arn: managed_arn(&ctx.caller.region, &m.name),
            created_at: m.created_at_secs,
            updated_at: Some(m.created_at_secs),
        })
        .collect();
    let next_token = (start + limit < all.len()).then(|| ctx.seal_token(&(start + limit)));
    Ok(ListManagedMicrovmImagesOutput { items, next_token })
}

async fn list_versions(
    ctx: &RequestContext<'_>,
    input: ListManagedMicrovmImageVersionsInput,
) -> Result<ListManagedMicrovmImageVersionsOutput, ApiError> {
    let ident = input.image_identifier.as_str();
    let name = ident.rsplit(':').next().unwrap_or(ident);
    let arn_ok = !ident.starts_with("arn:") || ident == managed_arn(&ctx.caller.region, name);
    let m = ctx
        .state
        .managed_images
        .iter()
        .find(|m| m.name == name && arn_ok)
        .ok_or_else(|| ManagedImageError::NotFound {
            identifier: ident.to_string(),
        })?;
    if input.next_token.is_some() {
        return Err(ManagedImageError::NoSecondPage.into());
    }
    Ok(ListManagedMicrovmImageVersionsOutput {
        items: vec![ManagedMicrovmImageVersion {
            image_arn: managed_arn(&ctx.caller.region, &m.name),
            image_version: m.version.clone(),
            status: Some("AVAILABLE".into()),
            supported_cpu_configurations: None,
            created_at: m.created_at_secs,
            updated_at: Some(m.created_at_secs),
        }],
        next_token: None,
    })
}
