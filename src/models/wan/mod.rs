//! Wan 2.x: the video DiT (and later the VAE).
pub mod config;
pub mod dit;
#[cfg(feature = "cuda")]
pub mod fp8_cuda;
pub mod memory;

pub use config::WanConfig;
pub use memory::activation_peak_bytes;
