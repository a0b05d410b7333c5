//! Hearth's resource state machines: MicroVM images ([`image`]), image
//! versions ([`version`]), image builds ([`build`]) and microVMs
//! ([`microvm`], with the admission of API requests and the idle policy's
//! deadlines).
//!
//! Each module owns one resource's states (as the API spells them), the
//! events that move it and one exhaustive `transition` function. Nothing here
//! does I/O, reads a clock or spawns anything: the task that owns a resource
//! (an API handler for requests, the build task for build progress) asks the
//! machine for the next state and then writes it to the store. A refused
//! transition is an [`InvalidTransition`], which the API reports as a
//! `ConflictException` (as it does a microVM request's
//! [`Admission::Conflict`]).

#![forbid(unsafe_code)]

/// Declares a string-valued API enum: the enum itself (serde as the API
/// strings), `ALL`, `as_str`, `Display` and `FromStr` (a [`ParseError`] naming
/// `$what` for any other string).
macro_rules! api_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $s:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $s)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string the API uses for this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err($crate::ParseError { what: $what, value: s.to_string() }),
                }
            }
        }
    };
}

pub mod build;
mod error;
pub mod image;
pub mod microvm;
pub mod version;

pub use build::{BuildEvent, BuildState};
pub use error::{InvalidTransition, ParseError, ResourceKind};
pub use image::{ImageEvent, ImageState};
pub use microvm::{
    admit, next_deadline, Admission, Deadline, IdlePolicy, MicrovmEvent, MicrovmRequest,
    MicrovmState, TerminateReason,
};
pub use version::{
    latest_versions, LatestVersions, Version, VersionEvent, VersionState, VersionStatus,
};
