//! Reading checkpoints: header-only inspection, architecture and key-layout
//! detection, and a `VarBuilder` backend that hands out tensors straight from
//! the memory-mapped file under the canonical (original Wan) names.
pub mod detect;
pub mod error;
pub mod finite;
pub mod gguf;
pub mod gguf_write;
pub mod header;
pub mod layout;
pub mod mapped;
pub mod qblocks;
pub mod quant;
pub mod shards;
pub mod sniff;
pub mod source;
#[cfg(feature = "cuda")]
pub mod upload_cuda;

pub use detect::{detect, Detected};
pub use error::CheckpointError;
pub use header::{Header, TensorEntry};
pub use layout::Layout;
pub use source::CheckpointSource;
