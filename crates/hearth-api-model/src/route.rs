//! Routing: matching an HTTP method and raw (still percent-encoded) path
//! against the operations' `requestUri` templates ([`crate::template`]
//! owns their syntax and how one template matches a path).
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
}

impl Model {
    /// Find the operation for `method` (upper case, e.g. `GET`) and
    /// `raw_path` (the request target's path, still percent-encoded, without
    /// the query string).
    pub fn route(&self, method: &str, raw_path: &str) -> Result<Route<'_>, RouteError> {
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
