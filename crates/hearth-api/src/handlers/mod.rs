//! Operation handlers and their registry.
//!
//! Owns what each operation does with its validated input: one module per
//! resource (`images`, `versions` with builds, `microvms`, `auth_tokens`,
//! `tags`, `managed`), each an `async fn` per operation that takes the
//! [`RequestContext`] and the operation's typed input ([`crate::ops`]) and
//! returns its typed output or an error. Runs on the request task; store
//! calls go through `spawn_blocking` ([`RequestContext::store`]).
//!
//! The registry: each module lists its operations in
//! `pub(super) const OPERATIONS: &[Registration]`, one `handler!(Marker =>
//! function)` line each; [`dispatch`] looks the operation up by name in the
//! union of those tables. The typed edge is the `handler!` adapter: it
//! deserializes the pipeline's input object into the marker's `Input`, runs
//! the function, and serializes its `Output`. Adding an operation's handler
//! touches only its resource's module.
//!
//! Failures of the handlers' own (not found, in use, tag limits, not
//! implemented yet, bad stored documents) are domain error types of these
//! modules; the end of this file maps each to its AWS error, in one place.
//!
//! Operations whose engine work lands in later issues (running microVMs)
//! answer `NotImplementedException` ([`NotYet`]) and change nothing. Image,
//! version and build changes go through the control plane
//! ([`hearth_control::ImageControl`]); its errors map here too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use hearth_store::{Cursor, Page, PageRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::{AppState, Caller, RequestContext};
use crate::error::ApiError;
use crate::ops::Operation;

mod auth_tokens;
mod images;
mod lookup;
mod managed;
mod microvms;
mod tags;
mod versions;

pub(crate) use lookup::ImageError;
pub(crate) use managed::ManagedImageError;
pub(crate) use tags::TagError;

/// The future of a type-erased handler.
pub(crate) type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<u8>, ApiError>> + Send + 'a>>;

/// A type-erased handler: the validated input object in, the response body
/// out. Made by `handler!` from a typed `async fn`.
pub(crate) type Handler = for<'a> fn(&'a RequestContext<'a>, Value) -> HandlerFuture<'a>;

/// One operation in a module's table.
pub(crate) struct Registration {
    /// The operation's model name.
    pub name: &'static str,
    pub handler: Handler,
    /// Checks the operation's typed input and output against the model.
    #[cfg(test)]
    pub check: fn() -> Result<(), String>,
}

/// `handler!(ops::Marker => function)`: register `function` as the handler
/// of the operation `ops::Marker`. The function must be
/// `async fn(&RequestContext<'_>, Marker::Input) -> Result<Marker::Output, E>`
/// with `ApiError: From<E>`.
macro_rules! handler {
    ($op:ty => $f:path) => {
        $crate::handlers::Registration {
            name: <$op as $crate::ops::Operation>::NAME,
            handler: |ctx, input| {
                Box::pin(async move {
                    let input = $crate::handlers::decode::<$op>(input)?;
                    let output: <$op as $crate::ops::Operation>::Output = $f(ctx, input).await?;
                    $crate::handlers::encode::<$op>(&output)
                })
            },
            #[cfg(test)]
            check: $crate::ops::model_check::check::<$op>,
        }
    };
}
pub(crate) use handler;

/// Every module's table, in one list.
pub(crate) fn registrations() -> impl Iterator<Item = &'static Registration> {
    [
        images::OPERATIONS,
        versions::OPERATIONS,
        microvms::OPERATIONS,
        auth_tokens::OPERATIONS,
        tags::OPERATIONS,
        managed::OPERATIONS,
    ]
    .into_iter()
    .flatten()
}

fn registry() -> &'static HashMap<&'static str, &'static Registration> {
    static REGISTRY: OnceLock<HashMap<&'static str, &'static Registration>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut map = HashMap::new();
        for reg in registrations() {
            // A second registration of a name is a bug the unit tests catch;
            // the first one wins.
            map.entry(reg.name).or_insert(reg);
        }
        map
    })
}

/// Run one operation: `input` is the pipeline's validated input object
/// (members by model name); the answer is the response body, as JSON bytes.
pub async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    input: Value,
) -> Result<Vec<u8>, ApiError> {
    let Some(reg) = registry().get(op) else {
        return Err(EdgeError::NoHandler(op.to_string()).into());
    };
    let ctx = RequestContext {
        state,
        caller,
        operation: reg.name,
    };
    (reg.handler)(&ctx, input).await
}

/// The typed edge, inward: the validated input object as `O::Input`.
pub(crate) fn decode<O: Operation>(input: Value) -> Result<O::Input, ApiError> {
    serde_json::from_value(input).map_err(|e| {
        EdgeError::Input {
            operation: O::NAME,
            detail: e.to_string(),
        }
        .into()
    })
}

/// The typed edge, outward: `O::Output` as the response body's JSON bytes
/// (serialized once, straight from the typed output).
pub(crate) fn encode<O: Operation>(output: &O::Output) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(output).map_err(|e| {
        EdgeError::Output {
            operation: O::NAME,
            detail: e.to_string(),
        }
        .into()
    })
}

// ------------------------------------------------------------------ errors

/// An operation whose engine work lands in a later issue: 501, nothing
/// changed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} is not available in this Hearth build yet ({arrives}); nothing was changed")]
pub(crate) struct NotYet {
    pub operation: &'static str,
    /// Which issue brings it, in a few words.
    pub arrives: &'static str,
}

/// Failures that are Hearth's own bugs or damaged state: 500, details in
/// the log only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EdgeError {
    /// The router knows an operation no module registered.
    #[error("operation {0} has no handler")]
    NoHandler(String),
    /// The validated input does not fit the operation's input type (the
    /// types and the model disagree; `ops::model_check` rules this out).
    #[error("the validated input of {operation} does not fit its type: {detail}")]
    Input {
        operation: &'static str,
        detail: String,
    },
    #[error("the output of {operation} does not serialize: {detail}")]
    Output {
        operation: &'static str,
        detail: String,
    },
    /// A stored resource document lacks what the answer needs.
    #[error("stored {kind} {id} cannot be answered: {detail}")]
    Document {
        kind: &'static str,
        id: String,
        detail: String,
    },
}

/// Read a stored resource document (`doc` of a store row) as `T`.
pub(crate) fn from_doc<T: DeserializeOwned>(
    kind: &'static str,
    id: &str,
    doc: &Value,
) -> Result<T, EdgeError> {
    T::deserialize(doc).map_err(|e| EdgeError::Document {
        kind,
        id: id.to_string(),
        detail: e.to_string(),
    })
}

// ------------------------------------------------------------------ paging

/// Page size when `maxResults` is absent.
pub(crate) const DEFAULT_PAGE: u32 = 50;

/// The store page a list operation's `maxResults` and `nextToken` ask for.
pub(crate) fn page_request(
    ctx: &RequestContext<'_>,
    max_results: Option<u32>,
    next_token: Option<&str>,
) -> Result<PageRequest, ApiError> {
    let limit = max_results.unwrap_or(DEFAULT_PAGE);
    Ok(match next_token {
        Some(tok) => PageRequest::after(limit, ctx.open_token::<Cursor>(tok)?),
        None => PageRequest::first(limit),
    })
}

/// A store page as `(items, nextToken)`.
pub(crate) fn page_items<T, U>(
    ctx: &RequestContext<'_>,
    page: Page<T>,
    item: impl FnMut(T) -> Result<U, ApiError>,
) -> Result<(Vec<U>, Option<String>), ApiError> {
    let next = page.next.map(|c| ctx.seal_token(&c));
    let items = page.items.into_iter().map(item).collect::<Result<_, _>>()?;
    Ok((items, next))
}

// ------------------------------------------------------------ domain errors
//
// The handlers' own refusals are typed (this module and its children);
// this is the one place they become AWS errors.

impl From<NotYet> for ApiError {
    fn from(e: NotYet) -> Self {
        ApiError::NotImplemented(e.to_string())
    }
}

impl From<EdgeError> for ApiError {
    fn from(e: EdgeError) -> Self {
        use EdgeError::*;
        let context = match &e {
            NoHandler(_) => "dispatching",
            Input { .. } => "decoding an input",
            Output { .. } => "encoding an output",
            Document { .. } => "reading a stored document",
        };
        ApiError::internal(context, e)
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        use ImageError::*;
        match e {
            NotFound { identifier } => ApiError::not_found("MicroVM image", identifier),
            InUse { ref arn } => ApiError::Conflict {
                message: e.to_string(),
                resource_id: Some(arn.clone()),
                resource_type: Some("MicroVM image"),
            },
        }
    }
}

impl From<ManagedImageError> for ApiError {
    fn from(e: ManagedImageError) -> Self {
        use ManagedImageError::*;
        match e {
            NotFound { identifier } => ApiError::not_found("Managed MicroVM image", identifier),
            NoSecondPage => ApiError::Validation(e.to_string()),
        }
    }
}

/// The control plane's refusals and failures as AWS errors.
pub(crate) fn control_error(e: hearth_control::ControlError) -> ApiError {
    use hearth_control::ControlError::*;
    match e {
        Invalid(_) | UnknownBaseImage { .. } => ApiError::Validation(e.to_string()),
        State(ref t) => ApiError::Conflict {
            message: e.to_string(),
            resource_id: None,
            resource_type: Some(match t.kind {
                hearth_domain::ResourceKind::Image => "MicroVM image",
                hearth_domain::ResourceKind::ImageVersion => "MicroVM image version",
                hearth_domain::ResourceKind::ImageBuild => "MicroVM image build",
                hearth_domain::ResourceKind::Microvm => "MicroVM",
            }),
        },
        NoLog { build_id } => ApiError::not_found("MicroVM image build log", build_id),
        NotFound { kind, ref id } => ApiError::not_found(kind, id.clone()),
        MicrovmConflict { ref id, .. } => ApiError::Conflict {
            message: e.to_string(),
            resource_id: Some(id.clone()),
            resource_type: Some("MicroVM"),
        },
        Capacity(ref m) => ApiError::InsufficientCapacity(m.clone()),
        Engine { .. } => ApiError::internal("the engine", e),
        Store(s) => crate::error::store_error("the control plane's store work", s),
        Corrupt(_) | Internal { .. } => ApiError::internal("the control plane", e),
    }
}

impl From<TagError> for ApiError {
    fn from(e: TagError) -> Self {
        ApiError::Validation(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hearth_api_model::Model;

    use super::*;

    #[test]
    fn every_model_operation_has_exactly_one_handler() {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for reg in registrations() {
            *count.entry(reg.name).or_default() += 1;
        }
        let model: Vec<&str> = Model::get().operations().map(|o| o.name.as_str()).collect();
        for op in &model {
            assert_eq!(count.get(op), Some(&1), "{op}: registrations");
        }
        for name in count.keys() {
            assert!(
                model.contains(name),
                "{name} is registered but not in the model"
            );
        }
        assert_eq!(registry().len(), model.len());
    }
}
