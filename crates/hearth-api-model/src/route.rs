//! Routing: matching an HTTP method and raw (still percent-encoded) path
//! against the operations' `requestUri` templates (the private `template`
//! module owns their syntax and how one template matches a path).
//!
//! Before any matching, a raw path is refused with
//! [`RouteError::InvalidPath`] when it has a `.` or `..` segment (percent-
//! encoded or not: `%2e`, `.%2E`, `%2E%2e`), an empty segment (`//`, a
//! trailing `/`), or a `?`/`#`. The SigV4 canonical URI is the path with dot
//! and empty segments removed, so `/x/versions/..` carries a valid signature
//! for `/x`: routing such a path would act on something other than what was
//! signed. Every path this module routes is one that
//! `hearth_sigv4::normalize_path` leaves unchanged, so the router and the
//! signature see the same path (and no label is ever `.` or `..`).
//!
//! When several templates match, the one with the most literal segments
//! wins; a path that matches only under other methods gives
//! [`RouteError::MethodNotAllowed`]. Pure functions; no I/O.

use crate::model::{Model, Operation};
use crate::template::decode_segments;

/// A matched operation and its decoded path labels.
#[derive(Debug, Clone)]
pub struct Route<'m> {
    pub operation: &'m Operation,
    /// `(label name, decoded value)` in template order.
    pub labels: Vec<(String, String)>,
}

impl Route<'_> {
    /// The decoded value of a label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No operation has this path (HTTP 404).
    #[error("no operation matches this path")]
    NotFound,
    /// The path exists but not for this method (HTTP 405); `allowed` is
    /// sorted and de-duplicated, ready for an `Allow` header.
    #[error("method not allowed; allowed: {}", allowed.join(", "))]
    MethodNotAllowed { allowed: Vec<String> },
    /// The path is refused whatever the method: it has a dot segment, an
    /// empty segment, or a `?`/`#` (answer HTTP 400 `ValidationException`).
    /// `reason` says which, in words fit for the client.
    #[error("invalid request path: {reason}")]
    InvalidPath { reason: String },
}

/// Refuses a raw path whose meaning the SigV4 canonical URI does not fix
/// (see the module docs). A path not starting with `/` is left to routing
/// (it matches nothing).
fn check_path(raw_path: &str) -> Result<(), RouteError> {
    let invalid = |reason: &str| {
        Err(RouteError::InvalidPath {
            reason: reason.to_string(),
        })
    };
    if raw_path.contains(['?', '#']) {
        return invalid("the path contains '?' or '#'; pass the query string apart");
    }
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Ok(());
    };
    if rest.is_empty() {
        return Ok(());
    }
    let mut dots = false;
    for seg in rest.split('/') {
        if seg.is_empty() {
            return invalid("the path has an empty segment ('//' or a trailing '/')");
        }
        let decoded = hearth_sigv4::percent_decode(seg);
        dots |= decoded == b"." || decoded == b"..";
    }
    if dots {
        return invalid("the path has a '.' or '..' segment (percent-encoded or not)");
    }
    Ok(())
}

impl Model {
    /// Find the operation for `method` (upper case, e.g. `GET`) and
    /// `raw_path` (the request target's path, still percent-encoded, without
    /// the query string, exactly as given to SigV4 verification).
    ///
    /// A path with a dot segment, an empty segment or a `?`/`#` is
    /// [`RouteError::InvalidPath`], whatever the method.
    pub fn route(&self, method: &str, raw_path: &str) -> Result<Route<'_>, RouteError> {
        check_path(raw_path)?;
        let segs = decode_segments(raw_path).ok_or(RouteError::NotFound)?;
        let mut best: Option<(&Operation, Vec<(String, String)>)> = None;
        let mut allowed: Vec<String> = Vec::new();
        for op in self.operations() {
            let Some(labels) = op.template.matches(&segs) else {
                continue;
            };
            if op.http_method == method {
                let better = match &best {
                    None => true,
                    Some((b, _)) => op.template.literal_count() > b.template.literal_count(),
                };
                if better {
                    best = Some((op, labels));
                }
            } else {
                allowed.push(op.http_method.clone());
            }
        }
        match best {
            Some((operation, labels)) => Ok(Route { operation, labels }),
            None if allowed.is_empty() => Err(RouteError::NotFound),
            None => {
                allowed.sort();
                allowed.dedup();
                Err(RouteError::MethodNotAllowed { allowed })
            }
        }
    }
}
