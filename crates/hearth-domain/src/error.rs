//! The errors shared by every machine: a refused transition and an unknown
//! state string.

use std::fmt;

/// The resource a machine describes, as a message names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Image,
    ImageVersion,
    ImageBuild,
    Microvm,
}

impl ResourceKind {
    /// The indefinite article before the kind's name: "an image", "a microVM".
    pub const fn article(self) -> &'static str {
        match self {
            ResourceKind::Image | ResourceKind::ImageVersion | ResourceKind::ImageBuild => "an",
            ResourceKind::Microvm => "a",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Image => "image",
            ResourceKind::ImageVersion => "image version",
            ResourceKind::ImageBuild => "image build",
            ResourceKind::Microvm => "microVM",
        })
    }
}

/// An event the resource's current state does not accept.
///
/// The message reads "cannot update an image that is CREATING" or "cannot
/// suspend a microVM that is PENDING", fit for the body of a
/// `ConflictException`; naming the resource ("image 'x': ...") is the caller's
/// job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} {article} {kind} that is {from}", article = .kind.article())]
pub struct InvalidTransition {
    pub kind: ResourceKind,
    /// The current state, as the API spells it.
    pub from: &'static str,
    /// The refused event, as a verb phrase ("update", "change the status of").
    pub event: &'static str,
}

/// A string that is not one of the API's values for a state or status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {what}")]
pub struct ParseError {
    /// What was being parsed, e.g. "image state".
    pub what: &'static str,
    pub value: String,
}
