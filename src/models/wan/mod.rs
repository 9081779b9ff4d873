//! Wan 2.x: the video DiT (and later the VAE).
pub mod config;
pub mod dit;

pub use config::WanConfig;
