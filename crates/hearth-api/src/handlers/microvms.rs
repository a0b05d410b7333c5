//! Handlers of the microVM operations: GetMicrovm, ListMicrovms, and
//! RunMicrovm, SuspendMicrovm, ResumeMicrovm, TerminateMicrovm (501 until
//! the RunMicrovm issue connects the engine; the lifecycle operations first
//! look the microVM up, so an absent one is a 404). Runs on the request
//! task.

use hearth_store::{Microvm as MicrovmRow, MicrovmFilter};
use serde::Deserialize;

use super::lookup;
use super::{from_doc, handler, page_items, page_request, NotYet, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::{self, microvms::*, shapes::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::RunMicrovm => run),
    handler!(ops::GetMicrovm => get),
    handler!(ops::ListMicrovms => list),
    handler!(ops::SuspendMicrovm => suspend),
    handler!(ops::ResumeMicrovm => resume),
    handler!(ops::TerminateMicrovm => terminate),
];

/// What a microVM row's `doc` holds besides its columns.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MicrovmDoc {
    endpoint: String,
    execution_role_arn: Option<String>,
    idle_policy: Option<IdlePolicy>,
    maximum_duration_in_seconds: i32,
    started_at: Option<i64>,
    terminated_at: Option<i64>,
    state_reason: Option<String>,
    kms_key_identifier: Option<String>,
    ingress_network_connectors: Option<Vec<String>>,
    egress_network_connectors: Option<Vec<String>>,
}

/// The part of the `doc` a list item needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemDoc {
    started_at: Option<i64>,
}

/// The microVM must exist in the caller's account.
pub(super) async fn existing(
    ctx: &RequestContext<'_>,
    identifier: &str,
) -> Result<MicrovmRow, ApiError> {
    let (acct, id) = (ctx.account(), identifier.to_string());
    ctx.store("reading a microVM", move |st| st.get_microvm(&acct, &id))
        .await
}

/// The lifecycle and token operations need the engine integration of the
/// RunMicrovm issue.
pub(super) fn lifecycle_not_yet(ctx: &RequestContext<'_>) -> ApiError {
    NotYet {
        operation: ctx.operation,
        arrives: "microVM lifecycle operations arrive with RunMicrovm",
    }
    .into()
}

async fn run(ctx: &RequestContext<'_>, _input: RunMicrovmInput) -> Result<Microvm, ApiError> {
    Err(NotYet {
        operation: ctx.operation,
        arrives: "running microVMs arrives with the RunMicrovm issue",
    }
    .into())
}

async fn get(ctx: &RequestContext<'_>, input: GetMicrovmInput) -> Result<Microvm, ApiError> {
    let m = existing(ctx, &input.microvm_identifier).await?;
    let d: MicrovmDoc = from_doc("microVM", &m.microvm_id, &m.doc)?;
    Ok(Microvm {
        microvm_id: m.microvm_id,
        state: m.state,
        endpoint: d.endpoint,
        image_arn: m.image_arn,
        image_version: m.image_version,
        execution_role_arn: d.execution_role_arn,
        idle_policy: d.idle_policy,
        maximum_duration_in_seconds: d.maximum_duration_in_seconds,
        started_at: d.started_at.unwrap_or(m.created_at_secs),
        terminated_at: d.terminated_at,
        state_reason: d.state_reason,
        kms_key_identifier: d.kms_key_identifier,
        ingress_network_connectors: d.ingress_network_connectors,
        egress_network_connectors: d.egress_network_connectors,
    })
}

async fn list(
    ctx: &RequestContext<'_>,
    input: ListMicrovmsInput,
) -> Result<ListMicrovmsOutput, ApiError> {
    let page = page_request(ctx, input.max_results, input.next_token.as_deref())?;
    let image_arn = match &input.image_identifier {
        Some(ident) => Some(lookup::find(ctx, ident).await?.arn),
        None => None,
    };
    let filter = MicrovmFilter {
        image_arn,
        image_version: input.image_version,
        states: vec![],
    };
    let acct = ctx.account();
    let p = ctx
        .store("listing microVMs", move |st| {
            st.list_microvms(&acct, &filter, &page)
        })
        .await?;
    let (items, next_token) = page_items(ctx, p, |m| {
        let d: ItemDoc = from_doc("microVM", &m.microvm_id, &m.doc)?;
        Ok(MicrovmItem {
            started_at: d.started_at.unwrap_or(m.created_at_secs),
            microvm_id: m.microvm_id,
            state: m.state,
            image_arn: m.image_arn,
            image_version: m.image_version,
        })
    })?;
    Ok(ListMicrovmsOutput { items, next_token })
}

async fn suspend(ctx: &RequestContext<'_>, input: SuspendMicrovmInput) -> Result<Empty, ApiError> {
    existing(ctx, &input.microvm_identifier).await?;
    Err(lifecycle_not_yet(ctx))
}

async fn resume(ctx: &RequestContext<'_>, input: ResumeMicrovmInput) -> Result<Empty, ApiError> {
    existing(ctx, &input.microvm_identifier).await?;
    Err(lifecycle_not_yet(ctx))
}

async fn terminate(
    ctx: &RequestContext<'_>,
    input: TerminateMicrovmInput,
) -> Result<Empty, ApiError> {
    existing(ctx, &input.microvm_identifier).await?;
    Err(lifecycle_not_yet(ctx))
}
