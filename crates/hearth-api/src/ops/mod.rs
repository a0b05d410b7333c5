//! Typed inputs and outputs of the API's operations.
//!
//! Owns one Rust type for every operation's input and output (and the
//! shapes nested in them, [`shapes`]), and the [`Operation`] markers that tie
//! an operation's model name to its two types. One submodule per resource,
//! like the handlers. Plain serde data, no behaviour; used on the request
//! task by the typed edge of `handlers::dispatch`, which deserializes the
//! pipeline's validated input object into `Input` and serializes `Output`.
//!
//! The service model is authoritative: `model_check` (tests) holds every
//! type against the embedded model in both directions (every member has a
//! field, every field is a member, at every level, every union variant), so
//! a model change or a new operation fails a test instead of drifting.
//!
//! Conventions: fields are named as the model's members (`rename_all`, and
//! an explicit `rename` where the model's spelling is not the case rule's);
//! optional members are `Option`s, left out of outputs when `None`; inputs
//! deny unknown fields; enum-valued members are `String`s (the pipeline
//! checked them against the model, and the store keeps them as text);
//! timestamps are epoch seconds (`i64`); unions are externally tagged enums
//! (`{"cloudWatch": {...}}`). Several members are sensitive (environment
//! variables, hook payloads, auth tokens): these types are never logged.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// One API operation: its name in the model and its typed input and output.
/// Implemented by the zero-sized markers declared with `operations!`.
pub trait Operation {
    /// The operation's name in the model, e.g. `GetMicrovmImage`.
    const NAME: &'static str;
    /// What the handler gets: the validated input object, deserialized.
    type Input: DeserializeOwned + Send + 'static;
    /// What the handler answers; serialized into the response body.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

/// Declares operation markers: `Name: InputType => OutputType;`.
macro_rules! operations {
    ($($name:ident: $input:ty => $output:ty;)+) => {$(
        #[doc = concat!("The `", stringify!($name), "` operation.")]
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl $crate::ops::Operation for $name {
            const NAME: &'static str = stringify!($name);
            type Input = $input;
            type Output = $output;
        }
    )+};
}

pub mod auth_tokens;
pub mod images;
pub mod managed;
pub mod microvms;
pub mod shapes;
pub mod tags;
pub mod versions;

#[cfg(test)]
pub(crate) mod model_check;

pub use auth_tokens::*;
pub use images::*;
pub use managed::*;
pub use microvms::*;
pub use shapes::*;
pub use tags::*;
pub use versions::*;
