//! Model-driven routing and validation for the Lambda MicroVMs rest-json API
//! (API version 2025-09-09), driven by the botocore service model embedded
//! in this crate (`model/lambda-microvms-2025-09-09.json.gz`).
//!
//! The HTTP server uses it in three steps:
//!
//! ```
//! use hearth_api_model::{Model, RouteError};
//!
//! let model = Model::get();
//! // 1. Route on the method and the raw (still percent-encoded) path.
//! let route = model
//!     .route("POST", "/2025-09-09/microvms/mvm-1/suspend")
//!     .unwrap();
//! assert_eq!(route.operation.name, "SuspendMicrovm");
//! // 2. Decode and validate the input (labels, raw query, headers, body).
//! let input = model
//!     .parse_input(route.operation, &route.labels, "", &[], b"")
//!     .unwrap();
//! assert_eq!(input["microvmIdentifier"], "mvm-1");
//! // 3. (In tests) check the response body conforms to the output shape.
//! model
//!     .check_output(route.operation, &serde_json::json!({}))
//!     .unwrap();
//! assert!(matches!(
//!     model.route("GET", "/2025-09-09/nope"),
//!     Err(RouteError::NotFound)
//! ));
//! // Paths the SigV4 signature does not pin down are refused outright.
//! assert!(matches!(
//!     model.route("GET", "/2025-09-09/microvm-images/x/versions/.."),
//!     Err(RouteError::InvalidPath { .. })
//! ));
//! ```
//!
//! The server verifies the SigV4 signature (`hearth_sigv4`) before step 1,
//! over the same raw path and raw query. What the signature leaves open,
//! this crate refuses: a path with dot or empty segments (the signature
//! covers it normalised; [`RouteError::InvalidPath`]), more query parameters
//! than a signature covers ([`InputError::TooManyQueryParameters`]), and a
//! repeated single-valued query parameter, whose order the sorted canonical
//! query does not fix ([`ConstraintKind::Repeated`]).
//!
//! Modules:
//! - [`model`]: the typed model and its loading/consistency checks;
//! - [`route`]: routing ([`Model::route`]) and the paths it refuses; the
//!   private `template` module holds URI template syntax and matching;
//! - [`input`]: reading members from labels/query/headers/body
//!   ([`Model::parse_input`]) and the queries it refuses;
//! - [`validate`]: constraint checks and AWS-style validation messages
//!   ([`Model::check_output`], [`Model::check_shape`]);
//! - [`pattern`]: Java-style `pattern` regexes as full matches;
//! - [`sample`]: valid sample values and client-style requests, for tests.

#![forbid(unsafe_code)]

pub mod input;
pub mod model;
pub mod pattern;
pub mod route;
pub mod sample;
mod template;
pub mod validate;

pub use input::InputError;
pub use model::{
    ErrorInfo, Fault, Location, Member, Model, ModelError, Operation, Shape, ShapeKind,
    StructureShape,
};
pub use pattern::Pattern;
pub use route::{Route, RouteError};
pub use validate::{ConstraintKind, FieldError, ValidationError};
