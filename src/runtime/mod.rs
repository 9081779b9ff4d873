//! The runtime: loaded models, the memory ledger, and the work done on them.
//!
//! Scripts hold model *ids*, never tensors, so `delete_model` here really drops
//! the last reference to every weight.
pub mod activations;
/// The built-in tiny models live with the model roots; kept here for the old path.
pub use crate::roots::builtin;
pub mod cancel;
mod coding;
mod compute;
pub mod conditioning;
pub mod device;
pub mod dry;
pub mod error;
pub mod info;
pub mod journal;
pub mod ledger;
mod lifecycle;
mod load;
mod loras;
pub mod memstat;
pub mod options;
#[cfg(feature = "cuda")]
pub mod pinned;
pub mod placement;
pub mod prefetch;
pub mod registry;
pub mod residency;
#[allow(clippy::module_inception)]
pub mod runtime;
pub mod scripted;
pub mod size;
pub mod text_encoder;
pub mod timeline;
pub mod vae;

pub use error::RuntimeError;
pub use ledger::{Entry, Ledger};
pub use options::{
    DecodeOptions, FrameCond, FrameCondOptions, LoadOptions, OffloadPolicy, SampleOptions,
    TextOptions,
};
pub use placement::DitPlan;
pub use registry::ModelId;
pub use runtime::Runtime;
