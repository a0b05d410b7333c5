//! Handlers of the image operations: GetMicrovmImage, ListMicrovmImages,
//! DeleteMicrovmImage, and CreateMicrovmImage / UpdateMicrovmImage (501
//! until the image builder lands, after their tags are checked). Finding an
//! image by ARN, id or name is `lookup`'s. Runs on the request task.

use hearth_store::{Image, ImageFilter, MicrovmFilter, PageRequest};
use serde::Deserialize;

use super::lookup::{find, live_states, ImageError};
use super::{from_doc, handler, page_items, page_request, tags, NotYet, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::{self, images::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::CreateMicrovmImage => create),
    handler!(ops::GetMicrovmImage => get),
    handler!(ops::ListMicrovmImages => list),
    handler!(ops::UpdateMicrovmImage => update),
    handler!(ops::DeleteMicrovmImage => delete),
];

/// What an image row's `doc` holds besides its columns.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageDoc {
    latest_active_image_version: Option<String>,
    latest_failed_image_version: Option<String>,
}

fn summary(image: &Image) -> Result<MicrovmImageSummary, ApiError> {
    let doc: ImageDoc = from_doc("MicroVM image", &image.arn, &image.doc)?;
    Ok(MicrovmImageSummary {
        image_arn: image.arn.clone(),
        name: image.name.clone(),
        state: image.state.clone(),
        latest_active_image_version: doc.latest_active_image_version,
        latest_failed_image_version: doc.latest_failed_image_version,
        created_at: image.created_at_secs,
    })
}

async fn create(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmImageInput,
) -> Result<CreateMicrovmImageOutput, ApiError> {
    if let Some(t) = &input.tags {
        tags::check_new(t)?;
    }
    Err(NotYet {
        operation: ctx.operation,
        arrives: "image builds arrive with the builder",
    }
    .into())
}

async fn update(
    ctx: &RequestContext<'_>,
    _input: UpdateMicrovmImageInput,
) -> Result<UpdateMicrovmImageOutput, ApiError> {
    Err(NotYet {
        operation: ctx.operation,
        arrives: "image builds arrive with the builder",
    }
    .into())
}

async fn get(
    ctx: &RequestContext<'_>,
    input: GetMicrovmImageInput,
) -> Result<GetMicrovmImageOutput, ApiError> {
    let image = find(ctx, &input.image_identifier).await?;
    let (acct, arn) = (ctx.account(), image.arn.clone());
    let tags = ctx
        .store("reading tags", move |st| st.list_tags(&acct, &arn))
        .await?;
    let s = summary(&image)?;
    Ok(GetMicrovmImageOutput {
        image_arn: s.image_arn,
        name: s.name,
        state: s.state,
        latest_active_image_version: s.latest_active_image_version,
        latest_failed_image_version: s.latest_failed_image_version,
        created_at: s.created_at,
        updated_at: Some(image.updated_at_secs),
        tags: (!tags.is_empty()).then_some(tags),
    })
}

async fn list(
    ctx: &RequestContext<'_>,
    input: ListMicrovmImagesInput,
) -> Result<ListMicrovmImagesOutput, ApiError> {
    let page = page_request(ctx, input.max_results, input.next_token.as_deref())?;
    let filter = ImageFilter {
        name_contains: input.name_filter,
    };
    let acct = ctx.account();
    let p = ctx
        .store("listing images", move |st| {
            st.list_images(&acct, &filter, &page)
        })
        .await?;
    let (items, next_token) = page_items(ctx, p, |i| summary(&i))?;
    Ok(ListMicrovmImagesOutput { items, next_token })
}

async fn delete(
    ctx: &RequestContext<'_>,
    input: DeleteMicrovmImageInput,
) -> Result<DeleteMicrovmImageOutput, ApiError> {
    let image = find(ctx, &input.image_identifier).await?;
    let (acct, arn) = (ctx.account(), image.arn.clone());
    let users = ctx
        .store("counting microVMs", move |st| {
            let f = MicrovmFilter {
                image_arn: Some(arn),
                image_version: None,
                states: live_states(),
            };
            st.list_microvms(&acct, &f, &PageRequest::first(1))
        })
        .await?;
    if !users.items.is_empty() {
        return Err(ImageError::InUse { arn: image.arn }.into());
    }
    let (acct, id) = (ctx.account(), image.image_id);
    ctx.store("deleting an image", move |st| st.delete_image(&acct, &id))
        .await?;
    Ok(DeleteMicrovmImageOutput {
        image_identifier: input.image_identifier,
        state: "DELETED".into(),
    })
}
