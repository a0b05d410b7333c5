//! The control plane's refusals and failures, for the API to map onto AWS
//! error shapes at its edge.

use hearth_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller's input cannot be built (ValidationException).
    #[error("{0}")]
    Invalid(String),
    /// No managed base image by that ARN or version (ValidationException:
    /// the member is invalid, not the resource addressed).
    #[error("baseImageArn {arn} (version {version}) is not a managed MicroVM image of this server; see ListManagedMicrovmImages")]
    UnknownBaseImage { arn: String, version: String },
    /// The resource is not in a state that allows this (ConflictException).
    #[error(transparent)]
    State(#[from] hearth_domain::InvalidTransition),
    /// A resource's stored state is not one this server knows.
    #[error("stored state is invalid: {0}")]
    Corrupt(String),
    /// No log for this build (ResourceNotFoundException).
    #[error(
        "build {build_id} has no log (its image's logging may be disabled or the log was removed)"
    )]
    NoLog { build_id: String },
    /// No such resource in the caller's account (ResourceNotFoundException).
    #[error("{kind} {id} was not found")]
    NotFound { kind: &'static str, id: String },
    /// A microVM is not in a state that allows the request (ConflictException).
    #[error("microVM {id}: {reason}")]
    MicrovmConflict { id: String, reason: String },
    /// The host cannot take another running microVM
    /// (InsufficientCapacityException).
    #[error("{0}")]
    Capacity(String),
    /// The engine failed doing what was asked (InternalServerException).
    #[error("{what}: {source}")]
    Engine {
        what: String,
        #[source]
        source: Box<hearth_vmm::VmError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {detail}")]
    Internal { what: &'static str, detail: String },
}

impl From<hearth_domain::ParseError> for ControlError {
    fn from(e: hearth_domain::ParseError) -> Self {
        ControlError::Corrupt(e.to_string())
    }
}
