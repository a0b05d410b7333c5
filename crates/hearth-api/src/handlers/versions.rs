//! Handlers of the image version and build operations:
//! GetMicrovmImageVersion, ListMicrovmImageVersions,
//! UpdateMicrovmImageVersion, DeleteMicrovmImageVersion,
//! GetMicrovmImageBuild, ListMicrovmImageBuilds. Versions and builds are
//! written by the control plane's build tasks; these read them, and ask the
//! control plane to re-status or delete them. Runs on the request task.

use hearth_store::{BuildFilter, Image};
use serde::Deserialize;

use super::{control_error, from_doc, handler, lookup, page_items, page_request, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::{self, shapes::*, versions::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::GetMicrovmImageVersion => get),
    handler!(ops::ListMicrovmImageVersions => list),
    handler!(ops::UpdateMicrovmImageVersion => update),
    handler!(ops::DeleteMicrovmImageVersion => delete),
    handler!(ops::GetMicrovmImageBuild => get_build),
    handler!(ops::ListMicrovmImageBuilds => list_builds),
];

/// What a version row's `doc` holds: the version's configuration as the
/// create or update request gave it, and what the builder reported.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionDoc {
    base_image_arn: String,
    base_image_version: Option<String>,
    build_role_arn: String,
    description: Option<String>,
    code_artifact: CodeArtifact,
    logging: Option<Logging>,
    egress_network_connectors: Option<Vec<String>>,
    cpu_configurations: Option<Vec<CpuConfiguration>>,
    resources: Option<Vec<Resources>>,
    additional_os_capabilities: Option<Vec<String>>,
    hooks: Option<Hooks>,
    environment_variables: Option<EnvironmentVariables>,
    kms_key_identifier: Option<String>,
    state_reason: Option<String>,
    tags: Option<Tags>,
}

/// What a build row's `doc` holds.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildDoc {
    architecture: String,
    chipset: String,
    chipset_generation: String,
    state_reason: Option<String>,
    snapshot_build: Option<SnapshotBuild>,
}

fn version_output(image: &Image, v: &hearth_store::ImageVersion) -> Result<ImageVersion, ApiError> {
    let id = format!("{}:{}", image.arn, v.version);
    let d: VersionDoc = from_doc("MicroVM image version", &id, &v.doc)?;
    Ok(ImageVersion {
        image_arn: image.arn.clone(),
        image_version: v.version.clone(),
        state: v.state.clone(),
        status: v.status.clone(),
        created_at: v.created_at_secs,
        updated_at: Some(v.updated_at_secs),
        state_reason: d.state_reason,
        tags: d.tags,
        base_image_arn: d.base_image_arn,
        base_image_version: d.base_image_version,
        build_role_arn: d.build_role_arn,
        description: d.description,
        code_artifact: d.code_artifact,
        logging: d.logging,
        egress_network_connectors: d.egress_network_connectors,
        cpu_configurations: d.cpu_configurations,
        resources: d.resources,
        additional_os_capabilities: d.additional_os_capabilities,
        hooks: d.hooks,
        environment_variables: d.environment_variables,
        kms_key_identifier: d.kms_key_identifier,
    })
}

fn build_output(
    image: &Image,
    b: &hearth_store::Build,
) -> Result<GetMicrovmImageBuildOutput, ApiError> {
    let d: BuildDoc = from_doc("MicroVM image build", &b.build_id, &b.doc)?;
    Ok(GetMicrovmImageBuildOutput {
        image_arn: image.arn.clone(),
        image_version: b.version.clone(),
        build_id: b.build_id.clone(),
        build_state: b.state.clone(),
        architecture: d.architecture,
        chipset: d.chipset,
        chipset_generation: d.chipset_generation,
        state_reason: d.state_reason,
        created_at: b.created_at_secs,
        snapshot_build: d.snapshot_build,
    })
}

/// The image and one of its versions.
async fn find_version(
    ctx: &RequestContext<'_>,
    identifier: &str,
    version: &str,
) -> Result<(Image, hearth_store::ImageVersion), ApiError> {
    let image = lookup::find(ctx, identifier).await?;
    let (acct, id, ver) = (ctx.account(), image.image_id.clone(), version.to_string());
    let v = ctx
        .store("reading an image version", move |st| {
            st.get_image_version(&acct, &id, &ver)
        })
        .await?;
    Ok((image, v))
}

async fn get(
    ctx: &RequestContext<'_>,
    input: GetMicrovmImageVersionInput,
) -> Result<GetMicrovmImageVersionOutput, ApiError> {
    let (image, v) = find_version(ctx, &input.image_identifier, &input.image_version).await?;
    let mut out = version_output(&image, &v)?;
    let (acct, arn) = (ctx.account(), format!("{}:{}", image.arn, v.version));
    let tags = ctx
        .store("reading tags", move |st| st.list_tags(&acct, &arn))
        .await?;
    if !tags.is_empty() {
        out.tags = Some(tags);
    }
    Ok(out)
}

async fn list(
    ctx: &RequestContext<'_>,
    input: ListMicrovmImageVersionsInput,
) -> Result<ListMicrovmImageVersionsOutput, ApiError> {
    let image = lookup::find(ctx, &input.image_identifier).await?;
    let page = page_request(ctx, input.max_results, input.next_token.as_deref())?;
    let (acct, id) = (ctx.account(), image.image_id.clone());
    let p = ctx
        .store("listing image versions", move |st| {
            st.list_image_versions(&acct, &id, &page)
        })
        .await?;
    let (items, next_token) = page_items(ctx, p, |v| version_output(&image, &v))?;
    Ok(ListMicrovmImageVersionsOutput { items, next_token })
}

async fn update(
    ctx: &RequestContext<'_>,
    input: UpdateMicrovmImageVersionInput,
) -> Result<UpdateMicrovmImageVersionOutput, ApiError> {
    let (image, v) = find_version(ctx, &input.image_identifier, &input.image_version).await?;
    let v2 = ctx
        .state
        .images
        .set_version_status(&ctx.account(), &image, v, &input.status)
        .await
        .map_err(control_error)?;
    version_output(&image, &v2)
}

async fn delete(
    ctx: &RequestContext<'_>,
    input: DeleteMicrovmImageVersionInput,
) -> Result<DeleteMicrovmImageVersionOutput, ApiError> {
    let (image, v) = find_version(ctx, &input.image_identifier, &input.image_version).await?;
    // Its warmed clones and waiting QEMUs hold its snapshot.
    ctx.state
        .microvms
        .drain_image(&image.image_id, Some(&v.version))
        .await;
    ctx.state
        .images
        .delete_version(&ctx.account(), image, v)
        .await
        .map_err(control_error)?;
    Ok(DeleteMicrovmImageVersionOutput {
        image_identifier: input.image_identifier,
        image_version: input.image_version,
        state: "DELETED".into(),
    })
}

async fn get_build(
    ctx: &RequestContext<'_>,
    input: GetMicrovmImageBuildInput,
) -> Result<GetMicrovmImageBuildOutput, ApiError> {
    let image = lookup::find(ctx, &input.image_identifier).await?;
    let (acct, id, ver, build) = (
        ctx.account(),
        image.image_id.clone(),
        input.image_version,
        input.build_id,
    );
    let b = ctx
        .store("reading a build", move |st| {
            st.get_build(&acct, &id, &ver, &build)
        })
        .await?;
    build_output(&image, &b)
}

async fn list_builds(
    ctx: &RequestContext<'_>,
    input: ListMicrovmImageBuildsInput,
) -> Result<ListMicrovmImageBuildsOutput, ApiError> {
    let image = lookup::find(ctx, &input.image_identifier).await?;
    let page = page_request(ctx, input.max_results, input.next_token.as_deref())?;
    let filter = BuildFilter {
        architecture: input.architecture,
        chipset: input.chipset,
        chipset_generation: input.chipset_generation,
    };
    let (acct, id, ver) = (ctx.account(), image.image_id.clone(), input.image_version);
    let p = ctx
        .store("listing builds", move |st| {
            // The version must exist: listing builds of a missing version
            // is a 404.
            st.get_image_version(&acct, &id, &ver)?;
            st.list_builds(&acct, &id, &ver, &filter, &page)
        })
        .await?;
    let (items, next_token) = page_items(ctx, p, |b| {
        let b = build_output(&image, &b)?;
        Ok(MicrovmImageBuildSummary {
            image_arn: b.image_arn,
            image_version: b.image_version,
            build_id: b.build_id,
            build_state: b.build_state,
            architecture: b.architecture,
            chipset: b.chipset,
            chipset_generation: b.chipset_generation,
            state_reason: b.state_reason,
            created_at: b.created_at,
        })
    })?;
    Ok(ListMicrovmImageBuildsOutput { items, next_token })
}
