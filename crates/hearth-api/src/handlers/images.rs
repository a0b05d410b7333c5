//! Handlers of the image operations: CreateMicrovmImage, GetMicrovmImage,
//! ListMicrovmImages, UpdateMicrovmImage, DeleteMicrovmImage. Create and
//! update hand the version's configuration to the control plane
//! ([`hearth_control::ImageControl`]), which writes the records and runs
//! the build; they answer at once (CREATING / UPDATING). Finding an image by
//! ARN, id or name is `lookup`'s. Runs on the request task.

use hearth_store::{Image, ImageFilter, MicrovmFilter, PageRequest};
use serde::Deserialize;

use super::lookup::{find, live_states, ImageError};
use super::{control_error, from_doc, handler, page_items, page_request, tags, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::shapes::*;
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

/// The version configuration members of a create or update request, as
/// the version's stored document (camelCase, only the members given).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionConfig<'a> {
    base_image_arn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_image_version: Option<&'a String>,
    build_role_arn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a String>,
    code_artifact: &'a CodeArtifact,
    #[serde(skip_serializing_if = "Option::is_none")]
    logging: Option<&'a Logging>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_network_connectors: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_configurations: Option<&'a Vec<CpuConfiguration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<&'a Vec<Resources>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_os_capabilities: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks: Option<&'a Hooks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment_variables: Option<&'a EnvironmentVariables>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kms_key_identifier: Option<&'a String>,
}

/// The [`VersionConfig`] of a create or update input (both have the same
/// configuration members).
macro_rules! version_config {
    ($input:expr) => {
        VersionConfig {
            base_image_arn: &$input.base_image_arn,
            base_image_version: $input.base_image_version.as_ref(),
            build_role_arn: &$input.build_role_arn,
            description: $input.description.as_ref(),
            code_artifact: &$input.code_artifact,
            logging: $input.logging.as_ref(),
            egress_network_connectors: $input.egress_network_connectors.as_ref(),
            cpu_configurations: $input.cpu_configurations.as_ref(),
            resources: $input.resources.as_ref(),
            additional_os_capabilities: $input.additional_os_capabilities.as_ref(),
            hooks: $input.hooks.as_ref(),
            environment_variables: $input.environment_variables.as_ref(),
            kms_key_identifier: $input.kms_key_identifier.as_ref(),
        }
    };
}

fn to_doc(c: &VersionConfig<'_>) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(c).map_err(|e| ApiError::internal("encoding a version configuration", e))
}

async fn create(
    ctx: &RequestContext<'_>,
    input: CreateMicrovmImageInput,
) -> Result<CreateMicrovmImageOutput, ApiError> {
    if let Some(t) = &input.tags {
        tags::check_new(t)?;
    }
    super::microvms::check_egress(ctx, input.egress_network_connectors.as_deref())?;
    let config = to_doc(&version_config!(input))?;
    let image_id = hearth_store::ids::new_image_id();
    let arn = format!(
        "arn:aws:lambda:{}:{}:microvm-image:{image_id}",
        ctx.caller.region,
        ctx.caller.account_id.as_str()
    );
    let created = ctx
        .state
        .images
        .create_image(
            &ctx.account(),
            input.name.clone(),
            arn,
            image_id,
            config,
            input.tags.clone().unwrap_or_default(),
        )
        .await
        .map_err(|e| match e {
            hearth_control::ControlError::Store(hearth_store::StoreError::Conflict(
                hearth_store::ConflictKind::NameTaken { .. },
            )) => ApiError::Validation(format!(
                "A MicroVM image with the name '{}' already exists in this account",
                input.name
            )),
            other => control_error(other),
        })?;
    let doc_summary = summary(&created.image)?;
    Ok(CreateMicrovmImageOutput {
        image_arn: created.image.arn.clone(),
        name: created.image.name.clone(),
        state: created.image.state.clone(),
        image_version: created.version.version.clone(),
        latest_active_image_version: doc_summary.latest_active_image_version,
        latest_failed_image_version: doc_summary.latest_failed_image_version,
        created_at: created.image.created_at_secs,
        updated_at: Some(created.image.updated_at_secs),
        base_image_arn: input.base_image_arn,
        base_image_version: input.base_image_version,
        build_role_arn: input.build_role_arn,
        description: input.description,
        code_artifact: input.code_artifact,
        logging: input.logging,
        egress_network_connectors: input.egress_network_connectors,
        cpu_configurations: input.cpu_configurations,
        resources: input.resources,
        additional_os_capabilities: input.additional_os_capabilities,
        hooks: input.hooks,
        environment_variables: input.environment_variables,
        kms_key_identifier: input.kms_key_identifier,
        tags: input.tags,
    })
}

async fn update(
    ctx: &RequestContext<'_>,
    input: UpdateMicrovmImageInput,
) -> Result<UpdateMicrovmImageOutput, ApiError> {
    let image = find(ctx, &input.image_identifier).await?;
    super::microvms::check_egress(ctx, input.egress_network_connectors.as_deref())?;
    let config = to_doc(&version_config!(input))?;
    let created = ctx
        .state
        .images
        .update_image(&ctx.account(), image, config)
        .await
        .map_err(control_error)?;
    let s = summary(&created.image)?;
    Ok(UpdateMicrovmImageOutput {
        image_arn: created.image.arn.clone(),
        name: created.image.name.clone(),
        state: created.image.state.clone(),
        image_version: created.version.version.clone(),
        latest_active_image_version: s.latest_active_image_version,
        latest_failed_image_version: s.latest_failed_image_version,
        created_at: created.image.created_at_secs,
        updated_at: created.image.updated_at_secs,
        base_image_arn: input.base_image_arn,
        base_image_version: input.base_image_version,
        build_role_arn: input.build_role_arn,
        description: input.description,
        code_artifact: input.code_artifact,
        logging: input.logging,
        egress_network_connectors: input.egress_network_connectors,
        cpu_configurations: input.cpu_configurations,
        resources: input.resources,
        additional_os_capabilities: input.additional_os_capabilities,
        hooks: input.hooks,
        environment_variables: input.environment_variables,
        kms_key_identifier: input.kms_key_identifier,
    })
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
    // Its warmed clones and waiting QEMUs hold its snapshots.
    ctx.state.microvms.drain_image(&image.image_id, None).await;
    let state = ctx
        .state
        .images
        .delete_image(&ctx.account(), image)
        .await
        .map_err(control_error)?;
    Ok(DeleteMicrovmImageOutput {
        image_identifier: input.image_identifier,
        state: state.as_str().into(),
    })
}
