//! Wan 2.x: the video DiT (`dit`, built from `linear`, `attention` and
//! `rope`) and its activation memory formula; the VAE is `models::wan_vae`.
pub mod amx;
pub mod attention;
pub mod config;
pub mod dit;
pub mod expf;
pub mod fast;
pub mod flash;
#[cfg(feature = "cuda")]
pub mod flash_cuda;
#[cfg(feature = "cuda")]
pub mod fp8_cuda;
pub mod fused;
pub mod linear;
pub mod memory;
#[cfg(feature = "onednn")]
pub mod onednn;
pub mod rope;
pub mod sgemm;
pub mod spans;

pub use config::WanConfig;
pub use memory::activation_peak_bytes;
