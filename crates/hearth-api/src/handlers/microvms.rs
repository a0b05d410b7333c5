//! Handlers of the microVM operations: RunMicrovm, GetMicrovm,
//! ListMicrovms, SuspendMicrovm, ResumeMicrovm, TerminateMicrovm. Run and
//! the lifecycle operations are intents handed to the control plane
//! ([`hearth_control::MicrovmControl`]), which owns every microVM's state;
//! Get and List read the store. Runs on the request task.

use hearth_store::{Microvm as MicrovmRow, MicrovmFilter};
use serde::Deserialize;

use super::lookup;
use super::{from_doc, handler, page_items, page_request, Registration};
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

/// The network connector ARNs of this region, by name.
fn connector_name<'a>(ctx: &RequestContext<'_>, arn: &'a str) -> Option<&'a str> {
    let prefix = format!(
        "arn:aws:lambda:{}:aws:network-connector:aws-network-connector:",
        ctx.state.region
    );
    arn.strip_prefix(prefix.as_str())
        .filter(|n| CONNECTORS.contains(n))
}

const CONNECTORS: &[&str] = &[
    "ALL_INGRESS",
    "NO_INGRESS",
    "HTTP_INGRESS",
    "SHELL_INGRESS",
    "INTERNET_EGRESS",
];

/// Connector lists: each a known connector ARN of this region, of the
/// right direction, and `NO_INGRESS` alone when it is given.
fn check_connectors(ctx: &RequestContext<'_>, input: &RunMicrovmInput) -> Result<(), ApiError> {
    let ingress = input.ingress_network_connectors.as_deref().unwrap_or(&[]);
    if ingress.len() > 1
        && ingress
            .iter()
            .any(|a| connector_name(ctx, a) == Some("NO_INGRESS"))
    {
        return Err(ApiError::Validation(
            "ingressNetworkConnectors: NO_INGRESS cannot be combined with other ingress connectors"
                .into(),
        ));
    }
    for arn in ingress {
        match connector_name(ctx, arn) {
            Some(n) if n.ends_with("_INGRESS") => {}
            _ => {
                return Err(ApiError::Validation(format!(
                    "ingressNetworkConnectors: {arn:?} is not an ingress network connector ARN of {} (arn:aws:lambda:{}:aws:network-connector:aws-network-connector:ALL_INGRESS|NO_INGRESS|HTTP_INGRESS|SHELL_INGRESS)",
                    ctx.state.region, ctx.state.region
                )))
            }
        }
    }
    check_egress(ctx, input.egress_network_connectors.as_deref())
}

/// An egress connector list (RunMicrovm's, or an image's for its builds):
/// each the `INTERNET_EGRESS` ARN of this region.
pub(super) fn check_egress(
    ctx: &RequestContext<'_>,
    arns: Option<&[String]>,
) -> Result<(), ApiError> {
    for arn in arns.into_iter().flatten() {
        if connector_name(ctx, arn) != Some("INTERNET_EGRESS") {
            return Err(ApiError::Validation(format!(
                "egressNetworkConnectors: {arn:?} is not an egress network connector ARN of {} (arn:aws:lambda:{}:aws:network-connector:aws-network-connector:INTERNET_EGRESS)",
                ctx.state.region, ctx.state.region
            )));
        }
    }
    Ok(())
}

async fn run(ctx: &RequestContext<'_>, input: RunMicrovmInput) -> Result<Microvm, ApiError> {
    check_connectors(ctx, &input)?;
    let max = hearth_control::microvms::MAX_DURATION_SECS;
    let maximum_duration_secs = match input.maximum_duration_in_seconds {
        None => None,
        Some(s) if s >= 1 && s as u32 <= max => Some(s as u32),
        Some(s) => {
            return Err(ApiError::Validation(format!(
                "maximumDurationInSeconds: {s} is outside 1..={max}"
            )))
        }
    };
    let idle_policy = match &input.idle_policy {
        None => None,
        Some(p) => {
            let secs = |name: &str, v: i32| {
                u32::try_from(v).map_err(|_| {
                    ApiError::Validation(format!("idlePolicy.{name}: {v} is negative"))
                })
            };
            Some(hearth_control::microvms::doc::IdlePolicyDoc {
                max_idle_duration_seconds: secs(
                    "maxIdleDurationSeconds",
                    p.max_idle_duration_seconds,
                )?,
                suspended_duration_seconds: secs(
                    "suspendedDurationSeconds",
                    p.suspended_duration_seconds,
                )?,
                auto_resume_enabled: p.auto_resume_enabled,
            })
        }
    };
    let image = lookup::find(ctx, &input.image_identifier).await?;
    let row = ctx
        .state
        .microvms
        .run(
            &ctx.account(),
            hearth_control::RunRequest {
                image,
                image_version: input.image_version,
                idle_policy,
                maximum_duration_secs,
                run_hook_payload: input.run_hook_payload,
                execution_role_arn: input.execution_role_arn,
                kms_key_identifier: input.kms_key_identifier,
                ingress_network_connectors: input.ingress_network_connectors,
                egress_network_connectors: input.egress_network_connectors,
            },
        )
        .await
        .map_err(super::control_error)?;
    output(row)
}

async fn get(ctx: &RequestContext<'_>, input: GetMicrovmInput) -> Result<Microvm, ApiError> {
    output(existing(ctx, &input.microvm_identifier).await?)
}

/// A microVM row as RunMicrovm and GetMicrovm answer it.
fn output(m: MicrovmRow) -> Result<Microvm, ApiError> {
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
    let m = existing(ctx, &input.microvm_identifier).await?;
    ctx.state
        .microvms
        .suspend(&ctx.account(), &m.microvm_id)
        .await
        .map_err(super::control_error)?;
    Ok(Empty {})
}

async fn resume(ctx: &RequestContext<'_>, input: ResumeMicrovmInput) -> Result<Empty, ApiError> {
    let m = existing(ctx, &input.microvm_identifier).await?;
    ctx.state
        .microvms
        .resume(&ctx.account(), &m.microvm_id)
        .await
        .map_err(super::control_error)?;
    Ok(Empty {})
}

async fn terminate(
    ctx: &RequestContext<'_>,
    input: TerminateMicrovmInput,
) -> Result<Empty, ApiError> {
    let m = existing(ctx, &input.microvm_identifier).await?;
    ctx.state
        .microvms
        .terminate(&ctx.account(), &m.microvm_id)
        .await
        .map_err(super::control_error)?;
    Ok(Empty {})
}
