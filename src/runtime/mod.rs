//! The runtime: loaded models, the memory ledger, and the work done on them.
//!
//! Scripts hold model *ids*, never tensors, so `delete_model` here really drops
//! the last reference to every weight.
pub mod activations;
pub mod builtin;
pub mod cancel;
pub mod device;
pub mod dry;
pub mod journal;
pub mod ledger;
pub mod memstat;
#[cfg(feature = "cuda")]
pub mod pinned;
pub mod prefetch;
pub mod registry;
pub mod residency;
#[allow(clippy::module_inception)]
pub mod runtime;
pub mod size;
pub mod text_encoder;
pub mod timeline;
pub mod vae;

pub use ledger::{Entry, Ledger};
pub use registry::ModelId;
pub use runtime::{DitPlan, LoadOptions, OffloadPolicy, Runtime, RuntimeError, SampleOptions};
