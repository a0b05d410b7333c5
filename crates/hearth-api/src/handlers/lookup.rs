//! What several resources' handlers look up: the image a request names
//! (by ARN, id or name, in the caller's account) and the states in which a
//! microVM keeps its image in use. Runs on the request task.

use hearth_store::{Image, StoreError};

use crate::context::RequestContext;
use crate::error::ApiError;

/// The image handlers' own refusals.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    /// No image with this ARN, id or name in the caller's account (404).
    #[error("MicroVM image {identifier} not found")]
    NotFound { identifier: String },
    /// The image still has live microVMs (409).
    #[error("MicroVM image {arn} still has running microVMs")]
    InUse { arn: String },
}

/// Find an image by ARN, id or name in the caller's account.
pub(super) async fn find(ctx: &RequestContext<'_>, identifier: &str) -> Result<Image, ApiError> {
    let (acct, ident) = (ctx.account(), identifier.to_string());
    let found = ctx
        .store("reading an image", move |st| {
            let r = if ident.starts_with("arn:") {
                st.get_image_by_arn(&acct, &ident)
            } else {
                st.get_image(&acct, &ident).or_else(|e| match e {
                    StoreError::NotFound { .. } => st.get_image_by_name(&acct, &ident),
                    e => Err(e),
                })
            };
            match r {
                Ok(i) => Ok(Some(i)),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
    found.ok_or_else(|| {
        ImageError::NotFound {
            identifier: identifier.to_string(),
        }
        .into()
    })
}

/// States in which a microVM holds on to its image.
pub(super) fn live_states() -> Vec<String> {
    [
        "PENDING",
        "RUNNING",
        "SUSPENDING",
        "SUSPENDED",
        "TERMINATING",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
